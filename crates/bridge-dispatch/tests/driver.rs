//! The driver against the in-memory store, a scripted sender standing in for the session
//! manager, and an outlet that records what it was told — on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bridge_dispatch::{CommandSender, Dispatcher, EngineConfig, Outlet, Party, Refusal};
use bridge_protocol::http::{
    CommandOutcome, CommandRequest, CommandResponse, CommandStatus, IfOffline,
};
use bridge_protocol::{
    CommandId, CommandResult, CommandType, ConfigRegistry, DeviceErrorCode, DeviceId, ErrorCode,
    HexPayload, RequestId, ResultStatus, TtlSeconds,
};
use bridge_queue::{
    Cut, Lease, Leased, ManualClock, MemoryStore, NewCommand, NodeId, OpenCounts, QueuedCommand,
    Store, StoreConfig, StoreError, SweepReport,
};
use bridge_session::{CommandError, CommandReply};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What a scripted device does with the next `ble_write`.
#[derive(Debug, Clone)]
enum Script {
    Answer(&'static [u8]),
    Fail(&'static str),
    Lose,
    Timeout,
    Offline,
    /// The sender panics (a bug in the session manager or a transport).
    Panic,
}

/// Stands in for the session manager: plays the script, records what was sent.
#[derive(Default)]
struct ScriptedSender {
    online: Mutex<bool>,
    script: Mutex<VecDeque<Script>>,
    sent: Mutex<Vec<HexPayload>>,
    sent_signal: Notify,
}

#[async_trait]
impl CommandSender for ScriptedSender {
    async fn send_command(
        &self,
        _device: DeviceId,
        _device_type: Option<&str>,
        payload: HexPayload,
        _timeout: Duration,
    ) -> Result<CommandReply, CommandError> {
        if !*self.online.lock() {
            return Err(CommandError::Offline);
        }
        let step = self
            .script
            .lock()
            .pop_front()
            .unwrap_or(Script::Answer(&[0x80]));
        if !matches!(step, Script::Offline) {
            self.sent.lock().push(payload);
            self.sent_signal.notify_waiters();
        }
        match step {
            Script::Answer(bytes) => Ok(CommandReply::new(
                RequestId::new("r-1").unwrap(),
                HexPayload::from_bytes(bytes.to_vec()),
                Duration::from_millis(3),
            )),
            Script::Fail(code) => Err(CommandError::DeviceError(
                DeviceErrorCode::new(code).unwrap(),
            )),
            Script::Lose => Err(CommandError::BridgeLost),
            Script::Timeout => Err(CommandError::Timeout),
            Script::Offline => Err(CommandError::Offline),
            Script::Panic => panic!("the sender panicked on purpose"),
        }
    }
}

#[derive(Default)]
struct RecordingOutlet {
    announced: Mutex<Vec<CommandResult>>,
    outcomes: Mutex<Vec<&'static str>>,
    panics: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl Outlet for RecordingOutlet {
    async fn announce(&self, _device: &DeviceId, result: CommandResult) {
        self.announced.lock().push(result);
    }

    fn command_ended(&self, outcome: &'static str, _sent_for: Option<Duration>) {
        self.outcomes.lock().push(outcome);
    }

    fn task_panicked(&self, what: &'static str) {
        self.panics.lock().push(what);
    }
}

struct Fixture {
    dispatch: Dispatcher,
    store: Arc<MemoryStore>,
    sender: Arc<ScriptedSender>,
    outlet: Arc<RecordingOutlet>,
    clock: ManualClock,
    lock: DeviceId,
}

fn fixture() -> Fixture {
    fixture_over(|store| store as Arc<dyn Store>)
}

/// A fixture whose dispatcher sees the in-memory store through `wrap`.
fn fixture_over(wrap: impl FnOnce(Arc<MemoryStore>) -> Arc<dyn Store>) -> Fixture {
    let clock = ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    ));
    let sender = Arc::new(ScriptedSender::default());
    let outlet = Arc::new(RecordingOutlet::default());
    let dispatch = Dispatcher::start(
        EngineConfig::default(),
        NodeId::new("node-a").unwrap(),
        wrap(Arc::clone(&store)),
        Arc::clone(&sender) as Arc<dyn CommandSender>,
        Arc::clone(&outlet) as Arc<dyn Outlet>,
        Arc::new(ConfigRegistry::example()),
    );
    Fixture {
        dispatch,
        store,
        sender,
        outlet,
        clock,
        lock: DeviceId::new("lock-1").unwrap(),
    }
}

fn queued(payload: u8, kind: &str) -> CommandRequest {
    let mut request = CommandRequest::new(HexPayload::from_bytes(vec![payload]));
    request.if_offline = IfOffline::Queue;
    request.command_type = Some(CommandType::new(kind).unwrap());
    request
}

impl Fixture {
    fn bring_online(&self) {
        *self.sender.online.lock() = true;
        self.dispatch.device_online(&self.lock);
    }

    async fn queue(&self, payload: u8, kind: &str) -> bridge_protocol::CommandId {
        match self
            .dispatch
            .execute(self.lock.clone(), queued(payload, kind), Party::Backend)
            .await
        {
            Ok(CommandResponse::Queued { command_id }) => command_id,
            other => panic!("expected queued, got {other:?}"),
        }
    }

    /// Lets every spawned task run until nothing is left to do (paused clock: no time
    /// passes unless a task sleeps).
    async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            self.dispatch.wait_idle(Duration::from_secs(5)).await,
            "deliveries settle"
        );
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.sender
            .sent
            .lock()
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect()
    }

    fn announced(&self) -> Vec<(ResultStatus, Option<String>)> {
        self.outlet
            .announced
            .lock()
            .iter()
            .map(|r| {
                (
                    r.status,
                    r.command_id.as_ref().map(|id| id.as_str().to_owned()),
                )
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn an_online_command_is_answered_at_once_and_counted() {
    let f = fixture();
    *f.sender.online.lock() = true;
    let response = f
        .dispatch
        .execute(
            f.lock.clone(),
            CommandRequest::new(HexPayload::from_bytes(vec![1])),
            Party::Backend,
        )
        .await
        .unwrap();
    assert!(
        matches!(response, CommandResponse::Succeeded { .. }),
        "{response:?}"
    );
    assert_eq!(f.sent(), vec![vec![1]]);
    assert_eq!(*f.outlet.outcomes.lock(), vec!["succeeded"]);
    assert!(
        f.outlet.announced.lock().is_empty(),
        "online commands are answered, not announced"
    );
}

#[tokio::test(start_paused = true)]
async fn an_offline_command_is_refused_or_queued_as_asked() {
    let f = fixture();
    let response = f
        .dispatch
        .execute(
            f.lock.clone(),
            CommandRequest::new(HexPayload::from_bytes(vec![1])),
            Party::Backend,
        )
        .await
        .unwrap();
    assert_eq!(response, CommandResponse::Offline);

    let mut no_type = queued(1, "unlock");
    no_type.command_type = None;
    let refusal = f
        .dispatch
        .execute(f.lock.clone(), no_type, Party::Backend)
        .await
        .unwrap_err();
    assert!(matches!(refusal, Refusal::CommandTypeRequired));
    assert_eq!(refusal.code(), ErrorCode::InvalidRequest);

    let id = f.queue(2, "unlock").await;
    assert_eq!(
        f.store.get(&id).await.unwrap().status,
        CommandStatus::Pending
    );
    assert_eq!(
        *f.outlet.outcomes.lock(),
        vec!["offline", "invalid_request", "queued"]
    );
}

#[tokio::test(start_paused = true)]
async fn queued_commands_go_out_in_order_when_the_device_comes_online_and_their_ends_are_announced()
{
    let f = fixture();
    let ids = [
        f.queue(1, "unlock").await,
        f.queue(2, "status").await,
        f.queue(3, "lock").await,
    ];
    f.sender.script.lock().extend([
        Script::Answer(&[0x81]),
        Script::Fail("gatt_write_failed"),
        Script::Answer(&[0x83]),
    ]);
    f.bring_online();
    f.settle().await;

    assert_eq!(f.sent(), vec![vec![1], vec![2], vec![3]]);
    let statuses: Vec<CommandStatus> = {
        let mut out = Vec::new();
        for id in &ids {
            let command = f.store.get(id).await.unwrap();
            assert_eq!(command.attempts, 1, "one attempt each");
            out.push(command.status);
        }
        out
    };
    assert_eq!(
        statuses,
        [
            CommandStatus::Succeeded,
            CommandStatus::Failed,
            CommandStatus::Succeeded
        ]
    );
    let announced = f.announced();
    assert_eq!(
        announced,
        vec![
            (ResultStatus::Succeeded, Some(ids[0].as_str().to_owned())),
            (ResultStatus::Failed, Some(ids[1].as_str().to_owned())),
            (ResultStatus::Succeeded, Some(ids[2].as_str().to_owned())),
        ]
    );
    assert_eq!(
        f.outlet.outcomes.lock()[3..],
        ["succeeded", "device_error", "succeeded"],
        "queued deliveries are counted by how they ended"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_bridge_sends_the_command_again_at_once_counting_both_attempts() {
    let f = fixture();
    let id = f.queue(1, "unlock").await;
    f.sender
        .script
        .lock()
        .extend([Script::Lose, Script::Answer(&[0x80])]);
    f.bring_online();
    f.settle().await;
    assert_eq!(f.sent(), vec![vec![1], vec![1]]);
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(
        (command.status, command.attempts),
        (CommandStatus::Succeeded, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_device_gone_before_the_write_left_keeps_its_command_without_an_attempt() {
    let f = fixture();
    let id = f.queue(1, "unlock").await;
    f.sender.script.lock().push_back(Script::Offline);
    f.bring_online();
    f.settle().await;
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(
        (command.status, command.attempts),
        (CommandStatus::Pending, 0)
    );
    assert!(f.sent().is_empty());
}

#[tokio::test(start_paused = true)]
async fn confirmation_gates_delivery_and_cancel_is_announced() {
    let f = fixture();
    f.bring_online();
    f.settle().await;
    let mut gated = queued(7, "reset");
    gated.requires_confirmation = true;
    let Ok(CommandResponse::AwaitingConfirmation { command_id }) = f
        .dispatch
        .execute(f.lock.clone(), gated.clone(), Party::Backend)
        .await
    else {
        panic!("expected awaiting_confirmation");
    };
    f.settle().await;
    assert!(f.sent().is_empty(), "nothing goes before the confirmation");
    f.dispatch.confirm(&command_id).await.unwrap();
    f.settle().await;
    assert_eq!(f.sent(), vec![vec![7]]);

    gated.command_type = Some(CommandType::new("other").unwrap());
    let Ok(CommandResponse::AwaitingConfirmation { command_id: second }) = f
        .dispatch
        .execute(f.lock.clone(), gated, Party::Backend)
        .await
    else {
        panic!("expected awaiting_confirmation");
    };
    let cancelled = f.dispatch.cancel(&second).await.unwrap();
    assert_eq!(cancelled.status, CommandStatus::Cancelled);
    f.settle().await;
    assert_eq!(
        f.announced().last().cloned(),
        Some((ResultStatus::Cancelled, Some(second.as_str().to_owned())))
    );
}

/// PROTOCOL.md 4.2: a user's queued command of the backend's `commandType` does not update
/// the backend's in place (its payload kept, its confirmation not skipped): it is the
/// user's own command, queued after it; the user's next one updates the user's.
#[tokio::test(start_paused = true)]
async fn a_users_command_does_not_overwrite_the_backends_queued_one() {
    let f = fixture();
    let alice = Party::User(bridge_protocol::UserId::new("alice").unwrap());
    let mut gated = queued(1, "unlock");
    gated.requires_confirmation = true;
    let Ok(CommandResponse::AwaitingConfirmation {
        command_id: backends,
    }) = f
        .dispatch
        .execute(f.lock.clone(), gated, Party::Backend)
        .await
    else {
        panic!("expected awaiting_confirmation");
    };
    let Ok(CommandResponse::Queued { command_id: users }) = f
        .dispatch
        .execute(f.lock.clone(), queued(2, "unlock"), alice.clone())
        .await
    else {
        panic!("expected queued");
    };
    assert_ne!(users, backends);
    let Ok(CommandResponse::Queued { command_id: again }) = f
        .dispatch
        .execute(f.lock.clone(), queued(3, "unlock"), alice.clone())
        .await
    else {
        panic!("expected queued");
    };
    assert_eq!(again, users, "the user's own command is updated in place");

    let backend = f.store.get(&backends).await.unwrap();
    assert_eq!(
        (backend.status, backend.payload, backend.queued_by),
        (
            CommandStatus::AwaitingConfirmation,
            HexPayload::from_bytes(vec![1]),
            Party::Backend
        )
    );
    let user = f.store.get(&users).await.unwrap();
    assert_eq!(
        (user.status, user.payload, user.queued_by),
        (
            CommandStatus::Pending,
            HexPayload::from_bytes(vec![3]),
            alice
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_delivery_waits_for_the_retry_tick_or_a_link_up() {
    let f = fixture();
    let id = f.queue(1, "unlock").await;
    f.sender
        .script
        .lock()
        .extend([Script::Timeout, Script::Timeout, Script::Answer(&[0x80])]);
    f.bring_online();
    f.settle().await;
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(
        (command.status, command.attempts),
        (CommandStatus::Pending, 1)
    );
    assert_eq!(f.sent().len(), 1, "a timeout ends the pass");

    // The retry tick (30 s on the paused clock) finds the device due and online.
    tokio::time::sleep(EngineConfig::default().retry_interval + Duration::from_millis(1)).await;
    f.settle().await;
    assert_eq!(f.sent().len(), 2);
    assert_eq!(f.store.get(&id).await.unwrap().attempts, 2);

    // A holder reporting its link up does not wait for the tick.
    f.dispatch.link_up(&f.lock);
    f.settle().await;
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(
        (command.status, command.attempts),
        (CommandStatus::Succeeded, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn an_expiry_first_noticed_by_a_read_is_announced_once() {
    let f = fixture();
    let mut request = queued(1, "unlock");
    request.ttl_seconds = TtlSeconds::new(60).unwrap();
    let Ok(CommandResponse::Queued { command_id }) = f
        .dispatch
        .execute(f.lock.clone(), request, Party::Backend)
        .await
    else {
        panic!("expected queued");
    };
    f.clock.advance(Duration::from_secs(61));
    let read = f.dispatch.command(&command_id).await.unwrap();
    assert_eq!(read.status, CommandStatus::Expired);
    let again = f.dispatch.command(&command_id).await.unwrap();
    assert_eq!(again.status, CommandStatus::Expired);
    f.settle().await;
    assert_eq!(
        f.announced(),
        vec![(ResultStatus::Expired, Some(command_id.as_str().to_owned()))],
        "announced once, by the read that noticed it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_takes_back_its_lease_and_delivers_at_once() {
    let clock = ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    ));
    let lock = DeviceId::new("lock-1").unwrap();
    let node = NodeId::new("node-a").unwrap();
    let id = store
        .enqueue(bridge_queue::NewCommand::new(
            lock.clone(),
            CommandType::new("unlock").unwrap(),
            HexPayload::from_bytes(vec![9]),
        ))
        .await
        .unwrap();
    // A former life of node-a leased it and died.
    store
        .lease_next(&lock, &node, Duration::from_mins(1))
        .await
        .unwrap()
        .unwrap();

    let sender = Arc::new(ScriptedSender::default());
    *sender.online.lock() = true;
    let outlet = Arc::new(RecordingOutlet::default());
    let dispatch = Dispatcher::start(
        EngineConfig::default(),
        node,
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&sender) as Arc<dyn CommandSender>,
        outlet as Arc<dyn Outlet>,
        Arc::new(ConfigRegistry::example()),
    );
    dispatch.device_online(&lock);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(dispatch.wait_idle(Duration::from_secs(5)).await);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let command = store.get(&id).await.unwrap();
    assert_eq!(
        command.status,
        CommandStatus::Succeeded,
        "no wait for the lease to lapse"
    );
    assert_eq!(
        command.attempts, 2,
        "the reclaimed delivery may have left: it counts"
    );
    assert_eq!(sender.sent.lock().len(), 1);
}

/// The in-memory store, but `lease_next` and `sweep` panic as many times as they are told.
struct PanickyStore {
    inner: Arc<MemoryStore>,
    lease_panics: AtomicU32,
    sweep_panics: AtomicU32,
}

impl PanickyStore {
    fn over(inner: Arc<MemoryStore>, lease_panics: u32, sweep_panics: u32) -> Arc<dyn Store> {
        Arc::new(Self {
            inner,
            lease_panics: AtomicU32::new(lease_panics),
            sweep_panics: AtomicU32::new(sweep_panics),
        })
    }

    fn maybe_panic(counter: &AtomicU32, what: &str) {
        if counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("{what} panicked on purpose");
        }
    }
}

#[async_trait]
impl Store for PanickyStore {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        self.inner.enqueue(command).await
    }
    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.confirm(id).await
    }
    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.cancel(id).await
    }
    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        Self::maybe_panic(&self.lease_panics, "lease_next");
        self.inner.lease_next(device, owner, grace).await
    }
    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        self.inner.complete(lease, outcome).await
    }
    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        self.inner.release(lease, cut).await
    }
    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.reclaim(owner).await
    }
    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        self.inner.drain_pending(device, owner).await
    }
    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.get(id).await
    }
    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.list_open(device).await
    }
    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        self.inner.pending_count(device).await
    }
    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        self.inner.due_devices(limit).await
    }
    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        Self::maybe_panic(&self.sweep_panics, "sweep");
        self.inner.sweep().await
    }
    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.expire(device).await
    }
    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        self.inner.purge(limit).await
    }
    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        self.inner.open_counts().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_panic_in_lease_ends_the_pass_and_the_next_trigger_delivers() {
    let f = fixture_over(|store| PanickyStore::over(store, 1, 0));
    let id = f.queue(1, "unlock").await;
    f.bring_online();
    // The pass ends (`settle` waits for the engine to be idle) although its lease panicked.
    f.settle().await;
    assert!(
        f.sent().is_empty(),
        "nothing was leased, so nothing went out"
    );
    assert_eq!(*f.outlet.panics.lock(), vec!["lease"]);
    assert_eq!(
        f.store.get(&id).await.unwrap().status,
        CommandStatus::Pending
    );

    // The device is served again at the next trigger.
    f.dispatch.link_up(&f.lock);
    f.settle().await;
    assert_eq!(f.sent(), vec![vec![1]]);
    assert_eq!(
        f.store.get(&id).await.unwrap().status,
        CommandStatus::Succeeded
    );
    assert_eq!(f.outlet.panics.lock().len(), 1, "one panic, counted once");
}

#[tokio::test(start_paused = true)]
async fn a_store_panic_in_sweep_does_not_stop_the_retry_tick() {
    let f = fixture_over(|store| PanickyStore::over(store, 0, 2));
    let id = f.queue(1, "unlock").await;
    f.sender.script.lock().push_back(Script::Timeout);
    f.bring_online();
    f.settle().await;
    assert_eq!(f.sent().len(), 1, "the first attempt timed out");

    // The first tick's sweep panics: the tick still lists the due devices and delivers.
    let interval = EngineConfig::default().retry_interval;
    tokio::time::sleep(interval + Duration::from_millis(1)).await;
    f.settle().await;
    assert_eq!(*f.outlet.panics.lock(), vec!["sweep"]);
    assert_eq!(
        f.sent().len(),
        2,
        "the tick after a panicked sweep delivers"
    );
    assert_eq!(
        f.store.get(&id).await.unwrap().status,
        CommandStatus::Succeeded
    );

    // And the ticks go on: the next one's sweep panics too, and is counted.
    tokio::time::sleep(interval).await;
    f.settle().await;
    assert_eq!(*f.outlet.panics.lock(), vec!["sweep", "sweep"]);
}

#[tokio::test(start_paused = true)]
async fn a_sender_panic_in_a_delivery_counts_an_attempt_and_the_next_trigger_delivers() {
    let f = fixture();
    let id = f.queue(1, "unlock").await;
    f.sender.script.lock().push_back(Script::Panic);
    f.bring_online();
    // The pass ends although its send panicked; the write may have left, so it counts.
    f.settle().await;
    assert_eq!(*f.outlet.panics.lock(), vec!["send"]);
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(command.status, CommandStatus::Pending);
    assert_eq!(command.attempts, 1);

    // The device is served again at the next trigger.
    f.dispatch.link_up(&f.lock);
    f.settle().await;
    assert_eq!(f.sent(), vec![vec![1], vec![1]]);
    let command = f.store.get(&id).await.unwrap();
    assert_eq!(command.status, CommandStatus::Succeeded);
    assert_eq!(command.attempts, 2);
    assert_eq!(f.outlet.panics.lock().len(), 1, "one panic, counted once");
}

/// An outlet whose first announcement takes a while (a slow subscriber socket, a busy hub).
#[derive(Default)]
struct SlowFirstOutlet {
    announced: Mutex<Vec<CommandResult>>,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Outlet for SlowFirstOutlet {
    async fn announce(&self, _device: &DeviceId, result: CommandResult) {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.announced.lock().push(result);
    }
}

#[tokio::test(start_paused = true)]
async fn a_devices_results_are_announced_in_the_order_its_commands_ended_even_when_one_announcement_is_slow()
 {
    let store = Arc::new(MemoryStore::new(StoreConfig::default()));
    let sender = Arc::new(ScriptedSender::default());
    let outlet = Arc::new(SlowFirstOutlet::default());
    let dispatch = Dispatcher::start(
        EngineConfig::default(),
        NodeId::new("node-a").unwrap(),
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&sender) as Arc<dyn CommandSender>,
        Arc::clone(&outlet) as Arc<dyn Outlet>,
        Arc::new(ConfigRegistry::example()),
    );
    let lock = DeviceId::new("lock-1").unwrap();
    let mut ids = Vec::new();
    for (n, kind) in ["unlock", "status", "lock"].into_iter().enumerate() {
        let payload = u8::try_from(n).unwrap();
        match dispatch
            .execute(lock.clone(), queued(payload, kind), Party::Backend)
            .await
        {
            Ok(CommandResponse::Queued { command_id }) => ids.push(command_id),
            other => panic!("expected queued, got {other:?}"),
        }
    }
    *sender.online.lock() = true;
    dispatch.device_online(&lock);
    assert!(dispatch.wait_idle(Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let announced: Vec<_> = outlet
        .announced
        .lock()
        .iter()
        .map(|r| r.command_id.clone().unwrap())
        .collect();
    assert_eq!(announced, ids, "in the order the commands ended");
}

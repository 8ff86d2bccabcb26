//! The tokio driver: runs the [`Engine`] against a [`Store`], a [`CommandSender`] (the
//! session manager) and an [`Outlet`] (the hub, as the server sees it).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandResponse, CommandView};
use bridge_protocol::{
    CommandResult, ConfigRegistry, DeviceId, DeviceType, HexPayload, Hops, RequestId,
};
use bridge_queue::{NodeId, QueuedCommand, Store, StoreError};
use bridge_session::{CommandError, CommandFailure, CommandReply, SessionManager, Transport};
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::engine::{Action, Engine, EngineConfig, Sent};

/// Sends a `ble_write` and waits for its end: the session manager, or a stand-in in tests.
#[async_trait]
pub trait CommandSender: Send + Sync + 'static {
    /// Sends `payload` to the device's best holder as `device_type` (`None`: the registry's
    /// default) and waits at most `timeout` for the answer. Cancel-safe.
    async fn send_command(
        &self,
        device: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Result<CommandReply, CommandError>;

    /// As [`send_command`](Self::send_command), and a failure says how far the command got
    /// (PROTOCOL.md 4.1, 1.1: `stage`/`progress`). The command path calls this one. The
    /// default calls `send_command` and reports failures with no stage
    /// ([`CommandFailure::unsent`]), the 1.0 shape; the session manager overrides it.
    async fn send_command_traced(
        &self,
        device: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Result<CommandReply, CommandFailure> {
        self.send_command(device, device_type, payload, timeout)
            .await
            .map_err(CommandFailure::unsent)
    }
}

#[async_trait]
impl<T: Transport + ?Sized> CommandSender for SessionManager<T> {
    async fn send_command(
        &self,
        device: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Result<CommandReply, CommandError> {
        SessionManager::send_command(self, device, device_type, payload, timeout).await
    }

    /// The manager's own future, boxed as it is: written out rather than as an `async fn`,
    /// whose `async_trait` expansion would box a second future around it (one more state
    /// to build, copy and poll per command).
    fn send_command_traced<'life0, 'life1, 'async_trait>(
        &'life0 self,
        device: DeviceId,
        device_type: Option<&'life1 str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<CommandReply, CommandFailure>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(SessionManager::send_command_traced(
            self,
            device,
            device_type,
            payload,
            timeout,
        ))
    }
}

/// Where the dispatcher's announcements and observations go: the server implements it over
/// its hub and metrics.
#[async_trait]
pub trait Outlet: Send + Sync + 'static {
    /// Sends a `command_result` frame to every subscriber of `device` (PROTOCOL.md 3.3).
    async fn announce(&self, device: &DeviceId, result: CommandResult);

    /// A command ended with `outcome` (the `outcome` label of `bridge_commands_total`: the
    /// HTTP status word of PROTOCOL.md 4.1, or the code of a refusal); `sent_for` is how
    /// long it was out at a bridge, when it went out. Default: nothing.
    fn command_ended(&self, outcome: &'static str, sent_for: Option<Duration>) {
        let _ = (outcome, sent_for);
    }

    /// [`Outlet::command_ended`] with the command's device: the dispatcher calls this one.
    /// Default: [`Outlet::command_ended`].
    fn command_ended_for(
        &self,
        device: &DeviceId,
        outcome: &'static str,
        sent_for: Option<Duration>,
    ) {
        let _ = device;
        self.command_ended(outcome, sent_for);
    }

    /// A command that was sent to a bridge ended having got as far as `hops` (PROTOCOL.md
    /// 4.1, 1.1; the server's `bridge_command_stage_seconds{stage}`). Called for the
    /// commands of [`Dispatcher::execute`] and for deliveries of queued commands. Default:
    /// nothing.
    fn stages_reached(&self, hops: &Hops) {
        let _ = hops;
    }

    /// A command of [`Dispatcher::execute`] that was sent to a bridge ended with `answer`;
    /// `request_id` is its `ble_write`'s (the live stream of PROTOCOL.md 4.5 reports it as a
    /// `command_result` carrying that `requestId`; queued commands are reported through
    /// [`announce`](Self::announce) instead). Called on the command path: must not block.
    /// Default: nothing.
    fn command_answered(
        &self,
        device: &DeviceId,
        request_id: &RequestId,
        answer: &CommandResponse,
    ) {
        let _ = (device, request_id, answer);
    }

    /// A task of the dispatcher panicked and was recovered: `what` names it (`lease`,
    /// `send`, `sweep`, `timer`, ... — the `task` label of `bridge_task_panics_total`). The
    /// panic was logged; the engine was told the step failed, so the device's pass ended
    /// and the device is served again at its next trigger. Default: nothing.
    fn task_panicked(&self, what: &'static str) {
        let _ = what;
    }

    /// A command of `device` became deliverable through this dispatcher (queued, or
    /// confirmed). A distributed outlet tells the processes that hold the device, when this
    /// one does not: their delivery pass is the one to start (they call
    /// [`Dispatcher::delivery_requested`]). Must not block. Default: nothing.
    fn queued(&self, device: &DeviceId) {
        let _ = device;
    }
}

/// What the driver shares with its tasks.
pub(crate) struct Inner {
    pub(crate) engine: Mutex<Engine>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sender: Arc<dyn CommandSender>,
    pub(crate) outlet: Arc<dyn Outlet>,
    pub(crate) registry: Arc<ConfigRegistry>,
    /// Signalled whenever the engine may have become idle.
    idle: Notify,
    /// Where actions run: inputs may come from threads outside the runtime (a hub event
    /// reported where a connection's future was dropped).
    runtime: tokio::runtime::Handle,
    /// Final commands to announce, in the order the engine ended them, and whether a task
    /// is announcing them now: one announcer at a time, so that a device's subscribers see
    /// its results in order.
    announcements: Mutex<Announcements>,
    /// Test-only fault injection: how many more ticks of the retry timer panic.
    #[cfg(test)]
    timer_panics: std::sync::atomic::AtomicU32,
}

#[derive(Default)]
struct Announcements {
    queue: std::collections::VecDeque<Box<QueuedCommand>>,
    running: bool,
}

/// The command path and the delivery of queued commands of one node: the [`Engine`] run
/// against a store, a sender and an outlet. Cheap to clone; must be started inside a tokio
/// runtime.
#[derive(Clone)]
pub struct Dispatcher {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("owner", self.inner.engine.lock().owner())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Starts the dispatcher of node `owner`: takes back the leases of its former life,
    /// then runs the retry tick. Must be called inside a tokio runtime, where its tasks run;
    /// its other methods may be called from any thread.
    pub fn start(
        config: EngineConfig,
        owner: NodeId,
        store: Arc<dyn Store>,
        sender: Arc<dyn CommandSender>,
        outlet: Arc<dyn Outlet>,
        registry: Arc<ConfigRegistry>,
    ) -> Self {
        let engine = Engine::new(config, owner, Instant::now().into_std());
        let inner = Arc::new(Inner {
            engine: Mutex::new(engine),
            store,
            sender,
            outlet,
            registry,
            idle: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
            announcements: Mutex::new(Announcements::default()),
            #[cfg(test)]
            timer_panics: std::sync::atomic::AtomicU32::new(0),
        });
        pump(&inner);
        inner.runtime.spawn(supervise_timer(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The device types.
    pub fn registry(&self) -> &Arc<ConfigRegistry> {
        &self.inner.registry
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.engine.lock().owner().clone()
    }

    /// The device came online: its queued commands are delivered.
    pub fn device_online(&self, device: &DeviceId) {
        self.with_engine(|engine| engine.handle_online(device));
    }

    /// The device went offline.
    pub fn device_offline(&self, device: &DeviceId) {
        self.with_engine(|engine| engine.handle_offline(device));
    }

    /// A holder reported its BLE link to the device up: a cut-off delivery goes again now.
    pub fn link_up(&self, device: &DeviceId) {
        self.with_engine(|engine| engine.handle_link_up(device));
    }

    /// A command was queued or confirmed for the device outside [`execute`](Self::execute)
    /// (an application that calls the store itself): delivers it now if the device is
    /// online.
    ///
    /// The [`Outlet`] is told too ([`Outlet::queued`]): in a cluster, the device may be held
    /// on another node only, whose delivery pass this node cannot start.
    pub fn queued(&self, device: &DeviceId) {
        self.with_engine(|engine| engine.handle_queued(device));
        self.inner.outlet.queued(device);
    }

    /// Another process asked this one to deliver the device's queued commands (it queued or
    /// confirmed one, and this process holds the device): delivers now if the device is
    /// online here. Unlike [`queued`](Self::queued), the [`Outlet`] is not told.
    pub fn delivery_requested(&self, device: &DeviceId) {
        self.with_engine(|engine| engine.handle_queued(device));
    }

    /// Stops starting deliveries; the ones running end once recorded.
    pub fn stop(&self) {
        self.with_engine(Engine::stop);
    }

    /// Waits until no delivery runs, at most `grace`. Returns whether all ended.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.engine.lock().is_idle() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inner.engine.lock().is_idle();
            }
        }
    }

    pub(crate) fn with_engine(&self, f: impl FnOnce(&mut Engine)) {
        f(&mut self.inner.engine.lock());
        pump(&self.inner);
    }

    /// Sends a final command's `command_result` to its device's subscribers, after the
    /// announcements already queued.
    pub(crate) fn announce(&self, command: &QueuedCommand) {
        enqueue_announcement(&self.inner, Box::new(command.clone()));
    }
}

/// Carries out every action the engine has (see [`run`]).
fn pump(inner: &Arc<Inner>) {
    let actions: Vec<Action> = {
        let mut engine = inner.engine.lock();
        let actions = std::iter::from_fn(|| engine.poll()).collect();
        if engine.is_idle() {
            inner.idle.notify_waiters();
        }
        actions
    };
    for action in actions {
        run(inner, action);
    }
}

/// Queues a final command's announcement; starts the announcer unless one runs.
fn enqueue_announcement(inner: &Arc<Inner>, command: Box<QueuedCommand>) {
    {
        let mut announcements = inner.announcements.lock();
        announcements.queue.push_back(command);
        if announcements.running {
            return;
        }
        announcements.running = true;
    }
    let task = Arc::clone(inner);
    inner.runtime.spawn(async move {
        loop {
            let next = {
                let mut announcements = task.announcements.lock();
                let next = announcements.queue.pop_front();
                if next.is_none() {
                    announcements.running = false;
                }
                next
            };
            let Some(command) = next else { return };
            supervised(&task, "announce", announce(&task, &command)).await;
        }
    });
}

/// Feeds an answer to the engine and carries out what follows.
fn answer(inner: &Arc<Inner>, f: impl FnOnce(&mut Engine)) {
    f(&mut inner.engine.lock());
    pump(inner);
}

/// Runs one action on its own task; announcements go to the one announcer, in order.
fn run(inner: &Arc<Inner>, action: Action) {
    let task = Arc::clone(inner);
    let runtime = &inner.runtime;
    match action {
        Action::Reclaim { owner } => {
            runtime.spawn(async move {
                let result = store_call(&task, "reclaim", task.store.reclaim(&owner)).await;
                answer(&task, |engine| engine.handle_reclaimed(result));
            });
        }
        Action::Expire { device } => {
            runtime.spawn(async move {
                let result = store_call(&task, "expire", task.store.expire(&device)).await;
                answer(&task, |engine| engine.handle_expired(&device, result));
            });
        }
        Action::Lease {
            device,
            owner,
            grace,
        } => {
            runtime.spawn(async move {
                let result = store_call(
                    &task,
                    "lease",
                    task.store.lease_next(&device, &owner, grace),
                )
                .await;
                answer(&task, |engine| engine.handle_leased(&device, result));
            });
        }
        Action::Send { leased } => {
            let span = tracing::info_span!(
                "delivery",
                device = %leased.command.device,
                command_id = %leased.command.id,
            );
            runtime.spawn(
                async move {
                    let command = &leased.command;
                    tracing::info!(attempts = command.attempts, "delivering");
                    let start = Instant::now();
                    let result = supervised(
                        &task,
                        "send",
                        task.sender.send_command_traced(
                            command.device.clone(),
                            command.device_type.as_ref().map(DeviceType::as_str),
                            command.payload.clone(),
                            command.timeout.as_duration(),
                        ),
                    )
                    .await;
                    let sent = match result {
                        Some(result) => {
                            let hops = match &result {
                                Ok(reply) => reply.hops,
                                Err(failure) => failure.hops,
                            };
                            let sent = sent_of(result.map_err(|failure| failure.error));
                            if sent.left() && !hops.is_empty() {
                                task.outlet.stages_reached(&hops);
                                // Before the lease ends, so that the ended command (and its
                                // announcement) carries how far this attempt got.
                                let recorded = store_call(
                                    &task,
                                    "record_hops",
                                    task.store.record_hops(&leased.lease, hops),
                                )
                                .await;
                                if let Err(error) = recorded {
                                    tracing::warn!(%error, "cannot record how far the delivery got");
                                }
                            }
                            task.outlet.command_ended_for(
                                &command.device,
                                sent.outcome_label(),
                                sent.left().then(|| start.elapsed()),
                            );
                            sent
                        }
                        // Whether the write left is unknown: counted as an attempt (so a
                        // sender that always panics cannot retry a command forever), and
                        // the pass ends like after a timeout.
                        None => Sent::TimedOut,
                    };
                    let device = command.device.clone();
                    answer(&task, |engine| {
                        engine.handle_sent(&leased.lease, sent, &device);
                    });
                }
                .instrument(span),
            );
        }
        Action::Complete {
            device,
            lease,
            outcome,
        } => {
            runtime.spawn(async move {
                let result =
                    store_call(&task, "complete", task.store.complete(&lease, outcome)).await;
                answer(&task, |engine| engine.handle_ended(&device, result));
            });
        }
        Action::Release { device, lease, cut } => {
            runtime.spawn(async move {
                let result = store_call(&task, "release", task.store.release(&lease, cut)).await;
                answer(&task, |engine| engine.handle_ended(&device, result));
            });
        }
        Action::Announce { command } => enqueue_announcement(&task, command),
        Action::Sweep => {
            runtime.spawn(async move {
                let result = store_call(&task, "sweep", task.store.sweep()).await;
                answer(&task, |engine| engine.handle_swept(result));
            });
        }
        Action::ListDue { limit } => {
            runtime.spawn(async move {
                let result = store_call(&task, "list_due", task.store.due_devices(limit)).await;
                answer(&task, |engine| engine.handle_due(result));
            });
        }
    }
}

/// How a delivery's send ended, for the engine.
fn sent_of(result: Result<CommandReply, CommandError>) -> Sent {
    match result {
        Ok(reply) => Sent::Answered(CommandOutcome::Payload(reply.payload)),
        Err(CommandError::DeviceError(error)) => Sent::Answered(CommandOutcome::Error(error)),
        Err(CommandError::BridgeLost) => Sent::BridgeLost,
        Err(CommandError::Timeout) => Sent::TimedOut,
        Err(CommandError::Offline) => Sent::Offline,
        Err(error) => {
            tracing::warn!(%error, "the queued command could not be sent");
            Sent::NotSent
        }
    }
}

async fn announce(inner: &Inner, command: &QueuedCommand) {
    let Some(result) = CommandView::from(command).result_frame() else {
        return;
    };
    inner.outlet.announce(&command.device, result).await;
    tracing::debug!(
        command_id = %command.id,
        status = command.status.as_str(),
        "outcome announced"
    );
}

/// Runs `future`, catching a panic in it: the panic is logged and counted through the
/// outlet as `what`, and `None` stands in for the answer. Without this, a panic in a
/// spawned action (a store implementation, the sender) would leave the engine waiting for
/// an answer forever, and the device's pass would never end.
async fn supervised<T>(
    inner: &Inner,
    what: &'static str,
    future: impl Future<Output = T>,
) -> Option<T> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(value) => Some(value),
        Err(panic) => {
            tracing::error!(
                task = what,
                panic = panic_message(panic.as_ref()),
                "a dispatcher task panicked; its step is treated as failed"
            );
            inner.outlet.task_panicked(what);
            None
        }
    }
}

/// A store call under [`supervised`]: a panic becomes a [`StoreError::Backend`] of backend
/// `panic`, which the engine handles like any failed call (the pass ends, the next trigger
/// serves the device again).
async fn store_call<T>(
    inner: &Inner,
    what: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    supervised(inner, what, call).await.unwrap_or_else(|| {
        Err(StoreError::Backend {
            backend: "panic",
            source: format!("the store panicked in {what}").into(),
        })
    })
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// How long the retry tick waits before it starts again after a panic, so that a panic on
/// every tick cannot spin.
const TIMER_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs [`run_timer`], starting it again (after [`TIMER_RESTART_DELAY`]) if it panics: a
/// panic there would otherwise stop every retry of this node.
async fn supervise_timer(inner: Weak<Inner>) {
    loop {
        let run = AssertUnwindSafe(run_timer(inner.clone()))
            .catch_unwind()
            .await;
        let Err(panic) = run else { return };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tracing::error!(
            task = "timer",
            panic = panic_message(panic.as_ref()),
            "the delivery timer panicked; starting it again"
        );
        strong.outlet.task_panicked("timer");
        drop(strong);
        tokio::time::sleep(TIMER_RESTART_DELAY).await;
    }
}

/// The retry tick: runs until the dispatcher is gone or stopped.
async fn run_timer(inner: Weak<Inner>) {
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let Some(deadline) = inner.engine.lock().poll_timeout() else {
                return;
            };
            deadline
        };
        tokio::time::sleep_until(Instant::from_std(deadline)).await;
        let Some(inner) = inner.upgrade() else { return };
        #[cfg(test)]
        inner.maybe_panic_in_timer();
        answer(&inner, |engine| {
            engine.handle_timeout(Instant::now().into_std());
        });
    }
}

#[cfg(test)]
impl Inner {
    /// Panics if a test asked the retry timer to ([`Inner::timer_panics`]).
    fn maybe_panic_in_timer(&self) {
        use std::sync::atomic::Ordering;
        if self
            .timer_panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("the retry timer panicked on purpose");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The supervision of the retry timer, with a fault injected into its loop (the loop is
    //! private, so the test lives here). On tokio's paused clock.

    use std::sync::atomic::Ordering;

    use bridge_protocol::http::{CommandRequest, CommandStatus, IfOffline};
    use bridge_protocol::{CommandType, RequestId};
    use bridge_queue::{MemoryStore, Party, StoreConfig};

    use super::*;

    /// Offline until told otherwise; then times the first `ble_write` out and answers every
    /// later one. Counts them.
    #[derive(Default)]
    struct FirstTimesOut {
        online: std::sync::atomic::AtomicBool,
        sent: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl CommandSender for FirstTimesOut {
        async fn send_command(
            &self,
            _device: DeviceId,
            _device_type: Option<&str>,
            _payload: HexPayload,
            _timeout: Duration,
        ) -> Result<CommandReply, CommandError> {
            if !self.online.load(Ordering::SeqCst) {
                return Err(CommandError::Offline);
            }
            if self.sent.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(CommandError::Timeout);
            }
            Ok(CommandReply::new(
                RequestId::new("r-1").unwrap(),
                HexPayload::from_bytes(vec![0x80]),
                Duration::from_millis(3),
            ))
        }
    }

    /// Records the recovered panics, as the server's `bridge_task_panics_total{task}` does.
    #[derive(Default)]
    struct PanicCounter {
        panics: Mutex<Vec<&'static str>>,
    }

    #[async_trait]
    impl Outlet for PanicCounter {
        async fn announce(&self, _device: &DeviceId, _result: CommandResult) {}

        fn task_panicked(&self, what: &'static str) {
            self.panics.lock().push(what);
        }
    }

    async fn settle(dispatch: &Dispatcher) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(dispatch.wait_idle(Duration::from_secs(5)).await);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_in_the_retry_timer_is_counted_and_the_timer_restarts_and_delivers() {
        let store = Arc::new(MemoryStore::new(StoreConfig::default()));
        let sender = Arc::new(FirstTimesOut::default());
        let outlet = Arc::new(PanicCounter::default());
        let dispatch = Dispatcher::start(
            EngineConfig::default(),
            NodeId::new("node-a").unwrap(),
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::clone(&sender) as Arc<dyn CommandSender>,
            Arc::clone(&outlet) as Arc<dyn Outlet>,
            Arc::new(ConfigRegistry::example()),
        );
        let lock = DeviceId::new("lock-1").unwrap();
        let mut request = CommandRequest::new(HexPayload::from_bytes(vec![1]));
        request.if_offline = IfOffline::Queue;
        request.command_type = Some(CommandType::new("unlock").unwrap());
        let Ok(CommandResponse::Queued { command_id }) = dispatch
            .execute(lock.clone(), request, Party::Backend)
            .await
        else {
            panic!("expected queued");
        };
        sender.online.store(true, Ordering::SeqCst);
        dispatch.device_online(&lock);
        settle(&dispatch).await;
        assert_eq!(
            sender.sent.load(Ordering::SeqCst),
            1,
            "the first attempt timed out"
        );

        // The next tick panics in the timer's own loop.
        dispatch.inner.timer_panics.store(1, Ordering::SeqCst);
        let interval = EngineConfig::default().retry_interval;
        tokio::time::sleep(interval + Duration::from_millis(1)).await;
        settle(&dispatch).await;
        assert_eq!(*outlet.panics.lock(), vec!["timer"], "the panic is counted");
        assert_eq!(
            sender.sent.load(Ordering::SeqCst),
            1,
            "the panicked tick delivered nothing"
        );

        // Restarted after its pause, the timer runs the missed tick, which delivers.
        tokio::time::sleep(TIMER_RESTART_DELAY).await;
        settle(&dispatch).await;
        assert_eq!(sender.sent.load(Ordering::SeqCst), 2);
        assert_eq!(
            store.get(&command_id).await.unwrap().status,
            CommandStatus::Succeeded
        );

        // And the ticks go on: one more panic is counted and recovered from the same way.
        dispatch.inner.timer_panics.store(1, Ordering::SeqCst);
        tokio::time::sleep(interval + TIMER_RESTART_DELAY).await;
        settle(&dispatch).await;
        assert_eq!(*outlet.panics.lock(), vec!["timer", "timer"]);
        assert_eq!(dispatch.inner.timer_panics.load(Ordering::SeqCst), 0);
    }
}

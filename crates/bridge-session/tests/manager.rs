//! `SessionManager` end to end: with `mockall` mocks of the transport, and with an in-memory
//! hub whose "phones" answer from their own tasks. All waiting happens in paused virtual
//! time (`start_paused`), never in real sleeps.

// Helpers outside `#[test]` functions unwrap test fixtures too.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::{
    BleOutcome, BleProgress, BleResponse, BleWrite, ConfigRegistry, ConnectionId, DeviceConfig,
    DeviceErrorCode, DeviceId, DeviceType, ErrorCode, HexPayload, Hops, RequestId, Stage,
    TimeoutMs,
};
use bridge_session::{
    CommandError, CommandReply, ProgressAccepted, RejectReason, SessionConfig, SessionManager,
    Transport, TransportError,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

mockall::mock! {
    Bridge {}
    #[async_trait]
    impl Transport for Bridge {
        type InFlight = Ticket;
        async fn send_ble_write(
            &self,
            write: BleWrite,
        ) -> Result<(ConnectionId, Ticket), TransportError>;
    }
}

/// Commands in flight per connection, counted the way a hub counts them: one per live
/// [`Ticket`].
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<ConnectionId, i64>>>);

impl Ledger {
    /// A ticket for one more command in flight on `connection`.
    fn ticket(&self, connection: ConnectionId) -> Ticket {
        *self.0.lock().entry(connection).or_default() += 1;
        Ticket {
            connection,
            ledger: self.clone(),
        }
    }

    /// Live tickets of `connection`.
    fn in_flight(&self, connection: ConnectionId) -> i64 {
        self.0.lock().get(&connection).copied().unwrap_or(0)
    }
}

/// The in-flight ticket of the test transports: counts down on drop.
struct Ticket {
    connection: ConnectionId,
    ledger: Ledger,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        *self.ledger.0.lock().entry(self.connection).or_default() -= 1;
    }
}

const PHONE: ConnectionId = ConnectionId::new(1);
const OTHER_PHONE: ConnectionId = ConnectionId::new(2);
const SECOND: Duration = Duration::from_secs(1);

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn bytes(b: &[u8]) -> HexPayload {
    HexPayload::from_bytes(b.to_vec())
}

/// Just the payload of a reply, for comparing whole results.
fn payload_of(result: Result<CommandReply, CommandError>) -> Result<HexPayload, CommandError> {
    result.map(|reply| reply.payload)
}

fn answer(write: &BleWrite, reply: &[u8]) -> BleResponse {
    BleResponse {
        request_id: write.request_id,
        device_id: write.device_id.clone(),
        outcome: BleOutcome::Payload(bytes(reply)),
    }
}

/// Sends the one-byte `payload` to lock-1 (10 s timeout) from a task of its own.
fn spawn_lock_1_command<T: Transport>(
    manager: &SessionManager<T>,
    payload: u8,
) -> tokio::task::JoinHandle<Result<CommandReply, CommandError>> {
    let manager = manager.clone();
    tokio::spawn(async move {
        manager
            .send_command(device("lock-1"), None, bytes(&[payload]), 10 * SECOND)
            .await
    })
}

fn manager_with<T: Transport>(transport: T, config: &SessionConfig) -> SessionManager<T> {
    SessionManager::new(
        Arc::new(transport),
        Arc::new(ConfigRegistry::example()),
        config,
    )
}

/// A mock that accepts every write on `PHONE`, forwards it to the test, and hands out
/// tickets of the returned ledger.
fn recording_mock() -> (MockBridge, mpsc::UnboundedReceiver<BleWrite>, Ledger) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ledger = Ledger::default();
    let mut mock = MockBridge::new();
    let tickets = ledger.clone();
    mock.expect_send_ble_write().returning(move |write| {
        let _ = tx.send(write);
        Ok((PHONE, tickets.ticket(PHONE)))
    });
    (mock, rx, ledger)
}

// ---------------------------------------------------------------------------------------
// An in-memory hub: devices are held by phone connections, each phone a task that answers
// the writes it receives.

#[derive(Default)]
struct InMemoryHub {
    holders: Mutex<HashMap<DeviceId, (ConnectionId, mpsc::UnboundedSender<BleWrite>)>>,
    ledger: Ledger,
}

#[async_trait]
impl Transport for InMemoryHub {
    type InFlight = Ticket;

    async fn send_ble_write(
        &self,
        write: BleWrite,
    ) -> Result<(ConnectionId, Ticket), TransportError> {
        let holders = self.holders.lock();
        let (conn, phone) = holders
            .get(&write.device_id)
            .ok_or(TransportError::Offline)?;
        let ticket = self.ledger.ticket(*conn);
        phone.send(write).map_err(|_| TransportError::Offline)?;
        Ok((*conn, ticket))
    }
}

impl InMemoryHub {
    /// A phone on `conn` holding `devices`, answering every write with `reply` after `delay`
    /// of virtual time.
    fn connect_phone(
        self: &Arc<Self>,
        manager: &SessionManager<InMemoryHub>,
        conn: ConnectionId,
        devices: &[&str],
        delay: Duration,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<BleWrite>();
        for name in devices {
            self.holders.lock().insert(device(name), (conn, tx.clone()));
        }
        let manager = manager.clone();
        tokio::spawn(async move {
            while let Some(write) = rx.recv().await {
                let manager = manager.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut reply = write.payload.as_bytes().to_vec();
                    reply.reverse();
                    let _ = manager.handle_response(conn, answer(&write, &reply));
                });
            }
        });
    }

    fn in_flight(&self, conn: ConnectionId) -> i64 {
        self.ledger.in_flight(conn)
    }
}

fn hub_manager(config: &SessionConfig) -> (Arc<InMemoryHub>, SessionManager<InMemoryHub>) {
    let hub = Arc::new(InMemoryHub::default());
    let manager = SessionManager::new(
        Arc::clone(&hub),
        Arc::new(ConfigRegistry::example()),
        config,
    );
    (hub, manager)
}

// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_command_gets_the_reply_of_the_phone_that_holds_the_device() {
    let (hub, manager) = hub_manager(&SessionConfig::default());
    hub.connect_phone(&manager, PHONE, &["lock-1"], Duration::from_millis(30));
    let start = Instant::now();
    let reply = manager
        .send_command(device("lock-1"), None, bytes(&[1, 2, 3]), 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply.payload, bytes(&[3, 2, 1]));
    assert_eq!(reply.latency, Duration::from_millis(30));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert_eq!(manager.pending(), 0);
    assert_eq!(
        hub.in_flight(PHONE),
        0,
        "the answer ended the in-flight count"
    );
    let stats = manager.stats();
    assert_eq!((stats.sent, stats.succeeded, stats.pending), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn the_ble_write_carries_the_registry_uuids_the_payload_and_the_timeout() {
    let (mock, mut writes, _) = recording_mock();
    let thermo = DeviceConfig {
        service_uuid: bridge_protocol::expand_short_uuid(0x181a),
        write_uuid: bridge_protocol::expand_short_uuid(0x2a6e),
        listen_uuid: bridge_protocol::expand_short_uuid(0x2a6f),
    };
    let mut registry = ConfigRegistry::example();
    registry.insert(DeviceType::new("thermo").unwrap(), thermo);
    let manager = SessionManager::new(
        Arc::new(mock),
        Arc::new(registry),
        &SessionConfig::default().with_id_prefix(0x42),
    );
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("t-1"), Some("thermo"), bytes(&[0xaa]), 7 * SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    assert_eq!(write.device_id, device("t-1"));
    assert_eq!(write.device_type.as_str(), "thermo");
    assert_eq!(
        (write.service_uuid, write.write_uuid, write.listen_uuid),
        (thermo.service_uuid, thermo.write_uuid, thermo.listen_uuid)
    );
    assert_eq!(write.payload, bytes(&[0xaa]));
    assert_eq!(write.timeout_ms, TimeoutMs::new(7_000).unwrap());
    assert!(write.request_id.as_str().starts_with("0000000000000042"));
    assert_eq!(manager.id_prefix(), "0000000000000042");
    manager
        .handle_response(PHONE, answer(&write, &[1]))
        .unwrap();
    let reply = command.await.unwrap().unwrap();
    assert_eq!(reply.payload, bytes(&[1]));
    assert_eq!(
        reply.request_id, write.request_id,
        "the reply names the write it answers"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_device_type_is_used_when_none_is_named_and_unknown_types_are_refused() {
    let (mock, mut writes, _) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let err = manager
        .send_command(device("lock-1"), Some("kettle"), bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::UnknownDeviceType("kettle".into())));
    assert!(writes.try_recv().is_err(), "nothing was sent");

    let empty = SessionManager::new(
        Arc::new(recording_mock().0),
        Arc::new(ConfigRegistry::new()),
        &SessionConfig::default(),
    );
    let err = empty
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert!(matches!(err, Err(CommandError::UnknownDeviceType(_))));
    assert_eq!((manager.pending(), empty.pending()), (0, 0));

    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    assert_eq!(write.device_type.as_str(), "smart-lock");
    assert_eq!(write.service_uuid, DeviceConfig::SMART_LOCK.service_uuid);
    manager.handle_response(PHONE, answer(&write, &[])).unwrap();
    assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[])));
}

#[tokio::test(start_paused = true)]
async fn a_device_error_is_reported_with_its_code() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    let code = DeviceErrorCode::new("gatt_write_failed").unwrap();
    let failure = BleResponse {
        request_id: write.request_id,
        device_id: write.device_id.clone(),
        outcome: BleOutcome::Error(code.clone()),
    };
    manager.handle_response(PHONE, failure).unwrap();
    assert_eq!(command.await.unwrap(), Err(CommandError::DeviceError(code)));
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0, "a device error ends the count");
    assert_eq!(manager.stats().device_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn a_device_no_bridge_holds_is_offline_at_once() {
    let mut mock = MockBridge::new();
    mock.expect_send_ble_write()
        .times(1)
        .returning(|_| Err(TransportError::Offline));
    let manager = manager_with(mock, &SessionConfig::default());
    let start = Instant::now();
    let err = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::Offline));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(manager.pending(), 0);
    assert_eq!(manager.stats().offline, 1);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_command_times_out_at_its_deadline_and_leaves_nothing_behind() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let start = Instant::now();
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), 3 * SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    assert_eq!(manager.pending(), 1);
    assert_eq!(ledger.in_flight(PHONE), 1);
    assert_eq!(command.await.unwrap(), Err(CommandError::Timeout));
    assert_eq!(start.elapsed(), 3 * SECOND);
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0, "a timeout ends the count");

    // The answer that comes afterwards is an unknown request and changes nothing.
    let late = manager
        .handle_response(PHONE, answer(&write, &[1]))
        .unwrap_err();
    assert_eq!(late.reason, RejectReason::UnknownRequest);
    assert_eq!(late.error_code(), ErrorCode::UnknownRequest);
    assert_eq!(late.request_id, write.request_id);
    let stats = manager.stats();
    assert_eq!(
        (stats.timeouts, stats.unknown_responses, stats.pending),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn one_timer_serves_deadlines_registered_in_any_order() {
    let (mock, _writes, _) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let start = Instant::now();
    let mut commands = Vec::new();
    // Long first, then shorter: each earlier deadline must re-arm the single timer.
    for secs in [30, 10, 1, 20, 2] {
        let manager = manager.clone();
        commands.push(tokio::spawn(async move {
            let timeout = Duration::from_secs(secs);
            let result = manager
                .send_command(device("lock-1"), None, bytes(&[1]), timeout)
                .await;
            (secs, result, Instant::now())
        }));
        tokio::task::yield_now().await;
    }
    for command in commands {
        let (secs, result, ended) = command.await.unwrap();
        assert_eq!(result, Err(CommandError::Timeout));
        assert_eq!(
            ended - start,
            Duration::from_secs(secs),
            "timeout of {secs}s"
        );
    }
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_fails_its_pending_commands_at_once() {
    let (hub, manager) = hub_manager(&SessionConfig::default());
    // Phones that never answer within the test.
    hub.connect_phone(&manager, PHONE, &["a", "b"], Duration::from_hours(1));
    hub.connect_phone(&manager, OTHER_PHONE, &["c"], Duration::from_millis(500));
    let start = Instant::now();
    let spawn = |name: &'static str| {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device(name), None, bytes(&[1]), 10 * SECOND)
                .await
        })
    };
    let (a, b, c) = (spawn("a"), spawn("b"), spawn("c"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(manager.pending(), 3);
    manager.connection_lost(PHONE);
    assert_eq!(a.await.unwrap(), Err(CommandError::BridgeLost));
    assert_eq!(b.await.unwrap(), Err(CommandError::BridgeLost));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "nobody waits for a timeout"
    );
    assert_eq!(payload_of(c.await.unwrap()), Ok(bytes(&[1])));
    assert_eq!(manager.pending(), 0);
    assert_eq!((hub.in_flight(PHONE), hub.in_flight(OTHER_PHONE)), (0, 0));
    assert_eq!(manager.stats().bridge_lost, 2);
}

#[tokio::test(start_paused = true)]
async fn a_released_device_fails_only_its_own_commands_on_that_connection() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let spawn = |name: &'static str| {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device(name), None, bytes(&[1]), 10 * SECOND)
                .await
        })
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let mut sent = HashMap::new();
    for _ in 0..2 {
        let write = writes.recv().await.unwrap();
        sent.insert(write.device_id.as_str().to_owned(), write);
    }
    manager.device_released(OTHER_PHONE, &device("a"));
    assert_eq!(
        manager.pending(),
        2,
        "released on another connection: nothing to fail"
    );
    assert_eq!(ledger.in_flight(PHONE), 2);
    manager.device_released(PHONE, &device("a"));
    assert_eq!(a.await.unwrap(), Err(CommandError::BridgeLost));
    assert_eq!(manager.pending(), 1);
    assert_eq!(
        ledger.in_flight(PHONE),
        1,
        "the release ended a's count only"
    );
    manager
        .handle_response(PHONE, answer(&sent["b"], &[2]))
        .unwrap();
    assert_eq!(payload_of(b.await.unwrap()), Ok(bytes(&[2])));
    assert_eq!(ledger.in_flight(PHONE), 0);
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn spoofed_answers_are_refused_and_do_not_disturb_the_pending_command() {
    let (mock, mut writes, _) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = spawn_lock_1_command(&manager, 1);
    let write = writes.recv().await.unwrap();

    let other_connection = manager
        .handle_response(OTHER_PHONE, answer(&write, &[6, 6]))
        .unwrap_err();
    assert_eq!(other_connection.reason, RejectReason::WrongConnection);
    assert_eq!(other_connection.error_code(), ErrorCode::Forbidden);

    let mut wrong_device = answer(&write, &[6, 6]);
    wrong_device.device_id = device("lock-2");
    let err = manager.handle_response(PHONE, wrong_device).unwrap_err();
    assert_eq!(err.reason, RejectReason::WrongDevice);
    assert_eq!(err.error_code(), ErrorCode::Forbidden);

    let mut guessed = answer(&write, &[6, 6]);
    guessed.request_id = RequestId::new("0123456789abcdef0123456789abcdef").unwrap();
    let err = manager.handle_response(PHONE, guessed).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::UnknownRequest);

    assert_eq!(manager.pending(), 1);
    assert!(!command.is_finished());
    manager
        .handle_response(PHONE, answer(&write, &[1]))
        .unwrap();
    assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[1])));
    let stats = manager.stats();
    assert_eq!(
        (
            stats.rejected_wrong_connection,
            stats.rejected_wrong_device,
            stats.unknown_responses
        ),
        (1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_removes_the_command() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let outcome = tokio::time::timeout(
        Duration::from_millis(10),
        manager.send_command(device("lock-1"), None, bytes(&[1]), 10 * SECOND),
    )
    .await;
    assert!(outcome.is_err(), "the caller gave up first");
    assert_eq!(manager.pending(), 0);
    assert_eq!(
        ledger.in_flight(PHONE),
        0,
        "dropping the caller ends the count"
    );
    let write = writes.recv().await.unwrap();
    let err = manager
        .handle_response(PHONE, answer(&write, &[1]))
        .unwrap_err();
    assert_eq!(err.reason, RejectReason::UnknownRequest);
    assert_eq!(manager.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn aborting_the_task_removes_the_command() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = spawn_lock_1_command(&manager, 1);
    let _write = writes.recv().await.unwrap();
    assert_eq!(manager.pending(), 1);
    assert_eq!(ledger.in_flight(PHONE), 1);
    command.abort();
    assert!(command.await.unwrap_err().is_cancelled());
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_command_whose_send_never_returns_removes_it() {
    struct Stuck;
    #[async_trait]
    impl Transport for Stuck {
        type InFlight = ();

        async fn send_ble_write(&self, _: BleWrite) -> Result<(ConnectionId, ()), TransportError> {
            std::future::pending().await
        }
    }
    let manager = manager_with(Stuck, &SessionConfig::default());
    let outcome = tokio::time::timeout(
        SECOND,
        manager.send_command(device("lock-1"), None, bytes(&[1]), 10 * SECOND),
    )
    .await;
    assert!(outcome.is_err());
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_command_whose_send_outlasts_its_timeout_ends_with_timeout() {
    struct Slow(Ledger);
    #[async_trait]
    impl Transport for Slow {
        type InFlight = Ticket;

        async fn send_ble_write(
            &self,
            _: BleWrite,
        ) -> Result<(ConnectionId, Ticket), TransportError> {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok((PHONE, self.0.ticket(PHONE)))
        }
    }
    let ledger = Ledger::default();
    let manager = manager_with(Slow(ledger.clone()), &SessionConfig::default());
    let start = Instant::now();
    let err = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::Timeout));
    assert_eq!(
        start.elapsed(),
        5 * SECOND,
        "the send itself is not cut short"
    );
    assert_eq!(manager.pending(), 0);
    assert_eq!(
        ledger.in_flight(PHONE),
        0,
        "the ticket of a command that ended while sending ends with the send"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_pending_commands_and_refuses_new_ones() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = spawn_lock_1_command(&manager, 1);
    let _write = writes.recv().await.unwrap();
    assert_eq!(ledger.in_flight(PHONE), 1);
    manager.shutdown();
    assert_eq!(command.await.unwrap(), Err(CommandError::Shutdown));
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0, "shutdown ends the count");
    let err = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::Shutdown));
    assert_eq!(manager.pending(), 0);
    manager.shutdown();
    assert_eq!(manager.stats().shutdown, 1);
}

#[tokio::test(start_paused = true)]
async fn commands_over_the_pending_limit_are_refused() {
    let (mock, mut writes, _) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default().with_max_pending(2));
    let mut commands = Vec::new();
    for _ in 0..2 {
        let manager = manager.clone();
        commands.push(tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), 10 * SECOND)
                .await
        }));
    }
    let first = writes.recv().await.unwrap();
    let _second = writes.recv().await.unwrap();
    let err = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::TooManyPending));
    assert_eq!(manager.pending(), 2);
    // One slot frees up: the next command is accepted again.
    manager
        .handle_response(PHONE, answer(&first, &[1]))
        .unwrap();
    let third = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[3]), SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    assert_eq!(write.payload, bytes(&[3]));
    manager.shutdown();
    assert_eq!(third.await.unwrap(), Err(CommandError::Shutdown));
    for command in commands {
        command.await.unwrap().ok();
    }
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_a_per_device_limit_commands_wait_for_a_slot_within_their_timeout() {
    let (mock, mut writes, _) = recording_mock();
    let config = SessionConfig::default().with_per_device_limit(NonZeroUsize::new(1));
    let manager = manager_with(mock, &config);
    let start = Instant::now();
    let spawn = |name: &'static str, payload: u8, timeout: Duration| {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device(name), None, bytes(&[payload]), timeout)
                .await
        })
    };
    let first = spawn("lock-1", 1, 10 * SECOND);
    let first_write = writes.recv().await.unwrap();
    // Same device: waits. Another device: goes at once.
    let second = spawn("lock-1", 2, 10 * SECOND);
    let impatient = spawn("lock-1", 3, SECOND);
    let other = spawn("lock-2", 4, 10 * SECOND);
    let other_write = writes.recv().await.unwrap();
    assert_eq!(other_write.payload, bytes(&[4]));
    assert_eq!(
        manager.pending(),
        2,
        "waiting for a slot is not pending yet"
    );

    // The impatient one spends its whole timeout waiting for the slot.
    assert_eq!(impatient.await.unwrap(), Err(CommandError::Timeout));
    assert_eq!(start.elapsed(), SECOND);

    tokio::time::sleep(SECOND).await;
    manager
        .handle_response(PHONE, answer(&first_write, &[1]))
        .unwrap();
    assert_eq!(payload_of(first.await.unwrap()), Ok(bytes(&[1])));
    let second_write = writes.recv().await.unwrap();
    assert_eq!(second_write.payload, bytes(&[2]));
    // It waited 2 s for its slot: 8 s of its 10 s are left.
    assert_eq!(second_write.timeout_ms, TimeoutMs::new(8_000).unwrap());
    manager
        .handle_response(PHONE, answer(&second_write, &[2]))
        .unwrap();
    manager
        .handle_response(PHONE, answer(&other_write, &[4]))
        .unwrap();
    assert_eq!(payload_of(second.await.unwrap()), Ok(bytes(&[2])));
    assert_eq!(payload_of(other.await.unwrap()), Ok(bytes(&[4])));
    assert!(
        writes.try_recv().is_err(),
        "the impatient command was never sent"
    );
    assert_eq!(manager.pending(), 0);
    assert_eq!(manager.stats().timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_command_dropped_after_a_slot_was_handed_to_it_passes_the_slot_on() {
    let (mock, mut writes, _) = recording_mock();
    let config = SessionConfig::default().with_per_device_limit(NonZeroUsize::new(1));
    let manager = manager_with(mock, &config);
    let holder = spawn_lock_1_command(&manager, 1);
    let holder_write = writes.recv().await.unwrap();

    // The second command waits for the slot; it is polled once, then never again.
    let mut waiting =
        Box::pin(manager.send_command(device("lock-1"), None, bytes(&[2]), 10 * SECOND));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());

    // The holder ends and hands its slot to the waiting command, which is dropped before
    // it ever runs again.
    manager
        .handle_response(PHONE, answer(&holder_write, &[1]))
        .unwrap();
    assert_eq!(payload_of(holder.await.unwrap()), Ok(bytes(&[1])));
    drop(waiting);

    // The slot was passed on, not lost: a third command goes out at once.
    let third = spawn_lock_1_command(&manager, 3);
    let third_write = tokio::time::timeout(SECOND, writes.recv())
        .await
        .expect("the third command got the slot at once")
        .unwrap();
    assert_eq!(third_write.payload, bytes(&[3]));
    manager
        .handle_response(PHONE, answer(&third_write, &[3]))
        .unwrap();
    assert_eq!(payload_of(third.await.unwrap()), Ok(bytes(&[3])));
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn slots_go_to_waiting_commands_in_arrival_order_past_timed_out_and_dropped_ones() {
    let (mock, mut writes, ledger) = recording_mock();
    let config = SessionConfig::default().with_per_device_limit(NonZeroUsize::new(2));
    let manager = manager_with(mock, &config);
    let start = Instant::now();
    let spawn = |payload: u8, timeout: Duration| {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[payload]), timeout)
                .await
        })
    };
    let first = spawn(1, 10 * SECOND);
    let second = spawn(2, 10 * SECOND);
    let first_write = writes.recv().await.unwrap();
    let second_write = writes.recv().await.unwrap();
    // Six commands queue up, one millisecond apart (each has joined the queue before the
    // next arrives); the fourth gives up after one second, the fifth is dropped.
    let mut waiting = Vec::new();
    for (payload, timeout) in [(3, 10), (4, 1), (5, 10), (6, 10), (7, 10), (8, 10)] {
        waiting.push(spawn(payload, timeout * SECOND));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut waiting = waiting.into_iter();
    let (third, fourth, fifth) = (
        waiting.next().unwrap(),
        waiting.next().unwrap(),
        waiting.next().unwrap(),
    );
    assert_eq!(fourth.await.unwrap(), Err(CommandError::Timeout));
    // It arrived 1 ms after the start.
    assert_eq!(start.elapsed(), SECOND + Duration::from_millis(1));
    fifth.abort();
    assert!(fifth.await.unwrap_err().is_cancelled());
    assert_eq!(manager.pending(), 2, "waiting for a slot is not pending");
    assert!(writes.try_recv().is_err());

    // Each answer hands its slot to the oldest command still waiting.
    manager
        .handle_response(PHONE, answer(&second_write, &[2]))
        .unwrap();
    let third_write = writes.recv().await.unwrap();
    assert_eq!(third_write.payload, bytes(&[3]));
    manager
        .handle_response(PHONE, answer(&first_write, &[1]))
        .unwrap();
    let sixth_write = writes.recv().await.unwrap();
    assert_eq!(
        sixth_write.payload,
        bytes(&[6]),
        "past the timed-out and the dropped"
    );
    // It arrived 3 ms after the start and has waited since: the rest of its 10 s.
    let waited = start
        .elapsed()
        .checked_sub(Duration::from_millis(3))
        .unwrap();
    let left = (10 * SECOND).checked_sub(waited).unwrap();
    assert_eq!(
        sixth_write.timeout_ms,
        TimeoutMs::saturating_from_duration(left)
    );
    manager
        .handle_response(PHONE, answer(&sixth_write, &[6]))
        .unwrap();
    let seventh_write = writes.recv().await.unwrap();
    assert_eq!(seventh_write.payload, bytes(&[7]));
    assert!(writes.try_recv().is_err(), "never more than two in flight");
    assert_eq!(ledger.in_flight(PHONE), 2);
    manager
        .handle_response(PHONE, answer(&third_write, &[3]))
        .unwrap();
    let eighth_write = writes.recv().await.unwrap();
    assert_eq!(eighth_write.payload, bytes(&[8]));
    for write in [&seventh_write, &eighth_write] {
        manager
            .handle_response(PHONE, answer(write, write.payload.as_bytes()))
            .unwrap();
    }
    for (command, payload) in [(first, 1), (second, 2), (third, 3)] {
        assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[payload])));
    }
    for (command, payload) in waiting.zip([6, 7, 8]) {
        assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[payload])));
    }
    assert!(
        writes.try_recv().is_err(),
        "the timed-out and the dropped were never sent"
    );
    assert_eq!(manager.stats().timeouts, 1);
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_commands_waiting_for_a_slot_at_once() {
    let (mock, mut writes, _) = recording_mock();
    let config = SessionConfig::default().with_per_device_limit(NonZeroUsize::new(1));
    let manager = manager_with(mock, &config);
    let holder = spawn_lock_1_command(&manager, 1);
    writes.recv().await.unwrap();
    // Polled once, then never again until the shutdown: it has to be woken.
    let waiter = spawn_lock_1_command(&manager, 2);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = Instant::now();
    manager.shutdown();
    assert_eq!(waiter.await.unwrap(), Err(CommandError::Shutdown));
    assert_eq!(holder.await.unwrap(), Err(CommandError::Shutdown));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(
        writes.try_recv().is_err(),
        "the waiting command was never sent"
    );
    assert_eq!(manager.stats().timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn by_default_one_device_holds_at_most_sixteen_pending_commands() {
    let (mock, mut writes, ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let mut commands = Vec::new();
    for i in 0..40_u8 {
        let manager = manager.clone();
        commands.push(tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[i]), 120 * SECOND)
                .await
        }));
    }
    let mut sent = Vec::new();
    for _ in 0..16 {
        sent.push(writes.recv().await.unwrap());
    }
    // Let every other command run as far as it can.
    tokio::time::sleep(SECOND).await;
    assert!(writes.try_recv().is_err(), "a 17th write went out");
    assert_eq!(manager.pending(), 16);
    assert_eq!(ledger.in_flight(PHONE), 16);
    // Another device is not held up by this one.
    let other = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-2"), None, bytes(&[99]), 120 * SECOND)
                .await
        })
    };
    assert_eq!(writes.recv().await.unwrap().payload, bytes(&[99]));
    // An answer frees a place for the next waiting command.
    manager
        .handle_response(PHONE, answer(&sent[0], &[0]))
        .unwrap();
    writes.recv().await.unwrap();
    assert_eq!(manager.pending(), 17, "16 for lock-1, 1 for lock-2");
    manager.shutdown();
    for command in commands {
        command.await.unwrap().ok();
    }
    other.await.unwrap().ok();
    assert_eq!(manager.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn request_ids_are_unique_across_shards_and_threads() {
    let (mock, mut writes, _) = recording_mock();
    let manager = manager_with(
        mock,
        // 2,000 pending over 7 devices: no per-device limit here.
        &SessionConfig::default()
            .with_shards(NonZeroUsize::new(8).unwrap())
            .with_per_device_limit(None),
    );
    let mut commands = Vec::new();
    for i in 0..2_000 {
        let manager = manager.clone();
        commands.push(tokio::spawn(async move {
            manager
                .send_command(
                    device(&format!("d-{}", i % 7)),
                    None,
                    bytes(&[1]),
                    10 * SECOND,
                )
                .await
        }));
    }
    let mut ids = HashSet::new();
    for _ in 0..2_000 {
        let write = writes.recv().await.unwrap();
        assert!(write.request_id.as_str().starts_with(manager.id_prefix()));
        assert!(
            ids.insert(write.request_id),
            "duplicate {}",
            write.request_id
        );
    }
    assert_eq!(manager.pending(), 2_000);
    manager.shutdown();
    for command in commands {
        assert_eq!(command.await.unwrap(), Err(CommandError::Shutdown));
    }
    assert_eq!(manager.pending(), 0);
}

#[test]
fn ids_of_two_managers_differ() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = manager_with(recording_mock().0, &SessionConfig::default());
        let b = manager_with(recording_mock().0, &SessionConfig::default());
        assert_ne!(a.id_prefix(), b.id_prefix());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_commands_on_two_workers_all_end_and_leave_nothing_behind() {
    let (hub, manager) = hub_manager(&SessionConfig::default());
    let names: Vec<String> = (0..16).map(|i| format!("lock-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    hub.connect_phone(&manager, PHONE, &refs[..8], Duration::ZERO);
    hub.connect_phone(&manager, OTHER_PHONE, &refs[8..], Duration::ZERO);
    let mut commands = Vec::new();
    for i in 0..64_u8 {
        let manager = manager.clone();
        let name = names[usize::from(i % 16)].clone();
        commands.push(tokio::spawn(async move {
            for _ in 0..50 {
                let reply = manager
                    .send_command(device(&name), None, bytes(&[i, 0]), 10 * SECOND)
                    .await;
                assert_eq!(payload_of(reply), Ok(bytes(&[0, i])));
            }
        }));
    }
    for command in commands {
        command.await.unwrap();
    }
    assert_eq!(manager.pending(), 0);
    assert_eq!(manager.stats().succeeded, 64 * 50);
    assert_eq!((hub.in_flight(PHONE), hub.in_flight(OTHER_PHONE)), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_limit_is_exact_across_shards_and_threads() {
    let mut mock = MockBridge::new();
    let ledger = Ledger::default();
    let tickets = ledger.clone();
    mock.expect_send_ble_write()
        .returning(move |_| Ok((PHONE, tickets.ticket(PHONE))));
    let config = SessionConfig::default()
        .with_max_pending(50)
        .with_shards(NonZeroUsize::new(8).unwrap());
    let manager = manager_with(mock, &config);
    let (refused_tx, mut refused_rx) = mpsc::unbounded_channel();
    let mut commands = Vec::new();
    for i in 0..200 {
        let manager = manager.clone();
        let refused_tx = refused_tx.clone();
        commands.push(tokio::spawn(async move {
            let result = manager
                .send_command(device(&format!("d-{i}")), None, bytes(&[1]), 60 * SECOND)
                .await;
            if result == Err(CommandError::TooManyPending) {
                let _ = refused_tx.send(());
            }
            result
        }));
    }
    drop(refused_tx);
    let mut refused = 0;
    while refused < 150 {
        refused_rx.recv().await.unwrap();
        refused += 1;
    }
    while manager.pending() < 50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(manager.pending(), 50);
    manager.shutdown();
    let mut ended = HashMap::new();
    for command in commands {
        *ended.entry(payload_of(command.await.unwrap())).or_insert(0) += 1;
    }
    assert_eq!(ended[&Err(CommandError::TooManyPending)], 150);
    assert_eq!(ended[&Err(CommandError::Shutdown)], 50);
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unrepresentably_long_timeout_does_not_panic() {
    let (mock, mut writes, _) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), Duration::MAX)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    assert_eq!(
        write.timeout_ms,
        TimeoutMs::new(u64::from(TimeoutMs::MAX)).unwrap()
    );
    manager
        .handle_response(PHONE, answer(&write, &[7]))
        .unwrap();
    assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[7])));
}

/// A bridge that answers before its send returns: from the connection it reports, or, when
/// `spoof` is set, from another one.
struct AnswersFirst {
    manager: std::sync::OnceLock<SessionManager<AnswersFirst>>,
    spoof: bool,
    ledger: Ledger,
}

#[async_trait]
impl Transport for AnswersFirst {
    type InFlight = Ticket;

    async fn send_ble_write(
        &self,
        write: BleWrite,
    ) -> Result<(ConnectionId, Ticket), TransportError> {
        let answered_on = if self.spoof { OTHER_PHONE } else { PHONE };
        if let Some(manager) = self.manager.get() {
            assert_eq!(
                manager.handle_response(answered_on, answer(&write, &[5])),
                Ok(())
            );
        }
        Ok((PHONE, self.ledger.ticket(PHONE)))
    }
}

fn answers_first(spoof: bool) -> (SessionManager<AnswersFirst>, Ledger) {
    let ledger = Ledger::default();
    let transport = Arc::new(AnswersFirst {
        manager: std::sync::OnceLock::new(),
        spoof,
        ledger: ledger.clone(),
    });
    let manager = SessionManager::new(
        Arc::clone(&transport),
        Arc::new(ConfigRegistry::example()),
        &SessionConfig::default(),
    );
    let _ = transport.manager.set(manager.clone());
    (manager, ledger)
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_arrives_before_the_send_returns_still_counts() {
    let (manager, ledger) = answers_first(false);
    let reply = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(payload_of(reply), Ok(bytes(&[5])));
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
    manager.shutdown();
}

#[tokio::test(start_paused = true)]
async fn an_early_answer_from_another_connection_never_resolves_the_command() {
    let (manager, ledger) = answers_first(true);
    let reply = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(reply, Err(CommandError::Timeout));
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
    let stats = manager.stats();
    assert_eq!((stats.rejected_wrong_connection, stats.timeouts), (1, 1));
    manager.shutdown();
}

/// A transport that takes `delay` to answer `result`.
struct SlowTransport {
    delay: Duration,
    result: Result<ConnectionId, TransportError>,
    ledger: Ledger,
}

#[async_trait]
impl Transport for SlowTransport {
    type InFlight = Ticket;

    async fn send_ble_write(&self, _: BleWrite) -> Result<(ConnectionId, Ticket), TransportError> {
        tokio::time::sleep(self.delay).await;
        self.result.map(|conn| (conn, self.ledger.ticket(conn)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_command_that_times_out_while_the_transport_looks_for_a_bridge_is_a_timeout() {
    let slow = SlowTransport {
        delay: 5 * SECOND,
        result: Err(TransportError::Offline),
        ledger: Ledger::default(),
    };
    let manager = manager_with(slow, &SessionConfig::default());
    let err = manager
        .send_command(device("lock-1"), None, bytes(&[1]), SECOND)
        .await;
    assert_eq!(err, Err(CommandError::Timeout));
    assert_eq!(manager.pending(), 0);
    let stats = manager.stats();
    assert_eq!((stats.timeouts, stats.offline), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_the_send_ends_the_command_with_shutdown() {
    let ledger = Ledger::default();
    let slow = SlowTransport {
        delay: 5 * SECOND,
        result: Ok(PHONE),
        ledger: ledger.clone(),
    };
    let manager = manager_with(slow, &SessionConfig::default());
    let command = spawn_lock_1_command(&manager, 1);
    tokio::time::sleep(SECOND).await;
    manager.shutdown();
    assert_eq!(command.await.unwrap(), Err(CommandError::Shutdown));
    assert_eq!(manager.pending(), 0);
    assert_eq!(ledger.in_flight(PHONE), 0);
}

#[tokio::test(start_paused = true)]
async fn a_manager_over_a_dyn_transport_is_shareable_and_its_futures_are_send() {
    fn assert_send<F: Send>(future: F) -> F {
        future
    }
    fn assert_shareable<S: Send + Sync + Clone + 'static>(_: &S) {}

    let (mock, mut writes, _) = recording_mock();
    let transport: Arc<dyn Transport<InFlight = Ticket>> = Arc::new(mock);
    let manager: SessionManager<dyn Transport<InFlight = Ticket>> = SessionManager::new(
        transport,
        Arc::new(ConfigRegistry::example()),
        &SessionConfig::default(),
    );
    assert_shareable(&manager);
    let command = tokio::spawn({
        let manager = manager.clone();
        async move {
            assert_send(manager.send_command(device("lock-1"), None, bytes(&[1]), SECOND)).await
        }
    });
    let write = writes.recv().await.unwrap();
    manager
        .handle_response(PHONE, answer(&write, &[2]))
        .unwrap();
    assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[2])));
}

// ---- ble_progress (PROTOCOL.md 3.2, version 1.1) ----

fn progress(write: &BleWrite, stage: Stage) -> BleProgress {
    BleProgress {
        request_id: write.request_id,
        device_id: write.device_id.clone(),
        stage,
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_carries_the_stages_the_bridge_reported_in_ms_since_the_send() {
    let (mock, mut writes, _ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command_traced(device("lock-1"), None, bytes(&[1]), 3 * SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    assert_eq!(
        manager.handle_progress(PHONE, &progress(&write, Stage::Received)),
        Ok(ProgressAccepted::Recorded)
    );
    tokio::time::sleep(Duration::from_millis(38)).await;
    assert_eq!(
        manager.handle_progress(PHONE, &progress(&write, Stage::Written)),
        Ok(ProgressAccepted::Recorded)
    );
    assert_eq!(
        manager.handle_progress(PHONE, &progress(&write, Stage::Connected)),
        Ok(ProgressAccepted::Ignored),
        "earlier than written"
    );
    let refused = manager
        .handle_progress(OTHER_PHONE, &progress(&write, Stage::Written))
        .unwrap_err();
    assert_eq!(refused.error_code(), ErrorCode::Forbidden);

    let failure = command.await.unwrap().unwrap_err();
    assert_eq!(failure.error, CommandError::Timeout);
    assert_eq!(failure.request_id, Some(write.request_id));
    assert_eq!(failure.hops.stage, Some(Stage::Written));
    assert_eq!(failure.hops.progress.received_ms, Some(3));
    assert_eq!(failure.hops.progress.connected_ms, None);
    assert_eq!(failure.hops.progress.written_ms, Some(41));

    // Too late now: the command ended.
    let late = manager
        .handle_progress(PHONE, &progress(&write, Stage::Written))
        .unwrap_err();
    assert_eq!(late.error_code(), ErrorCode::UnknownRequest);
    let stats = manager.stats();
    assert_eq!(
        (
            stats.progress_recorded,
            stats.progress_ignored,
            stats.progress_rejected
        ),
        (2, 1, 2),
        "the other connection's and the late one are refused"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_says_sent_when_the_bridge_reported_nothing_and_an_offline_command_nothing() {
    let (mock, mut writes, _ledger) = recording_mock();
    let manager = manager_with(mock, &SessionConfig::default());
    let command = {
        let manager = manager.clone();
        tokio::spawn(async move {
            manager
                .send_command(device("lock-1"), None, bytes(&[1]), 3 * SECOND)
                .await
        })
    };
    let write = writes.recv().await.unwrap();
    manager
        .handle_response(PHONE, answer(&write, &[2]))
        .unwrap();
    let reply = command.await.unwrap().unwrap();
    assert_eq!(reply.hops, Hops::SENT);

    let mut offline = MockBridge::new();
    offline
        .expect_send_ble_write()
        .returning(|_| Err(TransportError::Offline));
    let manager = manager_with(offline, &SessionConfig::default());
    let failure = manager
        .send_command_traced(device("lock-1"), None, bytes(&[1]), 3 * SECOND)
        .await
        .unwrap_err();
    assert_eq!(failure.error, CommandError::Offline);
    assert_eq!(failure.hops, Hops::NONE);
    assert_eq!(failure.request_id, None);
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_sends_at_once_is_asked_without_its_boxed_send_and_keeps_every_guarantee()
{
    /// Sends at once through `send_ble_write_now`; its boxed send must never be called.
    struct AtOnce {
        ledger: Ledger,
        writes: Arc<Mutex<Vec<BleWrite>>>,
        offline: bool,
    }
    #[async_trait]
    impl Transport for AtOnce {
        type InFlight = Ticket;

        async fn send_ble_write(
            &self,
            _: BleWrite,
        ) -> Result<(ConnectionId, Ticket), TransportError> {
            panic!("the session manager awaited the boxed send of a transport that sends at once")
        }

        fn send_ble_write_now(&self, write: BleWrite) -> bridge_session::SendNow<'_, Ticket> {
            if self.offline {
                return bridge_session::SendNow::Sent(Err(TransportError::Offline));
            }
            self.writes.lock().push(write);
            bridge_session::SendNow::Sent(Ok((PHONE, self.ledger.ticket(PHONE))))
        }
    }
    let ledger = Ledger::default();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let manager = manager_with(
        AtOnce {
            ledger: ledger.clone(),
            writes: Arc::clone(&writes),
            offline: false,
        },
        &SessionConfig::default(),
    );

    // Answered: the reply comes back and the ticket ends with the command.
    let command = spawn_lock_1_command(&manager, 1);
    while manager.pending() == 0 || ledger.in_flight(PHONE) == 0 {
        tokio::task::yield_now().await;
    }
    let write = writes.lock().pop().unwrap();
    manager
        .handle_response(PHONE, answer(&write, &[7]))
        .unwrap();
    assert_eq!(payload_of(command.await.unwrap()), Ok(bytes(&[7])));
    assert_eq!((manager.pending(), ledger.in_flight(PHONE)), (0, 0));

    // Unanswered: it times out at its deadline, and its ticket ends.
    let outcome = manager
        .send_command(device("lock-1"), None, bytes(&[2]), SECOND)
        .await;
    assert_eq!(outcome.map(|r| r.payload), Err(CommandError::Timeout));
    assert_eq!((manager.pending(), ledger.in_flight(PHONE)), (0, 0));

    // Offline at once.
    let offline = manager_with(
        AtOnce {
            ledger: ledger.clone(),
            writes: Arc::clone(&writes),
            offline: true,
        },
        &SessionConfig::default(),
    );
    let outcome = offline
        .send_command(device("lock-1"), None, bytes(&[3]), SECOND)
        .await;
    assert_eq!(outcome.map(|r| r.payload), Err(CommandError::Offline));
    assert_eq!(offline.pending(), 0);
}

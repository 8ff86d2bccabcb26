//! Round trips through the correlation engine (issue 3): send a command, the transport echoes
//! the device's answer at once, the caller gets it. Throughput in round trips per second.
//!
//! * `bridge/*` — `bridge_session::SessionManager`.
//! * `naive/*` — the yardstick: the straightforward port, a
//!   `parking_lot::Mutex<HashMap<String, oneshot::Sender<_>>>` keyed by UUID v4 strings, with a
//!   `tokio::time::timeout` per command, written here.
//!
//! Both drive the same echoing transport through the same `Transport` trait and build the
//! same `ble_write` frame from the same registry.
//!
//! Run: `cargo bench -p benches --bench correlation`

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bridge_protocol::{
    BleOutcome, BleResponse, BleWrite, ConfigRegistry, ConnectionId, DeviceId, HexPayload,
    RequestId, TimeoutMs,
};
use bridge_session::{CommandError, SessionConfig, SessionManager, Transport, TransportError};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION: ConnectionId = ConnectionId::new(1);
/// Commands in flight in the contended benches.
const IN_FLIGHT: usize = 256;
/// Commands that stay pending in `bridge/pending_10k`.
const BACKGROUND: usize = 10_000;
/// Devices whose name starts with this never answer.
const SILENT: &str = "silent-";

/// Whoever correlates the echoed answers.
trait Responder: Send + Sync + 'static {
    fn respond(&self, connection: ConnectionId, response: BleResponse);
}

/// A bridge that answers every `ble_write` at once with its own payload, before the send
/// returns, except for devices named `silent-*`.
struct Echo<R> {
    responder: OnceLock<R>,
    /// When set, answers go through this channel to a responder task instead (the
    /// `correlation_deferred` group): the caller then really waits for its answer.
    deferred: OnceLock<mpsc::UnboundedSender<BleResponse>>,
}

impl<R: Responder + Clone> Echo<R> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            responder: OnceLock::new(),
            deferred: OnceLock::new(),
        })
    }

    /// Makes this echo answer from a task of its own, as a real bridge's answer comes from
    /// the connection's reader task. Call inside the runtime, after the responder is set.
    fn defer(&self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<BleResponse>();
        let _ = self.deferred.set(tx);
        if let Some(responder) = self.responder.get().cloned() {
            tokio::spawn(async move {
                while let Some(response) = rx.recv().await {
                    responder.respond(CONNECTION, response);
                }
            });
        }
    }
}

#[async_trait]
impl<R: Responder> Transport for Echo<R> {
    // Counts nothing in flight, as before (the default `command_finished` did nothing).
    type InFlight = ();

    async fn send_ble_write(&self, write: BleWrite) -> Result<(ConnectionId, ()), TransportError> {
        if write.device_id.as_str().starts_with(SILENT) {
            return Ok((CONNECTION, ()));
        }
        let response = BleResponse {
            request_id: write.request_id,
            device_id: write.device_id,
            outcome: BleOutcome::Payload(write.payload),
        };
        if let Some(deferred) = self.deferred.get() {
            let _ = deferred.send(response);
        } else if let Some(responder) = self.responder.get() {
            responder.respond(CONNECTION, response);
        }
        Ok((CONNECTION, ()))
    }
}

type BridgeManager = SessionManager<Echo<Bridge>>;

/// The engine under test behind the echo.
#[derive(Clone)]
struct Bridge(BridgeManager);

impl Responder for Bridge {
    fn respond(&self, connection: ConnectionId, response: BleResponse) {
        let _ = self.0.handle_response(connection, response);
    }
}

fn bridge_manager() -> BridgeManager {
    bridge_manager_with_echo().0
}

fn bridge_manager_with_echo() -> (BridgeManager, Arc<Echo<Bridge>>) {
    let echo = Echo::new();
    let manager = SessionManager::new(
        Arc::clone(&echo),
        Arc::new(ConfigRegistry::example()),
        &SessionConfig::default(),
    );
    let _ = echo.responder.set(Bridge(manager.clone()));
    (manager, echo)
}

/// The yardstick: what a competent engineer writes in an afternoon.
struct Naive {
    pending: parking_lot::Mutex<HashMap<String, NaivePending>>,
    registry: ConfigRegistry,
    transport: Arc<Echo<NaiveHandle>>,
}

struct NaivePending {
    device_id: DeviceId,
    reply: oneshot::Sender<Result<HexPayload, CommandError>>,
}

#[derive(Clone)]
struct NaiveHandle(Arc<Naive>);

impl Responder for NaiveHandle {
    fn respond(&self, _connection: ConnectionId, response: BleResponse) {
        self.0.handle_response(response);
    }
}

impl Naive {
    fn new() -> Arc<Self> {
        let transport = Echo::new();
        let naive = Arc::new(Self {
            pending: parking_lot::Mutex::new(HashMap::new()),
            registry: ConfigRegistry::example(),
            transport: Arc::clone(&transport),
        });
        let _ = transport.responder.set(NaiveHandle(Arc::clone(&naive)));
        naive
    }

    async fn send_command(
        &self,
        device_id: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Result<HexPayload, CommandError> {
        let (device_type, uuids) = self.registry.resolve(device_type).map_err(|_| {
            CommandError::UnknownDeviceType(device_type.unwrap_or_default().to_owned())
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        let request_id = RequestId::new(&id).map_err(|_| CommandError::Offline)?;
        let (reply, answer) = oneshot::channel();
        self.pending.lock().insert(
            id.clone(),
            NaivePending {
                device_id: device_id.clone(),
                reply,
            },
        );
        let write = BleWrite {
            request_id,
            device_id,
            device_type: device_type.clone(),
            service_uuid: uuids.service_uuid,
            write_uuid: uuids.write_uuid,
            listen_uuid: uuids.listen_uuid,
            payload,
            timeout_ms: TimeoutMs::saturating_from_duration(timeout),
        };
        if self.transport.send_ble_write(write).await.is_err() {
            self.pending.lock().remove(&id);
            return Err(CommandError::Offline);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::BridgeLost),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(CommandError::Timeout)
            }
        }
    }

    fn handle_response(&self, response: BleResponse) {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.remove(response.request_id.as_str()) else {
            return; // unknown_request
        };
        if entry.device_id != response.device_id {
            // forbidden: put it back untouched.
            pending.insert(response.request_id.as_str().to_owned(), entry);
            return;
        }
        drop(pending);
        let result = match response.outcome {
            BleOutcome::Payload(payload) => Ok(payload),
            BleOutcome::Error(code) => Err(CommandError::DeviceError(code)),
        };
        let _ = entry.reply.send(result);
    }
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

fn payload() -> HexPayload {
    HexPayload::from_bytes(vec![0xaa, 0xbb, 0xcc, 0xdd])
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime")
}

/// One command round trip, for the contended benches.
trait Engine: Clone + Send + Sync + 'static {
    fn round_trip(&self, device: DeviceId) -> impl Future<Output = bool> + Send + '_;
}

impl Engine for BridgeManager {
    async fn round_trip(&self, device: DeviceId) -> bool {
        self.send_command(device, None, payload(), TIMEOUT)
            .await
            .is_ok()
    }
}

impl Engine for Arc<Naive> {
    async fn round_trip(&self, device: DeviceId) -> bool {
        self.send_command(device, None, payload(), TIMEOUT)
            .await
            .is_ok()
    }
}

/// Runs `iters` round trips spread over `IN_FLIGHT` tasks of one device each, and returns
/// the wall time.
fn contended(rt: &Runtime, iters: u64, engine: &impl Engine) -> Duration {
    let per_task = iters.div_ceil(IN_FLIGHT as u64);
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let engine = engine.clone();
                let device = device(&format!("lock-{i}"));
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let answered = engine.round_trip(device.clone()).await;
                        assert!(answered, "echo answers every command");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("bench task");
        }
        start.elapsed()
    })
}

fn correlation(c: &mut Criterion) {
    let mut group = c.benchmark_group("correlation");
    group.throughput(Throughput::Elements(1));

    {
        let rt = current_thread();
        let manager = rt.block_on(async { bridge_manager() });
        let lock = device("lock-1");
        group.bench_function("bridge/single", |b| {
            b.to_async(&rt)
                .iter(|| manager.send_command(lock.clone(), None, payload(), TIMEOUT));
        });
        assert_eq!(manager.pending(), 0);
    }
    {
        let rt = current_thread();
        let naive = Naive::new();
        let lock = device("lock-1");
        group.bench_function("naive/single", |b| {
            b.to_async(&rt)
                .iter(|| naive.send_command(lock.clone(), None, payload(), TIMEOUT));
        });
        assert!(naive.pending.lock().is_empty());
    }
    {
        let rt = two_workers();
        let manager = rt.block_on(async { bridge_manager() });
        group.bench_function("bridge/contended", |b| {
            b.iter_custom(|iters| contended(&rt, iters, &manager));
        });
        assert_eq!(manager.pending(), 0);
    }
    {
        let rt = two_workers();
        let naive = Naive::new();
        group.bench_function("naive/contended", |b| {
            b.iter_custom(|iters| contended(&rt, iters, &naive));
        });
        assert!(naive.pending.lock().is_empty());
    }
    {
        let rt = current_thread();
        let manager = rt.block_on(async { bridge_manager() });
        // 10,000 commands to devices that never answer, pending for the whole bench.
        rt.block_on(async {
            for i in 0..BACKGROUND {
                let manager = manager.clone();
                let silent = device(&format!("{SILENT}{i}"));
                tokio::spawn(async move {
                    let _ = manager
                        .send_command(silent, None, payload(), Duration::from_mins(2))
                        .await;
                });
            }
            while manager.pending() < BACKGROUND {
                tokio::task::yield_now().await;
            }
        });
        let lock = device("lock-1");
        group.bench_function("bridge/pending_10k", |b| {
            b.to_async(&rt)
                .iter(|| manager.send_command(lock.clone(), None, payload(), TIMEOUT));
        });
        assert_eq!(manager.pending(), BACKGROUND);
        manager.shutdown();
    }
    group.finish();
}

/// Not one of issue 3's ids: the same single-task round trip, but the answer comes from
/// another task (as a real bridge's answer comes from its connection's reader task), so the
/// caller really waits and is woken. Shows the path the `correlation` group's echo skips.
fn correlation_deferred(c: &mut Criterion) {
    let mut group = c.benchmark_group("correlation_deferred");
    group.throughput(Throughput::Elements(1));
    {
        let rt = current_thread();
        let manager = rt.block_on(async {
            let (manager, echo) = bridge_manager_with_echo();
            echo.defer();
            manager
        });
        let lock = device("lock-1");
        group.bench_function("bridge/single", |b| {
            b.to_async(&rt)
                .iter(|| manager.send_command(lock.clone(), None, payload(), TIMEOUT));
        });
        assert_eq!(manager.pending(), 0);
    }
    {
        let rt = current_thread();
        let naive = rt.block_on(async {
            let naive = Naive::new();
            naive.transport.defer();
            naive
        });
        let lock = device("lock-1");
        group.bench_function("naive/single", |b| {
            b.to_async(&rt)
                .iter(|| naive.send_command(lock.clone(), None, payload(), TIMEOUT));
        });
        assert!(naive.pending.lock().is_empty());
    }
    group.finish();
}

criterion_group!(benches, correlation, correlation_deferred);
criterion_main!(benches);

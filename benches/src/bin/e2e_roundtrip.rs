//! Load test (issue 6, "End-to-end benchmarks"): the server's whole command path, from a
//! driver through the session manager, the hub and a real loopback WebSocket to simulated
//! phones and back; round trips per second, p50/p99 latency and server CPU time per command.
//!
//! # Method
//!
//! The binary is an orchestrator that re-executes itself as two child processes per
//! scenario, each pinned with `taskset` (unless `--no-pin`):
//!
//! * **server** (`taskset -c 0 e2e_roundtrip --server ...`): a [`Server`] built with
//!   [`Server::builder`] — hub, session manager, metrics, in-memory queue — with
//!   **authentication on** (an HS256 secret), served with [`Server::serve`] on `127.0.0.1:0`.
//!   Tokio's default runtime, as in the `bridge-server` binary; pinned to one core it has one
//!   worker.
//! * **load** (`taskset -c 1 e2e_roundtrip --load ...`): the simulated phones — one
//!   [`BridgeClient`] per bridge (with a `bridge` JWT naming its devices) answering through
//!   [`SimulatedLocks`] with zero latency, each device reported `connected: true` — and, for
//!   the HTTP driver, the HTTP client. The phones answer as 1.0 bridges, with no
//!   `ble_progress` (so figures compare across versions); `E2E_PHONE_STAGES=1` makes them
//!   report `received`, `connected` and `written` for every write, three more frames per
//!   command.
//!
//! Three drivers, each keeping K commands in flight (K tasks, each sending its next command
//! as soon as the previous one is answered; commands go round-robin over the devices):
//!
//! * **in-process**: in the server process, through [`Server::service`] (what
//!   [`Server::serve`] serves: [`Server::router`] with the command route recognised in
//!   front of it) called as a tower service (`oneshot`) with a `service` token: the same handler as
//!   `POST /v1/devices/{id}/commands` — authentication, body decoding, the session manager,
//!   the hub, the WebSocket to the phone, metrics, the JSON answer — without an HTTP socket.
//!   Each device's URI and the two header values are parsed once and cloned per command, as
//!   an application calling in process would (before 2026-12-01 each command parsed them
//!   again, about 3,100 instructions per command counted as the server's).
//!   The server's public surface only: nothing of the session API is called directly.
//! * **http**: in the load process, a minimal HTTP/1.1 keep-alive client (K connections,
//!   prebuilt requests; `E2E_HTTP_CLIENT=reqwest` for `reqwest` with a pool), POSTing
//!   `{"payload":"03"}` (the lock's `status`) to `/v1/devices/{id}/commands`.
//! * **http2**: the same requests over HTTP/2 with prior knowledge, from hyper's HTTP/2
//!   client: one connection, each command a stream of it (K streams open at once).
//!
//! Each scenario warms up (1 s), then measures for a fixed duration (default 4 s): commands
//! answered 200, their latency (a sorted `Vec` of nanoseconds: p50, p99), and the server
//! process's CPU time (`utime + stime` from `/proc/<pid>/stat`, clock ticks of 10 ms) before
//! and after, divided by the commands ("server CPU µs/cmd"; its inverse is the "per-core
//! capacity", the rate one fully busy server core would sustain). The load process's CPU
//! time is measured the same way, to show whether the phones' core was the limit: a "load
//! core busy" near 100 % means the figure is the load side's, not the server's. Everything is on loopback; each
//! child exits when its stdin closes or its watchdog fires, and the orchestrator has a
//! watchdog too.
//!
//! Phones connect over WebSocket, or with `--phones mqtt` (or `ws,mqtt`, one run after the
//! other) through an MQTT 5 broker (PROTOCOL.md 6): a Mosquitto the run starts for itself
//! (loopback, no persistence, `set_tcp_nodelay true`, pinned to CPU 1 with the phones, so
//! its CPU time counts in "load core busy", not the server's), or the one `E2E_MQTT_URL`
//! names (not pinned).
//!
//! Run: `cargo build --release -p benches --bin e2e_roundtrip && target/release/e2e_roundtrip`
//! (`--secs N` per scenario, `--only inproc|http|http2`, `--phones ws,mqtt`, `--bridges 1,1000`, `--k 1,16,256`,
//! `--no-pin`; `E2E_SERVER_RUNTIME=current` runs the server on a current-thread runtime
//! instead of Tokio's default). It prints a Markdown table; see `BENCHMARKS.md`, "End to
//! end (issue 6)". The machine is expected to have at least two cores (CPUs 0 and 1).
//!
//! Counts instead of times (`BENCHMARKS.md`, issue 11): `E2E_COMMANDS=N` makes either
//! driver send exactly N commands and stop (the HTTP driver, in the load process, first sends
//! one command per device to see them online; that offset cancels out between two N), and
//! `E2E_SERVER_WRAPPER` runs the server child behind a command such as valgrind or strace
//! (`--secs` then only stretches the watchdogs). Only the server process runs behind it: with
//! the HTTP driver it counts the server's side of each HTTP command, not the client's.
//!
//! ```sh
//! E2E_COMMANDS=20000 E2E_SERVER_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=/tmp/srv.%p" \
//!     target/release/e2e_roundtrip --only inproc --bridges 1 --k 16 --secs 900
//! E2E_COMMANDS=20000 E2E_SERVER_WRAPPER="strace -f -c -o /tmp/srv.strace" \
//!     target/release/e2e_roundtrip --only http --bridges 1 --k 16 --secs 900
//! ```
//!
//! `E2E_LOAD_WRAPPER` does the same for the load child (the phones), to count their cost per
//! command with the in-process driver, e.g. `E2E_LOAD_WRAPPER="strace -f -c -o /tmp/load.st"`.
//!
//! `E2E_SERVER_LOG=human` (or `json`) makes the server child install the `bridge-server`
//! binary's log subscriber (`bridge_server::init_logs`: info level unless `RUST_LOG` says
//! otherwise, to stderr), to count what production's logging costs per command.
//!
//! The server child serves with [`Server::serve`], as the `bridge-server` binary does
//! (`E2E_AXUM_SERVE=1`: with `axum::serve` instead, as before 2026-11-30's issue 11 work).
//!
//! `E2E_MAX_PENDING_PER_DEVICE=N` sets the server's per-device limit of commands in flight
//! (default 16). With `--bridges 1` every command goes to one device, so at K=256 only 16
//! are in flight and the server core idles between batches; with 256 they are all in
//! flight on the one connection, as the peers' K=256 are, and the server core is busy: the
//! CPU per command of a busy core, without the cost of going idle and waking.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BleHandler, BridgeClient, BridgeConfig, Credentials, Progress};
use bridge_hub::HubConfig;
use bridge_protocol::{DeviceId, Role};
use bridge_server::auth::{Claims, unix_now};
use bridge_server::{QueueUrl, Server, ServerConfig};
use futures_util::StreamExt;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HS256 secret of the run (authentication is on).
const SECRET: &str = "e2e-roundtrip-benchmark-secret-of-32-bytes-or-more";
/// Warm-up before each measurement.
const WARM_UP: Duration = Duration::from_secs(1);
/// Every child process exits after this, whatever happens.
const CHILD_WATCHDOG_EXTRA: Duration = Duration::from_mins(1);
/// The body of every command: the smart lock's `status`.
const BODY: &str = r#"{"payload":"03"}"#;
/// Linux's `USER_HZ`: the unit of `utime` and `stime` in `/proc/<pid>/stat`.
const CLOCK_TICKS_PER_SEC: u64 = 100;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--server") => run_server_child(&Scenario::from_args(&args[2..])?),
        Some("--load") => {
            let port: u16 = args.get(2).ok_or("missing port")?.parse()?;
            let server_pid: u32 = args.get(3).ok_or("missing pid")?.parse()?;
            run_load_child(&Scenario::from_args(&args[4..])?, port, server_pid)
        }
        _ => orchestrate(&args[1..]),
    }
}

/// Which driver sends the commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// In the server process, through the router as a tower service.
    InProcess,
    /// Over HTTP/1.1 from the load process.
    Http,
    /// Over HTTP/2 (prior knowledge) from the load process: one connection, K streams.
    Http2,
}

impl Driver {
    fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "inproc",
            Self::Http => "http",
            Self::Http2 => "http2",
        }
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        match s {
            "inproc" => Ok(Self::InProcess),
            "http" => Ok(Self::Http),
            "http2" => Ok(Self::Http2),
            other => Err(format!("unknown driver `{other}`").into()),
        }
    }
}

/// How the phones reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phones {
    /// A WebSocket each.
    Ws,
    /// Through the MQTT 5 broker (PROTOCOL.md 6; `E2E_MQTT_URL`, default the local
    /// Mosquitto), a session each.
    Mqtt,
}

impl Phones {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Mqtt => "mqtt",
        }
    }

    fn parse(s: &str) -> Result<Self, BoxError> {
        match s {
            "ws" => Ok(Self::Ws),
            "mqtt" => Ok(Self::Mqtt),
            other => Err(format!("unknown phone transport `{other}`").into()),
        }
    }
}

/// The broker of `--phones mqtt`: the run's own (`broker_port`), or `E2E_MQTT_URL`.
fn mqtt_url(scenario: Scenario) -> String {
    if scenario.broker_port != 0 {
        return format!("mqtt://127.0.0.1:{}", scenario.broker_port);
    }
    std::env::var("E2E_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

/// The pid of the broker the orchestrator started, killed by its watchdog too.
static BROKER_PID: AtomicU64 = AtomicU64::new(0);

/// A Mosquitto of the run's own for `--phones mqtt` (unless `E2E_MQTT_URL` names one):
/// loopback, anonymous, no persistence, `set_tcp_nodelay true` (as the peer benchmark's),
/// pinned with the phones (CPU 1), so that the server's core runs the server alone. Killed
/// when dropped.
struct Broker {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Broker {
    fn start(pin: bool) -> Result<Self, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("e2e-broker-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 set_tcp_nodelay true\nmax_queued_messages 100000\nlog_dest stderr\n\
                 log_type error\nlog_type warning\n"
            ),
        )?;
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", "mosquitto"]);
            c
        } else {
            Command::new("mosquitto")
        };
        let child = command
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start mosquitto: {e}"))?;
        BROKER_PID.store(u64::from(child.id()), Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the benchmark's mosquitto did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port, dir })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        BROKER_PID.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    driver: Driver,
    phones: Phones,
    bridges: usize,
    in_flight: usize,
    secs: u64,
    /// Names this run's MQTT topics and client ids (the orchestrator's pid).
    run: u32,
    /// The run's own broker (0: `E2E_MQTT_URL` or the local Mosquitto).
    broker_port: u16,
}

impl Scenario {
    fn to_args(self) -> Vec<String> {
        vec![
            self.driver.as_str().to_owned(),
            self.bridges.to_string(),
            self.in_flight.to_string(),
            self.secs.to_string(),
            self.phones.as_str().to_owned(),
            self.run.to_string(),
            self.broker_port.to_string(),
        ]
    }

    fn from_args(args: &[String]) -> Result<Self, BoxError> {
        let get = |i: usize| args.get(i).ok_or("missing scenario argument");
        Ok(Self {
            driver: Driver::parse(get(0)?)?,
            bridges: get(1)?.parse()?,
            in_flight: get(2)?.parse()?,
            secs: get(3)?.parse()?,
            phones: Phones::parse(get(4)?)?,
            run: get(5)?.parse()?,
            broker_port: get(6)?.parse()?,
        })
    }

    /// The MQTT topic prefix of this scenario: its own, so that runs never meet.
    fn mqtt_prefix(self) -> String {
        format!(
            "e2e-bench-{}-{}-{}-{}",
            self.run,
            self.driver.as_str(),
            self.bridges,
            self.in_flight
        )
    }

    fn watchdog(self) -> Duration {
        WARM_UP + Duration::from_secs(self.secs) + CHILD_WATCHDOG_EXTRA
    }
}

/// Exits the process after `after` whatever it is doing, and as soon as stdin closes (the
/// orchestrator is done with it, or has died).
fn exit_on_stdin_close_or(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("e2e_roundtrip: child watchdog fired");
        std::process::exit(3);
    });
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
}

/// Room for every bridge's socket on both ends, and the HTTP pool.
fn raise_fd_limit(scenario: Scenario) -> Result<(), BoxError> {
    let needed = u64::try_from(scenario.bridges + scenario.in_flight)? * 2 + 1024;
    let limit = rlimit::increase_nofile_limit(needed)?;
    if limit < needed {
        return Err(format!("open-file limit is {limit}, {needed} needed").into());
    }
    Ok(())
}

fn device(i: usize) -> DeviceId {
    DeviceId::new(&format!("lock-{i}")).expect("lock-N is a valid device id")
}

fn token(sub: &str, role: Role, devices: Option<Vec<String>>) -> String {
    Claims {
        sub: sub.to_owned(),
        role,
        devices,
        exp: unix_now() + 3600,
    }
    .encode(SECRET.as_bytes())
    .expect("HS256 signing of a benchmark token")
}

/// `utime + stime` of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Result<Duration, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(") ").ok_or("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok(Duration::from_millis(
        (utime + stime) * 1000 / CLOCK_TICKS_PER_SEC,
    ))
}

/// What one driver measured.
#[derive(Debug, Default)]
struct Measured {
    commands: u64,
    failures: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    server_cpu: Duration,
    load_cpu: Duration,
}

impl Measured {
    /// One line for the orchestrator: `RESULT commands failures elapsed_ns p50_ns p99_ns
    /// server_cpu_ns load_cpu_ns`.
    fn result_line(&mut self) -> String {
        self.latencies_ns.sort_unstable();
        let pct = |p: f64| -> u64 {
            if self.latencies_ns.is_empty() {
                return 0;
            }
            let last = self.latencies_ns.len() - 1;
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let i = ((last as f64) * p).round() as usize;
            self.latencies_ns[i.min(last)]
        };
        format!(
            "RESULT {} {} {} {} {} {} {}",
            self.commands,
            self.failures,
            self.elapsed.as_nanos(),
            pct(0.50),
            pct(0.99),
            self.server_cpu.as_nanos(),
            self.load_cpu.as_nanos()
        )
    }
}

/// Per-task tallies, merged after the run.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies_ns: Vec<u64>,
}

/// `E2E_COMMANDS=N`: the driver (in-process or HTTP) sends exactly N commands, all recorded (no
/// warm-up, no timed window), then reports. Meant for counts that do not depend on the
/// machine's load — instructions and heap blocks of the server process under valgrind (see
/// `E2E_SERVER_WRAPPER`): the difference between two runs with different N, divided by the
/// difference of the N, is the cost of one command without the start-up.
fn fixed_commands() -> Option<u64> {
    std::env::var("E2E_COMMANDS").ok()?.parse().ok()
}

/// Runs `in_flight` loops of `one` for warm-up plus `secs`, recording only the measured
/// window (or, with [`fixed_commands`], exactly that many commands, all recorded).
/// `one(i)` sends one command to device `i % devices` and says whether it succeeded.
async fn drive<F, Fut>(scenario: Scenario, devices: usize, one: F) -> (Vec<Tally>, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let fixed = fixed_commands();
    let recording = Arc::new(AtomicBool::new(fixed.is_some()));
    let stop = Arc::new(AtomicBool::new(false));
    let next_device = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(scenario.in_flight);
    for _ in 0..scenario.in_flight {
        let (recording, stop, next_device, one) = (
            Arc::clone(&recording),
            Arc::clone(&stop),
            Arc::clone(&next_device),
            one.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                latencies_ns: Vec::with_capacity(1 << 16),
                ..Tally::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let n = next_device.fetch_add(1, Ordering::Relaxed);
                if fixed.is_some_and(|total| n >= total) {
                    break;
                }
                #[allow(clippy::cast_possible_truncation)]
                let target = n as usize % devices;
                let start = Instant::now();
                let ok = one(target).await;
                let took = start.elapsed();
                if recording.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if ok {
                        tally.ok += 1;
                        tally
                            .latencies_ns
                            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                    } else {
                        tally.failed += 1;
                    }
                }
            }
            tally
        }));
    }
    let start = if fixed.is_some() {
        start
    } else {
        tokio::time::sleep(WARM_UP).await;
        recording.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(scenario.secs)).await;
        stop.store(true, Ordering::Relaxed);
        start
    };
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.expect("a driver task panicked"));
    }
    (tallies, start.elapsed())
}

fn merge(tallies: Vec<Tally>, elapsed: Duration) -> Measured {
    let mut measured = Measured {
        elapsed,
        ..Measured::default()
    };
    for tally in tallies {
        measured.commands += tally.ok;
        measured.failures += tally.failed;
        measured.latencies_ns.extend(tally.latencies_ns);
    }
    measured
}

// ---------------------------------------------------------------------------------------
// The server process.

/// The server's configuration: auth on, in-memory queue, rate limits out of the way (the
/// bench is about throughput, not the per-connection flood guard), a deeper outbound queue so
/// that 256 writes in flight to one bridge do not count as a slow consumer.
fn build_server() -> Result<Server, bridge_server::BuildError> {
    let mut config = ServerConfig::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.queue = QueueUrl::Memory;
    config.jwt_secret = Some(SECRET.to_owned());
    config.rate_per_second = 100_000_000;
    config.rate_burst = 100_000_000;
    // `E2E_MAX_PENDING_PER_DEVICE=N`: the session's per-device limit of commands in flight
    // (default 16): with 256, K=256 commands to the one device of `--bridges 1` are all in
    // flight on its connection, as the peers' K=256 are, instead of 16 in flight and 240
    // waiting for a slot.
    if let Some(limit) = std::env::var("E2E_MAX_PENDING_PER_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_pending_per_device = limit;
    }
    let mut hub = HubConfig::default();
    hub.max_frame_bytes = config.max_frame_bytes;
    hub.rate_limit.per_second = f64::from(config.rate_per_second);
    hub.rate_limit.burst = config.rate_burst;
    hub.max_subscriptions = config.max_subscriptions;
    hub.outbound_queue_frames = 1024;
    Server::builder(config).hub_config(hub).build()
}

fn run_server_child(scenario: &Scenario) -> Result<(), BoxError> {
    let scenario = *scenario;
    raise_fd_limit(scenario)?;
    install_server_logs()?;
    let runtime = server_runtime()?;
    runtime.block_on(async move {
        let server = build_server()?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let port = listener.local_addr()?.port();
        // `Server::serve`, as the `bridge-server` binary serves: its own HTTP/1 connections
        // (header-read timeout, connection limit, upgrades), so the HTTP driver measures the
        // shipped path. `E2E_AXUM_SERVE=1` serves `Server::router` with `axum::serve` instead
        // (how this benchmark served before).
        if std::env::var("E2E_AXUM_SERVE").is_ok_and(|v| v == "1") {
            let app = server.router();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    eprintln!("e2e_roundtrip: server: {error}");
                }
            });
        } else {
            let serving = server.clone();
            tokio::spawn(async move {
                if let Err(error) = serving.serve(listener, std::future::pending()).await {
                    eprintln!("e2e_roundtrip: server: {error}");
                }
            });
        }
        // Bridges over MQTT are served beside, as the binary does with --mqtt.
        let _mqtt = if scenario.phones == Phones::Mqtt {
            let prefix = scenario.mqtt_prefix();
            let config = bridge_server::MqttConfig::new(mqtt_url(scenario))
                .prefix(prefix.clone())
                .client_id(format!("{prefix}-server"));
            let front = bridge_server::serve_mqtt(&server, config)?;
            tokio::time::timeout(Duration::from_secs(30), front.subscribed())
                .await
                .map_err(|_| "the MQTT broker did not acknowledge the subscription")?;
            Some(front)
        } else {
            None
        };
        // The GO line comes on stdin once the phones are connected; read it off the runtime.
        // The line is `GO <pid of the load process>`.
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Option<u32>>();
        std::thread::spawn(move || {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = go_tx.send(
                    line.trim()
                        .strip_prefix("GO ")
                        .and_then(|pid| pid.parse().ok()),
                );
                let mut sink = String::new();
                while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                    sink.clear();
                }
            }
            std::process::exit(0);
        });
        let watchdog = scenario.watchdog();
        std::thread::spawn(move || {
            std::thread::sleep(watchdog);
            eprintln!("e2e_roundtrip: server watchdog fired");
            std::process::exit(3);
        });
        println!("PORT {port}");
        std::io::stdout().flush()?;
        let Ok(load_pid) = go_rx.await else {
            return Ok(());
        };
        if scenario.driver == Driver::InProcess {
            let mut measured = in_process(&server, scenario, load_pid).await?;
            println!("{}", measured.result_line());
            std::io::stdout().flush()?;
        }
        // Serve until the orchestrator closes stdin.
        std::future::pending::<()>().await;
        Ok::<(), BoxError>(())
    })
}

/// `E2E_SERVER_LOG=human` (or `json`): the server child installs the `bridge-server`
/// binary's own log subscriber ([`bridge_server::init_logs`]: `fmt` to stderr, `RUST_LOG` or
/// `info`), so that the figures include what logging costs in production. Unset: no
/// subscriber, as before.
fn install_server_logs() -> Result<(), BoxError> {
    let format = match std::env::var("E2E_SERVER_LOG").as_deref() {
        Err(_) => return Ok(()),
        Ok("json") => bridge_server::LogFormat::Json,
        Ok("human") => bridge_server::LogFormat::Human,
        Ok(other) => return Err(format!("E2E_SERVER_LOG={other}: expected human or json").into()),
    };
    bridge_server::init_logs(format)?;
    Ok(())
}

/// Tokio's default runtime, as the `bridge-server` binary builds it
/// ([`bridge_server::runtime_builder`]; pinned to one core: one worker); `E2E_SERVER_RUNTIME=current` for a current-thread runtime, for comparison.
fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::env::var("E2E_SERVER_RUNTIME").is_ok_and(|v| v == "current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        bridge_server::runtime_builder().build()
    }
}

/// Waits until every device is online with a live link.
async fn wait_online(server: &Server, devices: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..devices {
        let id = device(i);
        while !server.hub().device_presence(&id).await.online {
            if Instant::now() > deadline {
                return Err(format!("device {id} never came online").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// The in-process driver: [`Server::service`] as a tower service, with a service token.
async fn in_process(
    server: &Server,
    scenario: Scenario,
    load_pid: Option<u32>,
) -> Result<Measured, BoxError> {
    let devices = scenario.bridges;
    wait_online(server, devices).await?;
    let router = server.service();
    // What an application calling in process builds once and reuses for every call: the
    // parsed URI of each device's command route and the two header values. Cloning each is
    // a reference count, so the server's CPU time per command is the server's work, not the
    // parsing of the same strings again for every command.
    let authorization =
        HeaderValue::try_from(format!("Bearer {}", token("backend", Role::Service, None)))?;
    let json = HeaderValue::from_static("application/json");
    let uris: Arc<Vec<Uri>> = Arc::new(
        (0..devices)
            .map(|i| Uri::try_from(format!("/v1/devices/lock-{i}/commands")))
            .collect::<Result<_, _>>()?,
    );
    let pid = std::process::id();
    let one = move |i: usize| {
        let router = router.clone();
        let mut request = Request::new(Body::from(BODY));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uris[i].clone();
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, authorization.clone());
        headers.insert(header::CONTENT_TYPE, json.clone());
        async move {
            let Ok(response) = router.oneshot(request).await;
            if response.status() != StatusCode::OK {
                return false;
            }
            // Read the answer as a client would: every chunk of its body.
            let mut body = response.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                if chunk.is_err() {
                    return false;
                }
            }
            true
        }
    };
    // CPU time is taken over the measured window only: the driver records from the end of
    // the warm-up (from the start with a fixed number of commands), so take it there too.
    let load_cpu = move || load_pid.map_or(Ok(Duration::ZERO), cpu_time);
    let before = Arc::new(parking_lot::Mutex::new((Duration::ZERO, Duration::ZERO)));
    let before_probe = Arc::clone(&before);
    let warm_up = if fixed_commands().is_some() {
        Duration::ZERO
    } else {
        WARM_UP
    };
    tokio::spawn(async move {
        tokio::time::sleep(warm_up).await;
        if let (Ok(server), Ok(load)) = (cpu_time(pid), load_cpu()) {
            *before_probe.lock() = (server, load);
        }
    });
    let (tallies, elapsed) = drive(scenario, devices, one).await;
    let (server_after, load_after) = (cpu_time(pid)?, load_cpu()?);
    let mut measured = merge(tallies, elapsed);
    let (server_before, load_before) = *before.lock();
    measured.server_cpu = server_after.saturating_sub(server_before);
    measured.load_cpu = load_after.saturating_sub(load_before);
    Ok(measured)
}

// ---------------------------------------------------------------------------------------
// The load process: phones, and the HTTP driver.

fn run_load_child(scenario: &Scenario, port: u16, server_pid: u32) -> Result<(), BoxError> {
    let scenario = *scenario;
    raise_fd_limit(scenario)?;
    exit_on_stdin_close_or(scenario.watchdog());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let url = format!("ws://127.0.0.1:{port}/ws");
        let report_stages = std::env::var("E2E_PHONE_STAGES").is_ok_and(|v| v == "1");
        let mut phones = Vec::with_capacity(scenario.bridges);
        for i in 0..scenario.bridges {
            let id = device(i);
            let credentials = Credentials::Token(token(
                &format!("phone-{i}"),
                Role::Bridge,
                Some(vec![id.as_str().to_owned()]),
            ));
            let locks = Arc::new(SimulatedLocks::new([id.clone()], LockBehaviour::default()));
            let handler: Arc<dyn BleHandler> = if report_stages {
                locks
            } else {
                Arc::new(NoStages(locks))
            };
            let config = match scenario.phones {
                Phones::Ws => BridgeConfig::new(url.clone(), credentials, vec![id.clone()]),
                Phones::Mqtt => BridgeConfig::over_mqtt(
                    mqtt_url(scenario),
                    bridge_protocol::BridgeId::new(&format!("phone-{i}"))?,
                    credentials,
                    vec![id.clone()],
                )
                .with_mqtt_prefix(scenario.mqtt_prefix()),
            };
            let client = BridgeClient::start(config, handler);
            phones.push((client, id));
        }
        for (client, id) in &phones {
            tokio::time::timeout(Duration::from_secs(30), client.wait_connected(1))
                .await
                .map_err(|_| "a phone did not connect within 30 s")??;
            client.report_status(id.clone(), true, Some(-60))?;
        }
        println!("READY");
        std::io::stdout().flush()?;
        if matches!(scenario.driver, Driver::Http | Driver::Http2) {
            let mut measured = http(scenario, port, server_pid).await?;
            println!("{}", measured.result_line());
            std::io::stdout().flush()?;
        }
        std::future::pending::<()>().await;
        drop(phones);
        Ok::<(), BoxError>(())
    })
}

/// The load process's HTTP client: by default a minimal HTTP/1.1 keep-alive client (one
/// connection per command in flight, a prebuilt request, the answer read by its
/// `Content-Length`), so that the load core spends little per command;
/// `E2E_HTTP_CLIENT=reqwest` uses `reqwest` with a keep-alive pool instead.
#[derive(Clone)]
enum HttpClient {
    Raw(Arc<RawHttp>),
    Http2(Arc<Http2>),
    Reqwest {
        client: reqwest::Client,
        authorization: Arc<str>,
        urls: Arc<Vec<String>>,
    },
}

impl HttpClient {
    async fn new(scenario: Scenario, port: u16) -> Result<Self, BoxError> {
        let authorization = format!("Bearer {}", token("backend", Role::Service, None));
        if scenario.driver == Driver::Http2 {
            return Ok(Self::Http2(Arc::new(
                Http2::connect(scenario, port, &authorization).await?,
            )));
        }
        if std::env::var("E2E_HTTP_CLIENT").is_ok_and(|v| v == "reqwest") {
            return Ok(Self::Reqwest {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(scenario.in_flight)
                    .tcp_nodelay(true)
                    .build()?,
                authorization: authorization.into(),
                urls: Arc::new(
                    (0..scenario.bridges)
                        .map(|i| format!("http://127.0.0.1:{port}/v1/devices/lock-{i}/commands"))
                        .collect(),
                ),
            });
        }
        let requests = (0..scenario.bridges)
            .map(|i| {
                format!(
                    "POST /v1/devices/lock-{i}/commands HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                     authorization: {authorization}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{BODY}",
                    BODY.len()
                )
                .into_bytes()
            })
            .collect();
        Ok(Self::Raw(Arc::new(RawHttp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            requests,
            idle: parking_lot::Mutex::new(Vec::new()),
        })))
    }

    /// Sends one command to device `i`; whether it was answered 200 (body read).
    async fn post(&self, i: usize) -> bool {
        match self {
            Self::Raw(raw) => raw.post(i).await,
            Self::Http2(http2) => http2.post(i).await,
            Self::Reqwest {
                client,
                authorization,
                urls,
            } => {
                let Ok(response) = client
                    .post(urls[i].as_str())
                    .header(header::AUTHORIZATION, &**authorization)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(BODY)
                    .send()
                    .await
                else {
                    return false;
                };
                let ok = response.status() == StatusCode::OK;
                ok && response.bytes().await.is_ok()
            }
        }
    }
}

/// A minimal HTTP/1.1 client: idle keep-alive connections, prebuilt requests.
struct RawHttp {
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    idle: parking_lot::Mutex<Vec<RawConnection>>,
}

impl RawHttp {
    async fn post(&self, i: usize) -> bool {
        let idle = self.idle.lock().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => match tokio::net::TcpStream::connect(self.addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    RawConnection {
                        stream,
                        buffer: Vec::with_capacity(1024),
                    }
                }
                Err(_) => return false,
            },
        };
        match connection.exchange(&self.requests[i]).await {
            Ok(ok) => {
                self.idle.lock().push(connection);
                ok
            }
            // The connection is dropped; the next command opens another.
            Err(_) => false,
        }
    }
}

/// An HTTP/2 client with prior knowledge (hyper's): one connection, each command a stream
/// of it, so the K commands in flight share its reads and writes.
struct Http2 {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    /// Per device: its command URI.
    uris: Vec<Uri>,
    authorization: HeaderValue,
}

impl Http2 {
    async fn connect(scenario: Scenario, port: u16, authorization: &str) -> Result<Self, BoxError> {
        let stream =
            tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        let uris = (0..scenario.bridges)
            .map(|i| format!("http://127.0.0.1:{port}/v1/devices/lock-{i}/commands").parse())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sender,
            uris,
            authorization: HeaderValue::from_str(authorization)?,
        })
    }

    async fn post(&self, i: usize) -> bool {
        let mut request = Request::new(Body::from(BODY));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uris[i].clone();
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut sender = self.sender.clone();
        if sender.ready().await.is_err() {
            return false;
        }
        let Ok(response) = sender.send_request(request).await else {
            return false;
        };
        let ok = response.status() == StatusCode::OK;
        ok && axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024)
            .await
            .is_ok()
    }
}

/// One keep-alive connection of [`RawHttp`].
struct RawConnection {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    /// Writes `request`, reads the whole response; whether its status is 200.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<bool> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end])
                    .map_err(|_| invalid("response head is not UTF-8"))?;
                let ok = head.starts_with("HTTP/1.1 200");
                let length: usize = head
                    .split("\r\n")
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .ok_or_else(|| invalid("no content-length"))?;
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                return Ok(ok);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// The HTTP driver, in the load process (see [`HttpClient`]).
async fn http(scenario: Scenario, port: u16, server_pid: u32) -> Result<Measured, BoxError> {
    let devices = scenario.bridges;
    let client = HttpClient::new(scenario, port).await?;
    // Wait until the server sees every device: a 200 from each.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..devices {
        while !client.post(i).await {
            if Instant::now() > deadline {
                return Err(format!("lock-{i} never answered 200").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let one = move |i: usize| {
        let client = client.clone();
        async move { client.post(i).await }
    };
    let own_pid = std::process::id();
    let before = Arc::new(parking_lot::Mutex::new((Duration::ZERO, Duration::ZERO)));
    let before_probe = Arc::clone(&before);
    // As in-process: from the start with a fixed number of commands.
    let warm_up = if fixed_commands().is_some() {
        Duration::ZERO
    } else {
        WARM_UP
    };
    tokio::spawn(async move {
        tokio::time::sleep(warm_up).await;
        if let (Ok(server), Ok(load)) = (cpu_time(server_pid), cpu_time(own_pid)) {
            *before_probe.lock() = (server, load);
        }
    });
    let (tallies, elapsed) = drive(scenario, devices, one).await;
    let (server_after, load_after) = (cpu_time(server_pid)?, cpu_time(own_pid)?);
    let mut measured = merge(tallies, elapsed);
    let (server_before, load_before) = *before.lock();
    measured.server_cpu = server_after.saturating_sub(server_before);
    measured.load_cpu = load_after.saturating_sub(load_before);
    Ok(measured)
}

// ---------------------------------------------------------------------------------------
// The orchestrator.

/// A child process and its pipes; dropping stdin tells it to exit.
struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ChildProc {
    /// Runs this binary with `args`, pinned to CPU `pin`, behind `wrapper` (a command and
    /// its arguments, such as `valgrind --tool=callgrind`) when given.
    fn spawn(pin: Option<&str>, wrapper: &[String], args: &[String]) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut line: Vec<std::ffi::OsString> = Vec::new();
        if let Some(core) = pin {
            line.extend(["taskset".into(), "-c".into(), core.into()]);
        }
        line.extend(wrapper.iter().map(Into::into));
        line.push(exe.into_os_string());
        let mut command = Command::new(&line[0]);
        command.args(&line[1..]);
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// The next line that starts with `prefix` (other lines are echoed).
    fn expect_line(&mut self, prefix: &str) -> Result<String, BoxError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(format!("child exited before `{prefix}`").into());
            }
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
            eprint!("child: {line}");
        }
    }

    /// Closes the child's stdin and waits up to `grace` for it to exit, then kills it.
    fn finish(mut self, grace: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only this child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parsed `RESULT` line.
struct Row {
    scenario: Scenario,
    commands: u64,
    failures: u64,
    elapsed_ns: u128,
    p50_ns: u64,
    p99_ns: u64,
    server_cpu_ns: u128,
    load_cpu_ns: u128,
    load_average: String,
}

fn parse_result(scenario: Scenario, line: &str) -> Result<Row, BoxError> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |i: usize| f.get(i).copied().ok_or("short RESULT line");
    Ok(Row {
        scenario,
        commands: get(0)?.parse()?,
        failures: get(1)?.parse()?,
        elapsed_ns: get(2)?.parse()?,
        p50_ns: get(3)?.parse()?,
        p99_ns: get(4)?.parse()?,
        server_cpu_ns: get(5)?.parse()?,
        load_cpu_ns: get(6)?.parse()?,
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    })
}

fn run_scenario(scenario: Scenario, pin: bool) -> Result<Row, BoxError> {
    let args = scenario.to_args();
    let mut server_args = vec!["--server".to_owned()];
    server_args.extend(args.iter().cloned());
    // `E2E_SERVER_WRAPPER`: a command line the server runs behind, e.g. `valgrind
    // --tool=callgrind --callgrind-out-file=/tmp/server.%p` (with `E2E_COMMANDS`).
    let wrapper: Vec<String> = std::env::var("E2E_SERVER_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    // A server under valgrind needs time to write its profile when it exits.
    let server_grace = Duration::from_secs(if wrapper.is_empty() { 10 } else { 300 });
    let mut server = ChildProc::spawn(pin.then_some("0"), &wrapper, &server_args)?;
    let port = server.expect_line("PORT")?;
    let server_pid = server.child.id().to_string();
    let mut load_args = vec!["--load".to_owned(), port, server_pid];
    load_args.extend(args);
    // `E2E_LOAD_WRAPPER`: the same for the load process (the phones), e.g. `strace -f -c -o
    // /tmp/load.st` or `valgrind --tool=callgrind`, to count the phones' cost per command.
    let load_wrapper: Vec<String> = std::env::var("E2E_LOAD_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let load_grace = Duration::from_secs(if load_wrapper.is_empty() { 10 } else { 300 });
    let mut load = ChildProc::spawn(pin.then_some("1"), &load_wrapper, &load_args)?;
    load.expect_line("READY")?;
    // With the in-process driver, GO starts it (and names the load process, whose CPU time
    // it reads); with the HTTP driver the server serves either way.
    let stdin = server.stdin.as_mut().ok_or("no server stdin")?;
    writeln!(stdin, "GO {}", load.child.id())?;
    stdin.flush()?;
    let line = match scenario.driver {
        Driver::InProcess => server.expect_line("RESULT")?,
        Driver::Http | Driver::Http2 => load.expect_line("RESULT")?,
    };
    let row = parse_result(scenario, &line);
    load.finish(load_grace);
    server.finish(server_grace);
    row
}

#[allow(clippy::cast_precision_loss)]
fn print_row(row: &Row) {
    let secs = row.elapsed_ns as f64 / 1e9;
    let rate = row.commands as f64 / secs;
    let server_cpu_s = row.server_cpu_ns as f64 / 1e9;
    let per_command_us = if row.commands == 0 {
        0.0
    } else {
        row.server_cpu_ns as f64 / 1e3 / row.commands as f64
    };
    let load = format!(
        "{:.0}%",
        row.load_cpu_ns as f64 / row.elapsed_ns as f64 * 100.0
    );
    println!(
        "| {:<6} | {:<4} | {:>5} | {:>3} | {:>9.0} | {:>8.1} | {:>8.1} | {:>6.2} | {:>9.0} | {:>4.0}% | {:>5} | {:>3} | {} |",
        row.scenario.driver.as_str(),
        row.scenario.phones.as_str(),
        row.scenario.bridges,
        row.scenario.in_flight,
        rate,
        row.p50_ns as f64 / 1e3,
        row.p99_ns as f64 / 1e3,
        per_command_us,
        if per_command_us > 0.0 {
            1e6 / per_command_us
        } else {
            0.0
        },
        server_cpu_s / secs * 100.0,
        load,
        row.failures,
        row.load_average,
    );
}

fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let secs: u64 = value("--secs").map_or(Ok(4), |s| s.parse())?;
    let pin = !args.iter().any(|a| a == "--no-pin");
    let drivers: Vec<Driver> = match value("--only") {
        Some(d) => vec![Driver::parse(d)?],
        None => vec![Driver::InProcess, Driver::Http, Driver::Http2],
    };
    let phones: Vec<Phones> = match value("--phones") {
        Some(p) => p.split(',').map(Phones::parse).collect::<Result<_, _>>()?,
        None => vec![Phones::Ws],
    };
    let bridges: Vec<usize> = match value("--bridges") {
        Some(b) => b.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 1000],
    };
    let ks: Vec<usize> = match value("--k") {
        Some(k) => k.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 16, 256],
    };
    if bridges.iter().any(|&b| b > 20_000) {
        return Err("at most 20,000 bridges".into());
    }
    let runs = drivers.len() * phones.len() * bridges.len() * ks.len();
    // The orchestrator's own watchdog: every scenario plus generous setup time.
    let total = Duration::from_secs(u64::try_from(runs)? * (secs + 1 + 60));
    std::thread::spawn(move || {
        std::thread::sleep(total);
        eprintln!("e2e_roundtrip: watchdog fired after {total:?}");
        let broker = BROKER_PID.load(Ordering::Relaxed);
        if broker != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &broker.to_string()])
                .status();
        }
        std::process::exit(3);
    });
    let broker = if phones.contains(&Phones::Mqtt) && std::env::var_os("E2E_MQTT_URL").is_none() {
        let broker = Broker::start(pin)?;
        println!(
            "phones over MQTT through the run's own mosquitto on 127.0.0.1:{}{}",
            broker.port,
            if pin { ", pinned to CPU 1" } else { "" }
        );
        Some(broker)
    } else {
        None
    };
    let broker_port = broker.as_ref().map_or(0, |b| b.port);
    if pin {
        println!("server pinned to CPU 0, phones and HTTP client to CPU 1 (taskset)");
    }
    println!(
        "| driver | phones | bridges | K | round trips/s | p50 µs | p99 µs | server CPU µs/cmd | per-core capacity/s | server core busy | load core busy | failures | load average |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let run = std::process::id();
    for &driver in &drivers {
        for &transport in &phones {
            for &b in &bridges {
                for &k in &ks {
                    let scenario = Scenario {
                        driver,
                        phones: transport,
                        bridges: b,
                        in_flight: k,
                        secs,
                        run,
                        broker_port,
                    };
                    match run_scenario(scenario, pin) {
                        Ok(row) => print_row(&row),
                        Err(error) => println!(
                            "| {} | {} | {b} | {k} | failed: {error} |",
                            driver.as_str(),
                            transport.as_str()
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}

/// A phone that answers like [`SimulatedLocks`] and reports no stage (a 1.0 bridge): the
/// locks get a detached progress handle, so no `ble_progress` frame is sent. Both methods
/// call the locks' `write_with_progress` directly (two boxed futures per write, not the four
/// of `write` calling the default `write_with_progress` calling `write`).
struct NoStages(Arc<SimulatedLocks>);

#[async_trait::async_trait]
impl BleHandler for NoStages {
    async fn write(
        &self,
        request: &bridge_protocol::BleWrite,
    ) -> Result<bridge_protocol::HexPayload, bridge_protocol::DeviceErrorCode> {
        self.0
            .write_with_progress(request, &Progress::detached(request))
            .await
    }

    async fn write_with_progress(
        &self,
        request: &bridge_protocol::BleWrite,
        _progress: &Progress,
    ) -> Result<bridge_protocol::HexPayload, bridge_protocol::DeviceErrorCode> {
        self.0
            .write_with_progress(request, &Progress::detached(request))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_round_trip_through_arguments() {
        let s = Scenario {
            driver: Driver::Http,
            phones: Phones::Mqtt,
            bridges: 1000,
            in_flight: 16,
            secs: 3,
            run: 7,
            broker_port: 1884,
        };
        let back = Scenario::from_args(&s.to_args()).expect("parses");
        assert_eq!(back.driver, Driver::Http);
        assert_eq!(
            (back.phones, back.run, back.broker_port),
            (Phones::Mqtt, 7, 1884)
        );
        assert_eq!((back.bridges, back.in_flight, back.secs), (1000, 16, 3));
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        assert!(cpu_time(std::process::id()).is_ok());
    }
}

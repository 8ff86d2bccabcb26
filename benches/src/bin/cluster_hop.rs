//! Load test (issue 12): what routing a command through another cluster node costs.
//!
//! One process, two server nodes, A and B, each a [`Server`] from [`Server::builder`] whose
//! hub is a [`ClusterHub`] installed with `wrap_hub` (the `--cluster` wiring of the binary),
//! on the local NATS server under a subject prefix of this run; each serves on its own
//! loopback port. One simulated phone ([`BridgeClient`] with [`SimulatedLocks`], zero BLE
//! latency) holds one lock at node A. The driver keeps K commands in flight (K tasks, each
//! sending the next command when the previous one is answered), calling a node's
//! [`Server::router`] as a tower service (the handler of `POST /v1/devices/{id}/commands`,
//! development mode, no HTTP socket):
//!
//! * **local**: through node A, whose phone it is: hub → WebSocket → phone → back.
//! * **remote**: through node B: the same plus the hop — B's `write` request to A over NATS
//!   (request/reply), A's `answer` back to B, and the `done` that lets A's ticket go.
//!
//! Scenarios alternate local and remote for each K, in the same run: 1 s warm-up, then
//! `--secs` (default 4) measured; round trips per second and p50/p99 latency of the
//! answered commands. Run:
//! `cargo build --release -p benches --bin cluster_hop && target/release/cluster_hop`
//! (`--secs N`, `--k 1,16`; `BRIDGE_BENCH_NATS_URL`, default `nats://127.0.0.1:4222`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BridgeClient, BridgeConfig, Credentials};
use bridge_cluster::{ClusterConfig, ClusterHub};
use bridge_hub::Hub;
use bridge_protocol::DeviceId;
use bridge_server::{Server, ServerConfig};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const BODY: &str = r#"{"payload":"03"}"#;
const WARM_UP: Duration = Duration::from_secs(1);

fn node(nats: &str, prefix: &str, id: &str) -> Server {
    let mut config = ServerConfig::default();
    config.node_id = Some(id.to_owned());
    config.rate_per_second = 100_000_000;
    config.rate_burst = 100_000_000;
    let cluster = ClusterConfig::new(nats, id).prefix(prefix);
    Server::builder(config)
        .development_mode()
        .wrap_hub(move |local| ClusterHub::start(cluster, local) as Arc<dyn Hub>)
        .build()
        .expect("a development-mode node builds")
}

async fn serve(server: &Server) -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    Ok(addr)
}

/// Round trips per second, p50 and p99 in µs, failures.
async fn measure(router: axum::Router, path: String, k: usize, secs: u64) -> (f64, f64, f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (router, path, stop, measuring) = (
            router.clone(),
            path.clone(),
            Arc::clone(&stop),
            Arc::clone(&measuring),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(request) = Request::post(path.as_str())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(BODY))
                else {
                    break;
                };
                let start = Instant::now();
                let Ok(response) = router.clone().oneshot(request).await;
                let ok = response.status() == StatusCode::OK;
                let _ = axum::body::to_bytes(response.into_body(), 4096).await;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(start.elapsed());
                    } else {
                        failures += 1;
                    }
                }
            }
            (latencies, failures)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        if let Ok((latencies, failed)) = task.await {
            all.extend(latencies);
            failures += failed;
        }
    }
    all.sort_unstable();
    let pick = |q: f64| {
        if all.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        all[i].as_secs_f64() * 1e6
    };
    #[allow(clippy::cast_precision_loss)]
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    (rate, pick(0.5), pick(0.99), failures)
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let secs: u64 = arg("--secs").map_or(Ok(4), |s| s.parse())?;
    let ks: Vec<usize> = arg("--k")
        .unwrap_or_else(|| "1,16".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let nats =
        std::env::var("BRIDGE_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = format!("bench-{}", std::process::id());
    let a = node(&nats, &prefix, "bench-a");
    let b = node(&nats, &prefix, "bench-b");
    let a_addr = serve(&a).await?;
    serve(&b).await?;

    let device = DeviceId::new("bench-lock")?;
    let phone = BridgeClient::start(
        BridgeConfig::new(
            format!("ws://{a_addr}/ws"),
            Credentials::Development {
                user_id: "bench-phone".into(),
            },
            vec![device.clone()],
        ),
        Arc::new(SimulatedLocks::new(
            [device.clone()],
            LockBehaviour::default(),
        )),
    );
    phone.wait_connected(1).await?;
    phone.report_status(device.clone(), true, Some(-60))?;
    // B must see the lock before it can route to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.hub().device_presence(&device).await.online {
        if Instant::now() > deadline {
            return Err("node B never saw the lock: is NATS running?".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let path = format!("/v1/devices/{device}/commands");
    println!("| route | K | round trips/s | p50 µs | p99 µs | failures |");
    println!("|---|---|---|---|---|---|");
    for k in ks {
        for (route, server) in [("local (A)", &a), ("remote (B → A)", &b)] {
            let (rate, p50, p99, failures) = measure(server.router(), path.clone(), k, secs).await;
            println!("| {route} | {k} | {rate:.0} | {p50:.1} | {p99:.1} | {failures} |");
        }
    }
    phone.shutdown().await;
    Ok(())
}

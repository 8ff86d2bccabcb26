//! Load test: 10,000 idle bridge connections over loopback; reports the server's resident
//! memory per connection.
//!
//! The server (a `LocalHub` serving each connection with the hub's `ServerWebSocket` after
//! the handshake, as the server serves it, configured with
//! `HubConfig::websocket_config`; `--tungstenite` serves tokio-tungstenite's stream over the
//! hub's `ReadAhead` instead, for comparison) runs in this process; the clients run in a child process
//! (this same binary with `--clients`), so the figure is the server's alone. Each client is
//! a bridge holding one device. The clients connect from 127.0.0.1 to 127.0.0.4 so that
//! source ports never run short, and both processes raise their open-file limit.
//!
//! Run: `cargo run --release -p benches --bin idle_connections [-- --connections 10000]`
//! (`--read-buffer BYTES` overrides the hub's recommended 1 KiB read buffer, for comparison).
//!
//! Stops by itself: after measuring, the hub shuts down (every connection closed with
//! 1001), the child exits, and so does this process; a watchdog bounds the whole run.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bridge_hub::{ConnectionInfo, DeviceAccess, LocalHub, ReadAhead, ServerWebSocket, UserId};
use bridge_protocol::DeviceId;
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const DEFAULT_CONNECTIONS: u64 = 10_000;
const SOURCE_ADDRESSES: u8 = 4;
/// The whole run is bounded by this; the clients give up after it too.
const WATCHDOG: Duration = Duration::from_mins(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--clients") {
        let addr: SocketAddr = args.get(2).ok_or("missing address")?.parse()?;
        let count: u64 = args.get(3).ok_or("missing count")?.parse()?;
        return run_clients(addr, count);
    }
    let connections = match args.iter().position(|a| a == "--connections") {
        Some(i) => args.get(i + 1).ok_or("missing count")?.parse()?,
        None => DEFAULT_CONNECTIONS,
    };
    // For comparison only: the hub's recommended read buffer is HubConfig::READ_BUFFER_BYTES.
    let read_buffer = match args.iter().position(|a| a == "--read-buffer") {
        Some(i) => Some(args.get(i + 1).ok_or("missing size")?.parse()?),
        None => None,
    };
    let tungstenite = args.iter().any(|a| a == "--tungstenite");
    run_server(connections, read_buffer, tungstenite)
}

/// The server's side of a WebSocket handshake, by hand: reads the request (a client sends
/// nothing more before the answer) and answers 101 with the accept key.
async fn handshake(tcp: &mut tokio::net::TcpStream) -> Result<(), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::with_capacity(512);
    while !request.ends_with(b"\r\n\r\n") {
        if request.len() > 8192 || tcp.read_buf(&mut request).await? == 0 {
            return Err("bad handshake".into());
        }
    }
    let text = std::str::from_utf8(&request)?;
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })
        .ok_or("no key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    tcp.write_all(answer.as_bytes()).await?;
    Ok(())
}

/// Resident set size of a process, in bytes, from `/proc/<pid>/status`.
fn resident_bytes(pid: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    let kib: u64 = line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?;
    Ok(kib * 1024)
}

fn raise_fd_limit(needed: u64) -> Result<u64, BoxError> {
    let limit = rlimit::increase_nofile_limit(needed)?;
    if limit < needed {
        return Err(format!("open-file limit is {limit}, {needed} needed").into());
    }
    Ok(limit)
}

fn run_server(
    connections: u64,
    read_buffer: Option<usize>,
    tungstenite: bool,
) -> Result<(), BoxError> {
    raise_fd_limit(connections + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::time::timeout(
            WATCHDOG,
            serve_and_measure(connections, read_buffer, tungstenite),
        )
        .await
        .map_err(|_| BoxError::from("the run did not finish within the watchdog"))?
    })
}

async fn serve_and_measure(
    connections: u64,
    read_buffer: Option<usize>,
    tungstenite: bool,
) -> Result<(), BoxError> {
    let hub = LocalHub::default();
    let mut ws_config = hub.config().websocket_config();
    if let Some(bytes) = read_buffer {
        ws_config = ws_config.read_buffer_size(bytes);
    }
    println!(
        "server read buffer:       {} bytes per connection",
        ws_config.read_buffer_size
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let server = hub.clone();
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let hub = server.clone();
            let n = counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(device) = DeviceId::new(&format!("device-{n}")) else {
                    return;
                };
                let info = ConnectionInfo::bridge(
                    UserId::new(&format!("phone-{n}")),
                    vec![device],
                    DeviceAccess::none(),
                );
                if tungstenite {
                    let Ok(ws) = tokio_tungstenite::accept_async_with_config(
                        ReadAhead::new(tcp),
                        Some(ws_config),
                    )
                    .await
                    else {
                        return;
                    };
                    hub.serve(ws, info).await;
                } else {
                    let mut tcp = tcp;
                    if handshake(&mut tcp).await.is_err() {
                        return;
                    }
                    hub.serve(ServerWebSocket::new(tcp, &ws_config), info).await;
                }
            });
        }
    });

    // Let the runtime and the allocator settle before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = std::process::id().to_string();
    let before = resident_bytes(&pid)?;

    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--clients", &addr.to_string(), &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let child_pid = child.id().to_string();
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    if !ready.starts_with("connected") {
        return Err(format!("clients failed: {ready:?}").into());
    }
    while (hub.counts().bridge_connections as u64) < connections {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = started.elapsed();
    // Idle for a moment: nothing but the hub's own timers runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_bytes(&pid)?;
    let clients = resident_bytes(&child_pid).unwrap_or(0);
    let counts = hub.counts();

    let per_connection = after.saturating_sub(before) / connections;
    println!("idle bridge connections:  {}", counts.bridge_connections);
    println!("devices online:           {}", counts.devices_online);
    println!("time to connect all:      {connect_time:.2?}");
    println!("server RSS before:        {:.1} MiB", mib(before));
    println!("server RSS after:         {:.1} MiB", mib(after));
    println!(
        "server bytes/connection:  {per_connection} ({:.2} KiB)",
        kib(per_connection)
    );
    println!(
        "(client process RSS:      {:.1} MiB, not included above)",
        mib(clients)
    );

    let report = hub.shutdown(Duration::from_secs(30)).await;
    println!(
        "shutdown: {} closed with 1001, {} still running",
        report.closed, report.still_running
    );
    if let Some(mut stdin) = child.stdin.take() {
        // Tells the clients to exit, should they still be waiting.
        let _ = stdin.write_all(b"done\n");
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    if !status.success() {
        return Err(format!("client process ended with {status}").into());
    }
    Ok(())
}

// Display only: a few hundred MiB are exact in an f64.
#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[allow(clippy::cast_precision_loss)]
fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

/// The child: opens `count` idle WebSocket connections, says so, and waits for the server to
/// close them (or for the parent to say it is done).
fn run_clients(addr: SocketAddr, count: u64) -> Result<(), BoxError> {
    raise_fd_limit(count + 256)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Small client buffers too: the client's memory is not measured, but it shares the box.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0);
        let url = format!("ws://{addr}/ws");
        let clients: Vec<_> = futures_util::stream::iter(0..count)
            .map(|i| {
                let url = url.clone();
                async move {
                    #[allow(clippy::cast_possible_truncation)]
                    let host = 1 + (i % u64::from(SOURCE_ADDRESSES)) as u8;
                    let socket = TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))?;
                    let tcp = socket.connect(addr).await?;
                    let (ws, _) =
                        tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
                    Ok::<_, BoxError>(ws)
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let mut open = Vec::with_capacity(clients.len());
        for client in clients {
            open.push(client?);
        }
        println!("connected {}", open.len());
        std::io::stdout().flush()?;
        // Idle: read only to see the server's close (and answer its pings), bounded.
        let drain = futures_util::future::join_all(
            open.into_iter()
                .map(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} }),
        );
        let _ = tokio::time::timeout(WATCHDOG, drain).await;
        Ok(())
    })
}

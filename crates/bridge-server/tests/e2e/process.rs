//! The `bridge-server` binary: durability across SIGKILL, graceful shutdown, refusals.

use std::path::Path;
use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// A `bridge-server` process on a free loopback port.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) client: TestServer,
}

impl Process {
    pub(crate) async fn start(dir: &Path, extra: &[&str]) -> Self {
        let queue = format!("sqlite://{}", dir.join("queue.sqlite").display());
        Self::start_with_queue(dir, &queue, extra).await
    }

    pub(crate) async fn start_with_queue(dir: &Path, queue: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bridge-server"))
            .args(["--listen", "127.0.0.1:0", "--queue", queue])
            .args(extra)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the server starts in time")
            .unwrap()
            .expect("the server prints its address");
        let addr = line
            .rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Self {
            child,
            client: TestServer::client_for(addr),
        }
    }

    pub(crate) async fn kill(mut self) {
        // SIGKILL: nothing is flushed or closed by the server.
        self.child.kill().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_sigkill_and_are_all_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &[]).await;
    let mut queued = Vec::new();
    for (kind, payload) in [("unlock", "01"), ("status", "03"), ("lock", "02")] {
        let (status, body) = server
            .client
            .command(
                "lock-1",
                json!({"payload":payload,"ifOffline":"queue","commandType":kind}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        queued.push((body["commandId"].as_str().unwrap().to_owned(), payload));
    }
    let (_, body) = server
        .client
        .command(
            "lock-1",
            json!({"payload":"0c","requiresConfirmation":true,"commandType":"reset"}),
        )
        .await;
    let awaiting = body["commandId"].as_str().unwrap().to_owned();
    server.kill().await;

    let server = Process::start(dir.path(), &[]).await;
    let mut bridge = Bridge::connect(&server.client, "phone", &["lock-1"]).await;
    for (id, payload) in &queued {
        let write = assert_first_write(&mut bridge, payload).await;
        bridge.answer(&write, "80").await;
        let view = server.client.wait_command_status(id, "succeeded").await;
        assert_eq!(view["attempts"], 1);
    }
    // Still waiting for its confirmation: confirmed now, delivered now.
    let (_, view) = server.client.get(&format!("/v1/commands/{awaiting}")).await;
    assert_eq!(view["status"], "awaiting_confirmation");
    let (status, _) = server
        .client
        .post(&format!("/v1/commands/{awaiting}/confirm"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let write = assert_first_write(&mut bridge, "0c").await;
    bridge.answer(&write, "80").await;
    server
        .client
        .wait_command_status(&awaiting, "succeeded")
        .await;
    server.kill().await;
}

/// A registry with the built-in `smart-lock` as default and a second type, `thermo`.
const TWO_TYPES: &str = r#"
default_type = "smart-lock"
[types.smart-lock]
service_uuid = "fff0"
write_uuid = "fff1"
listen_uuid = "fff2"
[types.thermo]
service_uuid = "181a"
write_uuid = "2a6e"
listen_uuid = "2a6f"
"#;

/// The `timeoutMs` of a `ble_write`, checked to be at most `own` and well above what the
/// default (10 s) would give when `own` is larger, or at most `own` when it is smaller.
fn assert_timeout_of(write: &serde_json::Value, own: u64) {
    let sent = write["timeoutMs"].as_u64().expect("a timeoutMs");
    assert!(
        sent <= own && sent + 5_000 > own,
        "timeoutMs {sent} is not the command's own {own}: {write}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_command_keeps_its_device_type_and_timeout_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("types.toml");
    std::fs::write(&registry, TWO_TYPES).unwrap();
    let registry = registry.to_str().unwrap().to_owned();
    let args = ["--device-types", registry.as_str()];
    let server = Process::start(dir.path(), &args).await;
    let mut ids = Vec::new();
    for request in [
        json!({"payload":"01","ifOffline":"queue","commandType":"read",
               "deviceType":"thermo","timeoutMs":45000}),
        json!({"payload":"02","ifOffline":"queue","commandType":"unlock","timeoutMs":3000}),
    ] {
        let (status, body) = server.client.command("dev-1", request).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["commandId"].as_str().unwrap().to_owned());
    }
    server.kill().await;

    // Nothing of the first process is left but the queue file.
    let server = Process::start(dir.path(), &args).await;
    let mut bridge = Bridge::connect(&server.client, "phone", &["dev-1"]).await;
    let write = assert_first_write(&mut bridge, "01").await;
    assert_eq!(write["deviceType"], "thermo");
    assert_eq!(write["serviceUuid"], "0000181a-0000-1000-8000-00805f9b34fb");
    assert_eq!(write["writeUuid"], "00002a6e-0000-1000-8000-00805f9b34fb");
    assert_eq!(write["listenUuid"], "00002a6f-0000-1000-8000-00805f9b34fb");
    assert_timeout_of(&write, 45_000);
    bridge.answer(&write, "81").await;
    server
        .client
        .wait_command_status(&ids[0], "succeeded")
        .await;
    // Queued without a type: the registry's default, with its own timeout.
    let write = assert_first_write(&mut bridge, "02").await;
    assert_eq!(write["deviceType"], "smart-lock");
    assert_eq!(write["serviceUuid"], "0000fff0-0000-1000-8000-00805f9b34fb");
    assert_timeout_of(&write, 3_000);
    bridge.answer(&write, "82").await;
    server
        .client
        .wait_command_status(&ids[1], "succeeded")
        .await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_expired_during_downtime_is_announced_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &[]).await;
    let (status, body) = server
        .client
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","ttlSeconds":1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["commandId"].as_str().unwrap().to_owned();
    server.kill().await;
    // The smallest TTL passes while no server runs (a separate process has no clock to move).
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    let server = Process::start(dir.path(), &[]).await;
    let mut alice = user(&server.client, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let _bridge = Bridge::connect(&server.client, "phone", &["lock-1"]).await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"expired"})
    );
    let (_, view) = server.client.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(view["status"], "expired");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_sigkill_is_delivered_again_after_restart_before_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &[]).await;
    let mut ids = Vec::new();
    for (kind, payload) in [("unlock", "02"), ("status", "03")] {
        let (_, body) = server
            .client
            .command(
                "lock-1",
                json!({"payload":payload,"ifOffline":"queue","commandType":kind,"timeoutMs":1000}),
            )
            .await;
        ids.push(body["commandId"].as_str().unwrap().to_owned());
    }
    let mut bridge = Bridge::connect(&server.client, "phone", &["lock-1"]).await;
    assert_first_write(&mut bridge, "02").await;
    server
        .client
        .wait_command_status(&ids[0], "delivering")
        .await;
    server.kill().await;

    // The lease lapses (timeout plus grace) and a retry tick hands the command out again,
    // before the one queued after it.
    let server = Process::start(dir.path(), &["--retry-interval-secs", "1"]).await;
    let mut bridge = Bridge::connect(&server.client, "phone", &["lock-1"]).await;
    let write = assert_first_write(&mut bridge, "02").await;
    bridge.answer(&write, "82").await;
    let write = assert_first_write(&mut bridge, "03").await;
    bridge.answer(&write, "83").await;
    let view = server
        .client
        .wait_command_status(&ids[0], "succeeded")
        .await;
    assert_eq!(view["attempts"], 2);
    let view = server
        .client
        .wait_command_status(&ids[1], "succeeded")
        .await;
    assert_eq!(view["attempts"], 1);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(dir.path(), &[]).await;
    let mut alice = user(&server.client, "alice").await;
    let mut bridge = Bridge::connect(&server.client, "phone", &["lock-1"]).await;
    bridge.sync().await;
    alice.send(json!({"type":"ping"})).await;
    alice.recv().await;

    let pid = server.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    for ws in [&mut alice, &mut bridge.ws] {
        let close = ws.closed().await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Away);
    }
    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .expect("the server exits in time")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_public_address_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bridge-server"))
        .args(["--listen", "0.0.0.0:0", "--queue", "memory://"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_jwt_secret_shorter_than_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bridge-server"))
        .args(["--listen", "127.0.0.1:0", "--queue", "memory://"])
        .env("BRIDGE_JWT_SECRET", "only-thirty-one-bytes-long-here")
        .env_remove("BRIDGE_JWT_SECRET_FILE")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("31 bytes") && stderr.contains("at least 32"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_its_jwt_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let server = Process::start(dir.path(), &["--jwt-secret-file", file.to_str().unwrap()]).await;
    let plain = reqwest::Client::new();
    let url = server.client.url("/v1/devices/lock-1");
    let response = plain.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // Signed with the file's text without its newline.
    let response = plain
        .get(&url)
        .bearer_auth(token("backend", "service", None, 60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.kill().await;
}

/// Queues two commands through a `bridge-server` process on `queue`, kills it with SIGKILL,
/// starts another on the same queue, and sees both delivered in order.
async fn survives_sigkill_on(queue: &str) {
    let dir = tempfile::tempdir().unwrap();
    // Unique per run: the queue is shared with whoever else uses this service.
    let device = format!("lock-{}", uuid::Uuid::new_v4().simple());
    let server = Process::start_with_queue(dir.path(), queue, &[]).await;
    let mut ids = Vec::new();
    for (kind, payload) in [("unlock", "02"), ("lock", "01")] {
        let (status, body) = server
            .client
            .command(
                &device,
                json!({"payload":payload,"ifOffline":"queue","commandType":kind}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["commandId"].as_str().unwrap().to_owned());
    }
    server.kill().await;

    let server = Process::start_with_queue(dir.path(), queue, &[]).await;
    assert_eq!(server.client.get("/readyz").await.0, 200);
    let mut bridge = Bridge::connect(&server.client, "phone", &[device.as_str()]).await;
    for (id, payload) in ids.iter().zip(["02", "01"]) {
        let write = assert_first_write(&mut bridge, payload).await;
        bridge.answer(&write, "80").await;
        server.client.wait_command_status(id, "succeeded").await;
    }
    server.kill().await;
}

pub(crate) fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_sigkill_with_a_postgres_queue() {
    survives_sigkill_on(&service_url(
        "BRIDGE_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    ))
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_sigkill_with_a_redis_queue() {
    survives_sigkill_on(&service_url(
        "BRIDGE_TEST_REDIS_URL",
        "redis://127.0.0.1:6379",
    ))
    .await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_sigkill_with_a_rabbitmq_queue() {
    survives_sigkill_on(&service_url(
        "BRIDGE_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    ))
    .await;
}

/// The `bridge-server` binary on a memory queue at `info` (`RUST_LOG`), with `extra`
/// arguments, its stderr piped for the test to read, and the address it says it listens on.
async fn logging_binary(dir: &Path, extra: &[&str]) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bridge-server"))
        .args(["--listen", "127.0.0.1:0", "--queue", "memory://"])
        .args(extra)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = logging_binary(dir.path(), &["--log-format", "json"]).await;
    let client = TestServer::client_for(addr);
    client.command("lock-1", json!({"payload":"01"})).await;
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(logs.iter().any(|l| l["fields"]["message"] == "listening"));
    assert!(
        logs.iter()
            .any(|l| l["span"]["name"] == "command" && l["span"]["device"] == "lock-1"),
        "{stderr}"
    );
    assert!(logs.iter().any(|l| l["fields"]["message"] == "stopped"));
}

/// Sends SIGTERM to the process.
async fn sigterm(server: &Process) {
    let pid = server.child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Reads `stream` until the server closes it; returns what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buf = [0_u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_shutdown_deadline_despite_idle_and_half_sent_http() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    // A header timeout far beyond the deadline: only the deadline can end these.
    let mut server = Process::start(
        dir.path(),
        &[
            "--shutdown-timeout-secs",
            "2",
            "--header-read-timeout-secs",
            "600",
        ],
    )
    .await;
    let addr = server
        .client
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let _idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTT").await.unwrap();
    let mut half_headers = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half_headers
        .write_all(b"POST /v1/devices/lock-1/events HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        .await
        .unwrap();
    // Served after the three were accepted: the server holds them all.
    assert_eq!(server.client.get("/healthz").await.0, 200);

    sigterm(&server).await;
    let start = std::time::Instant::now();
    let exit = tokio::time::timeout(std::time::Duration::from_secs(8), server.child.wait())
        .await
        .expect("the server exits within its shutdown deadline (2 s), not with its clients")
        .unwrap();
    let took = start.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_connection_silent_or_idle_past_the_header_read_timeout_is_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(dir.path(), &["--header-read-timeout-secs", "1"]).await;
    let addr = server
        .client
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    // Connected, sends nothing: closed after about a second, not at once.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let start = std::time::Instant::now();
    tokio::time::timeout(PATIENCE, read_until_closed(&mut silent))
        .await
        .expect("a silent connection is closed");
    let took = start.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900),
        "closed after {took:?}"
    );

    // Kept alive after a request, then idle: closed the same way.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let received = tokio::time::timeout(PATIENCE, read_until_closed(&mut idle))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&received)
    );

    // The server still serves.
    assert_eq!(server.client.get("/healthz").await.0, 200);
    server.child.kill().await.unwrap();
}

/// Log lines are buffered (`bridge_server::init_logs`), but not until the process exits:
/// a command's line reaches stderr while the server still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_reach_stderr_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = logging_binary(dir.path(), &[]).await;
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let client = TestServer::client_for(addr);
    client.command("lock-1", json!({"payload":"01"})).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = logs.next_line().await.unwrap() {
            if line.contains("command ended") && line.contains("lock-1") {
                return line;
            }
        }
        panic!("stderr closed without the command's line");
    })
    .await
    .expect("the command's log line while the server runs");
    assert!(ended.contains("outcome"), "{ended}");
    child.kill().await.unwrap();
}

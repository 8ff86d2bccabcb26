//! Several `bridge-server` processes as one cluster (PROTOCOL.md 5), on the local NATS server
//! and a shared PostgreSQL queue. Each test uses its own subject prefix, so tests run in
//! parallel on the one NATS server; NATS outages are a TCP proxy between a node and NATS that
//! the test cuts, never the shared server stopped.

#![cfg(feature = "postgres")]

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::watch;

use crate::process::{Process, service_url};
use crate::support::*;

fn nats_url() -> String {
    service_url("BRIDGE_TEST_NATS_URL", "nats://127.0.0.1:4222")
}

fn postgres_url() -> String {
    service_url(
        "BRIDGE_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

/// A subject prefix of this test alone.
fn fresh_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

async fn node(dir: &Path, nats: &str, prefix: &str, id: &str) -> Process {
    node_with(dir, nats, prefix, id, &[]).await
}

async fn node_with(dir: &Path, nats: &str, prefix: &str, id: &str, extra: &[&str]) -> Process {
    node_on(dir, &postgres_url(), nats, prefix, id, extra).await
}

async fn node_on(
    dir: &Path,
    queue: &str,
    nats: &str,
    prefix: &str,
    id: &str,
    extra: &[&str],
) -> Process {
    let mut args = vec![
        "--cluster",
        nats,
        "--cluster-prefix",
        prefix,
        "--node-id",
        id,
    ];
    args.extend_from_slice(extra);
    Process::start_with_queue(dir, queue, &args).await
}

/// The value of the `bridge_cluster_nodes` gauge, if `/metrics` has it.
async fn cluster_nodes(server: &TestServer) -> Option<u64> {
    let (_, text) = server.get_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix("bridge_cluster_nodes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

async fn wait_nodes(server: &TestServer, n: u64) {
    eventually(|| async { (cluster_nodes(server).await == Some(n)).then_some(()) }).await;
}

async fn wait_ready(server: &TestServer, status: u16) {
    eventually(|| async { (server.get("/readyz").await.0 == status).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_and_notice_a_killed_one() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = fresh_prefix();
    let nats = nats_url();
    let a = node(dir.path(), &nats, &prefix, "node-a").await;
    let b = node(dir.path(), &nats, &prefix, "node-b").await;
    let c = node(dir.path(), &nats, &prefix, "node-c").await;
    for server in [&a, &b, &c] {
        wait_nodes(&server.client, 3).await;
        wait_ready(&server.client, 200).await;
    }
    // Another cluster on the same NATS server is not seen.
    let other = node(dir.path(), &nats, &fresh_prefix(), "node-a").await;
    wait_nodes(&other.client, 1).await;
    assert_eq!(cluster_nodes(&a.client).await, Some(3));

    c.kill().await;
    wait_nodes(&a.client, 2).await;
    wait_nodes(&b.client, 2).await;
    assert_eq!(
        a.client.get("/readyz").await.0,
        200,
        "the others stay ready"
    );
    a.kill().await;
    b.kill().await;
    other.kill().await;
}

/// A TCP proxy to `upstream` that the test can cut (every connection dropped, new ones
/// refused) and restore.
struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, open: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(open);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut open = rx.clone();
                if !*open.borrow_and_update() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = open.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Self { addr, open: tx }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

fn nats_addr() -> SocketAddr {
    let url = nats_url();
    let host_port = url.trim_start_matches("nats://");
    host_port
        .parse()
        .expect("the NATS test URL is nats://IP:PORT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_nats_serves_but_is_not_ready_and_heals_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = fresh_prefix();
    let proxy = Proxy::start(nats_addr(), false).await;
    let a = node(dir.path(), &proxy.url(), &prefix, "node-a").await;
    let b = node(dir.path(), &nats_url(), &prefix, "node-b").await;
    wait_ready(&b.client, 200).await;

    // Started without NATS: it serves its own connections, but is not ready.
    assert_eq!(a.client.get("/readyz").await.0, 503);
    assert_eq!(a.client.get("/healthz").await.0, 200);
    let device = format!("lock-{}", uuid::Uuid::new_v4().simple());
    let mut phone = Bridge::connect(&a.client, "phone", &[device.as_str()]).await;
    a.client.wait_online(&device, 1).await;

    let other = format!("lock-{}", uuid::Uuid::new_v4().simple());
    let _phone_b = Bridge::connect(&b.client, "phone-b", &[other.as_str()]).await;

    // NATS comes: it joins, and each node sees the other's devices.
    proxy.set_open(true);
    wait_ready(&a.client, 200).await;
    wait_nodes(&a.client, 2).await;
    wait_nodes(&b.client, 2).await;
    a.client.wait_online(&other, 1).await;
    b.client.wait_online(&device, 1).await;

    // NATS goes: 503, and the other node sees it leave; each serves its own phones only.
    proxy.set_open(false);
    wait_ready(&a.client, 503).await;
    wait_nodes(&b.client, 1).await;
    wait_nodes(&a.client, 0).await;
    a.client.wait_device(&other, |d| d["online"] == false).await;
    b.client
        .wait_device(&device, |d| d["online"] == false)
        .await;
    let command = tokio::spawn({
        let client = TestServer::client_for(a.client.addr);
        let device = device.clone();
        async move {
            client
                .command(&device, serde_json::json!({"payload":"01"}))
                .await
        }
    });
    let write = phone.next_write().await;
    phone.answer(&write, "80").await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");

    // And back, without a restart: one cluster again.
    proxy.set_open(true);
    wait_ready(&a.client, 200).await;
    wait_nodes(&a.client, 2).await;
    wait_nodes(&b.client, 2).await;
    a.client.wait_online(&other, 1).await;
    b.client.wait_online(&device, 1).await;
    a.kill().await;
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_cluster_on_a_queue_the_nodes_cannot_share() {
    let dir = tempfile::tempdir().unwrap();
    for queue in ["memory://", "sqlite://q.sqlite"] {
        let output = Command::new(env!("CARGO_BIN_EXE_bridge-server"))
            .args(["--listen", "127.0.0.1:0", "--queue", queue])
            .env("BRIDGE_CLUSTER", nats_url())
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{queue}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--cluster needs a queue every node shares"),
            "{stderr}"
        );
    }
}

/// Three nodes joined on a fresh prefix.
async fn three_nodes(dir: &Path, prefix: &str) -> [Process; 3] {
    three_nodes_with(dir, prefix, &[]).await
}

async fn three_nodes_with(dir: &Path, prefix: &str, extra: &[&str]) -> [Process; 3] {
    three_nodes_on(dir, &postgres_url(), prefix, extra).await
}

async fn three_nodes_on(dir: &Path, queue: &str, prefix: &str, extra: &[&str]) -> [Process; 3] {
    let nats = nats_url();
    let nodes = [
        node_on(dir, queue, &nats, prefix, "node-a", extra).await,
        node_on(dir, queue, &nats, prefix, "node-b", extra).await,
        node_on(dir, queue, &nats, prefix, "node-c", extra).await,
    ];
    for server in &nodes {
        wait_nodes(&server.client, 3).await;
        wait_ready(&server.client, 200).await;
    }
    nodes
}

/// Reads frames until a `device_status` with `online` and `bleConnected` as given.
async fn wait_status(ws: &mut Ws, online: bool, ble_connected: serde_json::Value) {
    loop {
        let frame = ws.recv().await;
        if frame["type"] == "device_status"
            && frame["online"] == online
            && frame["bleConnected"] == ble_connected
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_events_are_cluster_wide() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = three_nodes(dir.path(), &fresh_prefix()).await;
    let device = format!("lock-{}", uuid::Uuid::new_v4().simple());
    let path = format!("/v1/devices/{device}");

    // A user on C watches the device; nobody holds it yet.
    let mut watcher = user(&c.client, "alice").await;
    let snapshot = subscribe(&mut watcher, &device).await;
    assert_eq!(snapshot["online"], false, "{snapshot}");

    // A phone arrives at A: C's user sees it online, B's API says so.
    let mut phone_a = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    wait_status(&mut watcher, true, serde_json::Value::Null).await;
    b.client.wait_online(&device, 1).await;
    let (_, list) = b.client.get("/v1/devices").await;
    assert!(
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["deviceId"] == device.as_str()),
        "{list}"
    );

    // Its link report is the device's bleConnected everywhere.
    phone_a.status(&device, true, Some(-70)).await;
    wait_status(&mut watcher, true, serde_json::Value::Bool(true)).await;
    b.client
        .wait_device(&device, |d| d["bleConnected"] == true)
        .await;

    // A second phone at C, reporting a weaker link that is down: two bridges, and the better
    // report (A's) still decides bleConnected.
    let mut phone_c = Bridge::connect(&c.client, "phone-c", &[device.as_str()]).await;
    phone_c.status(&device, false, Some(-40)).await;
    phone_c.sync().await;
    b.client.wait_online(&device, 2).await;
    let (_, view) = b.client.get(&path).await;
    assert_eq!(view["bleConnected"], true, "{view}");

    // An event posted at B reaches the user at C, and is counted.
    let (status, body) = b
        .client
        .post(
            &format!("{path}/events"),
            &serde_json::json!({"type":"state_changed","data":{"locked":true}}),
        )
        .await;
    assert_eq!((status, body), (202, serde_json::json!({"delivered":1})));
    loop {
        let frame = watcher.recv().await;
        if frame["type"] == "state_changed" {
            assert_eq!(frame["data"]["locked"], true);
            break;
        }
    }

    // A's phone leaves: still online through C's, whose link is down.
    phone_a.ws.close().await;
    wait_status(&mut watcher, true, serde_json::Value::Bool(false)).await;
    b.client.wait_online(&device, 1).await;
    // The last one leaves: offline everywhere.
    phone_c.ws.close().await;
    wait_status(&mut watcher, false, serde_json::Value::Null).await;
    b.client
        .wait_device(&device, |d| d["online"] == false)
        .await;
    for node in [a, b, c] {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_devices_go_offline_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = three_nodes(dir.path(), &fresh_prefix()).await;
    let device = format!("lock-{}", uuid::Uuid::new_v4().simple());
    let mut watcher = user(&c.client, "alice").await;
    subscribe(&mut watcher, &device).await;
    let _phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    wait_status(&mut watcher, true, serde_json::Value::Null).await;
    b.client.wait_online(&device, 1).await;

    a.kill().await;
    wait_status(&mut watcher, false, serde_json::Value::Null).await;
    b.client
        .wait_device(&device, |d| d["online"] == false && d["bridges"] == 0)
        .await;
    b.kill().await;
    c.kill().await;
}

fn new_device() -> String {
    format!("lock-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_goes_through_the_phone_on_another_node_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = three_nodes(dir.path(), &fresh_prefix()).await;
    let device = new_device();
    let mut phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    b.client.wait_online(&device, 1).await;
    c.client.wait_online(&device, 1).await;

    // A backend at B: the write goes out at A, the answer comes back at B.
    let call = b
        .client
        .command(&device, serde_json::json!({"payload":"01"}));
    let answer = async {
        let write = phone.next_write().await;
        phone.answer(&write, "81").await;
        write
    };
    let ((status, body), write) = tokio::join!(call, answer);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "81", "{body}");
    assert_eq!(body["requestId"], write["requestId"], "{body}");

    // The phone at A reports how far it got (PROTOCOL.md 3.2, 1.1): the reports go to the
    // command's node, B, and its answer says where the command got to; none is refused.
    let call = b
        .client
        .command(&device, serde_json::json!({"payload":"03"}));
    let answer = async {
        let write = phone.next_write().await;
        for stage in ["received", "connected", "written"] {
            phone
                .ws
                .send(
                    serde_json::json!({"type":"ble_progress","requestId":write["requestId"],
                    "deviceId":write["deviceId"],"stage":stage}),
                )
                .await;
        }
        phone.answer(&write, "83").await;
        // Every frame before the ping was handled at A: an error frame would come first.
        phone.ws.send(serde_json::json!({"type":"ping"})).await;
        assert_eq!(
            phone.ws.recv().await["type"],
            "pong",
            "no progress report refused"
        );
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "83", "{body}");
    assert_eq!(body["stage"], "written", "{body}");
    for stage in ["receivedMs", "connectedMs", "writtenMs"] {
        assert!(body["progress"][stage].is_u64(), "{stage} in {body}");
    }

    // A user at C, with a `command` frame.
    let mut alice = user(&c.client, "alice").await;
    alice
        .send(serde_json::json!({"type":"command","requestId":"c-1","deviceId":device,"payload":"02"}))
        .await;
    let write = phone.next_write().await;
    phone.answer(&write, "82").await;
    assert_eq!(
        alice.recv_type("command_result").await,
        serde_json::json!({"type":"command_result","requestId":"c-1","deviceId":device,
               "status":"succeeded","payload":"82","stage":"sent"})
    );

    // A device error comes back as such; an answer for the wrong device changes nothing.
    let call = b
        .client
        .command(&device, serde_json::json!({"payload":"03"}));
    let answer = async {
        let write = phone.next_write().await;
        phone
            .ws
            .send(
                serde_json::json!({"type":"ble_response","requestId":write["requestId"],
                         "deviceId":"another-lock","payload":"00"}),
            )
            .await;
        let refused = phone.ws.recv_type("error").await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
        phone.fail(&write, "gatt_write_failed").await;
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 502, "{body}");
    for node in [a, b, c] {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phones_on_two_nodes_are_chosen_by_link_and_rssi() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = three_nodes(dir.path(), &fresh_prefix()).await;
    let device = new_device();
    let mut phone_a = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    let mut phone_c = Bridge::connect(&c.client, "phone-c", &[device.as_str()]).await;
    phone_a.status(&device, true, Some(-80)).await;
    phone_c.status(&device, true, Some(-40)).await;
    phone_a.sync().await;
    phone_c.sync().await;
    b.client.wait_online(&device, 2).await;
    // B sees both reports before it routes (presence reports are in order per node).
    eventually(|| async {
        let (_, view) = b.client.get(&format!("/v1/devices/{device}")).await;
        (view["bleConnected"] == true).then_some(())
    })
    .await;

    // The stronger signal, on C, gets it; also from A, whose own phone is weaker.
    for from in [&b, &a] {
        let call = from
            .client
            .command(&device, serde_json::json!({"payload":"01"}));
        let answer = async {
            let write = phone_c.next_write().await;
            phone_c.answer(&write, "80").await;
        };
        let ((status, body), ()) = tokio::join!(call, answer);
        assert_eq!(status, 200, "{body}");
    }

    // C's link goes down: A's phone, connected, is the best now.
    phone_c.status(&device, false, Some(-40)).await;
    phone_c.sync().await;
    let mut routed_to_a = false;
    for _ in 0..50 {
        // Until B has C's report, a command may still go to C: answer it there.
        let call = b.client.command(
            &device,
            serde_json::json!({"payload":"02","timeoutMs":5000}),
        );
        let answer = async {
            tokio::select! {
                write = phone_a.next_write() => { phone_a.answer(&write, "80").await; true }
                write = phone_c.next_write() => { phone_c.answer(&write, "80").await; false }
            }
        };
        let ((status, body), to_a) = tokio::join!(call, answer);
        assert_eq!(status, 200, "{body}");
        if to_a {
            routed_to_a = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        routed_to_a,
        "A's connected phone is chosen once C's link is down"
    );
    for node in [a, b, c] {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_a_node_killed_with_sigkill_end_bridge_lost_and_a_release_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = three_nodes(dir.path(), &fresh_prefix()).await;
    let device = new_device();
    let mut phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    b.client.wait_online(&device, 1).await;

    // A release at A fails B's command through it at once.
    let call = b.client.command(
        &device,
        serde_json::json!({"payload":"01","timeoutMs":60000}),
    );
    let release = async {
        phone.next_write().await;
        phone
            .ws
            .send(serde_json::json!({"type":"release","deviceId":device}))
            .await;
    };
    let ((status, body), ()) = tokio::join!(call, release);
    assert_eq!(
        (status, body),
        (
            503,
            serde_json::json!({"status":"bridge_lost","stage":"sent"})
        )
    );

    // Claimed again; two commands in flight from B and C when A dies.
    phone.status(&device, true, None).await;
    phone.sync().await;
    b.client.wait_online(&device, 1).await;
    c.client.wait_online(&device, 1).await;
    let from_b = b.client.command(
        &device,
        serde_json::json!({"payload":"02","timeoutMs":60000}),
    );
    let from_c = c.client.command(
        &device,
        serde_json::json!({"payload":"03","timeoutMs":60000}),
    );
    let kill = async {
        phone.next_write().await;
        phone.next_write().await;
        a.kill().await;
    };
    let ((status_b, body_b), (status_c, body_c), ()) = tokio::join!(from_b, from_c, kill);
    assert_eq!(
        (status_b, body_b),
        (
            503,
            serde_json::json!({"status":"bridge_lost","stage":"sent"})
        )
    );
    assert_eq!(
        (status_c, body_c),
        (
            503,
            serde_json::json!({"status":"bridge_lost","stage":"sent"})
        )
    );
    b.client
        .wait_device(&device, |d| d["online"] == false)
        .await;
    b.kill().await;
    c.kill().await;
}

async fn queue_command(
    server: &TestServer,
    device: &str,
    payload: &str,
    timeout_ms: u64,
) -> String {
    let (status, body) = server
        .command(
            device,
            serde_json::json!({"payload":payload,"ifOffline":"queue","timeoutMs":timeout_ms,
                               "commandType":format!("kind-{payload}")}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    body["commandId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_delivered_once_in_order_wherever_the_phone_arrives() {
    queued_delivery_across_nodes(&postgres_url()).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_delivered_once_in_order_wherever_the_phone_arrives_on_redis() {
    queued_delivery_across_nodes(&service_url(
        "BRIDGE_TEST_REDIS_URL",
        "redis://127.0.0.1:6379",
    ))
    .await;
}

async fn queued_delivery_across_nodes(queue: &str) {
    let dir = tempfile::tempdir().unwrap();
    // No retry tick within the test: every delivery here is started by an event.
    let [a, b, c] = three_nodes_on(
        dir.path(),
        queue,
        &fresh_prefix(),
        &["--retry-interval-secs", "3600"],
    )
    .await;
    let device = new_device();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(queue_command(&b.client, &device, &format!("1{i}"), 60_000).await);
    }

    // The phone arrives at C: C's delivery pass sends them one at a time, in order.
    let mut phone = Bridge::connect(&c.client, "phone-c", &[device.as_str()]).await;
    for (i, id) in ids.iter().enumerate() {
        let write = assert_first_write(&mut phone, &format!("1{i}")).await;
        phone.answer(&write, "80").await;
        a.client.wait_command_status(id, "succeeded").await;
    }

    // Confirmed at A, which holds nothing: C, which holds the device, delivers it now.
    let (status, body) = b
        .client
        .command(
            &device,
            serde_json::json!({"payload":"2c","requiresConfirmation":true,"commandType":"unlock"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["commandId"].as_str().unwrap().to_owned();
    let (status, _) = a
        .client
        .post(
            &format!("/v1/commands/{id}/confirm"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let write = assert_first_write(&mut phone, "2c").await;
    phone.answer(&write, "80").await;
    b.client.wait_command_status(&id, "succeeded").await;
    for (i, id) in ids.iter().enumerate() {
        let (_, view) = b.client.get(&format!("/v1/commands/{id}")).await;
        assert_eq!(view["attempts"], 1, "command {i}: {view}");
    }
    for node in [a, b, c] {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_queue_goes_on_through_the_node_the_phone_reconnects_to() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] =
        three_nodes_with(dir.path(), &fresh_prefix(), &["--retry-interval-secs", "1"]).await;
    let device = new_device();
    let ids = [
        queue_command(&b.client, &device, "31", 1_000).await,
        queue_command(&b.client, &device, "32", 1_000).await,
    ];
    let mut phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    assert_first_write(&mut phone, "31").await;
    a.kill().await;
    drop(phone);

    // The phone reconnects to C: once the dead node's lease has run out, C delivers the
    // cut-off command first, then the next.
    let mut phone = Bridge::connect(&c.client, "phone-c", &[device.as_str()]).await;
    for (id, payload) in ids.iter().zip(["31", "32"]) {
        let write = assert_first_write(&mut phone, payload).await;
        phone.answer(&write, "80").await;
        b.client.wait_command_status(id, "succeeded").await;
    }
    let (_, view) = b.client.get(&format!("/v1/commands/{}", ids[0])).await;
    assert_eq!(view["attempts"], 2, "{view}");
    b.kill().await;
    c.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_id_takes_its_deliveries_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = fresh_prefix();
    let nats = nats_url();
    // No retry tick within the test, and a minute-long command timeout: the test ending at
    // all shows the lease was not waited out.
    let slow = ["--retry-interval-secs", "3600"];
    let a = node_with(dir.path(), &nats, &prefix, "node-a", &slow).await;
    let b = node_with(dir.path(), &nats, &prefix, "node-b", &slow).await;
    wait_nodes(&a.client, 2).await;
    wait_nodes(&b.client, 2).await;
    let device = new_device();
    let id = queue_command(&b.client, &device, "41", 60_000).await;
    let mut phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    assert_first_write(&mut phone, "41").await;
    a.kill().await;
    drop(phone);

    let a = node_with(dir.path(), &nats, &prefix, "node-a", &slow).await;
    wait_ready(&a.client, 200).await;
    wait_nodes(&b.client, 2).await;
    let mut phone = Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await;
    let write = assert_first_write(&mut phone, "41").await;
    phone.answer(&write, "80").await;
    b.client.wait_command_status(&id, "succeeded").await;
    a.kill().await;
    b.kill().await;
}

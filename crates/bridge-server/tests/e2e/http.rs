//! PROTOCOL.md 4.1, 4.3 and 4.4 over real HTTP, with raw WebSocket bridges.

use bridge_protocol::ConfigRegistry;
use bridge_queue::{MemoryStore, StoreConfig};
use bridge_server::ServerConfig;
use serde_json::json;
use std::sync::Arc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer_without_a_token() {
    let server = TestServer::start_authenticated().await;
    let plain = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = plain.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_types_list_the_built_in_smart_lock_as_default() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/v1/device-types").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"deviceTypes":[{"deviceType":"smart-lock",
            "serviceUuid":"0000fff0-0000-1000-8000-00805f9b34fb",
            "writeUuid":"0000fff1-0000-1000-8000-00805f9b34fb",
            "listenUuid":"0000fff2-0000-1000-8000-00805f9b34fb"}],
            "defaultType":"smart-lock"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_an_online_device_returns_its_answer() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;

    let call = server.command("lock-1", json!({"payload":"AABB","timeoutMs":30000}));
    let answer = async {
        let write = bridge.next_write().await;
        assert_eq!(write["deviceId"], "lock-1");
        assert_eq!(write["deviceType"], "smart-lock");
        assert_eq!(write["serviceUuid"], "0000fff0-0000-1000-8000-00805f9b34fb");
        assert_eq!(write["writeUuid"], "0000fff1-0000-1000-8000-00805f9b34fb");
        assert_eq!(write["listenUuid"], "0000fff2-0000-1000-8000-00805f9b34fb");
        assert_eq!(write["payload"], "aabb", "payloads go out lower-case");
        assert!(write["timeoutMs"].as_u64().unwrap() <= 30000);
        bridge.answer(&write, "01").await;
        write
    };
    let ((status, body), write) = tokio::join!(call, answer);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["payload"], "01");
    assert_eq!(body["requestId"], write["requestId"]);
    assert!(body["latencyMs"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_error_is_502() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let call = server.command("lock-1", json!({"payload":"01"}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.fail(&write, "gatt_write_failed").await;
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"status":"device_error","error":"gatt_write_failed","stage":"sent"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_503_offline_unless_the_command_may_queue() {
    let server = TestServer::start().await;
    let (status, body) = server.command("lock-1", json!({"payload":"01"})).await;
    assert_eq!((status, body), (503, json!({"status":"offline"})));

    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "queued");
    assert!(body["commandId"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_within_timeout_is_504() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let call = server.command("lock-1", json!({"payload":"01","timeoutMs":200}));
    let ((status, body), _write) = tokio::join!(call, bridge.next_write());
    assert_eq!(
        (status, body),
        (504, json!({"status":"timeout","stage":"sent"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_closing_fails_its_pending_command_at_once_with_bridge_lost() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    // A minute-long timeout: the test finishing at all shows nobody waited for it.
    let call = server.command("lock-1", json!({"payload":"01","timeoutMs":60000}));
    let drop_bridge = async move {
        bridge.next_write().await;
        bridge.ws.close().await;
    };
    let ((status, body), ()) = tokio::join!(call, drop_bridge);
    assert_eq!(
        (status, body),
        (503, json!({"status":"bridge_lost","stage":"sent"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_releasing_the_device_fails_its_pending_command_at_once() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let call = server.command("lock-1", json!({"payload":"01","timeoutMs":60000}));
    let release = async {
        let write = bridge.next_write().await;
        bridge
            .ws
            .send(json!({"type":"release","deviceId":"lock-1"}))
            .await;
        write
    };
    let ((status, body), write) = tokio::join!(call, release);
    assert_eq!(
        (status, body),
        (503, json!({"status":"bridge_lost","stage":"sent"}))
    );
    // The answer that comes too late resolves nothing.
    bridge.answer(&write, "01").await;
    let error = bridge.ws.recv().await;
    assert_eq!(error["code"], "unknown_request");
    assert_eq!(error["requestId"], write["requestId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_bodies_are_refused_with_the_right_code_and_status() {
    let server = TestServer::start().await;
    let big = "00".repeat(513);
    let cases = [
        ("not json".to_owned(), 400, "invalid_request"),
        ("[1,2]".to_owned(), 400, "invalid_request"),
        (json!({}).to_string(), 400, "invalid_request"),
        (json!({"payload":"abc"}).to_string(), 400, "invalid_payload"),
        (json!({"payload":"zz"}).to_string(), 400, "invalid_payload"),
        (json!({"payload":7}).to_string(), 400, "invalid_payload"),
        (json!({"payload": big}).to_string(), 400, "invalid_payload"),
        (
            json!({"payload":"01","timeoutMs":0}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","timeoutMs":120_001}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","timeoutMs":"fast"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","ifOffline":"queue"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","ifOffline":"maybe"}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","requiresConfirmation":true}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","ttlSeconds":0,"ifOffline":"queue","commandType":"a"})
                .to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"payload":"01","deviceType":"toaster"}).to_string(),
            404,
            "unknown_device_type",
        ),
    ];
    for (body, status, code) in cases {
        let (got_status, got) = server
            .post_raw("/v1/devices/lock-1/commands", body.clone())
            .await;
        assert_eq!(got_status, status, "{body} -> {got}");
        assert_eq!(got["error"]["code"], code, "{body} -> {got}");
        assert!(got["error"]["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_and_a_bad_device_id_is_400() {
    let mut config = ServerConfig::default();
    config.max_body_bytes = 256;
    let server = TestServer::start_with(config, |b| b).await;
    let body = json!({"payload":"01","commandType":"x".repeat(300)}).to_string();
    let (status, error) = server.post_raw("/v1/devices/lock-1/commands", body).await;
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "invalid_request");

    let long_id = "d".repeat(200);
    let (status, error) = server.get(&format!("/v1/devices/{long_id}")).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["code"], "invalid_request");

    let (status, error) = server.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_type_a_command_must_name_one() {
    let mut registry = ConfigRegistry::new();
    registry.insert(
        bridge_protocol::DeviceType::new("thermostat").unwrap(),
        bridge_protocol::DeviceConfig::SMART_LOCK,
    );
    let server = TestServer::start_with(ServerConfig::default(), |b| b.registry(registry)).await;
    let (status, body) = server.command("t-1", json!({"payload":"01"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    let (status, body) = server
        .command("t-1", json!({"payload":"01","deviceType":"thermostat"}))
        .await;
    assert_eq!((status, body), (503, json!({"status":"offline"})));
    let (_, types) = server.get("/v1/device-types").await;
    assert_eq!(types["defaultType"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_device_queue_is_429_queue_full() {
    let store = Arc::new(MemoryStore::new(StoreConfig {
        max_open_per_device: 2,
        ..StoreConfig::default()
    }));
    let server = TestServer::start_with(ServerConfig::default(), |b| b.store(store)).await;
    for kind in ["a", "b"] {
        let (status, _) = server
            .command(
                "lock-1",
                json!({"payload":"01","ifOffline":"queue","commandType":kind}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"c"}),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "queue_full");
    // Updating one in place is not one more.
    let (status, _) = server
        .command(
            "lock-1",
            json!({"payload":"02","ifOffline":"queue","commandType":"a"}),
        )
        .await;
    assert_eq!(status, 202);
}

/// A final command is readable by id for the retention after its TTL ended, then
/// `GET /v1/commands/{id}` answers 404 (`not_found`). On the store's virtual clock:
/// nothing sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_command_is_404_once_a_final_command_is_past_its_retention() {
    let clock = bridge_queue::ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default()
            .with_retention(std::time::Duration::from_hours(1))
            .with_clock(Arc::new(clock.clone())),
    ));
    let server = TestServer::start_with(ServerConfig::default(), |b| b.store(store)).await;
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","ttlSeconds":60}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["commandId"].as_str().expect("an id").to_owned();
    let (status, body) = server
        .post(&format!("/v1/commands/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // A minute of TTL and an hour of retention later, less a second: still there.
    clock.advance(std::time::Duration::from_secs(60 + 3600 - 1));
    let (status, body) = server.get(&format!("/v1/commands/{id}")).await;
    assert_eq!((status, &body["status"]), (200, &json!("cancelled")));
    clock.advance(std::time::Duration::from_secs(2));
    let (status, body) = server.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_views_show_presence_link_bridges_each_holder_and_queue() {
    let server = TestServer::start().await;
    let (status, view) = server.get("/v1/devices/lock-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        view,
        json!({"deviceId":"lock-1","online":false,"bleConnected":null,"bridges":0,"pendingCommands":0})
    );
    server
        .command(
            "lock-1",
            json!({"payload":"01","requiresConfirmation":true,"commandType":"unlock"}),
        )
        .await;

    let mut a = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    let _b = Bridge::connect(&server, "phone-b", &["lock-1"]).await;
    a.status("lock-1", true, Some(-40)).await;
    let view = server
        .wait_device("lock-1", |v| v["bridges"] == 2 && v["bleConnected"] == true)
        .await;
    assert_eq!(
        view,
        json!({"deviceId":"lock-1","online":true,"bleConnected":true,"bridges":2,"pendingCommands":1,
               "holders":[
                   {"userId":"phone-a","bleConnected":true,"rssi":-40,"commandsInFlight":0},
                   {"userId":"phone-b","bleConnected":null,"rssi":null,"commandsInFlight":0}]})
    );
    let (_, list) = server.get("/v1/devices").await;
    assert_eq!(
        list,
        json!({"devices":[{"deviceId":"lock-1","online":true,"bleConnected":true}]})
    );

    // A command out at phone-a counts on its holder entry until it is answered.
    let http = server.http.clone();
    let url = server.url("/v1/devices/lock-1/commands");
    let running = tokio::spawn(async move {
        http.post(url)
            .body(r#"{"payload":"03"}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    let write = a.next_write().await;
    let view = server
        .wait_device("lock-1", |v| v["holders"][0]["commandsInFlight"] == 1)
        .await;
    assert_eq!(view["holders"][0]["userId"], "phone-a");
    assert_eq!(view["holders"][1]["commandsInFlight"], 0);
    a.answer(&write, "8300").await;
    assert_eq!(running.await.unwrap(), 200);
    server
        .wait_device("lock-1", |v| v["holders"][0]["commandsInFlight"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_subscribed_user_connection() {
    let server = TestServer::start().await;
    let mut tab1 = user(&server, "alice").await;
    let mut tab2 = user(&server, "alice").await;
    let mut other = user(&server, "bob").await;
    subscribe(&mut tab1, "lock-1").await;
    subscribe(&mut tab2, "lock-1").await;
    subscribe(&mut other, "lock-2").await;

    let (status, body) = server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"state_changed","data":{"locked":false}}),
        )
        .await;
    assert_eq!((status, body), (202, json!({"delivered":2})));
    let expected = json!({"type":"state_changed","deviceId":"lock-1","data":{"locked":false}});
    assert_eq!(tab1.recv().await, expected);
    assert_eq!(tab2.recv().await, expected);

    let (status, body) = server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"command_result"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    let (status, body) = server
        .post("/v1/devices/lock-1/events", &json!({"data":{}}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_series_of_section_4_4() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let _user = user(&server, "alice").await;
    server.wait_online("lock-1", 1).await;
    let call = server.command("lock-1", json!({"payload":"01"}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "02").await;
    };
    tokio::join!(call, answer);
    server.command("lock-2", json!({"payload":"01"})).await;
    server
        .command(
            "lock-2",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    bridge.ws.send_text("not json").await;
    bridge.ws.recv().await;

    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "bridge_connections{role=\"bridge\"} 1",
        "bridge_connections{role=\"user\"} 1",
        "bridge_devices_online 1",
        "bridge_commands_total{outcome=\"succeeded\"} 1",
        "bridge_commands_total{outcome=\"offline\"} 1",
        "bridge_commands_total{outcome=\"queued\"} 1",
        "bridge_commands_pending 0",
        "bridge_command_duration_seconds_count 1",
        "bridge_queue_commands{status=\"pending\"} 1",
        "bridge_frames_rejected_total{code=\"invalid_message\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_their_own_metrics() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    first.command("lock-1", json!({"payload":"01"})).await;
    let (_, text) = second.get_text("/metrics").await;
    assert!(
        !text.contains("bridge_commands_total{outcome=\"offline\"}"),
        "{text}"
    );
    let (_, text) = first.get_text("/metrics").await;
    assert!(text.contains("bridge_commands_total{outcome=\"offline\"} 1"));
}

/// What the flaky backend's client library "says": the kind of text (a host, a user name)
/// that goes to the log and never into an answer.
const BACKEND_DETAIL: &str = "connection to bridge_admin@db-internal.corp.example:5432 refused";

/// A memory store whose backend "does not answer" once told so.
/// The in-memory store, unavailable while `down`; counts its `expire` calls (every delivery
/// pass starts with one; reads of a device's commands make some too).
pub(crate) struct FlakyStore {
    pub(crate) inner: MemoryStore,
    pub(crate) down: std::sync::atomic::AtomicBool,
    pub(crate) expires: std::sync::atomic::AtomicUsize,
}

impl FlakyStore {
    pub(crate) fn new() -> Self {
        Self {
            inner: MemoryStore::default(),
            down: std::sync::atomic::AtomicBool::new(false),
            expires: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn check(&self) -> Result<(), bridge_queue::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(bridge_queue::StoreError::Unavailable {
                backend: "flaky",
                source: BACKEND_DETAIL.into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl bridge_queue::Store for FlakyStore {
    async fn enqueue(
        &self,
        command: bridge_queue::NewCommand,
    ) -> Result<bridge_protocol::CommandId, bridge_queue::StoreError> {
        self.check()?;
        self.inner.enqueue(command).await
    }
    async fn confirm(
        &self,
        id: &bridge_protocol::CommandId,
    ) -> Result<bridge_queue::QueuedCommand, bridge_queue::StoreError> {
        self.check()?;
        self.inner.confirm(id).await
    }
    async fn cancel(
        &self,
        id: &bridge_protocol::CommandId,
    ) -> Result<bridge_queue::QueuedCommand, bridge_queue::StoreError> {
        self.check()?;
        self.inner.cancel(id).await
    }
    async fn lease_next(
        &self,
        device: &bridge_protocol::DeviceId,
        owner: &bridge_queue::NodeId,
        grace: std::time::Duration,
    ) -> Result<Option<bridge_queue::Leased>, bridge_queue::StoreError> {
        self.check()?;
        self.inner.lease_next(device, owner, grace).await
    }
    async fn complete(
        &self,
        lease: &bridge_queue::Lease,
        outcome: bridge_protocol::http::CommandOutcome,
    ) -> Result<bridge_queue::QueuedCommand, bridge_queue::StoreError> {
        self.check()?;
        self.inner.complete(lease, outcome).await
    }
    async fn release(
        &self,
        lease: &bridge_queue::Lease,
        cut: bridge_queue::Cut,
    ) -> Result<bridge_queue::QueuedCommand, bridge_queue::StoreError> {
        self.check()?;
        self.inner.release(lease, cut).await
    }
    async fn reclaim(
        &self,
        owner: &bridge_queue::NodeId,
    ) -> Result<Vec<bridge_queue::QueuedCommand>, bridge_queue::StoreError> {
        self.check()?;
        self.inner.reclaim(owner).await
    }
    async fn drain_pending(
        &self,
        device: &bridge_protocol::DeviceId,
        owner: &bridge_queue::NodeId,
    ) -> Result<Vec<bridge_queue::Leased>, bridge_queue::StoreError> {
        self.check()?;
        self.inner.drain_pending(device, owner).await
    }
    async fn purge(&self, limit: usize) -> Result<u64, bridge_queue::StoreError> {
        self.check()?;
        self.inner.purge(limit).await
    }

    async fn open_counts(&self) -> Result<bridge_queue::OpenCounts, bridge_queue::StoreError> {
        self.check()?;
        self.inner.open_counts().await
    }
    async fn get(
        &self,
        id: &bridge_protocol::CommandId,
    ) -> Result<bridge_queue::QueuedCommand, bridge_queue::StoreError> {
        self.check()?;
        self.inner.get(id).await
    }
    async fn list_open(
        &self,
        device: &bridge_protocol::DeviceId,
    ) -> Result<Vec<bridge_queue::QueuedCommand>, bridge_queue::StoreError> {
        self.check()?;
        self.inner.list_open(device).await
    }
    async fn pending_count(
        &self,
        device: &bridge_protocol::DeviceId,
    ) -> Result<u32, bridge_queue::StoreError> {
        self.check()?;
        self.inner.pending_count(device).await
    }
    async fn due_devices(
        &self,
        limit: usize,
    ) -> Result<Vec<bridge_protocol::DeviceId>, bridge_queue::StoreError> {
        self.check()?;
        self.inner.due_devices(limit).await
    }
    async fn sweep(&self) -> Result<bridge_queue::SweepReport, bridge_queue::StoreError> {
        self.check()?;
        self.inner.sweep().await
    }
    async fn expire(
        &self,
        device: &bridge_protocol::DeviceId,
    ) -> Result<Vec<bridge_queue::QueuedCommand>, bridge_queue::StoreError> {
        self.expires
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.check()?;
        self.inner.expire(device).await
    }
    async fn ping(&self) -> Result<(), bridge_queue::StoreError> {
        self.check()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_backend_that_does_not_answer_is_503_unavailable_and_not_ready() {
    let store = Arc::new(FlakyStore::new());
    let server = TestServer::start_with(ServerConfig::default(), |b| b.store(store.clone())).await;
    assert_eq!(server.get("/readyz").await.0, 200);
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);

    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    // Commands that need no queue still work, and the process still serves.
    assert_eq!(
        server.command("lock-1", json!({"payload":"01"})).await,
        (503, json!({"status":"offline"}))
    );
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_and_readyz_do_not_echo_the_queue_backend_s_error_text() {
    let store = Arc::new(FlakyStore::new());
    let server = TestServer::start_with(ServerConfig::default(), |b| b.store(store.clone())).await;
    let (status, queued) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["commandId"].as_str().unwrap().to_owned();
    let mut alice = user(&server, "alice").await;
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);

    let generic =
        json!({"error":{"code":"unavailable","message":"the queue backend is unavailable"}});
    let queue = json!({"payload":"01","ifOffline":"queue","commandType":"lock"});
    let answers = [
        server.get_text("/readyz").await,
        server
            .post_raw("/v1/devices/lock-1/commands", queue.to_string())
            .await
            .pipe_text(),
        server.get_text("/v1/devices/lock-1").await,
        server.get_text("/v1/devices/lock-1/commands").await,
        server.get_text(&format!("/v1/commands/{id}")).await,
        server
            .post_raw(&format!("/v1/commands/{id}/cancel"), String::new())
            .await
            .pipe_text(),
    ];
    for (status, text) in answers {
        assert_eq!(status, 503, "{text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body, generic);
        assert!(
            !text.contains("db-internal") && !text.contains("bridge_admin"),
            "{text}"
        );
    }
    // The same refusal of a user's `command` frame.
    alice
        .send(
            json!({"type":"command","requestId":"c-1","deviceId":"lock-1","payload":"01",
                     "ifOffline":"queue","commandType":"lock"}),
        )
        .await;
    let error = alice.recv().await;
    assert_eq!(error["code"], "unavailable", "{error}");
    assert_eq!(
        error["message"], "the queue backend is unavailable",
        "{error}"
    );
}

/// A `(status, JSON body)` answer back as text, to search it.
trait PipeText {
    fn pipe_text(self) -> (u16, String);
}

impl PipeText for (u16, serde_json::Value) {
    fn pipe_text(self) -> (u16, String) {
        (self.0, self.1.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_closes_websockets_with_1001_and_lets_pending_http_commands_end() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let http = server.http.clone();
    let url = server.url("/v1/devices/lock-1/commands");
    let call = tokio::spawn(async move {
        let response = http
            .post(url)
            .body(json!({"payload":"01","timeoutMs":60000}).to_string())
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    bridge.next_write().await;
    let stop = tokio::spawn(server.stop());
    let close = bridge.ws.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    let (status, body) = call.await.unwrap();
    assert_eq!(
        (status, body),
        (503, json!({"status":"bridge_lost","stage":"sent"}))
    );
    stop.await.unwrap();
}

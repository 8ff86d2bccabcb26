//! Bridges over MQTT (PROTOCOL.md 6), against the local Mosquitto (`BRIDGE_TEST_MQTT_URL`,
//! default mqtt://127.0.0.1:1883). Each test uses its own topic prefix and client ids, so
//! they run in parallel on one broker. `cargo xtask ci` starts Mosquitto when it is stopped
//! and fails when it does not answer.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::process::service_url;
use crate::support::{Bridge, PATIENCE, SECRET, TestServer, eventually, token};
use bridge_server::ServerConfig;

fn broker_url() -> String {
    service_url("BRIDGE_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
}

fn broker_addr() -> (String, u16) {
    let url = broker_url();
    let rest = url.trim_start_matches("mqtt://").trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

/// A topic prefix of this test's own.
fn unique_prefix() -> String {
    format!("e2e-{:016x}", fastrand::u64(..))
}

/// A server (development mode unless `config` has a secret) serving bridges over MQTT under
/// `prefix`, its subscription acknowledged.
async fn start_server(
    config: ServerConfig,
    prefix: &str,
) -> (TestServer, bridge_server::MqttBridges) {
    let config = with_mqtt(config, prefix);
    let mut server = if config.jwt_secret.is_some() {
        let mut server = TestServer::start_with(config.clone(), |b| b).await;
        server.service_token = Some(token("backend", "service", None, 3600));
        server
    } else {
        TestServer::start_with(config.clone(), |b| b).await
    };
    let front = start_front(&mut server, &config).await;
    (server, front)
}

fn with_mqtt(mut config: ServerConfig, prefix: &str) -> ServerConfig {
    config.mqtt = Some(broker_url());
    prefix.clone_into(&mut config.mqtt_prefix);
    // The MQTT client id derives from the node id: this test's own.
    config.node_id = Some(prefix.to_owned());
    config
}

async fn start_front(server: &mut TestServer, config: &ServerConfig) -> bridge_server::MqttBridges {
    let mut mqtt = bridge_server::mqtt_config(config).unwrap();
    // Long enough for the restart tests; the broker forgets the test's session soon after.
    mqtt.session_expiry = Duration::from_mins(2);
    let front = bridge_server::serve_mqtt(server.server.as_ref().unwrap(), mqtt).unwrap();
    tokio::time::timeout(PATIENCE, front.subscribed())
        .await
        .expect("the server's MQTT subscription was not acknowledged: is Mosquitto running?");
    front
}

/// A bridge over MQTT, speaking raw frames.
struct MqttBridge {
    client: AsyncClient,
    up: String,
    frames: mpsc::UnboundedReceiver<Value>,
    task: JoinHandle<()>,
}

impl MqttBridge {
    /// Connects as client `{prefix}-{id}`, with the will `bye` on its `up` topic, and
    /// subscribes to its `down` topic.
    async fn connect(prefix: &str, id: &str) -> Self {
        let (host, port) = broker_addr();
        let up = format!("{prefix}/b/{id}/up");
        let down = format!("{prefix}/b/{id}/down");
        let mut options = MqttOptions::new(format!("{prefix}-{id}"), host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_start(true)
            .set_last_will(LastWill::new(
                up.clone(),
                r#"{"type":"bye"}"#,
                QoS::AtLeastOnce,
                false,
                None,
            ));
        let (client, mut events) = AsyncClient::new(options, 256);
        let (tx, frames) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let subscriber = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        subscriber
                            .subscribe(down.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let frame: Value = serde_json::from_slice(&publish.payload).unwrap();
                        let _ = tx.send(frame);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(PATIENCE, subscribed)
            .await
            .unwrap()
            .unwrap();
        Self {
            client,
            up,
            frames,
            task,
        }
    }

    async fn send(&self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    async fn send_text(&self, text: String) {
        self.client
            .publish(self.up.as_str(), QoS::AtLeastOnce, false, text)
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.frames.recv())
            .await
            .expect("no frame from the server in time")
            .unwrap()
    }

    /// The next frame of type `ty`, skipping others.
    async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == ty {
                return frame;
            }
        }
    }

    /// `hello` in development mode, answered `welcome`.
    async fn hello(&mut self, user: &str, devices: &[&str]) {
        self.send(json!({"type":"hello","userId":user,"deviceIds":devices}))
            .await;
        assert_eq!(self.recv().await, json!({"type":"welcome"}));
    }

    async fn status(&self, device: &str, connected: bool, rssi: i8) {
        self.send(json!({"type":"ble_status","deviceId":device,"connected":connected,"rssi":rssi}))
            .await;
    }

    /// A ping answered by a pong: every frame sent before it has been served.
    async fn sync(&mut self) {
        self.send(json!({"type":"ping"})).await;
        self.recv_type("pong").await;
    }

    /// Drops the network connection without DISCONNECT: the broker publishes the will.
    fn vanish(self) {
        self.task.abort();
    }
}

async fn metric(server: &TestServer, line_start: &str) -> Option<String> {
    let (_, text) = server.get_text("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_round_trips_through_a_bridge_over_mqtt() {
    let prefix = unique_prefix();
    let (server, front) = start_server(ServerConfig::default(), &prefix).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    assert_eq!(front.sessions(), 1);

    let command = tokio::spawn({
        let url = server.url("/v1/devices/lock-1/commands");
        let http = server.http.clone();
        async move {
            let response = http
                .post(url)
                .json(&json!({"payload":"02"}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    let write = bridge.recv_type("ble_write").await;
    assert_eq!(write["deviceId"], "lock-1");
    assert_eq!(write["payload"], "02");
    bridge
        .send(json!({"type":"ble_response","requestId":write["requestId"],"deviceId":"lock-1","payload":"8200"}))
        .await;
    let (status, body) = command.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["payload"], "8200");
    assert_eq!(body["requestId"], write["requestId"]);

    // Counted with the WebSocket bridges.
    assert_eq!(
        metric(&server, "bridge_connections{role=\"bridge\"}").await,
        Some("bridge_connections{role=\"bridge\"} 1".into())
    );
    // An answer to nothing is refused as over WebSocket, with its requestId.
    bridge
        .send(json!({"type":"ble_response","requestId":"nope","deviceId":"lock-1","payload":"00"}))
        .await;
    let error = bridge.recv_type("error").await;
    assert_eq!(error["code"], "unknown_request");
    assert_eq!(error["requestId"], "nope");
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_held_over_both_transports_is_routed_by_link_then_rssi() {
    let prefix = unique_prefix();
    let (server, front) = start_server(ServerConfig::default(), &prefix).await;
    let mut over_mqtt = MqttBridge::connect(&prefix, "phone-m").await;
    over_mqtt.hello("owner-1", &["lock-1"]).await;
    let mut over_ws = Bridge::connect(&server, "owner-2", &["lock-1"]).await;
    server.wait_online("lock-1", 2).await;

    // The WebSocket holder's link is up, the MQTT holder's is down: the WebSocket one.
    over_ws.status("lock-1", true, Some(-80)).await;
    over_ws.sync().await;
    over_mqtt.status("lock-1", false, -40).await;
    over_mqtt.sync().await;
    let first = tokio::spawn({
        let url = server.url("/v1/devices/lock-1/commands");
        let http = server.http.clone();
        async move {
            http.post(url)
                .json(&json!({"payload":"01"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let write = over_ws.next_write().await;
    over_ws.answer(&write, "8101").await;
    assert_eq!(first.await.unwrap(), 200);

    // Both links up: the stronger rssi, the MQTT one.
    over_mqtt.status("lock-1", true, -40).await;
    over_mqtt.sync().await;
    let second = tokio::spawn({
        let url = server.url("/v1/devices/lock-1/commands");
        let http = server.http.clone();
        async move {
            http.post(url)
                .json(&json!({"payload":"02"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let write = over_mqtt.recv_type("ble_write").await;
    assert_eq!(write["payload"], "02");
    over_mqtt
        .send(json!({"type":"ble_response","requestId":write["requestId"],"deviceId":"lock-1","payload":"8200"}))
        .await;
    assert_eq!(second.await.unwrap(), 200);
    front.stop().await;
    server.stop().await;
}

/// Sends a command in the background; answers its status and body.
fn command(server: &TestServer, device: &str, body: &Value) -> JoinHandle<(u16, Value)> {
    let url = server.url(&format!("/v1/devices/{device}/commands"));
    let request = server.http.post(url).json(body);
    let request = match &server.service_token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_message_ends_the_session_and_its_pending_commands_fail_bridge_lost() {
    let prefix = unique_prefix();
    let (server, front) = start_server(ServerConfig::default(), &prefix).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let pending = command(
        &server,
        "lock-1",
        &json!({"payload":"02","timeoutMs":60000}),
    );
    bridge.recv_type("ble_write").await;
    bridge.vanish();
    let (status, body) = tokio::time::timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "bridge_lost");
    server.wait_online("lock-1", 0).await;
    eventually(|| async { (front.sessions() == 0).then_some(()) }).await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_and_a_replacing_hello_end_a_session_as_a_websocket_close_does() {
    let prefix = unique_prefix();
    let (server, front) = start_server(ServerConfig::default(), &prefix).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;

    // A second hello for the same bridge id replaces the session: the command pending
    // through the first one fails at once.
    let pending = command(
        &server,
        "lock-1",
        &json!({"payload":"02","timeoutMs":60000}),
    );
    bridge.recv_type("ble_write").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    let (status, body) = tokio::time::timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "bridge_lost");
    server.wait_online("lock-1", 1).await;
    assert_eq!(front.sessions(), 1);

    // `bye` ends it.
    let pending = command(
        &server,
        "lock-1",
        &json!({"payload":"03","timeoutMs":60000}),
    );
    bridge.recv_type("ble_write").await;
    bridge.send(json!({"type":"bye"})).await;
    let (status, body) = tokio::time::timeout(PATIENCE, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "bridge_lost");
    server.wait_online("lock-1", 0).await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_tokens_are_checked_as_a_websocket_upgrade_checks_them() {
    let prefix = unique_prefix();
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    let (server, front) = start_server(config, &prefix).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;

    let refusals = [
        (
            json!({"type":"hello","deviceIds":["lock-1"]}),
            "unauthorized",
        ),
        (json!({"type":"hello","token":"not-a-jwt"}), "unauthorized"),
        (
            json!({"type":"hello","token":token("p", "bridge", Some(&["lock-1"]), -120)}),
            "unauthorized",
        ),
        (
            json!({"type":"hello","userId":"owner-1","deviceIds":["lock-1"]}),
            "unauthorized",
        ),
        (
            json!({"type":"hello","token":token("p", "bridge", Some(&["lock-1"]), 600),"deviceIds":["lock-2"]}),
            "forbidden",
        ),
        (
            json!({"type":"hello","token":token("u", "user", Some(&["lock-1"]), 600)}),
            "forbidden",
        ),
        (
            json!({"type":"hello","token":token("s", "service", None, 600)}),
            "forbidden",
        ),
    ];
    for (hello, code) in refusals {
        bridge.send(hello.clone()).await;
        let answer = bridge.recv().await;
        assert_eq!(answer["type"], "error", "{hello}: {answer}");
        assert_eq!(answer["code"], code, "{hello}: {answer}");
    }
    assert_eq!(front.sessions(), 0);

    let good = token("phone-owner", "bridge", Some(&["lock-1", "lock-2"]), 600);
    bridge
        .send(json!({"type":"hello","token":good,"deviceIds":["lock-1"]}))
        .await;
    assert_eq!(bridge.recv().await, json!({"type":"welcome"}));
    server.wait_online("lock-1", 1).await;
    // The token decides what the session may claim.
    bridge.status("lock-2", true, -50).await;
    bridge.status("lock-3", true, -50).await;
    let refused = bridge.recv_type("error").await;
    assert_eq!(refused["code"], "forbidden");
    server.wait_online("lock-2", 1).await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_a_bridge_id_without_a_session_are_answered_unauthorized() {
    let prefix = unique_prefix();
    let (server, front) = start_server(ServerConfig::default(), &prefix).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;
    bridge
        .send(json!({"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"00"}))
        .await;
    let error = bridge.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["requestId"], "r-1");
    bridge.status("lock-1", true, -50).await;
    let error = bridge.recv().await;
    assert_eq!(error["code"], "unauthorized");
    assert!(error.get("requestId").is_none());
    // Nothing was claimed, and a `bye` without a session is ignored.
    bridge.send(json!({"type":"bye"})).await;
    let (_, view) = server.get("/v1/devices/lock-1").await;
    assert_eq!(view["online"], false);
    // Then `hello`, and the same frames are served.
    bridge.hello("owner-1", &[]).await;
    bridge.status("lock-1", true, -50).await;
    server.wait_online("lock-1", 1).await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_published_while_the_server_restarts_reach_it_and_the_bridge_says_hello_again() {
    let prefix = unique_prefix();
    let config = with_mqtt(ServerConfig::default(), &prefix);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = TestServer::start_on(listener, config.clone(), |b| b);
    let front = start_front(&mut server, &config).await;
    let mut bridge = MqttBridge::connect(&prefix, "phone-1").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;

    // The server goes: its session ends, and the bridge is told.
    server.stop().await;
    front.stop().await;
    let notice = bridge.recv_type("error").await;
    assert_eq!(notice["code"], "unauthorized", "{notice}");
    // Published while no server runs: kept by the broker for the server's session.
    for i in 0..5 {
        bridge
            .send(json!({"type":"ble_response","requestId":format!("while-down-{i}"),"deviceId":"lock-1","payload":"00"}))
            .await;
    }
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut server = TestServer::start_on(listener, config.clone(), |b| b);
    let front = start_front(&mut server, &config).await;
    // Every one of them arrives, for a bridge id with no session: answered unauthorized.
    for i in 0..5 {
        let error = bridge.recv_type("error").await;
        assert_eq!(error["code"], "unauthorized");
        assert_eq!(error["requestId"], format!("while-down-{i}"));
    }
    // The bridge says hello again, and is served.
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let pending = command(&server, "lock-1", &json!({"payload":"02"}));
    let write = bridge.recv_type("ble_write").await;
    bridge
        .send(json!({"type":"ble_response","requestId":write["requestId"],"deviceId":"lock-1","payload":"8200"}))
        .await;
    assert_eq!(pending.await.unwrap().0, 200);
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sessions_have_the_websocket_limits() {
    let prefix = unique_prefix();
    let mut config = ServerConfig::default();
    config.max_frame_bytes = 2048;
    config.rate_per_second = 1;
    config.rate_burst = 5;
    let (server, front) = start_server(config, &prefix).await;

    // A frame over the size limit ends the session, as 1009 closes a WebSocket.
    let mut bridge = MqttBridge::connect(&prefix, "big").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let big = format!(
        r#"{{"type":"ble_status","deviceId":"lock-1","connected":true,"pad":"{}"}}"#,
        "x".repeat(4096)
    );
    bridge.send_text(big).await;
    let notice = bridge.recv_type("error").await;
    assert_eq!(notice["code"], "unauthorized");
    assert!(
        notice["message"].as_str().unwrap().contains("1009"),
        "{notice}"
    );
    server.wait_online("lock-1", 0).await;

    // Frames beyond the rate are refused `rate_limited`, and a bridge that keeps on is cut
    // off as 1008 closes a WebSocket.
    let mut flood = MqttBridge::connect(&prefix, "flood").await;
    flood.hello("owner-2", &["lock-2"]).await;
    server.wait_online("lock-2", 1).await;
    for _ in 0..20 {
        flood.send(json!({"type":"ping"})).await;
    }
    let refused = flood.recv_type("error").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    for _ in 0..200 {
        flood.send(json!({"type":"ping"})).await;
    }
    let notice = loop {
        let frame = flood.recv_type("error").await;
        if frame["code"] == "unauthorized" {
            break frame;
        }
        assert_eq!(frame["code"], "rate_limited", "{frame}");
    };
    assert!(
        notice["message"].as_str().unwrap().contains("1008"),
        "{notice}"
    );
    server.wait_online("lock-2", 0).await;
    // Once the bridge has been told, its session is forgotten: frames are answered
    // `unauthorized` again (one sent before the session's writer let go of it is dropped, as
    // a WebSocket's in flight after its close; so ask until one is answered).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let answer = loop {
        flood.send(json!({"type":"ping"})).await;
        match tokio::time::timeout(Duration::from_millis(100), flood.frames.recv()).await {
            Ok(Some(frame)) if frame["type"] == "error" && frame["code"] != "rate_limited" => {
                break frame;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the bridge's connection to the broker ended"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "frames after the notice are never answered"
            ),
        }
    };
    assert_eq!(answer["code"], "unauthorized", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("send `hello` first"),
        "{answer}"
    );
    front.stop().await;
    server.stop().await;
}

fn phone_over_mqtt(
    prefix: &str,
    bridge_id: &str,
    credentials: bridge_client::Credentials,
    lock: &str,
) -> bridge_client::BridgeClient {
    use bridge_client::lock::{LockBehaviour, SimulatedLocks};
    let lock = crate::support::device(lock);
    let locks = std::sync::Arc::new(SimulatedLocks::new(
        [lock.clone()],
        LockBehaviour::default(),
    ));
    let config = bridge_client::BridgeConfig::over_mqtt(
        broker_url(),
        bridge_protocol::BridgeId::new(bridge_id).unwrap(),
        credentials,
        vec![lock],
    )
    .with_mqtt_prefix(prefix);
    bridge_client::BridgeClient::start(config, locks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_client_over_mqtt_serves_its_ble_handler_and_says_hello_again_after_a_restart() {
    let prefix = unique_prefix();
    let config = with_mqtt(ServerConfig::default(), &prefix);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = TestServer::start_on(listener, config.clone(), |b| b);
    let front = start_front(&mut server, &config).await;
    let phone = phone_over_mqtt(
        &prefix,
        "phone-1",
        bridge_client::Credentials::Development {
            user_id: "owner-1".into(),
        },
        "lock-1",
    );
    tokio::time::timeout(PATIENCE, phone.wait_connected(1))
        .await
        .unwrap()
        .unwrap();
    phone
        .report_status(crate::support::device("lock-1"), true, Some(-60))
        .unwrap();
    server
        .wait_device("lock-1", |v| v["bleConnected"] == true)
        .await;
    // 02 is unlock: the simulated lock answers 82 00.
    let (status, body) = server.command("lock-1", json!({"payload":"02"})).await;
    assert_eq!((status, &body["payload"]), (200, &json!("8200")), "{body}");

    // The server restarts; the phone is told its session is gone and says hello again,
    // re-announcing its link.
    server.stop().await;
    front.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut server = TestServer::start_on(listener, config.clone(), |b| b);
    let front = start_front(&mut server, &config).await;
    tokio::time::timeout(PATIENCE, phone.wait_connected(2))
        .await
        .unwrap()
        .unwrap();
    server
        .wait_device("lock-1", |v| v["bleConnected"] == true)
        .await;
    // 03 is status: 83, unlocked (00), battery 100.
    let (status, body) = server.command("lock-1", json!({"payload":"03"})).await;
    assert_eq!(
        (status, &body["payload"]),
        (200, &json!("830064")),
        "{body}"
    );
    phone.shutdown().await;
    server.wait_online("lock-1", 0).await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_client_over_mqtt_authenticates_with_its_token() {
    let prefix = unique_prefix();
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    let (server, front) = start_server(config, &prefix).await;
    // A token for other devices: its hello is refused, so it never connects.
    let refused = phone_over_mqtt(
        &prefix,
        "phone-x",
        bridge_client::Credentials::Token(token("mallory", "bridge", Some(&["lock-9"]), 600)),
        "lock-1",
    );
    let phone = phone_over_mqtt(
        &prefix,
        "phone-1",
        bridge_client::Credentials::Token(token("owner", "bridge", Some(&["lock-1"]), 600)),
        "lock-1",
    );
    tokio::time::timeout(PATIENCE, phone.wait_connected(1))
        .await
        .unwrap()
        .unwrap();
    server.wait_online("lock-1", 1).await;
    assert_eq!(refused.state(), bridge_client::ConnectionState::Connecting);
    phone.shutdown().await;
    refused.shutdown().await;
    front.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_mqtt_together_with_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_bridge-server"))
        .args(["--queue", "redis://127.0.0.1:6379"])
        .args(["--cluster", "nats://127.0.0.1:4222"])
        .args(["--mqtt", &broker_url()])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--mqtt cannot be used with --cluster"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_bridges_over_mqtt_with_the_mqtt_flag() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let server = crate::process::Process::start(
        dir.path(),
        &[
            "--mqtt",
            &broker_url(),
            "--mqtt-prefix",
            &prefix,
            "--node-id",
            &prefix,
        ],
    )
    .await;
    let phone = phone_over_mqtt(
        &prefix,
        "phone-1",
        bridge_client::Credentials::Development {
            user_id: "owner-1".into(),
        },
        "lock-1",
    );
    // The server subscribes in the background: until then a hello goes unanswered, and the
    // client says it again.
    tokio::time::timeout(Duration::from_mins(1), phone.wait_connected(1))
        .await
        .unwrap()
        .unwrap();
    server.client.wait_online("lock-1", 1).await;
    let (status, body) = server
        .client
        .command("lock-1", json!({"payload":"02"}))
        .await;
    assert_eq!((status, &body["payload"]), (200, &json!("8200")), "{body}");
    phone.shutdown().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_sends_nothing_within_the_pong_timeout_ends_and_its_bridge_is_told() {
    let prefix = unique_prefix();
    let config = with_mqtt(ServerConfig::default(), &prefix);
    // The hub's keepalive, shortened: over MQTT, silence is what ends a session.
    let mut hub = bridge_hub::HubConfig::default();
    hub.ping_interval = Duration::from_millis(100);
    hub.pong_timeout = Duration::from_millis(500);
    let mut server = TestServer::start_with(config.clone(), |b| b.hub_config(hub)).await;
    let front = start_front(&mut server, &config).await;
    let mut bridge = MqttBridge::connect(&prefix, "quiet").await;
    bridge.hello("owner-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    // The hub's pings are not sent over MQTT: the next frame is the end of the session.
    let notice = bridge.recv().await;
    assert_eq!(notice["type"], "error", "{notice}");
    assert_eq!(notice["code"], "unauthorized");
    assert!(
        notice["message"].as_str().unwrap().contains("keepalive"),
        "{notice}"
    );
    server.wait_online("lock-1", 0).await;
    front.stop().await;
    server.stop().await;
}

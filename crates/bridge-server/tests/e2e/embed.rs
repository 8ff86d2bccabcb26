//! Embedding: the server on a hub of the application's own, and the router nested under a
//! prefix in a larger axum app with its own routes and layers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::HeaderValue;
use axum::routing::get;
use bridge_hub::{DevicePresence, Frame, Hub, HubError, InFlight, LocalHub};
use bridge_protocol::DeviceId;
use bridge_server::{Server, ServerConfig};
use serde_json::json;

use crate::support::{Bridge, TestServer, Ws, subscribe, user};

/// A hub of the application's own: devices it knows to be held elsewhere are reported
/// online, every broadcast is also published (here: recorded) for other processes, and
/// every routed command is counted. The sockets of this process stay with `LocalHub`.
struct FederatedHub {
    local: LocalHub,
    elsewhere: HashSet<DeviceId>,
    published: Arc<Mutex<Vec<(String, String)>>>,
    routed: Arc<AtomicUsize>,
}

#[async_trait]
impl Hub for FederatedHub {
    fn local(&self) -> &LocalHub {
        &self.local
    }

    async fn send_to_device(&self, device: &DeviceId, frame: &Frame) -> Result<InFlight, HubError> {
        self.routed.fetch_add(1, Ordering::SeqCst);
        self.local.send_to_device(device, frame)
    }

    async fn broadcast(&self, device: &DeviceId, frame: &Frame) -> usize {
        self.published
            .lock()
            .unwrap()
            .push((device.to_string(), frame.as_str().to_owned()));
        self.local.broadcast(device, frame)
    }

    async fn device_presence(&self, device: &DeviceId) -> DevicePresence {
        let mut presence = self.local.device_presence(device);
        if self.elsewhere.contains(device) {
            presence.online = true;
            presence.bridges += 1;
        }
        presence
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_on_a_user_defined_hub() {
    let published = Arc::new(Mutex::new(Vec::new()));
    let routed = Arc::new(AtomicUsize::new(0));
    let (p, r) = (Arc::clone(&published), Arc::clone(&routed));
    let server = TestServer::start_with(ServerConfig::default(), move |b| {
        b.wrap_hub(move |local| {
            Arc::new(FederatedHub {
                local,
                elsewhere: HashSet::from([DeviceId::new("far-1").unwrap()]),
                published: p,
                routed: r,
            })
        })
    })
    .await;

    // Presence comes from the application's hub.
    let (status, body) = server.get("/v1/devices/far-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&body["online"], &body["bridges"]),
        (&json!(true), &json!(1))
    );

    // Broadcasts go through it: published, and delivered to this process's subscriber.
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let (status, body) = server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"state_changed","data":{"locked":false}}),
        )
        .await;
    assert_eq!((status, body), (202, json!({"delivered":1})));
    let event = alice.recv_type("state_changed").await;
    assert_eq!(event["data"], json!({"locked":false}));
    assert_eq!(
        published.lock().unwrap().as_slice(),
        [(
            "lock-1".to_owned(),
            r#"{"type":"state_changed","deviceId":"lock-1","data":{"locked":false}}"#.to_owned()
        )]
    );

    // Commands are routed through it to this process's bridge.
    let mut bridge = Bridge::connect(&server, "phone-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let command = server.command("lock-1", json!({"payload":"01"}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "02").await;
    };
    let ((status, body), ()) = tokio::join!(command, answer);
    assert_eq!((status, &body["payload"]), (200, &json!("02")));
    assert_eq!(routed.load(Ordering::SeqCst), 1);

    // `Server::hub` is the application's hub.
    let counts = server.server.as_ref().unwrap().hub().counts().await;
    assert_eq!(counts.bridge_connections, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_nested_under_a_prefix_serves_http_and_websockets_beside_the_apps_routes() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", get(|| async { "the application" }))
        .route("/bridge-status", get(|| async { "mine" }))
        .nest("/bridge", server.router())
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response
                    .headers_mut()
                    .insert("x-app", HeaderValue::from_static("yes"));
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    server.check_listener(addr).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();

    // The application's own routes, and its layer on everything.
    let response = get("/").await.unwrap();
    assert_eq!(response.headers()["x-app"], "yes");
    assert_eq!(response.text().await.unwrap(), "the application");
    assert_eq!(
        get("/bridge-status").await.unwrap().text().await.unwrap(),
        "mine"
    );

    // The server's routes under the prefix.
    let response = get("/bridge/healthz").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-app"], "yes");
    let response = get("/bridge/v1/devices/nope/nope").await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // WebSockets under the prefix: a bridge and a user, and a command between them.
    let bridge_ws = Ws::connect(&format!(
        "ws://{addr}/bridge/ws?userId=phone-1&deviceId=lock-1"
    ))
    .await;
    let mut bridge = Bridge { ws: bridge_ws };
    let mut alice = Ws::connect(&format!("ws://{addr}/bridge/ws?userId=alice")).await;
    let status = subscribe(&mut alice, "lock-1").await;
    assert_eq!(status["online"], true);
    let command = async {
        let response = http
            .post(format!("http://{addr}/bridge/v1/devices/lock-1/commands"))
            .json(&json!({"payload":"01"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-app"], "yes");
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "01").await;
    };
    let ((status, body), ()) = tokio::join!(command, answer);
    assert_eq!((status, &body["status"]), (200, &json!("succeeded")));
    alice
        .send(json!({"type":"command","requestId":"c-1","deviceId":"lock-1","payload":"02"}))
        .await;
    let write = bridge.next_write().await;
    bridge.answer(&write, "02").await;
    let result = alice.recv_type("command_result").await;
    assert_eq!(
        (&result["requestId"], &result["payload"]),
        (&json!("c-1"), &json!("02"))
    );

    // The application shuts the server down with its own shutdown.
    server.shutdown().await;
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

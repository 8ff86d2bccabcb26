//! Deadlines inside one process, on tokio's paused clock: the server's router called in
//! memory, bridges over in-memory WebSocket streams served by the server's hub. Minutes of
//! protocol time pass in milliseconds, and the times asserted are exact, not speeds.

use std::time::Duration;

use axum::body::Body;
use bridge_hub::{ConnectionInfo, DeviceAccess, UserId};
use bridge_server::{Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower::ServiceExt;

use crate::support::device;

async fn call(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = server.router().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A bridge over an in-memory WebSocket: every `ble_write` it gets arrives on the receiver;
/// what is sent on the sender goes to the server. It keeps reading (and so answers the
/// hub's keepalive pings) until the server closes it.
async fn bridge(
    server: &Server,
    holds: &str,
) -> (mpsc::UnboundedReceiver<Value>, mpsc::UnboundedSender<Value>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let local = server.hub().local().clone();
    let info = ConnectionInfo::bridge(UserId::new("phone"), vec![device(holds)], DeviceAccess::All);
    tokio::spawn(async move {
        let socket = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        local.serve(socket, info).await;
    });
    let socket: WebSocketStream<DuplexStream> =
        WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let (mut sink, mut stream) = socket.split();
    let (writes_tx, writes) = mpsc::unbounded_channel();
    let (answers, mut answers_rx) = mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).unwrap();
                        if frame["type"] == "ble_write" {
                            let _ = writes_tx.send(frame);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                Some(answer) = answers_rx.recv() => {
                    if sink.send(Message::Text(answer.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
            // Pongs for the hub's pings are queued by the read; flush them out.
            let _ = sink.flush().await;
        }
    });
    (writes, answers)
}

async fn wait_online(server: &Server, device: &str) {
    loop {
        let (_, view) = call(server, "GET", &format!("/v1/devices/{device}"), None).await;
        if view["online"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn answer(write: &Value, payload: &str) -> Value {
    json!({"type":"ble_response","requestId":write["requestId"],"deviceId":write["deviceId"],"payload":payload})
}

#[tokio::test(start_paused = true)]
async fn a_command_with_no_answer_ends_504_exactly_at_its_timeout() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let (mut writes, _answers) = bridge(&server, "lock-1").await;
    wait_online(&server, "lock-1").await;
    let start = Instant::now();
    let (status, body) = call(
        &server,
        "POST",
        "/v1/devices/lock-1/commands",
        Some(json!({"payload":"01","timeoutMs":120_000})),
    )
    .await;
    assert_eq!(
        (status, body),
        (504, json!({"status":"timeout","stage":"sent"}))
    );
    let waited = start.elapsed();
    assert!(waited >= Duration::from_mins(2), "{waited:?}");
    assert!(waited < Duration::from_secs(121), "{waited:?}");
    let write = writes.recv().await.unwrap();
    assert_eq!(write["timeoutMs"], 120_000);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_delivery_goes_again_at_the_next_retry_tick_of_30_seconds() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let (status, body) = call(
        &server,
        "POST",
        "/v1/devices/lock-1/commands",
        Some(json!({"payload":"01","ifOffline":"queue","commandType":"unlock"})),
    )
    .await;
    assert_eq!(status, 202);
    let id = body["commandId"].as_str().unwrap().to_owned();
    let start = Instant::now();

    let (mut writes, answers) = bridge(&server, "lock-1").await;
    let first = writes.recv().await.unwrap();
    assert_eq!(first["timeoutMs"], 10_000, "the default timeout");
    // Not answered: after its 10 s timeout the command is pending again, and the retry
    // tick (every 30 s from the server's start) hands it out again.
    let second = writes.recv().await.unwrap();
    let waited = start.elapsed();
    assert_ne!(first["requestId"], second["requestId"]);
    assert!(waited >= Duration::from_secs(30), "{waited:?}");
    assert!(waited < Duration::from_secs(31), "{waited:?}");
    let (_, view) = call(&server, "GET", &format!("/v1/commands/{id}"), None).await;
    assert_eq!(view["status"], "delivering");
    assert_eq!(view["attempts"], 2);

    answers.send(answer(&second, "81")).unwrap();
    loop {
        let (_, view) = call(&server, "GET", &format!("/v1/commands/{id}"), None).await;
        if view["status"] == "succeeded" {
            assert_eq!(view["attempts"], 2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_bridge_repeating_connected_true_starts_one_delivery_pass_not_one_per_frame() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let store = Arc::new(crate::http::FlakyStore::new());
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .store(Arc::clone(&store) as Arc<dyn bridge_queue::Store>)
        .build()
        .unwrap();
    let (status, body) = call(
        &server,
        "POST",
        "/v1/devices/lock-1/commands",
        Some(json!({"payload":"01","ifOffline":"queue","commandType":"unlock","timeoutMs":1000})),
    )
    .await;
    assert_eq!(status, 202);
    let id = body["commandId"].as_str().unwrap().to_owned();
    let command = |server: &Server| {
        let server = server.clone();
        let id = id.clone();
        async move {
            call(&server, "GET", &format!("/v1/commands/{id}"), None)
                .await
                .1
        }
    };

    // The first delivery is cut off by its timeout: the command waits, pending.
    let (mut writes, answers) = bridge(&server, "lock-1").await;
    let _first = writes.recv().await.unwrap();
    while command(&server).await["status"] != "pending" {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // The link comes up: one pass delivers it again.
    let status = json!({"type":"ble_status","deviceId":"lock-1","connected":true,"rssi":-60});
    answers.send(status.clone()).unwrap();
    let second = writes.recv().await.unwrap();
    answers.send(answer(&second, "81")).unwrap();
    while command(&server).await["status"] != "succeeded" {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let passes = store.expires.load(Ordering::SeqCst);

    // The bridge repeats itself 99 more times: no news, no pass (well before the 30 s tick;
    // nothing reads the command meanwhile, so every `expire` would be a pass).
    for _ in 0..99 {
        answers.send(status.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.expires.load(Ordering::SeqCst),
        passes,
        "a repeated connected:true started delivery passes"
    );
    assert!(writes.try_recv().is_err(), "no further ble_write");
    let view = command(&server).await;
    assert_eq!(
        (view["status"].clone(), view["attempts"].clone()),
        (json!("succeeded"), json!(2))
    );
}

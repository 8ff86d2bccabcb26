//! Per-hop status (PROTOCOL.md 3.2 `ble_progress`, 4.1 `stage`/`progress`) and the live
//! stream `GET /v1/stream` (4.5), on tokio's paused clock: the router called in memory,
//! bridges over in-memory WebSocket streams served by the server's hub.

use std::time::Duration;

use axum::body::Body;
use bridge_hub::{ConnectionInfo, DeviceAccess, UserId};
use bridge_server::{Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
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
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A bridge over an in-memory WebSocket holding `holds`: every frame the server sends it
/// arrives on the receiver; what is sent on the sender goes to the server.
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
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let (answers, mut answers_rx) = mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let _ = frames_tx.send(serde_json::from_str::<Value>(&text).unwrap());
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
            let _ = sink.flush().await;
        }
    });
    (frames, answers)
}

async fn next_write(frames: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    loop {
        let frame = frames.recv().await.unwrap();
        if frame["type"] == "ble_write" {
            return frame;
        }
    }
}

async fn next_error(frames: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    loop {
        let frame = frames.recv().await.unwrap();
        if frame["type"] == "error" {
            return frame;
        }
    }
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

fn progress(write: &Value, stage: &str) -> Value {
    json!({"type":"ble_progress","requestId":write["requestId"],"deviceId":write["deviceId"],"stage":stage})
}

fn answer(write: &Value, payload: &str) -> Value {
    json!({"type":"ble_response","requestId":write["requestId"],"deviceId":write["deviceId"],"payload":payload})
}

/// Sends a command in the background; its `(status, body)` arrives on the handle.
fn command(server: &Server, device: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let server = server.clone();
    let path = format!("/v1/devices/{device}/commands");
    tokio::spawn(async move { call(&server, "POST", &path, Some(body)).await })
}

#[tokio::test(start_paused = true)]
async fn a_timeout_says_the_lock_took_the_write_and_never_answered() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let (mut frames, bridge_tx) = bridge(&server, "lock-1").await;
    wait_online(&server, "lock-1").await;
    let pending = command(&server, "lock-1", json!({"payload":"01","timeoutMs":5000}));
    let write = next_write(&mut frames).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    bridge_tx.send(progress(&write, "received")).unwrap();
    tokio::time::sleep(Duration::from_millis(38)).await;
    bridge_tx.send(progress(&write, "written")).unwrap();
    // Out of order and repeated: ignored, no error frame.
    bridge_tx.send(progress(&write, "connected")).unwrap();
    bridge_tx.send(progress(&write, "written")).unwrap();
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 504);
    assert_eq!(
        body,
        json!({"status":"timeout","stage":"written","progress":{"receivedMs":3,"writtenMs":41}})
    );
    assert!(frames.try_recv().is_err(), "ignored stages are not errors");

    let request = axum::http::Request::get("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = server.router().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let metrics = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        metrics.contains("bridge_command_stage_seconds_count{stage=\"written\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bridge_command_stage_seconds_count{stage=\"received\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_answer_of_a_sent_command_carries_its_stage() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let (mut frames, bridge_tx) = bridge(&server, "lock-1").await;
    wait_online(&server, "lock-1").await;

    // 200, with no progress at all: `sent`, and no `progress` field.
    let pending = command(&server, "lock-1", json!({"payload":"01"}));
    let write = next_write(&mut frames).await;
    bridge_tx.send(answer(&write, "02")).unwrap();
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["stage"], "sent");
    assert!(body.get("progress").is_none(), "{body}");

    // 502 after `connected`.
    let pending = command(&server, "lock-1", json!({"payload":"01"}));
    let write = next_write(&mut frames).await;
    bridge_tx.send(progress(&write, "connected")).unwrap();
    tokio::time::sleep(Duration::from_millis(7)).await;
    bridge_tx
        .send(json!({"type":"ble_response","requestId":write["requestId"],"deviceId":"lock-1","error":"gatt_write_failed"}))
        .unwrap();
    let (status, body) = pending.await.unwrap();
    assert_eq!(
        (status, body),
        (
            502,
            json!({"status":"device_error","error":"gatt_write_failed","stage":"connected","progress":{"connectedMs":0}})
        )
    );

    // 503 bridge_lost after `received`: the bridge releases the device.
    let pending = command(&server, "lock-1", json!({"payload":"01"}));
    let write = next_write(&mut frames).await;
    bridge_tx.send(progress(&write, "received")).unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    bridge_tx
        .send(json!({"type":"release","deviceId":"lock-1"}))
        .unwrap();
    let (status, body) = pending.await.unwrap();
    assert_eq!(
        (status, body),
        (
            503,
            json!({"status":"bridge_lost","stage":"received","progress":{"receivedMs":0}})
        )
    );
}

#[tokio::test(start_paused = true)]
async fn progress_is_checked_like_an_answer() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let (mut frames, bridge_tx) = bridge(&server, "lock-1").await;
    let (_other_frames, other_tx) = bridge(&server, "lock-2").await;
    wait_online(&server, "lock-1").await;
    wait_online(&server, "lock-2").await;

    // Unknown request.
    bridge_tx
        .send(json!({"type":"ble_progress","requestId":"nope","deviceId":"lock-1","stage":"received"}))
        .unwrap();
    let error = next_error(&mut frames).await;
    assert_eq!(
        (error["code"].clone(), error["requestId"].clone()),
        (json!("unknown_request"), json!("nope"))
    );
    // Bad stage.
    bridge_tx
        .send(json!({"type":"ble_progress","requestId":"nope","deviceId":"lock-1","stage":"sent"}))
        .unwrap();
    assert_eq!(next_error(&mut frames).await["code"], "invalid_message");

    let pending = command(&server, "lock-1", json!({"payload":"01","timeoutMs":1000}));
    let write = next_write(&mut frames).await;
    // Wrong device (on the right connection), then the wrong connection.
    bridge_tx
        .send(json!({"type":"ble_progress","requestId":write["requestId"],"deviceId":"lock-2","stage":"received"}))
        .unwrap();
    let error = next_error(&mut frames).await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["requestId"], write["requestId"]);
    other_tx.send(progress(&write, "written")).unwrap();
    // Let the other bridge's frame be handled before the command ends.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(
        (status, body),
        (504, json!({"status":"timeout","stage":"sent"}))
    );
}

// ---- GET /v1/stream ----

/// An open `GET /v1/stream`: its body as a stream of chunks.
struct Reader {
    body: axum::body::BodyDataStream,
    buffer: String,
}

impl Reader {
    async fn open(server: &Server, query: &str) -> Self {
        let request = axum::http::Request::get(format!("/v1/stream{query}"))
            .body(Body::empty())
            .unwrap();
        let response = server.router().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{:?}",
            response.headers()
        );
        Self {
            body: response.into_body().into_data_stream(),
            buffer: String::new(),
        }
    }

    /// The next block (up to a blank line), or `None` when the stream ended.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return Some(block);
            }
            let chunk = self.body.next().await?.unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event (skipping comments): its name and data. Fails the test when none
    /// comes within a minute of virtual time.
    async fn event(&mut self) -> Option<(String, Value)> {
        tokio::time::timeout(Duration::from_mins(1), self.next_event())
            .await
            .expect("an event within a minute")
    }

    async fn next_event(&mut self) -> Option<(String, Value)> {
        loop {
            let block = self.block().await?;
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    name = Some(rest.to_owned());
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(rest).unwrap());
                }
            }
            if let (Some(name), Some(data)) = (name, data) {
                return Some((name, data));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_stream_carries_presence_events_and_every_ended_command() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let mut all = Reader::open(&server, "").await;
    let mut only_lock_2 = Reader::open(&server, "?deviceId=lock-2").await;

    let (mut frames, bridge_tx) = bridge(&server, "lock-1").await;
    let (name, data) = all.event().await.unwrap();
    assert_eq!(name, "device_status");
    assert_eq!(
        data,
        json!({"type":"device_status","deviceId":"lock-1","online":true,"bleConnected":null})
    );
    bridge_tx
        .send(json!({"type":"ble_status","deviceId":"lock-1","connected":true}))
        .unwrap();
    assert_eq!(
        all.event().await.unwrap().1,
        json!({"type":"device_status","deviceId":"lock-1","online":true,"bleConnected":true})
    );

    // An application event.
    let (status, _) = call(
        &server,
        "POST",
        "/v1/devices/lock-1/events",
        Some(json!({"type":"state_changed","data":{"locked":false}})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        all.event().await.unwrap(),
        (
            "state_changed".to_owned(),
            json!({"type":"state_changed","deviceId":"lock-1","data":{"locked":false}})
        )
    );

    // An online command: its `command_result` carries the `ble_write`'s requestId.
    let pending = command(&server, "lock-1", json!({"payload":"01"}));
    let write = next_write(&mut frames).await;
    bridge_tx.send(progress(&write, "written")).unwrap();
    bridge_tx.send(answer(&write, "02")).unwrap();
    assert_eq!(pending.await.unwrap().0, 200);
    let (name, data) = all.event().await.unwrap();
    assert_eq!(name, "command_result");
    assert_eq!(data["requestId"], write["requestId"]);
    assert_eq!(data["status"], "succeeded");
    assert_eq!(data["payload"], "02");
    assert_eq!(data["stage"], "written");

    // A queued command for lock-2: the filtered reader sees lock-2 only.
    let (status, body) = call(
        &server,
        "POST",
        "/v1/devices/lock-2/commands",
        Some(json!({"payload":"01","ifOffline":"queue","commandType":"unlock"})),
    )
    .await;
    assert_eq!(status, 202);
    let command_id = body["commandId"].clone();
    let (mut frames_2, bridge_2) = bridge(&server, "lock-2").await;
    let write = next_write(&mut frames_2).await;
    bridge_2.send(progress(&write, "received")).unwrap();
    bridge_2.send(answer(&write, "03")).unwrap();
    for reader in [&mut all, &mut only_lock_2] {
        let (name, data) = reader.event().await.unwrap();
        assert_eq!(
            (name, data["deviceId"].clone(), data["online"].clone()),
            ("device_status".to_owned(), json!("lock-2"), json!(true))
        );
        let (name, data) = reader.event().await.unwrap();
        assert_eq!(name, "command_result");
        assert_eq!(data["commandId"], command_id);
        assert_eq!(data["status"], "succeeded");
        // The queue does not store an attempt's stages yet: no `stage` on queued results.
    }

    // lock-1 goes offline (its only phone releases it): the filtered reader is not told.
    bridge_tx
        .send(json!({"type":"release","deviceId":"lock-1"}))
        .unwrap();
    let (_, data) = all.event().await.unwrap();
    assert_eq!(
        data,
        json!({"type":"device_status","deviceId":"lock-1","online":false,"bleConnected":null})
    );
    let nothing = tokio::time::timeout(Duration::from_secs(1), only_lock_2.event()).await;
    assert!(nothing.is_err(), "{nothing:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_gets_a_comment_every_15_seconds() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .build()
        .unwrap();
    let mut reader = Reader::open(&server, "").await;
    let start = tokio::time::Instant::now();
    let block = reader.block().await.unwrap();
    assert!(block.starts_with(':'), "{block:?}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(15), "{waited:?}");
    assert!(waited < Duration::from_secs(16), "{waited:?}");
    let block = reader.block().await.unwrap();
    assert!(block.starts_with(':'), "{block:?}");
    assert!(start.elapsed() < Duration::from_secs(31));
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_does_not_read_overflows_and_the_others_lose_nothing() {
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .stream_buffer(4)
        .build()
        .unwrap();
    let mut stalled = Reader::open(&server, "").await;
    let mut reading = Reader::open(&server, "").await;
    let mut seen = Vec::new();
    for i in 0..20 {
        let (status, _) = call(
            &server,
            "POST",
            "/v1/devices/lock-1/events",
            Some(json!({"type":"tick","data":{"i":i}})),
        )
        .await;
        assert_eq!(status, 202);
        seen.push(reading.event().await.unwrap().1["data"]["i"].clone());
    }
    assert_eq!(seen, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
    // The stalled reader gets what its buffer held, then `overflow`, then the end.
    for i in 0..4 {
        assert_eq!(stalled.event().await.unwrap().1["data"]["i"], i);
    }
    assert_eq!(
        stalled.event().await.unwrap(),
        ("overflow".to_owned(), json!({"type":"overflow"}))
    );
    assert_eq!(stalled.event().await, None, "disconnected");
}

#[tokio::test]
async fn the_stream_is_for_the_service_role_only() {
    use crate::support::{SECRET, token};
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.to_owned());
    let server = Server::builder(config).build().unwrap();
    let status = |authorization: Option<String>, query: &'static str| {
        let server = server.clone();
        async move {
            let mut request = axum::http::Request::get(format!("/v1/stream{query}"));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = server
                .router()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    assert_eq!(status(None, "").await, 401);
    let user = token("alice", "user", Some(&["lock-1"]), 3600);
    assert_eq!(status(Some(format!("Bearer {user}")), "").await, 403);
    let service = token("backend", "service", None, 3600);
    assert_eq!(
        status(Some(format!("Bearer {service}")), "?deviceId=%00").await,
        400,
        "a bad deviceId filter"
    );
}

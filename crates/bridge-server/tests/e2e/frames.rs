//! Application frames over a real WebSocket: registered by name, handled with the
//! connection's identity, answered, broadcast and sent to a user; reserved names refused at
//! build time; unregistered names still `unknown_type`; the limits apply.

use async_trait::async_trait;
use bridge_hub::UserId;
use bridge_protocol::{DeviceId, ErrorCode};
use bridge_server::{BuildError, FrameContext, FrameHandler, Server, ServerConfig};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Bridge, TestServer, subscribe, user};

/// `chat`: `to` a user, or to the subscribers of `device`; acknowledged to the sender with
/// its identity, and with whether forging a protocol frame was refused.
struct Chat;

#[async_trait]
impl FrameHandler for Chat {
    async fn on_frame(&self, frame: FrameContext) {
        let body = frame.body();
        let message = json!({"type":"chat","from":frame.user().as_str(),"text":body["text"]});
        let delivered = if let Some(to) = body["to"].as_str() {
            frame
                .send_to_user(&UserId::new(to), &message)
                .await
                .unwrap()
        } else if let Some(device) = body["device"].as_str() {
            let device = DeviceId::new(device).unwrap();
            frame.broadcast(&device, &message).await.unwrap()
        } else {
            frame
                .refuse(ErrorCode::InvalidMessage, "`to` or `device` is required")
                .await
                .unwrap();
            return;
        };
        let forged = frame
            .reply(&json!({"type":"command_result","requestId":"x"}))
            .await;
        frame
            .reply(&json!({
                "type": "chat_ack",
                "requestId": body["requestId"],
                "user": frame.user().as_str(),
                "role": frame.role().as_str(),
                "delivered": delivered,
                "forgeRefused": forged.is_err(),
            }))
            .await
            .unwrap();
    }
}

struct Boom;

#[async_trait]
impl FrameHandler for Boom {
    async fn on_frame(&self, _frame: FrameContext) {
        panic!("a handler that panics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_frame_round_trips_over_a_real_websocket() {
    let server = TestServer::start_with(ServerConfig::default(), |b| {
        b.frame("chat", Chat).frame("boom", Boom)
    })
    .await;
    let mut alice = user(&server, "alice").await;
    let mut bob = user(&server, "bob").await;
    subscribe(&mut bob, "lock-1").await;

    // To a user: bob gets it, alice gets the acknowledgement with her identity.
    alice
        .send(json!({"type":"chat","requestId":"r-1","to":"bob","text":"hi"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type":"chat","from":"alice","text":"hi"})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type":"chat_ack","requestId":"r-1","user":"alice","role":"user",
               "delivered":1,"forgeRefused":true})
    );

    // From a bridge to a device's subscribers.
    let mut bridge = Bridge::connect(&server, "phone-1", &["lock-1"]).await;
    assert_eq!(bob.recv().await["type"], "device_status");
    bridge
        .ws
        .send(json!({"type":"chat","requestId":"r-2","device":"lock-1","text":"near"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type":"chat","from":"phone-1","text":"near"})
    );
    assert_eq!(
        bridge.ws.recv().await,
        json!({"type":"chat_ack","requestId":"r-2","user":"phone-1","role":"bridge",
               "delivered":1,"forgeRefused":true})
    );

    // Refused by the handler with a protocol error frame carrying the requestId.
    alice
        .send(json!({"type":"chat","requestId":"r-3","text":"to nobody"}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(
        (&refused["type"], &refused["code"], &refused["requestId"]),
        (&json!("error"), &json!("invalid_message"), &json!("r-3"))
    );

    // Not registered (the name differs only in case): still `unknown_type`.
    alice.send(json!({"type":"Chat","requestId":"r-4"})).await;
    let unknown = alice.recv().await;
    assert_eq!(
        (&unknown["code"], &unknown["requestId"]),
        (&json!("unknown_type"), &json!("r-4"))
    );

    // A panicking handler leaves the connection and the server serving, and is counted.
    alice.send(json!({"type":"boom"})).await;
    alice.send(json!({"type":"ping"})).await;
    assert_eq!(alice.recv().await, json!({"type":"pong"}));
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"bridge_task_panics_total{task="frame"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_frames_are_under_the_rate_and_size_limits() {
    let mut config = ServerConfig::default();
    config.rate_per_second = 1;
    config.rate_burst = 3;
    config.max_frame_bytes = 1024;
    let server = TestServer::start_with(config, |b| b.frame("chat", Chat)).await;
    let mut alice = user(&server, "alice").await;
    let mut bob = user(&server, "bob").await;
    for n in 0..6 {
        alice
            .send(json!({"type":"chat","requestId":format!("r-{n}"),"to":"bob","text":"hi"}))
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let frame = alice.recv().await;
        codes.push(frame.get("code").cloned().unwrap_or(frame["type"].clone()));
    }
    assert!(codes.contains(&json!("rate_limited")), "{codes:?}");
    assert!(codes.contains(&json!("chat_ack")), "{codes:?}");
    assert_eq!(bob.recv().await["type"], "chat");

    let big = json!({"type":"chat","to":"bob","text":"x".repeat(4096)}).to_string();
    let _ = bob.socket.send(Message::Text(big.into())).await;
    assert_eq!(
        bob.closed().await.expect("a close frame").code,
        CloseCode::Size
    );
    server.stop().await;
}

#[tokio::test]
async fn names_the_protocol_defines_are_refused_when_the_server_is_built() {
    for name in [
        "command",
        "ping",
        "ble_response",
        "device_status",
        "hello",
        "overflow",
    ] {
        let built = Server::builder(ServerConfig::default())
            .development_mode()
            .frame(name, Chat)
            .build();
        assert_eq!(
            built.err(),
            Some(BuildError::ReservedFrameType(name.to_owned())),
            "{name}"
        );
    }
    let twice = Server::builder(ServerConfig::default())
        .development_mode()
        .frame("chat", Chat)
        .frame("chat", Boom)
        .build();
    assert_eq!(
        twice.err(),
        Some(BuildError::DuplicateFrameType("chat".to_owned()))
    );
    for name in ["", "a\nb", &"x".repeat(65)] {
        let built = Server::builder(ServerConfig::default())
            .development_mode()
            .frame(name, Chat)
            .build();
        assert!(
            matches!(built, Err(BuildError::InvalidFrameType { .. })),
            "{name:?}"
        );
    }
}

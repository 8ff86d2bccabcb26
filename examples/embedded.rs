//! The bridge server inside an axum application of your own.
//!
//! `cargo run -p examples --example embedded`
//!
//! * The application has its own routes (`/`) and layers (a header on every answer), and
//!   mounts the bridge server under `/bridge` (HTTP API and WebSocket).
//! * Lifecycle hooks: the application hears of bridges, devices, users and commands, off
//!   the server's path.
//! * An application frame type, `chat`: a user sends `{"type":"chat","text":…}` over the
//!   bridge WebSocket; the application broadcasts it to the subscribers of the device it
//!   names and acknowledges it to the sender.
//!
//! It runs one scripted session — a simulated phone holding `lock-1`, a user subscribed to
//! it, a chat message, a command over HTTP — prints what happened, and exits.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderValue;
use axum::routing::get;
use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BridgeClient, BridgeConfig, Credentials};
use bridge_hub::UserId;
use bridge_protocol::{DeviceId, ErrorCode};
use bridge_server::{
    BridgeConnection, CommandEnded, FrameContext, FrameHandler, Hooks, Server, ServerConfig,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn Error + Send + Sync>;

/// The application's hooks: here they only report, on a channel the example prints from.
/// A real service would update its own database, send a push notification, and so on —
/// on the server's hook task, never on a connection's.
struct AppHooks(mpsc::UnboundedSender<String>);

#[async_trait]
impl Hooks for AppHooks {
    async fn user_connected(&self, user: &UserId) {
        let _ = self.0.send(format!("hook: {user} came online"));
    }
    async fn user_disconnected(&self, user: &UserId) {
        let _ = self.0.send(format!("hook: {user} went offline"));
    }
    async fn bridge_connected(&self, bridge: &BridgeConnection) {
        let _ = self
            .0
            .send(format!("hook: bridge of {} connected", bridge.user));
    }
    async fn bridge_disconnected(&self, bridge: &BridgeConnection, _: bridge_hub::CloseReason) {
        let _ = self
            .0
            .send(format!("hook: bridge of {} disconnected", bridge.user));
    }
    async fn device_online(&self, device: &DeviceId) {
        let _ = self.0.send(format!("hook: {device} is online"));
    }
    async fn device_offline(&self, device: &DeviceId) {
        let _ = self.0.send(format!("hook: {device} is offline"));
    }
    async fn command_ended(&self, ended: &CommandEnded) {
        let _ = self.0.send(format!(
            "hook: a command for {} ended {}",
            ended.device, ended.outcome
        ));
    }
}

/// `{"type":"chat","device":"lock-1","text":"…"}`: to every subscriber of the device,
/// acknowledged to the sender with how many got it.
struct Chat;

#[async_trait]
impl FrameHandler for Chat {
    async fn on_frame(&self, frame: FrameContext) {
        let body = frame.body();
        let device = body["device"].as_str().and_then(|d| DeviceId::new(d).ok());
        let (Some(device), Some(text)) = (device, body["text"].as_str()) else {
            let _ = frame
                .refuse(
                    ErrorCode::InvalidMessage,
                    "`device` and `text` are required",
                )
                .await;
            return;
        };
        let message = json!({
            "type": "chat",
            "deviceId": device.as_str(),
            "from": frame.user().as_str(),
            "text": text,
        });
        let delivered = frame.broadcast(&device, &message).await.unwrap_or(0);
        let _ = frame
            .reply(&json!({"type":"chat_ack","requestId":body["requestId"],"delivered":delivered}))
            .await;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (hook_lines, mut hooks_said) = mpsc::unbounded_channel();
    // Development mode, said out loud (a server without a JWT secret is not built
    // otherwise); it serves loopback only.
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .hooks(AppHooks(hook_lines))
        .frame("chat", Chat)
        .build()?;

    let app = axum::Router::new()
        .route("/", get(|| async { "my application" }))
        .nest("/bridge", server.router())
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response
                    .headers_mut()
                    .insert("x-served-by", HeaderValue::from_static("my-app"));
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The server's own rule for its listener, applied to ours.
    server.check_listener(addr)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("serving on http://{addr} (the bridge server under /bridge)");

    // A simulated phone holding lock-1.
    let lock = DeviceId::new("lock-1")?;
    let phone = BridgeClient::start(
        BridgeConfig::new(
            format!("ws://{addr}/bridge/ws"),
            Credentials::Development {
                user_id: "phone-1".into(),
            },
            vec![lock.clone()],
        ),
        Arc::new(SimulatedLocks::new(
            [lock.clone()],
            LockBehaviour::default(),
        )),
    );
    phone.wait_connected(1).await?;
    phone.report_status(lock.clone(), true, Some(-60))?;

    // A user watching lock-1, over a plain WebSocket.
    let (mut alice, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/bridge/ws?userId=alice")).await?;
    let send = |frame: Value| Message::Text(frame.to_string().into());
    alice
        .send(send(
            json!({"type":"subscribe","requestId":"s-1","deviceId":"lock-1"}),
        ))
        .await?;
    // The application frame: broadcast to lock-1's subscribers (alice herself), acknowledged.
    alice
        .send(send(
            json!({"type":"chat","requestId":"m-1","device":"lock-1","text":"opening up"}),
        ))
        .await?;
    let mut seen = Vec::new();
    while !(seen.contains(&"chat".to_owned()) && seen.contains(&"chat_ack".to_owned())) {
        let frame = next_frame(&mut alice).await?;
        println!("alice got: {frame}");
        seen.push(frame["type"].as_str().unwrap_or_default().to_owned());
    }

    // A command from the backend, through the application's HTTP server.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{addr}/bridge/v1/devices/lock-1/commands"))
        .json(&json!({"payload":"01"}))
        .send()
        .await?;
    let served_by = response.headers().get("x-served-by").cloned();
    let status = response.status();
    println!(
        "POST /bridge/v1/devices/lock-1/commands: {status} {} (x-served-by: {served_by:?})",
        response.text().await?
    );
    if status != 200 || served_by.is_none() {
        return Err("the command did not go through the application's router".into());
    }
    println!(
        "GET /: {}",
        http.get(format!("http://{addr}/"))
            .send()
            .await?
            .text()
            .await?
    );

    alice.close(None).await?;
    phone.shutdown().await;
    // The application's shutdown: the server's WebSockets first, then the HTTP server.
    server.shutdown().await;
    let _ = stop.send(());
    serving.await??;
    drop(server);
    // The hooks ran on their own task; everything they heard, in order.
    let mut heard = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(5), hooks_said.recv())
        .await
        .ok()
        .flatten()
    {
        println!("{line}");
        let last = line.contains("bridge of phone-1 disconnected");
        heard.push(line);
        if last {
            break;
        }
    }
    for expected in [
        "hook: lock-1 is online",
        "hook: alice came online",
        "hook: a command for lock-1 ended succeeded",
        "hook: bridge of phone-1 disconnected",
    ] {
        if !heard.iter().any(|line| line == expected) {
            return Err(format!("the hooks did not hear `{expected}`").into());
        }
    }
    Ok(())
}

/// The next JSON text frame.
async fn next_frame<S>(socket: &mut S) -> Result<Value, BoxError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await?
            .ok_or("the connection closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

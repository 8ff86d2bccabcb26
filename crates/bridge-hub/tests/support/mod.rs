//! A hub served over real loopback WebSocket connections, and a client to talk to it.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bridge_hub::{
    AccessPolicy, ConnectionInfo, DeviceAccess, FixedSubscriptions, HubConfig, HubEvent, LocalHub,
    UserId,
};
use bridge_protocol::DeviceId;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything that should happen "at once" on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn device(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

pub struct TestServer {
    pub hub: LocalHub,
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<HubEvent>,
}

pub type EventHook = std::sync::Arc<dyn Fn(&HubEvent) + Send + Sync>;

#[derive(Default)]
pub struct Setup {
    pub config: HubConfig,
    pub subscriptions: Vec<&'static str>,
    pub policy: Option<Box<dyn FnOnce(bridge_hub::LocalHubBuilder) -> bridge_hub::LocalHubBuilder>>,
    /// Called with every event before it is queued for the test (from the hub's thread).
    pub on_event: Option<EventHook>,
    /// The hub's `ble_response` handler (default: the hub's own, which refuses them all).
    pub responses: Option<Box<dyn bridge_hub::ResponseHandler>>,
    /// Serve with tungstenite's default limits instead of the hub's, so that the hub's
    /// own frame size check is what refuses a large frame.
    pub plain_websocket: bool,
}

impl Setup {
    pub fn config(mut self, f: impl FnOnce(&mut HubConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn on_event(mut self, hook: impl Fn(&HubEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(std::sync::Arc::new(hook));
        self
    }

    pub fn responses(mut self, handler: impl bridge_hub::ResponseHandler) -> Self {
        self.responses = Some(Box::new(handler));
        self
    }

    pub fn plain_websocket(mut self) -> Self {
        self.plain_websocket = true;
        self
    }

    pub fn subscriptions(mut self, devices: &[&'static str]) -> Self {
        self.subscriptions = devices.to_vec();
        self
    }

    pub fn access_policy(mut self, policy: impl AccessPolicy) -> Self {
        self.policy = Some(Box::new(move |b| b.access_policy(policy)));
        self
    }

    pub async fn start(self) -> TestServer {
        let (tx, events) = mpsc::unbounded_channel();
        let hook = self.on_event;
        let mut builder = LocalHub::builder()
            .config(self.config)
            .subscriptions(FixedSubscriptions::new(
                self.subscriptions.iter().map(|d| device(d)),
            ))
            .events(move |event: HubEvent| {
                if let Some(hook) = &hook {
                    hook(&event);
                }
                let _ = tx.send(event);
            });
        if let Some(policy) = self.policy {
            builder = policy(builder);
        }
        if let Some(responses) = self.responses {
            builder = builder
                .responses(move |connection, response| responses.on_response(connection, response));
        }
        let hub = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = hub.clone();
        let plain = self.plain_websocket;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let hub = server.clone();
                tokio::spawn(async move { serve_one(hub, tcp, plain).await });
            }
        });
        TestServer { hub, addr, events }
    }
}

/// Reads who the client is from the query string, the way the server reads it in
/// development mode: `?role=bridge&user=u&device=a&device=b&access=a,b&expired=1`.
async fn serve_one(hub: LocalHub, tcp: TcpStream, plain: bool) {
    let mut query = String::new();
    let config = if plain {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
    } else {
        hub.config().websocket_config()
    };
    // The callback's error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        req.uri().query().unwrap_or_default().clone_into(&mut query);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let mut role = "user";
    let mut user = "anon";
    let mut devices = Vec::new();
    let mut access = DeviceAccess::All;
    let mut expired = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("role", v)) => role = if v == "bridge" { "bridge" } else { "user" },
            Some(("user", v)) => user = Box::leak(v.to_owned().into_boxed_str()),
            Some(("device", v)) => devices.push(device(v)),
            Some(("access", v)) => {
                access = DeviceAccess::only(v.split(',').filter(|s| !s.is_empty()).map(device));
            }
            Some(("expired", _)) => expired = true,
            _ => {}
        }
    }
    let mut info = if role == "bridge" {
        ConnectionInfo::bridge(UserId::new(user), devices, access)
    } else {
        ConnectionInfo::user(UserId::new(user), access)
    };
    if expired {
        info = info.with_expiry(SystemTime::UNIX_EPOCH);
    }
    hub.serve(ws, info).await;
}

impl TestServer {
    pub async fn connect(&self, query: &str) -> Client {
        let url = format!("ws://{}/ws?{query}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            backlog: VecDeque::new(),
        }
    }

    /// A client whose socket receive buffer is tiny, so that it backs up fast.
    pub async fn connect_with_small_buffer(&self, query: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        let url = format!("ws://{}/ws?{query}", self.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        Client {
            ws,
            backlog: VecDeque::new(),
        }
    }

    pub async fn bridge(&self, user: &str, devices: &[&str]) -> Client {
        let mut query = format!("role=bridge&user={user}");
        for d in devices {
            query.push_str("&device=");
            query.push_str(d);
        }
        let mut client = self.connect(&query).await;
        client.sync_keeping_frames().await;
        client
    }

    pub async fn user(&self, user: &str) -> Client {
        let mut client = self.connect(&format!("user={user}")).await;
        client.sync_keeping_frames().await;
        client
    }

    /// Waits for the first event that `pick` selects, skipping the others.
    pub async fn wait_for<T>(&mut self, pick: impl FnMut(&HubEvent) -> Option<T>) -> T {
        self.wait_for_within(PATIENCE, pick).await
    }

    /// `wait_for` with an explicit bound (for tests on a paused clock).
    pub async fn wait_for_within<T>(
        &mut self,
        patience: Duration,
        mut pick: impl FnMut(&HubEvent) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                let event = self.events.recv().await.expect("event channel open");
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
        };
        tokio::time::timeout(patience, wait)
            .await
            .expect("the event arrives")
    }

    /// Every event up to and including the first that `last` selects.
    pub async fn events_until(&mut self, mut last: impl FnMut(&HubEvent) -> bool) -> Vec<HubEvent> {
        let wait = async {
            let mut seen = Vec::new();
            loop {
                let event = self.events.recv().await.expect("event channel open");
                let done = last(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("the event arrives")
    }

    /// The first event `pick` selects, owned (with the in-flight ticket a
    /// `HubEvent::UserCommand` carries), skipping the others.
    pub async fn take_event(&mut self, mut pick: impl FnMut(&HubEvent) -> bool) -> HubEvent {
        self.events_until(&mut pick)
            .await
            .pop()
            .expect("the picked event")
    }

    /// Every event so far, without waiting.
    pub fn drain_events(&mut self) -> Vec<HubEvent> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Text frames read ahead (by the connect helpers' sync), returned first.
    backlog: VecDeque<String>,
}

impl Client {
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .unwrap();
    }

    /// The next text frame (WebSocket pings and pongs are skipped).
    pub async fn recv(&mut self) -> String {
        if let Some(text) = self.backlog.pop_front() {
            return text;
        }
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("a frame arrives")
    }

    pub async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv().await).unwrap()
    }

    /// Sends `ping` and returns every text frame that arrived before the `pong`: once it
    /// returns, the hub has processed everything sent before.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv_json().await;
            if frame == serde_json::json!({"type":"pong"}) {
                return before;
            }
            before.push(frame);
        }
    }

    /// Like `sync`, but keeps the frames that came before the pong for later reads.
    pub async fn sync_keeping_frames(&mut self) {
        let frames = self.sync().await;
        self.backlog
            .extend(frames.into_iter().map(|f| f.to_string()));
    }

    /// Reads until the server's close frame and returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        self.expect_close_within(PATIENCE).await
    }

    /// `expect_close` with an explicit bound (for tests on a paused clock).
    pub async fn expect_close_within(&mut self, patience: Duration) -> u16 {
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                    Some(Ok(Message::Close(None))) => return u16::from(CloseCode::Status),
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        };
        let code = tokio::time::timeout(patience, wait)
            .await
            .expect("the connection closes");
        // Reading on sends our answer to the close frame and sees the end of the stream.
        let rest = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(patience, rest).await;
        code
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

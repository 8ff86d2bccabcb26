//! A real server on a loopback port, and HTTP and WebSocket clients to talk to it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::DeviceId;
use bridge_queue::Store;
use bridge_server::auth::Claims;
use bridge_server::{Server, ServerBuilder, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything that should happen "at once" on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The JWT secret of authenticated test servers (at least 32 bytes, as the server requires).
pub const SECRET: &str = "an-e2e-test-secret-of-at-least-32-bytes";

pub fn device(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// A signed token for `sub` with `role` and `devices`, valid for `valid_for_secs`.
pub fn token(sub: &str, role: &str, devices: Option<&[&str]>, valid_for_secs: i64) -> String {
    let role = serde_json::from_value(json!(role)).unwrap();
    Claims {
        sub: sub.into(),
        role,
        devices: devices.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
        exp: bridge_server::auth::unix_now().saturating_add_signed(valid_for_secs),
    }
    .encode(SECRET.as_bytes())
    .unwrap()
}

/// A server serving on 127.0.0.1 (port 0) until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Option<Server>,
    pub http: reqwest::Client,
    /// Sent with every HTTP request when set (authenticated servers).
    pub service_token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), bridge_server::ServerError>>>,
}

impl TestServer {
    /// Development mode, memory queue, default limits.
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default(), |b| b).await
    }

    /// JWT mode with [`SECRET`].
    pub async fn start_authenticated() -> Self {
        let mut config = ServerConfig::default();
        config.jwt_secret = Some(SECRET.into());
        let mut server = Self::start_with(config, |b| b).await;
        server.service_token = Some(token("backend", "service", None, 3600));
        server
    }

    pub async fn start_with(
        config: ServerConfig,
        customize: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, config, customize)
    }

    /// Serves on a listener the test bound itself (to restart a server on the same address).
    pub fn start_on(
        listener: tokio::net::TcpListener,
        config: ServerConfig,
        customize: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        // Without a secret, development mode (as the binary does); said before `customize`.
        let development = config.jwt_secret.is_none();
        let mut builder = Server::builder(config);
        if development {
            builder = builder.development_mode();
        }
        let server = customize(builder).build().unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server: Some(server),
            http: reqwest::Client::new(),
            service_token: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of a server running elsewhere (another process).
    pub fn client_for(addr: SocketAddr) -> Self {
        Self {
            addr,
            server: None,
            http: reqwest::Client::new(),
            service_token: None,
            stop: None,
            task: None,
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(self.server.as_ref().unwrap().store())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.service_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// POSTs a JSON body; answers the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let response = self
            .authorize(self.http.post(self.url(path)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .authorize(self.http.get(self.url(path)))
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .authorize(self.http.get(self.url(path)))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Sends a command to `device` and answers the status and body.
    pub async fn command(&self, device: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1/devices/{device}/commands"), &body)
            .await
    }

    /// Waits until the device's presence satisfies `check`.
    pub async fn wait_device(&self, device: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(|| async {
            let (_, view) = self.get(&format!("/v1/devices/{device}")).await;
            check(&view).then_some(view)
        })
        .await
    }

    pub async fn wait_online(&self, device: &str, bridges: u64) {
        self.wait_device(device, |v| v["bridges"] == bridges).await;
    }

    /// Waits until a queued command's status is `status`, and returns it.
    pub async fn wait_command_status(&self, command_id: &str, status: &str) -> Value {
        eventually(|| async {
            let (_, view) = self.get(&format!("/v1/commands/{command_id}")).await;
            (view["status"] == status).then_some(view)
        })
        .await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Polls `probe` until it gives a value, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client speaking JSON frames.
pub struct Ws {
    pub socket: Socket,
}

/// Why a WebSocket upgrade was refused: the HTTP status and the JSON error body.
pub async fn refused_upgrade(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap());
            (status, body)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(url, None).await
    }

    pub async fn connect_with(url: &str, bearer: Option<&str>) -> Self {
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 101);
        Self { socket }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    pub async fn send_message(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next JSON frame (WebSocket pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next frame of type `ty`, skipping `device_status` frames.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == ty {
                return frame;
            }
            assert_eq!(
                frame["type"], "device_status",
                "expected a {ty} frame, got {frame}"
            );
        }
    }

    /// Waits for the server to close the connection; answers its close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("closed in time");
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// A bridge over a raw WebSocket: it sees every `ble_write` and answers when told to.
pub struct Bridge {
    pub ws: Ws,
}

impl Bridge {
    /// A development-mode bridge of `user` holding `devices` from the start.
    pub async fn connect(server: &TestServer, user: &str, devices: &[&str]) -> Self {
        let mut query = format!("userId={user}");
        for d in devices {
            query = query + "&deviceId=" + d;
        }
        Self {
            ws: Ws::connect(&server.ws_url(&query)).await,
        }
    }

    /// The next `ble_write`.
    pub async fn next_write(&mut self) -> Value {
        let frame = self.ws.recv().await;
        assert_eq!(
            frame["type"], "ble_write",
            "expected a ble_write, got {frame}"
        );
        frame
    }

    pub async fn answer(&mut self, write: &Value, payload: &str) {
        self.ws
            .send(json!({"type":"ble_response","requestId":write["requestId"],
                         "deviceId":write["deviceId"],"payload":payload}))
            .await;
    }

    pub async fn fail(&mut self, write: &Value, error: &str) {
        self.ws
            .send(json!({"type":"ble_response","requestId":write["requestId"],
                         "deviceId":write["deviceId"],"error":error}))
            .await;
    }

    pub async fn status(&mut self, device: &str, connected: bool, rssi: Option<i8>) {
        let mut frame = json!({"type":"ble_status","deviceId":device,"connected":connected});
        if let Some(rssi) = rssi {
            frame["rssi"] = json!(rssi);
        }
        self.ws.send(frame).await;
    }

    /// Sends a `ping` frame and waits for the `pong`: every frame sent before it has been
    /// handled by the server's read loop.
    pub async fn sync(&mut self) {
        self.ws.send(json!({"type":"ping"})).await;
        let pong = self.ws.recv().await;
        assert_eq!(pong["type"], "pong", "expected a pong, got {pong}");
    }
}

/// A development-mode user connection of `user`.
pub async fn user(server: &TestServer, user: &str) -> Ws {
    Ws::connect(&server.ws_url(&format!("userId={user}"))).await
}

/// Subscribes a user connection and waits for the ack (the `device_status` snapshot that
/// follows is returned).
pub async fn subscribe(ws: &mut Ws, device: &str) -> Value {
    ws.send(json!({"type":"subscribe","requestId":"sub-1","deviceId":device}))
        .await;
    let ack = ws.recv().await;
    assert_eq!(ack, json!({"type":"ack","requestId":"sub-1"}));
    let status = ws.recv().await;
    assert_eq!(status["type"], "device_status");
    status
}

/// Asserts the next frame the bridge gets is a `ble_write` with `payload`, proving that
/// nothing else was written to it before.
pub async fn assert_first_write(bridge: &mut Bridge, payload: &str) -> Value {
    let write = bridge.next_write().await;
    assert_eq!(write["payload"], payload, "unexpected write {write}");
    write
}

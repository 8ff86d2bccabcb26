//! The bridge side: hold devices, answer `ble_write`, report links, reconnect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bridge_protocol::{
    BleOutcome, BleProgress, BleResponse, BleStatus, BleWrite, BridgeId, BridgeToServer,
    DeviceErrorCode, DeviceId, ErrorFrame, HexPayload, Release, RequestId, ServerToBridge, Stage,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, warn};

use crate::connect::{self, Credentials};
use crate::mqtt::{MqttLink, MqttSettings};
use crate::{Backoff, ClientError};

/// Performs BLE writes for the bridge: the phone app's BLE layer, or a simulator.
///
/// Called once per `ble_write`, concurrently for different requests; an implementation that
/// must serialize GATT operations per device does so itself.
#[async_trait]
pub trait BleHandler: Send + Sync + 'static {
    /// Writes `request.payload` to `request.write_uuid` of `request.device_id` and returns the
    /// device's reply from `request.listen_uuid`, or a short error code such as
    /// `gatt_write_failed`. Should finish within `request.timeout_ms`.
    async fn write(&self, request: &BleWrite) -> Result<HexPayload, DeviceErrorCode>;

    /// As [`write`](Self::write), reporting how far it got through `progress` (PROTOCOL.md
    /// 3.2 `ble_progress`, version 1.1): [`Stage::Received`] once the write is handed to the
    /// BLE stack, [`Stage::Connected`] when the link to the device came up for it (skipped
    /// when it already was), [`Stage::Written`] when the GATT write completed and the reply
    /// is awaited. The client calls this one; the default reports nothing and calls
    /// `write`, so a 1.0 handler keeps working unchanged. Reporting is optional, and so is
    /// each stage, but a timeout then only says `sent`.
    async fn write_with_progress(
        &self,
        request: &BleWrite,
        progress: &Progress,
    ) -> Result<HexPayload, DeviceErrorCode> {
        let _ = progress;
        self.write(request).await
    }
}

/// Reports the stages of one `ble_write` to the server as `ble_progress` frames (PROTOCOL.md
/// 3.2, version 1.1); handed to [`BleHandler::write_with_progress`].
///
/// Sending never waits: the frame is queued on the connection the write came on (and
/// dropped if that connection is gone, as the answer would be). The server ignores a stage
/// not later than one already reported, so reporting twice is harmless.
#[derive(Debug, Clone)]
pub struct Progress {
    request_id: RequestId,
    device_id: DeviceId,
    frames: Option<mpsc::UnboundedSender<BridgeToServer>>,
}

impl Progress {
    /// A handle that reports nothing, for calling a handler outside a bridge connection
    /// (tests, a handler calling another).
    pub fn detached(request: &BleWrite) -> Self {
        Self {
            request_id: request.request_id,
            device_id: request.device_id.clone(),
            frames: None,
        }
    }

    /// Reports that the write reached `stage`. `Stage::Sent` is the server's own stage and
    /// is not sent.
    pub fn report(&self, stage: Stage) {
        if !stage.is_reported_by_bridge() {
            return;
        }
        if let Some(frames) = &self.frames {
            let _ = frames.send(BridgeToServer::BleProgress(BleProgress {
                request_id: self.request_id,
                device_id: self.device_id.clone(),
                stage,
            }));
        }
    }
}

/// Settings of a [`BridgeClient`].
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The server's WebSocket URL, such as `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// Token or development-mode identity.
    pub credentials: Credentials,
    /// Devices to hold from the moment of connecting.
    pub devices: Vec<DeviceId>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Other nodes of the same cluster (PROTOCOL.md 5), such as `ws://node-b:8080/ws`: when
    /// a connection is lost or cannot be made, the client goes on to the next URL of
    /// `url` followed by these, at once, and waits out its backoff only after a whole round
    /// failed. Empty (the default) for a single server, or for a cluster behind one load
    /// balancer URL, which picks a live node itself.
    pub fallback_urls: Vec<String>,
    /// `Some`: the bridge connects through the MQTT 5 broker at `url` (`mqtt://HOST:PORT`,
    /// PROTOCOL.md 6) instead of a WebSocket; see [`BridgeConfig::over_mqtt`]. The fallback
    /// URLs are not used then (the broker is the one meeting point).
    pub mqtt: Option<MqttSettings>,
}

impl BridgeConfig {
    /// A config with the default backoff.
    pub fn new(url: impl Into<String>, credentials: Credentials, devices: Vec<DeviceId>) -> Self {
        Self {
            url: url.into(),
            credentials,
            devices,
            backoff: Backoff::default(),
            fallback_urls: Vec::new(),
            mqtt: None,
        }
    }

    /// A bridge over the MQTT 5 broker at `broker_url` (`mqtt://HOST:PORT`, PROTOCOL.md 6),
    /// publishing on `bridge/b/{bridge_id}/up` and reading `bridge/b/{bridge_id}/down`
    /// (another prefix with [`BridgeConfig::with_mqtt_prefix`]). The bridge id names topics
    /// only: `credentials` decide who the bridge is, as over WebSocket.
    pub fn over_mqtt(
        broker_url: impl Into<String>,
        bridge_id: BridgeId,
        credentials: Credentials,
        devices: Vec<DeviceId>,
    ) -> Self {
        Self {
            mqtt: Some(MqttSettings {
                bridge_id,
                prefix: "bridge".into(),
            }),
            ..Self::new(broker_url, credentials, devices)
        }
    }

    /// Sets the MQTT topic prefix (the server's `--mqtt-prefix`); no effect over WebSocket.
    #[must_use]
    pub fn with_mqtt_prefix(mut self, prefix: impl Into<String>) -> Self {
        if let Some(mqtt) = &mut self.mqtt {
            mqtt.prefix = prefix.into();
        }
        self
    }

    /// Sets [`BridgeConfig::fallback_urls`].
    #[must_use]
    pub fn with_fallback_urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// `url`, then the fallbacks: the order the client tries them in.
    fn urls(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .chain(self.fallback_urls.iter().map(String::as_str))
            .collect()
    }
}

/// Where the client's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection, or waiting to retry.
    Connecting,
    /// Connected; the number counts connections made so far (1 for the first).
    Connected(u64),
    /// Shut down for good.
    Stopped,
}

enum Control {
    Status(BleStatus),
    Release(DeviceId),
    Shutdown,
}

/// A bridge connection that holds devices and answers `ble_write` frames through a
/// [`BleHandler`], reconnecting with backoff and jitter whenever the connection is lost.
///
/// Dropping the client stops it, as does [`BridgeClient::shutdown`].
pub struct BridgeClient {
    control: mpsc::UnboundedSender<Control>,
    state: watch::Receiver<ConnectionState>,
    errors: broadcast::Sender<ErrorFrame>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BridgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeClient")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// What the client remembers across connections.
struct Held {
    /// Each held device with the last status reported for it.
    devices: BTreeMap<DeviceId, Option<BleStatus>>,
}

impl BridgeClient {
    /// Starts the client on the current tokio runtime; it connects in the background.
    pub fn start(config: BridgeConfig, handler: Arc<dyn BleHandler>) -> Self {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (errors, _) = broadcast::channel(64);
        let held = Held {
            devices: config.devices.iter().map(|d| (d.clone(), None)).collect(),
        };
        let task = tokio::spawn(run(
            config,
            handler,
            held,
            control_rx,
            state_tx,
            errors.clone(),
        ));
        Self {
            control,
            state,
            errors,
            task: Some(task),
        }
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Waits until the client is connected for the `n`-th time or later (1 for the first
    /// connection).
    pub async fn wait_connected(&self, n: u64) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        let reached = state
            .wait_for(|s| match s {
                ConnectionState::Connected(k) => *k >= n,
                ConnectionState::Stopped => true,
                ConnectionState::Connecting => false,
            })
            .await
            .map_err(|_| ClientError::Shutdown)?;
        if *reached == ConnectionState::Stopped {
            return Err(ClientError::Shutdown);
        }
        Ok(())
    }

    /// Error frames the server sends (such as `forbidden` for a claim it refuses).
    pub fn errors(&self) -> broadcast::Receiver<ErrorFrame> {
        self.errors.subscribe()
    }

    /// Reports the BLE link to a device (`ble_status`). For a device the client does not hold
    /// yet, this claims it; the client remembers it and re-announces it after reconnecting.
    pub fn report_status(
        &self,
        device: DeviceId,
        connected: bool,
        rssi: Option<i8>,
    ) -> Result<(), ClientError> {
        self.control
            .send(Control::Status(BleStatus {
                device_id: device,
                connected,
                rssi,
            }))
            .map_err(|_| ClientError::Shutdown)
    }

    /// Stops relaying for a device (`release`).
    pub fn release(&self, device: DeviceId) -> Result<(), ClientError> {
        self.control
            .send(Control::Release(device))
            .map_err(|_| ClientError::Shutdown)
    }

    /// Closes the connection (code 1000) and stops reconnecting.
    pub async fn shutdown(mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BridgeClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How one connection ended.
enum Ended {
    Shutdown,
    Lost(String),
}

async fn run(
    config: BridgeConfig,
    handler: Arc<dyn BleHandler>,
    mut held: Held,
    mut control: mpsc::UnboundedReceiver<Control>,
    state: watch::Sender<ConnectionState>,
    errors: broadcast::Sender<ErrorFrame>,
) {
    let connections = AtomicU64::new(0);
    // Over MQTT, one broker connection for every session (PROTOCOL.md 6).
    let link = match &config.mqtt {
        Some(settings) => match MqttLink::start(&config.url, settings) {
            Ok(link) => Some(link),
            Err(error) => {
                warn!(%error, "cannot use the MQTT broker");
                let _ = state.send(ConnectionState::Stopped);
                return;
            }
        },
        None => None,
    };
    let urls = if link.is_some() {
        vec![config.url.as_str()]
    } else {
        config.urls()
    };
    // Where the next attempt goes, and the attempts that went round every URL in vain.
    let mut next = 0;
    let mut attempt: u32 = 0;
    loop {
        let _ = state.send(ConnectionState::Connecting);
        let devices: Vec<DeviceId> = held.devices.keys().cloned().collect();
        let url = urls[next % urls.len()];
        let ended = match &link {
            None => match connect::open(url, &config.credentials, &devices).await {
                Ok(socket) => {
                    attempt = 0;
                    let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(%url, connection = n, devices = devices.len(), "bridge connected");
                    let _ = state.send(ConnectionState::Connected(n));
                    Some(serve(socket, &handler, &mut held, &mut control, &errors).await)
                }
                Err(e) => {
                    debug!(error = %e, %url, attempt, "bridge connect failed");
                    None
                }
            },
            Some(link) => match link.open(&config.credentials, &devices).await {
                Ok(socket) => {
                    attempt = 0;
                    let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(%url, session = n, devices = devices.len(), "bridge session opened over MQTT");
                    let _ = state.send(ConnectionState::Connected(n));
                    Some(serve(socket, &handler, &mut held, &mut control, &errors).await)
                }
                Err(e) => {
                    warn!(error = %e, %url, attempt, "bridge hello over MQTT failed");
                    None
                }
            },
        };
        match ended {
            Some(Ended::Shutdown) => break,
            Some(Ended::Lost(reason)) => warn!(%url, %reason, "bridge connection lost"),
            None => {}
        }
        // The node may be gone: the next URL is tried, at once unless a round is over.
        next = (next + 1) % urls.len();
        if next != 0 {
            continue;
        }
        let delay = config.backoff.next_delay(attempt);
        attempt = attempt.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        // While waiting, keep track of what the application reports.
        loop {
            tokio::select! {
                () = &mut sleep => break,
                message = control.recv() => match message {
                    None | Some(Control::Shutdown) => {
                        let _ = state.send(ConnectionState::Stopped);
                        return;
                    }
                    Some(Control::Status(status)) => {
                        held.devices.insert(status.device_id.clone(), Some(status));
                    }
                    Some(Control::Release(device)) => {
                        held.devices.remove(&device);
                    }
                },
            }
        }
    }
    let _ = state.send(ConnectionState::Stopped);
}

async fn send<S>(socket: &mut S, frame: &BridgeToServer) -> Result<(), String>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    socket
        .send(Message::text(frame.to_json()))
        .await
        .map_err(|e| e.to_string())
}

/// Serves one connection (a WebSocket, or a session over MQTT) until it ends.
async fn serve<S>(
    mut socket: S,
    handler: &Arc<dyn BleHandler>,
    held: &mut Held,
    control: &mut mpsc::UnboundedReceiver<Control>,
    errors: &broadcast::Sender<ErrorFrame>,
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    // Re-announce the last known link state of every held device.
    let statuses: Vec<BleStatus> = held.devices.values().flatten().cloned().collect();
    for status in statuses {
        if let Err(e) = send(&mut socket, &BridgeToServer::BleStatus(status)).await {
            return Ended::Lost(e);
        }
    }
    // Answers of handlers in flight on this connection. When the connection ends, this
    // receiver is dropped, and answers to writes the server has already failed are dropped.
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<BridgeToServer>();
    loop {
        tokio::select! {
            incoming = socket.next() => {
                let message = match incoming {
                    None => return Ended::Lost("server closed the stream".into()),
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    Some(Ok(m)) => m,
                };
                match message {
                    Message::Text(text) => match ServerToBridge::decode(text.as_str()) {
                        Ok(ServerToBridge::BleWrite(write)) => {
                            let handler = Arc::clone(handler);
                            let answers = answers_tx.clone();
                            tokio::spawn(async move {
                                let progress = Progress {
                                    request_id: write.request_id,
                                    device_id: write.device_id.clone(),
                                    frames: Some(answers.clone()),
                                };
                                let outcome = match handler.write_with_progress(&write, &progress).await {
                                    Ok(payload) => BleOutcome::Payload(payload),
                                    Err(code) => BleOutcome::Error(code),
                                };
                                let _ = answers.send(BridgeToServer::BleResponse(BleResponse {
                                    request_id: write.request_id,
                                    device_id: write.device_id,
                                    outcome,
                                }));
                            });
                        }
                        Ok(ServerToBridge::Error(frame)) => {
                            warn!(code = %frame.code, message = %frame.message, "server refused a frame");
                            let _ = errors.send(frame);
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "undecodable frame from the server"),
                    },
                    Message::Close(frame) => {
                        return Ended::Lost(format!("server closed the connection: {frame:?}"));
                    }
                    // Pings are answered by the WebSocket layer; nothing else is expected.
                    _ => {}
                }
            }
            Some(answer) = answers.recv() => {
                if let Err(e) = send(&mut socket, &answer).await {
                    return Ended::Lost(e);
                }
            }
            message = control.recv() => {
                let frame = match message {
                    None | Some(Control::Shutdown) => {
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bridge shutting down".into() })))
                            .await;
                        return Ended::Shutdown;
                    }
                    Some(Control::Status(status)) => {
                        held.devices.insert(status.device_id.clone(), Some(status.clone()));
                        BridgeToServer::BleStatus(status)
                    }
                    Some(Control::Release(device)) => {
                        held.devices.remove(&device);
                        BridgeToServer::Release(Release { device_id: device })
                    }
                };
                if let Err(e) = send(&mut socket, &frame).await {
                    return Ended::Lost(e);
                }
            }
        }
    }
}

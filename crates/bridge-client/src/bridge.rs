//! The bridge side: hold devices, answer `ble_write`, report links, reconnect.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

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
///
/// The client polls the returned future once on the connection's own task: a write answered
/// at once (a cache, a simulator) is answered without a task switch, together with the other
/// answers ready at that moment. A future not finished by that first poll goes on in a task
/// of its own. So, as in any async code, a handler must not block the thread: it would hold
/// up the connection's reads and writes meanwhile.
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

    /// A handle whose frames go to `frames`, as on a connection (for tests of handlers).
    #[cfg(test)]
    pub(crate) fn to_channel(
        request: &BleWrite,
        frames: mpsc::UnboundedSender<BridgeToServer>,
    ) -> Self {
        Self {
            frames: Some(frames),
            ..Self::detached(request)
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
            None => match connect::open_bridge(url, &config.credentials, &devices).await {
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

/// The outgoing side of a connection as its loop uses it: a [`Sink`] of messages that can
/// also queue a protocol frame without making a [`Message`] of it first.
pub(crate) trait FrameSink: Sink<Message, Error = WsError> + Unpin {
    /// Queues `frame` as a text message, as `start_send` would (after `poll_ready`). The
    /// default makes a [`Message`] of its JSON; a socket that can write the JSON straight
    /// into its own buffer overrides it, since one `ble_response` goes out per command.
    fn start_send_frame(&mut self, frame: &BridgeToServer) -> Result<(), WsError>
    where
        Self: Sized,
    {
        Pin::new(self).start_send(Message::text(frame_text(frame)))
    }
}

/// Queues `frame` in the socket's write buffer without writing it out: the connection's loop
/// flushes once per batch (`socket.flush()`).
async fn feed<S: FrameSink>(socket: &mut S, frame: &BridgeToServer) -> Result<(), String> {
    std::future::poll_fn(|cx| Pin::new(&mut *socket).poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    socket.start_send_frame(frame).map_err(|e| e.to_string())
}

/// The JSON text of `frame`; a `ble_response` (one per command) written without serde.
pub(crate) fn frame_text(frame: &BridgeToServer) -> String {
    match frame {
        BridgeToServer::BleResponse(answer) => {
            let mut buf = Vec::with_capacity(128);
            answer.write_frame_json(&mut buf);
            // Only UTF-8 is written; the fallback is never taken.
            String::from_utf8(buf).unwrap_or_else(|_| frame.to_json())
        }
        other => other.to_json(),
    }
}

/// At most this many events (frames read, answers, control messages) are handled in one turn
/// of a connection's loop before the frames they produced are flushed: a flood of incoming
/// frames cannot hold answers back for long.
const MAX_BATCH: usize = 64;

/// One thing for a connection's loop to handle.
enum Event {
    /// A frame (or the end of the stream) from the server.
    Incoming(Option<Result<Message, WsError>>),
    /// An answer or progress frame of a handler that did not finish at once.
    Answer(BridgeToServer),
    /// A message from the application (`report_status`, `release`, `shutdown`).
    Control(Option<Control>),
}

/// The event ready now, if any, taken in a fixed order: the socket first (it carries the
/// writes), then the answers of handlers in their own tasks, then the application's messages;
/// `channels_first` puts the socket last, so that a flood of incoming frames cannot keep the
/// other two waiting beyond one batch.
///
/// Each source is polled with `cx`, this task's own context: one that is not ready wakes the
/// task when it becomes ready, so `Pending` here means the task will be woken for the next
/// event (see [`next_event`]). A fixed order rather than `select!`'s random one: no random
/// number per poll, and `channels_first` gives the fairness instead.
///
/// `answers` is polled only when something can be in it or come into it: a sender other than
/// the loop's own (`answers_tx`) exists — a handler in a task of its own, or a [`Progress`]
/// kept — or a message waits that a sender since dropped left behind. Otherwise, with every
/// write answered in place, nothing can come until the loop itself starts another handler,
/// and polling (and registering the waker on) an empty channel each turn is wasted.
fn poll_event<S>(
    socket: &mut S,
    answers: &mut mpsc::UnboundedReceiver<BridgeToServer>,
    answers_tx: &mpsc::UnboundedSender<BridgeToServer>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    channels_first: bool,
    cx: &mut Context<'_>,
) -> Poll<Event>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    if !channels_first && let Poll::Ready(incoming) = socket.poll_next_unpin(cx) {
        return Poll::Ready(Event::Incoming(incoming));
    }
    // A sender's message is queued before the sender count drops (`Release` on the drop,
    // `Acquire` on the count): a count of one and an empty channel mean nothing is queued.
    let answers_may_come = answers_tx.strong_count() > 1 || !answers.is_empty();
    // The loop holds a sender of `answers`: it never ends, and `None` cannot come.
    if answers_may_come && let Poll::Ready(Some(answer)) = answers.poll_recv(cx) {
        return Poll::Ready(Event::Answer(answer));
    }
    if let Poll::Ready(message) = control.poll_recv(cx) {
        return Poll::Ready(Event::Control(message));
    }
    if channels_first && let Poll::Ready(incoming) = socket.poll_next_unpin(cx) {
        return Poll::Ready(Event::Incoming(incoming));
    }
    Poll::Pending
}

/// Waits for the next event of a connection.
///
/// `registered`: in this same poll of the task, every source was just polled with the
/// task's context and none was ready ([`poll_event`] returned `Pending`), and nothing has
/// waited since. Each source then holds the task's waker, and an event arriving since has
/// already woken the task (a task woken while it runs is polled again), so the first poll
/// returns `Pending` without polling them all a second time. At one command in flight this
/// saves one of the three polls of the sources per command (the one that finds the write,
/// the one that finds nothing more, and this one).
async fn next_event<S>(
    socket: &mut S,
    answers: &mut mpsc::UnboundedReceiver<BridgeToServer>,
    answers_tx: &mpsc::UnboundedSender<BridgeToServer>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    channels_first: bool,
    registered: bool,
) -> Event
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut skip = registered;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut skip) {
            return Poll::Pending;
        }
        poll_event(socket, answers, answers_tx, control, channels_first, cx)
    })
    .await
}

/// Handles one `ble_write`: its handler's future is polled once here, and if that finished
/// it, the answer is returned to be written at once, without a task or a channel; otherwise
/// the future goes on in a task of its own, which sends the answer through `answers`.
///
/// The first poll is made with a no-op waker: a future that is not ready is polled again at
/// once by its task, which registers the task's waker (a future must wake the waker of its
/// latest poll). A handler that panics in that first poll is caught as a task would catch
/// it: its write gets no answer (the server times it out) and the connection goes on.
fn start_write(
    handler: &Arc<dyn BleHandler>,
    write: BleWrite,
    answers: &mpsc::UnboundedSender<BridgeToServer>,
) -> Option<BridgeToServer> {
    let mut answer = Box::pin(answer_write(Arc::clone(handler), write, answers.clone()));
    let mut cx = Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| answer.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(frame)) => Some(frame),
        Ok(Poll::Pending) => {
            let answers = answers.clone();
            tokio::spawn(async move {
                let _ = answers.send(answer.await);
            });
            None
        }
        Err(_) => {
            warn!("a BLE handler panicked; its write is not answered");
            None
        }
    }
}

/// Runs the handler on one `ble_write` and makes its `ble_response`; `progress` frames go
/// through `frames`.
async fn answer_write(
    handler: Arc<dyn BleHandler>,
    write: BleWrite,
    frames: mpsc::UnboundedSender<BridgeToServer>,
) -> BridgeToServer {
    let progress = Progress {
        request_id: write.request_id,
        device_id: write.device_id.clone(),
        frames: Some(frames),
    };
    let outcome = match handler.write_with_progress(&write, &progress).await {
        Ok(payload) => BleOutcome::Payload(payload),
        Err(code) => BleOutcome::Error(code),
    };
    BridgeToServer::BleResponse(BleResponse {
        request_id: write.request_id,
        device_id: write.device_id,
        outcome,
    })
}

/// Serves one connection (a WebSocket, or a session over MQTT) until it ends.
///
/// Each turn of the loop waits for one event, then handles every other event that is ready
/// at that moment (up to [`MAX_BATCH`]) — typically the other frames of the same read —
/// queueing the frames to send in the socket's write buffer, and flushes them once: a batch
/// of writes answered at once is answered with one write to the socket.
async fn serve<S>(
    mut socket: S,
    handler: &Arc<dyn BleHandler>,
    held: &mut Held,
    control: &mut mpsc::UnboundedReceiver<Control>,
    errors: &broadcast::Sender<ErrorFrame>,
) -> Ended
where
    S: Stream<Item = Result<Message, WsError>> + FrameSink,
{
    // Re-announce the last known link state of every held device.
    let statuses: Vec<BleStatus> = held.devices.values().flatten().cloned().collect();
    if !statuses.is_empty() {
        for status in statuses {
            if let Err(e) = feed(&mut socket, &BridgeToServer::BleStatus(status)).await {
                return Ended::Lost(e);
            }
        }
        if let Err(e) = socket.flush().await {
            return Ended::Lost(e.to_string());
        }
    }
    // Answers of handlers in flight on this connection, and every `ble_progress`. When the
    // connection ends, this receiver is dropped, and answers to writes the server has already
    // failed are dropped.
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<BridgeToServer>();
    // The last batch was cut at `MAX_BATCH`: the next one looks at the channels first.
    let mut channels_first = false;
    // The last batch ended with every source polled and none ready, and nothing waited
    // since (`next_event`).
    let mut registered = false;
    loop {
        let mut event = next_event(
            &mut socket,
            &mut answers,
            &answers_tx,
            control,
            channels_first,
            registered,
        )
        .await;
        channels_first = false;
        registered = false;
        let mut handled = 0;
        // Whether frames wait in the write buffer.
        let mut fed = false;
        loop {
            let frame = match event {
                Event::Incoming(incoming) => {
                    let message = match incoming {
                        None => return Ended::Lost("server closed the stream".into()),
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        Some(Ok(m)) => m,
                    };
                    match message {
                        Message::Text(text) => match ServerToBridge::decode_fast(text.as_str()) {
                            Ok(ServerToBridge::BleWrite(write)) => {
                                match start_write(handler, write, &answers_tx) {
                                    Some(answer) => {
                                        // The progress it reported is ahead of its answer.
                                        // (`is_empty` first: cheaper than a `try_recv` that
                                        // finds nothing, the usual case.)
                                        while !answers.is_empty()
                                            && let Ok(frame) = answers.try_recv()
                                        {
                                            if let Err(e) = feed(&mut socket, &frame).await {
                                                return Ended::Lost(e);
                                            }
                                            fed = true;
                                        }
                                        Some(answer)
                                    }
                                    None => None,
                                }
                            }
                            Ok(ServerToBridge::Error(frame)) => {
                                warn!(code = %frame.code, message = %frame.message, "server refused a frame");
                                let _ = errors.send(frame);
                                None
                            }
                            Ok(_) => None,
                            Err(e) => {
                                warn!(error = %e, "undecodable frame from the server");
                                None
                            }
                        },
                        Message::Close(frame) => {
                            return Ended::Lost(format!("server closed the connection: {frame:?}"));
                        }
                        // Pings are answered by the WebSocket layer; nothing else is expected.
                        _ => None,
                    }
                }
                Event::Answer(answer) => Some(answer),
                Event::Control(message) => match message {
                    None | Some(Control::Shutdown) => {
                        // Sending the close frame flushes what this batch queued before it.
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "bridge shutting down".into(),
                            })))
                            .await;
                        return Ended::Shutdown;
                    }
                    Some(Control::Status(status)) => {
                        held.devices
                            .insert(status.device_id.clone(), Some(status.clone()));
                        Some(BridgeToServer::BleStatus(status))
                    }
                    Some(Control::Release(device)) => {
                        held.devices.remove(&device);
                        Some(BridgeToServer::Release(Release { device_id: device }))
                    }
                },
            };
            if let Some(frame) = frame {
                if let Err(e) = feed(&mut socket, &frame).await {
                    return Ended::Lost(e);
                }
                fed = true;
            }
            handled += 1;
            if handled == MAX_BATCH {
                channels_first = true;
                break;
            }
            // Polled with the task's own context: when nothing is ready, every source
            // holds the task's waker for the wait that follows.
            match std::future::poll_fn(|cx| {
                Poll::Ready(poll_event(
                    &mut socket,
                    &mut answers,
                    &answers_tx,
                    control,
                    false,
                    cx,
                ))
            })
            .await
            {
                Poll::Ready(next) => event = next,
                Poll::Pending => {
                    registered = true;
                    break;
                }
            }
        }
        if fed {
            // Whether the flush had to wait: the sources' wakers may have fired meanwhile
            // and been used up by that wait, so they are polled again.
            let mut waited = false;
            let flushed = std::future::poll_fn(|cx| {
                let poll = Pin::new(&mut socket).poll_flush(cx);
                waited |= poll.is_pending();
                poll
            })
            .await;
            if let Err(e) = flushed {
                return Ended::Lost(e.to_string());
            }
            registered &= !waited;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection's loop against a scripted socket that records every frame and every
    //! flush, so that what goes out in one write is visible.

    use std::sync::Mutex;

    use bridge_protocol::{DeviceConfig, DeviceType, Limits, TimeoutMs};
    use tokio::sync::oneshot;

    use super::*;

    /// What the loop did to the socket.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Sent {
        /// A frame queued: its kind and request id, such as `response r-1`.
        Frame(String),
        /// A flush: what was queued went out.
        Flush,
    }

    /// A socket whose incoming frames come from a channel and whose writes are reported on
    /// another.
    struct Scripted {
        incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        sent: mpsc::UnboundedSender<Sent>,
        flushes: Arc<Mutex<FlushGate>>,
    }

    /// While `closed`, a flush waits (as on a full socket), keeping the waker of its latest
    /// poll; the test opens it and wakes that waker.
    #[derive(Default)]
    struct FlushGate {
        closed: bool,
        waker: Option<Waker>,
    }

    impl Stream for Scripted {
        type Item = Result<Message, WsError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx)
        }
    }

    impl Sink<Message> for Scripted {
        type Error = WsError;

        fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
            let text = match &message {
                Message::Text(text) => text.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            let frame = match BridgeToServer::decode(&text, &Limits::default()) {
                Ok(BridgeToServer::BleResponse(r)) => format!("response {}", r.request_id.as_str()),
                Ok(BridgeToServer::BleProgress(p)) => {
                    format!("progress {} {:?}", p.request_id.as_str(), p.stage)
                }
                _ => text,
            };
            let _ = self.sent.send(Sent::Frame(frame));
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            let mut gate = self.flushes.lock().unwrap();
            if gate.closed {
                gate.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let _ = self.sent.send(Sent::Flush);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    impl FrameSink for Scripted {}

    fn write(request_id: &str, payload: u8) -> Message {
        let config = DeviceConfig::SMART_LOCK;
        Message::text(
            ServerToBridge::BleWrite(BleWrite {
                request_id: RequestId::new(request_id).unwrap(),
                device_id: DeviceId::new("lock-1").unwrap(),
                device_type: DeviceType::new("smart-lock").unwrap(),
                service_uuid: config.service_uuid,
                write_uuid: config.write_uuid,
                listen_uuid: config.listen_uuid,
                payload: HexPayload::from_bytes(vec![payload]),
                timeout_ms: TimeoutMs::DEFAULT,
            })
            .to_json(),
        )
    }

    /// Payload 0: waits until the test opens its gate; 1: reports `received` and
    /// `written`, then answers; 2: panics; 3: answers at once, keeping a copy of its
    /// progress handle with which a task of its own reports `written` once the test opens
    /// the gate; anything else: answers at once. Records the task each write ran on.
    struct Scripts {
        gate: Mutex<Option<oneshot::Receiver<()>>>,
        tasks: Mutex<Vec<Option<tokio::task::Id>>>,
    }

    #[async_trait]
    impl BleHandler for Scripts {
        async fn write(&self, request: &BleWrite) -> Result<HexPayload, DeviceErrorCode> {
            self.write_with_progress(request, &Progress::detached(request))
                .await
        }

        async fn write_with_progress(
            &self,
            request: &BleWrite,
            progress: &Progress,
        ) -> Result<HexPayload, DeviceErrorCode> {
            self.tasks.lock().unwrap().push(tokio::task::try_id());
            match request.payload.as_bytes() {
                [0] => {
                    progress.report(Stage::Received);
                    let gate = self.gate.lock().unwrap().take();
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                }
                [1] => {
                    progress.report(Stage::Received);
                    progress.report(Stage::Written);
                }
                [2] => panic!("a handler that panics"),
                [3] => {
                    let kept = progress.clone();
                    let gate = self.gate.lock().unwrap().take();
                    tokio::spawn(async move {
                        if let Some(gate) = gate {
                            let _ = gate.await;
                        }
                        kept.report(Stage::Written);
                    });
                }
                _ => {}
            }
            Ok(request.payload.clone())
        }
    }

    struct Running {
        frames: mpsc::UnboundedSender<Result<Message, WsError>>,
        sent: mpsc::UnboundedReceiver<Sent>,
        control: mpsc::UnboundedSender<Control>,
        handler: Arc<Scripts>,
        gate: Option<oneshot::Sender<()>>,
        flushes: Arc<Mutex<FlushGate>>,
        serve: JoinHandle<Ended>,
    }

    impl Running {
        /// Serves a scripted connection whose first frames are `first`, all there before
        /// the loop starts.
        fn start(first: impl IntoIterator<Item = Message>) -> Self {
            let (frames, incoming) = mpsc::unbounded_channel();
            for frame in first {
                frames.send(Ok(frame)).unwrap();
            }
            let (sent_tx, sent) = mpsc::unbounded_channel();
            let (control, mut control_rx) = mpsc::unbounded_channel();
            let (gate_tx, gate_rx) = oneshot::channel();
            let handler = Arc::new(Scripts {
                gate: Mutex::new(Some(gate_rx)),
                tasks: Mutex::new(Vec::new()),
            });
            let dyn_handler: Arc<dyn BleHandler> = handler.clone();
            let flushes = Arc::new(Mutex::new(FlushGate::default()));
            let socket_flushes = Arc::clone(&flushes);
            let serve = tokio::spawn(async move {
                let (errors, _) = broadcast::channel(4);
                let mut held = Held {
                    devices: BTreeMap::new(),
                };
                let socket = Scripted {
                    incoming,
                    sent: sent_tx,
                    flushes: socket_flushes,
                };
                serve(socket, &dyn_handler, &mut held, &mut control_rx, &errors).await
            });
            Self {
                frames,
                sent,
                control,
                handler,
                gate: Some(gate_tx),
                flushes,
                serve,
            }
        }

        /// The next `n` things the loop did to the socket. A loop that stopped for good
        /// fails the test here rather than hanging it.
        async fn next(&mut self, n: usize) -> Vec<Sent> {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let sent =
                    tokio::time::timeout(std::time::Duration::from_secs(20), self.sent.recv())
                        .await
                        .unwrap_or_else(|_| panic!("the loop stopped after {out:?}"));
                out.push(sent.unwrap());
            }
            out
        }

        async fn shut_down(self) {
            self.control.send(Control::Shutdown).unwrap();
            assert!(matches!(self.serve.await.unwrap(), Ended::Shutdown));
        }
    }

    fn frame(text: &str) -> Sent {
        Sent::Frame(text.to_owned())
    }

    #[tokio::test]
    async fn writes_answered_at_once_are_answered_in_place_and_flushed_together() {
        let mut running = Running::start([write("r-1", 7), write("r-2", 8), write("r-3", 9)]);
        assert_eq!(
            running.next(4).await,
            [
                frame("response r-1"),
                frame("response r-2"),
                frame("response r-3"),
                Sent::Flush
            ],
            "the three writes read together are answered with one flush"
        );
        let serve_task = running.serve.id();
        assert_eq!(
            *running.handler.tasks.lock().unwrap(),
            [Some(serve_task); 3],
            "a handler that finishes at once runs on the connection's task, not a task of its own"
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn progress_of_a_handler_answered_in_place_goes_out_before_its_answer() {
        let mut running = Running::start([write("r-1", 1), write("r-2", 7)]);
        assert_eq!(
            running.next(5).await,
            [
                frame("progress r-1 Received"),
                frame("progress r-1 Written"),
                frame("response r-1"),
                frame("response r-2"),
                Sent::Flush
            ]
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn a_slow_handler_goes_on_in_its_own_task_while_the_others_are_answered() {
        let mut running = Running::start([write("r-1", 0), write("r-2", 7), write("r-3", 1)]);
        assert_eq!(
            running.next(6).await,
            [
                frame("progress r-1 Received"),
                frame("response r-2"),
                frame("progress r-3 Received"),
                frame("progress r-3 Written"),
                frame("response r-3"),
                Sent::Flush
            ],
            "the slow write's progress, then the writes answered at once, in one flush"
        );
        // More writes while the slow one still runs are answered too.
        running.frames.send(Ok(write("r-4", 9))).unwrap();
        assert_eq!(running.next(2).await, [frame("response r-4"), Sent::Flush]);
        running.gate.take().unwrap().send(()).unwrap();
        assert_eq!(
            running.next(2).await,
            [frame("response r-1"), Sent::Flush],
            "the slow write is answered when its handler finishes"
        );
        let tasks = running.handler.tasks.lock().unwrap().clone();
        let serve_task = Some(running.serve.id());
        assert_eq!(tasks.len(), 4);
        assert!(
            tasks.iter().all(|task| *task == serve_task),
            "every handler was first polled in place: {tasks:?}"
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn a_handler_that_panics_leaves_its_write_unanswered_and_the_connection_up() {
        let mut running = Running::start([write("r-1", 2), write("r-2", 7)]);
        assert_eq!(running.next(2).await, [frame("response r-2"), Sent::Flush]);
        running.frames.send(Ok(write("r-3", 8))).unwrap();
        assert_eq!(running.next(2).await, [frame("response r-3"), Sent::Flush]);
        running.shut_down().await;
    }

    #[tokio::test]
    async fn a_flood_of_frames_is_flushed_every_max_batch_frames() {
        let writes: Vec<_> = (0..=MAX_BATCH)
            .map(|i| write(&format!("r-{i}"), 7))
            .collect();
        let mut running = Running::start(writes);
        let mut expected: Vec<Sent> = (0..MAX_BATCH)
            .map(|i| frame(&format!("response r-{i}")))
            .collect();
        expected.push(Sent::Flush);
        expected.push(frame(&format!("response r-{MAX_BATCH}")));
        expected.push(Sent::Flush);
        assert_eq!(running.next(MAX_BATCH + 3).await, expected);
        running.shut_down().await;
    }

    #[tokio::test]
    async fn control_messages_are_sent_with_the_answers_of_the_same_turn() {
        let mut running = Running::start([write("r-1", 7)]);
        let device = DeviceId::new("lock-2").unwrap();
        running.control.send(Control::Release(device)).unwrap();
        let sent = running.next(3).await;
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2], Sent::Flush, "{sent:?}");
        assert!(sent.contains(&frame("response r-1")), "{sent:?}");
        assert!(
            sent.contains(&frame(r#"{"type":"release","deviceId":"lock-2"}"#)),
            "{sent:?}"
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn after_a_batch_cut_short_by_a_flood_the_channels_are_looked_at_first() {
        let writes: Vec<_> = (0..2 * MAX_BATCH)
            .map(|i| write(&format!("r-{i}"), 7))
            .collect();
        let mut running = Running::start(writes);
        let device = DeviceId::new("lock-2").unwrap();
        running.control.send(Control::Release(device)).unwrap();
        let sent = running.next(MAX_BATCH + 3).await;
        assert_eq!(
            sent[MAX_BATCH - 1],
            frame(&format!("response r-{}", MAX_BATCH - 1))
        );
        assert_eq!(sent[MAX_BATCH], Sent::Flush);
        assert_eq!(
            sent[MAX_BATCH + 1..],
            [
                frame(r#"{"type":"release","deviceId":"lock-2"}"#),
                frame(&format!("response r-{MAX_BATCH}")),
            ],
            "the application's message waits one batch, not the whole flood"
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn a_write_that_comes_while_a_flush_waits_is_answered_after_it() {
        let mut running = Running::start([]);
        running.flushes.lock().unwrap().closed = true;
        running.frames.send(Ok(write("r-1", 7))).unwrap();
        assert_eq!(running.next(1).await, [frame("response r-1")]);
        // The loop waits on its flush. A write comes meanwhile: it wakes the loop, which
        // finds the flush still waiting.
        running.frames.send(Ok(write("r-2", 8))).unwrap();
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let waker = {
            let mut gate = running.flushes.lock().unwrap();
            gate.closed = false;
            gate.waker.take()
        };
        waker.expect("the flush waited").wake();
        assert_eq!(
            running.next(3).await,
            [Sent::Flush, frame("response r-2"), Sent::Flush],
            "the write that came during the flush is read once the flush is done"
        );
        running.shut_down().await;
    }

    #[tokio::test]
    async fn progress_reported_after_the_answer_through_a_kept_handle_is_sent() {
        let mut running = Running::start([write("r-1", 3)]);
        assert_eq!(running.next(2).await, [frame("response r-1"), Sent::Flush]);
        running.gate.take().unwrap().send(()).unwrap();
        assert_eq!(
            running.next(2).await,
            [frame("progress r-1 Written"), Sent::Flush],
            "the loop still listens for frames while a copy of a progress handle lives"
        );
        running.shut_down().await;
    }
}

//! One task per connection: read, answer, write, keep alive. Generic over any WebSocket
//! stream of tungstenite messages.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bridge_protocol::{
    Ack, BridgeToServer, ConnectionId, DeviceId, ErrorCode, LastDeviceId, ProtocolError, RequestId,
    Role, ServerToBridge, ServerToUser, UserToServer,
};
use futures_util::task::waker_ref;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use crate::hub::Inner;
use crate::in_flight::Refused;
use crate::outbox::{CloseRequest, Entry, Outbox};
use crate::rate::{Admission, TokenBucket};
use crate::state::{ClaimRefused, RegisterRefused, SubscribeRefused};
use crate::{
    ApplicationFrame, CloseReason, ConnectionInfo, Frame, HubEvent, InFlight, Intercepted,
};

/// `{"type":"pong"}`, the same for bridges and users.
const PONG: Frame = Frame::from_static(r#"{"type":"pong"}"#);

const TOO_LARGE: CloseRequest = CloseRequest {
    reason: CloseReason::FrameTooLarge,
    code: Some(1009),
    text: "frame too large",
};

/// Unregisters the connection when the pump ends, however it ends (even if the serving
/// future is dropped).
struct Registration<'a> {
    inner: &'a Inner,
    id: ConnectionId,
    reason: CloseReason,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.inner.unregister(self.id, self.reason);
    }
}

pub(crate) async fn run<S>(
    inner: &Arc<Inner>,
    id: ConnectionId,
    socket: S,
    info: ConnectionInfo,
) -> CloseReason
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    let config = &inner.config;
    let make_outbox =
        |user_commands| Arc::new(Outbox::new(id, config.outbound_queue_frames, user_commands));
    let registered = inner.mutate(|state, events| {
        let registered = state.register(
            make_outbox,
            info.role(),
            info.user_id(),
            info.connect_devices(),
            config.max_held_devices,
            config.max_connections_per_user,
            events,
        );
        if registered.is_ok() {
            // Counted under the state lock, so that a shutdown that sees this connection
            // also waits for it.
            inner.connection_started();
        }
        registered
    });
    let outbox = match registered {
        Ok(outbox) => outbox,
        Err(refused) => {
            let close = match refused {
                RegisterRefused::NotAccepting => CloseRequest {
                    reason: CloseReason::Shutdown,
                    code: Some(1001),
                    text: "server shutting down",
                },
                RegisterRefused::TooManyConnections => {
                    tracing::info!("user has as many connections as it may; closing with 1008");
                    CloseRequest {
                        reason: CloseReason::TooManyConnections,
                        code: Some(1008),
                        text: "too many connections for this user",
                    }
                }
            };
            let outbox = Arc::new(Outbox::new(id, 1, None));
            return Pump::new(inner, &info, &outbox, socket).close(close).await;
        }
    };
    let mut pump = Pump::new(inner, &info, &outbox, socket);
    let mut registration = Registration {
        inner,
        id,
        reason: CloseReason::TransportError,
    };
    tracing::debug!("connection registered");

    if info.role() == Role::User {
        let mut devices = inner.subscriptions.initial_subscriptions(&info).await;
        devices.sort();
        devices.dedup();
        let mut state = inner.state.write();
        for device in &devices {
            if state
                .subscribe(id, device, None, config.max_subscriptions)
                .is_err()
            {
                tracing::warn!("subscription source gave more devices than the limit");
                break;
            }
        }
    }

    let reason = pump.run().await;
    tracing::debug!(reason = reason.as_str(), "connection ended");
    registration.reason = reason;
    reason
}

/// What woke the pump.
enum Step {
    Incoming(Message),
    Keepalive,
    Close(CloseRequest),
    Ended(CloseReason),
}

impl<'a, S> Pump<'a, S> {
    fn new(inner: &'a Inner, info: &'a ConnectionInfo, outbox: &'a Arc<Outbox>, socket: S) -> Self {
        Self {
            inner,
            info,
            outbox,
            socket,
            bucket: TokenBucket::new(&inner.config.rate_limit, Instant::now()),
            last_seen: Instant::now(),
            keepalive_armed: false,
            read_pending: false,
            ping_due: false,
            unflushed: false,
            flush_deferred: false,
            batch_frames: 0,
            // A new connection's first wait that gathers nothing is enough to take it for
            // one that gets its frames one at a time (see `LONE_BATCHES`): a phone of one
            // device may get only a few commands while connected, and waiting a turn before
            // each of its first four flushes was one more poll of its pump per frame for
            // nothing. A busy connection pays at most its next `FLUSH_AT_ONCE` batches
            // flushed at once, fewer if one of them holds several frames.
            lone_batches: LONE_BATCHES - 1,
            flush_at_once: 0,
            incoming_in_a_row: 0,
            last_device: LastDeviceId::default(),
        }
    }
}

struct Pump<'a, S> {
    inner: &'a Inner,
    info: &'a ConnectionInfo,
    outbox: &'a Arc<Outbox>,
    socket: S,
    bucket: TokenBucket,
    /// When anything last arrived from the peer.
    last_seen: Instant,
    /// Whether the keepalive `Sleep` was polled since it was last reset, with the waker
    /// still registered with the outbox: until it fires (or the waker changes), polling it
    /// again only re-registers the same waker (see [`Pump::poll_step`]).
    keepalive_armed: bool,
    /// Whether the socket's last `poll_next` answered `Pending` (with the outbox's read
    /// waker): it is not polled again until that waker is woken.
    read_pending: bool,
    ping_due: bool,
    unflushed: bool,
    /// Whether this batch's flush already waited one turn of the scheduler (see
    /// [`Pump::poll_write`]).
    flush_deferred: bool,
    /// Frames in the batch being written (saturating).
    batch_frames: u8,
    /// Deferred batches of one frame in a row (up to [`LONE_BATCHES`]).
    lone_batches: u8,
    /// Batches still to flush without the deferral (see [`FLUSH_AT_ONCE`]).
    flush_at_once: u8,
    /// Incoming frames handled since the pump last waited for the socket or yielded (see
    /// [`PIPELINE_IN_FLIGHT`]).
    incoming_in_a_row: usize,
    /// The device this connection's last answer named: the next answer naming it shares
    /// its id (a phone of one device names the same one every time), where the decoder's
    /// per-thread cache of recent ids misses once many connections take turns.
    last_device: LastDeviceId,
}

/// At most this many commands in flight on a connection, its pump lets the runtime run the
/// tasks its incoming frames woke after every [`INCOMING_PER_TURN`] frames, before it reads
/// the next one.
///
/// A bridge answers a batch of writes with a batch of answers. Read in one go, each answer
/// wakes the caller of its command, whose next command is queued only once the pump yields:
/// with few commands in flight (one device, 16 slots), the whole batch of next writes then
/// went out together once the last answer was handled, and the phone waited for it, idle,
/// while the server worked through the batch, then the server waited, idle, for the next
/// batch of answers. Server and phone took turns, each sleeping and waking once per batch
/// (the server core was about 55 % busy at 16 in flight). Yielding after every two answers
/// lets the first callers queue their next writes, which the pump's next turn flushes while
/// the rest of the batch is still to be handled: the phone works on them meanwhile, and
/// neither side runs dry (the server core 98 % busy, about 2.4× the round trips per second
/// and 22–24 % less CPU per command, BENCHMARKS.md, issue 11, 2026-12-01). With more than
/// this many in flight the phone has work left anyway, and a yield per two frames would
/// only split the batches into more system calls (about 20 % slower at 256 in flight), so
/// the pump reads on. A connection that gets one frame per wake-up (many bridges of one
/// device each, one command in flight) never reaches two in a row and never yields.
///
/// The flush after such a yield still waits its own turn of the scheduler (see
/// [`Pump::poll_write`]), though the callers woken by the answers have run by then:
/// flushing at once after the yield made K=256 with 16 slots 15 % slower (2026-12-01),
/// most likely because commands waiting for a device slot those answers freed queue their
/// frames in that turn and would otherwise miss the batch.
const PIPELINE_IN_FLIGHT: u32 = 32;

/// Incoming frames a pump handles in a row before it yields, while at most
/// [`PIPELINE_IN_FLIGHT`] commands are in flight on its connection (1 to 3 measured alike; 8
/// kept the turns).
const INCOMING_PER_TURN: usize = 2;

/// Deferred batches of one frame in a row (the wait gathered no other frame) after which a
/// connection flushes its next [`FLUSH_AT_ONCE`] batches at once.
///
/// The wait pays when several tasks queue frames for the same connection at the same moment
/// (one bridge holding the devices of many commands in flight); when a connection gets one
/// frame at a time (many bridges of one device each) it is one more poll of the pump per
/// frame, and it delays the write. A busy connection's wait also comes up empty now and then
/// (a batch of one): with two in a row, one bridge serving the commands of 16 HTTP clients
/// wrote 0.43 instead of 0.36 `sendto` per command; with four, as many as always waiting.
const LONE_BATCHES: u8 = 4;

/// Batches flushed without waiting after [`LONE_BATCHES`], unless one of them holds several
/// frames (the traffic is bursty again); the wait after them finds out whether it still
/// gathers nothing.
const FLUSH_AT_ONCE: u8 = 8;

impl<S> Pump<'_, S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    async fn run(&mut self) -> CloseReason {
        let config = &self.inner.config;
        let first_tick = config.ping_interval.min(config.pong_timeout);
        let mut keepalive = pin!(tokio::time::sleep(first_tick));
        loop {
            let step = poll_fn(|cx| self.poll_step(cx, keepalive.as_mut())).await;
            match step {
                Step::Incoming(message) => {
                    if let Some(request) = self.handle(message).await {
                        return self.close(request).await;
                    }
                    self.incoming_in_a_row += 1;
                    if self.incoming_in_a_row >= INCOMING_PER_TURN
                        && self.outbox.in_flight() <= PIPELINE_IN_FLIGHT
                    {
                        // See `PIPELINE_IN_FLIGHT`: the tasks these frames woke queue their
                        // next frames, which go out before the rest of the batch is read.
                        self.incoming_in_a_row = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Step::Keepalive => {
                    let now = Instant::now();
                    if self
                        .info
                        .expires_at()
                        .is_some_and(|exp| SystemTime::now() >= exp)
                    {
                        return self
                            .close(CloseRequest {
                                reason: CloseReason::TokenExpired,
                                code: Some(1008),
                                text: "token expired",
                            })
                            .await;
                    }
                    let silent_until = self.last_seen + config.pong_timeout;
                    if now >= silent_until {
                        tracing::debug!("no pong within the keepalive timeout");
                        return self
                            .close(CloseRequest {
                                reason: CloseReason::KeepaliveTimeout,
                                code: Some(1001),
                                text: "keepalive timeout",
                            })
                            .await;
                    }
                    self.ping_due = true;
                    keepalive
                        .as_mut()
                        .reset((now + config.ping_interval).min(silent_until));
                    self.keepalive_armed = false;
                }
                Step::Close(request) => return self.close(request).await,
                Step::Ended(reason) => return reason,
            }
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>, keepalive: Pin<&mut Sleep>) -> Poll<Step> {
        // One lock: the waker, a close request and the first entry of the queue.
        let taken = self.outbox.take(cx.waker());
        if let Some(request) = taken.close {
            return Poll::Ready(Step::Close(request));
        }
        if let Err(error) = self.poll_write(cx, taken.entry, taken.more) {
            tracing::debug!(%error, "write failed");
            return Poll::Ready(Step::Ended(CloseReason::TransportError));
        }
        // The timer keeps the waker it was polled with until it fires: it needs polling
        // again only once reset, once fired, or under another waker (the outbox just told
        // whether the waker is the one registered before). Polling it on every wake-up
        // re-registered the same waker with the timer each time.
        if !self.keepalive_armed || taken.waker_changed || keepalive.is_elapsed() {
            if keepalive.poll(cx).is_ready() {
                return Poll::Ready(Step::Keepalive);
            }
            self.keepalive_armed = true;
        }
        // The reading side is polled with the outbox's own waker, which notes that it woke:
        // a wake-up for frames to write (most of them, with many connections) then skips
        // the read that would find nothing (down the WebSocket, the transport layers and
        // the runtime's readiness check).
        if self.read_pending && !taken.read_woken {
            self.incoming_in_a_row = 0;
            return Poll::Pending;
        }
        let read_waker = waker_ref(self.outbox);
        let mut read_cx = Context::from_waker(&read_waker);
        let polled = Pin::new(&mut self.socket).poll_next(&mut read_cx);
        self.read_pending = polled.is_pending();
        match polled {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Step::Incoming(message)),
            Poll::Ready(Some(Err(WsError::Capacity(_)))) => Poll::Ready(Step::Close(TOO_LARGE)),
            Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None) => {
                Poll::Ready(Step::Ended(CloseReason::ClientClosed))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "read failed");
                Poll::Ready(Step::Ended(CloseReason::TransportError))
            }
            Poll::Pending => {
                self.incoming_in_a_row = 0;
                Poll::Pending
            }
        }
    }

    /// Moves a due ping and the queued frames (`first`, taken from the queue, then the
    /// others while `more`) into the socket while it takes them, then flushes. Never waits:
    /// an entry the socket does not take goes back to the front of the queue, and a queue
    /// that overflows closes the connection.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        mut first: Option<Entry>,
        mut more: bool,
    ) -> Result<(), WsError> {
        while self.ping_due || first.is_some() || more {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => {
                    if let Some(entry) = first {
                        self.outbox.put_back(entry);
                    }
                    return Ok(());
                }
            }
            let message = if self.ping_due {
                self.ping_due = false;
                Message::Ping(Bytes::new())
            } else {
                let entry = if let Some(entry) = first.take() {
                    entry
                } else {
                    let (entry, left) = self.outbox.pop();
                    more = left;
                    match entry {
                        Some(entry) => entry,
                        None => break,
                    }
                };
                match entry {
                    Entry::Frame(frame) => frame.into_message(),
                    Entry::Status(device) => {
                        let overlay = self.inner.overlay.get().map(AsRef::as_ref);
                        self.inner
                            .state
                            .read()
                            .status_frame(&device, overlay)
                            .into_message()
                    }
                }
            };
            Pin::new(&mut self.socket).start_send(message)?;
            self.unflushed = true;
            self.batch_frames = self.batch_frames.saturating_add(1);
        }
        if self.unflushed {
            if !self.flush_deferred {
                if self.flush_at_once == 0 {
                    // One turn of the scheduler before the system call: the task that queued
                    // this frame woke the pump, which the runtime polls next (its LIFO slot),
                    // so flushing now would write each frame alone. Waking itself puts the
                    // pump at the back of the run queue: the other tasks that are ready (the
                    // callers of the other commands in flight) queue their frames first, and
                    // the next poll writes them all with one flush.
                    self.flush_deferred = true;
                    cx.waker().wake_by_ref();
                    return Ok(());
                }
                self.flush_at_once -= 1;
            }
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    if self.batch_frames > 1 {
                        self.lone_batches = 0;
                        self.flush_at_once = 0;
                    } else if self.flush_deferred {
                        self.lone_batches = (self.lone_batches + 1).min(LONE_BATCHES);
                        if self.lone_batches == LONE_BATCHES {
                            // This connection gets its frames one at a time: the next
                            // batches go out at once.
                            self.flush_at_once = FLUSH_AT_ONCE;
                        }
                    }
                    self.batch_frames = 0;
                    self.unflushed = false;
                    self.flush_deferred = false;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Sends a close frame (unless the request says to just drop the transport), then reads
    /// until the peer's answer or the end of the stream, bounded by the close timeout:
    /// closing a socket with unread data makes the kernel reset it, and the peer could lose
    /// the close frame.
    async fn close(&mut self, request: CloseRequest) -> CloseReason {
        if let Some(code) = request.code {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(request.text),
            };
            let socket = &mut self.socket;
            let handshake = async move {
                if socket.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = socket.next().await {}
            };
            if tokio::time::timeout(self.inner.config.close_timeout, handshake)
                .await
                .is_err()
            {
                tracing::debug!("peer did not finish the close handshake in time");
            }
        }
        request.reason
    }

    /// Queues an answer on this connection. A peer that does not read its own answers
    /// overflows its queue like any slow consumer, and is counted as one.
    fn push(&self, frame: Frame) {
        self.inner.state.read().deliver(self.outbox, frame);
    }

    /// Answers a refused frame with its error frame.
    fn reject(&self, error: &ProtocolError) {
        let frame = error.to_error_frame();
        let code = frame.code;
        let frame = match self.info.role() {
            Role::Bridge => Frame::from(ServerToBridge::Error(frame)),
            _ => Frame::from(ServerToUser::Error(frame)),
        };
        self.push(frame);
        self.inner.emit(vec![HubEvent::FrameRejected {
            connection: self.outbox.id,
            code,
        }]);
    }

    /// Takes a token for one incoming frame, arrived at `now`. `Err` closes the connection.
    fn admit(&mut self, now: Instant) -> Result<bool, CloseRequest> {
        match self.bucket.admit(&self.inner.config.rate_limit, now) {
            Admission::Accept => Ok(true),
            Admission::Refuse => Ok(false),
            Admission::Close => Err(CloseRequest {
                reason: CloseReason::RateLimited,
                code: Some(1008),
                text: "rate limit exceeded",
            }),
        }
    }

    /// Handles one incoming message; `Some` closes the connection.
    async fn handle(&mut self, message: Message) -> Option<CloseRequest> {
        // One reading of the clock per frame, for the keepalive and the rate bucket alike.
        let now = Instant::now();
        self.last_seen = now;
        let max = self.inner.config.max_frame_bytes;
        match message {
            Message::Text(text) => {
                if text.len() > max {
                    return Some(TOO_LARGE);
                }
                match self.admit(now) {
                    Err(close) => return Some(close),
                    Ok(false) => {
                        let request_id = self.request_id_of(text.as_str());
                        self.reject(&rate_limited().with_request_id(request_id));
                    }
                    Ok(true) => self.dispatch(text.as_str()).await,
                }
            }
            Message::Binary(bytes) => {
                if bytes.len() > max {
                    return Some(TOO_LARGE);
                }
                match self.admit(now) {
                    Err(close) => return Some(close),
                    Ok(false) => self.reject(&rate_limited()),
                    Ok(true) => self.reject(&ProtocolError::binary_frame()),
                }
            }
            // The WebSocket layer answers pings itself; they still cost a token.
            Message::Ping(_) => {
                if let Err(close) = self.admit(now) {
                    return Some(close);
                }
            }
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
        None
    }

    /// The `requestId` of a frame that is refused without being served, so that the error
    /// frame can carry it (PROTOCOL.md 3.5). Only refused frames are decoded for this, and a
    /// connection gets only `max_refused` of them.
    fn request_id_of(&self, text: &str) -> Option<RequestId> {
        let limits = &self.inner.config.protocol_limits;
        match self.info.role() {
            Role::Bridge => match BridgeToServer::decode(text, limits) {
                Ok(BridgeToServer::BleResponse(response)) => Some(response.request_id),
                Ok(BridgeToServer::BleProgress(progress)) => Some(progress.request_id),
                Ok(_) => None,
                Err(error) => error.request_id,
            },
            _ => match UserToServer::decode(text, limits) {
                Ok(UserToServer::Subscribe(c) | UserToServer::Unsubscribe(c)) => Some(c.request_id),
                Ok(UserToServer::Command(command)) => Some(command.request_id),
                Ok(_) => None,
                Err(error) => error.request_id,
            },
        }
    }

    async fn dispatch(&mut self, text: &str) {
        let limits = &self.inner.config.protocol_limits;
        match self.info.role() {
            Role::Bridge => {
                match BridgeToServer::decode_on_connection(text, limits, &mut self.last_device) {
                    Err(error) => self.refused(text, &error).await,
                    Ok(frame) => self.bridge_frame(frame).await,
                }
            }
            _ => match UserToServer::decode(text, limits) {
                Err(error) => self.refused(text, &error).await,
                Ok(frame) => self.user_frame(frame).await,
            },
        }
    }

    /// A frame the decoder refused: an `unknown_type` whose `type` the application
    /// registered goes to the application's handler; anything else is answered `error`.
    async fn refused(&mut self, text: &str, error: &ProtocolError) {
        if error.code == ErrorCode::UnknownType
            && let Some(application) = &self.inner.application
            && let Some(ty) = bridge_protocol::decode::frame_type(text)
            && application.types.contains(ty.as_ref())
        {
            let frame = ApplicationFrame {
                connection: self.outbox.id,
                role: self.info.role(),
                user_id: self.info.user_id().clone(),
                frame_type: ty.into_owned(),
                text: text.to_owned(),
            };
            application.handler.on_frame(frame).await;
            return;
        }
        self.reject(error);
    }

    async fn bridge_frame(&mut self, frame: BridgeToServer) {
        let id = self.outbox.id;
        match frame {
            BridgeToServer::Ping => self.push(PONG),
            BridgeToServer::BleResponse(response) => {
                // Matched right here, on this connection's task: no channel, no other task.
                let answered = match self.inner.interceptor.get() {
                    None => self.inner.responses.on_response(id, response),
                    Some(interceptor) => match interceptor.intercept(id, response) {
                        Intercepted::Taken(answered) => answered,
                        Intercepted::Passed(response) => {
                            self.inner.responses.on_response(id, response)
                        }
                    },
                };
                if let Err(refused) = answered {
                    self.reject(
                        &ProtocolError::new(refused.code, refused.message())
                            .with_request_id(Some(refused.request_id)),
                    );
                }
            }
            BridgeToServer::BleProgress(progress) => {
                // Checked like an answer, on this connection's task; it resolves nothing.
                let intercepted = self
                    .inner
                    .interceptor
                    .get()
                    .and_then(|interceptor| interceptor.intercept_progress(id, &progress));
                let checked =
                    intercepted.unwrap_or_else(|| self.inner.responses.on_progress(id, &progress));
                if let Err(refused) = checked {
                    self.reject(
                        &ProtocolError::new(refused.code, refused.message())
                            .with_request_id(Some(refused.request_id)),
                    );
                }
            }
            BridgeToServer::BleStatus(status) => {
                let device = &status.device_id;
                let (connected, rssi) = (status.connected, status.rssi);
                let held = self
                    .inner
                    .mutate(|state, events| state.report_link(id, device, connected, rssi, events));
                if held {
                    return;
                }
                if !self.inner.access.may_bridge(self.info, device).await {
                    self.reject(&forbidden(device, "bridge", None));
                    return;
                }
                let max_held = self.inner.config.max_held_devices;
                let claimed = self.inner.mutate(|state, events| {
                    state.claim(id, device, max_held, Some((connected, rssi)), events)
                });
                if claimed == Err(ClaimRefused::TooManyDevices) {
                    self.reject(&ProtocolError::new(
                        ErrorCode::Forbidden,
                        "this connection holds as many devices as it may",
                    ));
                }
            }
            BridgeToServer::Release(release) => {
                self.inner
                    .mutate(|state, events| state.release(id, &release.device_id, events));
            }
            other => {
                tracing::debug!(?other, "bridge frame the hub does not handle");
            }
        }
    }

    async fn user_frame(&mut self, frame: UserToServer) {
        let id = self.outbox.id;
        match frame {
            UserToServer::Ping => self.push(PONG),
            UserToServer::Subscribe(change) => {
                let device = &change.device_id;
                let request_id = change.request_id;
                if !self.inner.access.may_subscribe(self.info, device).await {
                    self.reject(&forbidden(device, "watch", Some(request_id)));
                    return;
                }
                let ack = Frame::from(ServerToUser::Ack(Ack { request_id }));
                let result = self.inner.state.write().subscribe(
                    id,
                    device,
                    Some(ack),
                    self.inner.config.max_subscriptions,
                );
                if result == Err(SubscribeRefused::TooManySubscriptions) {
                    self.reject(
                        &ProtocolError::new(
                            ErrorCode::Forbidden,
                            "this connection has as many subscriptions as it may",
                        )
                        .with_request_id(Some(request_id)),
                    );
                }
            }
            UserToServer::Unsubscribe(change) => {
                self.inner.state.write().unsubscribe(id, &change.device_id);
                self.push(Frame::from(ServerToUser::Ack(Ack {
                    request_id: change.request_id,
                })));
            }
            UserToServer::Command(command) => {
                if self
                    .inner
                    .access
                    .may_command(self.info, &command.device_id)
                    .await
                {
                    let config = &self.inner.config;
                    let in_flight = match InFlight::try_begin(
                        self.outbox,
                        config.max_commands_per_connection,
                        config.max_commands_per_user,
                    ) {
                        Ok(in_flight) => in_flight,
                        Err(refused) => {
                            let message = match refused {
                                Refused::Connection => {
                                    "too many commands running on this connection; wait for their results"
                                }
                                Refused::User => {
                                    "too many commands running for this user; wait for their results"
                                }
                            };
                            self.reject(
                                &ProtocolError::new(ErrorCode::RateLimited, message)
                                    .with_request_id(Some(command.request_id)),
                            );
                            return;
                        }
                    };
                    self.inner.emit(vec![HubEvent::UserCommand {
                        connection: id,
                        user_id: self.info.user_id().clone(),
                        command,
                        in_flight,
                    }]);
                } else {
                    self.reject(&forbidden(
                        &command.device_id,
                        "command",
                        Some(command.request_id),
                    ));
                }
            }
            other => {
                tracing::debug!(?other, "user frame the hub does not handle");
            }
        }
    }
}

fn rate_limited() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::RateLimited,
        "too many frames; this one was dropped",
    )
}

fn forbidden(device: &DeviceId, what: &str, request_id: Option<RequestId>) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Forbidden,
        format!("this connection may not {what} device `{device}`"),
    )
    .with_request_id(request_id)
}

//! The [`Hub`] trait and [`LocalHub`], its in-process implementation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::{ConnectionId, DeviceId, EventType};
use futures_util::{Sink, Stream};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tracing::Instrument;
use tungstenite::{Error as WsError, Message};

use crate::application::ApplicationFrames;
use crate::outbox::CloseRequest;
use crate::state::State;
use crate::{
    AccessPolicy, ApplicationFrameHandler, CloseReason, ConnectionInfo, EventSink,
    FixedSubscriptions, Frame, GrantedAccess, HubConfig, HubEvent, IgnoreEvents, InFlight,
    NoPendingCommands, ReleaseReason, ResponseHandler, ResponseInterceptor, ResponseRefused,
    SubscriptionSource, UserId,
};

/// Why a frame could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// No bridge holds the device.
    #[error("device {0} is offline")]
    DeviceOffline(DeviceId),
    /// Bridges hold the device, but every one of them is closing.
    #[error("every bridge holding device {0} is closing")]
    NoRouteAvailable(DeviceId),
    /// The connection is closed or closing.
    #[error("connection {0} is closed")]
    ConnectionGone(ConnectionId),
}

/// A device's presence (PROTOCOL.md 2 and 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DevicePresence {
    /// The device.
    pub device_id: DeviceId,
    /// Whether at least one bridge holds it.
    pub online: bool,
    /// What the bridge the hub would route through now last reported in `ble_status`;
    /// `None` before any report and while offline.
    pub ble_connected: Option<bool>,
    /// How many bridge connections hold it.
    pub bridges: usize,
    /// The last `rssi` the bridge the hub would route through now reported; `None` before
    /// any, and while offline. With `ble_connected`, what a cluster compares across nodes.
    pub rssi: Option<i8>,
}

/// One bridge connection of this process that holds a device, as
/// [`LocalHub::device_holders`] reports it: what the bridge last said of its BLE link and
/// how many commands are in flight on it now (the counter routing reads).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderPresence {
    /// The bridge's connection.
    pub connection: ConnectionId,
    /// The bridge's user id (its token's `sub`, or `?userId=` in development mode).
    pub user_id: UserId,
    /// Its last `ble_status`'s `connected` for the device; `None` before any.
    pub ble_connected: Option<bool>,
    /// Its last reported `rssi` for the device; `None` if never reported.
    pub rssi: Option<i8>,
    /// Commands in flight on the connection (every device's, as routing counts them).
    pub commands_in_flight: u32,
}

/// What other processes (the other nodes of a cluster) know of a device's presence: the
/// summary of their holders, merged by [`LocalHub`] into the `device_status` frames it sends
/// (see [`PresenceOverlay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RemotePresence {
    /// Bridge connections holding the device elsewhere.
    pub bridges: usize,
    /// What the best of them (PROTOCOL.md 2's order: link, then rssi) last reported.
    pub ble_connected: Option<bool>,
    /// Its last reported rssi.
    pub rssi: Option<i8>,
}

impl RemotePresence {
    /// A summary of `bridges` remote holders whose best reported `ble_connected` and `rssi`.
    pub const fn new(bridges: usize, ble_connected: Option<bool>, rssi: Option<i8>) -> Self {
        Self {
            bridges,
            ble_connected,
            rssi,
        }
    }

    /// Whether these remote holders' best outranks `other`'s best by PROTOCOL.md 2's order
    /// as far as it can be compared across processes (link, then rssi); a tie does not.
    pub fn outranks(&self, ble_connected: Option<bool>, rssi: Option<i8>) -> bool {
        self.bridges > 0
            && crate::state::link_rank(self.ble_connected, self.rssi)
                > crate::state::link_rank(ble_connected, rssi)
    }

    /// `local` merged with these remote holders: online if either holds it, `bridges`
    /// summed, `ble_connected` and `rssi` of the better best holder (the local one on a
    /// tie).
    pub fn merged_with(&self, local: &DevicePresence) -> DevicePresence {
        let remote_wins =
            self.bridges > 0 && (!local.online || self.outranks(local.ble_connected, local.rssi));
        DevicePresence {
            device_id: local.device_id.clone(),
            online: local.online || self.bridges > 0,
            ble_connected: if remote_wins {
                self.ble_connected
            } else {
                local.ble_connected
            },
            bridges: local.bridges + self.bridges,
            rssi: if remote_wins { self.rssi } else { local.rssi },
        }
    }
}

/// Tells a [`LocalHub`] what other processes know of a device's presence, so that the
/// `device_status` frames it writes (on every change and in a subscription's snapshot)
/// describe the whole cluster, not this process alone. Installed once with
/// [`LocalHub::set_presence_overlay`]; when the remote view of a device changes, call
/// [`LocalHub::refresh_status`] so that its subscribers here get the new status.
///
/// Called while the hub's state is read-locked: it must not block or call the hub.
pub trait PresenceOverlay: Send + Sync + 'static {
    /// The other processes' holders of `device`; `None` when none holds it.
    fn remote(&self, device: &DeviceId) -> Option<RemotePresence>;
}

/// Connection and device counts (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HubCounts {
    /// Open user connections.
    pub user_connections: usize,
    /// Open bridge connections.
    pub bridge_connections: usize,
    /// Distinct users with at least one user connection.
    pub users: usize,
    /// Devices held by at least one bridge.
    pub devices_online: usize,
    /// Connections disconnected since start because they did not read fast enough.
    pub slow_consumers_disconnected: u64,
}

/// Whether a hub can serve as it should, for `/readyz` and `/metrics`
/// ([`Hub::health`]). A [`LocalHub`] is always ready and belongs to no cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubHealth {
    /// Whether the hub serves as it should: a cluster's hub is not while it has not joined
    /// the cluster (PROTOCOL.md 5). It still serves this process's connections then.
    pub ready: bool,
    /// Why it is not ready, for the logs (never shown to unauthenticated callers).
    pub reason: Option<String>,
    /// How many nodes of its cluster this hub sees alive, itself included; `None` for a hub
    /// that belongs to no cluster.
    pub cluster_nodes: Option<usize>,
}

impl HubHealth {
    /// A ready hub outside any cluster.
    pub const fn local() -> Self {
        Self {
            ready: true,
            reason: None,
            cluster_nodes: None,
        }
    }

    /// A cluster member seeing `nodes` nodes alive: ready, or not ready for `reason`.
    pub fn cluster(nodes: usize, not_ready: Option<String>) -> Self {
        Self {
            ready: not_ready.is_none(),
            reason: not_ready,
            cluster_nodes: Some(nodes),
        }
    }
}

impl Default for HubHealth {
    fn default() -> Self {
        Self::local()
    }
}

/// What [`LocalHub::shutdown`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections asked to close.
    pub closed: usize,
    /// Connections whose pumps were still running when the grace period ended.
    pub still_running: usize,
}

/// Where the server sends frames and asks about presence.
///
/// [`LocalHub`] implements it for one process. A distributed implementation (a cluster, a
/// user's own) wraps a [`LocalHub`] — which still owns this node's sockets — and overrides
/// only the methods it distributes: every method has a default that delegates to
/// [`Hub::local`], as socketioxide's adapters do. See the crate docs for an example.
///
/// # What is swappable, and why the sockets stay with `LocalHub`
///
/// Swappable — everything the server *asks* of the hub goes through this trait, so an
/// implementation decides it (`bridge-server` installs one with `ServerBuilder::wrap_hub`
/// and calls nothing else for these):
///
/// * where frames go: [`send_to_device`](Hub::send_to_device) (the session manager's
///   `ble_write`s), [`broadcast`](Hub::broadcast) (`POST .../events`, `command_result`
///   announcements, application frames), [`send_to_user`](Hub::send_to_user) and
///   [`send_to_connection`](Hub::send_to_connection) (answers to `command` frames);
/// * what presence is reported: [`device_presence`](Hub::device_presence) (`GET
///   /v1/devices/{id}`), [`online_devices`](Hub::online_devices) (`GET /v1/devices`) and
///   [`counts`](Hub::counts) (`/metrics`). `DevicePresence` and `HubCounts` are
///   `#[non_exhaustive]`: start from the local value and change its public fields.
///
/// Not swappable — the [`LocalHub`] returned by [`local`](Hub::local) does these, for this
/// process's connections:
///
/// * owning the sockets: the server upgrades an HTTP connection in this process and hands
///   the socket to [`LocalHub::serve`], whose pump (read, write, keepalive, limits) must run
///   where the socket is;
/// * the connection lifecycle and presence bookkeeping of those sockets, and the
///   [`HubEvent`](crate::HubEvent)s it reports, which drive the server's session manager
///   and delivery engine synchronously on the connection's task;
/// * a `ble_response`'s way to its command (the [`ResponseHandler`](crate::ResponseHandler),
///   called on the connection's task), and the [`InFlight`] tickets, which count commands
///   on a connection of this process. A command routed through another process's bridge
///   gets an [`InFlight::remote`] ticket on a stand-in connection id
///   ([`LocalHub::reserve_connection_id`]), and its answer or loss is fed back with
///   [`LocalHub::offer_response`] / [`LocalHub::release_remote`]; the process that holds
///   the bridge takes answers to commands it did not issue with a
///   [`ResponseInterceptor`](crate::ResponseInterceptor). `bridge-cluster`'s `ClusterHub`
///   routes across processes exactly this way.
///
/// Access policy and initial subscriptions are set on the [`LocalHub`]'s builder
/// (`ServerBuilder::customize_hub`).
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    /// The hub of this process, which owns its connections.
    fn local(&self) -> &LocalHub;

    /// Sends a frame (normally a `ble_write`) through the device's best holder (PROTOCOL.md
    /// 2) and counts one more command in flight on that connection. Returns the command's
    /// [`InFlight`] ticket, which names the connection used (only it may answer,
    /// PROTOCOL.md 3.2): keep it while the command is in flight, and drop it when the
    /// command ends, however it ends.
    async fn send_to_device(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Result<InFlight, HubError> {
        self.local().send_to_device(device_id, frame)
    }

    /// [`send_to_device`](Self::send_to_device) without its boxed future, for a hub whose
    /// send ends at once: `Some` with what `send_to_device` answers, or `None` when the
    /// caller must await `send_to_device` instead.
    ///
    /// The default is `None`, so a hub that overrides `send_to_device` is always asked
    /// through it; [`LocalHub`] answers here. A hub that overrides this must answer exactly
    /// what its `send_to_device` would.
    fn send_to_device_now(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Option<Result<InFlight, HubError>> {
        let _ = (device_id, frame);
        None
    }

    /// [`send_to_device_now`](Self::send_to_device_now) of a frame the caller hands over:
    /// `Ok` with what `send_to_device` answers, or `Err` with the frame back when the
    /// caller must await [`send_to_device`](Self::send_to_device) instead.
    ///
    /// The default asks `send_to_device_now` with a reference. [`LocalHub`] queues the frame
    /// itself rather than a copy, so a frame made for one send (see [`Frame::ble_write`])
    /// is never shared. A hub that overrides this must answer exactly what its
    /// `send_to_device` would.
    fn send_frame_to_device_now(
        &self,
        device_id: &DeviceId,
        frame: Frame,
    ) -> Result<Result<InFlight, HubError>, Frame> {
        self.send_to_device_now(device_id, &frame).ok_or(frame)
    }

    /// Sends a frame to every user connection subscribed to the device. Returns how many
    /// connections it was queued for.
    async fn broadcast(&self, device_id: &DeviceId, frame: &Frame) -> usize {
        self.local().broadcast(device_id, frame)
    }

    /// Sends a frame to every connection of a user. Returns how many.
    async fn send_to_user(&self, user_id: &UserId, frame: &Frame) -> usize {
        self.local().send_to_user(user_id, frame)
    }

    /// Sends a frame to one connection (the answer to its `command`, an error frame).
    async fn send_to_connection(
        &self,
        connection: ConnectionId,
        frame: &Frame,
    ) -> Result<(), HubError> {
        self.local().send_to_connection(connection, frame)
    }

    /// A device's presence; a device never seen is offline with no bridges.
    async fn device_presence(&self, device_id: &DeviceId) -> DevicePresence {
        self.local().device_presence(device_id)
    }

    /// Every online device, ordered by id.
    async fn online_devices(&self) -> Vec<DevicePresence> {
        self.local().online_devices()
    }

    /// Connection and device counts.
    async fn counts(&self) -> HubCounts {
        self.local().counts()
    }

    /// Whether the hub serves as it should (`/readyz` answers 503 when not), and the size
    /// of its cluster (the `bridge_cluster_nodes` gauge). Default: [`HubHealth::local`].
    fn health(&self) -> HubHealth {
        HubHealth::local()
    }

    /// Sees every event of [`Hub::local`]'s [`EventSink`], before the embedding server acts
    /// on it (`bridge-server` calls it first thing in its sink), so that a distributed hub
    /// can tell the other processes about presence changes. Called synchronously on the
    /// reporting connection's task, in order: it must not block. Default: nothing.
    fn observe(&self, event: &HubEvent) {
        let _ = event;
    }

    /// A command of `device_id` became deliverable on this process (queued or confirmed).
    /// A distributed hub asks the processes holding the device to deliver it when this one
    /// does not hold it ([`LocalHub::request_delivery`] there). Must not block. Default:
    /// nothing (this process's dispatcher was told already).
    fn queued(&self, device_id: &DeviceId) {
        let _ = device_id;
    }
}

/// Delivers events in order without holding the hub's lock, and without deadlocking when
/// an event handler calls back into the hub.
struct EventQueue {
    pending: Mutex<VecDeque<HubEvent>>,
    emitting: Mutex<()>,
    sink: Box<dyn EventSink>,
}

impl EventQueue {
    fn enqueue(&self, events: Vec<HubEvent>) {
        if !events.is_empty() {
            self.pending.lock().extend(events);
        }
    }

    fn drain(&self) {
        // Whoever holds `emitting` drains the queue; a thread that finds it taken (another
        // thread, or itself re-entering from a handler) leaves its events to the holder,
        // which looks again after letting go.
        while let Some(guard) = self.emitting.try_lock() {
            loop {
                let next = self.pending.lock().pop_front();
                match next {
                    Some(event) => self.sink.on_event(event),
                    None => break,
                }
            }
            drop(guard);
            if self.pending.lock().is_empty() {
                break;
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: HubConfig,
    pub(crate) state: RwLock<State>,
    events: EventQueue,
    pub(crate) responses: Box<dyn ResponseHandler>,
    pub(crate) application: Option<ApplicationFrames>,
    pub(crate) access: Arc<dyn AccessPolicy>,
    pub(crate) subscriptions: Arc<dyn SubscriptionSource>,
    pub(crate) overlay: std::sync::OnceLock<Arc<dyn PresenceOverlay>>,
    pub(crate) interceptor: std::sync::OnceLock<Arc<dyn ResponseInterceptor>>,
    next_id: AtomicU64,
    live: AtomicUsize,
    all_closed: Notify,
}

impl Inner {
    /// Reports events that do not come from a change of the shared state.
    pub(crate) fn emit(&self, events: Vec<HubEvent>) {
        self.events.enqueue(events);
        self.events.drain();
    }

    /// Changes the shared state and reports what changed. The events are queued while the
    /// state lock is held, so that they are delivered in the order the changes happened;
    /// they are delivered after it is released, so that a handler may call the hub.
    pub(crate) fn mutate<R>(&self, change: impl FnOnce(&mut State, &mut Vec<HubEvent>) -> R) -> R {
        let mut events = Vec::new();
        let result = {
            let mut state = self.state.write();
            let result = change(&mut state, &mut events);
            self.events.enqueue(events);
            result
        };
        self.events.drain();
        result
    }

    /// Forgets a connection whose pump ended (or whose future was dropped).
    pub(crate) fn unregister(&self, id: ConnectionId, reason: CloseReason) {
        self.mutate(|state, events| state.unregister(id, reason, events));
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }

    pub(crate) fn connection_started(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }
}

/// Builds a [`LocalHub`].
pub struct LocalHubBuilder {
    config: HubConfig,
    events: Box<dyn EventSink>,
    responses: Box<dyn ResponseHandler>,
    application: Option<ApplicationFrames>,
    access: Arc<dyn AccessPolicy>,
    subscriptions: Arc<dyn SubscriptionSource>,
}

impl LocalHubBuilder {
    /// Limits and timings (default: [`HubConfig::default`]).
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Where events go (default: nowhere).
    pub fn events(mut self, sink: impl EventSink) -> Self {
        self.events = Box::new(sink);
        self
    }

    /// What matches a bridge's `ble_response` with its command, called on the connection's
    /// own task (default: [`NoPendingCommands`], which refuses every answer with
    /// `unknown_request`). See [`ResponseHandler`].
    pub fn responses(mut self, handler: impl ResponseHandler) -> Self {
        self.responses = Box::new(handler);
        self
    }

    /// Frames of the application's own types (default: none). A text frame whose `type` is
    /// one of `types` (compared exactly) is handed to `handler` instead of being answered
    /// `unknown_type`; `types` cannot name a type PROTOCOL.md defines ([`EventType`]
    /// refuses those). The frame size and rate limits apply before, as to any frame. See
    /// [`ApplicationFrameHandler`] for where and when it runs.
    pub fn application_frames(
        mut self,
        types: impl IntoIterator<Item = EventType>,
        handler: impl ApplicationFrameHandler,
    ) -> Self {
        self.application = Some(ApplicationFrames::new(types, handler));
        self
    }

    /// Who may claim, subscribe to and command what (default: [`GrantedAccess`]).
    pub fn access_policy(mut self, policy: impl AccessPolicy) -> Self {
        self.access = Arc::new(policy);
        self
    }

    /// A user connection's initial subscriptions (default: none).
    pub fn subscriptions(mut self, source: impl SubscriptionSource) -> Self {
        self.subscriptions = Arc::new(source);
        self
    }

    /// The hub.
    pub fn build(self) -> LocalHub {
        LocalHub {
            inner: Arc::new(Inner {
                config: self.config,
                state: RwLock::new(State::new()),
                events: EventQueue {
                    pending: Mutex::new(VecDeque::new()),
                    emitting: Mutex::new(()),
                    sink: self.events,
                },
                responses: self.responses,
                application: self.application,
                access: self.access,
                subscriptions: self.subscriptions,
                overlay: std::sync::OnceLock::new(),
                interceptor: std::sync::OnceLock::new(),
                next_id: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                all_closed: Notify::new(),
            }),
        }
    }
}

/// The in-process hub: owns this process's WebSocket connections. Cheap to clone (one
/// `Arc`).
#[derive(Clone)]
pub struct LocalHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHub")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Default for LocalHub {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl LocalHub {
    /// A builder with every default.
    pub fn builder() -> LocalHubBuilder {
        LocalHubBuilder {
            config: HubConfig::default(),
            events: Box::new(IgnoreEvents),
            responses: Box::new(NoPendingCommands),
            application: None,
            access: Arc::new(GrantedAccess),
            subscriptions: Arc::new(FixedSubscriptions::default()),
        }
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Runs one upgraded WebSocket connection until it ends, and returns why it ended.
    ///
    /// Registers the connection (claiming a bridge's devices, subscribing a user's from the
    /// [`SubscriptionSource`]), then reads, answers and writes on the calling task — no task
    /// is spawned. If the future is dropped the connection is unregistered all the same.
    /// When the hub is shutting down the connection is closed with 1001 at once.
    pub async fn serve<S>(&self, socket: S, info: ConnectionInfo) -> CloseReason
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
    {
        let id = ConnectionId::new(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!(
            "connection",
            connection = id.get(),
            role = info.role().as_str(),
            user = %info.user_id()
        );
        if span.is_disabled() {
            // No subscriber wants the span (none installed, or a level above `info`):
            // instrumenting would still enter and leave it on every poll of the pump, two
            // or three per command with one frame per wake-up (about 300 instructions per
            // command with 1,000 bridges), for nothing. Only `tracing`'s `log` output of
            // span activity (`-> connection;` at TRACE) is not written for it.
            crate::pump::run(&self.inner, id, socket, info).await
        } else {
            crate::pump::run(&self.inner, id, socket, info)
                .instrument(span)
                .await
        }
    }

    /// Whether [`LocalHub::serve`] still accepts connections. A server stops upgrading
    /// once this is `false`.
    pub fn is_accepting(&self) -> bool {
        self.inner.state.read().accepting
    }

    /// Stops accepting connections, asks every connection to close with 1001, and waits up
    /// to `grace` for their pumps to end.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let outboxes = {
            let mut state = self.inner.state.write();
            state.accepting = false;
            state.all_outboxes()
        };
        for outbox in &outboxes {
            outbox.request_close(CloseRequest {
                reason: CloseReason::Shutdown,
                code: Some(1001),
                text: "server shutting down",
            });
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.inner.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.live.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        ShutdownReport {
            closed: outboxes.len(),
            still_running: self.inner.live.load(Ordering::Acquire),
        }
    }

    /// Closes one connection with `code` (for example 1008 when its token was revoked).
    /// Returns `false` if there is no such connection.
    pub fn close_connection(&self, connection: ConnectionId, code: u16) -> bool {
        let state = self.inner.state.read();
        let Some(outbox) = state.outbox(connection) else {
            return false;
        };
        outbox.request_close(CloseRequest {
            reason: CloseReason::ClosedByServer,
            code: Some(code),
            text: "",
        });
        true
    }

    /// See [`Hub::send_to_device`].
    pub fn send_to_device(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Result<InFlight, HubError> {
        self.send_frame_to_device(device_id, frame.clone())
    }

    /// [`send_to_device`](Self::send_to_device) of a frame the caller hands over: the
    /// frame itself is queued, not a copy.
    pub fn send_frame_to_device(
        &self,
        device_id: &DeviceId,
        frame: Frame,
    ) -> Result<InFlight, HubError> {
        let state = self.inner.state.read();
        match state.send_to_device(device_id, frame) {
            Some(in_flight) => Ok(in_flight),
            None if state.presence(device_id).online => {
                Err(HubError::NoRouteAvailable(device_id.clone()))
            }
            None => Err(HubError::DeviceOffline(device_id.clone())),
        }
    }

    /// Commands in flight on a connection: its live [`InFlight`] tickets, `ble_write`s on a
    /// bridge connection, running `command` frames on a user connection (0 for an unknown
    /// connection).
    pub fn commands_in_flight(&self, connection: ConnectionId) -> u32 {
        self.inner
            .state
            .read()
            .outbox(connection)
            .map_or(0, |o| o.in_flight())
    }

    /// A user's open user connections (0 for a user without any), for a server to refuse
    /// the one over [`HubConfig::max_connections_per_user`] before the upgrade.
    pub fn user_connections(&self, user_id: &UserId) -> usize {
        self.inner.state.read().user_connections(user_id)
    }

    /// Installs what other processes know of devices' presence (a cluster's view), merged
    /// into every `device_status` frame this hub writes from now on. Only the first call
    /// installs one: returns `false` if one was installed already. Presence events, routing
    /// and [`LocalHub::device_presence`] stay this process's own.
    pub fn set_presence_overlay(&self, overlay: Arc<dyn PresenceOverlay>) -> bool {
        self.inner.overlay.set(overlay).is_ok()
    }

    /// Queues a fresh `device_status` of `device` for each of its subscribers here: call it
    /// when the [`PresenceOverlay`]'s view of the device changed. Coalesced with any status
    /// of the device still queued, as every presence change is.
    pub fn refresh_status(&self, device_id: &DeviceId) {
        self.inner.state.read().refresh_status(device_id);
    }

    /// Installs what sees every `ble_response` before the [`ResponseHandler`] (a cluster
    /// taking the answers of commands other nodes sent through this node's bridges). Only
    /// the first call installs one: returns `false` if one was installed already.
    pub fn set_response_interceptor(&self, interceptor: Arc<dyn ResponseInterceptor>) -> bool {
        self.inner.interceptor.set(interceptor).is_ok()
    }

    /// A connection id no connection of this hub will ever have, to stand for a connection
    /// of another process (see [`InFlight::remote`]).
    pub fn reserve_connection_id(&self) -> ConnectionId {
        ConnectionId::new(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Offers this hub's [`ResponseHandler`] an answer that arrived elsewhere (through
    /// another node's bridge) as if it had arrived on `connection`, the stand-in id of the
    /// command's [`InFlight::remote`] ticket.
    pub fn offer_response(
        &self,
        connection: ConnectionId,
        response: bridge_protocol::BleResponse,
    ) -> Result<(), ResponseRefused> {
        self.inner.responses.on_response(connection, response)
    }

    /// Offers this hub's [`ResponseHandler`] a `ble_progress` that arrived elsewhere, as
    /// [`offer_response`](Self::offer_response) does an answer.
    pub fn offer_progress(
        &self,
        connection: ConnectionId,
        progress: &bridge_protocol::BleProgress,
    ) -> Result<(), ResponseRefused> {
        self.inner.responses.on_progress(connection, progress)
    }

    /// Reports that the bridge of another process a command was sent through (stand-in id
    /// `connection`) stopped holding `device_id`, or is gone: the hub's [`EventSink`] gets
    /// [`HubEvent::DeviceReleased`] with [`ReleaseReason::Remote`], on which a server fails
    /// the commands pending through it with `bridge_lost`, as for a local bridge.
    pub fn release_remote(&self, connection: ConnectionId, device_id: &DeviceId) {
        self.inner.emit(vec![HubEvent::DeviceReleased {
            device_id: device_id.clone(),
            connection,
            reason: ReleaseReason::Remote,
        }]);
    }

    /// Reports [`HubEvent::DeliveryRequested`] for `device_id`: another process queued a
    /// command for a device this hub holds.
    pub fn request_delivery(&self, device_id: &DeviceId) {
        self.inner.emit(vec![HubEvent::DeliveryRequested {
            device_id: device_id.clone(),
        }]);
    }

    /// See [`Hub::broadcast`].
    pub fn broadcast(&self, device_id: &DeviceId, frame: &Frame) -> usize {
        self.inner.state.read().broadcast(device_id, frame)
    }

    /// See [`Hub::send_to_user`].
    pub fn send_to_user(&self, user_id: &UserId, frame: &Frame) -> usize {
        self.inner.state.read().send_to_user(user_id, frame)
    }

    /// See [`Hub::send_to_connection`].
    pub fn send_to_connection(
        &self,
        connection: ConnectionId,
        frame: &Frame,
    ) -> Result<(), HubError> {
        match self
            .inner
            .state
            .read()
            .send_to_connection(connection, frame.clone())
        {
            Some(true) => Ok(()),
            _ => Err(HubError::ConnectionGone(connection)),
        }
    }

    /// See [`Hub::device_presence`].
    pub fn device_presence(&self, device_id: &DeviceId) -> DevicePresence {
        self.inner.state.read().presence(device_id)
    }

    /// This process's bridge connections that hold `device`, best route first (PROTOCOL.md
    /// 2's order: link, rssi, fewest in flight, most recent claim); empty when none does.
    /// Holders in other processes (a cluster's other nodes) are not listed: they count in
    /// [`Hub::device_presence`]'s `bridges` only.
    pub fn device_holders(&self, device_id: &DeviceId) -> Vec<HolderPresence> {
        self.inner.state.read().holders(device_id)
    }

    /// See [`Hub::online_devices`].
    pub fn online_devices(&self) -> Vec<DevicePresence> {
        self.inner.state.read().online_devices()
    }

    /// See [`Hub::counts`].
    pub fn counts(&self) -> HubCounts {
        self.inner.state.read().counts()
    }
}

impl Hub for LocalHub {
    fn local(&self) -> &LocalHub {
        self
    }

    fn send_to_device_now(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Option<Result<InFlight, HubError>> {
        Some(LocalHub::send_to_device(self, device_id, frame))
    }

    fn send_frame_to_device_now(
        &self,
        device_id: &DeviceId,
        frame: Frame,
    ) -> Result<Result<InFlight, HubError>, Frame> {
        Ok(LocalHub::send_frame_to_device(self, device_id, frame))
    }
}

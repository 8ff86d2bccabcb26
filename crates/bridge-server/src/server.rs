//! Composition: [`ServerBuilder`] wires a hub, a session manager, a store and a registry
//! into a [`Server`], whose [`Server::router`] serves PROTOCOL.md.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bridge_hub::{GrantedSubscriptions, Hub, HubConfig, LocalHub, LocalHubBuilder};
use bridge_protocol::{ConfigRegistry, Limits};
use bridge_queue::{MemoryStore, Store, StoreConfig};
use bridge_session::{SessionConfig, SessionManager};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioExecutor;
use std::num::NonZeroUsize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::error::{BuildError, ServerError};
use crate::frames::{self, FrameHandler};
use crate::hooks::{DEFAULT_HOOK_QUEUE, HookQueue, Hooks};
use crate::metrics::Metrics;
use crate::outlet::HubOutlet;
use crate::preface;
use crate::routes::{ApiService, Remembered, Routing};
use crate::stream::LiveStream;
use crate::transport::HubTransport;
use crate::{events, routes};

/// How often a reader of `GET /v1/stream` is sent a comment line (PROTOCOL.md 4.5: at least
/// every 15 s).
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);
use bridge_dispatch::{Dispatcher, EngineConfig};

type HubCustomizer = Box<dyn FnOnce(LocalHubBuilder) -> LocalHubBuilder + Send>;
type HubWrapper = Box<dyn FnOnce(LocalHub) -> Arc<dyn Hub> + Send>;

/// Everything the handlers share.
pub(crate) struct Core {
    pub(crate) hub: Arc<dyn Hub>,
    pub(crate) local: LocalHub,
    pub(crate) session: Arc<SessionManager<HubTransport>>,
    /// The command path and the delivery of queued commands.
    pub(crate) dispatch: Dispatcher,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<ConfigRegistry>,
    pub(crate) auth: Authenticator,
    pub(crate) limits: Limits,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// The application's hooks, behind their bounded queue.
    pub(crate) hooks: Arc<HookQueue>,
    /// The readers of `GET /v1/stream`.
    pub(crate) stream: Arc<LiveStream>,
}

/// Builds a [`Server`].
///
/// Every part has a default: the hub is a [`LocalHub`] configured from the
/// [`ServerConfig`]'s limits, the store a [`MemoryStore`], the registry the built-in example
/// (`smart-lock`), authentication JWT when the config has a secret and development mode
/// otherwise.
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    store: Option<Arc<dyn Store>>,
    registry: Option<ConfigRegistry>,
    hub_config: Option<HubConfig>,
    customize_hub: Option<HubCustomizer>,
    wrap_hub: Option<HubWrapper>,
    session: Option<SessionConfig>,
    delivery: Option<EngineConfig>,
    max_user_commands: Option<usize>,
    hooks: Option<Arc<dyn Hooks>>,
    hook_queue: usize,
    frames: Vec<(String, Arc<dyn FrameHandler>)>,
    development_mode: bool,
    stream_buffer: Option<usize>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A builder for a server with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            store: None,
            registry: None,
            hub_config: None,
            customize_hub: None,
            wrap_hub: None,
            session: None,
            delivery: None,
            max_user_commands: None,
            hooks: None,
            hook_queue: DEFAULT_HOOK_QUEUE,
            frames: Vec::new(),
            development_mode: false,
            stream_buffer: None,
        }
    }

    /// Runs without authentication (PROTOCOL.md 1.2): identities come from query
    /// parameters. Required to build a server whose [`ServerConfig`] has no JWT secret
    /// ([`BuildError::NoJwtSecret`] otherwise), refused with one
    /// ([`BuildError::DevelopmentModeWithSecret`]). Such a server refuses to
    /// [`serve`](Server::serve) on a listener that is not loopback unless
    /// [`allow_unauthenticated`](Self::allow_unauthenticated) is said too — the rule of the
    /// `bridge-server` binary (`--allow-unauthenticated`).
    pub fn development_mode(mut self) -> Self {
        self.development_mode = true;
        self
    }

    /// Lets a development-mode server serve on an address other people can reach (sets
    /// [`ServerConfig::allow_unauthenticated`]). Anyone who can reach it can then command
    /// every device.
    pub fn allow_unauthenticated(mut self) -> Self {
        self.config.allow_unauthenticated = true;
        self
    }

    /// Handles WebSocket frames of type `frame_type` (exactly that name, from a user or a
    /// bridge connection) with `handler`, instead of answering them `unknown_type`. A name
    /// PROTOCOL.md defines, one that cannot be a `type`, or one registered twice makes
    /// [`build`](Self::build) fail. See [`crate::frames`] for how the frames are read,
    /// limited and handled.
    pub fn frame(mut self, frame_type: impl Into<String>, handler: impl FrameHandler) -> Self {
        self.frames.push((frame_type.into(), Arc::new(handler)));
        self
    }

    /// The application's lifecycle hooks (default: none): a user's first connection and
    /// last disconnection, a device online and offline, a bridge connected and
    /// disconnected, a command ended. They run on a task of their own, fed by a bounded
    /// queue, never on the server's path; see [`crate::hooks`] for their order and
    /// guarantees. (An event sink installed with [`customize_hub`](Self::customize_hub) is
    /// replaced by the server's: hooks are how the application hears the hub's events.)
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// How many events may wait for the hooks before new ones are dropped and counted in
    /// `bridge_hook_events_dropped_total` (default [`DEFAULT_HOOK_QUEUE`]; at least 1).
    pub fn hook_queue_capacity(mut self, capacity: usize) -> Self {
        self.hook_queue = capacity.max(1);
        self
    }

    /// Default of [`ServerBuilder::stream_buffer`].
    pub const DEFAULT_STREAM_BUFFER: usize = 1024;

    /// How many events a reader of `GET /v1/stream` may have waiting (default 1024). A reader
    /// that falls further behind is sent `overflow` and disconnected (PROTOCOL.md 4.5);
    /// publishing never waits for a reader.
    pub fn stream_buffer(mut self, events: usize) -> Self {
        self.stream_buffer = Some(events);
        self
    }

    /// Default of [`ServerBuilder::max_commands_per_connection`]: the hub's default
    /// [`HubConfig::max_commands_per_connection`].
    pub const DEFAULT_MAX_USER_COMMANDS: usize = 64;

    /// Most `command` frames one user connection may have running at once (default 64).
    /// The hub enforces it: this sets [`HubConfig::max_commands_per_connection`] of the hub
    /// configuration in use (the one given to [`hub_config`](Self::hub_config), or the one
    /// derived from the [`ServerConfig`]), overriding what that says. One more is answered
    /// by the hub with an error frame `rate_limited` carrying its `requestId`, so that one
    /// connection cannot take the whole server's pending capacity.
    pub fn max_commands_per_connection(mut self, max: usize) -> Self {
        self.max_user_commands = Some(max.max(1));
        self
    }

    /// The offline queue (default: an in-memory store, lost with the process).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The device types (default: [`ConfigRegistry::example`], the `smart-lock` type).
    pub fn registry(mut self, registry: ConfigRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The hub's limits and timings (default: those of the [`ServerConfig`]: frame size,
    /// payload size, rate limit, subscriptions; [`HubConfig::default`] for the rest).
    pub fn hub_config(mut self, config: HubConfig) -> Self {
        self.hub_config = Some(config);
        self
    }

    /// Adjusts the [`LocalHub`] before it is built, for example to install an
    /// [`AccessPolicy`](bridge_hub::AccessPolicy) or a
    /// [`SubscriptionSource`](bridge_hub::SubscriptionSource) (default: a user connection
    /// starts subscribed to its token's `devices`). The server installs its own event sink
    /// and `ble_response` handler afterwards.
    pub fn customize_hub(
        mut self,
        customize: impl FnOnce(LocalHubBuilder) -> LocalHubBuilder + Send + 'static,
    ) -> Self {
        self.customize_hub = Some(Box::new(customize));
        self
    }

    /// Wraps the [`LocalHub`] in another [`Hub`] implementation (a cluster-aware one, for
    /// example). The local hub still serves this process's sockets.
    pub fn wrap_hub(
        mut self,
        wrap: impl FnOnce(LocalHub) -> Arc<dyn Hub> + Send + 'static,
    ) -> Self {
        self.wrap_hub = Some(Box::new(wrap));
        self
    }

    /// The session manager's configuration (default: [`SessionConfig::default`] with the
    /// [`ServerConfig::max_pending_per_device`] per-device limit).
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.session = Some(config);
        self
    }

    /// How the offline queue is delivered (default: a pass every
    /// [`ServerConfig::retry_interval_secs`]).
    pub fn delivery(mut self, config: EngineConfig) -> Self {
        self.delivery = Some(config);
        self
    }

    /// Builds the server. Must be called inside a Tokio runtime: it starts the session
    /// manager's timer and the delivery timer, and runs user commands and delivery passes
    /// on it.
    ///
    /// # Errors
    ///
    /// [`BuildError`]: no JWT secret without [`development_mode`](Self::development_mode)
    /// (or both), a configuration [`ServerConfig::validate`] refuses, an application frame
    /// type that is reserved, invalid or registered twice.
    pub fn build(self) -> Result<Server, BuildError> {
        match (self.config.jwt_secret.is_some(), self.development_mode) {
            (false, false) => return Err(BuildError::NoJwtSecret),
            (true, true) => return Err(BuildError::DevelopmentModeWithSecret),
            _ => {}
        }
        self.config.validate()?;
        let frame_handlers = frame_handlers(self.frames)?;
        let config = self.config;
        let limits = Limits {
            max_payload_bytes: config.max_payload_bytes,
        };
        let mut hub_config = self.hub_config.unwrap_or_else(|| {
            let mut hub = HubConfig::default();
            hub.max_frame_bytes = config.max_frame_bytes;
            hub.protocol_limits = limits;
            hub.rate_limit.per_second = f64::from(config.rate_per_second);
            hub.rate_limit.burst = config.rate_burst;
            hub.max_subscriptions = config.max_subscriptions;
            hub.max_commands_per_user = config.max_commands_per_user;
            hub.max_connections_per_user = config.max_connections_per_user;
            hub
        });
        if let Some(max) = self.max_user_commands {
            hub_config.max_commands_per_connection = max;
        }
        let slot: events::CoreSlot = Arc::new(OnceLock::new());
        let mut hub_builder = LocalHub::builder()
            .config(hub_config)
            .subscriptions(GrantedSubscriptions);
        if let Some(customize) = self.customize_hub {
            hub_builder = customize(hub_builder);
        }
        if !frame_handlers.is_empty() {
            let types = frame_handlers
                .keys()
                .filter_map(|name| bridge_protocol::EventType::new(name).ok())
                .collect::<Vec<_>>();
            hub_builder = hub_builder.application_frames(
                types,
                frames::Dispatch {
                    handlers: frame_handlers,
                    core: Arc::clone(&slot),
                },
            );
        }
        let local = hub_builder
            .events(events::sink(
                Arc::clone(&slot),
                tokio::runtime::Handle::current(),
            ))
            .responses(events::responses(Arc::clone(&slot)))
            .build();
        let hub: Arc<dyn Hub> = match self.wrap_hub {
            Some(wrap) => wrap(local.clone()),
            None => Arc::new(local.clone()),
        };
        let registry = Arc::new(self.registry.unwrap_or_else(ConfigRegistry::example));
        let store = self.store.unwrap_or_else(|| {
            Arc::new(MemoryStore::new(StoreConfig {
                max_payload_bytes: config.max_payload_bytes,
                max_open_per_device: config.max_queued_per_device,
                retention: Duration::from_secs(config.retention_secs),
                ..StoreConfig::default()
            }))
        });
        let transport = Arc::new(HubTransport::new(Arc::clone(&hub)));
        let session = Arc::new(SessionManager::new(
            transport,
            Arc::clone(&registry),
            &self.session.unwrap_or_else(|| {
                SessionConfig::default()
                    .with_per_device_limit(NonZeroUsize::new(config.max_pending_per_device))
            }),
        ));
        let auth = match config.jwt_secret.as_deref() {
            Some(secret) => Authenticator::jwt(secret.as_bytes()),
            None => Authenticator::development(),
        };
        let delivery_config = self.delivery.unwrap_or_else(|| {
            EngineConfig::default()
                .retry_interval(Duration::from_secs(config.retry_interval_secs.max(1)))
        });
        let metrics = Arc::new(Metrics::new());
        let hooks = Arc::new(HookQueue::start(
            self.hooks,
            self.hook_queue,
            Arc::clone(&metrics),
        ));
        let stream = Arc::new(LiveStream::new(
            self.stream_buffer.unwrap_or(Self::DEFAULT_STREAM_BUFFER),
            STREAM_KEEP_ALIVE,
        ));
        let node_id = config.node_id();
        tracing::info!(node_id = %node_id, "delivering queued commands as this node");
        let dispatch = Dispatcher::start(
            delivery_config,
            node_id,
            Arc::clone(&store),
            Arc::clone(&session) as Arc<dyn bridge_dispatch::CommandSender>,
            Arc::new(HubOutlet::new(
                Arc::clone(&hub),
                Arc::clone(&metrics),
                Arc::clone(&hooks),
                Arc::clone(&stream),
            )),
            Arc::clone(&registry),
        );
        let core = Arc::new(Core {
            hub,
            local,
            session,
            dispatch,
            store,
            registry,
            auth,
            limits,
            config,
            metrics,
            hooks,
            stream,
        });
        // Set before any connection can be served: the router is made from `core` below.
        let _ = slot.set(Arc::downgrade(&core));
        Ok(Server { core })
    }
}

/// The application frame handlers by type, each name checked.
fn frame_handlers(
    frames: Vec<(String, Arc<dyn FrameHandler>)>,
) -> Result<std::collections::HashMap<String, Arc<dyn FrameHandler>>, BuildError> {
    let mut handlers = std::collections::HashMap::new();
    for (name, handler) in frames {
        if bridge_protocol::RESERVED_TYPES.contains(&name.as_str()) {
            return Err(BuildError::ReservedFrameType(name));
        }
        if let Err(reason) = bridge_protocol::EventType::new(&name) {
            return Err(BuildError::InvalidFrameType { name, reason });
        }
        if handlers.contains_key(&name) {
            return Err(BuildError::DuplicateFrameType(name));
        }
        handlers.insert(name, handler);
    }
    Ok(handlers)
}

/// A composed bridge server. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    core: Arc<Core>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

/// What [`Server::shutdown`] does with connections that do not close in time.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Server {
    /// A builder with every default.
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder::new(config)
    }

    /// The routes of PROTOCOL.md: `GET /ws`, `/v1/...`, `/healthz`, `/readyz`, `/metrics`.
    /// Mount it in an application's router, or serve it with [`Server::serve`].
    ///
    /// `/ws` needs a connection that supports HTTP/1.1 upgrades (as [`Server::serve`] and
    /// `axum::serve` give).
    pub fn router(&self) -> Router {
        routes::router(Arc::clone(&self.core))
    }

    /// [`Server::router`] as one `tower` service with the command route
    /// (`POST /v1/devices/{deviceId}/commands`) recognised in front of it, without the
    /// router's generic costs: what [`Server::serve`] serves. It answers every request as
    /// the router does; call it in process where a router need not be mounted.
    pub fn service(&self) -> ApiService {
        ApiService::new(Arc::clone(&self.core))
    }

    /// Whether this server may serve on `addr`: always with a JWT secret; in development
    /// mode only on a loopback address, unless
    /// [`ServerBuilder::allow_unauthenticated`] was said. [`Server::serve`] checks its
    /// listener with it; an application serving [`Server::router`] itself should check its
    /// own listener's address the same way.
    ///
    /// # Errors
    ///
    /// [`ServerError::UnauthenticatedListener`] when it may not.
    pub fn check_listener(&self, addr: SocketAddr) -> Result<(), ServerError> {
        let config = &self.core.config;
        if self.core.auth.is_development()
            && !addr.ip().is_loopback()
            && !config.allow_unauthenticated
        {
            return Err(ServerError::UnauthenticatedListener(addr));
        }
        Ok(())
    }

    /// The hub, to send frames and read presence from the embedding application.
    pub fn hub(&self) -> &Arc<dyn Hub> {
        &self.core.hub
    }

    /// Authenticates an MQTT bridge's `hello` (PROTOCOL.md 6) exactly as `GET /ws`
    /// authenticates an upgrade, and answers the connection to hand to
    /// [`LocalHub::serve`](bridge_hub::LocalHub::serve): the seam a bridge transport of
    /// another kind (`bridge-mqtt`'s, or an application's own) authenticates through.
    /// Refused with the [`AuthError`](crate::auth::AuthError) whose
    /// [`code`](crate::auth::AuthError::code) the `hello` is answered with
    /// (`unauthorized` or `forbidden`).
    pub fn authenticate_hello(
        &self,
        hello: &bridge_protocol::Hello,
    ) -> Result<bridge_hub::ConnectionInfo, crate::auth::AuthError> {
        let identity = self.core.auth.authenticate_hello(hello)?;
        crate::ws::connection_info(identity)
    }

    /// The offline queue.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// Closes every WebSocket with 1001 (waiting up to a few seconds for them to go), so
    /// that commands pending through them fail with `bridge_lost` and queued deliveries go
    /// back to `pending`; stops the delivery engine and waits (a few seconds at most) for the
    /// deliveries it was making to be recorded. Call it when the application that
    /// mounted [`Server::router`] shuts down; [`Server::serve`] calls it on its own.
    pub async fn shutdown(&self) {
        self.shutdown_within(SHUTDOWN_GRACE).await;
    }

    /// Serves [`Server::router`] on `listener` until `shutdown` completes, then shuts down
    /// within [`ServerConfig::shutdown_timeout_secs`] whatever the clients do: stops
    /// accepting, closes every WebSocket with 1001, lets in-flight HTTP requests finish (a
    /// command waiting on a bridge that just closed ends `bridge_lost`), closes idle HTTP
    /// connections, drops whatever is still open at the deadline (a half-sent request, a
    /// slow client), and ends what is still pending in the session manager.
    ///
    /// Each connection is served by hyper: with HTTP/2 when it opens with HTTP/2's preface
    /// (prior knowledge, "h2c", as `curl --http2-prior-knowledge` or reqwest's
    /// `http2_prior_knowledge` connect; at most [`ServerConfig::http2_max_streams`]
    /// requests at once on one connection), otherwise with HTTP/1.1 and its upgrades (for
    /// `/ws`, which HTTP/2 cannot open: it answers 505 there). One that takes longer than
    /// [`ServerConfig::header_read_timeout_secs`] to send a request's headers, or stays idle
    /// that long between requests, is closed (an HTTP/2 connection with a GOAWAY first).
    /// At most [`ServerConfig::max_connections`] are served at once; beyond that the
    /// listener is not accepted from, so new connections wait in the kernel's backlog until
    /// one closes.
    ///
    /// While a request is served its connection is watched: a client that goes away
    /// mid-request (or half-closes its end) ends the connection at once and its request's
    /// future is dropped, so a command still waiting for a device slot is not sent for it.
    ///
    /// # Errors
    ///
    /// [`ServerError::UnauthenticatedListener`] at once, serving nothing, for a
    /// development-mode server on a listener that is not loopback (see
    /// [`Server::check_listener`]); [`ServerError::Io`] when the listener's address cannot
    /// be read.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.check_listener(listener.local_addr()?)?;
        let config = &self.core.config;
        let limits = ConnectionLimits::of(config);
        let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_secs.max(1));
        let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let service = self.service();
        // Final commands past their retention are deleted in the background while serving.
        let retention = crate::retention::spawn(Arc::clone(&self.core.store));
        let (closing, closing_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Beyond the cap nothing is accepted: new connections wait in the backlog.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors, or a connection reset before it was
                        // accepted: go on, after a pause so that a lasting error cannot spin.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            while connections.try_join_next().is_some() {}
            connections.spawn(serve_connection(
                stream,
                service.clone(),
                limits,
                closing_rx.clone(),
                permit,
            ));
        }
        drop(listener);
        retention.abort();
        let deadline = Instant::now() + shutdown_timeout;
        tracing::info!(
            connections = connections.len(),
            deadline_secs = shutdown_timeout.as_secs(),
            "shutting down"
        );
        // HTTP connections finish the request they serve and close; idle ones close now.
        let _ = closing.send(true);
        let orderly = async {
            tokio::join!(self.shutdown_within(shutdown_timeout), async {
                while connections.join_next().await.is_some() {}
            });
        };
        if tokio::time::timeout_at(deadline, orderly).await.is_err() {
            tracing::warn!(
                still_open = connections.len(),
                "shutdown deadline reached; dropping what is still open"
            );
        }
        connections.abort_all();
        self.core.session.shutdown();
        tracing::info!("stopped");
        Ok(())
    }

    /// [`Server::shutdown`], each of its waits bounded by `grace` (at most
    /// [`SHUTDOWN_GRACE`]; [`Server::serve`] bounds the whole by its deadline).
    async fn shutdown_within(&self, grace: Duration) {
        let grace = grace.min(SHUTDOWN_GRACE);
        self.core.dispatch.stop();
        let report = self.core.local.shutdown(grace).await;
        tracing::info!(
            closed = report.closed,
            still_running = report.still_running,
            "WebSocket connections closed"
        );
        // Deliveries cut off by the closing bridges are released back to `pending` before
        // the process goes (were one cut short, its lease would lapse and it would go again).
        if !self.core.dispatch.wait_idle(grace).await {
            tracing::warn!("some deliveries were still being recorded at shutdown");
        }
        // The last results are streamed; then the readers of `GET /v1/stream` are let go.
        self.core.stream.close();
    }
}

/// A connection's place under [`ServerConfig::max_connections`], in the extensions of each
/// of its requests that asks for an upgrade: the place is free again when the last clone is
/// dropped.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// How long the accept loop pauses after an accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What [`serve_connection`] holds each connection to.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// [`ServerConfig::header_read_timeout_secs`].
    header_read_timeout: Duration,
    /// [`ServerConfig::http2_max_streams`].
    http2_max_streams: u32,
}

impl ConnectionLimits {
    fn of(config: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
            http2_max_streams: config.http2_max_streams.max(1),
        }
    }
}

/// The largest header list (decoded, as RFC 9113 6.5.2 counts it) an HTTP/2 request may
/// have: 16 KiB, as common proxies allow. A bigger one is refused with 431.
const HTTP2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Serves one TCP connection until it ends, or, once `closing` turns true, until the
/// requests it is serving have been answered: with HTTP/2 when it opens with the HTTP/2
/// preface (prior knowledge, "h2c": RFC 9113 3.3), otherwise with HTTP/1 (and its upgrade
/// to a WebSocket). `_permit` is its place under [`ServerConfig::max_connections`], given
/// back when it ends (or when the WebSocket it was upgraded to ends).
///
/// The header-read timeout is kept here rather than by hyper, which would make a timer of
/// its own for every request (an allocation, and the runtime's timer wheel twice): one
/// timer per connection, looked at only when it fires. A connection that is serving no
/// request (since it was accepted, or since its last answer was written) and has not sent
/// a whole request head by `header_read_timeout` after that is closed — a silent, idle or
/// slowloris client, as with hyper's own timeout. An HTTP/2 connection is told so first
/// (GOAWAY), and dropped if it is still open one more timeout later.
///
/// The timer and the `closing` signal are polled only when one of them woke the task (see
/// [`SideWake`]), not on each of the connection's two or three wake-ups per request.
async fn serve_connection<I>(
    mut io: I,
    service: ApiService,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Idle since now, its accept: the header-read timeout counts from here.
    let activity = Arc::new(Activity::new());
    let deadline = Instant::now() + limits.header_read_timeout;
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, preface::read_first_bytes(&mut io)) => {
            match first {
                Ok(Ok(first)) => first,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "HTTP connection failed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        "HTTP connection closed: no request head within the header-read timeout"
                    );
                    return;
                }
            }
        }
        _ = closing.wait_for(|closing| *closing) => return,
    };
    let io = preface::served_io(first.bytes, io);
    // The place is shared with a WebSocket this connection upgrades to, which keeps it
    // for as long as it lives (see `ws.rs`).
    let slot = ConnectionSlot(Arc::new(permit));
    // What `route` remembers of this connection's earlier requests (it reads the token and
    // the device before the request's future is made; it is called for one request at a
    // time, on HTTP/2 too, from the connection's poll).
    let remembered = std::cell::RefCell::new(Remembered::default());
    let service = hyper::service::service_fn({
        let activity = Arc::clone(&activity);
        move |request: axum::extract::Request<hyper::body::Incoming>| {
            // From its head to its answer's last byte, the request keeps the connection
            // from being idle.
            let busy = Busy::start(&activity);
            // The request's body stays hyper's on the command route's fast path, and its
            // answer's bytes are written as they are (not boxed into a `Body`). The
            // answer's future is made inside the future given to hyper, and polled there,
            // not moved into it.
            // Not borrowed elsewhere (`route` returns before the next request); if it
            // were, the request would be read as without it.
            let mut remembered = remembered.try_borrow_mut();
            match service.route(request, remembered.as_deref_mut().ok()) {
                Routing::Fast(command) => Either::Left(async move {
                    let response = command.answer().await;
                    Ok::<_, std::convert::Infallible>(response.map(|bytes| TrackedBody {
                        body: AnswerBody::whole(bytes),
                        _busy: busy,
                    }))
                }),
                Routing::Router(mut request) => {
                    // Only a request that asks for an upgrade can become a WebSocket
                    // (`ws.rs` upgrades only `GET /ws` with `Upgrade: websocket`, which the
                    // fast path never takes): the others need not carry the slot, and an
                    // HTTP request then builds no extensions map (an allocation or two).
                    if request.headers().contains_key(axum::http::header::UPGRADE) {
                        request.extensions_mut().insert(slot.clone());
                    }
                    Either::Right(service.call_router(request).map(move |answer| {
                        answer.map(|response| {
                            response.map(|body| TrackedBody {
                                body: AnswerBody::Routed(body),
                                _busy: busy,
                            })
                        })
                    }))
                }
            }
        }
    });
    let driven = if first.http2 {
        // Each request (stream) is answered on a task of its own, so the answers of a
        // connection's many streams are awaited at once; a stream the client resets, or
        // whose connection goes, has its request's future dropped (hyper polls for the
        // reset while the answer is pending), as an HTTP/1 client that goes away has.
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http.max_concurrent_streams(limits.http2_max_streams)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST)
            // Idle connections are closed by the header-read timeout, not by pings.
            .keep_alive_interval(None);
        let connection = http.serve_connection(io, service);
        drive(
            connection,
            hyper::server::conn::http2::Connection::graceful_shutdown,
            Http::Two,
            &activity,
            limits.header_read_timeout,
            deadline,
            &mut closing,
        )
        .await
    } else {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.header_read_timeout(None);
        // An answer's head and its body are copied into one buffer and written with one
        // `write`, rather than queued as two buffers for `writev`: the same system calls,
        // and fewer instructions for the small JSON answers of the API.
        http.writev(false);
        // hyper's default is kept (`half_close(false)`): while a request is served, hyper
        // watches the socket, and a client that goes away mid-request ends the connection
        // at once, dropping the request's future, so a command still waiting for one of
        // its device's slots is never sent for a caller that has left, and a
        // `GET /v1/stream` reader that left is dropped at once, not at its next keep-alive
        // comment. `half_close(true)` was measured (2026-12-01): about 1,000 instructions
        // fewer per request under callgrind, but the same system calls per request in real
        // runs (the watch's read finds the socket's readiness cleared by the short read of
        // the request and makes no `recvfrom`), so not worth the change of behaviour.
        http.half_close(false);
        let connection = http.serve_connection(io, service).with_upgrades();
        drive(
            connection,
            hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown,
            Http::One,
            &activity,
            limits.header_read_timeout,
            deadline,
            &mut closing,
        )
        .await
    };
    match driven {
        None => {
            tracing::debug!(
                "HTTP connection closed: no request head within the header-read timeout"
            );
        }
        Some(Err(error)) => tracing::debug!(%error, "HTTP connection ended with an error"),
        Some(Ok(())) => {}
    }
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Http {
    /// HTTP/1.0 or 1.1.
    One,
    /// HTTP/2 with prior knowledge.
    Two,
}

/// Polls `connection` (hyper's, of either HTTP) until it ends (`Some`), or until it has been
/// idle for `header_read_timeout` (`None`): the header-read timer first fires at `deadline`.
/// Once `closing` turns true, `graceful_shutdown` is called: the connection finishes the
/// requests it is serving and ends. An idle HTTP/2 connection is also shut down gracefully
/// (GOAWAY) at its timeout, and dropped at the next one.
async fn drive<C>(
    connection: C,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
    http: Http,
    activity: &Activity,
    header_read_timeout: Duration,
    deadline: Instant,
    closing: &mut watch::Receiver<bool>,
) -> Option<Result<(), hyper::Error>>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = std::pin::pin!(connection);
    let timer = tokio::time::sleep_until(deadline);
    let mut timer = std::pin::pin!(timer);
    let closed = closing.wait_for(|closing| *closing);
    let mut closed = std::pin::pin!(closed);
    let mut draining = false;
    let side = Arc::new(SideWake::new());
    let side_waker = std::task::Waker::from(Arc::clone(&side));
    // Only HTTP/1 reads a request's body on the connection's own task: HTTP/2 reads it on
    // the stream's, and its wake-ups of the connection (flow control) must all go through.
    let inline = Arc::new(InlineWake::new(Arc::clone(&side), http == Http::One));
    let connection_waker = std::task::Waker::from(Arc::clone(&inline));
    // HTTP/2: whether this wake-up of the task has been put off by one turn already.
    let mut put_off = false;
    std::future::poll_fn(|cx| {
        // Before the flags are read: a wake-up of the timer, of `closing` or of the
        // connection from now on wakes this task (if it came before, a flag shows it).
        side.task.register(cx.waker());
        // HTTP/2 answers each stream on a task of its own, and each one that answers wakes
        // the connection, which the runtime would run at once (its slot for the task just
        // woken), writing that one answer. Put off by one turn (a wake-up during its own
        // poll puts a task at the back of the run queue), the connection runs after the
        // other streams woken with it, and writes all their answers at once.
        if http == Http::Two && !put_off {
            put_off = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        put_off = false;
        'poll: loop {
            let polled = inline.poll_connection(cx.waker(), || {
                connection
                    .as_mut()
                    .poll(&mut Context::from_waker(&connection_waker))
            });
            if let Poll::Ready(result) = polled {
                return Poll::Ready(Some(result));
            }
            if !side.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut side_cx = Context::from_waker(&side_waker);
            // The timer first: it may fire while a closing connection finishes its request.
            while timer.as_mut().poll(&mut side_cx).is_ready() {
                if activity.timed_out(header_read_timeout, timer.as_mut()) {
                    if http == Http::One || draining {
                        return Poll::Ready(None);
                    }
                    // An idle HTTP/2 connection is told to go; the timer, set again, drops
                    // it if it is still there a timeout later.
                    draining = true;
                    graceful_shutdown(connection.as_mut());
                    timer.as_mut().reset(Instant::now() + header_read_timeout);
                    continue 'poll;
                }
            }
            if !draining && closed.as_mut().poll(&mut side_cx).is_ready() {
                // HTTP connections finish the requests they serve and close; idle ones
                // close now. The connection is polled again, as it may end at once.
                draining = true;
                graceful_shutdown(connection.as_mut());
                continue;
            }
            return Poll::Pending;
        }
    })
    .await
}

/// The waker [`serve_connection`] polls its header-read timer and its `closing` signal
/// with: it notes that one of them woke the connection's task, then wakes the task, so
/// that the task's other wake-ups (the socket, the request's answer; several per request)
/// need not poll them again.
struct SideWake {
    /// Whether the timer or the signal may be ready (set by their wake-ups).
    woken: AtomicBool,
    /// The connection's task, as of its last poll.
    task: AtomicWaker,
}

impl SideWake {
    /// Woken already: the first poll registers the timer and the signal.
    fn new() -> Self {
        Self {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// How many times in a row [`serve_connection`] polls its connection again at once when the
/// connection woke its own task during its poll, before it lets the scheduler do it.
const INLINE_REPOLLS: usize = 2;

/// The waker [`serve_connection`] polls its HTTP connection with: a wake-up that comes
/// while the connection is being polled is only noted (the poller then polls it again at
/// once, see [`InlineWake::poll`]), and one that comes at any other time wakes the task.
///
/// Why: on every request, the connection wakes itself while it is polled (hyper's body
/// channel wakes the connection's reading side when the request's future takes the body
/// it was sent); through the scheduler, that wake-up costs a whole round of the task
/// (queue, state transitions, the task's poll) on top of the connection's second poll.
/// No wake-up is lost: each one is followed by a poll, inline or the task's.
struct InlineWake {
    /// [`POLLING`](Self::POLLING) and [`WOKEN`](Self::WOKEN).
    state: std::sync::atomic::AtomicU8,
    /// Holds the connection's task (registered on each of the task's polls).
    side: Arc<SideWake>,
    /// Whether [`poll_body_frame`] may hold this connection's wake-up.
    hold_body_wakes: bool,
}

/// What [`InlineWake::poll`] saw.
enum InlinePoll<T> {
    /// The connection ended.
    Ready(T),
    /// The connection waits; `woken`: it was woken during its poll, and must be polled
    /// again (no one else will).
    Pending { woken: bool },
}

impl InlineWake {
    /// The connection is being polled.
    const POLLING: u8 = 1;
    /// The connection was woken while it was being polled.
    const WOKEN: u8 = 2;

    /// `hold_body_wakes`: whether [`poll_body_frame`] may hold this connection's wake-up
    /// (HTTP/1, whose request bodies are read on the connection's own task).
    fn new(side: Arc<SideWake>, hold_body_wakes: bool) -> Self {
        Self {
            state: std::sync::atomic::AtomicU8::new(0),
            side,
            hold_body_wakes,
        }
    }

    /// Polls the connection (`poll`, which polls it with this waker) and tells whether it
    /// was woken meanwhile.
    fn poll<T>(&self, poll: impl FnOnce() -> Poll<T>) -> InlinePoll<T> {
        // Clears `WOKEN`: this poll is the one that wake-up asked for.
        self.state.store(Self::POLLING, Ordering::Release);
        let polled = poll();
        // From here on a wake-up wakes the task; one that came before is in `state`.
        let state = self.state.swap(0, Ordering::AcqRel);
        match polled {
            Poll::Ready(value) => InlinePoll::Ready(value),
            Poll::Pending => InlinePoll::Pending {
                woken: state & Self::WOKEN != 0,
            },
        }
    }
}

impl InlineWake {
    /// Polls the connection (`poll`, which polls it with this waker) until it ends or waits
    /// without having woken itself meanwhile: again at once after a wake-up during its
    /// poll, at most [`INLINE_REPOLLS`] times in a row, after which `task` is woken (the
    /// scheduler's turn: hyper yields that way after a long burst, for fairness).
    fn poll_connection<T>(
        &self,
        task: &std::task::Waker,
        mut poll: impl FnMut() -> Poll<T>,
    ) -> Poll<T> {
        let mut repolled = 0;
        loop {
            match self.poll(&mut poll) {
                InlinePoll::Ready(value) => return Poll::Ready(value),
                InlinePoll::Pending { woken: false } => return Poll::Pending,
                InlinePoll::Pending { woken: true } if repolled < INLINE_REPOLLS => {
                    repolled += 1;
                }
                InlinePoll::Pending { woken: true } => {
                    task.wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl std::task::Wake for InlineWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.hold_body_wakes && BodyPoll::hold(self) {
            return;
        }
        let state = self.state.fetch_or(Self::WOKEN, Ordering::AcqRel);
        if state & Self::POLLING == 0 {
            self.side.task.wake();
        }
    }
}

/// The wake-up of a connection that [`poll_body_frame`] holds back while it polls a
/// request's body on this thread.
struct BodyPoll {
    /// A body is being polled: the first connection wake-up is held.
    polling: std::cell::Cell<bool>,
    /// The connection woken during the poll.
    held: std::cell::Cell<Option<std::task::Waker>>,
}

thread_local! {
    static BODY_POLL: BodyPoll = const {
        BodyPoll {
            polling: std::cell::Cell::new(false),
            held: std::cell::Cell::new(None),
        }
    };
}

impl BodyPoll {
    /// Holds `connection`'s wake-up if a body is being polled on this thread and none is
    /// held yet; whether it did.
    fn hold(connection: &Arc<InlineWake>) -> bool {
        BODY_POLL.with(|poll| {
            if !poll.polling.replace(false) {
                return false;
            }
            poll.held
                .set(Some(std::task::Waker::from(Arc::clone(connection))));
            true
        })
    }

    /// Ends a poll: the wake-up held, if any.
    fn end() -> Option<std::task::Waker> {
        BODY_POLL.with(|poll| {
            poll.polling.set(false);
            poll.held.take()
        })
    }
}

/// A frame of body `B`, or its error.
pub(crate) type BodyFrame<B> =
    Result<hyper::body::Frame<<B as hyper::body::Body>::Data>, <B as hyper::body::Body>::Error>;

/// Polls a request's body for its next frame, as `poll_frame` does, without the needless
/// wake-up of the connection that hyper's body channel makes when a frame is taken.
///
/// Why: taking a frame from hyper's channel wakes the connection's reading side (so that
/// it may send the next one) — on every request, though a body read whole has no next one,
/// and the connection then runs a whole poll for nothing. So a wake-up of a connection
/// (an [`InlineWake`]) that comes from inside this poll, on this thread, is held, and
/// dropped if the body has ended with the frame (`is_end_stream`: hyper's reading side has
/// nothing more to send, and its next poll drops its sender without waiting for a
/// wake-up); in any other case (more to read, a body not yet wanted, a panic) it is passed
/// on as it came. Wake-ups from other threads, and of other wakers, are never held.
pub(crate) fn poll_body_frame<B: hyper::body::Body>(
    mut body: std::pin::Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<BodyFrame<B>>> {
    /// Ends the poll however it ends; passes on the wake-up it holds.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            if let Some(connection) = BodyPoll::end() {
                connection.wake();
            }
        }
    }
    BODY_POLL.with(|poll| poll.polling.set(true));
    let end = End;
    let polled = body.as_mut().poll_frame(cx);
    if body.is_end_stream() {
        drop(BodyPoll::end());
    }
    drop(end);
    polled
}

/// Whether an HTTP connection is serving a request, and since when it has not been: what
/// its header-read timeout is measured from ([`serve_connection`]).
struct Activity {
    /// Requests being served (one at a time on HTTP/1, one per open stream on HTTP/2), and
    /// when the last one ended (or when the connection was accepted).
    state: parking_lot::Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: parking_lot::Mutex::new((0, Instant::now())),
        }
    }

    /// Called when `timer` fired: whether the connection has been idle for `timeout`;
    /// otherwise `timer` is set again, to the end of the current idle time's `timeout`, or,
    /// while a request is served, a whole `timeout` from now (the idle time that follows
    /// ends no earlier).
    fn timed_out(&self, timeout: Duration, timer: std::pin::Pin<&mut tokio::time::Sleep>) -> bool {
        let (serving, idle_since) = *self.state.lock();
        let now = Instant::now();
        let next = if serving == 0 {
            let deadline = idle_since + timeout;
            if deadline <= now {
                return true;
            }
            deadline
        } else {
            now + timeout
        };
        timer.reset(next);
        false
    }
}

/// A request being served: its connection is not idle until this is dropped, with the
/// answer's body once hyper has written it (or with the request, if it is abandoned).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.state.lock().0 += 1;
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// The body of an answer [`serve_connection`] writes.
enum AnswerBody {
    /// The whole body, as the command route's fast path answers (`None` once it has been
    /// handed over, or if it is empty): what `Body::from(bytes)` is, without its box.
    Whole(Option<axum::body::Bytes>),
    /// Any body, as the router answers.
    Routed(axum::body::Body),
}

impl AnswerBody {
    /// `bytes` as a body: no frame at all if empty, as `http_body_util::Full` does.
    fn whole(bytes: axum::body::Bytes) -> Self {
        Self::Whole((!bytes.is_empty()).then_some(bytes))
    }
}

impl hyper::body::Body for AnswerBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Self::Whole(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
            Self::Routed(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(bytes) => bytes.is_none(),
            Self::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Whole(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Routed(body) => body.size_hint(),
        }
    }
}

/// An answer's body, which keeps its request [`Busy`] until hyper has written it.
struct TrackedBody {
    body: AnswerBody,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// `serve_connection` over an in-memory stream; the client's end, the `closing` sender
    /// and the connection's task.
    async fn connection() -> (
        DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let server = Server::builder(ServerConfig::default())
            .development_mode()
            .build()
            .unwrap();
        connection_to(&server).await
    }

    /// `serve_connection` of `server` over an in-memory stream, as [`connection`].
    async fn connection_to(
        server: &Server,
    ) -> (
        DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, served) = tokio::io::duplex(4096);
        let (closing, task) = serve_over(served, server).await;
        (client, closing, task)
    }

    /// `serve_connection` of `server` over `io`, with [`TIMEOUT`] and 256 streams; the
    /// `closing` sender and the connection's task.
    async fn serve_over<I>(
        io: I,
        server: &Server,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (closing, closing_rx) = watch::channel(false);
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let task = tokio::spawn(serve_connection(
            io,
            server.service(),
            ConnectionLimits {
                header_read_timeout: TIMEOUT,
                http2_max_streams: 256,
            },
            closing_rx,
            permit,
        ));
        (closing, task)
    }

    const SECRET: &str = "a-server-unit-test-secret-of-32-bytes";

    /// A token signed with [`SECRET`], valid for an hour.
    fn token(role: bridge_protocol::Role) -> String {
        crate::auth::Claims {
            sub: "backend".into(),
            role,
            devices: None,
            exp: crate::auth::unix_now() + 3600,
        }
        .encode(SECRET.as_bytes())
        .unwrap()
    }

    /// A command to `device` (offline: answered 503 `offline` once authorised), with
    /// `authorization`.
    fn command(device: &str, authorization: &str) -> Vec<u8> {
        let body = br#"{"payload":"03","ifOffline":"fail"}"#;
        let mut request = format!(
            "POST /v1/devices/{device}/commands HTTP/1.1\r\nHost: localhost\r\n\
             authorization: {authorization}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    #[tokio::test]
    async fn each_request_of_a_kept_alive_connection_has_its_own_token_checked() {
        let config = ServerConfig {
            jwt_secret: Some(SECRET.into()),
            ..ServerConfig::default()
        };
        let server = Server::builder(config).build().unwrap();
        let (mut client, _closing, task) = connection_to(&server).await;
        let service = format!("Bearer {}", token(bridge_protocol::Role::Service));
        let user = format!("Bearer {}", token(bridge_protocol::Role::User));
        let mut forged = service.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forged = String::from_utf8(forged).unwrap();
        // A device id too long to be one (the path segment is fine as a URI's).
        let long = "d".repeat(129);
        // The accepted header, then others on the same connection: each is answered as
        // on a connection of its own, and the accepted one again after them; the token is
        // refused before the device id, as the router refuses them.
        let steps = [
            ("lock-1", service.as_str(), "HTTP/1.1 503"),
            ("lock-1", service.as_str(), "HTTP/1.1 503"),
            ("lock-2", service.as_str(), "HTTP/1.1 503"),
            ("lock-1", forged.as_str(), "HTTP/1.1 401"),
            ("lock-1", user.as_str(), "HTTP/1.1 403"),
            ("lock-1", "Bearer", "HTTP/1.1 401"),
            (long.as_str(), forged.as_str(), "HTTP/1.1 401"),
            (long.as_str(), service.as_str(), "HTTP/1.1 400"),
            ("lock-1", service.as_str(), "HTTP/1.1 503"),
        ];
        for (device, authorization, status) in steps {
            client
                .write_all(&command(device, authorization))
                .await
                .unwrap();
            let answer = answer(&mut client).await;
            assert!(answer.starts_with(status), "{authorization}: {answer}");
        }
        // Two `Authorization` headers: the first one is the request's, as the router reads
        // it (`HeaderMap::get`).
        for (first, second, status) in [
            (forged.as_str(), service.as_str(), "HTTP/1.1 401"),
            (service.as_str(), forged.as_str(), "HTTP/1.1 503"),
        ] {
            let request = String::from_utf8(command("lock-1", first))
                .unwrap()
                .replacen(
                    "content-type",
                    &format!("authorization: {second}\r\ncontent-type"),
                    1,
                );
            client.write_all(request.as_bytes()).await.unwrap();
            let answer = answer(&mut client).await;
            assert!(
                answer.starts_with(status),
                "{first} then {second}: {answer}"
            );
        }
        drop(client);
        task.await.unwrap();
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An `InlineWake` whose task is a [`Count`].
    fn inline_wake() -> (Arc<InlineWake>, std::task::Waker, Arc<Count>) {
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let side = Arc::new(SideWake::new());
        side.task
            .register(&std::task::Waker::from(Arc::clone(&count)));
        let inline = Arc::new(InlineWake::new(side, true));
        let waker = std::task::Waker::from(Arc::clone(&inline));
        (inline, waker, count)
    }

    #[test]
    fn a_wake_up_during_the_poll_asks_for_another_poll_and_does_not_wake_the_task() {
        let (inline, waker, count) = inline_wake();
        let polled = inline.poll(|| {
            waker.wake_by_ref();
            Poll::<()>::Pending
        });
        assert!(matches!(polled, InlinePoll::Pending { woken: true }));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // The next poll starts afresh.
        let polled = inline.poll(|| Poll::<()>::Pending);
        assert!(matches!(polled, InlinePoll::Pending { woken: false }));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_up_between_polls_wakes_the_task() {
        let (inline, waker, count) = inline_wake();
        assert!(matches!(
            inline.poll(|| Poll::<()>::Pending),
            InlinePoll::Pending { woken: false }
        ));
        std::task::Waker::wake(waker.clone());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // A finished connection is finished, woken or not.
        let polled = inline.poll(|| {
            waker.wake_by_ref();
            Poll::Ready(7)
        });
        assert!(matches!(polled, InlinePoll::Ready(7)));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// A body that wakes `sender` each time a frame is taken from it, as hyper's body
    /// channel wakes its sending side; it has ended once its frames are taken if `ends`.
    struct Waking {
        sender: std::task::Waker,
        frames: std::collections::VecDeque<axum::body::Bytes>,
        ends: bool,
        panics: bool,
    }

    impl hyper::body::Body for Waking {
        type Data = axum::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            self.sender.wake_by_ref();
            assert!(!self.panics, "a body that panics");
            Poll::Ready(
                self.frames
                    .pop_front()
                    .map(|b| Ok(hyper::body::Frame::data(b))),
            )
        }

        fn is_end_stream(&self) -> bool {
            self.ends && self.frames.is_empty()
        }
    }

    fn waking(sender: &std::task::Waker, frames: &[&'static str], ends: bool) -> Waking {
        Waking {
            sender: sender.clone(),
            frames: frames.iter().map(|f| axum::body::Bytes::from(*f)).collect(),
            ends,
            panics: false,
        }
    }

    /// Polls `body` once with `poll_body_frame` (with a waker that counts nothing).
    fn poll_once(body: &mut Waking) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = poll_body_frame(std::pin::Pin::new(body), &mut cx);
        assert!(polled.is_ready());
    }

    /// `inline`'s task registered again (a wake-up takes it, as a task's poll would).
    fn rearm(inline: &InlineWake, count: &Arc<Count>) {
        inline
            .side
            .task
            .register(&std::task::Waker::from(Arc::clone(count)));
    }

    #[test]
    fn the_wake_up_of_a_frame_taken_is_dropped_only_once_the_body_has_ended() {
        let (inline, connection, count) = inline_wake();
        let woken = || count.0.load(Ordering::SeqCst);
        let mut body = waking(&connection, &["a", "b"], true);
        // More to read: the connection is woken, as hyper's channel asked.
        poll_once(&mut body);
        assert_eq!(woken(), 1);
        rearm(&inline, &count);
        // The last frame: its wake-up asks the connection for nothing.
        poll_once(&mut body);
        assert_eq!(woken(), 1);
        // A body that has not ended (no length, more may come): always passed on.
        let mut body = waking(&connection, &["a"], false);
        poll_once(&mut body);
        assert_eq!(woken(), 2);
        rearm(&inline, &count);
        poll_once(&mut body);
        assert_eq!(woken(), 3);
    }

    #[test]
    fn only_a_connections_own_wake_up_is_held_and_only_during_the_poll() {
        let (inline, connection, count) = inline_wake();
        let woken = || count.0.load(Ordering::SeqCst);
        // Any other waker is woken as it asks, even by an ended body.
        let other = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let mut body = waking(&std::task::Waker::from(Arc::clone(&other)), &["a"], true);
        poll_once(&mut body);
        assert_eq!(other.0.load(Ordering::SeqCst), 1);
        // Outside a body's poll, the connection is woken.
        connection.wake_by_ref();
        assert_eq!(woken(), 1);
        rearm(&inline, &count);
        // A body that panics: the wake-up held is passed on, and none is held after.
        let mut body = waking(&connection, &["a"], true);
        body.panics = true;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_once(&mut body);
        }));
        assert!(panicked.is_err());
        assert_eq!(woken(), 2);
        rearm(&inline, &count);
        connection.wake_by_ref();
        assert_eq!(woken(), 3);
    }

    /// A connection that wakes itself during each of its polls, `times` times, then ends.
    struct SelfWaking {
        polls: usize,
        times: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;

        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_that_keeps_waking_itself_is_polled_until_it_ends() {
        // More self wake-ups than the inline polls allow in a row: the task's own turns
        // take over, and no wake-up is lost.
        let inline = Arc::new(InlineWake::new(Arc::new(SideWake::new()), true));
        let waker = std::task::Waker::from(Arc::clone(&inline));
        let mut connection = std::pin::pin!(SelfWaking {
            polls: 0,
            times: 10
        });
        let mut task_polls = 0;
        let polls = std::future::poll_fn(|cx| {
            task_polls += 1;
            inline.side.task.register(cx.waker());
            inline.poll_connection(cx.waker(), || {
                connection.as_mut().poll(&mut Context::from_waker(&waker))
            })
        })
        .await;
        assert_eq!(polls, 11);
        // 11 polls of the connection, `INLINE_REPOLLS + 1` per poll of the task.
        assert_eq!(task_polls, 11_usize.div_ceil(INLINE_REPOLLS + 1));
    }

    #[test]
    fn a_connection_that_did_not_wake_itself_is_polled_once() {
        let (inline, waker, count) = inline_wake();
        let mut polls = 0;
        let polled = inline.poll_connection(&waker, || {
            polls += 1;
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!((polls, count.0.load(Ordering::SeqCst)), (1, 0));
        // Woken once during its poll: polled once more, the task not woken.
        let mut polls = 0;
        let polled = inline.poll_connection(&waker, || {
            polls += 1;
            if polls == 1 {
                waker.wake_by_ref();
            }
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!((polls, count.0.load(Ordering::SeqCst)), (2, 0));
    }

    /// Reads until the server closes its end (failing if it has not within an hour of
    /// virtual time); what it sent.
    async fn until_closed(client: &mut DuplexStream) -> Vec<u8> {
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        let read = async {
            loop {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_hours(1), read)
            .await
            .expect("the server closed the connection");
        received
    }

    /// Reads one answer's head (the answers here have short bodies in the same write).
    async fn answer(client: &mut DuplexStream) -> String {
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&received).contains("\r\n\r\n") {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer");
            received.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(received).unwrap()
    }

    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_mid_request_ends_its_connection_at_once() {
        let (mut client, _closing, task) = connection().await;
        // A request whose answer does not end at once (a stream): its head comes back, then
        // the client goes away while it is still being served.
        client
            .write_all(b"GET /v1/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        drop(client);
        // Found at once, not at the stream's next keep-alive comment (15 s): the request's
        // future is dropped with the connection.
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the connection outlived its client")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_header_read_timeout_not_before() {
        let (mut client, _closing, task) = connection().await;
        let start = Instant::now();
        let received = until_closed(&mut client).await;
        assert!(received.is_empty());
        assert_eq!(start.elapsed(), TIMEOUT);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_is_closed_a_timeout_after_its_last_answer() {
        let (mut client, _closing, task) = connection().await;
        // Requests 6 s apart: each one moves the deadline (none is closed at 10 s).
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(HEALTHZ).await.unwrap();
            assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        }
        let answered = Instant::now();
        assert!(until_closed(&mut client).await.is_empty());
        assert_eq!(answered.elapsed(), TIMEOUT);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn closing_ends_an_idle_connection_at_once_and_a_busy_one_after_its_answer() {
        let (mut client, closing, task) = connection().await;
        client.write_all(HEALTHZ).await.unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        closing.send(true).unwrap();
        assert!(until_closed(&mut client).await.is_empty());
        assert_eq!(start.elapsed(), Duration::ZERO);
        task.await.unwrap();

        // Half a request head when closing comes: it is not cut at once, but the
        // header-read timeout still closes it, counted from its accept.
        let (mut client, closing, task) = connection().await;
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        closing.send(true).unwrap();
        let start = Instant::now();
        let received = until_closed(&mut client).await;
        assert_eq!(start.elapsed(), Duration::from_secs(9));
        assert!(
            received.is_empty(),
            "{}",
            String::from_utf8_lossy(&received)
        );
        task.await.unwrap();
    }

    /// An HTTP/2 frame's head (RFC 9113 4.1): its type, flags and stream, and its payload.
    #[derive(Debug)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// HTTP/2 frame types (RFC 9113 6).
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;

    /// The client preface and an empty SETTINGS frame: an HTTP/2 connection that asks for
    /// nothing.
    fn http2_hello() -> Vec<u8> {
        let mut hello = preface::HTTP2_PREFACE.to_vec();
        hello.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        hello
    }

    /// The next whole frame, or `None` at the end of the stream.
    async fn next_frame(client: &mut DuplexStream) -> Option<Frame> {
        let mut head = [0u8; 9];
        client.read_exact(&mut head).await.ok()?;
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; length];
        client.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// HTTP/2's graceful close, as the client sees it (RFC 9113 6.8): a GOAWAY that lets
    /// every stream in, a PING, which the client answers, then the GOAWAY naming the last
    /// stream the server took (none here), and the end of the connection.
    async fn told_to_go(client: &mut DuplexStream) {
        let first = frame_of(client, GOAWAY).await;
        assert_eq!(first.payload[..8], [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let ping = frame_of(client, PING).await;
        let mut ack = vec![0, 0, 8, PING, 0x1, 0, 0, 0, 0];
        ack.extend_from_slice(&ping.payload);
        client.write_all(&ack).await.unwrap();
        let last = frame_of(client, GOAWAY).await;
        // Last stream 0, NO_ERROR.
        assert_eq!(last.payload[..8], [0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(until_closed(client).await.is_empty());
    }

    /// Reads frames until one of `kind`.
    async fn frame_of(client: &mut DuplexStream, kind: u8) -> Frame {
        loop {
            let frame = next_frame(client).await.expect("closed before the frame");
            if frame.kind == kind {
                return frame;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_told_its_limits_in_the_servers_settings() {
        let (mut client, _closing, _task) = connection().await;
        client.write_all(&http2_hello()).await.unwrap();
        let settings = frame_of(&mut client, SETTINGS).await;
        assert_eq!(settings.stream, 0);
        let values: Vec<(u16, u32)> = settings
            .payload
            .chunks_exact(6)
            .map(|s| {
                (
                    u16::from_be_bytes([s[0], s[1]]),
                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                )
            })
            .collect();
        // SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE.
        assert!(values.contains(&(0x3, 256)), "{values:?}");
        assert!(values.contains(&(0x6, HTTP2_MAX_HEADER_LIST)), "{values:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_gets_a_goaway_at_the_header_read_timeout_then_closes() {
        let (mut client, _closing, task) = connection().await;
        let start = Instant::now();
        client.write_all(&http2_hello()).await.unwrap();
        told_to_go(&mut client).await;
        assert_eq!(start.elapsed(), TIMEOUT);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_cannot_be_told_to_go_is_dropped_a_timeout_later() {
        let (client, _closing, task) = connection().await;
        // The client sends PINGs and reads nothing: the server's PING answers fill the
        // pipe, so its GOAWAY can never be written, and the second timeout drops it.
        let (_reading, mut writing) = tokio::io::split(client);
        let start = Instant::now();
        tokio::spawn(async move {
            writing.write_all(&http2_hello()).await.unwrap();
            let ping = [0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
            // Until the server stops reading (its answers are not read): an error ends it.
            while writing.write_all(&ping).await.is_ok() {}
        });
        tokio::time::timeout(Duration::from_hours(1), task)
            .await
            .expect("the connection was never dropped")
            .unwrap();
        assert_eq!(start.elapsed(), 2 * TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_sends_an_idle_http2_connection_a_goaway_at_once() {
        let (mut client, closing, task) = connection().await;
        client.write_all(&http2_hello()).await.unwrap();
        frame_of(&mut client, SETTINGS).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        closing.send(true).unwrap();
        told_to_go(&mut client).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn closing_before_the_first_byte_ends_the_connection_at_once() {
        let (mut client, closing, task) = connection().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        closing.send(true).unwrap();
        assert!(until_closed(&mut client).await.is_empty());
        assert_eq!(start.elapsed(), Duration::ZERO);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_preface_is_closed_at_the_header_read_timeout_counted_from_the_accept() {
        let (mut client, _closing, task) = connection().await;
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        client
            .write_all(&preface::HTTP2_PREFACE[..10])
            .await
            .unwrap();
        assert!(until_closed(&mut client).await.is_empty());
        assert_eq!(start.elapsed(), TIMEOUT);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_http2_connection_answers_its_requests_at_once_and_refuses_a_websocket() {
        let (client, _closing, _task) = connection().await;
        let (mut sender, driver) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .unwrap();
        tokio::spawn(driver);
        let request = |path: &str| {
            axum::http::Request::builder()
                .uri(format!("http://localhost{path}"))
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // Many requests in flight on the one connection.
        let answers = futures_util::future::join_all(
            (0..20).map(|_| sender.send_request(request("/healthz"))),
        )
        .await;
        for answer in answers {
            let answer = answer.unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.version(), axum::http::Version::HTTP_2);
        }
        let refused = sender.send_request(request("/ws?userId=u")).await.unwrap();
        assert_eq!(refused.status(), 505);
        let body = axum::body::to_bytes(axum::body::Body::new(refused.into_body()), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }

    /// An in-memory stream that counts the server's writes.
    struct CountingWrites {
        io: DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tokio::io::AsyncRead for CountingWrites {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// `GET /healthz` as an HTTP/2 HEADERS frame on `stream` that ends the stream (HPACK:
    /// `:method GET`, `:scheme http`, then `:path` and `:authority` as literals).
    fn healthz_on(stream: u32) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x04, 8];
        block.extend_from_slice(b"/healthz");
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        let length = u8::try_from(block.len()).unwrap();
        // END_STREAM | END_HEADERS.
        let mut frame = vec![0, 0, length, HEADERS, 0x5];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&block);
        frame
    }

    // One worker, as a server pinned to one core has: the runtime runs a task just woken
    // next, which the connection's one-turn delay is about.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_answers_of_http2_streams_that_end_together_are_written_together() {
        let server = Server::builder(ServerConfig::default())
            .development_mode()
            .build()
            .unwrap();
        let (mut client, served) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = CountingWrites {
            io: served,
            writes: Arc::clone(&writes),
        };
        let (_closing, _task) = serve_over(counted, &server).await;
        client.write_all(&http2_hello()).await.unwrap();
        // The server's opening frames, up to its acknowledgement of the client's SETTINGS.
        while frame_of(&mut client, SETTINGS).await.flags & 0x1 == 0 {}
        let before = writes.load(Ordering::Relaxed);
        // Twenty requests in one write: the connection reads them at once, and their
        // streams answer at once.
        let requests: Vec<u8> = (0..20).flat_map(|i| healthz_on(2 * i + 1)).collect();
        client.write_all(&requests).await.unwrap();
        let mut answered = 0;
        while answered < 20 {
            let frame = next_frame(&mut client).await.expect("closed");
            if frame.kind == HEADERS {
                answered += 1;
            }
        }
        let answer_writes = writes.load(Ordering::Relaxed) - before;
        // Twenty, one per answer, without the connection's delay; one with it (a little
        // room is left for the runtime's timing on a busy machine).
        assert!(answer_writes <= 4, "{answer_writes} writes for 20 answers");
    }
}

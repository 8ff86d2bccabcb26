//! The bridge server (PROTOCOL.md, all of it).
//!
//! This crate composes the connection hub (`bridge-hub`), the session manager
//! (`bridge-session`) and the offline queue (`bridge-queue`) into the HTTP and WebSocket
//! server of PROTOCOL.md, and is the `bridge-server` binary.
//!
//! * [`Server::builder`] takes a [`ServerConfig`] and optionally a store, a device-type
//!   registry, hub settings, a [`Hub`](bridge_hub::Hub) wrapper and delivery settings;
//!   [`Server::router`] is an axum [`Router`](axum::Router) to mount in an application, and
//!   [`Server::serve`] runs it with graceful shutdown.
//! * [`auth`]: HS256 JWT authentication and development mode (PROTOCOL.md 1).
//! * [`config`]: the command line, `BRIDGE_*` environment variables and the TOML file.
//! * [`open_store`]: the queue backend a `--queue` URL names.
//! * [`openapi`]: the OpenAPI 3.1 description of the HTTP API, served at
//!   `GET /v1/openapi.json` (no token) and as text by [`openapi_json`].
//! * `GET /console`: the operator console, a page for people (devices online and their
//!   bridges, a device's queue with confirm and cancel, sending a command, the live feed,
//!   the headline metrics). Its HTML, CSS and script are compiled into the crate and call
//!   only the public API and stream, with the `service` token the person signs in with.
//!
//! # Example
//!
//! ```
//! use bridge_server::{Server, ServerConfig};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Development mode (said explicitly: without it, a server with no JWT secret is not
//! // built), in-memory queue, the built-in `smart-lock` device type.
//! let server = Server::builder(ServerConfig::default())
//!     .development_mode()
//!     .build()?;
//! let router = server.router();
//!
//! let request = axum::http::Request::get("/healthz").body(axum::body::Body::empty())?;
//! let response = router.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! // A device never seen is offline, not 404.
//! let request = axum::http::Request::get("/v1/devices/lock-1").body(axum::body::Body::empty())?;
//! let response = router.oneshot(request).await?;
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(
//!     body,
//!     r#"{"deviceId":"lock-1","online":false,"bleConnected":null,"bridges":0,"pendingCommands":0}"#
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # How the parts meet
//!
//! * `GET /ws` authenticates **before** the upgrade (401/403 with the error body), then
//!   upgrades with hyper and hands tokio-tungstenite's stream, configured with
//!   [`HubConfig::websocket_config`](bridge_hub::HubConfig::websocket_config), to
//!   [`LocalHub::serve`](bridge_hub::LocalHub::serve). A token's `exp` becomes the
//!   connection's expiry (closed with 1008 once passed).
//! * A `ble_response` is matched on the task of the connection it arrived on: the hub calls
//!   the server's response handler, which calls the session manager (an unknown request
//!   is answered `unknown_request`, another connection's or device's `forbidden`, by the
//!   hub). The hub's events are handled the same way, synchronously and in order, with no
//!   channel or dispatcher task in between: a release or a closed bridge fails what is
//!   pending through it at once (`bridge_lost`); `DeviceOnline` and `ble_status` with
//!   `connected: true` start delivery passes; a user's `command` frame runs the same command
//!   path as `POST /v1/devices/{deviceId}/commands`, on its own task, and is answered with
//!   `command_result` or an error frame carrying its `requestId`.
//! * The session manager sends through the hub ([`Hub::send_to_device`]); the hub's
//!   in-flight ticket it gets back is owned by the pending command and dropped when the
//!   command ends, so routing knows the commands in flight per connection.
//! * The delivery engine (see [`DeliveryConfig`]) leases a device's queued commands one at a
//!   time, sends them through the session manager, completes or releases them in the store,
//!   and announces final outcomes to the device's subscribers as `command_result` with the
//!   `commandId`.
//!
//! [`Hub::send_to_device`]: bridge_hub::Hub::send_to_device
//!
//! # Readings of PROTOCOL.md
//!
//! Where the protocol leaves room, this server does what follows.
//!
//! * **A queued delivery cut off by a lost bridge** is tried again at once through another
//!   holder if the device is still online (section 2, "tried again through another holder");
//!   one cut off by a timeout waits for the next delivery pass (section 4.2): the device
//!   coming online, a holder's link coming up, or the retry tick.
//! * **"A holder reports `connected: true`"** (4.2) means its link *comes up*: a
//!   `ble_status` with `connected: true` after one with `false`, or as that holder's first
//!   report. A repeated `true` starts no delivery pass.
//! * **A queued command keeps its `deviceType` and `timeoutMs` in the store**, so it is
//!   delivered with them after a restart too. Queued without a `deviceType`, it is delivered
//!   as the registry's default type *at delivery time*; an update in place (same
//!   `commandType`, same party) replaces both with the new request's.
//! * **`expired` is announced** to the device's subscribers exactly once, by whatever
//!   notices it first: a delivery pass (which asks the store first, so a command that expired
//!   while no server ran is announced when its device next comes online), a retry tick's
//!   sweep (at most [`SweepReport::MAX_EXPIRED_COMMANDS`](bridge_queue::SweepReport) per
//!   tick), or an HTTP read of the command or its device (`GET /v1/commands/{id}`,
//!   `GET /v1/devices/{id}`, `GET /v1/devices/{id}/commands` end the device's expired
//!   commands through the store before answering). Store reads change nothing.
//! * **A command that used its last attempt** is announced as `failed` without an `error`
//!   (the store records no device error for it), and its `result` is `null`.
//! * **`attempts` counts the deliveries whose `ble_write` left** (4.2, "every time the
//!   command was sent to a bridge"): a device that went offline between the lease and the
//!   send costs none; a lease that lapsed or was reclaimed after a crash counts one (the write
//!   may have left). A `delivering` command's `attempts` includes the delivery in progress.
//! * **`stage`/`progress` of `GET /v1/commands/{id}`** (4.1, "for the latest attempt") are
//!   those of the latest attempt that *ended*, recorded when it ends: while a delivery is in
//!   flight the command is `delivering` and still shows the previous attempt's stages (none
//!   before its first). How far the attempt in flight has got is in its `command_result`
//!   on the stream and in the subscribers' frames when it ends.
//! * **`GET /v1/openapi.json`** (not in PROTOCOL.md): the OpenAPI 3.1 description of
//!   section 4, served without a token (it holds nothing secret). It documents, beyond the
//!   statuses section 4 gives, those of the readings below (400 for a bad device id in a path,
//!   413, 503 `unavailable`).
//! * **HTTP body over the size limit**: 413 with code `invalid_request` (the protocol has no
//!   dedicated code). A device id in a path that is not a valid id: 400 `invalid_request`; a
//!   command id that cannot be valid: 404 `not_found`. Unknown routes: 404 `not_found`.
//! * **Refusals that are not statuses**: the session manager's global cap on pending
//!   commands and a server shutting down are 503 `unavailable`, over HTTP and as error
//!   frames. A WebSocket upgrade during shutdown is 503 `unavailable`; a `GET /ws` without
//!   upgrade headers (after authentication) is 426 `invalid_request`.
//! * **Commands per user connection**: at most
//!   [`ServerBuilder::DEFAULT_MAX_USER_COMMANDS`] `command` frames of one connection run at
//!   once ([`ServerBuilder::max_commands_per_connection`], which sets the hub's
//!   `HubConfig::max_commands_per_connection`); one more is answered by the hub with an
//!   error frame `rate_limited` and its `requestId`, so that one connection cannot take the
//!   server's whole pending capacity.
//! * **`bridge_commands_total{outcome}`** counts every command path answer by its status
//!   (`succeeded`, `queued`, `awaiting_confirmation`, `device_error`, `offline`,
//!   `bridge_lost`, `timeout`) and refusals by their error code (`queue_full`, …); each queued
//!   delivery counts once more by how it ended.
//! * **`bridge_queue_commands{status}`** has the statuses that are not final
//!   (`awaiting_confirmation`, `pending`, `delivering`) over every device of the store
//!   ([`Store::open_counts`](bridge_queue::Store::open_counts)), those of other servers
//!   sharing it included. **`bridge_task_panics_total{task}`** counts panics caught in the
//!   delivery tasks (the delivery goes on at the next trigger).
//! * **Several servers sharing one store** deliver one command at a time per device across
//!   all of them, in queue order: the store leases a device's next command to one node at a
//!   time, atomically ([`Store::lease_next`](bridge_queue::Store::lease_next)). Each needs its
//!   own `--node-id`. Routing and presence are per process unless a distributed
//!   [`Hub`](bridge_hub::Hub) is installed with [`ServerBuilder::wrap_hub`]: the binary's
//!   `--cluster` installs `bridge_cluster::ClusterHub` that way (PROTOCOL.md 5). The server
//!   passes every event of its local hub to [`Hub::observe`](bridge_hub::Hub::observe) first,
//!   answers `/readyz` from [`Hub::health`](bridge_hub::Hub::health) too, and handles
//!   `HubEvent::DeliveryRequested` (another node queued a command for a device held here).
//! * **Application frames** (the protocol defines none over WebSocket; it only says an
//!   application event's `type` must not be one it defines, 3.3): a frame whose `type` the
//!   application registered with [`ServerBuilder::frame`] — by exact, case-sensitive name,
//!   never one of [`RESERVED_TYPES`](bridge_protocol::RESERVED_TYPES) (refused by
//!   [`ServerBuilder::build`] with [`BuildError::ReservedFrameType`]) — is handed to its
//!   handler with the connection's identity and role, from a user or a bridge. It is read
//!   as every frame is up to its `type` (one JSON object, no key twice, a string `type`;
//!   otherwise `invalid_message`), after the size limit (1009) and the rate limit
//!   (`rate_limited`), and answered only by what the handler sends: nothing is sent on its
//!   behalf, not even an `ack`. Every other `type` a role may not send stays
//!   `unknown_type`. What a handler sends must itself have an application `type`, or be an
//!   `error` frame with a code of 3.5 ([`FrameContext::refuse`]). See [`frames`].
//! * **`GET /v1/devices/{deviceId}` also lists `holders`**, an addition to PROTOCOL.md 4.3
//!   for the console and other operators' tools: this server's bridge connections that
//!   hold the device, best route first, each `{"userId","bleConnected","rssi",
//!   "commandsInFlight"}` (in flight on that connection, every device's). Left out when
//!   empty, so a device no bridge of this server holds reads exactly as 4.3 shows; in a
//!   cluster, holders on other nodes count in `bridges` only.
//! * **Development mode**: a user connection starts with no subscriptions (the token's
//!   `devices` in JWT mode), unless the embedding application installs a
//!   [`SubscriptionSource`](bridge_hub::SubscriptionSource) with
//!   [`ServerBuilder::customize_hub`].
//! * **Bridges over MQTT** (PROTOCOL.md 6): [`serve_mqtt`] runs `bridge-mqtt`'s front
//!   beside the WebSocket (the binary does with `--mqtt`). It reaches the server only
//!   through public seams: sessions are served by the local hub's `serve`, and a `hello` is
//!   authenticated by [`Server::authenticate_hello`], the very rules of `GET /ws` (a `hello`
//!   is always a bridge: a `user` token is `forbidden`).

pub mod auth;
pub mod config;
mod console;
mod error;
mod events;
pub mod frames;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hooks;
mod logs;
mod metrics;
mod mqtt;
pub mod openapi;
mod outlet;
mod preface;
mod retention;
mod routes;
mod server;
mod store;
mod stream;
mod transport;
mod ws;

/// How the offline queue is delivered: the dispatcher's engine configuration.
pub use bridge_dispatch::EngineConfig as DeliveryConfig;
pub use bridge_mqtt::{MqttBridges, MqttConfig, redacted as mqtt_redacted};
pub use config::{Cli, ConfigError, LogFormat, QueueUrl, ServerConfig};
pub use error::{BuildError, ServerError};
pub use frames::{FrameContext, FrameError, FrameHandler};
pub use hooks::{BridgeConnection, CommandEnded, Hooks, NoHooks};
pub use logs::{FLUSH_AFTER, FLUSH_BYTES, flush_logs, init_logs, runtime_builder};
pub use mqtt::{mqtt_config, serve_mqtt};
pub use openapi::openapi_json;
pub use routes::ApiService;
pub use server::{Server, ServerBuilder};
pub use store::{RABBITMQ_STATE_FILE, open_store};

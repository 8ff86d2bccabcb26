//! The WebSocket connection hub of the bridge server.
//!
//! The hub owns every WebSocket connection of a process: who is connected, which bridge
//! holds which device, which user connections watch which device, and getting frames out
//! fast without one slow client hurting the rest (PROTOCOL.md sections 2 and 3).
//!
//! * [`LocalHub::serve`] runs one upgraded connection — any `Stream + Sink` of tungstenite
//!   messages: the hub's own [`ServerWebSocket`] (what `bridge-server` serves `/ws` with),
//!   tokio-tungstenite's, an adapter over axum's, or an in-memory one — until it ends. It decodes every frame with the protocol crate and answers bad ones with the
//!   exact error frame of PROTOCOL.md 3.5, answers `ping`, applies `subscribe`,
//!   `unsubscribe`, `ble_status` and `release`, enforces the frame size limit (close 1009)
//!   and the rate limit (`rate_limited`, then close 1008), and keeps the connection alive
//!   with WebSocket pings.
//! * A bridge's `ble_response` is offered, on the connection's own task, to the
//!   [`ResponseHandler`] the server installs (its session manager matches it); a refusal is
//!   answered with `unknown_request` or `forbidden` by the hub itself.
//! * What else the hub does not handle itself — a user's `command` — and every presence
//!   change is reported as a [`HubEvent`] to the [`EventSink`] the server wires to its
//!   session manager and queue. The hub depends on neither.
//! * A command in flight on a connection is an [`InFlight`] ticket: [`Hub::send_to_device`]
//!   hands one back for a `ble_write`, [`HubEvent::UserCommand`] carries one for a user's
//!   `command` (at most [`HubConfig::max_commands_per_connection`] per user connection; one
//!   more is answered `rate_limited` by the hub). Dropping the ticket ends the count.
//! * The server sends and asks through the [`Hub`] trait: send to a device's best bridge,
//!   broadcast to a device's subscribers, send to a user or a connection, presence, counts,
//!   health ([`Hub::health`]), and it sees the local hub's events first ([`Hub::observe`]).
//!   [`LocalHub`] implements it in-process; a distributed hub (`bridge-cluster`'s
//!   `ClusterHub`, or a user's own) wraps a [`LocalHub`] and overrides what it distributes.
//! * The seams a distributed hub needs from the [`LocalHub`] it wraps, all public and all
//!   free when unused: a [`PresenceOverlay`] merged into the `device_status` frames it writes
//!   ([`LocalHub::set_presence_overlay`], [`LocalHub::refresh_status`]); a
//!   [`ResponseInterceptor`] that takes the answers of commands other processes sent through
//!   its bridges ([`LocalHub::set_response_interceptor`]); and, for commands this process
//!   sends through other processes' bridges, [`InFlight::remote`] tickets on stand-in
//!   connection ids ([`LocalHub::reserve_connection_id`]) whose answers and losses are fed
//!   back with [`LocalHub::offer_response`] and [`LocalHub::release_remote`]
//!   ([`ReleaseReason::Remote`]). [`LocalHub::request_delivery`] reports
//!   [`HubEvent::DeliveryRequested`] for a command another process queued.
//! * A text frame whose `type` the application registered with
//!   [`LocalHubBuilder::application_frames`] (never a type PROTOCOL.md defines) goes to its
//!   [`ApplicationFrameHandler`], awaited on the connection's task after the size and rate
//!   limits; every other unknown `type` is answered `unknown_type`.
//! * [`LocalHub::device_holders`] lists this process's bridge connections holding a device,
//!   best route first, each with its last link report, rssi and commands in flight
//!   ([`HolderPresence`]): what an operator's view shows per bridge.
//! * [`AccessPolicy`] decides claims, subscriptions and commands; [`SubscriptionSource`]
//!   gives a user connection its initial subscriptions.
//!
//! # Example: serving connections, and a hub that distributes broadcasts
//!
//! ```
//! use async_trait::async_trait;
//! use bridge_hub::{
//!     ConnectionInfo, DeviceAccess, FixedSubscriptions, Frame, Hub, HubConfig, HubEvent,
//!     LocalHub, UserId,
//! };
//! use bridge_protocol::{DeviceId, DeviceStatus, ServerToUser};
//! use futures_util::{SinkExt, StreamExt};
//!
//! /// A hub that would also publish broadcasts to other nodes; everything else is local.
//! struct ClusterHub {
//!     local: LocalHub,
//! }
//!
//! #[async_trait]
//! impl Hub for ClusterHub {
//!     fn local(&self) -> &LocalHub {
//!         &self.local
//!     }
//!
//!     async fn broadcast(&self, device_id: &DeviceId, frame: &Frame) -> usize {
//!         // A real implementation would publish `frame` to the other nodes here.
//!         self.local.broadcast(device_id, frame)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let lock = DeviceId::new("lock-1")?;
//! let local = LocalHub::builder()
//!     .subscriptions(FixedSubscriptions::new([lock.clone()]))
//!     .events(|event: HubEvent| println!("{event:?}"))
//!     .build();
//! let hub: Box<dyn Hub> = Box::new(ClusterHub { local: local.clone() });
//!
//! // Accept one WebSocket connection on loopback and serve it as a user connection.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = local.clone();
//! tokio::spawn(async move {
//!     let (tcp, _) = listener.accept().await?;
//!     let config = server.config().websocket_config();
//!     let ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?;
//!     let info = ConnectionInfo::user(UserId::new("alice"), DeviceAccess::All);
//!     server.serve(ws, info).await;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! });
//!
//! let (mut user, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
//! // The initial snapshot of the subscribed device.
//! let snapshot = user.next().await.ok_or("closed")??;
//! assert_eq!(
//!     snapshot.to_text()?,
//!     r#"{"type":"device_status","deviceId":"lock-1","online":false,"bleConnected":null}"#
//! );
//!
//! // Broadcast through the trait object: serialized once, queued for every subscriber.
//! let event = Frame::from_json_text(r#"{"type":"state_changed","deviceId":"lock-1"}"#);
//! assert_eq!(hub.broadcast(&lock, &event).await, 1);
//! assert_eq!(user.next().await.ok_or("closed")??.to_text()?, event.as_str());
//! assert_eq!(hub.counts().await.user_connections, 1);
//! user.close(None).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Routing among several holders
//!
//! A device may be held by several bridges. [`Hub::send_to_device`] picks, in this order
//! (PROTOCOL.md 2): a holder whose last `ble_status` said `connected: true`, then one that
//! has not reported, then one that said `false`; then the strongest `rssi` (never reported
//! ranks below any value; a `ble_status` without `rssi` keeps the last one); then the fewest
//! commands in flight through the connection (all its devices: the live [`InFlight`]
//! tickets [`Hub::send_to_device`] handed out for it); then the most recent claim.
//! `bleConnected` is what that holder last reported. A `device_status` is broadcast when
//! `online` or `bleConnected` changes because of a claim, a `ble_status`, a release or a
//! close; a change of the route caused only by commands in flight is not broadcast.
//!
//! # Limits and hostile clients
//!
//! Everything a client can make the server hold is bounded by [`HubConfig`]: the size of
//! one incoming frame, the frames per second, the outbound queue, the subscriptions of a
//! user connection and the devices a bridge holds. No input path panics. A client that does
//! not read is disconnected when its outbound queue is full — frames are only ever queued,
//! never awaited, so it cannot slow down a broadcast or anybody else — and counted in
//! [`HubCounts::slow_consumers_disconnected`]. A user's running `command` frames are capped
//! per connection ([`HubConfig::max_commands_per_connection`]) and per user over all its
//! connections ([`HubConfig::max_commands_per_user`]), and a user's connections too
//! ([`HubConfig::max_connections_per_user`]).
//!
//! `device_status` frames never count as slowness. A subscription's snapshot and a presence
//! change are queued as a marker per device, at most one per device at a time, outside the
//! frame bound; the frame is written from the device's presence when it leaves, so a client
//! that has not read yet gets the latest presence once, not every step in between. The
//! markers are bounded by the devices the connection watches, not by how often presence
//! changes: a 1,024-device snapshot, or a bridge holding hundreds of watched devices
//! coming or going, costs at most one marker (a device id) per watched device, and an idle
//! connection pays one pointer for them. (The other way, raising the frame bound for
//! snapshot frames by the subscription count, would have kept one serialized frame per
//! device per burst and still overflowed when a snapshot and a burst of the same devices
//! meet.) The price: a presence change is serialized per subscriber when it leaves,
//! instead of once for all.
//!
//! # Memory
//!
//! Ten thousand idle phones should cost little. Per connection the hub keeps:
//!
//! * no task of its own: [`LocalHub::serve`] runs read, write and keepalive as one future on
//!   the caller's task (the upgrade task the server has anyway), multiplexed by hand with
//!   one poll function, so there is no second task, no channel and no split lock;
//! * one shared outbound handle: a mutex-guarded `VecDeque` that allocates on the first
//!   queued frame and gives its memory back when a burst has drained, and the pump's waker
//!   under the same mutex — no pre-allocated channel blocks (a tokio mpsc channel allocates
//!   a block of 32 slots up front). The pump takes its waker's registration, a close
//!   request and the first frame with one lock per wake-up, and reads its socket with the
//!   handle itself as the waker (it is reference-counted already), so a wake-up for frames
//!   to write does not poll the socket for reading until the socket has woken that waker;
//! * one timer (the keepalive `Sleep`), re-armed, never re-allocated, and polled only when
//!   re-armed, fired, or under a new waker;
//! * its entries in the hub's maps: a bridge's held devices in a small vector, a user's
//!   subscriptions in a set that allocates on the first subscription;
//! * frames as shared, reference-counted bytes: a broadcast to N subscribers allocates its
//!   JSON once (`device_status` excepted, see "Limits and hostile clients").
//!
//! The WebSocket layer's buffers are the rest: [`HubConfig::websocket_config`] gives
//! [`ServerWebSocket`] (or tungstenite) a 1 KiB read buffer (tungstenite's default is
//! 128 KiB, allocated eagerly; protocol frames are a few hundred bytes, and a larger frame
//! grows the buffer only while it is read) and a write buffer that batches up to 4 KiB
//! ([`HubConfig::WRITE_BUFFER_BYTES`]): it starts empty and grows to the largest batch the
//! connection has written, so an idle connection that has only had its snapshot keeps a few
//! hundred bytes, and a busy one up to ~4 KiB more. The pump moves every queued frame into
//! it, lets the scheduler run once (so that the other commands' callers ready at that
//! moment queue theirs), and flushes the batch with one system call — the trade measured in
//! BENCHMARKS.md ("Write batching"). A connection whose frames come one at a time (four
//! waits in a row gathered nothing: one bridge per device) skips that wait for its next
//! eight batches, or until a batch holds several frames. Reading, the pump lets the
//! scheduler run after every two incoming frames while at most 32 commands are in flight on
//! its connection, so that the callers a burst of answers wakes have their next frames
//! written while the rest of the burst is read (the bridge keeps working instead of waiting
//! for the whole batch; BENCHMARKS.md, "the pump keeps its bridge busy"). [`ServerWebSocket`] always reads
//! with room for a whole read, so a frame that straddles the end of the 1 KiB read buffer
//! is read with one system call; a server that serves tokio-tungstenite's stream instead can
//! wrap the transport in [`ReadAhead`] for the same, for one null pointer per connection. Frames are limited to [`HubConfig::max_frame_bytes`] at the
//! WebSocket layer too, so an oversize frame is refused before it is buffered. The
//! `idle_connections` load test in `benches/` measures the result (see BENCHMARKS.md).

mod access;
mod application;
mod config;
mod event;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hub;
mod in_flight;
mod outbox;
mod pump;
mod rate;
mod read_ahead;
mod response;
mod state;
mod websocket;

pub use access::{
    AccessPolicy, ConnectionInfo, DeviceAccess, FixedSubscriptions, GrantedAccess,
    GrantedSubscriptions, SubscriptionSource, UserId,
};
pub use application::{ApplicationFrame, ApplicationFrameHandler};
pub use config::{HubConfig, RateLimit};
pub use event::{CloseReason, EventSink, HubEvent, IgnoreEvents, ReleaseReason};
pub use frame::Frame;
pub use hub::{
    DevicePresence, HolderPresence, Hub, HubCounts, HubError, HubHealth, LocalHub, LocalHubBuilder,
    PresenceOverlay, RemotePresence, ShutdownReport,
};
pub use in_flight::InFlight;
pub use read_ahead::ReadAhead;
pub use response::{
    Intercepted, NoPendingCommands, ResponseHandler, ResponseInterceptor, ResponseRefused,
};
pub use websocket::ServerWebSocket;

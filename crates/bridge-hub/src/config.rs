//! Limits and timings of the hub, with the defaults of PROTOCOL.md.

use std::time::Duration;

use bridge_protocol::Limits;
use tungstenite::protocol::WebSocketConfig;

/// Per-connection token bucket for incoming frames (PROTOCOL.md 3.5).
///
/// Every data frame (text or binary) and every WebSocket ping a client sends takes one token.
/// A frame that finds the bucket empty is dropped and answered with a `rate_limited` error
/// frame. A connection that has more than [`RateLimit::max_refused`] frames refused before
/// its bucket is full again is closed with 1008.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (default 100).
    pub per_second: f64,
    /// Bucket size: the most frames accepted in one burst (default 200).
    pub burst: u32,
    /// Refused frames tolerated before the connection is closed with 1008 (default 100). The
    /// count starts again once the bucket has refilled completely, that is once the client
    /// has stayed under its rate long enough.
    pub max_refused: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 100.0,
            burst: 200,
            max_refused: 100,
        }
    }
}

/// Everything the hub can be tuned by. `HubConfig::default()` is what PROTOCOL.md specifies.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HubConfig {
    /// Largest accepted incoming message, in bytes (default 64 KiB). A larger one closes the
    /// connection with 1009.
    pub max_frame_bytes: usize,
    /// Payload limit handed to the protocol decoders (default 512 decoded bytes).
    pub protocol_limits: Limits,
    /// Incoming frame rate limit.
    pub rate_limit: RateLimit,
    /// Frames that may wait in one connection's outbound queue (default 128). A connection
    /// whose queue is full when one more frame is due is a slow consumer: it is disconnected
    /// and counted, and never slows down anybody else.
    pub outbound_queue_frames: usize,
    /// Most devices one user connection may be subscribed to (default 1024). A `subscribe`
    /// beyond it is answered with `forbidden`.
    pub max_subscriptions: usize,
    /// Most devices one bridge connection may hold (default 256). A claim beyond it is
    /// answered with `forbidden`.
    pub max_held_devices: usize,
    /// Most `command` frames one user connection may have running at once (default 64): the
    /// live [`InFlight`](crate::InFlight) tickets handed out with
    /// [`HubEvent::UserCommand`](crate::HubEvent::UserCommand). One more is not handed over:
    /// the hub answers it with an error frame `rate_limited` carrying its `requestId`, and
    /// reports it as [`HubEvent::FrameRejected`](crate::HubEvent::FrameRejected). This keeps
    /// one connection from taking the whole server's pending capacity.
    pub max_commands_per_connection: usize,
    /// Most `command` frames one user may have running at once over all its user
    /// connections (default 256), counting the commands of connections it has closed that
    /// are still running. One more is answered `rate_limited` with its `requestId`, as for
    /// [`HubConfig::max_commands_per_connection`]. Together with
    /// [`HubConfig::max_connections_per_user`] this bounds what one user token can hold of
    /// the server's pending capacity, however many connections it opens.
    pub max_commands_per_user: usize,
    /// Most user connections one user may have open at once (default 32). One more is not
    /// served: [`LocalHub::serve`](crate::LocalHub::serve) closes it at once with 1008
    /// ([`CloseReason::TooManyConnections`](crate::CloseReason::TooManyConnections)). A
    /// server should ask [`LocalHub::user_connections`](crate::LocalHub::user_connections)
    /// before the upgrade and refuse with 429 instead; the hub's check is the one that holds
    /// when two connections of a user race for the last place. Bridge connections are not
    /// counted.
    pub max_connections_per_user: usize,
    /// Interval of WebSocket pings (default 20 s).
    pub ping_interval: Duration,
    /// A connection from which nothing (a pong or any other frame) has arrived for this long
    /// is closed (default 45 s).
    pub pong_timeout: Duration,
    /// How long a closing connection may take to exchange close frames (default 2 s).
    pub close_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            protocol_limits: Limits::default(),
            rate_limit: RateLimit::default(),
            outbound_queue_frames: 128,
            max_subscriptions: 1024,
            max_held_devices: 256,
            max_commands_per_connection: 64,
            max_commands_per_user: 256,
            max_connections_per_user: 32,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(45),
            close_timeout: Duration::from_secs(2),
        }
    }
}

impl HubConfig {
    /// The read buffer the hub recommends per connection (1 KiB), see
    /// [`HubConfig::websocket_config`].
    pub const READ_BUFFER_BYTES: usize = 1024;

    /// Frames the hub lets pile up in a connection's write buffer before they are written
    /// without waiting for its flush (4 KiB): the hub queues a connection's frames and
    /// flushes once per batch, so a batch goes out in one system call.
    pub const WRITE_BUFFER_BYTES: usize = 4 * 1024;

    /// A tungstenite configuration that matches this hub: frames and messages over
    /// [`HubConfig::max_frame_bytes`] are refused by the WebSocket layer before they are
    /// buffered, and the buffers are sized for many idle connections (see the crate docs,
    /// "Memory"): a 1 KiB read buffer (tungstenite's default is 128 KiB, allocated eagerly
    /// for every connection) and a write buffer of up to
    /// [`HubConfig::WRITE_BUFFER_BYTES`], which lets a batch of queued frames go out with
    /// the pump's one flush (with a buffer of 0, tungstenite writes every frame with its
    /// own system call).
    ///
    /// Use it with [`ServerWebSocket::new`](crate::ServerWebSocket::new) after the
    /// handshake (as `bridge-server` does), with
    /// `tokio_tungstenite::accept_async_with_config`, or copy the limits into your
    /// framework's WebSocket upgrade.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(Self::READ_BUFFER_BYTES)
            .write_buffer_size(Self::WRITE_BUFFER_BYTES)
            .max_write_buffer_size(self.max_frame_bytes.saturating_mul(2).max(64 * 1024))
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }
}

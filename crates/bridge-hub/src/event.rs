//! What the hub reports to the rest of the server.

use bridge_protocol::{CommandFrame, ConnectionId, DeviceId, ErrorCode, Role};

use crate::{InFlight, UserId};

/// Something that happened in the hub which the rest of the server may act on.
///
/// The hub handles `ping`, `subscribe`, `unsubscribe`, `ble_status` and `release` itself; it
/// reports them here as presence changes. A user's `command` is handed over as
/// [`HubEvent::UserCommand`], its answer goes back through [`crate::Hub`]. A bridge's
/// `ble_response` is not an event: the connection's task offers it to the
/// [`ResponseHandler`](crate::ResponseHandler) directly.
///
/// Events are delivered in the order they happened, hub-wide. Not `Clone`: a
/// [`HubEvent::UserCommand`] owns its command's in-flight ticket.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum HubEvent {
    /// A connection was registered (before any of its devices are claimed).
    ConnectionOpened {
        /// The new connection.
        connection: ConnectionId,
        /// `user` or `bridge`.
        role: Role,
        /// Whose connection it is.
        user_id: UserId,
    },
    /// A connection is gone; its devices were released (each reported first as
    /// [`HubEvent::DeviceReleased`]) and its subscriptions removed.
    ConnectionClosed {
        /// The closed connection.
        connection: ConnectionId,
        /// `user` or `bridge`.
        role: Role,
        /// Whose connection it was.
        user_id: UserId,
        /// Why it closed.
        reason: CloseReason,
    },
    /// A user's first user connection opened.
    UserFirstConnected {
        /// The user.
        user_id: UserId,
    },
    /// A user's last user connection closed.
    UserLastDisconnected {
        /// The user.
        user_id: UserId,
    },
    /// A device got its first holder.
    DeviceOnline {
        /// The device.
        device_id: DeviceId,
    },
    /// A device lost its last holder.
    DeviceOffline {
        /// The device.
        device_id: DeviceId,
    },
    /// A bridge connection started holding a device (named at connect, or claimed with
    /// `ble_status`).
    DeviceClaimed {
        /// The device.
        device_id: DeviceId,
        /// The bridge connection.
        connection: ConnectionId,
    },
    /// A bridge connection stopped holding a device. Every command pending through this
    /// connection for this device should fail at once with `bridge_lost`.
    DeviceReleased {
        /// The device.
        device_id: DeviceId,
        /// The bridge connection.
        connection: ConnectionId,
        /// A `release` frame, or the connection closing.
        reason: ReleaseReason,
    },
    /// A holder sent a `ble_status` for a device (after the claim it may have made).
    BleStatusReported {
        /// The device.
        device_id: DeviceId,
        /// The bridge connection.
        connection: ConnectionId,
        /// Whether the bridge now has a BLE link to the device.
        connected: bool,
        /// What this holder reported before: `None` when this is its first report since it
        /// claimed the device. A link that turns up is `connected: true` with this `None` or
        /// `Some(false)`; a bridge repeating its status reports `Some(connected)`.
        was_connected: Option<bool>,
        /// The reported signal strength, if the frame had one.
        rssi: Option<i8>,
    },
    /// A user sent a `command` frame for a device it may command, and the connection had
    /// fewer than [`HubConfig::max_commands_per_connection`](crate::HubConfig) running.
    /// Answer it with a `command_result` (or an error frame) through
    /// [`crate::Hub::send_to_connection`], and keep `in_flight` until then: dropping it
    /// ends the command's count on the connection.
    UserCommand {
        /// The connection it arrived on.
        connection: ConnectionId,
        /// The sending user.
        user_id: UserId,
        /// The decoded frame.
        command: CommandFrame,
        /// The command's place under the connection's cap.
        in_flight: InFlight,
    },
    /// Another process (a cluster node) queued or confirmed a command for a device this hub
    /// holds, and asks this process to deliver it: reported by
    /// [`LocalHub::request_delivery`](crate::LocalHub::request_delivery).
    DeliveryRequested {
        /// The device.
        device_id: DeviceId,
    },
    /// A frame was refused with an error frame (for metrics such as
    /// `bridge_frames_rejected_total{code}`).
    FrameRejected {
        /// The connection that sent it.
        connection: ConnectionId,
        /// The code of the error frame sent back.
        code: ErrorCode,
    },
}

/// Why a bridge stopped holding a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseReason {
    /// The bridge sent `release`.
    Released,
    /// The connection closed.
    ConnectionClosed,
    /// A bridge of another process (a cluster node) that a command was sent through
    /// released the device, closed, or its process is gone or unreachable; reported by
    /// [`LocalHub::release_remote`](crate::LocalHub::release_remote) for the stand-in
    /// connection id of that command.
    Remote,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed the connection (close frame or end of stream).
    ClientClosed,
    /// Reading or writing failed.
    TransportError,
    /// Its outbound queue overflowed: it did not read fast enough.
    SlowConsumer,
    /// It sent a frame over the size limit (closed with 1009).
    FrameTooLarge,
    /// It kept breaking the rate limit (closed with 1008).
    RateLimited,
    /// Nothing arrived within the pong timeout.
    KeepaliveTimeout,
    /// Its token expired (closed with 1008).
    TokenExpired,
    /// The hub shut down (closed with 1001), or was not accepting connections any more.
    Shutdown,
    /// [`crate::LocalHub::close_connection`] closed it.
    ClosedByServer,
    /// Its user had [`HubConfig::max_connections_per_user`](crate::HubConfig) user
    /// connections open already: closed with 1008 at once, never served.
    TooManyConnections,
}

impl CloseReason {
    /// The reason as a short snake_case word, for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::TransportError => "transport_error",
            Self::SlowConsumer => "slow_consumer",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::TokenExpired => "token_expired",
            Self::Shutdown => "shutdown",
            Self::ClosedByServer => "closed_by_server",
            Self::TooManyConnections => "too_many_connections",
        }
    }
}

/// Receives the hub's events.
///
/// Called synchronously, outside the hub's locks, in the order events happened; the hub may
/// be called back from inside (events caused by that call are delivered after the current
/// one returns). Must not block: hand slow work to a task or a channel. Closures
/// `Fn(HubEvent)` implement it.
pub trait EventSink: Send + Sync + 'static {
    /// Handles one event.
    fn on_event(&self, event: HubEvent);
}

impl<F> EventSink for F
where
    F: Fn(HubEvent) + Send + Sync + 'static,
{
    fn on_event(&self, event: HubEvent) {
        self(event);
    }
}

/// An [`EventSink`] that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreEvents;

impl EventSink for IgnoreEvents {
    fn on_event(&self, _event: HubEvent) {}
}

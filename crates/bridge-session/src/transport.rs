//! The one thing the session manager needs from the outside world: a way to send a
//! `ble_write` to a bridge that holds the device.

use async_trait::async_trait;
use bridge_protocol::{BleWrite, ConnectionId};

use crate::TransportError;

/// Sends `ble_write` frames to bridges. The server implements it over its connection hub.
///
/// The session manager calls [`send_ble_write`](Self::send_ble_write) once per command, and
/// [`command_finished`](Self::command_finished) exactly once for every connection that
/// `send_ble_write` returned, when that command ends, whatever ends it (answer, timeout,
/// bridge loss, release, cancellation, shutdown). A hub can keep per-connection in-flight
/// counts with the pair (PROTOCOL.md 2: route to the holder with the fewest commands in
/// flight).
///
/// Implementations must not call back into the session manager in a way that waits for the
/// command being sent; they may deliver its answer (through
/// [`SessionManager::handle_response`](crate::SessionManager::handle_response)) before
/// `send_ble_write` returns, and the answer still counts.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `write` through the best bridge connection that holds `write.device_id`, and
    /// returns that connection. [`TransportError::Offline`] when no bridge holds the device.
    async fn send_ble_write(&self, write: BleWrite) -> Result<ConnectionId, TransportError>;

    /// A command that went out on `connection` has ended. Called exactly once per
    /// connection returned by [`send_ble_write`](Self::send_ble_write), never while the
    /// session manager holds a lock. Does nothing unless overridden.
    fn command_finished(&self, connection: ConnectionId) {
        let _ = connection;
    }
}

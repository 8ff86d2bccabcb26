//! The one thing the session manager needs from the outside world: a way to send a
//! `ble_write` to a bridge that holds the device.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use bridge_protocol::{BleWrite, ConnectionId};

use crate::TransportError;

/// Sends `ble_write` frames to bridges. The server implements it over its connection hub.
///
/// The session manager calls [`send_ble_write`](Self::send_ble_write) once per command. A
/// successful send returns the connection the write went out on and an *in-flight ticket*
/// ([`Transport::InFlight`]): whatever the transport wants to keep alive while the command
/// is in flight on that connection — a hub hands out an RAII guard over the connection's
/// in-flight counter (PROTOCOL.md 2: route to the holder with the fewest commands in
/// flight). The session stores the ticket in the command's pending entry and drops it the
/// moment the command ends, whatever ends it (answer, device error, timeout, bridge loss,
/// release, cancellation, shutdown). There is no "finished" callback to call exactly once:
/// ownership is the count.
///
/// Implementations must not call back into the session manager in a way that waits for the
/// command being sent; they may deliver its answer (through
/// [`SessionManager::handle_response`](crate::SessionManager::handle_response)) before
/// `send_ble_write` returns, and the answer still counts.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Held by the pending command while it is in flight, dropped when it ends. `()` for a
    /// transport that counts nothing.
    type InFlight: Send + 'static;

    /// Sends `write` through the best bridge connection that holds `write.device_id`, and
    /// returns that connection with the command's in-flight ticket.
    /// [`TransportError::Offline`] when no bridge holds the device.
    async fn send_ble_write(
        &self,
        write: BleWrite,
    ) -> Result<(ConnectionId, Self::InFlight), TransportError>;

    /// [`send_ble_write`](Self::send_ble_write) without a boxed future when the send ends
    /// at once. The session manager calls this one: [`SendNow::Sent`] is the send's
    /// result, [`SendNow::Later`] a future to await for it.
    ///
    /// The default hands back `send_ble_write`'s future, so a transport that implements
    /// only `send_ble_write` works unchanged. One that overrides this must send exactly as
    /// `send_ble_write` does.
    fn send_ble_write_now(&self, write: BleWrite) -> SendNow<'_, Self::InFlight> {
        SendNow::Later(self.send_ble_write(write))
    }
}

/// What [`Transport::send_ble_write`] returns, with its in-flight ticket `I`.
pub type SendResult<I> = Result<(ConnectionId, I), TransportError>;

/// The answer of [`Transport::send_ble_write_now`].
pub enum SendNow<'a, I> {
    /// The send ended at once with this result.
    Sent(SendResult<I>),
    /// The send goes on in this future.
    Later(Pin<Box<dyn Future<Output = SendResult<I>> + Send + 'a>>),
}

impl<I> SendNow<'_, I> {
    /// The send's result, awaited if it did not end at once.
    pub async fn finish(self) -> SendResult<I> {
        match self {
            Self::Sent(result) => result,
            Self::Later(future) => future.await,
        }
    }
}

impl<I> std::fmt::Debug for SendNow<'_, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sent(result) => f
                .debug_tuple("Sent")
                .field(&result.as_ref().map(|(connection, _)| connection))
                .finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

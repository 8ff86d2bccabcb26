//! The client's typed errors.

use bridge_protocol::{ErrorFrame, ProtocolError};

/// Why a client call failed, and so how to react.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The WebSocket connection could not be opened (server down, refused upgrade, bad URL).
    /// Retry later; a [`BridgeClient`](crate::BridgeClient) does so by itself.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection closed before the answer came. The request may or may not have been
    /// served.
    #[error("connection closed")]
    Closed,
    /// The server refused the request with an error frame; do not retry unchanged.
    #[error("refused by the server: {} ({})", .0.code, .0.message)]
    Refused(ErrorFrame),
    /// No answer within the client's reply timeout.
    #[error("no answer in time")]
    Timeout,
    /// The server sent something that is not valid protocol; a server bug or a wrong URL.
    #[error("invalid frame from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client was shut down.
    #[error("client shut down")]
    Shutdown,
}

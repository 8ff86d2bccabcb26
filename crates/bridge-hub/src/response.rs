//! Where a bridge's `ble_response` goes: a synchronous handler called on the connection's
//! own task.

use bridge_protocol::{BleProgress, BleResponse, ConnectionId, ErrorCode, RequestId};

/// Why a [`ResponseHandler`] refused a `ble_response`; the hub answers the bridge with the
/// error frame `code` carrying `request_id` (PROTOCOL.md 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ble_response {request_id} refused with {code:?}")]
#[non_exhaustive]
pub struct ResponseRefused {
    /// The `requestId` of the refused answer, echoed in the error frame.
    pub request_id: RequestId,
    /// `unknown_request` (nothing pending with this id, or too late) or `forbidden` (sent to
    /// another connection or device).
    pub code: ErrorCode,
}

impl ResponseRefused {
    /// A refusal of the answer `request_id` with the error code `code`.
    pub const fn new(request_id: RequestId, code: ErrorCode) -> Self {
        Self { request_id, code }
    }

    /// The message of the error frame.
    pub(crate) const fn message(&self) -> &'static str {
        match self.code {
            ErrorCode::Forbidden => "this request was sent to another connection or device",
            _ => "no command is pending with this requestId",
        }
    }
}

/// Matches a bridge's `ble_response` with the command it answers.
///
/// Installed with [`LocalHubBuilder::responses`](crate::LocalHubBuilder::responses). The hub
/// calls it on the task of the connection the answer arrived on, right after decoding, with
/// no lock held and no channel or other task in between: the answer's way to its waiting
/// command is a function call. It must not block (a sharded map lookup and a wake-up, as
/// `bridge_session::SessionManager::handle_response` does, is the intended cost). On
/// `Err` the hub sends the bridge the error frame itself and reports
/// [`HubEvent::FrameRejected`](crate::HubEvent::FrameRejected).
///
/// Closures `Fn(ConnectionId, BleResponse) -> Result<(), ResponseRefused>` implement it.
pub trait ResponseHandler: Send + Sync + 'static {
    /// Offers the answer `response` that arrived on `connection`.
    fn on_response(
        &self,
        connection: ConnectionId,
        response: BleResponse,
    ) -> Result<(), ResponseRefused>;

    /// Offers the `ble_progress` `progress` that arrived on `connection` (PROTOCOL.md 3.2,
    /// version 1.1), on the connection's task like [`on_response`](Self::on_response) and
    /// under the same rules; `Err` is answered with the error frame by the hub. The
    /// default accepts and ignores it, as a server that does not record stages may
    /// (closures implement only `on_response`).
    fn on_progress(
        &self,
        connection: ConnectionId,
        progress: &BleProgress,
    ) -> Result<(), ResponseRefused> {
        let _ = (connection, progress);
        Ok(())
    }
}

impl<F> ResponseHandler for F
where
    F: Fn(ConnectionId, BleResponse) -> Result<(), ResponseRefused> + Send + Sync + 'static,
{
    fn on_response(
        &self,
        connection: ConnectionId,
        response: BleResponse,
    ) -> Result<(), ResponseRefused> {
        self(connection, response)
    }
}

/// What a [`ResponseInterceptor`] did with an answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Intercepted {
    /// The answer was the interceptor's (a command another process sent through this
    /// connection); on `Err` the hub refuses it to the bridge as it would its handler's.
    Taken(Result<(), ResponseRefused>),
    /// Not the interceptor's: the hub offers it to its [`ResponseHandler`].
    Passed(BleResponse),
}

/// Sees a bridge's `ble_response` before the hub's [`ResponseHandler`], to take the answers
/// of commands that another process (a cluster node) sent through this process's bridges.
/// Installed once with [`LocalHub::set_response_interceptor`](crate::LocalHub::set_response_interceptor);
/// called like the handler, on the connection's task, and must not block either.
pub trait ResponseInterceptor: Send + Sync + 'static {
    /// Takes `response`, arrived on `connection`, or passes it on.
    fn intercept(&self, connection: ConnectionId, response: BleResponse) -> Intercepted;

    /// Sees a `ble_progress` (PROTOCOL.md 3.2, 1.1) that arrived on `connection` before the
    /// hub's [`ResponseHandler::on_progress`]: `Some` when it reports on a command of the
    /// interceptor's (on `Err` the hub refuses it to the bridge), `None` to pass it on.
    /// Default: `None` (an interceptor that takes no progress reports).
    fn intercept_progress(
        &self,
        connection: ConnectionId,
        progress: &BleProgress,
    ) -> Option<Result<(), ResponseRefused>> {
        let _ = (connection, progress);
        None
    }
}

/// The [`ResponseHandler`] of a hub that sends no commands: every answer is refused with
/// `unknown_request` (nothing can be pending).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPendingCommands;

impl ResponseHandler for NoPendingCommands {
    fn on_response(&self, _: ConnectionId, response: BleResponse) -> Result<(), ResponseRefused> {
        Err(ResponseRefused::new(
            response.request_id,
            ErrorCode::UnknownRequest,
        ))
    }

    fn on_progress(&self, _: ConnectionId, progress: &BleProgress) -> Result<(), ResponseRefused> {
        Err(ResponseRefused::new(
            progress.request_id,
            ErrorCode::UnknownRequest,
        ))
    }
}

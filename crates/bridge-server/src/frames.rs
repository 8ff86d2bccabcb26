//! Application frames: WebSocket frames of the application's own types.
//!
//! Register a handler per type name with [`ServerBuilder::frame`](crate::ServerBuilder::frame).
//! A text frame whose `type` is a registered name — compared exactly, from a user or a
//! bridge connection — goes to that handler with the connection's identity and role; the
//! handler may answer that connection, broadcast to a device's subscribers or send to a
//! user ([`FrameContext`]).
//!
//! * A name PROTOCOL.md defines (`command`, `ping`, `hello`, …; the list is
//!   [`RESERVED_TYPES`](bridge_protocol::RESERVED_TYPES)) is refused when the server is
//!   built ([`BuildError::ReservedFrameType`](crate::BuildError::ReservedFrameType)), so
//!   an application cannot change what the protocol's frames mean. So is a name that
//!   could not be a `type` (empty, over 64 characters, control characters) and a name
//!   registered twice.
//! * A `type` nobody registered is still answered `unknown_type`.
//! * The frame size limit (close 1009) and the rate limit (`rate_limited`, then close 1008)
//!   apply before, as to every frame; the handler sees only frames that passed them, and
//!   that are one JSON object with a string `type` and no key twice (otherwise
//!   `invalid_message`, as for any frame). Its other fields are the application's to read.
//! * The handler runs on the task of the connection the frame arrived on, awaited before
//!   the connection reads its next frame: one connection's frames are handled one at a
//!   time, in order, and a slow handler slows only its own connection. Spawn long work.
//! * What the handler sends goes out as any frame does (queued, never awaited; a
//!   connection that does not read is cut off as a slow consumer). Frames it sends with
//!   [`FrameContext::reply`], [`FrameContext::broadcast`] and [`FrameContext::send_to_user`]
//!   must carry a `type` PROTOCOL.md does not define, so that the application cannot forge
//!   protocol frames by mistake; [`FrameContext::refuse`] sends a protocol `error` frame
//!   with a code of PROTOCOL.md 3.5.
//! * A handler that panics is caught: the panic is logged and counted in
//!   `bridge_task_panics_total{task="frame"}`, the frame is left unanswered, and the
//!   connection goes on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bridge_hub::{ApplicationFrame, ApplicationFrameHandler, Frame, Hub, HubError, UserId};
use bridge_protocol::{
    ConnectionId, DeviceId, ErrorCode, ErrorFrame, EventType, Role, ServerToBridge, ServerToUser,
};
use futures_util::FutureExt;

use crate::events::CoreSlot;

/// Handles the frames of one application frame type. See the [module docs](self).
#[async_trait]
pub trait FrameHandler: Send + Sync + 'static {
    /// Handles one frame; answers go out through `frame`.
    async fn on_frame(&self, frame: FrameContext);
}

/// Why an application frame could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is not a JSON object whose `type` is a string PROTOCOL.md does not define.
    #[error(
        "an application frame must be a JSON object with a `type` the protocol does not define: {0}"
    )]
    NotAnApplicationFrame(String),
    /// The connection is closed or closing.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// One application frame and what its handler may do about it.
pub struct FrameContext {
    connection: ConnectionId,
    role: Role,
    user: UserId,
    frame_type: String,
    text: String,
    body: serde_json::Value,
    hub: Arc<dyn Hub>,
}

impl std::fmt::Debug for FrameContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameContext")
            .field("connection", &self.connection)
            .field("role", &self.role)
            .field("user", &self.user)
            .field("frame_type", &self.frame_type)
            .finish_non_exhaustive()
    }
}

impl FrameContext {
    /// The connection the frame arrived on.
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// The connection's role: `user` or `bridge`.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whose connection it is (the token's `sub`, or `userId` in development mode).
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The frame's `type`: the registered name.
    pub fn frame_type(&self) -> &str {
        &self.frame_type
    }

    /// The frame as it arrived.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The frame, parsed: a JSON object, `type` included.
    pub fn body(&self) -> &serde_json::Value {
        &self.body
    }

    /// The hub, for anything else (presence, another connection).
    pub fn hub(&self) -> &Arc<dyn Hub> {
        &self.hub
    }

    /// Sends `frame` to the connection the frame arrived on.
    ///
    /// # Errors
    ///
    /// [`FrameError::NotAnApplicationFrame`] for a frame without an application `type`;
    /// [`FrameError::Hub`] when the connection is gone.
    pub async fn reply(&self, frame: &serde_json::Value) -> Result<(), FrameError> {
        let frame = application_frame(frame)?;
        Ok(self.hub.send_to_connection(self.connection, &frame).await?)
    }

    /// Sends `frame` to every user connection subscribed to `device`; answers how many.
    ///
    /// # Errors
    ///
    /// [`FrameError::NotAnApplicationFrame`] for a frame without an application `type`.
    pub async fn broadcast(
        &self,
        device: &DeviceId,
        frame: &serde_json::Value,
    ) -> Result<usize, FrameError> {
        let frame = application_frame(frame)?;
        Ok(self.hub.broadcast(device, &frame).await)
    }

    /// Sends `frame` to every connection of `user`; answers how many.
    ///
    /// # Errors
    ///
    /// [`FrameError::NotAnApplicationFrame`] for a frame without an application `type`.
    pub async fn send_to_user(
        &self,
        user: &UserId,
        frame: &serde_json::Value,
    ) -> Result<usize, FrameError> {
        let frame = application_frame(frame)?;
        Ok(self.hub.send_to_user(user, &frame).await)
    }

    /// Answers the frame with a protocol `error` frame of `code`, carrying the frame's
    /// `requestId` when it had a valid one (PROTOCOL.md 3.5).
    ///
    /// # Errors
    ///
    /// [`FrameError::Hub`] when the connection is gone.
    pub async fn refuse(&self, code: ErrorCode, message: &str) -> Result<(), FrameError> {
        let request_id = bridge_protocol::decode::frame_request_id(&self.text);
        let error = ErrorFrame::new(code, message.to_owned(), request_id);
        let frame = match self.role {
            Role::Bridge => Frame::from(ServerToBridge::Error(error)),
            _ => Frame::from(ServerToUser::Error(error)),
        };
        Ok(self.hub.send_to_connection(self.connection, &frame).await?)
    }
}

/// `value` as a frame, if it is an object with an application `type`.
fn application_frame(value: &serde_json::Value) -> Result<Frame, FrameError> {
    let ty = value
        .as_object()
        .and_then(|object| object.get("type"))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| FrameError::NotAnApplicationFrame("no string `type`".to_owned()))?;
    EventType::new(ty).map_err(|error| FrameError::NotAnApplicationFrame(error.to_string()))?;
    Ok(Frame::from_json_text(value.to_string()))
}

/// The hub's handler of application frames: finds the registered handler by type.
/// It reaches the server through the weak slot: the server owns the hub that owns this.
pub(crate) struct Dispatch {
    pub(crate) handlers: HashMap<String, Arc<dyn FrameHandler>>,
    pub(crate) core: CoreSlot,
}

#[async_trait]
impl ApplicationFrameHandler for Dispatch {
    async fn on_frame(&self, frame: ApplicationFrame) {
        let Some(handler) = self.handlers.get(&frame.frame_type) else {
            return;
        };
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            return;
        };
        let body = match serde_json::from_str(&frame.text) {
            Ok(body) => body,
            Err(error) => {
                // The hub read it as one JSON object already; not expected.
                tracing::debug!(%error, "an application frame that is not JSON");
                return;
            }
        };
        let context = FrameContext {
            connection: frame.connection,
            role: frame.role,
            user: frame.user_id,
            frame_type: frame.frame_type,
            text: frame.text,
            body,
            hub: Arc::clone(&core.hub),
        };
        let frame_type = context.frame_type.clone();
        if let Err(panic) = AssertUnwindSafe(handler.on_frame(context))
            .catch_unwind()
            .await
        {
            let message = crate::hooks::panic_message(panic.as_ref());
            tracing::error!(frame_type, panic = %message, "an application frame handler panicked");
            core.metrics.task_panicked("frame");
        }
    }
}

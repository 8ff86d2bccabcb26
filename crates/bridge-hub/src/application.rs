//! Frames of the application's own types: text frames whose `type` PROTOCOL.md does not
//! define and the application registered by name.

use std::collections::HashSet;

use async_trait::async_trait;
use bridge_protocol::{ConnectionId, EventType, Role};

use crate::UserId;

/// A frame of a type the application registered with
/// [`LocalHubBuilder::application_frames`](crate::LocalHubBuilder::application_frames),
/// as it arrived: the hub read its `type` and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplicationFrame {
    /// The connection it arrived on.
    pub connection: ConnectionId,
    /// `user` or `bridge`.
    pub role: Role,
    /// Whose connection it is.
    pub user_id: UserId,
    /// Its `type`, one of the registered names.
    pub frame_type: String,
    /// The frame's text (one JSON object with a string `type`; its other fields unread).
    pub text: String,
}

/// Handles frames of the application's own types.
///
/// The hub awaits it on the task of the connection the frame arrived on, after the frame
/// passed the size and rate limits, so the frames of one connection are handled one at a
/// time and in order. While a handler runs, its connection neither reads nor writes (other
/// connections are not affected): a handler should be quick, and spawn longer work.
/// Answers go out through the [`Hub`](crate::Hub), queued like any frame.
#[async_trait]
pub trait ApplicationFrameHandler: Send + Sync + 'static {
    /// Handles one frame.
    async fn on_frame(&self, frame: ApplicationFrame);
}

/// The registered names and their handler.
pub(crate) struct ApplicationFrames {
    pub(crate) types: HashSet<String>,
    pub(crate) handler: Box<dyn ApplicationFrameHandler>,
}

impl ApplicationFrames {
    pub(crate) fn new(
        types: impl IntoIterator<Item = EventType>,
        handler: impl ApplicationFrameHandler,
    ) -> Self {
        Self {
            types: types.into_iter().map(|t| t.as_str().to_owned()).collect(),
            handler: Box::new(handler),
        }
    }
}

//! The events of the live stream `GET /v1/stream` (PROTOCOL.md 4.5, version 1.1).
//!
//! Each Server-Sent Event is `event: <type>` and `data: <one JSON object>`, the object being
//! exactly the WebSocket frame of section 3.3 of that type, plus `overflow` for a client that
//! did not read fast enough.

use serde::{Serialize, Serializer};

use crate::frames::{TypeOnly, tagged};
use crate::{AppEvent, CommandResult, DeviceStatus, ServerToUser};

/// One event of the live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// `device_status`: a device's presence or BLE link changed.
    DeviceStatus(DeviceStatus),
    /// An application event of `POST .../events`.
    Event(AppEvent),
    /// `command_result`: a command that was sent to a bridge or queued ended.
    CommandResult(CommandResult),
    /// `overflow` (data `{"type":"overflow"}`): the client fell behind and is disconnected.
    Overflow,
}

impl StreamEvent {
    /// The stream event for a user frame, when the stream carries that kind of frame
    /// (`device_status`, application events, `command_result`); `None` for the frames that
    /// only answer a user's own requests (`ack`, `error`, `pong`).
    pub fn from_user_frame(frame: ServerToUser) -> Option<Self> {
        match frame {
            ServerToUser::DeviceStatus(f) => Some(Self::DeviceStatus(f)),
            ServerToUser::Event(f) => Some(Self::Event(f)),
            ServerToUser::CommandResult(f) => Some(Self::CommandResult(f)),
            ServerToUser::Ack(_) | ServerToUser::Error(_) | ServerToUser::Pong => None,
        }
    }

    /// The event's `event:` name: its `type`.
    pub fn event_name(&self) -> &str {
        match self {
            Self::DeviceStatus(_) => "device_status",
            Self::Event(f) => f.event_type.as_str(),
            Self::CommandResult(_) => "command_result",
            Self::Overflow => "overflow",
        }
    }

    /// The event's `data:` object as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The whole Server-Sent Event: `event: <type>\ndata: <json>\n\n`. The JSON text is on
    /// one line (serde_json writes no newlines), as one `data:` line requires.
    pub fn to_sse(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.event_name(), self.to_json())
    }
}

impl Serialize for StreamEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::DeviceStatus(f) => tagged(s, "device_status", f),
            // The event carries its own `type`.
            Self::Event(f) => f.serialize(s),
            Self::CommandResult(f) => tagged(s, "command_result", f),
            Self::Overflow => TypeOnly { ty: "overflow" }.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceId, ResultStatus};

    #[test]
    fn overflow_is_a_type_only_event() {
        assert_eq!(StreamEvent::Overflow.to_json(), r#"{"type":"overflow"}"#);
        assert_eq!(
            StreamEvent::Overflow.to_sse(),
            "event: overflow\ndata: {\"type\":\"overflow\"}\n\n"
        );
    }

    #[test]
    fn stream_events_are_the_websocket_frames_of_their_type() {
        let result = CommandResult::new(DeviceId::new("lock-1").unwrap(), ResultStatus::Timeout);
        let frame = ServerToUser::CommandResult(result);
        let event = StreamEvent::from_user_frame(frame.clone()).unwrap();
        assert_eq!(event.event_name(), "command_result");
        assert_eq!(event.to_json(), frame.to_json());
        assert_eq!(StreamEvent::from_user_frame(ServerToUser::Pong), None);
    }
}

//! Outgoing frames, serialized once and shared by every recipient.

use bridge_protocol::{ServerToBridge, ServerToUser};
use tungstenite::{Message, Utf8Bytes};

/// One outgoing text frame, already serialized.
///
/// Cloning is a reference-count increment: a broadcast serializes its frame once and every
/// subscriber's queue holds the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// Wraps JSON text the caller has serialized itself (for example an application event it
    /// forwards verbatim). The hub does not check it.
    pub fn from_json_text(text: impl Into<String>) -> Self {
        Self(Utf8Bytes::from(text.into()))
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The WebSocket message carrying this frame.
    pub fn to_message(&self) -> Message {
        Message::Text(self.0.clone())
    }

    pub(crate) const fn from_static(text: &'static str) -> Self {
        Self(Utf8Bytes::from_static(text))
    }
}

impl Frame {
    /// Room for a `ble_write` or a `command_result` with a small payload: the text is
    /// written once into one buffer instead of growing 128 → 256 → 512 bytes.
    const ENCODE_CAPACITY: usize = 384;

    /// Serializes with `write` straight into the buffer the frame then shares.
    fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut buf = Vec::with_capacity(Self::ENCODE_CAPACITY);
        write(&mut buf);
        // serde_json writes UTF-8 only; the fallback is never taken.
        let text = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Self(Utf8Bytes::from(text))
    }
}

impl From<&ServerToUser> for Frame {
    fn from(frame: &ServerToUser) -> Self {
        Self::encode(|buf| frame.write_json(buf))
    }
}

impl From<ServerToUser> for Frame {
    fn from(frame: ServerToUser) -> Self {
        Self::from(&frame)
    }
}

impl From<&ServerToBridge> for Frame {
    fn from(frame: &ServerToBridge) -> Self {
        Self::encode(|buf| frame.write_json(buf))
    }
}

impl From<ServerToBridge> for Frame {
    fn from(frame: ServerToBridge) -> Self {
        Self::from(&frame)
    }
}

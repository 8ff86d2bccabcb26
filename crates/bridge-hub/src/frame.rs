//! Outgoing frames, serialized once and shared by every recipient.

use std::cell::RefCell;

use bridge_protocol::{BleWrite, ServerToBridge, ServerToUser};
use tungstenite::{Bytes, Message, Utf8Bytes};

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

    /// The WebSocket message carrying this frame, without a reference-count round trip.
    pub(crate) fn into_message(self) -> Message {
        Message::Text(self.0)
    }

    pub(crate) const fn from_static(text: &'static str) -> Self {
        Self(Utf8Bytes::from_static(text))
    }
}

impl Frame {
    /// The `ble_write` frame of `write`, for a frame sent once and handed over by value
    /// ([`Hub::send_frame_to_device_now`](crate::Hub::send_frame_to_device_now)).
    ///
    /// The text is written straight into a buffer of exactly its size, which the frame
    /// then owns as is: one allocation, no scratch buffer and no copy. Such a frame is
    /// best not cloned: its first clone allocates the shared reference count that the
    /// frames of [`From<&ServerToBridge>`] carry from the start.
    pub fn ble_write(write: &BleWrite) -> Self {
        Self(Utf8Bytes::from(write.to_json()))
    }
}

thread_local! {
    /// The buffer this thread serializes frames into; each frame then gets a copy of
    /// exactly its own size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Frame {
    /// Room for a `ble_write` or a `command_result` with a small payload.
    const ENCODE_CAPACITY: usize = 384;

    /// A scratch buffer grown past this (a frame with a large payload) is not kept.
    const SCRATCH_KEPT: usize = 4096;

    /// Serializes with `write` into this thread's scratch buffer, then copies the text into
    /// an allocation of exactly its size.
    ///
    /// An exact-size buffer becomes the frame's `Bytes` without the extra shared header
    /// that `Bytes::from(Vec)` allocates when the length and capacity differ, so a frame
    /// costs one allocation for its text instead of two (the buffer and that header).
    fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Self {
        SCRATCH.with(|scratch| {
            if let Ok(mut buf) = scratch.try_borrow_mut() {
                buf.clear();
                write(&mut buf);
                let frame = Self::exact(&buf);
                if buf.capacity() > Self::SCRATCH_KEPT {
                    *buf = Vec::with_capacity(Self::ENCODE_CAPACITY);
                }
                frame
            } else {
                // Not reached (serializing a frame encodes no other frame); a buffer of its
                // own then.
                let mut buf = Vec::with_capacity(Self::ENCODE_CAPACITY);
                write(&mut buf);
                Self::exact(&buf)
            }
        })
    }

    /// The frame of `text`.
    ///
    /// Up to [`InlineText::CAPACITY`] bytes (a `ble_write`, a `command_result`), the text
    /// and its reference count share one allocation (`Bytes::from_owner`), so neither
    /// making the frame nor sharing it with a connection's queue allocates again. A longer
    /// text goes into an exact-size `String`, whose `Bytes` allocates its shared header at
    /// the first clone.
    fn exact(text: &[u8]) -> Self {
        if let Some(inline) = InlineText::new(text)
            && let Ok(text) = Utf8Bytes::try_from(Bytes::from_owner(inline))
        {
            return Self(text);
        }
        // The encoders write UTF-8 only; `to_owned` copies into an exact-size `String`. (Not
        // `from_utf8_lossy`, whose scan has no ASCII fast path.)
        let text = match std::str::from_utf8(text) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(text).into_owned(),
        };
        Self(Utf8Bytes::from(text))
    }
}

/// A short frame text held by value, to live next to its reference count in the one
/// allocation of `Bytes::from_owner`.
struct InlineText {
    len: usize,
    bytes: [u8; InlineText::CAPACITY],
}

impl InlineText {
    /// Room for a `ble_write` with a payload of up to ~50 bytes.
    const CAPACITY: usize = 376;

    fn new(text: &[u8]) -> Option<Self> {
        let mut inline = Self {
            len: text.len(),
            bytes: [0; Self::CAPACITY],
        };
        inline.bytes.get_mut(..text.len())?.copy_from_slice(text);
        Some(inline)
    }
}

impl AsRef<[u8]> for InlineText {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
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

#[cfg(test)]
mod tests {
    use bridge_protocol::{
        BleWrite, DeviceId, DeviceStatus, DeviceType, HexPayload, RequestId, ServerToBridge,
        ServerToUser, TimeoutMs,
    };

    use super::Frame;

    fn ble_write(payload_bytes: usize) -> ServerToBridge {
        ServerToBridge::BleWrite(BleWrite {
            request_id: RequestId::from_u128_hex(7),
            device_id: DeviceId::new("lock-\"1\"").expect("a valid id"),
            device_type: DeviceType::new("smart_lock").expect("a valid type"),
            service_uuid: "00000000-0000-1000-8000-00805f9b34f1"
                .parse()
                .expect("a UUID"),
            write_uuid: "00000000-0000-1000-8000-00805f9b34f2"
                .parse()
                .expect("a UUID"),
            listen_uuid: "00000000-0000-1000-8000-00805f9b34f3"
                .parse()
                .expect("a UUID"),
            payload: HexPayload::from_bytes(vec![0xA5; payload_bytes]),
            timeout_ms: TimeoutMs::DEFAULT,
        })
    }

    #[test]
    fn frames_hold_exactly_the_encoders_text_one_after_another() {
        // Small, large (past the kept scratch size) and small again: each frame is its own
        // text, whatever the scratch buffer held before.
        for bytes in [1, 4000, 0, 3] {
            let frame = ble_write(bytes);
            assert_eq!(Frame::from(&frame).as_str(), frame.to_json());
        }
        let status = ServerToUser::DeviceStatus(DeviceStatus {
            device_id: DeviceId::new("d").expect("a valid id"),
            online: true,
            ble_connected: None,
        });
        assert_eq!(Frame::from(&status).as_str(), status.to_json());
        assert_eq!(Frame::from(ble_write(2)).as_str(), ble_write(2).to_json());
    }

    #[test]
    fn a_ble_write_frame_made_for_one_send_is_the_same_frame() {
        for bytes in [0, 1, 200, 4000] {
            let frame = ble_write(bytes);
            let ServerToBridge::BleWrite(write) = &frame else {
                unreachable!("a ble_write")
            };
            assert_eq!(Frame::ble_write(write), Frame::from(&frame));
        }
    }
}

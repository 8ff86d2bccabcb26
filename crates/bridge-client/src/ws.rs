//! The bridge's WebSocket after the handshake: RFC 6455 framing written for the phone's loop.
//!
//! The handshake is tungstenite's (`tokio_tungstenite::client_async_with_config`, so its
//! checks and errors are unchanged); the frames after it are read and written here.
//! tungstenite zero-fills its whole read buffer before every read attempt, and the phone's
//! loop makes about three attempts per turn (the read that finds the frame, the one that
//! looks for more in the same turn, the one the loop then waits on): at one command in
//! flight that was a fifth of the phone's instructions. Here reads go into the spare
//! capacity of a `BytesMut`, which needs no zeroing, each frame is split off it without a
//! copy, and a `ble_response` is masked straight into the write buffer.
//!
//! The masking keys come from SipHash keyed by the OS's random source (std's `RandomState`)
//! rather than tungstenite's ChaCha-based `rand`, which is not a dependency of this crate.
//!
//! What a server can send is handled as tungstenite handles it for a client, with the same
//! errors: text and binary messages, fragmented or not (at most [`MAX_FRAME`] per frame and
//! [`MAX_MESSAGE`] per message); pings, answered by a pong sent with the next read or write;
//! a close, answered with a close; reserved bits, masked frames, unknown opcodes and bad
//! control frames end the stream with tungstenite's `ProtocolError`. The equivalence tests
//! below feed the same bytes to both.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bridge_protocol::BridgeToServer;
use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode, Control as OpCtl, Data as OpData, OpCode,
};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::bridge::FrameSink;

/// The largest frame accepted from the server (the client's `max_frame_size`, as before).
pub(crate) const MAX_FRAME: usize = 1 << 20;

/// The largest message accepted from the server (tungstenite's default `max_message_size`).
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// The read buffer's usual size: one read takes up to this much (a batch of 16 `ble_write`
/// frames). A larger frame grows the buffer to its length; a buffer grown past four times
/// this goes back to it once empty.
pub(crate) const READ_BUFFER: usize = 4 * 1024;

/// Above this many bytes waiting in the write buffer, a new frame waits until they are
/// written (tungstenite's default `write_buffer_size`).
const WRITE_BUFFER: usize = 128 * 1024;

/// Where the closing handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    ClosedByUs,
    ClosedByPeer,
    CloseAcknowledged,
}

/// The masking keys of one connection's frames: SipHash, keyed from the operating system's
/// random source once per connection (std's [`RandomState`]), of a counter, so a key cannot
/// be predicted from the ones before it (RFC 6455 5.3). Each 64-bit output gives two keys,
/// its low half then its high half: one half says nothing of the other (SipHash is a
/// pseudorandom function), and a frame then costs half a hash.
struct Masks {
    keys: RandomState,
    counter: u64,
    /// The high half of the last output, not used yet.
    spare: Option<[u8; 4]>,
}

impl Masks {
    fn new() -> Self {
        Self {
            keys: RandomState::new(),
            counter: 0,
            spare: None,
        }
    }

    fn next(&mut self) -> [u8; 4] {
        if let Some(mask) = self.spare.take() {
            return mask;
        }
        self.counter = self.counter.wrapping_add(1);
        let mut hasher = self.keys.build_hasher();
        hasher.write_u64(self.counter);
        let bits = hasher.finish();
        // The two halves; truncation intended.
        #[allow(clippy::cast_possible_truncation)]
        let (low, high) = (bits as u32, (bits >> 32) as u32);
        self.spare = Some(high.to_ne_bytes());
        low.to_ne_bytes()
    }
}

/// Appends `payload` masked with `mask` to `out`.
fn put_masked(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    mask_in_place(&mut out[start..], mask);
}

/// Masks `payload` in place with `mask`, eight bytes at a time.
fn mask_in_place(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The key's phase is unchanged after a multiple of eight bytes.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Appends one masked frame (client to server) with `opcode` and `payload` to `out`.
fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        // Fits in seven bits.
        #[allow(clippy::cast_possible_truncation)]
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 0x7E);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 0x7F);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    put_masked(out, payload, mask);
}

/// The header at the start of `bytes`, the payload's length and where the payload starts;
/// `None` when the header is not all there yet. What tungstenite's `FrameHeader::parse`
/// returns, with the same error for a reserved opcode (once the header is complete), read
/// from the slice directly rather than through an `io::Read` cursor: it runs for every
/// frame and for every read attempt.
fn parse_header(bytes: &[u8]) -> Result<Option<(FrameHeader, u64, usize)>, WsError> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    let (len, mut at) = match second & 0x7F {
        126 => match rest.first_chunk::<2>() {
            Some(extended) => (u64::from(u16::from_be_bytes(*extended)), 4),
            None => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(extended) => (u64::from_be_bytes(*extended), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    let mask = if second & 0x80 == 0 {
        None
    } else {
        let Some(mask) = bytes.get(at..).and_then(<[u8]>::first_chunk::<4>) else {
            return Ok(None);
        };
        at += 4;
        Some(*mask)
    };
    let opcode = OpCode::from(first & 0x0F);
    if matches!(
        opcode,
        OpCode::Control(OpCtl::Reserved(_)) | OpCode::Data(OpData::Reserved(_))
    ) {
        return Err(WsError::Protocol(ProtocolError::InvalidOpcode(
            first & 0x0F,
        )));
    }
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode,
        mask,
    };
    Ok(Some((header, len, at)))
}

/// A fragmented message being put together.
struct Incomplete {
    text: bool,
    data: Vec<u8>,
    /// Of a text, how many bytes of `data` are known to be valid UTF-8.
    checked: usize,
}

impl Incomplete {
    /// Adds a fragment. A text's UTF-8 is checked as it comes, as tungstenite does: an
    /// invalid sequence fails the message at once; one cut by the fragment's end waits.
    fn extend(&mut self, payload: &[u8]) -> Result<(), WsError> {
        let size = self.data.len() + payload.len();
        if size > MAX_MESSAGE {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                size,
                max_size: MAX_MESSAGE,
            }));
        }
        self.data.extend_from_slice(payload);
        if self.text {
            match std::str::from_utf8(&self.data[self.checked..]) {
                Ok(_) => self.checked = self.data.len(),
                Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
                Err(e) => return Err(WsError::Utf8(e.to_string())),
            }
        }
        Ok(())
    }
}

/// A client WebSocket over `S` after the handshake: a [`Stream`] of the server's messages and
/// a [`Sink`] of the client's, like `tokio_tungstenite::WebSocketStream` (one task uses
/// both).
pub(crate) struct WsConnection<S> {
    io: S,
    /// Bytes read and not parsed yet. A frame is split off it without a copy; its
    /// allocation is reused once the frames split off it are gone.
    read: BytesMut,
    /// Bytes to write: `write[written..]` are not written yet.
    write: Vec<u8>,
    written: usize,
    /// A pong or a close reply waits in `write` to be sent with the next read.
    reply_waiting: bool,
    incomplete: Option<Incomplete>,
    state: State,
    /// The stream ended (an error was returned, or the connection closed): `None` from now on.
    ended: bool,
    masks: Masks,
}

impl<S> WsConnection<S> {
    /// A connection whose handshake is done; `read_ahead` are the bytes read after the
    /// handshake's answer (frames the server sent right behind it).
    pub(crate) fn new(io: S, read_ahead: &[u8]) -> Self {
        let mut read = BytesMut::with_capacity(READ_BUFFER.max(read_ahead.len()));
        read.extend_from_slice(read_ahead);
        Self {
            io,
            read,
            write: Vec::new(),
            written: 0,
            reply_waiting: false,
            incomplete: None,
            state: State::Active,
            ended: false,
            masks: Masks::new(),
        }
    }

    /// Queues one frame in the write buffer.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.masks.next();
        put_frame(&mut self.write, opcode, payload, mask);
    }

    /// Queues one text frame whose payload `write` appends to the buffer it is given, which
    /// must be UTF-8: the payload is written in place, then masked in place, with no
    /// intermediate string. The header assumes a payload under 126 bytes (a `ble_response`
    /// usually is); a longer one is moved behind the longer header it needs.
    fn queue_text_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let mask = self.masks.next();
        let start = self.write.len();
        self.write
            .extend_from_slice(&[0x81, 0x80, mask[0], mask[1], mask[2], mask[3]]);
        let body = self.write.len();
        write(&mut self.write);
        debug_assert!(std::str::from_utf8(&self.write[body..]).is_ok());
        let len = self.write.len() - body;
        if len < 126 {
            // Fits in seven bits.
            #[allow(clippy::cast_possible_truncation)]
            let short = len as u8;
            self.write[start + 1] = 0x80 | short;
            mask_in_place(&mut self.write[body..], mask);
        } else {
            let payload = self.write.split_off(body);
            self.write.truncate(start);
            put_frame(&mut self.write, 0x1, &payload, mask);
        }
    }

    /// Queues a tungstenite frame (control frames other than those made here).
    fn queue_frame(&mut self, mut frame: Frame) {
        frame.header_mut().mask = Some(self.masks.next());
        // Formatting into a vector cannot fail.
        let _ = frame.format(&mut self.write);
    }

    /// The first complete frame in the read buffer, if there is one: its header and where
    /// its payload is. Makes room for the whole frame when it is not all there yet.
    fn parse(&mut self) -> Result<Option<(FrameHeader, usize, usize)>, WsError> {
        let Some((header, len, payload)) = parse_header(&self.read)? else {
            return Ok(None);
        };
        if len > MAX_FRAME as u64 {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                size: usize::try_from(len).unwrap_or(usize::MAX),
                max_size: MAX_FRAME,
            }));
        }
        // At most MAX_FRAME: fits.
        #[allow(clippy::cast_possible_truncation)]
        let len = len as usize;
        if payload + len <= self.read.len() {
            return Ok(Some((header, payload, len)));
        }
        // Not all here yet: make room for the whole frame.
        self.make_room(payload + len);
        Ok(None)
    }

    /// Makes the read buffer's capacity at least `size` bytes (what it holds included),
    /// taking back the space of the frames already handled when they are gone.
    fn make_room(&mut self, size: usize) {
        if self.read.capacity() < size {
            self.read.reserve(size - self.read.len());
        }
    }

    /// Handles one complete frame; `Some` when it completes a message for the caller.
    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: Bytes,
    ) -> Result<Option<Message>, WsError> {
        if !matches!(self.state, State::Active | State::ClosedByUs) {
            return Err(WsError::Protocol(ProtocolError::ReceivedAfterClosing));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
        }
        if header.mask.is_some() {
            return Err(WsError::Protocol(ProtocolError::MaskedFrameFromServer));
        }
        match header.opcode {
            OpCode::Control(_) if !header.is_final => {
                Err(WsError::Protocol(ProtocolError::FragmentedControlFrame))
            }
            OpCode::Control(_) if payload.len() > 125 => {
                Err(WsError::Protocol(ProtocolError::ControlFrameTooBig))
            }
            OpCode::Control(OpCtl::Close) => self.on_close(&payload),
            OpCode::Control(OpCtl::Reserved(i)) => {
                Err(WsError::Protocol(ProtocolError::UnknownControlFrameType(i)))
            }
            OpCode::Control(OpCtl::Ping) => {
                let data = payload;
                if self.state == State::Active {
                    // One pong waits at a time, as in tungstenite: drop an older one.
                    self.queue_frame(Frame::pong(data.clone()));
                    self.reply_waiting = true;
                }
                Ok(Some(Message::Ping(data)))
            }
            OpCode::Control(OpCtl::Pong) => Ok(Some(Message::Pong(payload))),
            OpCode::Data(data) => self.on_data(data, header.is_final, payload),
        }
    }

    fn on_data(
        &mut self,
        data: OpData,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<Message>, WsError> {
        let text = match (data, self.incomplete.as_mut()) {
            (OpData::Continue, None) => {
                return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame));
            }
            (OpData::Continue, Some(incomplete)) => {
                incomplete.extend(&payload)?;
                if !fin {
                    return Ok(None);
                }
                let Some(Incomplete { text, data, .. }) = self.incomplete.take() else {
                    return Ok(None);
                };
                return Ok(Some(if text {
                    Message::Text(Utf8Bytes::from(String::from_utf8(data)?))
                } else {
                    Message::Binary(data.into())
                }));
            }
            (_, Some(_)) => return Err(WsError::Protocol(ProtocolError::ExpectedFragment(data))),
            (OpData::Text, None) => true,
            (OpData::Binary, None) => false,
            (OpData::Reserved(i), None) => {
                return Err(WsError::Protocol(ProtocolError::UnknownDataFrameType(i)));
            }
        };
        if !fin {
            let mut incomplete = Incomplete {
                text,
                data: Vec::new(),
                checked: 0,
            };
            incomplete.extend(&payload)?;
            self.incomplete = Some(incomplete);
            return Ok(None);
        }
        Ok(Some(if text {
            Message::Text(Utf8Bytes::try_from(payload)?)
        } else {
            Message::Binary(payload)
        }))
    }

    fn on_close(&mut self, payload: &[u8]) -> Result<Option<Message>, WsError> {
        let close = match payload {
            [] => None,
            [_] => return Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
            [high, low, reason @ ..] => Some(CloseFrame {
                code: CloseCode::from(u16::from_be_bytes([*high, *low])),
                reason: Utf8Bytes::from(String::from_utf8(reason.to_vec())?),
            }),
        };
        match self.state {
            State::Active => {
                self.state = State::ClosedByPeer;
                let close = close.map(|frame| {
                    if frame.code.is_allowed() {
                        frame
                    } else {
                        CloseFrame {
                            code: CloseCode::Protocol,
                            reason: Utf8Bytes::from_static("Protocol violation"),
                        }
                    }
                });
                self.queue_frame(Frame::close(close.clone()));
                self.reply_waiting = true;
                Ok(Some(Message::Close(close)))
            }
            State::ClosedByUs => {
                self.state = State::CloseAcknowledged;
                Ok(Some(Message::Close(close)))
            }
            State::ClosedByPeer | State::CloseAcknowledged => Ok(None),
        }
    }

    /// The next message out of the bytes already read, if they hold one.
    fn next_buffered(&mut self) -> Result<Option<Message>, WsError> {
        while let Some((header, payload, len)) = self.parse()? {
            let mut frame = self.read.split_to(payload + len);
            frame.advance(payload);
            if let Some(message) = self.on_frame(&header, frame.freeze())? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConnection<S> {
    /// Writes what waits in the write buffer.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while self.written < self.write.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(WsError::Io(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "Connection reset while sending",
                ))));
            }
            self.written += n;
        }
        self.write.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, WsError>> {
        loop {
            if self.reply_waiting {
                // A pong or close reply goes out as soon as it can; a full socket does
                // not hold the reading up.
                match self.poll_flush_all(cx) {
                    Poll::Ready(Ok(())) => self.reply_waiting = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if let Some(message) = self.next_buffered()? {
                return Poll::Ready(Ok(message));
            }
            if self.read.is_empty() && self.read.capacity() > 4 * READ_BUFFER {
                // A large frame is gone: back to the usual size.
                self.read = BytesMut::with_capacity(READ_BUFFER);
            }
            // Room for a read of the usual size, and always for some bytes.
            self.make_room(READ_BUFFER.max(self.read.len() + 64));
            // Reads into the buffer's spare capacity, which needs no zeroing.
            let n = ready!(pin!(self.io.read_buf(&mut self.read)).poll(cx))?;
            if n == 0 {
                return Poll::Ready(Err(match self.state {
                    State::ClosedByPeer | State::CloseAcknowledged => WsError::ConnectionClosed,
                    State::Active | State::ClosedByUs => {
                        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
                    }
                }));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsConnection<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match ready!(this.poll_message(cx)) {
            Ok(message) => Poll::Ready(Some(Ok(message))),
            Err(e) => {
                this.ended = true;
                if matches!(e, WsError::AlreadyClosed | WsError::ConnectionClosed) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsConnection<S> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.write.len() - this.written > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        match this.state {
            State::Active => {}
            State::ClosedByUs | State::ClosedByPeer | State::CloseAcknowledged => {
                return Err(WsError::Protocol(ProtocolError::SendAfterClosing));
            }
        }
        match message {
            Message::Text(text) => this.queue(0x1, text.as_bytes()),
            Message::Binary(data) => this.queue(0x2, &data),
            Message::Ping(data) => this.queue(0x9, &data),
            Message::Pong(data) => this.queue(0xA, &data),
            Message::Close(close) => {
                this.state = State::ClosedByUs;
                this.queue_frame(Frame::close(close));
            }
            Message::Frame(frame) => this.queue_frame(frame),
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.get_mut().poll_flush_all(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.state == State::Active {
            this.state = State::ClosedByUs;
            this.queue_frame(Frame::close(None));
        }
        this.poll_flush_all(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameSink for WsConnection<S> {
    /// Writes a `ble_response`'s JSON straight into the write buffer (one per command);
    /// other frames go as their JSON text. Refused once closing, as `start_send` refuses.
    fn start_send_frame(&mut self, frame: &BridgeToServer) -> Result<(), WsError> {
        if self.state != State::Active {
            return Err(WsError::Protocol(ProtocolError::SendAfterClosing));
        }
        match frame {
            BridgeToServer::BleResponse(answer) => {
                self.queue_text_with(|out| answer.write_frame_json(out));
            }
            other => self.queue(0x1, other.to_json().as_bytes()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The same bytes fed to this connection and to tungstenite's client give the same
    //! messages and errors; what this connection writes, tungstenite's server reads back.
    #![allow(clippy::unwrap_used)]

    use futures_util::{FutureExt, SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    /// An unmasked frame as a server writes it, with its header bits spelled out.
    fn raw_frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            out.push(mask_bit | u8::try_from(len).unwrap());
        } else if let Ok(short) = u16::try_from(len) {
            out.push(mask_bit | 0x7E);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(mask_bit | 0x7F);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match mask {
            Some(mask) => {
                out.extend_from_slice(&mask);
                put_masked(&mut out, payload, mask);
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// What a reader made of a byte stream: each message, then how it ended. Of a UTF-8
    /// error only the kind counts: its detail is worded differently here.
    fn describe(item: Option<Result<Message, WsError>>) -> String {
        match item {
            None => "end".to_owned(),
            Some(Ok(message)) => format!("{message:?}"),
            Some(Err(WsError::Utf8(_))) => "error utf-8".to_owned(),
            Some(Err(e)) => format!("error {e}"),
        }
    }

    /// Our client end and tungstenite's server end of one in-memory connection of
    /// `capacity` bytes each way.
    async fn client_and_server(
        capacity: usize,
    ) -> (WsConnection<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = duplex(capacity);
        (
            WsConnection::new(client, &[]),
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
        )
    }

    /// Feeds `chunks` (then the end of the stream) through `server` to `reader` and returns
    /// what it read, at most 64 items.
    async fn read_all<R>(chunks: &[Vec<u8>], mut server: DuplexStream, mut reader: R) -> Vec<String>
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        for chunk in chunks {
            server.write_all(chunk).await.unwrap();
        }
        server.shutdown().await.unwrap();
        // The server's end stays open for reading so that pongs and close replies can be
        // written; it is dropped with this function.
        let mut out = Vec::new();
        loop {
            let item = reader.next().await;
            let last = !matches!(item, Some(Ok(_)));
            out.push(describe(item));
            if last || out.len() == 64 {
                return out;
            }
        }
    }

    fn tungstenite_config() -> WebSocketConfig {
        WebSocketConfig::default()
            .max_frame_size(Some(MAX_FRAME))
            .read_buffer_size(READ_BUFFER)
    }

    fn both(chunks: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (server, client) = duplex(1 << 22);
            let ours = read_all(chunks, server, WsConnection::new(client, &[])).await;
            let (server, client) = duplex(1 << 22);
            let reader =
                WebSocketStream::from_raw_socket(client, Role::Client, Some(tungstenite_config()))
                    .await;
            let theirs = read_all(chunks, server, reader).await;
            (ours, theirs)
        })
    }

    /// One frame a server might send, valid or not.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let text = "[a-zé\"{}:,0-9]{0,40}".prop_map(String::into_bytes);
        let bytes = prop::collection::vec(any::<u8>(), 0..300);
        let first = prop_oneof![
            8 => Just(0x81u8),                 // final text
            2 => Just(0x82),                   // final binary
            2 => Just(0x01),                   // first fragment of a text
            2 => Just(0x00),                   // continuation
            2 => Just(0x80),                   // last continuation
            2 => Just(0x89),                   // ping
            1 => Just(0x8A),                   // pong
            1 => Just(0x88),                   // close
            1 => any::<u8>(),                  // anything: reserved bits, opcodes
        ];
        let mask = prop_oneof![10 => Just(None), 1 => any::<[u8; 4]>().prop_map(Some)];
        (first, mask, prop_oneof![text, bytes]).prop_map(|(first, mask, payload)| {
            let payload = if first == 0x88 && payload.len() == 1 {
                Vec::new()
            } else {
                payload
            };
            raw_frame(first, mask, &payload)
        })
    }

    /// Splits `bytes` at the given fractions of its length.
    fn split(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| usize::from(*c) * bytes.len() / usize::from(u16::MAX))
            .collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut from = 0;
        for point in points {
            out.push(bytes[from..point].to_vec());
            from = point;
        }
        out.push(bytes[from..].to_vec());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn reads_what_tungstenite_reads(
            frames in prop::collection::vec(any_frame(), 0..12),
            cuts in prop::collection::vec(any::<u16>(), 0..6),
        ) {
            let bytes = frames.concat();
            let (ours, theirs) = both(&split(&bytes, &cuts));
            prop_assert_eq!(ours, theirs);
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn headers_parse_as_tungstenite_parses_them(
            first in any::<u8>(),
            second in any::<u8>(),
            rest in prop::collection::vec(any::<u8>(), 0..14),
        ) {
            let mut bytes = vec![first, second];
            bytes.extend_from_slice(&rest);
            let ours = parse_header(&bytes).map_err(|e| e.to_string());
            let mut cursor = std::io::Cursor::new(&bytes[..]);
            let theirs = FrameHeader::parse(&mut cursor)
                .map(|parsed| {
                    // The header is at most 14 bytes.
                    #[allow(clippy::cast_possible_truncation)]
                    let at = cursor.position() as usize;
                    parsed.map(|(header, len)| (header, len, at))
                })
                .map_err(|e| e.to_string());
            prop_assert_eq!(ours, theirs);
            // Every prefix too: a header cut short waits for the rest.
            for end in 0..bytes.len() {
                let ours = parse_header(&bytes[..end]).map_err(|e| e.to_string());
                let theirs = FrameHeader::parse(&mut std::io::Cursor::new(&bytes[..end]))
                    .map_err(|e| e.to_string());
                prop_assert_eq!(ours.map(|p| p.map(|(h, l, _)| (h, l))), theirs);
            }
        }

    }

    proptest! {
        // Fewer cases: the long payloads are slow to hex and mask in a debug build.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a_response_written_in_place_reads_back_as_its_json(
            request_id in "[ -~]{1,64}",
            payload in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80),
                prop::collection::vec(any::<u8>(), 33_000..34_000),
            ],
            error in any::<bool>(),
        ) {
            let request_id = bridge_protocol::RequestId::new(&request_id).unwrap();
            let frame = BridgeToServer::BleResponse(bridge_protocol::BleResponse {
                request_id,
                device_id: bridge_protocol::DeviceId::new("lock-1").unwrap(),
                outcome: if error {
                    bridge_protocol::BleOutcome::Error(
                        bridge_protocol::DeviceErrorCode::new("gatt_write_failed").unwrap(),
                    )
                } else {
                    bridge_protocol::BleOutcome::Payload(bridge_protocol::HexPayload::from_bytes(
                        payload,
                    ))
                },
            });
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let (mut ours, mut theirs) = client_and_server(1 << 20).await;
                // Twice, and with a text between: each frame has its own mask and length.
                ours.start_send_frame(&frame).unwrap();
                ours.feed(Message::text("between")).await.unwrap();
                ours.start_send_frame(&frame).unwrap();
                ours.flush().await.unwrap();
                let json = frame.to_json();
                for expected in [json.as_str(), "between", json.as_str()] {
                    let got = theirs.next().await.unwrap().unwrap();
                    assert_eq!(got, Message::text(expected));
                }
            });
        }
    }

    #[tokio::test]
    async fn responses_of_every_length_around_the_seven_bit_limit_read_back_as_their_json() {
        let (mut ours, mut theirs) = client_and_server(1 << 20).await;
        let mut lengths = Vec::new();
        for id_len in 1..=64 {
            let frame = BridgeToServer::BleResponse(bridge_protocol::BleResponse {
                request_id: bridge_protocol::RequestId::new(&"r".repeat(id_len)).unwrap(),
                device_id: bridge_protocol::DeviceId::new("lock-1").unwrap(),
                outcome: bridge_protocol::BleOutcome::Payload(
                    bridge_protocol::HexPayload::from_bytes(vec![0x81, 0x01]),
                ),
            });
            ours.start_send_frame(&frame).unwrap();
            ours.flush().await.unwrap();
            let json = frame.to_json();
            lengths.push(json.len());
            assert_eq!(theirs.next().await.unwrap().unwrap(), Message::text(json));
        }
        assert!(
            lengths.contains(&125) && lengths.contains(&126),
            "{lengths:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_is_refused_once_the_connection_is_closing() {
        let (_server, client) = duplex(1024);
        let mut ours = WsConnection::new(client, &[]);
        Pin::new(&mut ours)
            .start_send(Message::Close(None))
            .unwrap();
        let frame = BridgeToServer::Release(bridge_protocol::Release {
            device_id: bridge_protocol::DeviceId::new("lock-1").unwrap(),
        });
        assert!(matches!(
            ours.start_send_frame(&frame),
            Err(WsError::Protocol(ProtocolError::SendAfterClosing))
        ));
    }

    proptest! {
        // Fewer cases: each writes up to 70 KB (64-bit lengths), slow in a debug build.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn tungstenite_reads_what_it_writes(
            texts in prop::collection::vec("\\PC{0,300}", 1..8),
            binary in prop::collection::vec(any::<u8>(), 0..70_000),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let (mut ours, mut theirs) = client_and_server(1 << 20).await;
                let mut sent = Vec::new();
                for text in &texts {
                    sent.push(Message::text(text.clone()));
                }
                sent.push(Message::binary(binary.clone()));
                sent.push(Message::Ping(Bytes::from_static(b"p")));
                for message in &sent {
                    ours.feed(message.clone()).await.unwrap();
                }
                ours.flush().await.unwrap();
                for message in &sent {
                    let got = theirs.next().await.unwrap().unwrap();
                    assert_eq!(&got, message);
                }
            });
        }
    }

    #[test]
    fn large_frames_fragments_and_control_frames_read_as_tungstenite_reads_them() {
        let big = vec![b'x'; 70_000];
        let cases: Vec<Vec<Vec<u8>>> = vec![
            // A frame much larger than the read buffer, in small pieces.
            split(&raw_frame(0x81, None, &big), &[1, 2, 3000, 40_000, 65_000]),
            // A text in three fragments with a ping between them.
            vec![
                raw_frame(0x01, None, b"ab"),
                raw_frame(0x89, None, b"hi"),
                raw_frame(0x00, None, b"c"),
                raw_frame(0x80, None, b"d"),
            ],
            // A close with a code and a reason, then a frame after it.
            vec![
                raw_frame(0x88, None, &[0x03, 0xE8, b'b', b'y', b'e']),
                raw_frame(0x81, None, b"late"),
            ],
            // A close with a code not allowed on the wire.
            vec![raw_frame(0x88, None, &[0x03, 0xED])],
            // Invalid UTF-8 in a text; a frame over the size limit.
            vec![raw_frame(0x81, None, &[0xff, 0xfe])],
            vec![raw_frame(0x82, None, &vec![0; MAX_FRAME + 1])],
            // The stream ends in the middle of a frame.
            vec![raw_frame(0x81, None, b"cut short")[..5].to_vec()],
        ];
        for chunks in cases {
            let (ours, theirs) = both(&chunks);
            assert_eq!(ours, theirs);
        }
    }

    #[tokio::test]
    async fn messages_kept_while_more_are_read_keep_their_bytes() {
        // Frames split off the read buffer share its allocation: the space is taken back
        // only when they are gone, never while a message still holds it.
        let (mut server, client) = duplex(1 << 20);
        let mut ours = WsConnection::new(client, &[]);
        let texts: Vec<String> = (0..200)
            .map(|i| format!("{i}:{}", "x".repeat(i * 37 % 1500)))
            .collect();
        let bytes: Vec<u8> = texts
            .iter()
            .flat_map(|t| raw_frame(0x81, None, t.as_bytes()))
            .collect();
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(999) {
                server.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let mut kept = Vec::new();
        for _ in &texts {
            kept.push(ours.next().await.unwrap().unwrap());
        }
        let _server = writer.await.unwrap();
        let expected: Vec<Message> = texts.into_iter().map(Message::text).collect();
        assert_eq!(kept, expected);
    }

    #[tokio::test]
    async fn frames_read_with_the_handshake_come_first() {
        let (mut server, client) = duplex(1024);
        let ahead = raw_frame(0x81, None, b"first");
        let mut ours = WsConnection::new(client, &ahead[..4]);
        server.write_all(&ahead[4..]).await.unwrap();
        server
            .write_all(&raw_frame(0x81, None, b"second"))
            .await
            .unwrap();
        assert_eq!(ours.next().await.unwrap().unwrap(), Message::text("first"));
        assert_eq!(ours.next().await.unwrap().unwrap(), Message::text("second"));
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_its_pong_before_the_next_read() {
        let (mut ours, mut theirs) = client_and_server(1024).await;
        theirs
            .send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        assert_eq!(
            ours.next().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"are you there"))
        );
        // The pong goes out when the client next waits for a message.
        assert!(ours.next().now_or_never().is_none());
        assert_eq!(
            theirs.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"are you there"))
        );
    }

    #[test]
    fn masking_eight_bytes_at_a_time_equals_byte_by_byte() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let payload: Vec<u8> = (0..len)
                .map(|i| u8::try_from(i * 7 % 256).unwrap())
                .collect();
            let mut out = Vec::new();
            put_masked(&mut out, &payload, mask);
            let expected: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(out, expected, "length {len}");
        }
    }

    #[test]
    fn masks_differ_from_frame_to_frame() {
        let mut masks = Masks::new();
        let keys: std::collections::HashSet<[u8; 4]> = (0..1000).map(|_| masks.next()).collect();
        assert!(keys.len() > 990, "{}", keys.len());
    }
}

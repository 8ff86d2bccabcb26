//! The server's WebSocket after the handshake: RFC 6455 framing written for the hub's pump
//! (see [`ServerWebSocket`]).
//!
//! It is a port of tungstenite's server side (`WebSocketContext` with `Role::Server`, as
//! `tokio_tungstenite::WebSocketStream` drives it) with the same state machine, the same
//! checks in the same order and the same errors; only the buffering differs. tungstenite
//! zero-fills its read buffer before every read attempt (about three per command at one
//! command in flight) and copies frames it cannot use whole; here reads go into the spare
//! capacity of a `BytesMut`, which needs no zeroing, a frame is unmasked in place and split
//! off without a copy, and a message is written straight into the write buffer. The
//! equivalence tests below feed the same bytes to both.

use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::coding::{CloseCode, Control as OpCtl, Data as OpData, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

/// The longest frame header (tungstenite's `FrameHeader::MAX_SIZE`, private there).
const MAX_HEADER: usize = 14;

/// Where the closing handshake is (tungstenite's `WebSocketState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    ClosedByUs,
    ClosedByPeer,
    CloseAcknowledged,
    Terminated,
}

impl State {
    /// Whether frames from the peer are still taken: after our close, the peer may still
    /// send what it sent before it saw it.
    fn can_read(self) -> bool {
        matches!(self, Self::Active | Self::ClosedByUs)
    }
}

/// The limits of one connection, from its `WebSocketConfig`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The read buffer's usual capacity: one read takes up to this much.
    read_buffer: usize,
    /// Above this many bytes waiting to be written, the next frame waits until they are.
    write_buffer: usize,
    /// A frame that would make the bytes waiting exceed this is refused (`WriteBufferFull`).
    max_write_buffer: usize,
    max_message: usize,
    max_frame: usize,
    accept_unmasked: bool,
}

/// Unmasks `payload` in place with `mask`, sixteen bytes at a time (the last ones too,
/// through a padded copy).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u128::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3], mask[0], mask[1],
        mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let mut word = [0u8; 16];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u128::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The key's phase is unchanged after a multiple of sixteen bytes.
    let rest = chunks.into_remainder();
    let mut word = [0u8; 16];
    word[..rest.len()].copy_from_slice(rest);
    let word = (u128::from_ne_bytes(word) ^ wide).to_ne_bytes();
    rest.copy_from_slice(&word[..rest.len()]);
}

/// A frame header at the start of `bytes` (tungstenite's `FrameHeader::parse`, without its
/// reader): the header, the payload's length and the header's; `None` until all of the
/// header is there. A reserved opcode is refused once the whole header is in, as there.
fn parse_header(bytes: &[u8]) -> Result<Option<(FrameHeader, u64, usize)>, WsError> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    let (len, rest) = match second & 0x7F {
        126 => match rest {
            [high, low, rest @ ..] => (u64::from(u16::from_be_bytes([*high, *low])), rest),
            _ => return Ok(None),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((len, rest)) => (u64::from_be_bytes(*len), rest),
            None => return Ok(None),
        },
        short => (u64::from(short), rest),
    };
    let mask = if second & 0x80 == 0 {
        None
    } else {
        match rest.first_chunk::<4>() {
            Some(mask) => Some(*mask),
            None => return Ok(None),
        }
    };
    let opcode = OpCode::from(first & 0x0F);
    if let OpCode::Control(OpCtl::Reserved(_)) | OpCode::Data(OpData::Reserved(_)) = opcode {
        return Err(WsError::Protocol(ProtocolError::InvalidOpcode(
            first & 0x0F,
        )));
    }
    let header_len = bytes.len() - rest.len() + if mask.is_some() { 4 } else { 0 };
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode,
        mask,
    };
    Ok(Some((header, len, header_len)))
}

/// The length of an unmasked frame's header for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if u16::try_from(len).is_ok() {
        4
    } else {
        10
    }
}

/// Appends one final, unmasked frame (server to client) with `opcode` and `payload`.
fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(header_len(len) + len);
    out.push(0x80 | opcode);
    if len < 126 {
        // Fits in seven bits.
        #[allow(clippy::cast_possible_truncation)]
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x7E);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x7F);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A fragmented message being put together (tungstenite's `IncompleteMessage`).
#[derive(Debug)]
struct Incomplete {
    text: bool,
    data: Vec<u8>,
    /// Of a text, how many bytes of `data` are known to be valid UTF-8.
    checked: usize,
}

impl Incomplete {
    /// Adds a fragment. The size limit counts the whole message; a text's UTF-8 is checked
    /// as it comes, as tungstenite does: an invalid sequence fails the message at once, one
    /// cut by the fragment's end waits for the next.
    fn extend(&mut self, payload: &[u8], max_size: usize) -> Result<(), WsError> {
        let size = self.data.len();
        if size > max_size || payload.len() > max_size - size {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                size: size + payload.len(),
                max_size,
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

    fn complete(self) -> Result<Message, WsError> {
        Ok(if self.text {
            Message::Text(Utf8Bytes::from(String::from_utf8(self.data)?))
        } else {
            Message::Binary(self.data.into())
        })
    }
}

/// A server-side WebSocket over `IO` after the handshake: a [`Stream`] of the client's
/// messages and a [`Sink`] of the server's, as `tokio_tungstenite::WebSocketStream` with
/// `Role::Server` is, for one task that uses both ([`LocalHub::serve`](crate::LocalHub::serve)).
///
/// It reads and writes what tungstenite's server does with the same `WebSocketConfig`, with
/// the same messages and the same errors: client frames must be masked
/// (`ProtocolError::UnmaskedFrameFromClient`, unless the configuration accepts unmasked
/// ones); reserved bits, reserved opcodes, fragmented or oversized control frames, a
/// continuation without a start and a new message inside a fragmented one are protocol
/// errors; a frame longer than `max_frame_size` is refused as soon as its header is read,
/// before its payload is buffered (`Error::Capacity`, which the hub answers with close
/// 1009), and so is a message longer than `max_message_size` over its fragments; a text
/// must be valid UTF-8, checked fragment by fragment. A ping is delivered and answered with
/// a pong (the latest one, if several wait), sent before the next read; a close is
/// delivered, answered with a close, and then the stream ends.
///
/// The differences are in the buffers only. A read goes into the spare capacity of the read
/// buffer (`read_buffer_size`, grown to a frame's length while a larger frame is read; a
/// buffer grown past four times that size is given back once empty) without zeroing it
/// first, and always has room for a whole read: a frame that straddles the buffer's end is not read in two system calls, so the
/// [`ReadAhead`](crate::ReadAhead) wrapper is not needed. Frames are unmasked in place and
/// split off the buffer without a copy. Messages sent are formatted straight into the write
/// buffer and written by the next flush, or by the next `poll_ready` once more than
/// `write_buffer_size` bytes wait: a batch of frames goes out with one system call.
#[derive(Debug)]
pub struct ServerWebSocket<IO> {
    io: IO,
    /// Bytes read and not parsed yet.
    read: BytesMut,
    /// Bytes to write: `write[written..]` are not written yet.
    write: Vec<u8>,
    written: usize,
    /// A pong or close reply to buffer before the next write or read.
    reply: Option<Frame>,
    /// A reply was buffered and not flushed yet (tungstenite's `unflushed_additional`).
    reply_unflushed: bool,
    /// A message sent asks for a flush before the next one (a reply went with it, or it was
    /// a close).
    flush_wanted: bool,
    incomplete: Option<Incomplete>,
    state: State,
    /// The stream ended (an error was returned, or the connection closed): `None` from now on.
    ended: bool,
    limits: Limits,
}

impl<IO> ServerWebSocket<IO> {
    /// The server's side of a connection whose handshake is done, with the buffer sizes and
    /// limits of `config` (for the hub: [`HubConfig::websocket_config`](crate::HubConfig::websocket_config)).
    pub fn new(io: IO, config: &WebSocketConfig) -> Self {
        Self::from_partially_read(io, &[], config)
    }

    /// Like [`ServerWebSocket::new`], for a connection of which `read_ahead` was already
    /// read with the handshake (what a client sent right behind its request): they are read
    /// first.
    pub fn from_partially_read(io: IO, read_ahead: &[u8], config: &WebSocketConfig) -> Self {
        let limits = Limits {
            read_buffer: config.read_buffer_size.max(MAX_HEADER),
            write_buffer: config.write_buffer_size,
            max_write_buffer: config.max_write_buffer_size,
            max_message: config.max_message_size.unwrap_or(usize::MAX),
            max_frame: config.max_frame_size.unwrap_or(usize::MAX),
            accept_unmasked: config.accept_unmasked_frames,
        };
        let mut read = BytesMut::with_capacity(limits.read_buffer.max(read_ahead.len()));
        read.extend_from_slice(read_ahead);
        Self {
            io,
            read,
            write: Vec::new(),
            written: 0,
            reply: None,
            reply_unflushed: false,
            flush_wanted: false,
            incomplete: None,
            state: State::Active,
            ended: false,
            limits,
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes buffered and not written yet.
    fn unwritten(&self) -> usize {
        self.write.len() - self.written
    }

    /// Buffers a frame of `opcode` with `payload`, unless the bytes waiting would exceed
    /// `max_write_buffer_size` (tungstenite's `WriteBufferFull`, with the frame).
    fn buffer(&mut self, opcode: OpData, payload: &[u8]) -> Result<(), WsError> {
        let len = header_len(payload.len()) + payload.len();
        if len + self.unwritten() > self.limits.max_write_buffer {
            let frame = Frame::message(Bytes::copy_from_slice(payload), OpCode::Data(opcode), true);
            return Err(WsError::WriteBufferFull(Box::new(Message::Frame(frame))));
        }
        put_frame(&mut self.write, u8::from(OpCode::Data(opcode)), payload);
        Ok(())
    }

    /// Buffers a frame made elsewhere (control frames, `Message::Frame`).
    fn buffer_frame(&mut self, frame: Frame) -> Result<(), WsError> {
        if frame.len() + self.unwritten() > self.limits.max_write_buffer {
            return Err(WsError::WriteBufferFull(Box::new(Message::Frame(frame))));
        }
        // Formatting into a vector cannot fail.
        frame.format(&mut self.write)
    }

    /// Buffers the waiting reply, if there is one; whether it asks for a flush (tungstenite's
    /// `_write` without its terminating part).
    fn buffer_reply(&mut self) -> Result<bool, WsError> {
        let Some(reply) = self.reply.take() else {
            return Ok(self.reply_unflushed);
        };
        match self.buffer_frame(reply) {
            Ok(()) => Ok(true),
            Err(WsError::WriteBufferFull(message)) => {
                // Kept for the next try, as tungstenite does.
                if let Message::Frame(frame) = *message {
                    self.reply = Some(frame);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `frame` the reply to send, unless a close reply waits (a newer pong replaces
    /// an older one).
    fn set_reply(&mut self, frame: Frame) {
        let empty_or_pong = self
            .reply
            .as_ref()
            .is_none_or(|f| f.header().opcode == OpCode::Control(OpCtl::Pong));
        if empty_or_pong {
            self.reply = Some(frame);
        }
    }

    /// Queues `message` (tungstenite's `write`, the flush it may ask for left to the next
    /// `poll_ready` or `poll_flush`).
    fn queue(&mut self, message: Message) -> Result<(), WsError> {
        match self.state {
            State::Terminated => return Err(WsError::AlreadyClosed),
            State::Active => {}
            State::ClosedByUs | State::ClosedByPeer | State::CloseAcknowledged => {
                return Err(WsError::Protocol(ProtocolError::SendAfterClosing));
            }
        }
        match message {
            Message::Text(text) => self.buffer(OpData::Text, text.as_bytes())?,
            Message::Binary(data) => self.buffer(OpData::Binary, &data)?,
            Message::Ping(data) => self.buffer_frame(Frame::ping(data))?,
            Message::Pong(data) => {
                // A pong sent by hand goes out with the next flush, like an automatic one.
                self.set_reply(Frame::pong(data));
                self.buffer_reply()?;
                return Ok(());
            }
            Message::Close(close) => {
                self.state = State::ClosedByUs;
                self.buffer_frame(Frame::close(close))?;
                self.buffer_reply()?;
                self.flush_wanted = true;
                return Ok(());
            }
            Message::Frame(frame) => self.buffer_frame(frame)?,
        }
        if self.buffer_reply()? {
            self.flush_wanted = true;
        }
        Ok(())
    }

    /// Handles one complete frame, unmasked; `Some` when it completes a message.
    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: Bytes,
    ) -> Result<Option<Message>, WsError> {
        if !self.state.can_read() {
            return Err(WsError::Protocol(ProtocolError::ReceivedAfterClosing));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
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
                // No pong once we sent a close.
                if self.state == State::Active {
                    self.set_reply(Frame::pong(payload.clone()));
                }
                Ok(Some(Message::Ping(payload)))
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
        let max_message = self.limits.max_message;
        let text = match (data, self.incomplete.as_mut()) {
            (OpData::Continue, None) => {
                return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame));
            }
            (OpData::Continue, Some(incomplete)) => {
                incomplete.extend(&payload, max_message)?;
                if !fin {
                    return Ok(None);
                }
                return match self.incomplete.take() {
                    Some(incomplete) => incomplete.complete().map(Some),
                    None => Ok(None),
                };
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
            incomplete.extend(&payload, max_message)?;
            self.incomplete = Some(incomplete);
            return Ok(None);
        }
        if payload.len() > max_message {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                size: payload.len(),
                max_size: max_message,
            }));
        }
        Ok(Some(if text {
            Message::Text(Utf8Bytes::try_from(payload)?)
        } else {
            Message::Binary(payload)
        }))
    }

    fn on_close(&mut self, payload: &Bytes) -> Result<Option<Message>, WsError> {
        let close = match payload.len() {
            0 => None,
            1 => return Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
            _ => Some(CloseFrame {
                code: CloseCode::from(u16::from_be_bytes([payload[0], payload[1]])),
                reason: Utf8Bytes::try_from(payload.slice(2..))?,
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
                self.set_reply(Frame::close(close.clone()));
                Ok(Some(Message::Close(close)))
            }
            State::ClosedByUs => {
                self.state = State::CloseAcknowledged;
                Ok(Some(Message::Close(close)))
            }
            // Not reached: no frame is read in these states.
            State::ClosedByPeer | State::CloseAcknowledged | State::Terminated => Ok(None),
        }
    }

    /// The first complete frame in the read buffer, if there is one: its header and the
    /// bytes of header and payload. Refuses a frame over the size limit as soon as its
    /// header is here; makes room for the whole frame when it is not all there yet.
    fn parse(&mut self) -> Result<Option<(FrameHeader, usize, usize)>, WsError> {
        let Some((header, len, start)) = parse_header(&self.read)? else {
            return Ok(None);
        };
        if len > self.limits.max_frame as u64 {
            return Err(WsError::Capacity(CapacityError::MessageTooLong {
                // As tungstenite reports it (a 64-bit target: no truncation).
                #[allow(clippy::cast_possible_truncation)]
                size: len as usize,
                max_size: self.limits.max_frame,
            }));
        }
        // At most `max_frame`, a `usize`: fits.
        #[allow(clippy::cast_possible_truncation)]
        let len = len as usize;
        if start + len <= self.read.len() {
            return Ok(Some((header, start, len)));
        }
        // Not all here yet: room for the whole frame.
        self.make_room(start + len);
        Ok(None)
    }

    /// Makes the read buffer's capacity at least `size` bytes (what it holds included),
    /// taking back the space of the frames already handled when they are gone.
    fn make_room(&mut self, size: usize) {
        if self.read.capacity() < size {
            self.read.reserve(size - self.read.len());
        }
    }

    /// The next complete frame in the read buffer, unmasked, if there is one.
    fn next_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, WsError> {
        let Some((mut header, start, len)) = self.parse()? else {
            return Ok(None);
        };
        let mut payload = self.read.split_to(start + len);
        payload.advance(start);
        match header.mask.take() {
            Some(mask) => unmask(&mut payload, mask),
            None if self.limits.accept_unmasked => {}
            None => return Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
        }
        Ok(Some((header, payload.freeze())))
    }
}

/// An I/O error of a read as tungstenite reports it: a reset after the closing handshake
/// started is the connection closing.
fn read_error(error: io::Error, state: State) -> WsError {
    if !state.can_read() && error.kind() == io::ErrorKind::ConnectionReset {
        WsError::ConnectionClosed
    } else {
        WsError::Io(error)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerWebSocket<IO> {
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

    /// tungstenite's `flush`: buffers the waiting reply, writes everything and flushes the
    /// transport; once the peer's close is in, writes what is left and ends the connection
    /// (`ConnectionClosed`): the server closes the TCP connection first (RFC 6455 7.1.1).
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.buffer_reply()?;
        if !self.state.can_read() {
            ready!(self.poll_write_out(cx))?;
            self.state = State::Terminated;
            return Poll::Ready(Err(WsError::ConnectionClosed));
        }
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.reply_unflushed = false;
        self.flush_wanted = false;
        Poll::Ready(Ok(()))
    }

    /// tungstenite's `read`: the next message, replies sent on the way.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, WsError>> {
        if self.state == State::Terminated {
            return Poll::Ready(Err(WsError::AlreadyClosed));
        }
        loop {
            if self.reply.is_some() || self.reply_unflushed {
                // A reply goes out as soon as it can; a full socket does not hold the
                // reading up.
                match self.poll_flush_all(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => self.reply_unflushed = true,
                }
            } else if !self.state.can_read() {
                self.state = State::Terminated;
                return Poll::Ready(Err(WsError::ConnectionClosed));
            }
            let Some((header, payload)) = ready!(self.poll_frame(cx))? else {
                // The peer closed the connection.
                let state = std::mem::replace(&mut self.state, State::Terminated);
                return Poll::Ready(Err(match state {
                    State::ClosedByPeer | State::CloseAcknowledged => WsError::ConnectionClosed,
                    _ => WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                }));
            };
            if let Some(message) = self.on_frame(&header, payload)? {
                return Poll::Ready(Ok(message));
            }
        }
    }

    /// The next frame, read from the transport as needed; `None` at the end of the stream.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(FrameHeader, Bytes)>, WsError>> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.read.is_empty() && self.read.capacity() > 4 * self.limits.read_buffer {
                // A large frame is gone: back to the usual size.
                self.read = BytesMut::with_capacity(self.limits.read_buffer);
            }
            // Room for a read of the usual size, and always for some bytes.
            self.make_room(self.limits.read_buffer.max(self.read.len() + 64));
            // Reads into the buffer's spare capacity, which needs no zeroing.
            let read = ready!(pin!(self.io.read_buf(&mut self.read)).poll(cx));
            match read {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(read_error(error, self.state))),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Stream for ServerWebSocket<IO> {
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

impl<IO: AsyncRead + AsyncWrite + Unpin> Sink<Message> for ServerWebSocket<IO> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.flush_wanted || this.unwritten() > this.limits.write_buffer {
            return this.poll_flush_all(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        self.get_mut().queue(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match ready!(self.get_mut().poll_flush_all(cx)) {
            // The connection has just been closed: flushing is done.
            Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.state == State::Active {
            this.state = State::ClosedByUs;
            this.buffer_frame(Frame::close(None))?;
        }
        match ready!(this.poll_flush_all(cx)) {
            Err(WsError::ConnectionClosed) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The same client bytes, in any chunks and with any stalls of the transport, read by
    //! this socket and by tungstenite's server with the same configuration give the same
    //! messages, the same errors and the same bytes written back; what this socket writes,
    //! tungstenite's client reads back.
    #![allow(clippy::unwrap_used)]

    use futures_util::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::Role;

    use super::*;
    use crate::HubConfig;
    use crate::fuzzing::{Scripted, both};

    /// A frame as a client writes it, with its header bits spelled out: `mask` `None` sends
    /// it unmasked; `claimed` overrides the length in the header (64-bit form).
    fn client_frame(
        first: u8,
        mask: Option<[u8; 4]>,
        payload: &[u8],
        claimed: Option<u64>,
    ) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        if let Some(claimed) = claimed {
            out.push(mask_bit | 0x7F);
            out.extend_from_slice(&claimed.to_be_bytes());
        } else if len < 126 {
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
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// A masked final frame.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(first, Some([0x37, 0xfa, 0x21, 0x3d]), payload, None)
    }

    /// The hub's configuration with frames of at most `max_frame_bytes`.
    fn hub_config(max_frame_bytes: usize) -> WebSocketConfig {
        HubConfig {
            max_frame_bytes,
            ..HubConfig::default()
        }
        .websocket_config()
    }

    /// Asserts that both read `chunks` alike (in one piece, byte by byte, and with stalls
    /// and one-byte writes) and returns what was read.
    fn same_as_tungstenite(chunks: &[Vec<u8>]) -> Vec<String> {
        let config = hub_config(1000);
        let (ours, theirs) = both(&config, &[], chunks, &[], usize::MAX);
        assert_eq!(ours, theirs);
        let bytes = chunks.concat();
        let singles: Vec<Vec<u8>> = bytes.iter().map(|b| vec![*b]).collect();
        let (ours_split, theirs_split) = both(&config, &[], &singles, &[true, false, false], 1);
        assert_eq!(ours_split, theirs_split);
        assert_eq!(ours_split.read, ours.read);
        ours.read
    }

    /// One frame a client might send, valid or not.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let text = "[a-zé\"{}:,0-9]{0,40}".prop_map(String::into_bytes);
        let bytes = prop::collection::vec(any::<u8>(), 0..600);
        let first = prop_oneof![
            8 => Just(0x81u8),                 // final text
            2 => Just(0x82),                   // final binary
            2 => Just(0x01),                   // first fragment of a text
            1 => Just(0x02),                   // first fragment of a binary
            2 => Just(0x00),                   // continuation
            2 => Just(0x80),                   // last continuation
            2 => Just(0x89),                   // ping
            1 => Just(0x8A),                   // pong
            1 => Just(0x88),                   // close
            1 => any::<u8>(),                  // anything: reserved bits, opcodes
        ];
        let mask = prop_oneof![12 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)];
        let claimed = prop_oneof![
            20 => Just(None),
            1 => any::<u64>().prop_map(Some),
            1 => (0u64..2000).prop_map(Some),
        ];
        (first, mask, prop_oneof![text, bytes], claimed).prop_map(
            |(first, mask, payload, claimed)| client_frame(first, mask, &payload, claimed),
        )
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
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn reads_and_answers_what_tungstenite_reads_and_answers(
            frames in prop::collection::vec(any_frame(), 0..12),
            flips in prop::collection::vec((any::<u16>(), any::<u8>()), 0..3),
            cuts in prop::collection::vec(any::<u16>(), 0..8),
            stalls in prop::collection::vec(any::<bool>(), 0..6),
            write_max in prop_oneof![Just(usize::MAX), 1usize..40],
            max_frame in prop_oneof![Just(300usize), Just(65_536)],
            ahead in prop_oneof![3 => Just(0u16), 1 => any::<u16>()],
        ) {
            let mut bytes = frames.concat();
            // Mutated bytes anywhere: headers, lengths, masks, payloads.
            for (at, xor) in flips {
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] ^= xor;
                }
            }
            // Some bytes read with the handshake, the rest through the transport.
            let ahead = usize::from(ahead) * bytes.len() / usize::from(u16::MAX);
            let (ahead, rest) = bytes.split_at(ahead);
            let (ours, theirs) =
                both(&hub_config(max_frame), ahead, &split(rest, &cuts), &stalls, write_max);
            prop_assert_eq!(ours, theirs);
        }
    }

    proptest! {
        #[test]
        fn headers_parse_as_tungstenite_parses_them(
            bytes in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let ours = parse_header(&bytes);
            let mut cursor = std::io::Cursor::new(&bytes);
            let theirs = FrameHeader::parse(&mut cursor);
            match (ours, theirs) {
                (Ok(Some((h1, l1, n1))), Ok(Some((h2, l2)))) => {
                    prop_assert_eq!((h1, l1), (h2, l2));
                    prop_assert_eq!(n1 as u64, cursor.position());
                }
                (Ok(None), Ok(None)) => {}
                (Err(e1), Err(e2)) => prop_assert_eq!(e1.to_string(), e2.to_string()),
                (ours, theirs) => prop_assert!(false, "{:?} != {:?}", ours, theirs),
            }
        }

        #[test]
        fn unmasking_sixteen_bytes_at_a_time_equals_byte_by_byte(
            payload in prop::collection::vec(any::<u8>(), 0..100),
            mask in any::<[u8; 4]>(),
        ) {
            let mut ours = payload.clone();
            unmask(&mut ours, mask);
            let expected: Vec<u8> =
                payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            prop_assert_eq!(ours, expected);
        }
    }

    #[test]
    fn an_unmasked_client_frame_is_a_protocol_error() {
        let read = same_as_tungstenite(&[client_frame(0x81, None, b"hello", None)]);
        assert_eq!(
            read,
            ["error WebSocket protocol error: Received an unmasked frame from client"]
        );
    }

    #[test]
    fn reserved_bits_and_reserved_opcodes_are_protocol_errors() {
        for first in [0xC1, 0xA1, 0x91, 0x83, 0x87, 0x8B, 0x8F] {
            let read = same_as_tungstenite(&[masked(first, b"x")]);
            assert_eq!(read.len(), 1, "{first:#x}: {read:?}");
            assert!(
                read[0].starts_with("error WebSocket protocol error"),
                "{read:?}"
            );
        }
    }

    #[test]
    fn fragmented_or_long_control_frames_are_protocol_errors() {
        for chunks in [
            vec![masked(0x09, b"ping")],
            vec![masked(0x08, b"")],
            vec![masked(0x89, &[b'p'; 126])],
            vec![masked(0x8A, &[b'p'; 200])],
        ] {
            let read = same_as_tungstenite(&chunks);
            assert_eq!(read.len(), 1, "{read:?}");
            assert!(
                read[0].starts_with("error WebSocket protocol error"),
                "{read:?}"
            );
        }
        // 125 bytes is still a ping.
        let read = same_as_tungstenite(&[masked(0x89, &[b'p'; 125])]);
        assert!(read[0].starts_with("Ping("), "{read:?}");
    }

    #[test]
    fn fragments_out_of_order_are_protocol_errors() {
        // A continuation without a start.
        let read = same_as_tungstenite(&[masked(0x80, b"tail")]);
        assert_eq!(
            read,
            ["error WebSocket protocol error: Continue frame but nothing to continue"]
        );
        // A new message in the middle of a fragmented one.
        let read = same_as_tungstenite(&[masked(0x01, b"he"), masked(0x81, b"new")]);
        assert_eq!(read.len(), 1, "{read:?}");
        assert!(
            read[0].contains("While waiting for more fragments"),
            "{read:?}"
        );
        // A ping between fragments is fine.
        let read = same_as_tungstenite(&[
            masked(0x01, b"he"),
            masked(0x89, b"?"),
            masked(0x00, b"ll"),
            masked(0x80, b"o"),
        ]);
        assert_eq!(read[..2], ["Ping(b\"?\")", "Text(Utf8Bytes(b\"hello\"))"]);
    }

    #[test]
    fn a_message_over_the_limit_across_fragments_is_refused() {
        // 1000 bytes at most (`same_as_tungstenite`): three fragments of 400.
        let part = [b'a'; 400];
        let read = same_as_tungstenite(&[
            masked(0x01, &part),
            masked(0x00, &part),
            masked(0x80, &part),
        ]);
        assert_eq!(
            read,
            ["error Space limit exceeded: Message too long: 1200 > 1000"]
        );
    }

    #[test]
    fn invalid_utf8_is_refused_also_split_across_fragments() {
        let euro = "€".as_bytes();
        // Valid when split inside a character.
        let read = same_as_tungstenite(&[masked(0x01, &euro[..1]), masked(0x80, &euro[1..])]);
        assert_eq!(read[0], "Text(Utf8Bytes(b\"\\xe2\\x82\\xac\"))");
        // Invalid in one frame, in a fragment, and cut short at the message's end.
        for chunks in [
            vec![masked(0x81, &[0xff, 0xfe])],
            vec![masked(0x01, b"ok"), masked(0x80, &[0xc3, 0x28])],
            vec![masked(0x01, b"ok"), masked(0x80, &euro[..2])],
        ] {
            assert_eq!(same_as_tungstenite(&chunks), ["error utf-8"]);
        }
    }

    #[test]
    fn a_close_is_delivered_answered_and_ends_the_stream() {
        let config = hub_config(1000);
        let (ours, theirs) = both(
            &config,
            &[],
            &[
                masked(0x88, &[0x03, 0xE8, b'b', b'y', b'e']),
                masked(0x81, b"late"),
            ],
            &[],
            usize::MAX,
        );
        assert_eq!(ours, theirs);
        assert_eq!(ours.read.len(), 2, "{:?}", ours.read);
        assert!(ours.read[0].starts_with("Close(Some(CloseFrame { code: Normal"));
        assert_eq!(ours.read[1], "end");
        // The reply: code 1000 and the reason, unmasked.
        assert_eq!(ours.written, [0x88, 5, 0x03, 0xE8, b'b', b'y', b'e']);
    }

    #[test]
    fn bad_close_frames_are_refused_as_tungstenite_refuses_them() {
        // A code not allowed on the wire is answered 1002; one byte, or a reason that is not
        // UTF-8, is an error.
        let not_allowed = same_as_tungstenite(&[masked(0x88, &[0x03, 0xED])]);
        assert!(not_allowed[0].contains("code: Protocol"), "{not_allowed:?}");
        let one_byte = same_as_tungstenite(&[masked(0x88, &[0x03])]);
        assert_eq!(
            one_byte,
            ["error WebSocket protocol error: Invalid close sequence"]
        );
        let bad_reason = same_as_tungstenite(&[masked(0x88, &[0x03, 0xE8, 0xff])]);
        assert_eq!(bad_reason, ["error utf-8"]);
    }

    #[test]
    fn a_ping_is_delivered_and_answered_with_the_latest_pong() {
        let read = same_as_tungstenite(&[masked(0x89, b"one"), masked(0x89, b"two")]);
        assert_eq!(read[..2], ["Ping(b\"one\")", "Ping(b\"two\")"]);
        let (ours, _) = both(
            &hub_config(1000),
            &[],
            &[masked(0x89, b"one")],
            &[],
            usize::MAX,
        );
        assert_eq!(ours.written, [0x8A, 3, b'o', b'n', b'e']);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_payload_is_read() {
        // Only the header of a 1001-byte frame, and of one claiming 2^63 + 5 bytes: the
        // error comes at once, nothing is buffered for the payload.
        for claimed in [1001, (1 << 63) + 5] {
            let header = client_frame(0x82, Some([1, 2, 3, 4]), &[], Some(claimed));
            let (ours, theirs) = both(
                &hub_config(1000),
                &[],
                std::slice::from_ref(&header),
                &[],
                usize::MAX,
            );
            assert_eq!(ours, theirs);
            assert_eq!(
                ours.read,
                [format!(
                    "error Space limit exceeded: Message too long: {claimed} > 1000"
                )]
            );
            let mut socket =
                ServerWebSocket::new(Scripted::new(&[header], &[], 1), &hub_config(1000));
            let next = futures_util::FutureExt::now_or_never(socket.next()).unwrap();
            assert!(matches!(next, Some(Err(WsError::Capacity(_)))));
            assert!(socket.read.capacity() <= HubConfig::READ_BUFFER_BYTES);
        }
        // 1000 bytes are still taken.
        let read = same_as_tungstenite(&[masked(0x82, &[7; 1000])]);
        assert!(read[0].starts_with("Binary("), "{read:?}");
    }

    #[test]
    fn the_stream_ends_in_the_middle_of_a_frame_as_a_reset() {
        let frame = masked(0x81, b"cut short");
        let read = same_as_tungstenite(&[frame[..8].to_vec()]);
        assert_eq!(
            read,
            ["error WebSocket protocol error: Connection reset without closing handshake"]
        );
    }

    #[test]
    fn a_frame_larger_than_the_read_buffer_is_read_whole() {
        let big = vec![b'x'; 70_000];
        let chunks = split(&masked(0x81, &big), &[1, 2, 3000, 40_000, 65_000]);
        let config = HubConfig::default().websocket_config();
        let (ours, theirs) = both(&config, &[], &chunks, &[true, false], usize::MAX);
        assert_eq!(ours, theirs);
        assert_eq!(ours.read.len(), 1);
        assert!(ours.read[0].starts_with("error Space limit exceeded"));
        let config = hub_config(100_000);
        let (ours, theirs) = both(&config, &[], &chunks, &[true, false], usize::MAX);
        assert_eq!(ours, theirs);
        assert!(ours.read[0].starts_with("Text("));
    }

    /// Sends `messages` through a `Sink` as the hub's pump does: `poll_ready` and
    /// `start_send` for each, then one `poll_flush`.
    fn send_batch<S>(socket: &mut S, messages: Vec<Message>)
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for message in messages {
            assert!(matches!(
                Pin::new(&mut *socket).poll_ready(&mut cx),
                Poll::Ready(Ok(()))
            ));
            Pin::new(&mut *socket).start_send(message).unwrap();
        }
        assert!(matches!(
            Pin::new(&mut *socket).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn a_batch_is_written_with_one_system_call_and_as_tungstenite_writes_it() {
        let batch: Vec<Message> = (0..16)
            .map(|i| Message::text(format!("{{\"type\":\"ble_write\",\"n\":{i}}}")))
            .collect();
        let config = HubConfig::default().websocket_config();
        let mut ours = ServerWebSocket::new(Scripted::new(&[], &[], usize::MAX), &config);
        send_batch(&mut ours, batch.clone());
        assert_eq!(ours.get_ref().writes, 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut theirs = runtime.block_on(WebSocketStream::from_raw_socket(
            Scripted::new(&[], &[], usize::MAX),
            Role::Server,
            Some(config),
        ));
        send_batch(&mut theirs, batch);
        assert_eq!(ours.get_ref().written, theirs.get_ref().written);
    }

    #[test]
    fn sending_after_a_close_is_refused_as_tungstenite_refuses_it() {
        let config = HubConfig::default().websocket_config();
        let mut ours = ServerWebSocket::new(Scripted::new(&[], &[], usize::MAX), &config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut theirs = runtime.block_on(WebSocketStream::from_raw_socket(
            Scripted::new(&[], &[], usize::MAX),
            Role::Server,
            Some(config),
        ));
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Size,
            reason: Utf8Bytes::from_static("frame too large"),
        }));
        send_batch(&mut ours, vec![close.clone()]);
        send_batch(&mut theirs, vec![close]);
        assert_eq!(ours.get_ref().written, theirs.get_ref().written);
        let ours_error = Pin::new(&mut ours).start_send(Message::text("late"));
        let theirs_error = Pin::new(&mut theirs).start_send(Message::text("late"));
        assert_eq!(
            format!("{ours_error:?}"),
            format!("{theirs_error:?}"),
            "SendAfterClosing"
        );
    }

    #[test]
    fn once_our_close_is_sent_pings_are_delivered_without_pongs_until_the_peers_close() {
        let config = HubConfig::default().websocket_config();
        let input = [masked(0x89, b"late ping"), masked(0x88, &[0x03, 0xE8])];
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: Utf8Bytes::from_static("keepalive timeout"),
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ours, theirs) = runtime.block_on(async {
            let mut ours =
                ServerWebSocket::new(Scripted::new(&[input.concat()], &[], usize::MAX), &config);
            let mut theirs = WebSocketStream::from_raw_socket(
                Scripted::new(&[input.concat()], &[], usize::MAX),
                Role::Server,
                Some(config),
            )
            .await;
            ours.send(close.clone()).await.unwrap();
            theirs.send(close).await.unwrap();
            let mut read = (Vec::new(), Vec::new());
            while let Some(item) = ours.next().await {
                read.0.push(format!("{:?}", item.unwrap()));
            }
            while let Some(item) = theirs.next().await {
                read.1.push(format!("{:?}", item.unwrap()));
            }
            (
                (read.0, ours.get_ref().written.clone()),
                (read.1, theirs.get_ref().written.clone()),
            )
        });
        assert_eq!(ours, theirs);
        assert_eq!(
            ours.0.len(),
            2,
            "the ping and the peer's close: {:?}",
            ours.0
        );
        // Only our close went out: no pong after it.
        assert_eq!(ours.1[0], 0x88);
        assert_eq!(ours.1.len(), 2 + 2 + "keepalive timeout".len());
    }

    proptest! {
        // Fewer cases: each writes up to 70 KB (64-bit lengths), slow in a debug build.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn tungstenite_reads_what_it_writes(
            texts in prop::collection::vec("\\PC{0,300}", 1..8),
            binary in prop::collection::vec(any::<u8>(), 0..70_000),
            pong in prop::collection::vec(any::<u8>(), 0..125),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let (server, client) = tokio::io::duplex(1 << 20);
                let config = HubConfig::default().websocket_config();
                let mut ours = ServerWebSocket::new(server, &config);
                let mut theirs =
                    WebSocketStream::from_raw_socket(client, Role::Client, None).await;
                let mut sent = Vec::new();
                for text in &texts {
                    sent.push(Message::text(text.clone()));
                }
                sent.push(Message::binary(binary.clone()));
                sent.push(Message::Ping(Bytes::from_static(b"p")));
                sent.push(Message::Pong(Bytes::from(pong.clone())));
                for message in &sent {
                    ours.feed(message.clone()).await.unwrap();
                }
                ours.flush().await.unwrap();
                for message in &sent {
                    let got = theirs.next().await.unwrap().unwrap();
                    assert_eq!(&got, message);
                }
                ours.close().await.unwrap();
                assert!(matches!(
                    theirs.next().await,
                    Some(Ok(Message::Close(None)))
                ));
            });
        }
    }
}

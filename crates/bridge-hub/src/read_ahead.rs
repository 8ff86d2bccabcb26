//! A transport wrapper that saves the WebSocket layer's second read of a frame that straddles
//! the end of its small read buffer (see [`ReadAhead`]).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::HubConfig;

/// Below this much room in the caller's buffer, [`ReadAhead`] reads into its own buffer.
const SMALL_ROOM: usize = 256;

/// How much [`ReadAhead`] takes from the transport when the caller's room is small.
const READ_AHEAD: usize = HubConfig::READ_BUFFER_BYTES;

/// Wraps a connection's transport (what `tokio_tungstenite::WebSocketStream` is made from) so
/// that a frame is read with one system call even when the WebSocket layer has little room
/// left in its read buffer.
///
/// For servers that serve tokio-tungstenite's stream: the hub's own
/// [`ServerWebSocket`](crate::ServerWebSocket), which `bridge-server` uses, always reads with
/// room for a whole read and does not need it.
///
/// tungstenite reads into what is left of its buffer (1 KiB with
/// [`HubConfig::websocket_config`]) and only makes room again once a frame does not fit: with
/// frames of ~115 bytes, every ninth frame came in two reads (110 bytes, then 5), one more
/// `recvfrom` per nine frames. When the caller offers less than 256 bytes, this reads up to
/// 1 KiB into a buffer on the stack instead, hands the caller what fits, and keeps the rest
/// for the caller's next read (on the heap, only until then: an idle connection holds no
/// buffer here, one null pointer). Otherwise it reads straight into the
/// caller's buffer. Writes pass through. The bytes read are exactly the transport's, in
/// order (a property test checks it for any chunking and any read sizes).
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read ahead and not handed out yet (a thin pointer: idle connections are
    /// counted in bytes).
    spill: Option<Box<Spill>>,
}

/// A read ahead: `data[start..end]` is still to be handed out.
#[derive(Debug)]
struct Spill {
    data: [u8; READ_AHEAD],
    start: usize,
    end: usize,
}

impl<T> ReadAhead<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner, spill: None }
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(spill) = &mut this.spill {
            let n = (spill.end - spill.start).min(buf.remaining());
            buf.put_slice(&spill.data[spill.start..spill.start + n]);
            spill.start += n;
            if spill.start == spill.end {
                this.spill = None;
            }
            return Poll::Ready(Ok(()));
        }
        let room = buf.remaining();
        if room == 0 || room >= SMALL_ROOM {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut ahead = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut ahead);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = read.len().min(room);
        buf.put_slice(&read[..n]);
        if n < read.len() {
            let mut spill = Box::new(Spill {
                data: [0; READ_AHEAD],
                start: 0,
                end: read.len() - n,
            });
            spill.data[..spill.end].copy_from_slice(&read[n..]);
            this.spill = Some(spill);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::Scripted;

    /// A transport that hands out `data` cut at `cuts` (cycled; each read gets at most one
    /// chunk, cut to the caller's room), then the end of the stream; it counts its reads.
    fn chunked(data: &[u8], cuts: &[usize]) -> Scripted {
        let mut chunks = Vec::new();
        let mut rest = data;
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cuts.next().unwrap_or(&1)).clamp(1, rest.len());
            chunks.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        Scripted::new(&chunks, &[], 1)
    }

    /// Reads everything through `reader` with the given buffer sizes (cycled; 0 is a read
    /// with no room), until a read with room returns nothing.
    fn read_all(reader: &mut (impl AsyncRead + Unpin), rooms: &[usize]) -> Vec<u8> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        for &room in rooms.iter().cycle() {
            let mut storage = vec![0u8; room];
            let mut buf = ReadBuf::new(&mut storage);
            match Pin::new(&mut *reader).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                other => panic!("unexpected {other:?}"),
            }
            if room > 0 && buf.filled().is_empty() {
                break;
            }
            out.extend_from_slice(buf.filled());
        }
        out
    }

    proptest! {
        #[test]
        fn reads_exactly_the_transports_bytes_in_order(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(1usize..2048, 1..16),
            rooms in proptest::collection::vec(0usize..1200, 1..16),
        ) {
            prop_assume!(rooms.iter().any(|&r| r > 0));
            let mut direct = chunked(&data, &cuts);
            let mut ahead = ReadAhead::new(chunked(&data, &cuts));
            prop_assert_eq!(read_all(&mut direct, &rooms), data.clone());
            prop_assert_eq!(read_all(&mut ahead, &rooms), data);
            prop_assert!(ahead.spill.is_none(), "nothing kept once the stream is read");
        }
    }

    #[test]
    fn a_frame_that_straddles_a_small_room_costs_one_read() {
        // 115-byte frames into what is left of a 1 KiB buffer: 110 bytes of room.
        let frame = [7u8; 115];
        let mut ahead = ReadAhead::new(chunked(&frame, &[115]));
        let got = read_all(&mut ahead, &[110, 1024]);
        assert_eq!(got, frame);
        // One read for the frame, one for the end of the stream.
        assert_eq!(ahead.get_ref().reads, 2);
        let mut direct = chunked(&frame, &[115]);
        let _ = read_all(&mut direct, &[110, 1024]);
        assert_eq!(direct.reads, 3, "without it, two reads for the frame");
    }
}

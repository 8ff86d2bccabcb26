//! Which HTTP a connection speaks, told from its first bytes: HTTP/2 with prior knowledge
//! (h2c, RFC 9113 3.3) opens with [`HTTP2_PREFACE`], which no HTTP/1 request can start
//! with; anything else is HTTP/1. [`read_first_bytes`] reads just enough to tell, and
//! [`Replay`] gives the bytes it read back to the protocol that serves the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2 (RFC 9113 3.4).
pub(crate) const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much [`read_first_bytes`] asks the socket for at once: an HTTP/1 client's first
/// request head (and a short body) usually comes whole in one read, so telling the protocol
/// costs no system call of its own. The buffer lives until hyper has taken its bytes.
const FIRST_READ: usize = 4096;

/// What a connection sent first, and which protocol that is.
#[derive(Debug)]
pub(crate) struct FirstBytes {
    /// The bytes read, to be served again by [`Replay`].
    pub(crate) bytes: Vec<u8>,
    /// Whether they open with [`HTTP2_PREFACE`].
    pub(crate) http2: bool,
}

/// Reads from `io` until its first bytes tell HTTP/2 with prior knowledge from HTTP/1:
/// HTTP/2 once [`HTTP2_PREFACE`] has come whole, HTTP/1 as soon as a byte differs from it,
/// or at the end of the stream (hyper then answers or closes what came, as it would have).
/// It waits for more only while what came is a strict beginning of the preface.
///
/// # Errors
///
/// The read's error.
pub(crate) async fn read_first_bytes<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<FirstBytes> {
    let mut bytes = Vec::with_capacity(FIRST_READ);
    loop {
        let read = io.read_buf(&mut bytes).await?;
        let compared = bytes.len().min(HTTP2_PREFACE.len());
        if bytes[..compared] != HTTP2_PREFACE[..compared] || read == 0 {
            return Ok(FirstBytes {
                bytes,
                http2: false,
            });
        }
        if compared == HTTP2_PREFACE.len() {
            return Ok(FirstBytes { bytes, http2: true });
        }
    }
}

/// What hyper serves a connection over: `io` with its first bytes replayed. `ws.rs` looks
/// for this type (with a [`tokio::net::TcpStream`]) behind an upgraded connection.
pub(crate) type ServedIo<I> = hyper_util::rt::TokioIo<Replay<I>>;

/// `io`, whose first bytes, `first`, have been read from it, as hyper serves it.
pub(crate) fn served_io<I>(first: Vec<u8>, io: I) -> ServedIo<I> {
    hyper_util::rt::TokioIo::new(Replay::new(first, io))
}

/// `io` with `first` read from it already: reads give `first` before anything else;
/// writes go straight to `io`. Once `first` is read its buffer is freed, so a connection
/// that lives long (an idle keep-alive, a WebSocket) does not keep it.
#[derive(Debug)]
pub(crate) struct Replay<I> {
    /// What is left of the bytes read first (empty, without a buffer, once read).
    first: Vec<u8>,
    /// How much of `first` has been read again.
    at: usize,
    io: I,
}

impl<I> Replay<I> {
    /// `io`, whose first bytes, `first`, have been read from it.
    pub(crate) fn new(first: Vec<u8>, io: I) -> Self {
        Self { first, at: 0, io }
    }

    /// The connection, and the bytes read from it first that have not been read again.
    pub(crate) fn into_parts(self) -> (I, Vec<u8>) {
        let Self { mut first, at, io } = self;
        first.drain(..at);
        (io, first)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.first.len() {
            let left = &this.first[this.at..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// What [`read_first_bytes`] makes of `chunks`, written one by one (each read at once),
    /// then the end of the stream if `end`.
    async fn first_bytes(chunks: &[&[u8]], end: bool) -> FirstBytes {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let reading = tokio::spawn(async move { read_first_bytes(&mut server).await });
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        if end {
            drop(client);
            return reading.await.unwrap().unwrap();
        }
        let first = reading.await.unwrap().unwrap();
        drop(client);
        first
    }

    #[tokio::test]
    async fn an_http1_request_is_told_by_its_first_byte_and_kept_whole() {
        let request = b"POST /v1/devices/lock-1/commands HTTP/1.1\r\nHost: x\r\n\r\n";
        let first = first_bytes(&[request], false).await;
        assert!(!first.http2);
        assert_eq!(first.bytes, request);
    }

    #[tokio::test]
    async fn the_http2_preface_is_told_once_whole_even_when_it_comes_in_pieces() {
        let first = first_bytes(
            &[
                &HTTP2_PREFACE[..3],
                &HTTP2_PREFACE[3..20],
                &HTTP2_PREFACE[20..],
            ],
            false,
        )
        .await;
        assert!(first.http2);
        assert_eq!(first.bytes, HTTP2_PREFACE);
    }

    #[tokio::test]
    async fn a_preface_with_frames_after_it_is_http2_and_keeps_the_frames() {
        let mut sent = HTTP2_PREFACE.to_vec();
        sent.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let first = first_bytes(&[&sent], false).await;
        assert!(first.http2);
        assert_eq!(first.bytes, sent);
    }

    #[tokio::test]
    async fn a_request_that_starts_like_the_preface_and_differs_later_is_http1() {
        // `PRI * HTTP/1.1`: the same first nine bytes.
        let first = first_bytes(&[b"PRI * HTT", b"P/1.1\r\n\r\n"], false).await;
        assert!(!first.http2);
        assert_eq!(first.bytes, b"PRI * HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_connection_that_ends_early_is_left_to_http1_with_what_it_sent() {
        let first = first_bytes(&[b"PRI *"], true).await;
        assert!(!first.http2);
        assert_eq!(first.bytes, b"PRI *");
        let first = first_bytes(&[], true).await;
        assert!(!first.http2);
        assert!(first.bytes.is_empty());
    }

    #[tokio::test]
    async fn replay_reads_the_first_bytes_then_the_connection_and_writes_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut replay = Replay::new(b"hello ".to_vec(), server);
        client.write_all(b"world").await.unwrap();
        // A read smaller than the first bytes takes part of them.
        let mut small = [0; 4];
        replay.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hell");
        let mut rest = [0; 7];
        replay.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"o world");
        assert_eq!(replay.first.capacity(), 0, "the buffer is freed once read");
        replay.write_all(b"answer").await.unwrap();
        let mut answer = [0; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }

    #[tokio::test]
    async fn into_parts_gives_back_what_was_not_read_again() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut replay = Replay::new(b"abcdef".to_vec(), server);
        let mut two = [0; 2];
        replay.read_exact(&mut two).await.unwrap();
        let (_io, left) = replay.into_parts();
        assert_eq!(left, b"cdef");
    }
}

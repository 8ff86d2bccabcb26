//! Entry points for the fuzz targets (`crates/bridge-fuzz`, `cargo xtask fuzz`) and the
//! equivalence tests of [`ServerWebSocket`]: any client bytes, in any chunks and with any
//! stalls of the transport, read by it and by tungstenite's server with the same
//! configuration. Behind the `fuzzing` feature; not a stable API.
//!
//! A panic here is the finding (a difference, or a runtime that cannot be built).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use crate::{HubConfig, ServerWebSocket};

/// A transport that hands out its input in the given chunks (each read gets at most one,
/// cut to the reader's room), then the end of the stream, and keeps what is written
/// (at most `write_max` bytes a call). Reads and writes stall once (`Pending`, woken at
/// once) where `stalls` says so, cycled.
#[derive(Debug, Default)]
pub struct Scripted {
    input: VecDeque<Vec<u8>>,
    stalls: Vec<bool>,
    step: usize,
    stalled: bool,
    write_max: usize,
    /// Every byte written, in order.
    pub written: Vec<u8>,
    /// Write calls that took bytes.
    pub writes: usize,
    /// Read calls that returned (bytes or the end of the stream).
    pub reads: usize,
}

impl Scripted {
    /// A transport whose reads hand out `chunks`, that stalls where `stalls` says (cycled)
    /// and takes at most `write_max` bytes a write.
    pub fn new(chunks: &[Vec<u8>], stalls: &[bool], write_max: usize) -> Self {
        Self {
            input: chunks.iter().filter(|c| !c.is_empty()).cloned().collect(),
            stalls: stalls.to_vec(),
            write_max: write_max.max(1),
            ..Self::default()
        }
    }

    /// Whether this call stalls: at most once in a row.
    fn stall(&mut self, cx: &Context<'_>) -> bool {
        if self.stalled || self.stalls.is_empty() {
            self.stalled = false;
            return false;
        }
        self.step += 1;
        if self.stalls[self.step % self.stalls.len()] {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return true;
        }
        false
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall(cx) {
            return Poll::Pending;
        }
        this.reads += 1;
        if let Some(chunk) = this.input.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                this.input.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stall(cx) {
            return Poll::Pending;
        }
        this.writes += 1;
        let n = buf.len().min(this.write_max);
        this.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

/// Everything a reader read (at most 64 items, up to the first error or the end), and
/// the bytes it wrote back.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The messages (`Debug`), then `end` or the error.
    pub read: Vec<String>,
    /// The bytes written back (pongs, close replies).
    pub written: Vec<u8>,
}

async fn read_all<R>(reader: &mut R) -> Vec<String>
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
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

/// [`ServerWebSocket`]'s outcome and tungstenite's server's for the same transport script,
/// after the same bytes `ahead` read with the handshake.
pub fn both(
    config: &WebSocketConfig,
    ahead: &[u8],
    chunks: &[Vec<u8>],
    stalls: &[bool],
    write_max: usize,
) -> (Outcome, Outcome) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut ours = ServerWebSocket::from_partially_read(
            Scripted::new(chunks, stalls, write_max),
            ahead,
            config,
        );
        let read = read_all(&mut ours).await;
        let ours = Outcome {
            read,
            written: ours.get_ref().written.clone(),
        };
        let mut theirs = WebSocketStream::from_partially_read(
            Scripted::new(chunks, stalls, write_max),
            ahead.to_vec(),
            Role::Server,
            Some(*config),
        )
        .await;
        let read = read_all(&mut theirs).await;
        let theirs = Outcome {
            read,
            written: theirs.get_ref().written.clone(),
        };
        (ours, theirs)
    })
}

/// The fuzz target's body: the first five bytes choose the frame limit (300 bytes or the
/// hub's default), the size of the transport's writes, where it stalls, the size of its
/// chunks and how many bytes were read with the handshake; the rest is what a client sends. Panics if [`ServerWebSocket`] and tungstenite's
/// server read different messages or errors, or write different bytes back.
pub fn websocket_server(data: &[u8]) {
    let [limit, write_max, stalls, chunk, ahead, stream @ ..] = data else {
        return;
    };
    let (ahead, stream) = stream.split_at(usize::from(*ahead).min(stream.len()));
    let max_frame_bytes = if limit % 2 == 0 {
        300
    } else {
        HubConfig::default().max_frame_bytes
    };
    let config = HubConfig {
        max_frame_bytes,
        ..HubConfig::default()
    }
    .websocket_config();
    let write_max = if *write_max == 0 {
        usize::MAX
    } else {
        usize::from(*write_max)
    };
    let stalls: Vec<bool> = (0..8).map(|bit| stalls & (1 << bit) != 0).collect();
    let chunks: Vec<Vec<u8>> = if *chunk == 0 {
        vec![stream.to_vec()]
    } else {
        stream
            .chunks(usize::from(*chunk))
            .map(<[u8]>::to_vec)
            .collect()
    };
    let (ours, theirs) = both(&config, ahead, &chunks, &stalls, write_max);
    assert_eq!(ours, theirs, "ServerWebSocket and tungstenite differ");
}

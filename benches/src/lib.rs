//! Benchmarks and load generators for the bridge toolkit; see `BENCHMARKS.md` at the root
//! for the figures and the commands that produced them.
//!
//! The library part holds what several benches share: [`MemorySocket`], an in-memory
//! WebSocket connection that the hub can serve.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Counts the text frames delivered to a set of [`MemorySocket`]s and wakes a waiter when a
/// target is reached.
#[derive(Debug, Default)]
pub struct Deliveries {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Deliveries {
    /// Frames delivered so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until at least `target` frames have been delivered in total.
    pub async fn wait_for(&self, target: u64) {
        self.target.store(target, Ordering::Release);
        loop {
            let reached = self.reached.notified();
            tokio::pin!(reached);
            reached.as_mut().enable();
            if self.count() >= target {
                return;
            }
            reached.await;
        }
    }

    fn delivered(&self) {
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count == self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }
}

/// A WebSocket connection that lives in memory: the client never sends anything, and every
/// text frame the server writes is counted in a shared [`Deliveries`] and dropped. After the
/// server's close frame, the stream ends.
#[derive(Debug)]
pub struct MemorySocket {
    deliveries: Arc<Deliveries>,
    closed: bool,
}

impl MemorySocket {
    /// A connection whose deliveries count into `deliveries`.
    pub fn new(deliveries: Arc<Deliveries>) -> Self {
        Self {
            deliveries,
            closed: false,
        }
    }
}

impl Stream for MemorySocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed {
            Poll::Ready(None)
        } else {
            // An idle client: nothing ever arrives. The hub's own waker drives the writes.
            Poll::Pending
        }
    }
}

impl Sink<Message> for MemorySocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        match item {
            Message::Text(_) => self.deliveries.delivered(),
            Message::Close(_) => self.closed = true,
            _ => {}
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

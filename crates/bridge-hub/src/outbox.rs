//! The per-connection outbound queue, shared by the hub (producers) and the connection's
//! pump (the one consumer).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bridge_protocol::ConnectionId;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::{CloseReason, Frame};

/// A request to close a connection, picked up by its pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) reason: CloseReason,
    /// WebSocket close code to send, or `None` to drop the transport without a close frame
    /// (a slow consumer would not read it anyway).
    pub(crate) code: Option<u16>,
    pub(crate) text: &'static str,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The queue was full: the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is closing already; the frame was dropped.
    Closing,
}

#[derive(Debug, Default)]
struct Queue {
    /// Allocated on the first frame, released again when drained after a burst.
    frames: VecDeque<Frame>,
    close: Option<CloseRequest>,
}

/// One connection's handle as the hub sees it.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) id: ConnectionId,
    capacity: usize,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    /// Commands in flight on this connection: the number of live
    /// [`InFlight`](crate::InFlight) tickets, changed only by making and dropping them.
    pub(crate) in_flight: AtomicU32,
    /// A user connection's share of its user's count of running `command` frames (over all
    /// the user's connections); `None` for a bridge. Every ticket made on this connection
    /// counts here too.
    pub(crate) user_commands: Option<Arc<AtomicU32>>,
}

impl Outbox {
    pub(crate) fn new(
        id: ConnectionId,
        capacity: usize,
        user_commands: Option<Arc<AtomicU32>>,
    ) -> Self {
        Self {
            id,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            in_flight: AtomicU32::new(0),
            user_commands,
        }
    }

    /// Queues a frame without ever waiting.
    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        let mut queue = self.queue.lock();
        if queue.close.is_some() {
            return Pushed::Closing;
        }
        if queue.frames.len() >= self.capacity {
            queue.frames = VecDeque::new();
            queue.close = Some(CloseRequest {
                reason: CloseReason::SlowConsumer,
                code: None,
                text: "",
            });
            drop(queue);
            self.waker.wake();
            return Pushed::Overflowed;
        }
        queue.frames.push_back(frame);
        drop(queue);
        self.waker.wake();
        Pushed::Queued
    }

    /// Asks the pump to close the connection; the first request wins.
    pub(crate) fn request_close(&self, request: CloseRequest) {
        let mut queue = self.queue.lock();
        if queue.close.is_none() {
            queue.close = Some(request);
        }
        drop(queue);
        self.waker.wake();
    }

    pub(crate) fn close_requested(&self) -> Option<CloseRequest> {
        self.queue.lock().close
    }

    pub(crate) fn has_frames(&self) -> bool {
        !self.queue.lock().frames.is_empty()
    }

    pub(crate) fn pop(&self) -> Option<Frame> {
        let mut queue = self.queue.lock();
        let frame = queue.frames.pop_front();
        if queue.frames.is_empty() && queue.frames.capacity() > 8 {
            // Give a burst's memory back: idle connections should cost nothing here.
            queue.frames = VecDeque::new();
        }
        frame
    }

    pub(crate) fn register_waker(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_turns_the_connection_into_a_closing_slow_consumer() {
        let outbox = Outbox::new(ConnectionId::new(1), 2, None);
        let frame = Frame::from_static("{}");
        assert_eq!(outbox.push(frame.clone()), Pushed::Queued);
        assert_eq!(outbox.push(frame.clone()), Pushed::Queued);
        assert_eq!(outbox.push(frame.clone()), Pushed::Overflowed);
        assert_eq!(outbox.push(frame), Pushed::Closing);
        assert_eq!(
            outbox.close_requested().map(|r| r.reason),
            Some(CloseReason::SlowConsumer)
        );
        assert!(!outbox.has_frames(), "queued frames are dropped");
    }

    #[test]
    fn the_first_close_request_wins() {
        let outbox = Outbox::new(ConnectionId::new(1), 2, None);
        outbox.request_close(CloseRequest {
            reason: CloseReason::Shutdown,
            code: Some(1001),
            text: "",
        });
        outbox.request_close(CloseRequest {
            reason: CloseReason::ClosedByServer,
            code: Some(1000),
            text: "",
        });
        assert_eq!(
            outbox.close_requested().map(|r| r.reason),
            Some(CloseReason::Shutdown)
        );
    }
}

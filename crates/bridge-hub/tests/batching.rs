//! How the pump groups a connection's frames into flushes, over a socket that records what
//! it is asked to do (no network, a current-thread runtime: every step is deterministic).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bridge_hub::{ConnectionInfo, DeviceAccess, Frame, LocalHub, UserId};
use bridge_protocol::DeviceId;
use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// What the pump did to the socket.
#[derive(Default)]
struct Log {
    /// Text of every message sent, in order.
    sent: Vec<String>,
    /// Messages sent since the last flush.
    unflushed: usize,
    /// How many messages each flush that had any carried.
    flushes: Vec<usize>,
    /// Times the pump polled the socket for incoming messages (one per poll of the pump
    /// that gets that far).
    reads: usize,
    /// The pump's waker, to end the connection.
    reader: Option<Waker>,
    closed: bool,
}

/// A socket that never receives anything until closed, and takes every message at once.
#[derive(Clone, Default)]
struct RecordingSocket(Arc<Mutex<Log>>);

impl Stream for RecordingSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut log = self.0.lock().unwrap();
        log.reads += 1;
        if log.closed {
            return Poll::Ready(None);
        }
        log.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Message> for RecordingSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let mut log = self.0.lock().unwrap();
        if let Message::Text(text) = message {
            log.sent.push(text.as_str().to_owned());
        }
        log.unflushed += 1;
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut log = self.0.lock().unwrap();
        if log.unflushed > 0 {
            let n = log.unflushed;
            log.flushes.push(n);
            log.unflushed = 0;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

fn device() -> DeviceId {
    DeviceId::new("lock-1").unwrap()
}

/// Queues frame `i` for `lock-1`; the ticket is not needed.
fn send(hub: &LocalHub, i: usize) {
    let ticket = hub.send_to_device(&device(), &frame(i)).unwrap();
    drop(ticket);
}

fn frame(i: usize) -> Frame {
    Frame::from_json_text(format!(r#"{{"type":"test","n":{i}}}"#))
}

/// Serves a bridge holding `lock-1` over a recording socket on this (current-thread)
/// runtime's local set, and lets it register.
async fn bridge(hub: &LocalHub) -> (RecordingSocket, tokio::task::JoinHandle<()>) {
    let socket = RecordingSocket::default();
    let info = ConnectionInfo::bridge(UserId::new("phone"), vec![device()], DeviceAccess::All);
    let served = socket.clone();
    let hub2 = hub.clone();
    let task = tokio::spawn(async move {
        hub2.serve(served, info).await;
    });
    while !hub.device_presence(&device()).online {
        tokio::task::yield_now().await;
    }
    settle().await;
    (socket, task)
}

/// Lets every ready task run until none is left.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

async fn close(socket: &RecordingSocket, task: tokio::task::JoinHandle<()>) {
    let waker = {
        let mut log = socket.0.lock().unwrap();
        log.closed = true;
        log.reader.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
    task.await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn frames_queued_at_the_same_moment_go_out_in_one_flush() {
    let hub = LocalHub::builder().build();
    let (socket, task) = bridge(&hub).await;
    let before = socket.0.lock().unwrap().flushes.len();

    for i in 0..5 {
        send(&hub, i);
    }
    settle().await;

    {
        let log = socket.0.lock().unwrap();
        assert_eq!(log.flushes[before..], [5], "one flush for the five frames");
        let expected: Vec<String> = (0..5).map(|i| frame(i).as_str().to_owned()).collect();
        assert_eq!(log.sent[log.sent.len() - 5..], expected[..], "in order");
    }
    close(&socket, task).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_that_gets_one_frame_at_a_time_stops_waiting_before_its_flushes() {
    let hub = LocalHub::builder().build();
    let (socket, task) = bridge(&hub).await;
    let (flushes_before, reads_before, sent_before) = {
        let log = socket.0.lock().unwrap();
        (log.flushes.len(), log.reads, log.sent.len())
    };

    const FRAMES: usize = 40;
    for i in 0..FRAMES {
        send(&hub, i);
        settle().await;
        let log = socket.0.lock().unwrap();
        assert_eq!(
            log.flushes.len() - flushes_before,
            i + 1,
            "frame {i} flushed alone"
        );
    }

    {
        let log = socket.0.lock().unwrap();
        let expected: Vec<String> = (0..FRAMES).map(|i| frame(i).as_str().to_owned()).collect();
        assert_eq!(
            log.sent[sent_before..],
            expected[..],
            "every frame, in order"
        );
        // Waiting a turn before every flush would poll the pump twice per frame (80 polls);
        // after four waits that gathered nothing it flushes the next eight batches at once,
        // then waits once to see whether that still gathers nothing: 48 polls for 40 frames.
        let reads = log.reads - reads_before;
        assert!(
            reads <= FRAMES + FRAMES / 4,
            "{reads} polls of the pump for {FRAMES} lone frames"
        );
    }
    close(&socket, task).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_after_lone_frames_is_batched_again() {
    let hub = LocalHub::builder().build();
    let (socket, task) = bridge(&hub).await;
    // Lone frames until the pump flushes at once.
    for i in 0..5 {
        send(&hub, i);
        settle().await;
    }
    // A burst: one frame, then (the pump polled in between) three more from another task.
    // Flushing at once writes them as 1 + 3; waiting a turn, as 4. A batch of several
    // frames says the traffic is bursty again: the pump goes back to waiting.
    let mut burst_flushes = Vec::new();
    for round in 0..4 {
        let before = socket.0.lock().unwrap().flushes.len();
        send(&hub, 100 * round);
        let producer = hub.clone();
        let rest = tokio::spawn(async move {
            for i in 1..4 {
                send(&producer, 100 * round + i);
            }
        });
        settle().await;
        rest.await.unwrap();
        burst_flushes.push(socket.0.lock().unwrap().flushes[before..].to_vec());
    }
    assert_eq!(
        burst_flushes,
        [vec![1, 3], vec![4], vec![4], vec![4]],
        "at once right after the lone frames, then waiting again"
    );
    close(&socket, task).await;
}

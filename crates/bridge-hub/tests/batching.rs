//! How the pump groups a connection's frames into flushes, and when it polls what, over a
//! socket that records what it is asked to do (no network, a current-thread runtime: every
//! step is deterministic).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::future::Future;
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
    /// Pings sent.
    pings: usize,
    /// Whether `poll_ready` refuses every other call (waking the pump at once, as a socket
    /// whose buffer drains right away would).
    choppy: bool,
    /// Calls to `poll_ready`.
    ready_calls: usize,
    /// Messages the peer has sent, handed out one per read.
    incoming: std::collections::VecDeque<Message>,
    /// Reads that handed out a message (`"in"`) and flushes that carried any (`"flush N"`),
    /// in order.
    events: Vec<String>,
}

/// A socket that receives what a test puts in `incoming` (nothing else until closed), and
/// takes every message at once.
#[derive(Clone, Default)]
struct RecordingSocket(Arc<Mutex<Log>>);

impl Stream for RecordingSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut log = self.0.lock().unwrap();
        log.reads += 1;
        if let Some(message) = log.incoming.pop_front() {
            log.events.push("in".to_owned());
            return Poll::Ready(Some(Ok(message)));
        }
        if log.closed {
            return Poll::Ready(None);
        }
        log.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Sink<Message> for RecordingSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut log = self.0.lock().unwrap();
        log.ready_calls += 1;
        if log.choppy && log.ready_calls.is_multiple_of(2) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let mut log = self.0.lock().unwrap();
        match message {
            Message::Text(text) => log.sent.push(text.as_str().to_owned()),
            Message::Ping(_) => log.pings += 1,
            _ => {}
        }
        log.unflushed += 1;
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let mut log = self.0.lock().unwrap();
        if log.unflushed > 0 {
            let n = log.unflushed;
            log.flushes.push(n);
            log.events.push(format!("flush {n}"));
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

#[tokio::test(flavor = "current_thread")]
async fn frames_the_socket_does_not_take_yet_go_out_later_in_order() {
    let hub = LocalHub::builder().build();
    let (socket, task) = bridge(&hub).await;
    socket.0.lock().unwrap().choppy = true;
    let sent_before = socket.0.lock().unwrap().sent.len();

    // Bursts of several sizes, each from one task, the socket refusing every other frame.
    let mut expected = Vec::new();
    let mut i = 0;
    for burst in [1, 3, 40, 2, 1, 17] {
        for _ in 0..burst {
            send(&hub, i);
            expected.push(frame(i).as_str().to_owned());
            i += 1;
        }
        settle().await;
    }
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }

    {
        let log = socket.0.lock().unwrap();
        assert_eq!(
            log.sent[sent_before..],
            expected[..],
            "every frame once, in order"
        );
        assert!(
            log.ready_calls > 2 * expected.len() - 2,
            "the socket refused frames"
        );
    }
    socket.0.lock().unwrap().choppy = false;
    close(&socket, task).await;
}

/// A waker that does nothing: the pump's first waker, which no task answers.
fn dead_waker() -> Waker {
    struct Dead;
    impl std::task::Wake for Dead {
        fn wake(self: Arc<Self>) {}
    }
    Waker::from(Arc::new(Dead))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_keepalive_still_fires_when_the_connection_moves_to_another_waker() {
    let hub = LocalHub::builder().build();
    let socket = RecordingSocket::default();
    let info = ConnectionInfo::bridge(UserId::new("phone"), vec![device()], DeviceAccess::All);
    let hub2 = hub.clone();
    let served = socket.clone();
    let mut serving = Box::pin(async move {
        hub2.serve(served, info).await;
    });
    // First polled under a waker nobody answers: the pump registers, polls its keepalive
    // timer with that waker and waits.
    let waker = dead_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(serving.as_mut().poll(&mut cx).is_pending());
    assert!(hub.device_presence(&device()).online);
    // Then it goes on in a task of its own (another waker), with nothing to write: only
    // the timer can wake it.
    let task = tokio::spawn(serving);
    settle().await;
    let interval = bridge_hub::HubConfig::default().ping_interval;
    tokio::time::sleep(interval + std::time::Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        socket.0.lock().unwrap().pings,
        1,
        "the keepalive pinged under the new waker"
    );
    close(&socket, task).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_wake_up_for_frames_to_write_does_not_poll_the_socket_for_reading() {
    let hub = LocalHub::builder().build();
    let (socket, task) = bridge(&hub).await;
    let reads_before = socket.0.lock().unwrap().reads;
    for i in 0..20 {
        send(&hub, i);
        settle().await;
    }
    {
        let log = socket.0.lock().unwrap();
        assert_eq!(log.sent.len(), 20);
        assert_eq!(
            log.reads, reads_before,
            "nothing woke the reading side: it was not polled"
        );
    }
    // The reading side's wake-up is still heard: the end of the stream ends the pump.
    let waker = {
        let mut log = socket.0.lock().unwrap();
        log.closed = true;
        log.reader.take()
    };
    waker.unwrap().wake();
    settle().await;
    assert!(task.is_finished(), "the pump read the end of the stream");
    assert_eq!(socket.0.lock().unwrap().reads, reads_before + 1);
    task.await.unwrap();
}

/// Hub whose answers to `lock-1` each wake a caller task (as a command's caller is woken by
/// its answer) that then queues its next frame for `lock-1`.
fn hub_whose_answers_wake_callers() -> LocalHub {
    let (answered, mut callers) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let hub = LocalHub::builder()
        .responses(move |_, response: bridge_protocol::BleResponse| {
            let n = response.request_id.as_str()[1..].parse().unwrap();
            answered.send(n).unwrap();
            Ok(())
        })
        .build();
    let queue = hub.clone();
    tokio::spawn(async move {
        while let Some(n) = callers.recv().await {
            send(&queue, 100 + n);
        }
    });
    hub
}

/// Four answers arriving at once, as a phone writes a batch of them.
fn burst_of_answers(socket: &RecordingSocket) {
    let waker = {
        let mut log = socket.0.lock().unwrap();
        for n in 0..4 {
            log.incoming.push_back(Message::text(format!(
                r#"{{"type":"ble_response","requestId":"r{n}","deviceId":"lock-1","payload":"00"}}"#
            )));
        }
        log.events.clear();
        log.reader.take()
    };
    waker.unwrap().wake();
}

#[tokio::test(flavor = "current_thread")]
async fn with_few_commands_in_flight_the_next_frames_go_out_while_a_burst_of_answers_is_read() {
    let hub = hub_whose_answers_wake_callers();
    let (socket, task) = bridge(&hub).await;

    burst_of_answers(&socket);
    settle().await;

    {
        let log = socket.0.lock().unwrap();
        // After two answers the pump yields and the two callers queue their frames; the
        // pump's flush then waits its one turn of the scheduler (see `poll_write`), in which
        // it reads the third answer.
        assert_eq!(
            log.events,
            ["in", "in", "in", "flush 2", "in", "flush 2"],
            "the frames of the callers woken by the first two answers go out before the \
             last answer is read"
        );
        let next: Vec<String> = (100..104).map(|i| frame(i).as_str().to_owned()).collect();
        assert_eq!(log.sent[log.sent.len() - 4..], next[..], "in order");
    }
    close(&socket, task).await;
}

#[tokio::test(flavor = "current_thread")]
async fn with_many_commands_in_flight_a_burst_of_answers_is_read_in_one_go() {
    let hub = hub_whose_answers_wake_callers();
    let (socket, task) = bridge(&hub).await;
    // 33 commands in flight on the connection: the phone has work enough.
    let tickets: Vec<_> = (0..33)
        .map(|i| hub.send_to_device(&device(), &frame(200 + i)).unwrap())
        .collect();
    settle().await;

    burst_of_answers(&socket);
    settle().await;

    {
        let log = socket.0.lock().unwrap();
        assert_eq!(
            log.events,
            ["in", "in", "in", "in", "flush 4"],
            "one flush for the four next frames, after the whole burst"
        );
    }
    drop(tickets);
    close(&socket, task).await;
}

/// An answer as a phone writes it, naming `lock-1`.
fn answer(n: usize) -> Message {
    Message::text(format!(
        r#"{{"type":"ble_response","requestId":"r{n}","deviceId":"lock-1","payload":"00"}}"#
    ))
}

#[tokio::test(flavor = "current_thread")]
async fn a_connections_answers_share_its_device_id_however_many_others_the_thread_read() {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ids);
    let hub = LocalHub::builder()
        .responses(move |_, response: bridge_protocol::BleResponse| {
            seen.lock().unwrap().push(response.device_id);
            Ok(())
        })
        .build();
    let (socket, task) = bridge(&hub).await;
    for n in 0..2 {
        let waker = {
            let mut log = socket.0.lock().unwrap();
            log.incoming.push_back(answer(n));
            log.reader.take()
        };
        waker.unwrap().wake();
        settle().await;
        // Answers naming a thousand other devices decoded on this thread (the pump's) in
        // between, as the connections of a thousand phones would be.
        let limits = bridge_protocol::Limits::default();
        for i in 0..1000 {
            let text = format!(
                r#"{{"type":"ble_response","requestId":"r","deviceId":"lock-{i}x","payload":"00"}}"#
            );
            bridge_protocol::BridgeToServer::decode(&text, &limits).unwrap();
        }
    }
    {
        let ids = ids.lock().unwrap();
        assert_eq!(ids.len(), 2);
        assert!(
            std::ptr::eq(ids[0].as_str(), ids[1].as_str()),
            "the second answer shares the id the first one made"
        );
    }
    close(&socket, task).await;
}

/// [`bridge`], counting the polls of the connection's task in `polls`.
async fn counted_bridge(
    hub: &LocalHub,
    polls: Arc<std::sync::atomic::AtomicUsize>,
) -> (RecordingSocket, tokio::task::JoinHandle<()>) {
    let socket = RecordingSocket::default();
    let info = ConnectionInfo::bridge(UserId::new("phone"), vec![device()], DeviceAccess::All);
    let served = socket.clone();
    let hub2 = hub.clone();
    let task = tokio::spawn(async move {
        let mut serve = std::pin::pin!(hub2.serve(served, info));
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serve.as_mut().poll(cx)
        })
        .await;
    });
    while !hub.device_presence(&device()).online {
        tokio::task::yield_now().await;
    }
    settle().await;
    (socket, task)
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_connection_flushes_at_once_after_its_first_wait_that_gathers_nothing() {
    let hub = LocalHub::builder().build();
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (socket, task) = counted_bridge(&hub, Arc::clone(&polls)).await;
    let mut per_frame = Vec::new();
    for i in 0..12 {
        let before = polls.load(std::sync::atomic::Ordering::Relaxed);
        send(&hub, i);
        settle().await;
        per_frame.push(polls.load(std::sync::atomic::Ordering::Relaxed) - before);
    }
    // The first frame waits a turn (two polls) and goes out alone: the next eight go out at
    // once (one poll each), then the pump waits once more to see whether that still
    // gathers nothing.
    assert_eq!(per_frame, [2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1]);
    {
        let log = socket.0.lock().unwrap();
        let expected: Vec<String> = (0..12).map(|i| frame(i).as_str().to_owned()).collect();
        assert_eq!(
            log.sent[log.sent.len() - 12..],
            expected[..],
            "every frame, in order"
        );
    }
    close(&socket, task).await;
}

//! The per-connection outbound queue, shared by the hub (producers) and the connection's
//! pump (the one consumer).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Waker;

use bridge_protocol::{ConnectionId, DeviceId};
use futures_util::task::ArcWake;
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

/// One place in the queue.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A frame to send as it is.
    Frame(Frame),
    /// The `device_status` of a subscribed device is due: the pump writes the device's
    /// presence as it is when the frame leaves, not as it was when it was queued.
    Status(DeviceId),
}

/// The queue: frames, and presence markers that never count as slowness.
///
/// A `device_status` (a subscription's snapshot, or a presence change broadcast to the
/// device's subscribers) is queued as a marker, at most one per device: a device whose
/// status is already waiting is not queued again, and the frame that eventually leaves
/// carries the presence at that moment. So the markers are bounded by the devices the
/// connection watches (its subscriptions, at most
/// [`HubConfig::max_subscriptions`](crate::HubConfig), plus devices unsubscribed since
/// whose marker has not left, each of which cost an `ack` that counts as a frame), not by
/// how often presence changes, and they do not count against
/// [`HubConfig::outbound_queue_frames`](crate::HubConfig): a 1,024-device snapshot, or a
/// bridge holding hundreds of watched devices coming or going, cannot make a client that
/// reads a slow consumer.
#[derive(Debug, Default)]
struct Queue {
    /// Allocated on the first entry, released again when drained after a burst.
    frames: VecDeque<Entry>,
    /// The devices with a `Status` marker in `frames`; allocated only while there is one, so
    /// an idle connection pays one pointer for it (an empty `HashSet` is 48 bytes with its
    /// hasher state, and the idle-connection figure is counted in bytes).
    #[allow(clippy::box_collection)]
    statuses: Option<Box<HashSet<DeviceId>>>,
    close: Option<CloseRequest>,
    /// The pump's waker, kept (not taken by a wake-up) so that the pump learns, under the
    /// lock it takes anyway, whether it is polled with the same waker as before (see
    /// [`Outbox::take`]).
    waker: Option<Waker>,
    /// Whether the pump was woken since it last took from the queue: the producers after
    /// the first do not wake it again.
    woken: bool,
    /// Whether the socket's reading side woke the pump (through [`Outbox`]'s own waker, see
    /// its [`ArcWake`] implementation) since the pump last took from the queue.
    read_woken: bool,
}

impl Queue {
    fn status_markers(&self) -> usize {
        self.statuses.as_ref().map_or(0, |s| s.len())
    }

    /// The waker to wake once the lock is released, unless the pump was woken already.
    fn waker_to_wake(&mut self) -> Option<Waker> {
        if self.woken {
            return None;
        }
        self.woken = true;
        self.waker.clone()
    }

    fn pop(&mut self) -> Option<Entry> {
        let entry = self.frames.pop_front();
        if let Some(Entry::Status(device)) = &entry
            && let Some(statuses) = &mut self.statuses
        {
            statuses.remove(device);
            if statuses.is_empty() {
                self.statuses = None;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            // Give a burst's memory back: idle connections should cost nothing here.
            self.frames = VecDeque::new();
        }
        entry
    }
}

/// What [`Outbox::take`] found.
#[derive(Debug)]
pub(crate) struct Taken {
    /// A close was requested: nothing was taken.
    pub(crate) close: Option<CloseRequest>,
    /// The first entry of the queue, taken out of it.
    pub(crate) entry: Option<Entry>,
    /// Entries are left in the queue after it.
    pub(crate) more: bool,
    /// The waker given was not the one registered before (or none was): whatever else the
    /// pump registered it with must be polled again.
    pub(crate) waker_changed: bool,
    /// The socket's reading side woke the pump since it last took (see [`Outbox`]'s
    /// [`ArcWake`] implementation).
    pub(crate) read_woken: bool,
}

/// One connection's handle as the hub sees it.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) id: ConnectionId,
    capacity: usize,
    queue: Mutex<Queue>,
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
            in_flight: AtomicU32::new(0),
            user_commands,
        }
    }

    /// Queues a frame without ever waiting (what [`push_or_return`](Self::push_or_return)
    /// does, for the tests).
    #[cfg(test)]
    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        match self.push_or_return(frame) {
            Ok(()) => Pushed::Queued,
            Err((refused, _)) => refused,
        }
    }

    /// [`push`](Self::push), which gives a frame it did not queue back (with why), so that
    /// the caller can offer that same frame elsewhere without having kept a copy.
    pub(crate) fn push_or_return(&self, frame: Frame) -> Result<(), (Pushed, Frame)> {
        let mut queue = self.queue.lock();
        if queue.close.is_some() {
            return Err((Pushed::Closing, frame));
        }
        if queue.frames.len() - queue.status_markers() >= self.capacity {
            queue.frames = VecDeque::new();
            queue.statuses = None;
            queue.close = Some(CloseRequest {
                reason: CloseReason::SlowConsumer,
                code: None,
                text: "",
            });
            let waker = queue.waker_to_wake();
            drop(queue);
            wake(waker);
            return Err((Pushed::Overflowed, frame));
        }
        queue.frames.push_back(Entry::Frame(frame));
        let waker = queue.waker_to_wake();
        drop(queue);
        wake(waker);
        Ok(())
    }

    /// Queues the `device_status` of `device` unless one is waiting already (see
    /// [`Queue`]); never overflows.
    pub(crate) fn push_status(&self, device: &DeviceId) -> Pushed {
        let mut queue = self.queue.lock();
        if queue.close.is_some() {
            return Pushed::Closing;
        }
        if queue
            .statuses
            .get_or_insert_default()
            .insert(device.clone())
        {
            queue.frames.push_back(Entry::Status(device.clone()));
            let waker = queue.waker_to_wake();
            drop(queue);
            wake(waker);
        }
        Pushed::Queued
    }

    /// Asks the pump to close the connection; the first request wins.
    pub(crate) fn request_close(&self, request: CloseRequest) {
        let mut queue = self.queue.lock();
        if queue.close.is_none() {
            queue.close = Some(request);
        }
        // Always woken: the pump may be between two batches of one poll.
        queue.woken = true;
        let waker = queue.waker.clone();
        drop(queue);
        wake(waker);
    }

    /// The pump's one lock per poll: registers `waker` (the producers wake it from now on)
    /// and, unless a close was requested, takes the first entry of the queue.
    pub(crate) fn take(&self, waker: &Waker) -> Taken {
        let mut queue = self.queue.lock();
        let waker_changed = match &queue.waker {
            Some(registered) if registered.will_wake(waker) => false,
            _ => {
                queue.waker = Some(waker.clone());
                true
            }
        };
        queue.woken = false;
        let read_woken = std::mem::take(&mut queue.read_woken);
        if let Some(close) = queue.close {
            return Taken {
                close: Some(close),
                entry: None,
                more: false,
                waker_changed,
                read_woken,
            };
        }
        // Most wake-ups of a connection of one frame at a time find nothing to write.
        let entry = if queue.frames.is_empty() {
            None
        } else {
            queue.pop()
        };
        Taken {
            close: None,
            entry,
            more: !queue.frames.is_empty(),
            waker_changed,
            read_woken,
        }
    }

    /// Takes the next entry, and says whether more are left.
    pub(crate) fn pop(&self) -> (Option<Entry>, bool) {
        let mut queue = self.queue.lock();
        let entry = queue.pop();
        (entry, !queue.frames.is_empty())
    }

    /// Puts an entry that [`Outbox::take`] took back at the front of the queue (the socket
    /// did not take it).
    ///
    /// A frame goes back even if producers filled the queue meanwhile (it was queued before
    /// theirs; the next push then finds the queue full, as it would have). A status marker
    /// whose device got a newer marker meanwhile is dropped: the newer one writes the same
    /// presence, as it is when it leaves. Nothing goes back on a closing connection.
    pub(crate) fn put_back(&self, entry: Entry) {
        let mut queue = self.queue.lock();
        if queue.close.is_some() {
            return;
        }
        if let Entry::Status(device) = &entry
            && !queue
                .statuses
                .get_or_insert_default()
                .insert(device.clone())
        {
            return;
        }
        queue.frames.push_front(entry);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The waker the pump reads its socket with: it notes that the reading side woke, then
/// wakes the pump's own waker (unless something woke it already).
///
/// So the pump knows, when it is woken, whether the socket may have something to read: a
/// socket whose `poll_next` returned `Pending` wakes the waker it was given once it may
/// have more (the `Stream` contract), and until then, polling it again would only find
/// nothing. An outbox is already shared (an `Arc`), so this costs no allocation.
impl ArcWake for Outbox {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let mut queue = arc_self.queue.lock();
        queue.read_woken = true;
        let waker = queue.waker_to_wake();
        drop(queue);
        wake(waker);
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[cfg(test)]
impl Outbox {
    fn close_requested(&self) -> Option<CloseRequest> {
        self.queue.lock().close
    }

    fn has_frames(&self) -> bool {
        !self.queue.lock().frames.is_empty()
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
    fn status_markers_never_overflow_and_a_device_waits_at_most_once() {
        let outbox = Outbox::new(ConnectionId::new(1), 2, None);
        let devices: Vec<_> = (0..1_024)
            .map(|i| DeviceId::new(&format!("d-{i}")).unwrap())
            .collect();
        for device in devices.iter().chain(&devices) {
            assert_eq!(outbox.push_status(device), Pushed::Queued);
        }
        // The frame bound still holds for frames.
        let frame = Frame::from_static("{}");
        assert_eq!(outbox.push(frame.clone()), Pushed::Queued);
        assert_eq!(outbox.push(frame.clone()), Pushed::Queued);
        let mut statuses = 0;
        while let (Some(entry), _) = outbox.pop() {
            if let Entry::Status(device) = entry {
                assert_eq!(device, devices[statuses], "in the order they were due");
                statuses += 1;
            }
        }
        assert_eq!(statuses, 1_024, "one marker per device");
        assert_eq!(outbox.close_requested(), None);
        assert!(outbox.queue.lock().statuses.is_none(), "memory given back");
        // Drained: a device's next change is queued again.
        outbox.push_status(&devices[0]);
        assert!(matches!(outbox.pop(), (Some(Entry::Status(d)), false) if d == devices[0]));
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

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (counter.clone(), Waker::from(counter))
    }

    fn wakes(counter: &Counter) -> usize {
        counter.0.load(Ordering::Relaxed)
    }

    fn text(entry: Option<Entry>) -> Option<String> {
        match entry {
            Some(Entry::Frame(frame)) => Some(frame.as_str().to_owned()),
            Some(Entry::Status(device)) => Some(format!("status {device}")),
            None => None,
        }
    }

    #[test]
    fn the_pump_is_woken_once_per_take_and_learns_when_its_waker_changed() {
        let outbox = Outbox::new(ConnectionId::new(1), 8, None);
        let (a, waker_a) = counter();
        let taken = outbox.take(&waker_a);
        assert!(taken.waker_changed, "the first waker is new");
        assert!(taken.entry.is_none() && !taken.more && taken.close.is_none());

        outbox.push(Frame::from_static("1"));
        outbox.push(Frame::from_static("2"));
        outbox.push_status(&DeviceId::new("d").unwrap());
        assert_eq!(wakes(&a), 1, "woken by the first push only");

        let taken = outbox.take(&waker_a);
        assert!(!taken.waker_changed, "the same waker");
        assert_eq!(text(taken.entry).as_deref(), Some("1"));
        assert!(taken.more);
        outbox.push(Frame::from_static("3"));
        assert_eq!(wakes(&a), 2, "woken again after the pump took");

        let (b, waker_b) = counter();
        let taken = outbox.take(&waker_b);
        assert!(taken.waker_changed, "another waker");
        assert_eq!(text(taken.entry).as_deref(), Some("2"));
        outbox.request_close(CloseRequest {
            reason: CloseReason::Shutdown,
            code: Some(1001),
            text: "",
        });
        assert_eq!((wakes(&a), wakes(&b)), (2, 1), "the new waker is woken");
        outbox.request_close(CloseRequest {
            reason: CloseReason::Shutdown,
            code: Some(1001),
            text: "",
        });
        assert_eq!(wakes(&b), 2, "a close request always wakes");
        let taken = outbox.take(&waker_b);
        assert_eq!(taken.close.map(|c| c.reason), Some(CloseReason::Shutdown));
        assert!(taken.entry.is_none(), "nothing is taken once closing");
    }

    #[test]
    fn an_entry_put_back_leaves_first_and_a_status_marker_is_never_doubled() {
        let outbox = Outbox::new(ConnectionId::new(1), 2, None);
        let (_, waker) = counter();
        let device = DeviceId::new("d").unwrap();
        outbox.push(Frame::from_static("1"));
        outbox.push(Frame::from_static("2"));
        let first = outbox.take(&waker).entry.unwrap();
        // The socket did not take it: it goes back in front, and counts again.
        outbox.put_back(first);
        assert_eq!(outbox.push(Frame::from_static("3")), Pushed::Overflowed);
        assert!(!outbox.has_frames(), "a slow consumer's queue is dropped");

        let outbox = Outbox::new(ConnectionId::new(1), 2, None);
        outbox.push_status(&device);
        outbox.push(Frame::from_static("1"));
        let status = outbox.take(&waker).entry.unwrap();
        // A newer marker while the first one was out: only one goes out.
        outbox.push_status(&device);
        outbox.put_back(status);
        let mut order = Vec::new();
        while let (Some(entry), _) = outbox.pop() {
            order.push(text(Some(entry)).unwrap());
        }
        assert_eq!(order, ["1", "status d"]);

        // Without a newer marker, the marker goes back in front, and is still counted
        // as waiting (not queued twice).
        outbox.push_status(&device);
        outbox.push(Frame::from_static("2"));
        let status = outbox.take(&waker).entry.unwrap();
        outbox.put_back(status);
        outbox.push_status(&device);
        let mut order = Vec::new();
        while let (Some(entry), _) = outbox.pop() {
            order.push(text(Some(entry)).unwrap());
        }
        assert_eq!(order, ["status d", "2"]);
    }
}

//! The per-connection outbound queue, shared by the hub (producers) and the connection's
//! pump (the one consumer).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bridge_protocol::{ConnectionId, DeviceId};
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
}

impl Queue {
    fn status_markers(&self) -> usize {
        self.statuses.as_ref().map_or(0, |s| s.len())
    }
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
        if queue.frames.len() - queue.status_markers() >= self.capacity {
            queue.frames = VecDeque::new();
            queue.statuses = None;
            queue.close = Some(CloseRequest {
                reason: CloseReason::SlowConsumer,
                code: None,
                text: "",
            });
            drop(queue);
            self.waker.wake();
            return Pushed::Overflowed;
        }
        queue.frames.push_back(Entry::Frame(frame));
        drop(queue);
        self.waker.wake();
        Pushed::Queued
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
            drop(queue);
            self.waker.wake();
        }
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

    pub(crate) fn pop(&self) -> Option<Entry> {
        let mut queue = self.queue.lock();
        let entry = queue.frames.pop_front();
        if let Some(Entry::Status(device)) = &entry
            && let Some(statuses) = &mut queue.statuses
        {
            statuses.remove(device);
            if statuses.is_empty() {
                queue.statuses = None;
            }
        }
        if queue.frames.is_empty() && queue.frames.capacity() > 8 {
            // Give a burst's memory back: idle connections should cost nothing here.
            queue.frames = VecDeque::new();
        }
        entry
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
        while let Some(entry) = outbox.pop() {
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
        assert!(matches!(outbox.pop(), Some(Entry::Status(d)) if d == devices[0]));
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

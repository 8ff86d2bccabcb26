//! Per-device in-flight limits: for each device with commands in flight or waiting, how
//! many slots are held and who waits for one, first come, first served.
//!
//! A command that finds a free slot (the common case) takes it with one map lookup under
//! the lock, and gives it back with another: no allocation, no timer. A command that must
//! wait gets a place in its device's queue — a waker and a deadline, stored in the queue
//! itself (no channel, no allocation once the queue has grown) — and a leaving holder hands
//! it its slot directly. Waiters have no timer of their own: the session's one timer task
//! calls [`DeviceSlots::expire`] when the earliest deadline it knows of (pending commands'
//! and waiters') is due, and each waiter arms that timer with its deadline once, when it
//! joins the queue.
//!
//! A command hashes its device id once: the map's key carries that hash (a keyed SipHash,
//! as a plain `HashMap` would compute), and the slot it takes keeps the key, so giving the
//! slot back finds the device without hashing its id again.

use std::collections::hash_map::Entry;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bridge_protocol::DeviceId;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Why a command got no device slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// Its deadline passed while it waited.
    TimedOut,
    /// The manager was shut down while it waited (or before it would have waited).
    Closed,
}

/// The slots of every device, behind one lock.
pub(crate) struct DeviceSlots {
    limit: usize,
    /// Hashes device ids for [`DeviceKey`]: keyed per process, as `HashMap`'s default.
    hasher: RandomState,
    state: Mutex<State>,
}

/// A device id with its hash, computed once per command.
#[derive(Clone)]
struct DeviceKey {
    hash: u64,
    device: DeviceId,
}

impl PartialEq for DeviceKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.device == other.device
    }
}

impl Eq for DeviceKey {}

impl Hash for DeviceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of the map of [`DeviceKey`]s: the key's hash is already one, and is taken as
/// it is.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached ([`DeviceKey`] writes one `u64`); mixes any bytes in all the same.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

type DeviceMap = HashMap<DeviceKey, SlotQueue, BuildHasherDefault<KeyHash>>;

struct State {
    devices: DeviceMap,
    /// Set by [`DeviceSlots::close`]: nobody waits any more.
    closed: bool,
}

/// The slots of one device; its entry is removed as soon as none is held and nobody is
/// queued.
#[derive(Default)]
struct SlotQueue {
    held: usize,
    /// The ticket of `queue[0]`. Tickets number a device's waiters in arrival order.
    first: u64,
    /// Every place before this ticket is not [`Place::Waiting`] (it only ever moves on):
    /// a slot is handed to the first waiting place at or after it.
    next: u64,
    /// Places of commands that waited or wait, oldest first. A place stays until its
    /// command has seen how its wait ended ([`Place::Left`] then), so that a command finds
    /// its place by its ticket alone.
    queue: VecDeque<Place>,
}

/// Where one waiting command stands.
enum Place {
    /// Waits until `deadline`; `waker` is woken when that changes.
    Waiting { deadline: Instant, waker: Waker },
    /// A leaving holder handed it its slot.
    Handed,
    /// Its deadline passed first.
    TimedOut,
    /// The manager was shut down.
    Closed,
    /// Its command is done with it (took the slot, saw its end, or was dropped).
    Left,
}

impl SlotQueue {
    fn end(&self) -> u64 {
        self.first + self.queue.len() as u64
    }

    fn place_mut(&mut self, ticket: u64) -> Option<&mut Place> {
        let index = usize::try_from(ticket.checked_sub(self.first)?).ok()?;
        self.queue.get_mut(index)
    }

    /// Moves `next` to the first waiting place (or the end); true when one waits.
    fn someone_waits(&mut self) -> bool {
        while self.next < self.end() {
            let index = usize::try_from(self.next - self.first).unwrap_or(usize::MAX);
            if matches!(self.queue.get(index), Some(Place::Waiting { .. })) {
                return true;
            }
            self.next += 1;
        }
        false
    }

    /// Drops the places at the front whose commands are done with them.
    fn trim(&mut self) {
        while matches!(self.queue.front(), Some(Place::Left)) {
            self.queue.pop_front();
            self.first += 1;
        }
        self.next = self.next.max(self.first);
    }

    fn idle(&self) -> bool {
        self.held == 0 && self.queue.is_empty()
    }

    /// Gives one held slot back: to the first waiting place (whose waker is returned), or
    /// to the pool.
    fn release(&mut self) -> Option<Waker> {
        if self.someone_waits() {
            let index = usize::try_from(self.next - self.first).unwrap_or(usize::MAX);
            self.next += 1;
            if let Some(place) = self.queue.get_mut(index)
                && let Place::Waiting { waker, .. } = std::mem::replace(place, Place::Handed)
            {
                // Handed over: the slot stays held, by the waiter now.
                return Some(waker);
            }
        }
        self.held = self.held.saturating_sub(1);
        None
    }
}

impl DeviceSlots {
    /// At most `limit` slots held per device.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            state: Mutex::new(State {
                devices: DeviceMap::default(),
                closed: false,
            }),
        }
    }

    /// Takes a slot of `device`, waiting for one until `deadline`. `arm` is called once,
    /// with the deadline, if the command has to wait (after it joined the queue): the
    /// timer that calls [`expire`](Self::expire) must then wake by `deadline`.
    pub(crate) fn acquire<A: FnOnce(Instant)>(
        &self,
        device: &DeviceId,
        deadline: Instant,
        arm: A,
    ) -> Acquire<'_, A> {
        Acquire {
            slots: self,
            key: self.key(device),
            deadline,
            arm: Some(arm),
            ticket: None,
        }
    }

    fn key(&self, device: &DeviceId) -> DeviceKey {
        DeviceKey {
            hash: self.hasher.hash_one(device),
            device: device.clone(),
        }
    }

    /// Gives one slot of the device of `key` back: to the oldest command still waiting, if
    /// any, or to the pool (forgetting the device once nothing is held or queued).
    fn release(&self, key: &DeviceKey) {
        let waker = {
            let mut state = self.state.lock();
            let devices = &mut state.devices;
            match devices.get_mut(key) {
                Some(queue) => {
                    let waker = queue.release();
                    if queue.idle() {
                        devices.remove(key);
                    }
                    waker
                }
                None => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the wait of every command whose deadline is at or before `now` (each then
    /// gives up with [`NoSlot::TimedOut`]) and returns the earliest deadline of those that
    /// still wait.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut wakers = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut state = self.state.lock();
            for queue in state.devices.values_mut() {
                let start = usize::try_from(queue.next - queue.first).unwrap_or(usize::MAX);
                for place in queue.queue.iter_mut().skip(start) {
                    let Place::Waiting { deadline, .. } = place else {
                        continue;
                    };
                    if *deadline > now {
                        let deadline = *deadline;
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    } else if let Place::Waiting { waker, .. } =
                        std::mem::replace(place, Place::TimedOut)
                    {
                        wakers.push(waker);
                    }
                }
            }
        }
        for waker in wakers {
            waker.wake();
        }
        next
    }

    /// Ends the wait of every waiting command with [`NoSlot::Closed`], and of every command
    /// that would wait from now on. Slots still come and go as before.
    pub(crate) fn close(&self) {
        let mut wakers = Vec::new();
        {
            let mut state = self.state.lock();
            state.closed = true;
            for queue in state.devices.values_mut() {
                for place in &mut queue.queue {
                    if matches!(place, Place::Waiting { .. })
                        && let Place::Waiting { waker, .. } =
                            std::mem::replace(place, Place::Closed)
                    {
                        wakers.push(waker);
                    }
                }
            }
        }
        for waker in wakers {
            waker.wake();
        }
    }

    /// Devices with slots held or queued for right now (test hook for leak checks).
    #[cfg(test)]
    pub(crate) fn tracked_devices(&self) -> usize {
        self.state.lock().devices.len()
    }
}

/// The future of [`DeviceSlots::acquire`]. Dropped while it waits, it gives up its place
/// (and hands on a slot handed to it in the meantime).
pub(crate) struct Acquire<'a, A> {
    slots: &'a DeviceSlots,
    key: DeviceKey,
    deadline: Instant,
    arm: Option<A>,
    /// Its place in the device's queue, once it waits.
    ticket: Option<u64>,
}

// No field is pinned: the future is only ever moved as a whole.
impl<A> Unpin for Acquire<'_, A> {}

impl<'a, A: FnOnce(Instant)> Future for Acquire<'a, A> {
    type Output = Result<DeviceSlot<'a>, NoSlot>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let slot = |key, waited| DeviceSlot {
            slots: this.slots,
            key,
            waited,
        };
        let mut state = this.slots.state.lock();
        let State { devices, closed } = &mut *state;
        let Some(ticket) = this.ticket else {
            // First poll: a free slot, or a place at the end of the queue.
            //
            // What is kept of the key from here on is a clone of the map's own key: the
            // device id is then the same `Arc` as the map's, and every later lookup
            // (giving the slot back, polling a place in the queue) compares ids by address
            // instead of comparing their bytes.
            let (map_key, queue) = match devices.entry(this.key.clone()) {
                Entry::Occupied(occupied) => {
                    let map_key = occupied.key().clone();
                    (map_key, occupied.into_mut())
                }
                Entry::Vacant(vacant) => {
                    let map_key = vacant.key().clone();
                    (map_key, vacant.insert(SlotQueue::default()))
                }
            };
            if queue.held < this.slots.limit && !queue.someone_waits() {
                queue.held += 1;
                drop(state);
                return Poll::Ready(Ok(slot(map_key, false)));
            }
            if *closed {
                if queue.idle() {
                    devices.remove(&this.key);
                }
                return Poll::Ready(Err(NoSlot::Closed));
            }
            let ticket = queue.end();
            queue.queue.push_back(Place::Waiting {
                deadline: this.deadline,
                waker: cx.waker().clone(),
            });
            this.ticket = Some(ticket);
            drop(state);
            // Dropped outside the lock; the device stays in the map while the place is
            // queued, so the map's key is the one to look it up by.
            this.key = map_key;
            if let Some(arm) = this.arm.take() {
                arm(this.deadline);
            }
            return Poll::Pending;
        };
        // Its place exists: a device with a queued place is never forgotten.
        let Some(queue) = devices.get_mut(&this.key) else {
            this.ticket = None;
            return Poll::Ready(Err(NoSlot::Closed));
        };
        let Some(place) = queue.place_mut(ticket) else {
            this.ticket = None;
            return Poll::Ready(Err(NoSlot::Closed));
        };
        let ended = match place {
            Place::Waiting { waker, .. } => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                return Poll::Pending;
            }
            Place::Handed => Ok(()),
            Place::TimedOut => Err(NoSlot::TimedOut),
            Place::Closed | Place::Left => Err(NoSlot::Closed),
        };
        *place = Place::Left;
        queue.trim();
        if queue.idle() {
            devices.remove(&this.key);
        }
        this.ticket = None;
        drop(state);
        Poll::Ready(ended.map(|()| slot(this.key.clone(), true)))
    }
}

impl<A> Drop for Acquire<'_, A> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else {
            return;
        };
        let waker = {
            let mut state = self.slots.state.lock();
            let Some(queue) = state.devices.get_mut(&self.key) else {
                return;
            };
            let Some(place) = queue.place_mut(ticket) else {
                return;
            };
            // Under the lock, so no holder can hand a slot to this place after the check.
            let handed = matches!(place, Place::Handed);
            *place = Place::Left;
            queue.trim();
            let waker = if handed { queue.release() } else { None };
            if queue.idle() {
                state.devices.remove(&self.key);
            }
            waker
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A held device slot; given back (to the next waiter, or the pool) on drop.
pub(crate) struct DeviceSlot<'a> {
    slots: &'a DeviceSlots,
    /// Its device, hashed when the slot was asked for.
    key: DeviceKey,
    /// Whether the command had to wait for it (its clock is then read again).
    pub(crate) waited: bool,
}

impl Drop for DeviceSlot<'_> {
    fn drop(&mut self) {
        self.slots.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// A waker that remembers it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    type Arm = fn(Instant);

    /// One command of the model test: waiting (its future and its waker's flag) or holding
    /// (the slot, given back when dropped).
    enum Real<'a> {
        Waiting(Pin<Box<Acquire<'a, Arm>>>, Arc<Flag>),
        Holding(#[allow(dead_code)] DeviceSlot<'a>),
    }

    /// What the model says of the same command.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expected {
        Waiting { deadline: u64 },
        Handed,
        TimedOut,
        Holding,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A command for device `0` or `1` arrives, with a deadline `n` ms from time zero.
        Arrive(usize, u64),
        /// The `n`-th live command (modulo their number) is polled again.
        Poll(usize),
        /// The `n`-th live command is dropped (a holder leaves, a waiter gives up).
        Drop(usize),
        /// The timer runs at `n` ms.
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..2_usize, 0..50_u64).prop_map(|(d, t)| Op::Arrive(d, t)),
            3 => any::<usize>().prop_map(Op::Poll),
            3 => any::<usize>().prop_map(Op::Drop),
            1 => (0..50_u64).prop_map(Op::Expire),
        ]
    }

    fn poll_once<'a>(
        future: &mut Pin<Box<Acquire<'a, Arm>>>,
        flag: &Arc<Flag>,
    ) -> Poll<Result<DeviceSlot<'a>, NoSlot>> {
        let waker = Waker::from(Arc::clone(flag));
        future.as_mut().poll(&mut Context::from_waker(&waker))
    }

    proptest! {
        /// Against a model of a fair semaphore per device: slots are handed in arrival
        /// order, never more than the limit are held, a waiter is woken exactly when its
        /// wait ended, the deadline ends only waits, and once every command is gone the
        /// device is forgotten.
        #[test]
        fn slots_behave_like_a_fifo_semaphore_per_device(
            limit in 1..4_usize,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let zero = Instant::now();
            let at = |ms: u64| zero + Duration::from_millis(ms);
            let slots = DeviceSlots::new(limit);
            let devices = [DeviceId::new("lock-0").unwrap(), DeviceId::new("lock-1").unwrap()];
            // Live commands: (device, real, expected); model queue per device of indices
            // into `ids` (a command's stable number).
            let mut live: Vec<(usize, u64, Real<'_>, Expected)> = Vec::new();
            let mut queues: [VecDeque<u64>; 2] = [VecDeque::new(), VecDeque::new()];
            let mut held = [0_usize; 2];
            let mut next_id = 0_u64;
            for op in ops {
                match op {
                    Op::Arrive(d, ms) => {
                        let id = next_id;
                        next_id += 1;
                        let mut future: Pin<Box<Acquire<'_, Arm>>> =
                            Box::pin(slots.acquire(&devices[d], at(ms), |_| {}));
                        let flag = Arc::new(Flag::default());
                        match poll_once(&mut future, &flag) {
                            Poll::Ready(Ok(slot)) => {
                                prop_assert!(held[d] < limit && queues[d].is_empty());
                                prop_assert!(!slot.waited);
                                held[d] += 1;
                                live.push((d, id, Real::Holding(slot), Expected::Holding));
                            }
                            Poll::Ready(Err(e)) => prop_assert!(false, "refused: {e:?}"),
                            Poll::Pending => {
                                prop_assert!(held[d] == limit || !queues[d].is_empty());
                                queues[d].push_back(id);
                                live.push((
                                    d,
                                    id,
                                    Real::Waiting(future, flag),
                                    Expected::Waiting { deadline: ms },
                                ));
                            }
                        }
                    }
                    Op::Poll(n) if !live.is_empty() => {
                        let i = n % live.len();
                        let (d, id, real, expected) = &mut live[i];
                        let Real::Waiting(future, flag) = real else { continue };
                        let woken = flag.0.swap(false, Ordering::SeqCst);
                        match (poll_once(future, flag), *expected) {
                            (Poll::Pending, Expected::Waiting { .. }) => {
                                prop_assert!(!woken, "woken while still waiting");
                            }
                            (Poll::Ready(Ok(slot)), Expected::Handed) => {
                                prop_assert!(woken, "handed a slot without a wake-up");
                                prop_assert!(slot.waited);
                                *real = Real::Holding(slot);
                                *expected = Expected::Holding;
                            }
                            (Poll::Ready(Err(NoSlot::TimedOut)), Expected::TimedOut) => {
                                prop_assert!(woken, "timed out without a wake-up");
                                live.remove(i);
                            }
                            (got, want) => prop_assert!(
                                false,
                                "command {id} of device {d}: got {:?}, want {want:?}",
                                got.map(|r| r.map(|s| s.waited))
                            ),
                        }
                    }
                    Op::Drop(n) if !live.is_empty() => {
                        let (d, id, real, expected) = live.remove(n % live.len());
                        match expected {
                            Expected::Waiting { .. } => queues[d].retain(|w| *w != id),
                            Expected::TimedOut => {}
                            Expected::Holding | Expected::Handed => {
                                // Its slot goes to the oldest waiting command, or back.
                                match queues[d].pop_front() {
                                    Some(next) => {
                                        let entry = live
                                            .iter_mut()
                                            .find(|(_, i, ..)| *i == next)
                                            .expect("a queued command is live");
                                        entry.3 = Expected::Handed;
                                    }
                                    None => held[d] -= 1,
                                }
                            }
                        }
                        drop(real);
                    }
                    Op::Expire(ms) => {
                        let next = slots.expire(at(ms));
                        let mut earliest: Option<u64> = None;
                        for (d, id, _, expected) in &mut live {
                            if let Expected::Waiting { deadline } = *expected {
                                if deadline <= ms {
                                    *expected = Expected::TimedOut;
                                    queues[*d].retain(|w| *w != *id);
                                } else {
                                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                                }
                            }
                        }
                        prop_assert_eq!(next, earliest.map(at));
                    }
                    Op::Poll(_) | Op::Drop(_) => {}
                }
                prop_assert!(held.iter().all(|&h| h <= limit));
            }
            drop(live);
            prop_assert_eq!(slots.tracked_devices(), 0);
        }
    }

    #[test]
    fn close_ends_every_wait_and_refuses_new_waits_but_not_free_slots() {
        let slots = DeviceSlots::new(1);
        let device = DeviceId::new("lock-1").unwrap();
        let far = Instant::now() + Duration::from_mins(1);
        let flag = Arc::new(Flag::default());
        let mut holder: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&device, far, |_| {}));
        let Poll::Ready(Ok(slot)) = poll_once(&mut holder, &flag) else {
            panic!("the first command gets the free slot");
        };
        let mut waiter: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&device, far, |_| {}));
        assert!(poll_once(&mut waiter, &flag).is_pending());
        slots.close();
        assert!(flag.0.load(Ordering::SeqCst), "the waiter was woken");
        assert!(matches!(
            poll_once(&mut waiter, &flag),
            Poll::Ready(Err(NoSlot::Closed))
        ));
        let mut late: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&device, far, |_| {}));
        assert!(matches!(
            poll_once(&mut late, &flag),
            Poll::Ready(Err(NoSlot::Closed))
        ));
        drop(slot);
        let other = DeviceId::new("lock-2").unwrap();
        let mut free: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&other, far, |_| {}));
        assert!(matches!(poll_once(&mut free, &flag), Poll::Ready(Ok(_))));
        drop((holder, waiter, late, free));
        assert_eq!(slots.tracked_devices(), 0);
    }

    #[test]
    fn devices_whose_hashes_collide_keep_slots_of_their_own() {
        let key = |device: &str| DeviceKey {
            hash: 7,
            device: DeviceId::new(device).unwrap(),
        };
        let mut devices = DeviceMap::default();
        devices.entry(key("lock-1")).or_default().held = 1;
        devices.entry(key("lock-2")).or_default().held = 2;
        assert_eq!(devices.len(), 2);
        assert_eq!(devices.get(&key("lock-1")).map(|q| q.held), Some(1));
        assert_eq!(devices.get(&key("lock-2")).map(|q| q.held), Some(2));
        devices.remove(&key("lock-1"));
        assert!(!devices.contains_key(&key("lock-1")));
        assert_eq!(devices.get(&key("lock-2")).map(|q| q.held), Some(2));
    }

    #[test]
    fn slots_and_places_keep_the_maps_device_id_so_later_lookups_compare_addresses() {
        let slots = DeviceSlots::new(1);
        // Three commands for one device, each with an id of its own (as parsed from three
        // requests).
        let ids: Vec<DeviceId> = (0..3).map(|_| DeviceId::new("lock-1").unwrap()).collect();
        let far = Instant::now() + Duration::from_mins(1);
        let flag = Arc::new(Flag::default());
        let same = |a: &DeviceId, b: &DeviceId| std::ptr::eq(a.as_str(), b.as_str());
        let mut holder: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&ids[0], far, |_| {}));
        let Poll::Ready(Ok(slot)) = poll_once(&mut holder, &flag) else {
            panic!("free slot");
        };
        // The map's key is the first command's id.
        assert!(same(&slot.key.device, &ids[0]));
        let mut waiter: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&ids[1], far, |_| {}));
        assert!(poll_once(&mut waiter, &flag).is_pending());
        assert!(
            same(&waiter.key.device, &ids[0]),
            "a queued place looks up by the map's id"
        );
        drop(slot);
        let Poll::Ready(Ok(handed)) = poll_once(&mut waiter, &flag) else {
            panic!("handed over");
        };
        assert!(same(&handed.key.device, &ids[0]));
        drop(handed);
        drop((holder, waiter));
        assert_eq!(slots.tracked_devices(), 0);
        // A device forgotten and seen again: the new map key is the new command's id.
        let mut again: Pin<Box<Acquire<'_, Arm>>> = Box::pin(slots.acquire(&ids[2], far, |_| {}));
        let Poll::Ready(Ok(slot)) = poll_once(&mut again, &flag) else {
            panic!("free slot");
        };
        assert!(same(&slot.key.device, &ids[2]));
    }

    #[test]
    fn a_waiter_arms_the_timer_once_with_its_deadline() {
        use std::sync::Mutex as StdMutex;
        static ARMED: StdMutex<Vec<Instant>> = StdMutex::new(Vec::new());
        let slots = DeviceSlots::new(1);
        let device = DeviceId::new("lock-1").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let flag = Arc::new(Flag::default());
        let arm: Arm = |at| ARMED.lock().unwrap().push(at);
        let mut holder = Box::pin(slots.acquire(&device, deadline, arm));
        let Poll::Ready(Ok(slot)) = poll_once(&mut holder, &flag) else {
            panic!("free slot");
        };
        assert!(ARMED.lock().unwrap().is_empty(), "a free slot arms nothing");
        let mut waiter = Box::pin(slots.acquire(&device, deadline, arm));
        assert!(poll_once(&mut waiter, &flag).is_pending());
        assert!(poll_once(&mut waiter, &flag).is_pending());
        assert_eq!(*ARMED.lock().unwrap(), vec![deadline]);
        drop(slot);
        assert!(matches!(poll_once(&mut waiter, &flag), Poll::Ready(Ok(_))));
    }
}

//! Where a store reads the time from.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bridge_protocol::Timestamp;

/// A source of the current time.
///
/// Stores read TTL and lease deadlines against it, so tests can move time forward without
/// sleeping ([`ManualClock`]) while the server uses [`SystemClock`].
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.unix_millis())),
        }
    }

    /// A clock standing at the system's current time.
    pub fn starting_now() -> Self {
        Self::new(Timestamp::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        self.millis.store(to.unix_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// The time of a store shared by several processes, read from the backend's own clock
/// (PostgreSQL's `clock_timestamp()`, Redis's `TIME`) rather than from each process's.
///
/// Leases and TTLs are compared across processes: a process whose clock runs an hour fast
/// would see every other process's live lease as lapsed and take its delivery over, and one
/// whose clock is behind would keep its own lapsed leases alive. So the PostgreSQL and Redis
/// stores sample the backend's clock (at the first operation, then every
/// [`RESYNC`](Self::RESYNC) of real time) and count the time since then on the store's
/// [`Clock`]: its *advance*, never its reading, so a process's clock may be off by any
/// amount and the store's time is still the backend's (to within half a round trip and the
/// clock's drift between two samples). A test's [`ManualClock`] moved forward moves the
/// store's time forward by as much, until the next sample.
#[derive(Debug, Default)]
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) struct BackendTime {
    /// The backend's time at the last sample, the store clock's reading then, and when
    /// (real time) it was taken.
    sample: parking_lot::Mutex<Option<(Timestamp, Timestamp, std::time::Instant)>>,
}

#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
impl BackendTime {
    /// How often, in real time, the backend's clock is sampled again.
    pub(crate) const RESYNC: Duration = Duration::from_mins(1);

    /// The backend's time now, or `None` when a (new) sample is due.
    pub(crate) fn now(&self, clock: &dyn Clock) -> Option<Timestamp> {
        let sample = *self.sample.lock();
        let (backend, local, taken) = sample?;
        if taken.elapsed() >= Self::RESYNC {
            return None;
        }
        let advance = clock
            .now()
            .unix_millis()
            .saturating_sub(local.unix_millis());
        Some(Timestamp::from_unix_millis(
            backend.unix_millis().saturating_add(advance),
        ))
    }

    /// Records a sample: the backend read `backend` between the store clock's readings
    /// `before` and `after` (it is taken to be their midpoint). Returns the time now.
    pub(crate) fn record(
        &self,
        backend: Timestamp,
        before: Timestamp,
        after: Timestamp,
    ) -> Timestamp {
        let half_trip = after.unix_millis().saturating_sub(before.unix_millis()) / 2;
        let local = Timestamp::from_unix_millis(before.unix_millis().saturating_add(half_trip));
        *self.sample.lock() = Some((backend, local, std::time::Instant::now()));
        Timestamp::from_unix_millis(backend.unix_millis().saturating_add(half_trip))
    }
}

//! Tuning knobs of the session manager.

use std::num::NonZeroUsize;

/// Configuration of a [`SessionManager`](crate::SessionManager). `Default` suits a single
/// server node; adjust with the `with_*` methods.
///
/// ```
/// use std::num::NonZeroUsize;
/// use bridge_session::SessionConfig;
///
/// let config = SessionConfig::default()
///     .with_max_pending(50_000)
///     .with_per_device_limit(NonZeroUsize::new(1));
/// assert_eq!(config.max_pending(), 50_000);
/// assert_eq!(config.per_device_limit().map(NonZeroUsize::get), Some(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    max_pending: usize,
    per_device_limit: Option<NonZeroUsize>,
    shards: Option<NonZeroUsize>,
    id_prefix: Option<u64>,
}

impl SessionConfig {
    /// Default for [`max_pending`](Self::max_pending).
    pub const DEFAULT_MAX_PENDING: usize = 100_000;
    /// Default for [`per_device_limit`](Self::per_device_limit): 16 commands in flight per
    /// device. A BLE device answers one write at a time through one phone, so sixteen queued
    /// at the phone is already more than any device gets through within a command's
    /// timeout; the limit keeps one device (or one caller hammering it) from holding
    /// thousands of the [`max_pending`](Self::max_pending) places, while commands over it
    /// wait for a place instead of failing.
    pub const DEFAULT_PER_DEVICE_LIMIT: NonZeroUsize = NonZeroUsize::new(16).unwrap();
    /// Most shards a manager uses; the shard is encoded in the low bits of a request id.
    pub const MAX_SHARDS: usize = 256;

    /// Most commands pending at once, over all devices; one more fails with
    /// [`CommandError::TooManyPending`](crate::CommandError::TooManyPending). Default
    /// [`DEFAULT_MAX_PENDING`](Self::DEFAULT_MAX_PENDING).
    pub fn with_max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Most commands in flight per device, `None` for no limit. Default
    /// [`DEFAULT_PER_DEVICE_LIMIT`](Self::DEFAULT_PER_DEVICE_LIMIT) (16). A command over
    /// the limit waits for a slot, in order, and the wait counts against its timeout (while
    /// it waits it is not pending yet, and its own deadline bounds the wait).
    pub fn with_per_device_limit(mut self, limit: Option<NonZeroUsize>) -> Self {
        self.per_device_limit = limit;
        self
    }

    /// Number of independently locked shards of the pending set, rounded up to a power of
    /// two and capped at [`MAX_SHARDS`](Self::MAX_SHARDS). Default: four per CPU.
    pub fn with_shards(mut self, shards: NonZeroUsize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The 64-bit prefix of every request id. Default: random per process, which keeps ids
    /// unique across server nodes; set it only to make ids predictable (tests) or to assign
    /// node prefixes centrally.
    pub fn with_id_prefix(mut self, prefix: u64) -> Self {
        self.id_prefix = Some(prefix);
        self
    }

    /// See [`with_max_pending`](Self::with_max_pending).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// See [`with_per_device_limit`](Self::with_per_device_limit).
    pub fn per_device_limit(&self) -> Option<NonZeroUsize> {
        self.per_device_limit
    }

    /// The number of shards that will be used: a power of two.
    pub fn shards(&self) -> usize {
        let wanted = self.shards.map_or_else(
            || std::thread::available_parallelism().map_or(4, |n| n.get() * 4),
            NonZeroUsize::get,
        );
        wanted.next_power_of_two().min(Self::MAX_SHARDS)
    }

    /// The configured id prefix, `None` for a random one.
    pub fn id_prefix(&self) -> Option<u64> {
        self.id_prefix
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_pending: Self::DEFAULT_MAX_PENDING,
            per_device_limit: Some(Self::DEFAULT_PER_DEVICE_LIMIT),
            shards: None,
            id_prefix: None,
        }
    }
}

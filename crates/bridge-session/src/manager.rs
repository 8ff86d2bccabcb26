//! The tokio layer: drives sharded [`Correlator`]s with one timer task.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bridge_protocol::{
    BleProgress, BleResponse, BleWrite, ConfigRegistry, ConnectionId, DeviceId, DeviceType,
    HexPayload, Hops, RequestId, TimeoutMs,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::correlator::{Correlator, Finished, MarkSent, ProgressAccepted, ResponseAccepted};
use crate::device_slots::{DeviceSlots, NoSlot};
use crate::error::{CommandError, RejectReason, ResponseRejected, TransportError};
use crate::stages::StageTimes;
use crate::stats::SessionStats;
use crate::{SendNow, SessionConfig, Transport, ids};

/// A device's successful answer to [`SessionManager::send_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandReply {
    /// The `requestId` of the `ble_write` the device answered (for the `succeeded` answer of
    /// PROTOCOL.md 4.1 and for logs).
    pub request_id: RequestId,
    /// The bytes the device replied with.
    pub payload: HexPayload,
    /// From the call to the answer, any wait for a device slot included.
    pub latency: Duration,
    /// How far the command got (PROTOCOL.md 4.1, 1.1): `sent`, or the last stage the bridge
    /// reported, with the times of the reported stages.
    pub hops: Hops,
}

impl CommandReply {
    /// A reply, for stand-ins of the session manager (a test double of a layer above), with
    /// no stage ([`Hops::NONE`]; see [`with_hops`](Self::with_hops)).
    pub fn new(request_id: RequestId, payload: HexPayload, latency: Duration) -> Self {
        Self {
            request_id,
            payload,
            latency,
            hops: Hops::NONE,
        }
    }

    /// The same reply, with `hops`.
    #[must_use]
    pub const fn with_hops(mut self, hops: Hops) -> Self {
        self.hops = hops;
        self
    }
}

/// Why [`SessionManager::send_command_traced`] returned no reply, and how far the command
/// got before it ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
#[non_exhaustive]
pub struct CommandFailure {
    /// Why there is no reply.
    pub error: CommandError,
    /// How far the command got: [`Hops::NONE`] when it was never sent (offline, refused,
    /// timed out waiting for a device slot), otherwise `sent` or the last stage the bridge
    /// reported, with the times of the reported stages.
    pub hops: Hops,
    /// The `requestId` of the command's `ble_write`, when it was sent (for the live
    /// stream's `command_result`, PROTOCOL.md 4.5, and for logs).
    pub request_id: Option<RequestId>,
}

impl CommandFailure {
    /// A failure that got as far as `hops`, with no known `ble_write`
    /// (see [`with_request_id`](Self::with_request_id)).
    pub const fn new(error: CommandError, hops: Hops) -> Self {
        Self {
            error,
            hops,
            request_id: None,
        }
    }

    /// A failure of a command that was never sent.
    pub const fn unsent(error: CommandError) -> Self {
        Self::new(error, Hops::NONE)
    }

    /// The same failure, of the `ble_write` `request_id`.
    #[must_use]
    pub const fn with_request_id(mut self, request_id: RequestId) -> Self {
        self.request_id = Some(request_id);
        self
    }
}

impl From<CommandError> for CommandFailure {
    fn from(error: CommandError) -> Self {
        Self::unsent(error)
    }
}

/// How a waiting command ended: its result and the stages its bridge reported.
type Ended = (Result<HexPayload, CommandError>, Option<Box<StageTimes>>);

/// What a failed command becomes for its caller: the bare [`CommandError`]
/// ([`SessionManager::send_command`]) or a [`CommandFailure`] with how far the command got
/// ([`SessionManager::send_command_traced`]). One implementation serves both, and the first
/// builds nothing it would drop.
trait Failure: Sized {
    /// A command that was never sent.
    fn unsent(error: CommandError) -> Self;

    /// A command sent as `request_id` at `sent_at` that ended with `error`, its bridge
    /// having reported `stages`.
    fn ended(
        error: CommandError,
        request_id: RequestId,
        stages: Option<&StageTimes>,
        sent_at: std::time::Instant,
    ) -> Self;
}

impl Failure for CommandError {
    fn unsent(error: CommandError) -> Self {
        error
    }

    fn ended(
        error: CommandError,
        _: RequestId,
        _: Option<&StageTimes>,
        _: std::time::Instant,
    ) -> Self {
        error
    }
}

impl Failure for CommandFailure {
    fn unsent(error: CommandError) -> Self {
        Self::unsent(error)
    }

    fn ended(
        error: CommandError,
        request_id: RequestId,
        stages: Option<&StageTimes>,
        sent_at: std::time::Instant,
    ) -> Self {
        Self::new(error, StageTimes::hops(stages, sent_at)).with_request_id(request_id)
    }
}

/// What a pending command owns besides its correlation state: the channel to its caller
/// and the transport's in-flight ticket.
///
/// Both are attached only once the command waits for an answer, under the shard lock that
/// marks it sent (an answer that comes while the transport is still sending is handed over
/// directly, with no channel at all, and the ticket never leaves `send_command`). From then
/// on the pending entry is the ticket's only owner: whatever removes the entry — answer,
/// timeout, bridge loss, release, cancellation, shutdown — drops the ticket with it, and
/// with it the connection's in-flight count. Nothing counts in flight twice.
struct Pending<I> {
    caller: Option<oneshot::Sender<Ended>>,
    in_flight: Option<I>,
}

impl<I> Pending<I> {
    const fn new() -> Self {
        Self {
            caller: None,
            in_flight: None,
        }
    }

    /// Ends the in-flight count, then tells the caller (so a caller that sees its result
    /// also sees the count down).
    fn finish(self, result: Result<HexPayload, CommandError>, stages: Option<Box<StageTimes>>) {
        let Self { caller, in_flight } = self;
        drop(in_flight);
        // No caller: the command ended while its caller was still sending, and the caller
        // learns why from `mark_sent`. A gone caller's guard finds nothing to cancel.
        if let Some(caller) = caller {
            let _ = caller.send((result, stages));
        }
    }
}

/// One independently locked part of the pending set, alone on its cache lines.
#[repr(align(128))]
struct Shard<I>(Mutex<ShardState<I>>);

impl<I> Shard<I> {
    fn lock(&self) -> parking_lot::MutexGuard<'_, ShardState<I>> {
        self.0.lock()
    }
}

struct ShardState<I> {
    correlator: Correlator<Pending<I>>,
    /// Pending-limit tokens this shard took from `Inner::free_tokens`; never below
    /// `correlator.len()`. Shards take and give back tokens in batches, so the limit costs
    /// no shared atomic per command.
    reserved: usize,
}

impl<I> ShardState<I> {
    fn surplus(&self) -> usize {
        self.reserved - self.correlator.len()
    }
}

/// Sends commands to devices through a [`Transport`] and hands each caller its device's
/// answer, or the precise reason there is none.
///
/// Cheap to clone (one reference count); every clone drives the same pending set. Create it
/// inside a Tokio runtime: [`new`](Self::new) spawns the one timer task that times out
/// every pending command. The task ends when the last clone is dropped or on
/// [`shutdown`](Self::shutdown).
pub struct SessionManager<T: Transport + ?Sized> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport + ?Sized> Clone for SessionManager<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Transport + ?Sized> std::fmt::Debug for SessionManager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("pending", &self.inner.pending())
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

struct Inner<T: Transport + ?Sized> {
    shards: Box<[Shard<T::InFlight>]>,
    shard_mask: usize,
    prefix_hex: [u8; 16],
    registry: Arc<ConfigRegistry>,
    /// Pending-limit tokens no shard has reserved (`max_pending` in all).
    free_tokens: AtomicUsize,
    /// How many tokens a shard takes or gives back at once.
    token_batch: usize,
    /// Answers whose id this process never made (no shard is touched for them).
    foreign_responses: AtomicU64,
    /// Commands that timed out while waiting for a device slot (never registered).
    slot_timeouts: AtomicU64,
    device_slots: Option<DeviceSlots>,
    timer: Arc<TimerState>,
    transport: Arc<T>,
}

impl<T: Transport + ?Sized> Drop for Inner<T> {
    fn drop(&mut self) {
        // Lets the timer task see that the manager is gone, and end.
        self.timer.stop();
    }
}

/// Nanoseconds in a second.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What the timer task shares with the senders.
struct TimerState {
    /// Time zero of `armed`.
    epoch: Instant,
    /// The deadline the timer task sleeps until, in nanoseconds since `epoch`; `u64::MAX`
    /// while it sleeps with no deadline, or is about to look at the shards.
    armed: AtomicU64,
    /// When the timer task last looked at the clock, in nanoseconds since `epoch`.
    seen: AtomicU64,
    wake: Notify,
    stopped: AtomicBool,
}

impl TimerState {
    /// Nanoseconds from `epoch` to `t`: 0 for a time before it, `u64::MAX` for one more
    /// than 584 years after it.
    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.epoch);
        // In `u64` arithmetic: `as_nanos` would build a `u128` only to narrow it again,
        // and this runs for every command.
        since
            .as_secs()
            .saturating_mul(NANOS_PER_SEC)
            .saturating_add(u64::from(since.subsec_nanos()))
    }

    /// Called after registering a command due at `at` (nanoseconds since `epoch`, see
    /// [`nanos_since_epoch`](Self::nanos_since_epoch)): if the timer task would wake later,
    /// moves its alarm earlier and wakes it to re-arm. In the steady state (one timeout
    /// class, deadlines growing) this is a single read of a shared value. A command computes
    /// `at` once and arms with it twice when it waits for a device slot (on joining the
    /// queue, and after registering).
    fn arm_at(&self, at: u64) {
        if at < self.armed.load(Ordering::SeqCst) {
            self.armed.fetch_min(at, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// The time the timer task last read from the clock.
    fn seen_at(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.seen.load(Ordering::Relaxed))
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

impl<T: Transport + ?Sized> SessionManager<T> {
    /// A manager that sends through `transport`, builds `ble_write` frames with the UUIDs of
    /// `registry`, and is tuned by `config`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: it spawns the timer task.
    pub fn new(transport: Arc<T>, registry: Arc<ConfigRegistry>, config: &SessionConfig) -> Self {
        let shard_count = config.shards();
        let prefix = config.id_prefix().unwrap_or_else(ids::random_prefix);
        let shards: Box<[Shard<T::InFlight>]> = (0..=u8::try_from(shard_count - 1)
            .unwrap_or(u8::MAX))
            .map(|i| {
                Shard(Mutex::new(ShardState {
                    reserved: 0,
                    correlator: Correlator::for_shard(prefix, i),
                }))
            })
            .collect();
        let timer = Arc::new(TimerState {
            epoch: Instant::now(),
            armed: AtomicU64::new(u64::MAX),
            seen: AtomicU64::new(0),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let inner = Arc::new(Inner {
            shards,
            shard_mask: shard_count - 1,
            prefix_hex: ids::prefix_hex(prefix),
            registry,
            free_tokens: AtomicUsize::new(config.max_pending()),
            token_batch: (config.max_pending() / (shard_count * 4)).clamp(1, 64),
            foreign_responses: AtomicU64::new(0),
            slot_timeouts: AtomicU64::new(0),
            device_slots: config
                .per_device_limit()
                .map(|limit| DeviceSlots::new(limit.get())),
            timer: Arc::clone(&timer),
            transport,
        });
        tokio::spawn(run_timer(Arc::downgrade(&inner), timer));
        Self { inner }
    }

    /// Sends `payload` to `device_id` and waits for the device's reply, at most `timeout`.
    /// The reply carries the `requestId` the `ble_write` went out with and how long the
    /// command took.
    ///
    /// `device_type` picks the BLE UUIDs from the registry (`None`: the registry's default
    /// type). The wait includes any wait for a device slot (see
    /// [`SessionConfig::with_per_device_limit`]).
    ///
    /// Cancel-safe: dropping the future at any point removes the command from the pending
    /// set (and drops its in-flight ticket if it had gone out).
    ///
    /// The reply carries how far the command got ([`CommandReply::hops`]); a failure's
    /// stage is not kept: [`send_command_traced`](Self::send_command_traced) keeps it.
    pub fn send_command(
        &self,
        device_id: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> impl Future<Output = Result<CommandReply, CommandError>> {
        // The same state machine as `send_command_traced`, built for the bare error (no
        // wrapper future, no failure's stages computed only to be dropped).
        self.send::<CommandError>(device_id, device_type, payload, timeout)
    }

    /// [`send_command`](Self::send_command), whose failures also say how far the command
    /// got (PROTOCOL.md 4.1, 1.1): never sent, `sent`, or the last stage its bridge reported
    /// in `ble_progress`, with the milliseconds from the `ble_write` being handed to the
    /// transport to each reported stage.
    pub fn send_command_traced(
        &self,
        device_id: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> impl Future<Output = Result<CommandReply, CommandFailure>> {
        self.send::<CommandFailure>(device_id, device_type, payload, timeout)
    }

    /// The one implementation of both: `F` is what a failure becomes.
    async fn send<F: Failure>(
        &self,
        device_id: DeviceId,
        device_type: Option<&str>,
        payload: HexPayload,
        timeout: Duration,
    ) -> Result<CommandReply, F> {
        let inner = &*self.inner;
        let (device_type, uuids) = inner.registry.resolve(device_type).map_err(|_| {
            F::unsent(CommandError::UnknownDeviceType(
                device_type.unwrap_or_default().to_owned(),
            ))
        })?;
        let device_type = thread_local_copy(device_type);
        let start = Instant::now();
        // A timeout too long to represent waits "forever" (a century) instead of panicking.
        let deadline = start
            .checked_add(timeout)
            .unwrap_or_else(|| start + Duration::from_hours(100 * 365 * 24));
        // The deadline as the timer task reads it, converted once for both arms below.
        let at = inner.timer.nanos_since_epoch(deadline);

        let slot = match &inner.device_slots {
            Some(slots) => {
                match slots
                    .acquire(&device_id, deadline, |_| inner.timer.arm_at(at))
                    .await
                {
                    Ok(permit) => Some(permit),
                    Err(NoSlot::TimedOut) => {
                        inner.slot_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(F::unsent(CommandError::Timeout));
                    }
                    Err(NoSlot::Closed) => return Err(F::unsent(CommandError::Shutdown)),
                }
            }
            None => None,
        };

        let shard = shard_hint() & inner.shard_mask;
        let (request_id, sequence) = inner
            .register(
                shard,
                device_id.clone(),
                deadline.into_std(),
                Pending::new(),
            )
            .map_err(F::unsent)?;
        let mut guard = PendingGuard {
            inner,
            shard,
            sequence,
            armed: true,
        };
        inner.timer.arm_at(at);
        // Time zero of the stage times: when the write is handed to the transport (the clock
        // is read again only when a device slot was waited for).
        let waited = slot.as_ref().is_some_and(|slot| slot.waited);
        let sent_at = if waited { Instant::now() } else { start };
        let sent_at_std = sent_at.into_std();
        let ended = |(result, stages): Ended| match result {
            Ok(payload) => Ok(CommandReply {
                request_id,
                payload,
                latency: start.elapsed(),
                hops: StageTimes::hops(stages.as_deref(), sent_at_std),
            }),
            Err(error) => Err(F::ended(error, request_id, stages.as_deref(), sent_at_std)),
        };

        let write = BleWrite {
            request_id,
            device_id,
            device_type,
            service_uuid: uuids.service_uuid,
            write_uuid: uuids.write_uuid,
            listen_uuid: uuids.listen_uuid,
            payload,
            timeout_ms: TimeoutMs::saturating_from_duration(if waited {
                deadline.saturating_duration_since(sent_at)
            } else {
                timeout
            }),
        };
        // Matched here rather than through `SendNow::finish`: no nested future for the
        // common send that ends at once.
        let sent = match inner.transport.send_ble_write_now(write) {
            SendNow::Sent(result) => result,
            SendNow::Later(sending) => sending.await,
        };
        let (connection, in_flight) = match sent {
            Ok(sent) => sent,
            Err(TransportError::Offline) => {
                guard.armed = false;
                let removed = inner.shards[shard]
                    .lock()
                    .correlator
                    .mark_offline_sequence(sequence);
                // `Err`: it ended (timed out, shut down) while the transport looked for a
                // bridge.
                return Err(F::unsent(removed.err().unwrap_or(CommandError::Offline)));
            }
        };

        let receiver = {
            let mut state = inner.shards[shard].lock();
            match state.correlator.mark_sent_sequence(sequence, connection) {
                MarkSent::Waiting => {
                    // Hand the ticket to the entry and attach the channel under the same
                    // lock: no answer can slip in between.
                    let (sender, receiver) = oneshot::channel();
                    if let Some(pending) = state.correlator.waiter_mut_sequence(sequence) {
                        pending.caller = Some(sender);
                        pending.in_flight = Some(in_flight);
                    }
                    Ok(receiver)
                }
                MarkSent::Finished(finished) => Err((finished.result, finished.stages)),
                // Ended while routing: the stages it had went with it.
                MarkSent::Gone(error) => Err((Err(error), None)),
                // Not reachable: only this caller ends a command it has not marked sent
                // without recording why. Treated as the loss it would be.
                MarkSent::Unknown => Err((Err(CommandError::BridgeLost), None)),
            }
        };
        let receiver = match receiver {
            Ok(receiver) => receiver,
            Err(result) => {
                // Ended at once (an answer that beat the send, a loss during the send) or
                // while routing: the ticket never reached the entry, and ends here.
                guard.armed = false;
                return ended(result);
            }
        };

        let result = receiver.await;
        guard.armed = false;
        // Every path that ends a waiting command hands its result to the channel, so the
        // sender is never dropped unused while we wait; should that change, the caller
        // learns the manager is going away.
        ended(result.unwrap_or((Err(CommandError::Shutdown), None)))
    }

    /// Offers a `ble_response` that arrived on `connection`.
    ///
    /// `Ok` when the answer was accepted: it resolved its command (or will, the moment the
    /// transport's send returns, if it came first). `Err` says which check of PROTOCOL.md
    /// 3.2 failed; [`ResponseRejected::error_code`] is the error frame to answer with. A
    /// rejected answer resolves nothing and leaves the pending command untouched.
    pub fn handle_response(
        &self,
        connection: ConnectionId,
        response: BleResponse,
    ) -> Result<(), ResponseRejected> {
        let inner = &*self.inner;
        let Some(sequence) = ids::decode(&inner.prefix_hex, &response.request_id) else {
            inner.foreign_responses.fetch_add(1, Ordering::Relaxed);
            return Err(ResponseRejected {
                request_id: response.request_id,
                reason: RejectReason::UnknownRequest,
            });
        };
        #[allow(clippy::cast_possible_truncation)] // masked to the shard count below
        let shard = (sequence as usize) & inner.shard_mask;
        // Lateness is judged by the timer's clock (no clock read per answer): an answer
        // counts until the timer has ended its command.
        let now = inner.timer.seen_at().into_std();
        let accepted = inner.shards[shard]
            .lock()
            .correlator
            .handle_response_sequence(sequence, connection, response, now);
        match accepted {
            Ok(ResponseAccepted::Resolved(finished)) => {
                Inner::<T>::deliver(finished);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(rejected) => {
                tracing::debug!(request_id = %rejected.request_id, %connection,
                    reason = ?rejected.reason, "ble_response rejected");
                Err(rejected)
            }
        }
    }

    /// Offers a `ble_progress` that arrived on `connection` (PROTOCOL.md 3.2, 1.1).
    ///
    /// Checked like a `ble_response` (see [`Correlator::handle_progress`]): `Err` says which
    /// check failed, and [`ResponseRejected::error_code`] is the error frame to answer with.
    /// `Ok` records the stage (or ignores one not later than a stage already reported). It
    /// never resolves a command and never moves its deadline.
    pub fn handle_progress(
        &self,
        connection: ConnectionId,
        progress: &BleProgress,
    ) -> Result<ProgressAccepted, ResponseRejected> {
        let inner = &*self.inner;
        let Some(sequence) = ids::decode(&inner.prefix_hex, &progress.request_id) else {
            inner.foreign_responses.fetch_add(1, Ordering::Relaxed);
            return Err(ResponseRejected {
                request_id: progress.request_id,
                reason: RejectReason::UnknownRequest,
            });
        };
        #[allow(clippy::cast_possible_truncation)] // masked to the shard count below
        let shard = (sequence as usize) & inner.shard_mask;
        // Progress is rare and optional: its time is read from the clock, exactly.
        let now = Instant::now().into_std();
        let accepted = inner.shards[shard]
            .lock()
            .correlator
            .handle_progress(connection, progress, now);
        if let Err(rejected) = &accepted {
            tracing::debug!(request_id = %rejected.request_id, %connection,
                reason = ?rejected.reason, "ble_progress rejected");
        }
        accepted
    }

    /// The bridge connection closed: every command pending through it fails at once with
    /// [`CommandError::BridgeLost`].
    pub fn connection_lost(&self, connection: ConnectionId) {
        self.inner
            .fail_everywhere(|c, out| c.connection_lost(connection, out));
    }

    /// The bridge connection released `device`: every command for it pending through that
    /// connection fails at once with [`CommandError::BridgeLost`].
    pub fn device_released(&self, connection: ConnectionId, device: &DeviceId) {
        self.inner
            .fail_everywhere(|c, out| c.device_released(connection, device, out));
    }

    /// Ends every pending command with [`CommandError::Shutdown`], and every command still
    /// waiting for a device slot, refuses new ones with the same error, and stops the timer
    /// task. Idempotent.
    pub fn shutdown(&self) {
        self.inner.fail_everywhere(Correlator::close);
        if let Some(slots) = &self.inner.device_slots {
            slots.close();
        }
        self.inner.timer.stop();
    }

    /// Number of commands pending now (registered and not ended). Locks each shard briefly:
    /// meant for metrics and tests, not for the hot path.
    pub fn pending(&self) -> usize {
        self.inner.pending()
    }

    /// A snapshot of the counters (locks each shard briefly, like [`pending`](Self::pending)).
    pub fn stats(&self) -> SessionStats {
        let mut total = SessionStats::default();
        for shard in &*self.inner.shards {
            total += shard.lock().correlator.stats();
        }
        total.unknown_responses += self.inner.foreign_responses.load(Ordering::Relaxed);
        total.timeouts += self.inner.slot_timeouts.load(Ordering::Relaxed);
        total
    }

    /// The request id prefix (16 hex digits) of this manager's ids.
    pub fn id_prefix(&self) -> &str {
        // Only hex digits are stored.
        std::str::from_utf8(&self.inner.prefix_hex).unwrap_or_default()
    }
}

impl<T: Transport + ?Sized> Inner<T> {
    fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.lock().correlator.len()).sum()
    }

    /// Registers a command in shard `shard`, within the pending limit.
    fn register(
        &self,
        shard: usize,
        device: DeviceId,
        deadline: std::time::Instant,
        waiter: Pending<T::InFlight>,
    ) -> Result<(RequestId, u64), CommandError> {
        let mut state = self.shards[shard].lock();
        if state.correlator.is_closed() {
            return Err(CommandError::Shutdown);
        }
        if state.surplus() == 0 {
            state.reserved += self.take_tokens(self.token_batch);
            if state.surplus() == 0 {
                // Near the limit: gather what other shards hold but do not use, then try
                // once more for a single token.
                drop(state);
                self.reclaim_tokens();
                state = self.shards[shard].lock();
                state.reserved += self.take_tokens(1);
                if state.surplus() == 0 {
                    return Err(CommandError::TooManyPending);
                }
            }
        } else if state.surplus() > 2 * self.token_batch {
            state.reserved -= self.token_batch;
            self.free_tokens
                .fetch_add(self.token_batch, Ordering::Relaxed);
        }
        state
            .correlator
            .register_with_sequence(device, deadline, waiter)
    }

    /// Takes up to `wanted` free tokens; returns how many it got.
    fn take_tokens(&self, wanted: usize) -> usize {
        let mut free = self.free_tokens.load(Ordering::Relaxed);
        loop {
            let take = wanted.min(free);
            if take == 0 {
                return 0;
            }
            match self.free_tokens.compare_exchange_weak(
                free,
                free - take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => free = now,
            }
        }
    }

    /// Returns every shard's unused tokens to the free pool.
    fn reclaim_tokens(&self) {
        for shard in &*self.shards {
            let mut state = shard.lock();
            let surplus = state.surplus();
            state.reserved -= surplus;
            self.free_tokens.fetch_add(surplus, Ordering::Relaxed);
        }
    }
}

impl<T: Transport + ?Sized> Inner<T> {
    /// Ends a finished command's in-flight count and tells its caller, outside any lock.
    fn deliver(finished: Finished<Pending<T::InFlight>>) {
        finished.waiter.finish(finished.result, finished.stages);
    }

    fn fail_everywhere(
        &self,
        mut fail: impl FnMut(
            &mut Correlator<Pending<T::InFlight>>,
            &mut Vec<Finished<Pending<T::InFlight>>>,
        ),
    ) {
        let mut out = Vec::new();
        for shard in &*self.shards {
            fail(&mut shard.lock().correlator, &mut out);
        }
        for finished in out {
            Self::deliver(finished);
        }
    }
}

/// Removes its command if the `send_command` future is dropped before the command ended.
struct PendingGuard<'a, T: Transport + ?Sized> {
    inner: &'a Inner<T>,
    shard: usize,
    sequence: u64,
    armed: bool,
}

impl<T: Transport + ?Sized> Drop for PendingGuard<'_, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = self.inner.shards[self.shard]
            .lock()
            .correlator
            .cancel_sequence(self.sequence);
        if let Some(removed) = removed {
            // Dropping the entry's ticket (outside the shard lock) ends its in-flight count.
            drop(removed);
            tracing::debug!(sequence = self.sequence, "command cancelled by its caller");
        }
    }
}

/// The shard a thread registers its commands in: threads spread over shards, and a thread
/// keeps to its own, so two workers rarely meet on a lock.
fn shard_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    HINT.with(|hint| {
        if hint.get() == usize::MAX {
            hint.set(NEXT.fetch_add(1, Ordering::Relaxed) & (SessionConfig::MAX_SHARDS - 1));
        }
        hint.get()
    })
}

/// A clone of `device_type` whose reference count belongs to this thread.
///
/// Every `ble_write` owns its device type, an `Arc<str>`. Cloning the registry's copy on
/// every command would make all worker threads bump one shared reference count, a cache
/// line bounced between cores twice per command. Each thread instead clones its own copy
/// (made once per type name, for at most a few dozen names).
///
/// The copy is found by the address of the registry's string, not by comparing names:
/// the registry hands out the same `DeviceType` for a name every time. Each entry keeps a
/// clone of the registry's value it was found by, so that address cannot be freed and
/// reused by another name while the entry exists. A value at a new address with a known
/// name (a registry replaced, say) takes over that name's entry.
fn thread_local_copy(device_type: &DeviceType) -> DeviceType {
    const MAX_CACHED: usize = 32;
    thread_local! {
        /// (the registry's value, this thread's copy of it)
        static COPIES: RefCell<Vec<(DeviceType, DeviceType)>> = const { RefCell::new(Vec::new()) };
    }
    COPIES.with(|copies| {
        let mut copies = copies.borrow_mut();
        let name = device_type.as_str();
        if let Some((_, copy)) = copies
            .iter()
            .find(|(source, _)| std::ptr::eq(source.as_str(), name))
        {
            return copy.clone();
        }
        if let Some((source, copy)) = copies.iter_mut().find(|(_, copy)| copy.as_str() == name) {
            source.clone_from(device_type);
            return copy.clone();
        }
        if copies.len() >= MAX_CACHED {
            return device_type.clone();
        }
        // A fresh allocation with its own count; the name was validated by the registry.
        let copy = DeviceType::new(name).unwrap_or_else(|_| device_type.clone());
        copies.push((device_type.clone(), copy.clone()));
        copy
    })
}

/// The one timer of a manager: sleeps until the alarm (`TimerState::armed`), then times
/// out what is due in every shard and sets the alarm to the earliest deadline left.
/// Registrations with an earlier deadline move the alarm and wake it; it then only goes
/// back to sleep until the new alarm, without looking at the shards.
async fn run_timer<T: Transport + ?Sized>(inner: Weak<Inner<T>>, timer: Arc<TimerState>) {
    let mut expired = Vec::new();
    loop {
        let wake = timer.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if timer.stopped.load(Ordering::SeqCst) {
            return;
        }
        let alarm = timer.armed.load(Ordering::SeqCst);
        let now = Instant::now();
        timer
            .seen
            .store(timer.nanos_since_epoch(now), Ordering::Relaxed);
        if alarm == u64::MAX {
            wake.await;
            continue;
        }
        if alarm > timer.nanos_since_epoch(now) {
            let at = timer.epoch + Duration::from_nanos(alarm);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = &mut wake => {}
            }
            continue;
        }
        // Due. From here on every registration sees MAX and lowers the alarm itself, so
        // nothing registered during the scan is missed.
        timer.armed.store(u64::MAX, Ordering::SeqCst);
        let Some(inner) = inner.upgrade() else { return };
        let now_std = now.into_std();
        let mut next: Option<std::time::Instant> = None;
        for shard in &*inner.shards {
            let mut state = shard.lock();
            let correlator = &mut state.correlator;
            correlator.handle_timeout(now_std, &mut expired);
            if let Some(deadline) = correlator.poll_timeout() {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        let mut next = next.map(Instant::from_std);
        if let Some(slots) = &inner.device_slots
            && let Some(deadline) = slots.expire(now)
        {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        if let Some(next) = next {
            let at = timer.nanos_since_epoch(next);
            timer.armed.fetch_min(at, Ordering::SeqCst);
        }
        for finished in expired.drain(..) {
            tracing::debug!(request_id = %finished.request_id, "command timed out");
            Inner::<T>::deliver(finished);
        }
    }
}

#[cfg(test)]
impl<T: Transport + ?Sized> SessionManager<T> {
    /// Devices with slots held or waited for right now (test hook for leak checks).
    pub(crate) fn tracked_devices(&self) -> usize {
        self.inner
            .device_slots
            .as_ref()
            .map_or(0, DeviceSlots::tracked_devices)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use async_trait::async_trait;
    use bridge_protocol::{BleOutcome, BleResponse, BleWrite, ConfigRegistry, ConnectionId};

    use super::*;

    /// Answers every write at once.
    struct Echo(std::sync::OnceLock<SessionManager<Echo>>);

    #[async_trait]
    impl Transport for Echo {
        type InFlight = ();

        async fn send_ble_write(
            &self,
            write: BleWrite,
        ) -> Result<(ConnectionId, ()), TransportError> {
            let conn = ConnectionId::new(1);
            if let Some(manager) = self.0.get() {
                let _ = manager.handle_response(
                    conn,
                    BleResponse {
                        request_id: write.request_id,
                        device_id: write.device_id,
                        outcome: BleOutcome::Payload(write.payload),
                    },
                );
            }
            Ok((conn, ()))
        }
    }

    /// A timer state whose epoch is now (no runtime needed).
    fn timer_state() -> TimerState {
        TimerState {
            epoch: Instant::now(),
            armed: AtomicU64::new(u64::MAX),
            seen: AtomicU64::new(0),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        }
    }

    #[test]
    fn nanos_since_epoch_counts_exactly_and_saturates_at_both_ends() {
        let timer = timer_state();
        let epoch = timer.epoch;
        let exact = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(10_001),
            Duration::new(18_446_744_073, 709_551_615),
            Duration::new(18_446_744_073, 709_551_616),
            Duration::new(18_446_744_074, 0),
            Duration::from_hours(100 * 365 * 24),
            Duration::from_hours(1000 * 365 * 24),
        ] {
            assert_eq!(timer.nanos_since_epoch(epoch + d), exact(d), "{d:?}");
        }
        assert_eq!(
            timer.nanos_since_epoch(epoch + Duration::from_hours(1000 * 365 * 24)),
            u64::MAX
        );
        if let Some(before) = epoch.checked_sub(Duration::from_secs(1)) {
            assert_eq!(
                timer.nanos_since_epoch(before),
                0,
                "a time before the epoch is 0"
            );
        }
    }

    #[test]
    fn arming_moves_the_alarm_only_earlier() {
        let timer = timer_state();
        timer.arm_at(5_000);
        assert_eq!(timer.armed.load(Ordering::SeqCst), 5_000);
        timer.arm_at(9_000);
        assert_eq!(
            timer.armed.load(Ordering::SeqCst),
            5_000,
            "a later deadline waits"
        );
        timer.arm_at(1_000);
        assert_eq!(timer.armed.load(Ordering::SeqCst), 1_000);
    }

    #[test]
    fn a_threads_copy_of_a_device_type_is_its_own_and_made_once_per_name() {
        let registry = DeviceType::new("tlc-lock").unwrap();
        let first = thread_local_copy(&registry);
        assert_eq!(first, registry);
        assert!(
            !std::ptr::eq(first.as_str(), registry.as_str()),
            "not the registry's allocation (its reference count is shared by all threads)"
        );
        let again = thread_local_copy(&registry);
        assert!(
            std::ptr::eq(again.as_str(), first.as_str()),
            "one copy per name"
        );

        // The same name at another address (a registry replaced): still the one copy, by
        // either value.
        let replaced = DeviceType::new("tlc-lock").unwrap();
        let by_replaced = thread_local_copy(&replaced);
        assert!(std::ptr::eq(by_replaced.as_str(), first.as_str()));
        let by_old = thread_local_copy(&registry);
        assert!(std::ptr::eq(by_old.as_str(), first.as_str()));

        let other = thread_local_copy(&DeviceType::new("tlc-sensor").unwrap());
        assert_eq!(other.as_str(), "tlc-sensor");
        assert!(!std::ptr::eq(other.as_str(), first.as_str()));
    }

    #[tokio::test]
    async fn device_slots_are_forgotten_once_idle() {
        let echo = Arc::new(Echo(std::sync::OnceLock::new()));
        let config = SessionConfig::default().with_per_device_limit(NonZeroUsize::new(1));
        let manager = SessionManager::new(
            Arc::clone(&echo),
            Arc::new(ConfigRegistry::example()),
            &config,
        );
        let _ = echo.0.set(manager.clone());
        for i in 0..10 {
            let device = DeviceId::new(&format!("lock-{i}")).unwrap();
            let reply = manager
                .send_command(
                    device,
                    None,
                    HexPayload::from_bytes(vec![1]),
                    Duration::from_secs(1),
                )
                .await;
            assert_eq!(
                reply.map(|r| r.payload),
                Ok(HexPayload::from_bytes(vec![1]))
            );
        }
        assert_eq!(manager.tracked_devices(), 0);
        assert_eq!(manager.pending(), 0);
        manager.shutdown();
    }
}

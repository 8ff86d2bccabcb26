//! The correlation state machine: no IO, no runtime, time passed in.

use std::time::Instant;

use bridge_protocol::{
    BleOutcome, BleProgress, BleResponse, ConnectionId, DeviceId, HexPayload, RequestId,
};

use crate::deadlines::Deadlines;
use crate::error::{CommandError, RejectReason, ResponseRejected};
use crate::ids;
use crate::slots::Slots;
use crate::stages::StageTimes;
use crate::stats::SessionStats;

/// A command that left the correlator, with everything needed to tell its caller.
#[derive(Debug)]
#[non_exhaustive]
pub struct Finished<W> {
    /// The command's request id.
    pub request_id: RequestId,
    /// The connection the `ble_write` went out on, when it is known.
    pub connection: Option<ConnectionId>,
    /// The device's reply, or why there is none.
    pub result: Result<HexPayload, CommandError>,
    /// Whatever the driver registered with the command: a channel sender to reach the
    /// caller, say, and anything else the command owns while pending (the
    /// [`SessionManager`](crate::SessionManager) keeps the transport's in-flight ticket
    /// here, so handing the waiter out is what ends the in-flight count).
    pub waiter: W,
    /// The stages the bridge reported (`ble_progress`), `None` when it reported none.
    /// [`StageTimes::hops`] makes the answer's `stage`/`progress` of it.
    pub stages: Option<Box<StageTimes>>,
}

/// What [`Correlator::handle_response`] did with an answer it accepted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResponseAccepted<W> {
    /// The answer resolved its command, which has left the correlator.
    Resolved(Finished<W>),
    /// The answer came before the driver learnt which connection carried the `ble_write`
    /// (the transport's send had not returned yet). It is held in the entry and resolves the
    /// command in [`Correlator::mark_sent`] if it came on that connection.
    HeldUntilSent,
}

/// What [`Correlator::mark_sent`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum MarkSent<W> {
    /// The command now waits for an answer on the connection.
    Waiting,
    /// The command ended at once: an answer had already come on this connection, or the
    /// connection was lost (or released the device) while the write was being sent.
    Finished(Finished<W>),
    /// The command had already ended, with this error (a timeout or shutdown), while the
    /// write was being sent; its waiter was handed out then. Whatever the driver got from
    /// the send (a transport's in-flight ticket) is still the driver's to drop.
    Gone(CommandError),
    /// No command with this id was registered here, or its ending was already reported.
    Unknown,
}

/// What [`Correlator::handle_progress`] did with a `ble_progress` it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressAccepted {
    /// The stage was recorded for the command.
    Recorded,
    /// The stage was not later than one already reported (or is not a bridge's stage), and
    /// was ignored, as PROTOCOL.md 3.2 says.
    Ignored,
}

/// A command removed by [`Correlator::cancel`] or [`Correlator::mark_offline`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Removed<W> {
    /// The connection the `ble_write` went out on, when it is known.
    pub connection: Option<ConnectionId>,
    /// The waiter that was registered.
    pub waiter: W,
}

/// Where a pending command's `ble_write` is.
#[derive(Debug)]
enum Route {
    /// The transport is sending it; the connection is not known yet.
    Routing {
        /// Boxed: an answer rarely beats the end of its send, and a small entry is moved
        /// in and out of the slab with a few register moves instead of a `memcpy` call.
        early: Option<Box<EarlyAnswer>>,
        /// Connections lost (or devices released) since the command registered: if the
        /// write turns out to have gone through one of them, the command fails at once.
        /// Empty, and so not allocated, unless such an event happened meanwhile.
        losses: Vec<Loss>,
    },
    /// It went out on this connection.
    Sent(ConnectionId),
}

/// An answer that came while the command was still [`Route::Routing`].
#[derive(Debug)]
struct EarlyAnswer {
    connection: ConnectionId,
    outcome: BleOutcome,
}

#[derive(Debug)]
struct Entry<W> {
    device: DeviceId,
    deadline: Instant,
    /// Where the deadline is stored in [`Deadlines`].
    deadline_slot: u8,
    route: Route,
    /// The `ble_progress` stages reported so far: `None`, and so not allocated, until the
    /// bridge reports one.
    stages: Option<Box<StageTimes>>,
    waiter: W,
}

/// A connection lost, or a device released, while a command was still routing: a
/// `mark_sent` for it must fail the command at once.
#[derive(Debug)]
struct Loss {
    connection: ConnectionId,
    /// `None` for the whole connection.
    device: Option<DeviceId>,
}

/// Correlates commands with their answers: a plain state machine in the style of
/// `quinn-proto`.
///
/// It never blocks, spawns or reads a clock: every method that depends on time takes `now`,
/// and [`poll_timeout`](Self::poll_timeout) says when the driver should next call
/// [`handle_timeout`](Self::handle_timeout). `W` is whatever the driver keeps per command to
/// reach its caller; the correlator hands it back, with the result, in a [`Finished`].
///
/// Lifecycle of a command: [`register`](Self::register) (state *routing*) →
/// [`mark_sent`](Self::mark_sent) with the connection the transport used (state *sent*) →
/// ended by exactly one of [`handle_response`](Self::handle_response),
/// [`handle_timeout`](Self::handle_timeout), [`connection_lost`](Self::connection_lost),
/// [`device_released`](Self::device_released), [`cancel`](Self::cancel),
/// [`mark_offline`](Self::mark_offline) or [`close`](Self::close). An ended command leaves
/// no trace: [`len`](Self::len) counts exactly the commands not ended yet.
///
/// After `register`, the driver calls exactly one of `mark_sent`, `mark_offline` and
/// `cancel` for the command, even if it ended meanwhile: a command that times out or is shut
/// down while still routing is reported there ([`MarkSent::Gone`]), which lets a driver
/// attach its waiter only once the command waits ([`waiter_mut`](Self::waiter_mut)).
///
/// ```
/// use std::time::{Duration, Instant};
/// use bridge_protocol::{BleOutcome, BleResponse, ConnectionId, DeviceId, HexPayload};
/// use bridge_session::{Correlator, MarkSent, ResponseAccepted};
///
/// let mut correlator = Correlator::<&str>::new(0x5eed);
/// let now = Instant::now();
/// let lock = DeviceId::new("lock-1")?;
/// let id = correlator.register(lock.clone(), now + Duration::from_secs(5), "caller-1")?;
/// let conn = ConnectionId::new(7);
/// assert!(matches!(correlator.mark_sent(&id, conn), MarkSent::Waiting));
/// assert_eq!(correlator.poll_timeout(), Some(now + Duration::from_secs(5)));
///
/// let answer = BleResponse {
///     request_id: id,
///     device_id: lock,
///     outcome: BleOutcome::Payload(HexPayload::from_bytes(vec![1])),
/// };
/// let Ok(ResponseAccepted::Resolved(done)) = correlator.handle_response(conn, answer, now) else {
///     panic!("the right connection and device resolve the command");
/// };
/// assert_eq!(done.waiter, "caller-1");
/// assert_eq!(done.result, Ok(HexPayload::from_bytes(vec![1])));
/// assert!(correlator.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Correlator<W> {
    prefix_hex: [u8; 16],
    prefix: u64,
    pending: Slots<Entry<W>>,
    deadlines: Deadlines,
    closed: bool,
    /// Commands that ended (timeout, shutdown) while routing, with their error, until the
    /// driver hears of it in `mark_sent`, `mark_offline` or `cancel`. Rare and short-lived.
    ended_while_routing: Vec<(u64, CommandError)>,
    stats: SessionStats,
}

impl<W> Correlator<W> {
    /// A correlator whose request ids start with `id_prefix` (as 16 hex digits). Give every
    /// server node, and every run of it, its own prefix.
    pub fn new(id_prefix: u64) -> Self {
        Self::for_shard(id_prefix, 0)
    }

    /// Shard number `shard`: the low 8 bits of its sequence numbers.
    pub(crate) fn for_shard(id_prefix: u64, shard: u8) -> Self {
        Self {
            prefix_hex: ids::prefix_hex(id_prefix),
            prefix: id_prefix,
            pending: Slots::new(shard),
            deadlines: Deadlines::default(),
            closed: false,
            ended_while_routing: Vec::new(),
            stats: SessionStats::default(),
        }
    }

    /// Number of commands registered and not ended yet.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when no command is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.len() == 0
    }

    /// The counters so far; `pending` is [`len`](Self::len).
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            pending: self.pending.len() as u64,
            ..self.stats
        }
    }

    /// The sequence number behind one of this correlator's ids, `None` for any other id.
    pub(crate) fn sequence_of(prefix_hex: &[u8; 16], id: &RequestId) -> Option<u64> {
        ids::decode(prefix_hex, id)
    }

    /// Registers a command for `device` that must be answered before `deadline`, and returns
    /// its fresh request id. The command is *routing* until [`mark_sent`](Self::mark_sent).
    ///
    /// Fails with [`CommandError::Shutdown`] once the correlator is [closed](Self::close),
    /// and with [`CommandError::TooManyPending`] when it already holds 2^24 commands.
    pub fn register(
        &mut self,
        device: DeviceId,
        deadline: Instant,
        waiter: W,
    ) -> Result<RequestId, CommandError> {
        self.register_with_sequence(device, deadline, waiter)
            .map(|(id, _)| id)
    }

    /// [`register`](Self::register), also returning the sequence number behind the id,
    /// which the `*_sequence` methods take instead of the id (saving a parse).
    pub(crate) fn register_with_sequence(
        &mut self,
        device: DeviceId,
        deadline: Instant,
        waiter: W,
    ) -> Result<(RequestId, u64), CommandError> {
        if self.closed {
            return Err(CommandError::Shutdown);
        }
        let sequence = self
            .pending
            .insert(Entry {
                device,
                deadline,
                deadline_slot: 0,
                route: Route::Routing {
                    early: None,
                    losses: Vec::new(),
                },
                stages: None,
                waiter,
            })
            .ok_or(CommandError::TooManyPending)?;
        let pending = &self.pending;
        let deadline_slot = self
            .deadlines
            .push(deadline, sequence, pending.len(), |s| pending.contains(s));
        if let Some(entry) = self.pending.get_mut(sequence) {
            entry.deadline_slot = deadline_slot;
        }
        Ok((ids::encode(self.prefix, sequence), sequence))
    }

    /// Removes the entry of `sequence`, and its deadline when that is cheap.
    fn remove(&mut self, sequence: u64) -> Option<Entry<W>> {
        let entry = self.pending.remove(sequence)?;
        let pending = &self.pending;
        self.deadlines
            .remove(sequence, entry.deadline_slot, |s| pending.contains(s));
        Some(entry)
    }

    /// Records that the command's `ble_write` went out on `connection`.
    ///
    /// Resolves the command at once with an answer that already came on that connection, or
    /// fails it with [`CommandError::BridgeLost`] when the connection was lost (or released
    /// the device) while the write was being sent. An early answer from another connection
    /// is discarded (and counted as rejected); the command keeps waiting.
    pub fn mark_sent(&mut self, request_id: &RequestId, connection: ConnectionId) -> MarkSent<W> {
        match Self::sequence_of(&self.prefix_hex, request_id) {
            Some(sequence) => self.mark_sent_sequence(sequence, connection),
            None => MarkSent::Unknown,
        }
    }

    /// [`mark_sent`](Self::mark_sent) by sequence number.
    pub(crate) fn mark_sent_sequence(
        &mut self,
        sequence: u64,
        connection: ConnectionId,
    ) -> MarkSent<W> {
        let Some(entry) = self.pending.get_mut(sequence) else {
            return match self.take_ended_while_routing(sequence) {
                Some(error) => MarkSent::Gone(error),
                None => MarkSent::Unknown,
            };
        };
        let Route::Routing { early, losses } = &mut entry.route else {
            // Marked twice: the first mark stands.
            return MarkSent::Waiting;
        };
        self.stats.sent += 1;
        let early = early.take();
        let device_lost = losses.iter().any(|loss| {
            loss.connection == connection
                && loss
                    .device
                    .as_ref()
                    .is_none_or(|device| *device == entry.device)
        });
        entry.route = Route::Sent(connection);
        if entry
            .stages
            .as_ref()
            .is_some_and(|reported| reported.reported_on != connection)
        {
            // Reported while routing, by a connection the write did not go through.
            self.stats.progress_rejected += 1;
            entry.stages = None;
        }

        let mut result = None;
        if let Some(answer) = early.map(|answer| *answer) {
            if answer.connection == connection {
                result = Some(self.count_answer(answer.outcome));
            } else {
                self.stats.rejected_wrong_connection += 1;
                tracing::debug!(sequence, answered_on = %answer.connection, sent_on = %connection,
                    "early answer from another connection discarded");
            }
        }
        if result.is_none() && device_lost {
            self.stats.bridge_lost += 1;
            result = Some(Err(CommandError::BridgeLost));
        }
        match result {
            None => MarkSent::Waiting,
            Some(result) => match self.remove(sequence) {
                Some(entry) => MarkSent::Finished(Finished {
                    request_id: ids::encode(self.prefix, sequence),
                    connection: Some(connection),
                    result,
                    waiter: entry.waiter,
                    stages: entry.stages,
                }),
                None => MarkSent::Unknown,
            },
        }
    }

    fn take_ended_while_routing(&mut self, sequence: u64) -> Option<CommandError> {
        let at = self
            .ended_while_routing
            .iter()
            .position(|(s, _)| *s == sequence)?;
        Some(self.ended_while_routing.swap_remove(at).1)
    }

    /// The waiter of a pending command, for drivers that attach it only once the command
    /// waits (after [`mark_sent`](Self::mark_sent) returned [`MarkSent::Waiting`], under the
    /// same borrow, so no answer can slip in between).
    pub fn waiter_mut(&mut self, request_id: &RequestId) -> Option<&mut W> {
        let sequence = Self::sequence_of(&self.prefix_hex, request_id)?;
        self.waiter_mut_sequence(sequence)
    }

    /// [`waiter_mut`](Self::waiter_mut) by sequence number.
    pub(crate) fn waiter_mut_sequence(&mut self, sequence: u64) -> Option<&mut W> {
        self.pending
            .get_mut(sequence)
            .map(|entry| &mut entry.waiter)
    }

    fn count_answer(&mut self, outcome: BleOutcome) -> Result<HexPayload, CommandError> {
        match outcome {
            BleOutcome::Payload(payload) => {
                self.stats.succeeded += 1;
                Ok(payload)
            }
            BleOutcome::Error(code) => {
                self.stats.device_errors += 1;
                Err(CommandError::DeviceError(code))
            }
        }
    }

    /// Offers an answer that arrived on `connection` at `now`.
    ///
    /// It resolves its command only when the request id is pending, the command's
    /// `ble_write` went out on `connection` and the device ids match (PROTOCOL.md 3.2), and
    /// the deadline has not passed. Otherwise it is refused with the check that failed, and
    /// the pending command, if any, is left exactly as it was.
    pub fn handle_response(
        &mut self,
        connection: ConnectionId,
        response: BleResponse,
        now: Instant,
    ) -> Result<ResponseAccepted<W>, ResponseRejected> {
        if let Some(sequence) = Self::sequence_of(&self.prefix_hex, &response.request_id) {
            return self.handle_response_sequence(sequence, connection, response, now);
        }
        self.stats.unknown_responses += 1;
        Err(ResponseRejected {
            request_id: response.request_id,
            reason: RejectReason::UnknownRequest,
        })
    }

    /// [`handle_response`](Self::handle_response) for an answer whose id was already parsed
    /// into `sequence`.
    pub(crate) fn handle_response_sequence(
        &mut self,
        sequence: u64,
        connection: ConnectionId,
        response: BleResponse,
        now: Instant,
    ) -> Result<ResponseAccepted<W>, ResponseRejected> {
        let request_id = response.request_id;
        let reject = |stats: &mut SessionStats, reason| {
            match reason {
                RejectReason::UnknownRequest => stats.unknown_responses += 1,
                RejectReason::Late => stats.late_responses += 1,
                RejectReason::WrongConnection => stats.rejected_wrong_connection += 1,
                RejectReason::WrongDevice => stats.rejected_wrong_device += 1,
            }
            Err(ResponseRejected { request_id, reason })
        };
        let Some(entry) = self.pending.get_mut(sequence) else {
            return reject(&mut self.stats, RejectReason::UnknownRequest);
        };
        match &mut entry.route {
            Route::Sent(sent_on) if *sent_on != connection => {
                return reject(&mut self.stats, RejectReason::WrongConnection);
            }
            Route::Routing {
                early: Some(held), ..
            } if held.connection != connection => {
                return reject(&mut self.stats, RejectReason::WrongConnection);
            }
            // A second answer on the same connection: the first one counts.
            Route::Routing { early: Some(_), .. } => {
                return reject(&mut self.stats, RejectReason::UnknownRequest);
            }
            _ => {}
        }
        if entry.device != response.device_id {
            return reject(&mut self.stats, RejectReason::WrongDevice);
        }
        if now >= entry.deadline {
            return reject(&mut self.stats, RejectReason::Late);
        }
        if let Route::Routing { early, .. } = &mut entry.route {
            *early = Some(Box::new(EarlyAnswer {
                connection,
                outcome: response.outcome,
            }));
            return Ok(ResponseAccepted::HeldUntilSent);
        }
        let Some(entry) = self.remove(sequence) else {
            return reject(&mut self.stats, RejectReason::UnknownRequest);
        };
        let result = self.count_answer(response.outcome);
        Ok(ResponseAccepted::Resolved(Finished {
            request_id,
            connection: Some(connection),
            result,
            waiter: entry.waiter,
            stages: entry.stages,
        }))
    }

    /// Offers a `ble_progress` that arrived on `connection` at `now` (PROTOCOL.md 3.2,
    /// version 1.1).
    ///
    /// It is checked like an answer: the request id must be pending, the command's
    /// `ble_write` must have gone out on `connection` and the device ids must match, before
    /// the deadline. Otherwise it is refused with the check that failed (the same
    /// [`RejectReason`]s, so the same error frames: `unknown_request` or `forbidden`), and
    /// the command is left as it was. An accepted stage is recorded only when it is later
    /// than every stage reported so far ([`ProgressAccepted::Ignored`] otherwise). It never
    /// resolves a command and never moves its deadline. Recording the first stage of a
    /// command allocates its [`StageTimes`]; nothing else here allocates.
    ///
    /// A report that comes while the transport is still sending the write is kept with its
    /// connection, and dropped in [`mark_sent`](Self::mark_sent) if the write went out on
    /// another one.
    pub fn handle_progress(
        &mut self,
        connection: ConnectionId,
        progress: &BleProgress,
        now: Instant,
    ) -> Result<ProgressAccepted, ResponseRejected> {
        let reject = |stats: &mut SessionStats, reason| {
            stats.progress_rejected += 1;
            Err(ResponseRejected {
                request_id: progress.request_id,
                reason,
            })
        };
        let Some(sequence) = Self::sequence_of(&self.prefix_hex, &progress.request_id) else {
            return reject(&mut self.stats, RejectReason::UnknownRequest);
        };
        let Some(entry) = self.pending.get_mut(sequence) else {
            return reject(&mut self.stats, RejectReason::UnknownRequest);
        };
        let routed_elsewhere = match &entry.route {
            Route::Sent(sent_on) => *sent_on != connection,
            Route::Routing { early, .. } => {
                early
                    .as_ref()
                    .is_some_and(|held| held.connection != connection)
                    || entry
                        .stages
                        .as_ref()
                        .is_some_and(|reported| reported.reported_on != connection)
            }
        };
        if routed_elsewhere {
            return reject(&mut self.stats, RejectReason::WrongConnection);
        }
        if entry.device != progress.device_id {
            return reject(&mut self.stats, RejectReason::WrongDevice);
        }
        if now >= entry.deadline {
            return reject(&mut self.stats, RejectReason::Late);
        }
        let news = entry
            .stages
            .as_ref()
            .is_none_or(|reported| reported.is_news(progress.stage))
            && progress.stage.is_reported_by_bridge();
        if !news {
            self.stats.progress_ignored += 1;
            return Ok(ProgressAccepted::Ignored);
        }
        entry
            .stages
            .get_or_insert_with(|| Box::new(StageTimes::reported_on(connection)))
            .record(progress.stage, now);
        self.stats.progress_recorded += 1;
        Ok(ProgressAccepted::Recorded)
    }

    /// The stages reported so far for a pending command, `None` when it reported none or
    /// is not pending.
    pub fn stages(&self, request_id: &RequestId) -> Option<&StageTimes> {
        let sequence = Self::sequence_of(&self.prefix_hex, request_id)?;
        self.pending.get(sequence)?.stages.as_deref()
    }

    /// When the driver should next call [`handle_timeout`](Self::handle_timeout): the
    /// earliest deadline of a pending command, or `None` when nothing is pending. Tidies
    /// away deadlines of ended commands on the way (hence `&mut`).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let pending = &self.pending;
        self.deadlines.earliest(|s| pending.contains(s))
    }

    /// The earliest deadline of a pending command, or `None` when nothing is pending.
    ///
    /// A read-only scan of the pending set; drivers call [`poll_timeout`](Self::poll_timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|entry| entry.deadline).min()
    }

    /// Ends with [`CommandError::Timeout`] every command whose deadline is at or before
    /// `now`, appending them to `out`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Finished<W>>) {
        let mut due = Vec::new();
        self.deadlines.pop_due(now, &mut due);
        for sequence in due {
            // Popped from the deadlines already; only the entry is left to take.
            if let Some(entry) = self.pending.remove(sequence) {
                self.stats.timeouts += 1;
                if matches!(entry.route, Route::Routing { .. }) {
                    self.ended_while_routing
                        .push((sequence, CommandError::Timeout));
                }
                out.push(self.finished(sequence, entry, Err(CommandError::Timeout)));
            }
        }
    }

    fn finished(
        &self,
        sequence: u64,
        entry: Entry<W>,
        result: Result<HexPayload, CommandError>,
    ) -> Finished<W> {
        Finished {
            request_id: ids::encode(self.prefix, sequence),
            connection: match entry.route {
                Route::Sent(connection) => Some(connection),
                Route::Routing { .. } => None,
            },
            result,
            waiter: entry.waiter,
            stages: entry.stages,
        }
    }

    /// Ends with [`CommandError::BridgeLost`] every command sent through `connection`,
    /// appending them to `out`. A command still routing that turns out to have gone through
    /// it ends the same way in [`mark_sent`](Self::mark_sent).
    pub fn connection_lost(&mut self, connection: ConnectionId, out: &mut Vec<Finished<W>>) {
        self.fail_sent_through(connection, None, out);
    }

    /// Ends with [`CommandError::BridgeLost`] every command for `device` sent through
    /// `connection`, appending them to `out`: the bridge released the device.
    pub fn device_released(
        &mut self,
        connection: ConnectionId,
        device: &DeviceId,
        out: &mut Vec<Finished<W>>,
    ) {
        self.fail_sent_through(connection, Some(device), out);
    }

    fn fail_sent_through(
        &mut self,
        connection: ConnectionId,
        device: Option<&DeviceId>,
        out: &mut Vec<Finished<W>>,
    ) {
        let before = out.len();
        let prefix = self.prefix;
        self.pending.remove_where(
            |entry| {
                if device.is_some_and(|d| *d != entry.device) {
                    return false;
                }
                match &mut entry.route {
                    Route::Sent(c) => *c == connection,
                    Route::Routing { losses, .. } => {
                        losses.push(Loss {
                            connection,
                            device: device.cloned(),
                        });
                        false
                    }
                }
            },
            |sequence, entry| {
                out.push(Finished {
                    request_id: ids::encode(prefix, sequence),
                    connection: Some(connection),
                    result: Err(CommandError::BridgeLost),
                    waiter: entry.waiter,
                    stages: entry.stages,
                });
            },
        );
        self.stats.bridge_lost += (out.len() - before) as u64;
    }

    /// Removes a command whose caller gave up (dropped its future). Returns `None` when it
    /// had already ended.
    pub fn cancel(&mut self, request_id: &RequestId) -> Option<Removed<W>> {
        self.cancel_sequence(Self::sequence_of(&self.prefix_hex, request_id)?)
    }

    /// [`cancel`](Self::cancel) by sequence number.
    pub(crate) fn cancel_sequence(&mut self, sequence: u64) -> Option<Removed<W>> {
        let Some(removed) = self.take(sequence) else {
            self.take_ended_while_routing(sequence);
            return None;
        };
        self.stats.cancelled += 1;
        Some(removed)
    }

    /// Removes a command that could not be sent because no bridge holds its device.
    ///
    /// `Err` when it was no longer pending: with the error it had already ended with while
    /// the transport was looking for a bridge (a timeout or shutdown), or
    /// [`CommandError::Offline`] for an id this correlator does not know.
    pub fn mark_offline(&mut self, request_id: &RequestId) -> Result<Removed<W>, CommandError> {
        match Self::sequence_of(&self.prefix_hex, request_id) {
            Some(sequence) => self.mark_offline_sequence(sequence),
            None => Err(CommandError::Offline),
        }
    }

    /// [`mark_offline`](Self::mark_offline) by sequence number.
    pub(crate) fn mark_offline_sequence(
        &mut self,
        sequence: u64,
    ) -> Result<Removed<W>, CommandError> {
        let Some(removed) = self.take(sequence) else {
            return Err(self
                .take_ended_while_routing(sequence)
                .unwrap_or(CommandError::Offline));
        };
        self.stats.offline += 1;
        Ok(removed)
    }

    fn take(&mut self, sequence: u64) -> Option<Removed<W>> {
        let entry = self.remove(sequence)?;
        Some(Removed {
            connection: match entry.route {
                Route::Sent(connection) => Some(connection),
                Route::Routing { .. } => None,
            },
            waiter: entry.waiter,
        })
    }

    /// Ends every pending command with [`CommandError::Shutdown`], appending them to `out`,
    /// and refuses new ones from now on.
    pub fn close(&mut self, out: &mut Vec<Finished<W>>) {
        self.closed = true;
        let prefix = self.prefix;
        let before = out.len();
        let ended_while_routing = &mut self.ended_while_routing;
        self.pending.remove_where(
            |_| true,
            |sequence, entry| {
                if matches!(entry.route, Route::Routing { .. }) {
                    ended_while_routing.push((sequence, CommandError::Shutdown));
                }
                out.push(Finished {
                    request_id: ids::encode(prefix, sequence),
                    connection: match entry.route {
                        Route::Sent(connection) => Some(connection),
                        Route::Routing { .. } => None,
                    },
                    result: Err(CommandError::Shutdown),
                    waiter: entry.waiter,
                    stages: entry.stages,
                });
            },
        );
        self.stats.shutdown += (out.len() - before) as u64;
        self.deadlines.clear();
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

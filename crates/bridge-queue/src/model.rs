//! The values a [`Store`](crate::Store) takes and gives back.

use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::http::{CommandOutcome, CommandStatus, CommandView};
use bridge_protocol::{
    CommandId, CommandType, DeviceId, DeviceType, HexPayload, Hops, TimeoutMs, Timestamp,
    TtlSeconds, UserId,
};

use crate::clock::{Clock, SystemClock};
use crate::error::{InvalidInput, StoreError};

/// Limits and the clock shared by every backend.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most commands that are not final one device may hold (PROTOCOL.md 4.2); default 100.
    pub max_open_per_device: u32,
    /// Deliveries a command gets before it ends `failed`; default 5.
    pub max_attempts: u32,
    /// Largest payload accepted, in bytes; default 512 (the protocol's default limit).
    pub max_payload_bytes: usize,
    /// Where TTLs and lease deadlines are read against; default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// How long a final command (`succeeded`, `failed`, `expired`, `cancelled`) stays
    /// readable by id, counted from the end of its TTL (its `expires_at`: the last moment it
    /// could still be delivered, so the application has the whole period after that to
    /// read its result); default 7 days. After it, [`get`](crate::Store::get) answers
    /// [`NotFound`](StoreError::NotFound) (`GET /v1/commands/{id}` 404), and
    /// [`purge`](crate::Store::purge) deletes the command. A command answered after its TTL
    /// (a delivery under a lease that outlived it) stays readable for the period less that
    /// lateness.
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_open_per_device: 100,
            max_attempts: 5,
            max_payload_bytes: 512,
            clock: Arc::new(SystemClock),
            retention: Self::DEFAULT_RETENTION,
        }
    }
}

impl StoreConfig {
    /// The default [`retention`](Self::retention) of final commands: 7 days.
    pub const DEFAULT_RETENTION: Duration = Duration::from_hours(7 * 24);

    /// The same limits with another [`retention`](Self::retention) of final commands.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The latest `expires_at` of a final command whose retention is over at `now`: final
    /// commands that expired at or before it are gone.
    pub fn retention_cutoff(&self, now: Timestamp) -> Timestamp {
        let retention = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_unix_millis(now.unix_millis().saturating_sub(retention))
    }

    /// Whether `command` is still kept at `now`: not final, or final within its retention.
    pub fn retains(&self, command: &QueuedCommand, now: Timestamp) -> bool {
        !command.status.is_final() || command.expires_at > self.retention_cutoff(now)
    }

    /// The same limits read against another clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks a payload against the limits.
    #[cfg_attr(
        not(any(
            feature = "memory",
            feature = "sqlite",
            feature = "postgres",
            feature = "redis"
        )),
        allow(dead_code)
    )]
    pub(crate) fn check_payload(&self, payload: &HexPayload) -> Result<(), StoreError> {
        if payload.is_empty() {
            return Err(InvalidInput::EmptyPayload.into());
        }
        if payload.len() > self.max_payload_bytes {
            return Err(InvalidInput::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload_bytes,
            }
            .into());
        }
        Ok(())
    }
}

/// Checks the grace of `lease_next` and gives it in whole milliseconds (rounded down).
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "redis"
    )),
    allow(dead_code)
)]
pub(crate) fn grace_millis(grace: Duration) -> Result<i64, StoreError> {
    if grace > Leased::MAX_GRACE {
        return Err(InvalidInput::LeaseGraceTooLong {
            max: Leased::MAX_GRACE,
        }
        .into());
    }
    // At most a day, so it fits.
    Ok(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
}

/// A command to queue: what [`Store::enqueue`](crate::Store::enqueue) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// The device it is for.
    pub device: DeviceId,
    /// Its dedup key.
    pub command_type: CommandType,
    /// The bytes to write.
    pub payload: HexPayload,
    /// How long it stays deliverable.
    pub ttl: TtlSeconds,
    /// Whether it waits for `confirm` before it may be delivered.
    pub requires_confirmation: bool,
    /// The `deviceType` it is delivered as (which BLE service and characteristics the
    /// phone writes to); `None`: the registry's default type at delivery time.
    pub device_type: Option<DeviceType>,
    /// How long a delivery waits for the device's reply (`timeoutMs`).
    pub timeout: TimeoutMs,
    /// Who queues it: dedup updates in place only a command of the same party
    /// (PROTOCOL.md 4.2).
    pub queued_by: Party,
}

impl NewCommand {
    /// A command with the default TTL and timeout, of the registry's default device type,
    /// that needs no confirmation.
    pub fn new(device: DeviceId, command_type: CommandType, payload: HexPayload) -> Self {
        Self {
            device,
            command_type,
            payload,
            ttl: TtlSeconds::DEFAULT,
            requires_confirmation: false,
            device_type: None,
            timeout: TimeoutMs::DEFAULT,
            queued_by: Party::Backend,
        }
    }

    /// The same command, queued by `party` (the default is [`Party::Backend`]).
    pub fn queued_by(mut self, party: Party) -> Self {
        self.queued_by = party;
        self
    }

    /// The same command, delivered as `device_type`.
    pub fn with_device_type(mut self, device_type: DeviceType) -> Self {
        self.device_type = Some(device_type);
        self
    }

    /// The same command with another delivery timeout.
    pub fn with_timeout(mut self, timeout: TimeoutMs) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same command with another TTL.
    pub fn with_ttl(mut self, ttl: TtlSeconds) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same command, waiting for `confirm` before delivery.
    pub fn requiring_confirmation(mut self) -> Self {
        self.requires_confirmation = true;
        self
    }

    /// The status it starts in (or takes on when it updates a command in place).
    pub fn initial_status(&self) -> CommandStatus {
        if self.requires_confirmation {
            CommandStatus::AwaitingConfirmation
        } else {
            CommandStatus::Pending
        }
    }
}

/// A command as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedCommand {
    /// Its id, chosen by the store.
    pub id: CommandId,
    /// Its device.
    pub device: DeviceId,
    /// Its dedup key.
    pub command_type: CommandType,
    /// The bytes to write.
    pub payload: HexPayload,
    /// Where it is in its lifecycle.
    pub status: CommandStatus,
    /// Whether it was queued (or last updated) needing confirmation.
    pub requires_confirmation: bool,
    /// The `deviceType` it is delivered as; `None`: the registry's default type at delivery
    /// time (and what commands stored before the type was kept read as).
    pub device_type: Option<DeviceType>,
    /// How long a delivery waits for the device's reply (the default for commands stored
    /// before the timeout was kept).
    pub timeout: TimeoutMs,
    /// Who queued it ([`Party::Backend`] for commands stored before the party was kept).
    pub queued_by: Party,
    /// How many of its deliveries have ended after the `ble_write` left (or may have left:
    /// a lapsed or reclaimed lease counts). A delivery in progress is not counted here
    /// until it ends; [`attempts_made`](Self::attempts_made) counts it.
    pub attempts: u32,
    /// When it was first queued.
    pub created_at: Timestamp,
    /// When it stops being deliverable.
    pub expires_at: Timestamp,
    /// While `delivering`: when the lease runs out and the command becomes deliverable
    /// again — the time it was leased plus its own [`timeout`](Self::timeout) plus the grace
    /// the caller of [`lease_next`](crate::Store::lease_next) gave. `None` otherwise, and for
    /// commands handed out by `drain_pending`.
    pub lease_deadline: Option<Timestamp>,
    /// While `delivering`: the node that holds the lease. `None` otherwise.
    pub lease_owner: Option<NodeId>,
    /// The device's reply or error, once completed.
    pub outcome: Option<CommandOutcome>,
    /// How far its latest attempt that left for a bridge got (PROTOCOL.md 4.1 and 4.2,
    /// version 1.1: `stage`/`progress` of `GET /v1/commands/{commandId}`), as recorded with
    /// [`Store::record_hops`](crate::Store::record_hops); [`Hops::NONE`] before any attempt
    /// ended, and for commands stored before hops were kept.
    pub hops: Hops,
}

impl QueuedCommand {
    /// `attempts` of PROTOCOL.md 4.2, "every time the command was sent to a bridge": the
    /// ended deliveries plus, while `delivering`, the one in progress.
    pub fn attempts_made(&self) -> u32 {
        let in_progress = u32::from(self.status == CommandStatus::Delivering);
        self.attempts.saturating_add(in_progress)
    }

    /// The command as `GET /v1/commands/{commandId}` shows it (`attempts` is
    /// [`attempts_made`](Self::attempts_made)).
    pub fn to_view(&self) -> CommandView {
        CommandView {
            command_id: self.id.clone(),
            device_id: self.device.clone(),
            command_type: self.command_type.clone(),
            status: self.status,
            attempts: self.attempts_made(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            result: self.outcome.clone(),
            hops: self.hops,
        }
    }
}

impl From<&QueuedCommand> for CommandView {
    fn from(command: &QueuedCommand) -> Self {
        command.to_view()
    }
}

impl From<QueuedCommand> for CommandView {
    fn from(command: QueuedCommand) -> Self {
        command.to_view()
    }
}

/// Who queued a command (PROTOCOL.md 4.2): the dedup of [`Store::enqueue`](crate::Store::enqueue)
/// updates in place only a command of the same party, so that no one overwrites (or skips
/// the confirmation of) another party's command.
///
/// Stored as [`as_stored`](Self::as_stored) gives it: `backend`, or `user:` followed by the
/// user's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Party {
    /// The application backend, over HTTP.
    Backend,
    /// A user, over WebSocket (its `command` frames).
    User(UserId),
}

impl Party {
    /// The stored form of the backend.
    const BACKEND: &'static str = "backend";
    /// The prefix of a user's stored form.
    const USER_PREFIX: &'static str = "user:";

    /// The stored form: `backend` or `user:<id>`.
    pub fn as_stored(&self) -> String {
        match self {
            Self::Backend => Self::BACKEND.to_owned(),
            Self::User(user) => format!("{}{}", Self::USER_PREFIX, user.as_str()),
        }
    }

    /// Reads the stored form back; `None` for anything [`as_stored`](Self::as_stored) could
    /// not have written.
    pub fn from_stored(stored: &str) -> Option<Self> {
        if stored == Self::BACKEND {
            return Some(Self::Backend);
        }
        let user = stored.strip_prefix(Self::USER_PREFIX)?;
        UserId::new(user).ok().map(Self::User)
    }
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Backend => f.write_str(Self::BACKEND),
            Self::User(user) => write!(f, "{}{}", Self::USER_PREFIX, user.as_str()),
        }
    }
}

/// The name of a delivering process (a *node*): who holds a lease.
///
/// PROTOCOL.md section 5's `--node-id`: unique among the processes sharing a store and the
/// same across a process's restarts, so that a restarted node can
/// [`reclaim`](crate::Store::reclaim) its former leases. 1 to 128 characters, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Most characters a node id may have.
    pub const MAX_CHARS: usize = 128;

    /// Validates a node id.
    pub fn new(id: &str) -> Result<Self, InvalidInput> {
        let chars = id.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS || id.chars().any(char::is_control) {
            return Err(InvalidInput::NodeId {
                len: chars,
                max: Self::MAX_CHARS,
            });
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The fencing token of a lease: it changes every time a command is leased, so that a
/// holder whose lease was recovered or handed to another node is told so
/// ([`StoreError::StaleLease`]) instead of overwriting the live holder's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken(u64);

impl LeaseToken {
    /// A token from its stored value.
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    /// The stored value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

/// The right to end one delivery: what [`Store::complete`](crate::Store::complete) and
/// [`Store::release`](crate::Store::release) take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The command leased.
    pub id: CommandId,
    /// Its fencing token.
    pub token: LeaseToken,
    /// The node that holds it.
    pub owner: NodeId,
}

/// A command handed out for delivery, with its lease.
///
/// The lease runs out at `now + command.timeout + grace` ([`lease_deadline`]): the delivery
/// waits up to the command's own timeout for the device's reply, and the grace covers the
/// round trips around it.
///
/// [`lease_deadline`]: QueuedCommand::lease_deadline
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// The command as it is now (`delivering`, with its lease deadline and owner).
    pub command: QueuedCommand,
    /// The lease to end it with.
    pub lease: Lease,
}

impl Leased {
    /// The longest grace [`Store::lease_next`](crate::Store::lease_next) accepts (a day);
    /// PROTOCOL.md section 5 speaks of a few seconds.
    pub const MAX_GRACE: Duration = Duration::from_hours(24);
}

/// How a delivery that got no answer ended: what [`Store::release`](crate::Store::release)
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cut {
    /// The `ble_write` never left for a bridge (the device went offline first): no attempt
    /// is counted.
    NotSent,
    /// The `ble_write` left, and the delivery was cut off (bridge lost, timeout, shutdown):
    /// one attempt is counted.
    Sent,
}

/// Commands that are not final, per status, across every device
/// ([`Store::open_counts`](crate::Store::open_counts)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OpenCounts {
    /// `awaiting_confirmation`.
    pub awaiting_confirmation: u64,
    /// `pending`.
    pub pending: u64,
    /// `delivering`.
    pub delivering: u64,
}

impl OpenCounts {
    /// The count of a status (0 for the final ones).
    pub fn of(&self, status: CommandStatus) -> u64 {
        match status {
            CommandStatus::AwaitingConfirmation => self.awaiting_confirmation,
            CommandStatus::Pending => self.pending,
            CommandStatus::Delivering => self.delivering,
            // The final statuses, and any the protocol adds later.
            _ => 0,
        }
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.awaiting_confirmation + self.pending + self.delivering
    }
}

/// What a [`Store::sweep`](crate::Store::sweep) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Commands whose TTL passed and that are now `expired`.
    pub expired: u64,
    /// Lapsed leases put back to `pending`.
    pub recovered: u64,
    /// Lapsed leases that had used their last attempt and are now `failed`.
    pub failed: u64,
    /// The commands this sweep ended as `expired` (so that their end can be announced), at
    /// most [`MAX_EXPIRED_COMMANDS`](Self::MAX_EXPIRED_COMMANDS) of them; `expired` counts
    /// them all.
    pub expired_commands: Vec<QueuedCommand>,
}

impl SweepReport {
    /// Most commands [`expired_commands`](Self::expired_commands) holds.
    pub const MAX_EXPIRED_COMMANDS: usize = 1_000;

    /// Adds another report (of another device) to this one, keeping the bound.
    #[cfg_attr(not(any(feature = "memory", feature = "postgres")), allow(dead_code))]
    pub(crate) fn merge(&mut self, other: Self) {
        self.expired += other.expired;
        self.recovered += other.recovered;
        self.failed += other.failed;
        let room = Self::MAX_EXPIRED_COMMANDS.saturating_sub(self.expired_commands.len());
        self.expired_commands
            .extend(other.expired_commands.into_iter().take(room));
    }
}

/// The status a command with a lapsed lease (or a released one) goes to.
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
pub(crate) fn status_after_delivery_cut(
    attempts: u32,
    max_attempts: u32,
    expires_at: Timestamp,
    now: Timestamp,
) -> CommandStatus {
    if expires_at <= now {
        CommandStatus::Expired
    } else if attempts >= max_attempts {
        CommandStatus::Failed
    } else {
        CommandStatus::Pending
    }
}

/// The final status a completed delivery ends in.
#[cfg_attr(
    not(any(feature = "memory", feature = "sqlite", feature = "postgres")),
    allow(dead_code)
)]
pub(crate) fn status_of_outcome(outcome: &CommandOutcome) -> CommandStatus {
    match outcome {
        CommandOutcome::Payload(_) => CommandStatus::Succeeded,
        CommandOutcome::Error(_) => CommandStatus::Failed,
    }
}

/// Parses a status as stored by the SQL and Redis backends.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn parse_status(s: &str) -> Option<CommandStatus> {
    Some(match s {
        "awaiting_confirmation" => CommandStatus::AwaitingConfirmation,
        "pending" => CommandStatus::Pending,
        "delivering" => CommandStatus::Delivering,
        "succeeded" => CommandStatus::Succeeded,
        "failed" => CommandStatus::Failed,
        "expired" => CommandStatus::Expired,
        "cancelled" => CommandStatus::Cancelled,
        _ => return None,
    })
}

/// A fresh command id: 32 lower-case hex digits of a random UUID.
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "redis"
    )),
    allow(dead_code)
)]
pub(crate) fn new_command_id() -> Result<CommandId, StoreError> {
    Ok(CommandId::try_from(
        uuid::Uuid::new_v4().simple().to_string(),
    )?)
}

/// `ttl` after `now`.
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "redis"
    )),
    allow(dead_code)
)]
pub(crate) fn expiry(now: Timestamp, ttl: TtlSeconds) -> Timestamp {
    now.saturating_add(ttl.as_duration())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_those_of_the_protocol() {
        let config = StoreConfig::default();
        assert_eq!(config.max_open_per_device, 100);
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.max_payload_bytes, 512);
    }

    #[test]
    fn a_cut_delivery_goes_back_to_pending_until_attempts_or_ttl_run_out() {
        let now = Timestamp::from_unix_millis(1_000);
        let later = Timestamp::from_unix_millis(2_000);
        assert_eq!(
            status_after_delivery_cut(1, 5, later, now),
            CommandStatus::Pending
        );
        assert_eq!(
            status_after_delivery_cut(5, 5, later, now),
            CommandStatus::Failed
        );
        assert_eq!(
            status_after_delivery_cut(1, 5, now, now),
            CommandStatus::Expired
        );
    }

    #[test]
    fn stored_party_names_round_trip_and_refuse_what_was_never_written() {
        let user = Party::User(UserId::new("alice:1").expect("a valid user id"));
        for party in [Party::Backend, user] {
            assert_eq!(Party::from_stored(&party.as_stored()), Some(party));
        }
        assert_eq!(Party::Backend.as_stored(), "backend");
        assert_eq!(Party::from_stored("user:"), None);
        assert_eq!(Party::from_stored("user:a\nb"), None);
        assert_eq!(Party::from_stored("Backend"), None);
        assert_eq!(Party::from_stored(""), None);
    }

    #[test]
    fn stored_status_names_round_trip() {
        for status in [
            CommandStatus::AwaitingConfirmation,
            CommandStatus::Pending,
            CommandStatus::Delivering,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
            CommandStatus::Expired,
            CommandStatus::Cancelled,
        ] {
            assert_eq!(parse_status(status.as_str()), Some(status));
        }
        assert_eq!(parse_status("bogus"), None);
    }
}

/// [`Hops`] as the backends store it, in one text value: the stage, then the milliseconds of
/// `received`, `connected` and `written`, separated by `:` and empty when absent
/// (`written:3::41`). `None` for [`Hops::NONE`] (stored as NULL, or not at all).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn hops_to_stored(hops: &Hops) -> Option<String> {
    if hops.is_empty() {
        return None;
    }
    let ms = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    Some(format!(
        "{}:{}:{}:{}",
        hops.stage
            .map(bridge_protocol::Stage::as_str)
            .unwrap_or_default(),
        ms(hops.progress.received_ms),
        ms(hops.progress.connected_ms),
        ms(hops.progress.written_ms),
    ))
}

/// Reads what [`hops_to_stored`] wrote; `None` for text it could not have written.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
pub(crate) fn hops_from_stored(text: &str) -> Option<Hops> {
    let mut parts = text.split(':');
    let stage = match parts.next()? {
        "" => None,
        name => Some(bridge_protocol::Stage::from_wire(name)?),
    };
    let mut ms = || -> Option<Option<u32>> {
        match parts.next()? {
            "" => Some(None),
            digits => digits.parse().ok().map(Some),
        }
    };
    let progress = bridge_protocol::Progress {
        received_ms: ms()?,
        connected_ms: ms()?,
        written_ms: ms()?,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Hops { stage, progress })
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
#[cfg(test)]
mod hops_tests {
    use super::*;
    use bridge_protocol::Stage;

    #[test]
    fn hops_round_trip_through_their_stored_text() {
        assert_eq!(hops_to_stored(&Hops::NONE), None);
        assert_eq!(hops_to_stored(&Hops::SENT).as_deref(), Some("sent:::"));
        let mut hops = Hops::SENT;
        hops.advance(Stage::Received, 3);
        hops.advance(Stage::Written, 41);
        let text = hops_to_stored(&hops).unwrap();
        assert_eq!(text, "written:3::41");
        assert_eq!(hops_from_stored(&text), Some(hops));
        assert_eq!(hops_from_stored("sent:::"), Some(Hops::SENT));
        for bad in ["", "later:::", "sent::", "sent::::", "sent:x::"] {
            assert_eq!(hops_from_stored(bad), None, "{bad:?}");
        }
    }
}

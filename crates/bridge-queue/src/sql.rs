//! What the SQL backends share: the stored row and its decoding, and error mapping.

use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, HexPayload, Hops, TimeoutMs,
    Timestamp,
};

use crate::error::StoreError;
use crate::model::{NodeId, Party, QueuedCommand, hops_from_stored, parse_status};

/// The columns every query returns, in this order.
pub(crate) const COLUMNS: &str = "seq, id, device_id, command_type, payload, status, \
    requires_confirmation, attempts, created_at, expires_at, lease_until, result_payload, \
    result_error, device_type, timeout_ms, lease_token, lease_owner, queued_by, hops";

/// Statuses of commands that are not final, as an SQL list.
pub(crate) const OPEN: &str = "('pending', 'awaiting_confirmation', 'delivering')";

/// Statuses of commands waiting to be delivered (not leased), as an SQL list.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) const WAITING: &str = "('pending', 'awaiting_confirmation')";

/// Final statuses, as an SQL list (word for word the condition of the retention index).
pub(crate) const FINAL: &str = "('succeeded', 'failed', 'expired', 'cancelled')";

/// One row as read, before validation.
pub(crate) struct RawRow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) device_id: String,
    pub(crate) command_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) status: String,
    pub(crate) requires_confirmation: bool,
    pub(crate) attempts: i64,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) lease_until: Option<i64>,
    pub(crate) result_payload: Option<Vec<u8>>,
    pub(crate) result_error: Option<String>,
    pub(crate) device_type: Option<String>,
    pub(crate) timeout_ms: i64,
    /// How many times the command was leased: the token of its latest lease.
    pub(crate) lease_token: i64,
    pub(crate) lease_owner: Option<String>,
    /// The stored form of the party that queued it ([`Party::as_stored`]).
    pub(crate) queued_by: String,
    /// How far its latest attempt got, as [`hops_to_stored`] writes it; NULL for none.
    pub(crate) hops: Option<String>,
}

impl RawRow {
    /// Validates the row into a command; a row this crate could not have written is a
    /// [`StoreError::Backend`].
    pub(crate) fn into_command(self, backend: &'static str) -> Result<QueuedCommand, StoreError> {
        let corrupt =
            |what: &str| StoreError::backend(backend, format!("stored {what} is invalid"));
        let outcome = match (self.result_payload, self.result_error) {
            (Some(bytes), None) => Some(CommandOutcome::Payload(HexPayload::from_bytes(bytes))),
            (None, Some(code)) => Some(CommandOutcome::Error(
                DeviceErrorCode::try_from(code).map_err(|_| corrupt("result error"))?,
            )),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(corrupt("result")),
        };
        Ok(QueuedCommand {
            id: CommandId::try_from(self.id).map_err(|_| corrupt("id"))?,
            device: DeviceId::try_from(self.device_id).map_err(|_| corrupt("device id"))?,
            command_type: CommandType::try_from(self.command_type)
                .map_err(|_| corrupt("command type"))?,
            payload: HexPayload::from_bytes(self.payload),
            status: parse_status(&self.status).ok_or_else(|| corrupt("status"))?,
            requires_confirmation: self.requires_confirmation,
            device_type: self
                .device_type
                .map(DeviceType::try_from)
                .transpose()
                .map_err(|_| corrupt("device type"))?,
            timeout: u64::try_from(self.timeout_ms)
                .ok()
                .and_then(|ms| TimeoutMs::new(ms).ok())
                .ok_or_else(|| corrupt("timeout"))?,
            queued_by: Party::from_stored(&self.queued_by).ok_or_else(|| corrupt("party"))?,
            attempts: u32::try_from(self.attempts).map_err(|_| corrupt("attempts"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            expires_at: Timestamp::from_unix_millis(self.expires_at),
            lease_deadline: self.lease_until.map(Timestamp::from_unix_millis),
            lease_owner: self
                .lease_owner
                .as_deref()
                .map(NodeId::new)
                .transpose()
                .map_err(|_| corrupt("lease owner"))?,
            outcome,
            hops: match self.hops.as_deref() {
                None => Hops::NONE,
                Some(text) => hops_from_stored(text).ok_or_else(|| corrupt("hops"))?,
            },
        })
    }
}

/// Splits an outcome into the two result columns.
pub(crate) fn outcome_columns(outcome: &CommandOutcome) -> (Option<Vec<u8>>, Option<String>) {
    match outcome {
        CommandOutcome::Payload(p) => (Some(p.as_bytes().to_vec()), None),
        CommandOutcome::Error(e) => (None, Some(e.as_str().to_owned())),
    }
}

/// Decodes rows and puts them in delivery order.
pub(crate) fn into_commands(
    mut rows: Vec<RawRow>,
    backend: &'static str,
) -> Result<Vec<QueuedCommand>, StoreError> {
    rows.sort_by_key(|r| r.seq);
    rows.into_iter().map(|r| r.into_command(backend)).collect()
}

/// Maps a sqlx error: the ones that say the database did not answer are
/// [`StoreError::Unavailable`].
pub(crate) fn map_err(backend: &'static str, e: sqlx::Error) -> StoreError {
    let unavailable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: connection exceptions (08…), shutting down or starting up
            // (57P01-57P03), too many connections (53300). SQLite: busy (5), locked (6).
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "53300" | "5" | "6"
                )
        }),
        _ => false,
    };
    if unavailable {
        tracing::warn!(backend, error = %e, "queue backend unavailable");
        StoreError::Unavailable {
            backend,
            source: Box::new(e),
        }
    } else {
        StoreError::Backend {
            backend,
            source: Box::new(e),
        }
    }
}

/// Clamps a count for SQL's signed integers.
pub(crate) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

//! The SQLite store: the server's embedded, durable default.
//!
//! One file, opened in WAL mode with `synchronous = FULL`. WAL with `NORMAL` would already
//! survive a killed process (kill -9 loses nothing that was committed: the WAL is written
//! before the commit returns, only its fsync is deferred); `FULL` also syncs the WAL on every
//! commit, so an acknowledged command survives a power cut or an OS crash too, which is the
//! promise the server makes when it answers 202. The price is one fsync per write.
//!
//! The store keeps one connection: SQLite has one writer anyway, and one connection makes
//! every operation's transaction trivially serial inside the process. Transactions begin
//! `IMMEDIATE`, so a second process on the same file waits (up to the busy timeout) instead
//! of failing half-way. Ordering key: the `seq` column (`AUTOINCREMENT`, never reused).
//! Dedup: a partial unique index on `(device_id, command_type, queued_by)` over `pending`
//! and `awaiting_confirmation` (the party that queued a command is part of its dedup key). Final commands stay in the table (for `GET /v1/commands/{id}`) until their retention is over
//! ([`StoreConfig::retention`]); `purge` deletes them in bounded batches, oldest TTL first, on
//! a partial index over the final commands by TTL.
//!
//! No statement reads the history of final commands: each names the device it is about
//! (`device_id = ?`, never `?1 IS NULL OR device_id = ?1`, which keeps SQLite from using an
//! index) and lists the open statuses as a term of its own, word for word as the partial
//! indexes over open commands do (SQLite uses a partial index only for a query that carries
//! its condition as such a term); the sweep and `due_devices` read the partial indexes of
//! open commands by TTL and by lease deadline. `tests/query_plans_sqlite.rs` checks the
//! plan of every statement the conformance suite sends.
//!
//! Leases: `lease_until` (the deadline; NULL for drained commands), `lease_owner` and
//! `lease_token`, a per-command counter bumped by every lease, which fences `complete` and
//! `release` (`WHERE id = ? AND lease_token = ? AND status = 'delivering'`). `lease_next`
//! recovers the device's lapsed leases and takes the next command in one `IMMEDIATE`
//! transaction, with one `UPDATE … SET lease_until = now + timeout_ms + grace WHERE seq =
//! (oldest pending) AND NOT EXISTS (a live lease of the device)`: a second process on the
//! same file waits for the lock, then sees the lease.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, DeviceType, Hops, Timestamp};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::error::StoreError;
use crate::model::{
    Cut, Lease, LeaseToken, Leased, NewCommand, NodeId, OpenCounts, QueuedCommand, StoreConfig,
    SweepReport, expiry, grace_millis, hops_to_stored, new_command_id, parse_status,
    status_of_outcome,
};
use crate::sql::{
    COLUMNS, FINAL, OPEN, RawRow, WAITING, into_commands, map_err, outcome_columns, to_i64,
};
use crate::store::Store;

const BACKEND: &str = "sqlite";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bridge_queued_commands (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        device_id TEXT NOT NULL,
        command_type TEXT NOT NULL,
        payload BLOB NOT NULL,
        status TEXT NOT NULL,
        requires_confirmation INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        lease_until INTEGER,
        result_payload BLOB,
        result_error TEXT,
        device_type TEXT,
        timeout_ms INTEGER NOT NULL DEFAULT 10000,
        lease_token INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        queued_by TEXT NOT NULL DEFAULT 'backend',
        hops TEXT
    )",
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_open
        ON bridge_queued_commands (device_id, seq)
        WHERE status IN ('pending', 'awaiting_confirmation', 'delivering')",
    // Retention's: final commands by TTL (`purge`).
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_final_expiry
        ON bridge_queued_commands (expires_at)
        WHERE status IN ('succeeded', 'failed', 'expired', 'cancelled')",
];

/// Columns added after the first schema, with their definitions: a file created before them
/// gets them at open (SQLite has no `ADD COLUMN IF NOT EXISTS`, hence the check). Rows
/// written before read as the registry's default type and the default timeout, and as
/// never leased (token 0, no owner); a command an older version left `delivering` has no
/// owner, so only its deadline (or a sweep) ends it, and its old holder cannot end it.
/// Rows written before the party was kept were all queued by the backend (the only party
/// that could queue then), and read so.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("device_type", "TEXT"),
    ("timeout_ms", "INTEGER NOT NULL DEFAULT 10000"),
    ("lease_token", "INTEGER NOT NULL DEFAULT 0"),
    ("lease_owner", "TEXT"),
    ("queued_by", "TEXT NOT NULL DEFAULT 'backend'"),
    // How far the latest attempt got (PROTOCOL.md 4.1, 1.1); rows written before read as
    // no stage.
    ("hops", "TEXT"),
];

/// Indexes over [`ADDED_COLUMNS`], created once they exist. The dedup index covers the
/// party (PROTOCOL.md 4.2: only the same party's command is updated in place); the one of
/// older files, on `(device_id, command_type)` alone, is dropped first, or it would refuse
/// a second party's command of the same type.
const ADDED_INDEXES: &[&str] = &[
    "DROP INDEX IF EXISTS bridge_queued_commands_dedup",
    "CREATE UNIQUE INDEX IF NOT EXISTS bridge_queued_commands_dedup_party
        ON bridge_queued_commands (device_id, command_type, queued_by)
        WHERE status IN ('pending', 'awaiting_confirmation')",
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_lease_owner
        ON bridge_queued_commands (lease_owner)
        WHERE status = 'delivering'",
    // The sweep's: open commands by TTL, and leases by deadline.
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_open_expiry
        ON bridge_queued_commands (expires_at)
        WHERE status IN ('pending', 'awaiting_confirmation', 'delivering')",
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_open_lease
        ON bridge_queued_commands (lease_until)
        WHERE status IN ('pending', 'awaiting_confirmation', 'delivering')",
    // Retention's: final commands by TTL (`purge`).
    "CREATE INDEX IF NOT EXISTS bridge_queued_commands_final_expiry
        ON bridge_queued_commands (expires_at)
        WHERE status IN ('succeeded', 'failed', 'expired', 'cancelled')",
];

/// The new status of a delivery ended without an answer (released, lapsed, reclaimed),
/// `?inc` attempts counted, read against `?now` and `?max` attempts: as
/// `status_after_delivery_cut` (SQLite reads the old row in every `SET` expression).
const CUT_SET: &str = "attempts = attempts + ?inc,
    status = CASE WHEN expires_at <= ?now THEN 'expired'
                  WHEN attempts + ?inc >= ?max THEN 'failed'
                  ELSE 'pending' END,
    lease_until = NULL, lease_owner = NULL";

/// [`CUT_SET`] with its parameters numbered.
fn cut_set(inc: u8, now: u8, max: u8) -> String {
    cut_set_of(&format!("?{inc}"), &format!("?{now}"), &format!("?{max}"))
}

/// [`CUT_SET`] with these expressions for its parameters.
fn cut_set_of(inc: &str, now: &str, max: &str) -> String {
    CUT_SET
        .replace("?inc", inc)
        .replace("?now", now)
        .replace("?max", max)
}

/// Adds the [`ADDED_COLUMNS`] a file created by an older version lacks.
async fn upgrade(pool: &SqlitePool) -> Result<(), StoreError> {
    for (column, definition) in ADDED_COLUMNS {
        let present: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('bridge_queued_commands') WHERE name = ?1",
        )
        .bind(column)
        .fetch_one(pool)
        .await
        .map_err(err)?;
        if present == 0 {
            tracing::info!(column, "adding a column to the sqlite queue");
            sqlx::query(&format!(
                "ALTER TABLE bridge_queued_commands ADD COLUMN {column} {definition}"
            ))
            .execute(pool)
            .await
            .map_err(err)?;
        }
    }
    for statement in ADDED_INDEXES {
        sqlx::query(statement).execute(pool).await.map_err(err)?;
    }
    Ok(())
}

/// Where and how to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// How long to wait for a lock held by another process before answering
    /// [`StoreError::Unavailable`]; default 5 s.
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    /// Options for the file at `path`, with the default busy timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    config: StoreConfig,
}

fn err(e: sqlx::Error) -> StoreError {
    map_err(BACKEND, e)
}

fn raw(row: &SqliteRow) -> Result<RawRow, sqlx::Error> {
    Ok(RawRow {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        device_id: row.try_get(2)?,
        command_type: row.try_get(3)?,
        payload: row.try_get(4)?,
        status: row.try_get(5)?,
        requires_confirmation: row.try_get(6)?,
        attempts: row.try_get(7)?,
        created_at: row.try_get(8)?,
        expires_at: row.try_get(9)?,
        lease_until: row.try_get(10)?,
        result_payload: row.try_get(11)?,
        result_error: row.try_get(12)?,
        device_type: row.try_get(13)?,
        timeout_ms: row.try_get(14)?,
        lease_token: row.try_get(15)?,
        lease_owner: row.try_get(16)?,
        queued_by: row.try_get(17)?,
        hops: row.try_get(18)?,
    })
}

fn decode(rows: &[SqliteRow]) -> Result<Vec<QueuedCommand>, StoreError> {
    let raw = rows
        .iter()
        .map(raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    into_commands(raw, BACKEND)
}

fn decode_one(row: &SqliteRow) -> Result<QueuedCommand, StoreError> {
    raw(row).map_err(err)?.into_command(BACKEND)
}

/// Decodes rows just leased to `owner`, in delivery order, with their leases.
fn decode_leased(rows: &[SqliteRow], owner: &NodeId) -> Result<Vec<Leased>, StoreError> {
    let mut raw = rows
        .iter()
        .map(raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    raw.sort_by_key(|r| r.seq);
    raw.into_iter()
        .map(|r| {
            let token = u64::try_from(r.lease_token)
                .map_err(|_| StoreError::backend(BACKEND, "stored lease token is invalid"))?;
            let command = r.into_command(BACKEND)?;
            let lease = Lease {
                id: command.id.clone(),
                token: LeaseToken::from_u64(token),
                owner: owner.clone(),
            };
            Ok(Leased { command, lease })
        })
        .collect()
}

/// Converts a lease token for SQL's signed integers (a token this store gave out fits).
fn token_param(token: LeaseToken) -> i64 {
    i64::try_from(token.as_u64()).unwrap_or(-1)
}

/// Ends expired commands and recovers lapsed leases, of one device or (`None`) all.
///
/// Each statement names the open statuses it reads as a term of its own, word for word as
/// the partial indexes over the open commands do, so that SQLite can use them (it matches a
/// partial index only on such a term): the device's statements search the per-device index
/// and the sweep's the deadline indexes; none reads the final commands, however many the
/// table holds. The device is bound as `?3` when there is one; the sweep's statements have
/// no device parameter at all (a `?3 IS NULL OR device_id = ?3` would keep SQLite from
/// using any index).
async fn housekeep(
    conn: &mut SqliteConnection,
    device: Option<&DeviceId>,
    now: Timestamp,
    max_attempts: u32,
) -> Result<SweepReport, StoreError> {
    let now = now.unix_millis();
    let device = device.map(|d| d.as_str().to_owned());
    // The device, when there is one, is the parameter after the statement's own.
    let scope = |n: u8| {
        if device.is_some() {
            format!("device_id = ?{n} AND")
        } else {
            String::new()
        }
    };
    // Commands waiting (not leased) past their TTL.
    let waiting = format!(
        "UPDATE bridge_queued_commands SET status = 'expired'
         WHERE {} status IN {OPEN} AND status IN {WAITING} AND expires_at <= ?1
         RETURNING {COLUMNS}",
        scope(2)
    );
    let mut expired_rows = sqlx::query(&waiting)
        .bind(now)
        .bind(device.clone())
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    // Leases that lapsed: past the TTL, expired; on the last attempt, failed; else pending.
    let lapsed = format!(
        "UPDATE bridge_queued_commands SET {}
         WHERE {} status IN {OPEN} AND status = 'delivering' AND lease_until <= ?1
         RETURNING {COLUMNS}",
        cut_set_of("1", "?1", "?2"),
        scope(3)
    );
    let lapsed_rows = sqlx::query(&lapsed)
        .bind(now)
        .bind(i64::from(max_attempts))
        .bind(device)
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    let mut report = SweepReport::default();
    for row in lapsed_rows {
        match row.try_get::<String, _>(5).map_err(err)?.as_str() {
            "expired" => expired_rows.push(row),
            "failed" => report.failed += 1,
            _ => report.recovered += 1,
        }
    }
    report.expired = u64::try_from(expired_rows.len()).unwrap_or(u64::MAX);
    report.expired_commands = decode(&expired_rows)?;
    report
        .expired_commands
        .truncate(SweepReport::MAX_EXPIRED_COMMANDS);
    Ok(report)
}

async fn device_of(
    conn: &mut SqliteConnection,
    id: &CommandId,
) -> Result<Option<DeviceId>, StoreError> {
    let device: Option<String> =
        sqlx::query_scalar("SELECT device_id FROM bridge_queued_commands WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
    device
        .map(|d| {
            DeviceId::try_from(d)
                .map_err(|_| StoreError::backend(BACKEND, "stored device id is invalid"))
        })
        .transpose()
}

async fn fetch(conn: &mut SqliteConnection, id: &CommandId) -> Result<QueuedCommand, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM bridge_queued_commands WHERE id = ?1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?
    .ok_or_else(|| StoreError::NotFound { id: id.clone() })?;
    decode_one(&row)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `options.path` and its schema.
    pub async fn open(options: &SqliteOptions, config: StoreConfig) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.busy_timeout.max(Duration::from_secs(1)))
            .connect_with(connect)
            .await
            .map_err(err)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(err)?;
        }
        upgrade(&pool).await?;
        Ok(Self { pool, config })
    }

    /// Closes the connection, waiting for running operations.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)
    }

    /// Moves the command `id`, if it is in one of `allowed` states, to `status`, after
    /// recovering its device's lapsed leases and ending its expired commands.
    async fn transition(
        &self,
        id: &CommandId,
        action: &'static str,
        allowed: &[CommandStatus],
        status: CommandStatus,
    ) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        if let Some(device) = device_of(&mut tx, id).await? {
            housekeep(&mut tx, Some(&device), now, self.config.max_attempts).await?;
        }
        let current = fetch(&mut tx, id).await?;
        if !allowed.contains(&current.status) {
            // Roll back now: a dropped transaction is rolled back only when its connection
            // is next used, and until then it would keep its locks.
            tx.rollback().await.map_err(err)?;
            return Err(StoreError::Conflict {
                id: id.clone(),
                action,
                status: current.status,
            });
        }
        let row = sqlx::query(&format!(
            "UPDATE bridge_queued_commands SET status = ?2 WHERE id = ?1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(status.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        decode_one(&row)
    }

    /// Runs `update` (made by [`fenced`]), which changes the command of `lease` only if the
    /// lease is live and returns its row; when it changed nothing, tells a stale lease from
    /// an unknown id. One statement: no transaction needed.
    async fn end_lease(
        &self,
        lease: &Lease,
        update: SqliteQuery<'_>,
    ) -> Result<QueuedCommand, StoreError> {
        let row = update.fetch_optional(&self.pool).await.map_err(err)?;
        if let Some(row) = row {
            return decode_one(&row);
        }
        let known: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM bridge_queued_commands WHERE id = ?1")
                .bind(lease.id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(err)?;
        Err(match known {
            Some(_) => StoreError::StaleLease {
                id: lease.id.clone(),
            },
            None => StoreError::NotFound {
                id: lease.id.clone(),
            },
        })
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// `statement`, whose `WHERE` is [`LIVE_LEASE`], with the lease bound as `?1` to `?3`; the
/// caller binds its own parameters from `?4` on.
fn fenced<'q>(statement: &'q str, lease: &'q Lease) -> SqliteQuery<'q> {
    sqlx::query(statement)
        .bind(lease.id.as_str())
        .bind(token_param(lease.token))
        .bind(lease.owner.as_str())
}

/// The condition of a fenced update: the command `?1` is `delivering` under the lease of
/// token `?2` held by `?3`.
const LIVE_LEASE: &str =
    "id = ?1 AND lease_token = ?2 AND lease_owner = ?3 AND status = 'delivering'";

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        self.config.check_payload(&command.payload)?;
        let now = self.config.clock.now();
        let expires_at = expiry(now, command.ttl).unix_millis();
        let status = command.initial_status().as_str();
        let timeout_ms = i64::from(command.timeout.get());
        let mut tx = self.begin().await?;
        housekeep(
            &mut tx,
            Some(&command.device),
            now,
            self.config.max_attempts,
        )
        .await?;
        let updated: Option<String> = sqlx::query_scalar(
            "UPDATE bridge_queued_commands
             SET payload = ?3, expires_at = ?4, requires_confirmation = ?5, status = ?6,
                 device_type = ?7, timeout_ms = ?8
             WHERE device_id = ?1 AND command_type = ?2 AND queued_by = ?9
               AND status IN ('pending', 'awaiting_confirmation')
             RETURNING id",
        )
        .bind(command.device.as_str())
        .bind(command.command_type.as_str())
        .bind(command.payload.as_bytes())
        .bind(expires_at)
        .bind(command.requires_confirmation)
        .bind(status)
        .bind(command.device_type.as_ref().map(DeviceType::as_str))
        .bind(timeout_ms)
        .bind(command.queued_by.as_stored())
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        if let Some(id) = updated {
            tx.commit().await.map_err(err)?;
            return CommandId::try_from(id)
                .map_err(|_| StoreError::backend(BACKEND, "stored id is invalid"));
        }
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = ?1 AND status IN {OPEN}"
        ))
        .bind(command.device.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let max = self.config.max_open_per_device;
        if open >= i64::from(max) {
            tx.rollback().await.map_err(err)?;
            return Err(StoreError::QueueFull {
                device: command.device,
                max,
            });
        }
        let id = new_command_id()?;
        sqlx::query(
            "INSERT INTO bridge_queued_commands
             (id, device_id, command_type, payload, status, requires_confirmation, attempts,
              created_at, expires_at, device_type, timeout_ms, queued_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(id.as_str())
        .bind(command.device.as_str())
        .bind(command.command_type.as_str())
        .bind(command.payload.as_bytes())
        .bind(status)
        .bind(command.requires_confirmation)
        .bind(now.unix_millis())
        .bind(expires_at)
        .bind(command.device_type.as_ref().map(DeviceType::as_str))
        .bind(timeout_ms)
        .bind(command.queued_by.as_stored())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(id)
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.transition(
            id,
            "confirm",
            &[CommandStatus::AwaitingConfirmation],
            CommandStatus::Pending,
        )
        .await
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.transition(
            id,
            "cancel",
            &[CommandStatus::Pending, CommandStatus::AwaitingConfirmation],
            CommandStatus::Cancelled,
        )
        .await
    }

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let grace_ms = grace_millis(grace)?;
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        housekeep(&mut tx, Some(device), now, self.config.max_attempts).await?;
        // Lapsed leases were just recovered: every lease with a deadline left is live. The
        // deadline is the row's own timeout plus the grace, after now.
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands
             SET status = 'delivering', lease_until = ?2 + timeout_ms + ?3, lease_owner = ?4,
                 lease_token = lease_token + 1
             WHERE seq = (SELECT seq FROM bridge_queued_commands
                          WHERE device_id = ?1 AND status IN {OPEN} AND status = 'pending'
                            AND expires_at > ?2
                          ORDER BY seq LIMIT 1)
               AND NOT EXISTS (SELECT 1 FROM bridge_queued_commands
                               WHERE device_id = ?1 AND status IN {OPEN}
                                 AND status = 'delivering' AND lease_until IS NOT NULL)
             RETURNING {COLUMNS}"
        ))
        .bind(device.as_str())
        .bind(now.unix_millis())
        .bind(grace_ms)
        .bind(owner.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(decode_leased(&rows, owner)?.into_iter().next())
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let (payload, error) = outcome_columns(&outcome);
        let statement = format!(
            "UPDATE bridge_queued_commands
             SET status = ?4, result_payload = ?5, result_error = ?6, attempts = attempts + 1,
                 lease_until = NULL, lease_owner = NULL
             WHERE {LIVE_LEASE} RETURNING {COLUMNS}"
        );
        let update = fenced(&statement, lease)
            .bind(status_of_outcome(&outcome).as_str())
            .bind(payload)
            .bind(error);
        self.end_lease(lease, update).await
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let statement = format!(
            "UPDATE bridge_queued_commands SET {} WHERE {LIVE_LEASE} RETURNING {COLUMNS}",
            cut_set(4, 5, 6)
        );
        let update = fenced(&statement, lease)
            .bind(i64::from(cut == Cut::Sent))
            .bind(self.config.clock.now().unix_millis())
            .bind(i64::from(self.config.max_attempts));
        self.end_lease(lease, update).await
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        let statement = format!(
            "UPDATE bridge_queued_commands SET hops = ?4 WHERE {LIVE_LEASE} RETURNING {COLUMNS}"
        );
        let update = fenced(&statement, lease).bind(hops_to_stored(&hops));
        self.end_lease(lease, update).await.map(|_| ())
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands SET {}
             WHERE lease_owner = ?1 AND status = 'delivering' AND lease_until IS NOT NULL
             RETURNING {COLUMNS}",
            cut_set(2, 3, 4)
        ))
        .bind(owner.as_str())
        .bind(1_i64)
        .bind(self.config.clock.now().unix_millis())
        .bind(i64::from(self.config.max_attempts))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        decode(&rows)
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        housekeep(&mut tx, Some(device), now, self.config.max_attempts).await?;
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands
             SET status = 'delivering', lease_until = NULL, lease_owner = ?3,
                 lease_token = lease_token + 1
             WHERE device_id = ?1 AND status IN {OPEN} AND status = 'pending'
               AND expires_at > ?2
             RETURNING {COLUMNS}"
        ))
        .bind(device.as_str())
        .bind(now.unix_millis())
        .bind(owner.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        decode_leased(&rows, owner)
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let command = fetch(&mut conn, id).await?;
        if self.config.retains(&command, now) {
            Ok(command)
        } else {
            Err(StoreError::NotFound { id: id.clone() })
        }
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bridge_queued_commands
             WHERE device_id = ?1 AND status IN {OPEN} ORDER BY seq"
        ))
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        decode(&rows)
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = ?1 AND status IN {OPEN}"
        ))
        .bind(device.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(err)?;
        Ok(u32::try_from(open).unwrap_or(u32::MAX))
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        let now = self.config.clock.now().unix_millis();
        // Two halves, each on an index over the open commands (an `OR` of the two would
        // read the whole table); a device under a live lease is not due (`lease_next` would
        // hand nothing out).
        let devices: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT device_id FROM bridge_queued_commands AS c
             WHERE status IN {OPEN} AND status = 'pending' AND expires_at > ?1
               AND NOT EXISTS (SELECT 1 FROM bridge_queued_commands AS l
                               WHERE l.device_id = c.device_id AND l.status IN {OPEN}
                                 AND l.status = 'delivering' AND l.lease_until > ?1)
             UNION
             SELECT device_id FROM bridge_queued_commands
             WHERE status IN {OPEN} AND status = 'delivering' AND lease_until <= ?1
             ORDER BY device_id LIMIT ?2"
        ))
        .bind(now)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        devices
            .into_iter()
            .map(|d| {
                DeviceId::try_from(d)
                    .map_err(|_| StoreError::backend(BACKEND, "stored device id is invalid"))
            })
            .collect()
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let report = housekeep(&mut tx, None, now, self.config.max_attempts).await?;
        tx.commit().await.map_err(err)?;
        Ok(report)
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let report = housekeep(&mut tx, Some(device), now, self.config.max_attempts).await?;
        tx.commit().await.map_err(err)?;
        Ok(report.expired_commands)
    }

    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        let cutoff = self.config.retention_cutoff(self.config.clock.now());
        let deleted = sqlx::query(&format!(
            "DELETE FROM bridge_queued_commands
             WHERE seq IN (SELECT seq FROM bridge_queued_commands
                           WHERE status IN {FINAL} AND expires_at <= ?1
                           ORDER BY expires_at LIMIT ?2)"
        ))
        .bind(cutoff.unix_millis())
        .bind(to_i64(limit))
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        Ok(deleted)
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT status, COUNT(*) FROM bridge_queued_commands
             WHERE status IN {OPEN} GROUP BY status"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut counts = OpenCounts::default();
        for (status, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match parse_status(&status) {
                Some(CommandStatus::AwaitingConfirmation) => counts.awaiting_confirmation = n,
                Some(CommandStatus::Pending) => counts.pending = n,
                Some(CommandStatus::Delivering) => counts.delivering = n,
                _ => return Err(StoreError::backend(BACKEND, "stored status is invalid")),
            }
        }
        Ok(counts)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(err)?;
        Ok(())
    }
}

//! The PostgreSQL store: one durable queue shared by several server processes.
//!
//! The schema is the original toolkit's command table extended with `status`, `attempts`,
//! `lease_until`, the result columns, `seq` (a `bigserial`, the per-device ordering key),
//! the delivery settings `device_type` and `timeout_ms` (migration 2) and the lease's
//! fencing token `lease_token` and holder `lease_owner` (migration 3), and the party that
//! queued the command, `queued_by` (migration 4); migration 5 adds the retention's index over
//! the final commands by TTL, which `purge` reads to delete the commands whose
//! [retention](StoreConfig::retention) is over, in bounded batches. Each migration upgrades a table of the one
//! before in place; rows written before migration 3 read as never leased (token 0, no
//! owner), and a lease an older version took can only lapse; rows written before migration
//! 4 read as queued by the backend.
//! The table lives in a schema of the caller's choice ([`PostgresOptions::schema`]) and is
//! created or migrated at [`PostgresStore::open`] (or [`PostgresStore::from_pool`], for a
//! service that already has a `PgPool`: `open` builds a pool and calls it, so both take the
//! same path) from SQL embedded in this crate: each
//! migration runs once, in a transaction, under an advisory lock, and is recorded in
//! `bridge_queue_migrations` (embedded rather than `sqlx::migrate!`, which needs the sqlx
//! macros this workspace does not build).
//!
//! Every statement runs in a transaction that begins with `SET LOCAL search_path` to the
//! schema, so the store finds its tables in a pool whose connections have another
//! `search_path` (a caller's pool), and hands the connections back unchanged.
//!
//! # Concurrency
//!
//! Every operation that changes a device's commands as a whole (enqueue, `lease_next`,
//! `drain_pending`, confirm, cancel, housekeeping) first takes a transaction-scoped advisory
//! lock on the device (`pg_advisory_xact_lock`), so the cap check, dedup, expiry and the
//! one-lease-per-device rule of one device are one step even across processes.
//! `lease_next`, under that lock, recovers the device's lapsed leases and then leases the
//! first `pending` command until now plus its `timeout_ms` plus the grace, in one statement
//! that does nothing while a command of the device has a lease deadline; as every lease is taken under the lock and the statement reads
//! what the lease before it committed, two processes never both win (row locks such as
//! `FOR UPDATE SKIP LOCKED` alone would not do: they keep two leases off one *row*, not off
//! one *device*). `complete`, `release` and `reclaim` only ever end leases, so they need no
//! device lock: each is one `UPDATE` whose `WHERE` is the fence (`delivering`, same token and
//! owner; for `reclaim`, same owner and a deadline), and PostgreSQL re-checks it on a row
//! another transaction changed meanwhile, so a lease is ended once. Dedup is also enforced
//! by a partial unique index on `(device_id, command_type, queued_by)` over `pending` and
//! `awaiting_confirmation` (migration 4; the party is part of the dedup key); `open_counts` is one `GROUP BY status` that reads only a partial index
//! over the open commands (one on `status` is kept for it; the planner may also pick the
//! per-device one), and `reclaim` is served by a partial index on `lease_owner` over the
//! leased commands. No statement reads the history of final commands (each names its
//! device or its command, or reads a partial index over open commands):
//! `tests/query_plans_postgres.rs` checks the generic plan of every statement the
//! conformance suite sends.
//!
//! Time (TTLs, lease deadlines, retention) is PostgreSQL's own clock (`clock_timestamp()`,
//! sampled every minute and advanced on the store's [`Clock`](crate::Clock) in between; see
//! `BackendTime`): every server sharing the database reads the same time, so one whose
//! clock is off cannot take over another's live lease, nor keep its own lapsed one.
//!
//! Every operation is bounded by [`PostgresOptions::operation_timeout`]: a database that
//! does not answer in time is [`StoreError::Unavailable`], and the pool reconnects by
//! itself once the database is back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, DeviceType, Hops, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor as _, Postgres, Row, Transaction};

use crate::clock::BackendTime;
use crate::error::{InvalidInput, StoreError};
use crate::model::{
    Cut, Lease, LeaseToken, Leased, NewCommand, NodeId, OpenCounts, QueuedCommand, StoreConfig,
    SweepReport, expiry, grace_millis, hops_to_stored, new_command_id, parse_status,
    status_of_outcome,
};
use crate::sql::{COLUMNS, FINAL, OPEN, RawRow, into_commands, map_err, outcome_columns, to_i64};
use crate::store::Store;

const BACKEND: &str = "postgres";

/// The migrations, in order; each runs once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE bridge_queued_commands (
        seq bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        device_id text NOT NULL,
        command_type text NOT NULL,
        payload bytea NOT NULL,
        status text NOT NULL CHECK (status IN ('awaiting_confirmation', 'pending',
            'delivering', 'succeeded', 'failed', 'expired', 'cancelled')),
        requires_confirmation boolean NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        lease_until bigint,
        result_payload bytea,
        result_error text
    );
    CREATE UNIQUE INDEX bridge_queued_commands_dedup
        ON bridge_queued_commands (device_id, command_type)
        WHERE status IN ('pending', 'awaiting_confirmation');
    CREATE INDEX bridge_queued_commands_open
        ON bridge_queued_commands (device_id, seq)
        WHERE status IN ('pending', 'awaiting_confirmation', 'delivering');",
    ),
    // The delivery settings of a command (its device type and reply timeout). Idempotent, so
    // that a table someone already extended by hand upgrades too; rows written before read as
    // the registry's default type and the default timeout.
    (
        2,
        "ALTER TABLE bridge_queued_commands ADD COLUMN IF NOT EXISTS device_type text;
        ALTER TABLE bridge_queued_commands
            ADD COLUMN IF NOT EXISTS timeout_ms bigint NOT NULL DEFAULT 10000;",
    ),
    // Fenced leases held by named nodes, and the indexes of `open_counts` and `reclaim`.
    // Idempotent like migration 2; rows written before read as never leased.
    (
        3,
        "ALTER TABLE bridge_queued_commands
            ADD COLUMN IF NOT EXISTS lease_token bigint NOT NULL DEFAULT 0;
        ALTER TABLE bridge_queued_commands ADD COLUMN IF NOT EXISTS lease_owner text;
        CREATE INDEX IF NOT EXISTS bridge_queued_commands_open_status
            ON bridge_queued_commands (status)
            WHERE status IN ('pending', 'awaiting_confirmation', 'delivering');
        CREATE INDEX IF NOT EXISTS bridge_queued_commands_lease_owner
            ON bridge_queued_commands (lease_owner)
            WHERE status = 'delivering' AND lease_until IS NOT NULL;",
    ),
    // The party that queued a command, part of the dedup key (PROTOCOL.md 4.2: only the same
    // party's command is updated in place). Rows written before were all the backend's (the
    // only party that could queue then). The dedup index of migration 1 is replaced by one
    // that covers the party; idempotent like migration 2.
    (
        4,
        "ALTER TABLE bridge_queued_commands
            ADD COLUMN IF NOT EXISTS queued_by text NOT NULL DEFAULT 'backend';
        DROP INDEX IF EXISTS bridge_queued_commands_dedup;
        CREATE UNIQUE INDEX IF NOT EXISTS bridge_queued_commands_dedup_party
            ON bridge_queued_commands (device_id, command_type, queued_by)
            WHERE status IN ('pending', 'awaiting_confirmation');",
    ),
    // Retention: final commands by TTL, so that `purge` finds the ones whose retention is
    // over without reading the others. Idempotent like migration 2.
    (
        5,
        "CREATE INDEX IF NOT EXISTS bridge_queued_commands_final_expiry
            ON bridge_queued_commands (expires_at)
            WHERE status IN ('succeeded', 'failed', 'expired', 'cancelled');",
    ),
    // How far a command's latest attempt got (PROTOCOL.md 4.1, 1.1); rows written before
    // read as no stage. Idempotent like migration 2.
    (
        6,
        "ALTER TABLE bridge_queued_commands ADD COLUMN IF NOT EXISTS hops text;",
    ),
];

/// The `SET` list that ends a lease as lapsed (or reclaimed): one attempt counted, then back
/// to `pending`, or `failed` after the last attempt, or `expired` past the TTL. `now` and
/// `max` are the bind parameters of the current time and the attempt limit.
fn lapse_set(now: &str, max: &str) -> String {
    format!(
        "attempts = attempts + 1, lease_until = NULL, lease_owner = NULL,
         status = CASE WHEN expires_at <= {now} THEN 'expired'
                       WHEN attempts + 1 >= {max} THEN 'failed'
                       ELSE 'pending' END"
    )
}

/// Where and how to open a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The connection URL, e.g. `postgres://postgres@127.0.0.1:5432/bridge`.
    pub url: String,
    /// The schema holding the store's tables (created if missing): lower-case letters,
    /// digits and `_`, starting with a letter or `_`; default `public`.
    pub schema: String,
    /// Most connections the pool opens; default 8.
    pub max_connections: u32,
    /// Longest any one operation may take, waiting for a connection included, before it is
    /// [`StoreError::Unavailable`]; default 5 s.
    pub operation_timeout: Duration,
    /// Read the time from PostgreSQL's clock (`clock_timestamp()`, sampled every minute and
    /// advanced on the [`StoreConfig`]'s clock in between) rather than from the
    /// `StoreConfig`'s clock alone; default `true`. Every server sharing the database then
    /// reads the same time, so one whose clock is off cannot take over another's live
    /// lease. Turn it off only to run the store on a test's virtual clock, where exact
    /// times are checked.
    pub backend_clock: bool,
}

impl PostgresOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "public".to_owned(),
            max_connections: 8,
            operation_timeout: Duration::from_secs(5),
            backend_clock: true,
        }
    }

    /// The same options, reading the time from PostgreSQL's clock (`true`, the default) or
    /// from the [`StoreConfig`]'s clock alone; see the field of the same name.
    pub fn with_backend_clock(mut self, backend_clock: bool) -> Self {
        self.backend_clock = backend_clock;
        self
    }

    /// The same options with another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
}

/// A [`Store`] in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    config: StoreConfig,
    timeout: Duration,
    /// The database's clock, sampled ([`BackendTime`]): every time the store reads is
    /// PostgreSQL's, not this process's; `None`: the `StoreConfig`'s clock alone.
    time: Option<Arc<BackendTime>>,
    /// `BEGIN` followed by `SET LOCAL search_path` to the store's schema: every statement
    /// runs in a transaction that starts with it, so the store finds its tables whatever
    /// the pool's own `search_path` (a pool handed over by [`PostgresStore::from_pool`]
    /// keeps its owner's), and the setting ends with the transaction, leaving the pool's
    /// connections as they were.
    begin_sql: String,
}

fn err(e: sqlx::Error) -> StoreError {
    map_err(BACKEND, e)
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

/// Refuses a schema name [`valid_schema`] does not accept (it is quoted into SQL).
fn check_schema(schema: &str) -> Result<(), StoreError> {
    if valid_schema(schema) {
        Ok(())
    } else {
        Err(
            InvalidInput::Value(bridge_protocol::ValueError::ForbiddenChar {
                what: "schema",
                allowed: "lower-case letters, digits and _ (63 at most)",
            })
            .into(),
        )
    }
}

fn raw(row: &PgRow) -> Result<RawRow, sqlx::Error> {
    Ok(RawRow {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        device_id: row.try_get("device_id")?,
        command_type: row.try_get("command_type")?,
        payload: row.try_get("payload")?,
        status: row.try_get("status")?,
        requires_confirmation: row.try_get("requires_confirmation")?,
        attempts: i64::from(row.try_get::<i32, _>("attempts")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        lease_until: row.try_get("lease_until")?,
        result_payload: row.try_get("result_payload")?,
        result_error: row.try_get("result_error")?,
        device_type: row.try_get("device_type")?,
        timeout_ms: row.try_get("timeout_ms")?,
        lease_token: row.try_get("lease_token")?,
        lease_owner: row.try_get("lease_owner")?,
        queued_by: row.try_get("queued_by")?,
        hops: row.try_get("hops")?,
    })
}

fn decode(rows: &[PgRow]) -> Result<Vec<QueuedCommand>, StoreError> {
    let raw = rows
        .iter()
        .map(raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    into_commands(raw, BACKEND)
}

fn decode_one(row: &PgRow) -> Result<QueuedCommand, StoreError> {
    raw(row).map_err(err)?.into_command(BACKEND)
}

/// Decodes rows just leased to `owner`, in delivery order, with their leases.
fn decode_leased(rows: &[PgRow], owner: &NodeId) -> Result<Vec<Leased>, StoreError> {
    let mut leased = rows
        .iter()
        .map(|row| {
            let raw = raw(row).map_err(err)?;
            let (seq, token) = (raw.seq, raw.lease_token);
            let token = u64::try_from(token)
                .map_err(|_| StoreError::backend(BACKEND, "stored lease token is invalid"))?;
            let command = raw.into_command(BACKEND)?;
            let lease = Lease {
                id: command.id.clone(),
                token: LeaseToken::from_u64(token),
                owner: owner.clone(),
            };
            Ok((seq, Leased { command, lease }))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    leased.sort_by_key(|(seq, _)| *seq);
    Ok(leased.into_iter().map(|(_, l)| l).collect())
}

fn device_id(s: String) -> Result<DeviceId, StoreError> {
    DeviceId::try_from(s).map_err(|_| StoreError::backend(BACKEND, "stored device id is invalid"))
}

/// Takes the transaction-scoped lock of one device.
async fn lock_device(conn: &mut PgConnection, device: &DeviceId) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('bridge-queue/' || $1, 0))")
        .bind(device.as_str())
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// Ends expired commands and recovers lapsed leases of one device, whose lock is held.
async fn housekeep(
    conn: &mut PgConnection,
    device: &DeviceId,
    now: Timestamp,
    max_attempts: u32,
) -> Result<SweepReport, StoreError> {
    let now = now.unix_millis();
    let expired_rows = sqlx::query(&format!(
        "UPDATE bridge_queued_commands SET status = 'expired'
         WHERE device_id = $1 AND expires_at <= $2
           AND status IN ('pending', 'awaiting_confirmation')
         RETURNING {COLUMNS}"
    ))
    .bind(device.as_str())
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let lapsed_rows = sqlx::query(&format!(
        "UPDATE bridge_queued_commands SET {}
         WHERE device_id = $1 AND status = 'delivering' AND lease_until <= $2
         RETURNING {COLUMNS}",
        lapse_set("$2", "$3")
    ))
    .bind(device.as_str())
    .bind(now)
    .bind(i64::from(max_attempts))
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    let mut report = SweepReport::default();
    let mut expired = Vec::new();
    for row in expired_rows.iter().chain(&lapsed_rows) {
        let raw = raw(row).map_err(err)?;
        let seq = raw.seq;
        let command = raw.into_command(BACKEND)?;
        match command.status {
            CommandStatus::Expired => expired.push((seq, command)),
            CommandStatus::Failed => report.failed += 1,
            _ => report.recovered += 1,
        }
    }
    report.expired = u64::try_from(expired.len()).unwrap_or(u64::MAX);
    expired.sort_by_key(|(seq, _)| *seq);
    report.expired_commands = expired
        .into_iter()
        .map(|(_, command)| command)
        .take(SweepReport::MAX_EXPIRED_COMMANDS)
        .collect();
    Ok(report)
}

async fn device_of(conn: &mut PgConnection, id: &CommandId) -> Result<DeviceId, StoreError> {
    let device: Option<String> =
        sqlx::query_scalar("SELECT device_id FROM bridge_queued_commands WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
    device_id(device.ok_or_else(|| StoreError::NotFound { id: id.clone() })?)
}

async fn fetch_for_update(
    conn: &mut PgConnection,
    id: &CommandId,
) -> Result<QueuedCommand, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM bridge_queued_commands WHERE id = $1 FOR UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?
    .ok_or_else(|| StoreError::NotFound { id: id.clone() })?;
    decode_one(&row)
}

/// Creates the schema if needed and runs the migrations not yet applied.
async fn migrate(pool: PgPool, schema: String) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('bridge-queue/migrations', 0))")
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    // Create the schema only when missing: CREATE SCHEMA checks the CREATE privilege on the
    // database even with IF NOT EXISTS, which a least-privileged user may not have.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
    if !exists {
        let create = format!("CREATE SCHEMA \"{schema}\"");
        tx.execute(create.as_str()).await.map_err(err)?;
    }
    // The tables below are the schema's, whatever the pool's own search_path; LOCAL ends
    // with the transaction, so the connection goes back to the pool as it came.
    let search_path = format!("SET LOCAL search_path TO \"{schema}\"");
    tx.execute(search_path.as_str()).await.map_err(err)?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS bridge_queue_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(err)?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM bridge_queue_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
    for &(version, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tracing::info!(schema, version, "applying bridge-queue migration");
        tx.execute(sql).await.map_err(err)?;
        sqlx::query("INSERT INTO bridge_queue_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

impl PostgresStore {
    /// Connects, creates the schema if needed and runs the migrations not yet applied.
    ///
    /// Builds a pool from `options` (its URL, `max_connections` and `operation_timeout` as
    /// the pool's acquire timeout) and hands it to [`PostgresStore::from_pool`], so a store
    /// opened here and one made from a caller's pool behave alike.
    pub async fn open(options: &PostgresOptions, config: StoreConfig) -> Result<Self, StoreError> {
        check_schema(&options.schema)?;
        let connect: PgConnectOptions = options.url.parse().map_err(err)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.operation_timeout)
            .connect_lazy_with(connect);
        Self::from_pool(pool, options, config).await
    }

    /// A store on a pool the caller already has: creates the schema
    /// [`PostgresOptions::schema`] if needed and runs the migrations not yet applied there,
    /// exactly as [`PostgresStore::open`] does.
    ///
    /// Of `options`, only `schema`, `operation_timeout` and `backend_clock` are read; `url` and
    /// `max_connections` are the pool's business. The pool is shared, not taken: the caller
    /// (and clones of the store) keep using it, and the store leaves its connections as it
    /// found them — its schema is set per transaction (`SET LOCAL search_path`), never on
    /// the connection. [`PostgresStore::close`] closes the pool for every user of it.
    pub async fn from_pool(
        pool: PgPool,
        options: &PostgresOptions,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        check_schema(&options.schema)?;
        let store = Self {
            pool,
            config,
            timeout: options.operation_timeout,
            time: options.backend_clock.then(Arc::default),
            begin_sql: format!("BEGIN; SET LOCAL search_path TO \"{}\"", options.schema),
        };
        store
            .bounded(migrate(store.pool.clone(), options.schema.clone()))
            .await?;
        Ok(store)
    }

    /// Closes the pool, waiting for running operations.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The time now by the database's clock ([`BackendTime`]; one round trip when a sample
    /// is due).
    async fn now(&self) -> Result<Timestamp, StoreError> {
        let Some(time) = &self.time else {
            return Ok(self.config.clock.now());
        };
        if let Some(now) = time.now(&*self.config.clock) {
            return Ok(now);
        }
        let before = self.config.clock.now();
        let backend: i64 = self
            .bounded(async {
                sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(err)
            })
            .await?;
        let after = self.config.clock.now();
        Ok(time.record(Timestamp::from_unix_millis(backend), before, after))
    }

    /// Runs `op` within the operation timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Ok(result) = tokio::time::timeout(self.timeout, op).await {
            result
        } else {
            tracing::warn!(timeout = ?self.timeout, "postgres queue operation timed out");
            Err(StoreError::Unavailable {
                backend: BACKEND,
                source: format!("no answer within {:?}", self.timeout).into(),
            })
        }
    }

    /// Begins a transaction in the store's schema (see `begin_sql`).
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with(self.begin_sql.clone())
            .await
            .map_err(err)
    }

    /// Confirms or cancels: `allowed` are the statuses it acts on, `to` the one it sets.
    async fn transition(
        &self,
        id: &CommandId,
        action: &'static str,
        allowed: &[CommandStatus],
        to: CommandStatus,
    ) -> Result<QueuedCommand, StoreError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        let device = device_of(&mut tx, id).await?;
        lock_device(&mut tx, &device).await?;
        housekeep(&mut tx, &device, now, self.config.max_attempts).await?;
        let current = fetch_for_update(&mut tx, id).await?;
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
            "UPDATE bridge_queued_commands SET status = $2 WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(to.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        decode_one(&row)
    }

    /// Runs the fenced `UPDATE` of `complete` or `release` (its `$1` the id, `$2` the token,
    /// `$3` the owner; `bind_rest` binds the others): the command as it is after, or why
    /// nothing was changed.
    async fn end_lease(
        &self,
        lease: &Lease,
        set: &str,
        bind_rest: impl for<'q> FnOnce(
            sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        )
            -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>
        + Send,
    ) -> Result<QueuedCommand, StoreError> {
        let id = &lease.id;
        // A token beyond i64 was never handed out by this store: it cannot be live.
        let Ok(token) = i64::try_from(lease.token.as_u64()) else {
            return Err(self.stale_or_not_found(id).await?);
        };
        let statement = format!(
            "UPDATE bridge_queued_commands SET {set}, lease_until = NULL, lease_owner = NULL
             WHERE id = $1 AND status = 'delivering' AND lease_token = $2 AND lease_owner = $3
             RETURNING {COLUMNS}"
        );
        let query = sqlx::query(&statement)
            .bind(id.as_str())
            .bind(token)
            .bind(lease.owner.as_str());
        let mut tx = self.begin().await?;
        let row = bind_rest(query)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        match row {
            Some(row) => decode_one(&row),
            None => Err(self.stale_or_not_found(id).await?),
        }
    }

    /// [`Store::record_hops`]: a fenced update of the `hops` column alone.
    async fn record_hops_inner(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        let id = &lease.id;
        let Ok(token) = i64::try_from(lease.token.as_u64()) else {
            return Err(self.stale_or_not_found(id).await?);
        };
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE bridge_queued_commands SET hops = $4
             WHERE id = $1 AND status = 'delivering' AND lease_token = $2 AND lease_owner = $3",
        )
        .bind(id.as_str())
        .bind(token)
        .bind(lease.owner.as_str())
        .bind(hops_to_stored(&hops))
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        tx.commit().await.map_err(err)?;
        if updated == 0 {
            return Err(self.stale_or_not_found(id).await?);
        }
        Ok(())
    }

    /// Why a fenced update changed nothing: the command is unknown, or the lease is not its
    /// live one.
    async fn stale_or_not_found(&self, id: &CommandId) -> Result<StoreError, StoreError> {
        let mut tx = self.begin().await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM bridge_queued_commands WHERE id = $1)",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(if exists {
            StoreError::StaleLease { id: id.clone() }
        } else {
            StoreError::NotFound { id: id.clone() }
        })
    }

    async fn lease_next_inner(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace_ms: i64,
    ) -> Result<Option<Leased>, StoreError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        lock_device(&mut tx, device).await?;
        housekeep(&mut tx, device, now, self.config.max_attempts).await?;
        // After housekeeping, a deadline means a live lease (the lapsed ones were just
        // recovered); drained commands have none and do not hold the device. The deadline is
        // the row's own timeout plus the grace, after now.
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands
             SET status = 'delivering', lease_token = lease_token + 1, lease_owner = $3,
                 lease_until = $2 + timeout_ms + $4
             WHERE seq = (SELECT seq FROM bridge_queued_commands
                          WHERE device_id = $1 AND status = 'pending' AND expires_at > $2
                          ORDER BY seq LIMIT 1)
               AND NOT EXISTS (SELECT 1 FROM bridge_queued_commands
                               WHERE device_id = $1 AND status = 'delivering'
                                 AND lease_until IS NOT NULL)
             RETURNING {COLUMNS}"
        ))
        .bind(device.as_str())
        .bind(now.unix_millis())
        .bind(owner.as_str())
        .bind(grace_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(decode_leased(&rows, owner)?.into_iter().next())
    }

    async fn drain_inner(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        lock_device(&mut tx, device).await?;
        housekeep(&mut tx, device, now, self.config.max_attempts).await?;
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands
             SET status = 'delivering', lease_token = lease_token + 1, lease_owner = $3,
                 lease_until = NULL
             WHERE device_id = $1 AND status = 'pending' AND expires_at > $2
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

    async fn reclaim_inner(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE bridge_queued_commands SET {}
             WHERE status = 'delivering' AND lease_until IS NOT NULL AND lease_owner = $1
             RETURNING {COLUMNS}",
            lapse_set("$2", "$3")
        ))
        .bind(owner.as_str())
        .bind(self.now().await?.unix_millis())
        .bind(i64::from(self.config.max_attempts))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        decode(&rows)
    }

    async fn open_counts_inner(&self) -> Result<OpenCounts, StoreError> {
        let mut tx = self.begin().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT status, COUNT(*) FROM bridge_queued_commands
             WHERE status IN {OPEN} GROUP BY status"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
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

    async fn enqueue_inner(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        let now = self.now().await?;
        let expires_at = expiry(now, command.ttl).unix_millis();
        let status = command.initial_status().as_str();
        let timeout_ms = i64::from(command.timeout.get());
        let mut tx = self.begin().await?;
        lock_device(&mut tx, &command.device).await?;
        housekeep(&mut tx, &command.device, now, self.config.max_attempts).await?;
        let updated: Option<String> = sqlx::query_scalar(
            "UPDATE bridge_queued_commands
             SET payload = $3, expires_at = $4, requires_confirmation = $5, status = $6,
                 device_type = $7, timeout_ms = $8
             WHERE device_id = $1 AND command_type = $2 AND queued_by = $9
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
            "SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = $1 AND status IN {OPEN}"
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
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11)",
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

    /// Runs housekeeping for one device in its own transaction.
    async fn housekeep_device(&self, device: &DeviceId) -> Result<SweepReport, StoreError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        lock_device(&mut tx, device).await?;
        let report = housekeep(&mut tx, device, now, self.config.max_attempts).await?;
        tx.commit().await.map_err(err)?;
        Ok(report)
    }

    async fn sweep_inner(&self) -> Result<SweepReport, StoreError> {
        let now = self.now().await?.unix_millis();
        let mut tx = self.begin().await?;
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT device_id FROM bridge_queued_commands
             WHERE (status IN ('pending', 'awaiting_confirmation') AND expires_at <= $1)
                OR (status = 'delivering' AND lease_until <= $1)",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        let mut total = SweepReport::default();
        for device in devices {
            let r = self.housekeep_device(&device_id(device)?).await?;
            total.merge(r);
        }
        Ok(total)
    }

    async fn list_open_inner(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bridge_queued_commands
             WHERE device_id = $1 AND status IN {OPEN} ORDER BY seq"
        ))
        .bind(device.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        decode(&rows)
    }

    async fn pending_count_inner(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let mut tx = self.begin().await?;
        let open: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM bridge_queued_commands WHERE device_id = $1 AND status IN {OPEN}"
        ))
        .bind(device.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(u32::try_from(open).unwrap_or(u32::MAX))
    }

    async fn get_inner(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.now().await?;
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bridge_queued_commands WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?
        .ok_or_else(|| StoreError::NotFound { id: id.clone() })?;
        tx.commit().await.map_err(err)?;
        let command = decode_one(&row)?;
        if self.config.retains(&command, now) {
            Ok(command)
        } else {
            Err(StoreError::NotFound { id: id.clone() })
        }
    }

    async fn purge_inner(&self, limit: usize) -> Result<u64, StoreError> {
        let cutoff = self.config.retention_cutoff(self.now().await?);
        let mut tx = self.begin().await?;
        // `SKIP LOCKED`: two servers purging at once take different rows, and a row a
        // device's transaction holds is left for the next round.
        let deleted = sqlx::query(&format!(
            "DELETE FROM bridge_queued_commands
             WHERE seq IN (SELECT seq FROM bridge_queued_commands
                           WHERE status IN {FINAL} AND expires_at <= $1
                           ORDER BY expires_at LIMIT $2
                           FOR UPDATE SKIP LOCKED)"
        ))
        .bind(cutoff.unix_millis())
        .bind(to_i64(limit))
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        tx.commit().await.map_err(err)?;
        Ok(deleted)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        self.config.check_payload(&command.payload)?;
        self.bounded(self.enqueue_inner(command)).await
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.bounded(self.transition(
            id,
            "confirm",
            &[CommandStatus::AwaitingConfirmation],
            CommandStatus::Pending,
        ))
        .await
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.bounded(self.transition(
            id,
            "cancel",
            &[CommandStatus::Pending, CommandStatus::AwaitingConfirmation],
            CommandStatus::Cancelled,
        ))
        .await
    }

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let grace_ms = grace_millis(grace)?;
        self.bounded(self.lease_next_inner(device, owner, grace_ms))
            .await
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let status = status_of_outcome(&outcome);
        let (payload, error) = outcome_columns(&outcome);
        self.bounded(self.end_lease(
            lease,
            "status = $4, attempts = attempts + 1, result_payload = $5, result_error = $6",
            move |q| q.bind(status.as_str()).bind(payload).bind(error),
        ))
        .await
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let counted: i32 = match cut {
            Cut::Sent => 1,
            Cut::NotSent => 0,
        };
        let now = self.now().await?.unix_millis();
        let max_attempts = i64::from(self.config.max_attempts);
        self.bounded(self.end_lease(
            lease,
            "attempts = attempts + $4,
             status = CASE WHEN expires_at <= $5 THEN 'expired'
                           WHEN attempts + $4 >= $6 THEN 'failed'
                           ELSE 'pending' END",
            move |q| q.bind(counted).bind(now).bind(max_attempts),
        ))
        .await
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.bounded(self.reclaim_inner(owner)).await
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        self.bounded(self.record_hops_inner(lease, hops)).await
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        self.bounded(self.drain_inner(device, owner)).await
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.bounded(self.get_inner(id)).await
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.bounded(self.list_open_inner(device)).await
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        self.bounded(self.pending_count_inner(device)).await
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        let now = self.now().await?.unix_millis();
        let devices: Vec<String> = self
            .bounded(async {
                let mut tx = self.begin().await?;
                // A device under a live lease is not due: `lease_next` would hand nothing
                // out.
                let devices = sqlx::query_scalar(
                    "SELECT DISTINCT device_id FROM bridge_queued_commands AS c
                     WHERE ((status = 'pending' AND expires_at > $1)
                            OR (status = 'delivering' AND lease_until <= $1))
                       AND NOT EXISTS (SELECT 1 FROM bridge_queued_commands AS l
                                       WHERE l.device_id = c.device_id
                                         AND l.status = 'delivering' AND l.lease_until > $1)
                     ORDER BY device_id LIMIT $2",
                )
                .bind(now)
                .bind(to_i64(limit))
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
                tx.commit().await.map_err(err)?;
                Ok(devices)
            })
            .await?;
        devices.into_iter().map(device_id).collect()
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.bounded(self.sweep_inner()).await
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.bounded(self.housekeep_device(device))
            .await
            .map(|report| report.expired_commands)
    }

    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        self.bounded(self.purge_inner(limit)).await
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        self.bounded(self.open_counts_inner()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(err)
                .map(drop)
        })
        .await
    }
}

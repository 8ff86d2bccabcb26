//! The Redis store: for deployments that already run Redis.
//!
//! Every operation is one Lua script, so it is atomic on the server: dedup, the cap, the
//! one-lease-per-device rule, lease fencing and expiry cannot interleave with another
//! client's call, whichever server process sends it. Keys, under a configurable prefix `P`:
//!
//! * `P:c:<id>` — a hash per command (device, type, payload, status, attempts, times,
//!   lease deadline, lease token and owner, result, ordering key, device type and reply
//!   timeout, and `by`, the party that queued it: `backend` or `user:<id>`). A hash written
//!   by an older version may lack the delivery settings (they read as the defaults), the
//!   lease token and owner (they read as never leased: the first lease gives token 1, and a
//!   lease of the older version can only lapse) and the party (it reads as `backend`). The
//!   dedup of `enqueue` matches the device, the type and the party.
//! * `P:d:<device>` — a sorted set of the device's non-final command ids, scored by the
//!   ordering key `P:seq` (`INCR`), so a device's commands come out in queue order and an
//!   update in place or a released command keeps its place.
//! * `P:devices` — the set of devices with non-final commands (for `due_devices` and
//!   `sweep`, which walk it chunk by chunk: one script per `SSCAN` step of about 100
//!   devices, so neither holds Redis for long however many devices there are).
//! * `P:s:<status>` — for each status that is not final (`awaiting_confirmation`,
//!   `pending`, `delivering`), the set of the ids of the commands in it. Every script that
//!   changes a status moves the id between these sets in the same step (`set_status` in the
//!   scripts' prelude), so `open_counts` is three `SCARD`s, and `reclaim` scans only the
//!   `delivering` set. Sets rather than counters, because moving an id is idempotent: a set
//!   cannot drift the way a counter would if a command's hash vanished under it.
//! * `P:version` — the layout version of the keys. [`RedisStore::open`] upgrades older keys
//!   once (one script, so atomic): version 2 filled the per-status sets from the commands
//!   already stored. Stop every server of the older version before opening the store with
//!   this one: an older server does not keep the sets.
//!
//! `lease_next` is one script: it recovers the device's lapsed leases, then refuses while a
//! command of the device has a lease deadline (after recovery, only live leases have one;
//! drained commands have none), and otherwise leases the first `pending` command until now
//! plus its `timeout` field plus the grace, adding one to its `token` field. `complete` and `release` act only when the command is `delivering`
//! with the caller's token and owner, and do not recover lapsed leases first (a lapsed lease
//! not yet recovered is still its holder's).
//!
//! * `P:final` — a sorted set of the final commands' ids, scored by their TTL's end, which
//!   `purge` reads to delete the commands whose retention is over, oldest first, a bounded
//!   number per call.
//!
//! TTL is natural: a command's hash carries a Redis expiry of its own TTL plus
//! the [retention](crate::StoreConfig::retention), renewed when it is updated; when a
//! command becomes final it leaves its device's set, joins `P:final`, and its hash expires
//! at its TTL's end plus the retention (default 7 days), by which time `purge` has deleted
//! it (the key's own expiry is a backstop; final commands of older versions, not in
//! `P:final`, vanish by it). Whether a command is still deliverable, and whether a lease lapsed, is decided against
//! Redis's own clock (`TIME`, sampled every minute and advanced on the store's
//! [`Clock`](crate::Clock) in between; see `BackendTime`), passed to every script: every
//! server sharing the Redis reads the same time, so one whose clock is off cannot take over
//! another's live lease.
//!
//! The scripts address keys they compute from the prefix, so the store targets a single
//! Redis (or a primary behind Sentinel), not Redis Cluster. Durability is Redis's own: run
//! it with AOF (`appendonly yes`) for commands to survive a Redis restart.
//!
//! A service that already has a `deadpool_redis::Pool` hands it to
//! [`RedisStore::from_pool`] instead; `open` builds a pool and calls it, so the checks and
//! the upgrade below happen on either path.
//!
//! [`RedisStore::open`] checks two server settings with `CONFIG GET`:
//!
//! * `maxmemory-policy` must be `noeviction`. Under any other policy Redis may evict a
//!   command's hash when memory runs out, and the scripts then drop the command from its
//!   device's queue without a word. `open` refuses such a Redis with
//!   [`StoreError::UnsafeServerSetting`], which says how to fix it; set
//!   [`RedisOptions::allow_eviction`] to open anyway (it is then a warning).
//! * `appendonly` `no` is a loud warning, not a refusal: queued commands are lost if Redis
//!   restarts.
//!
//! Where `CONFIG` is disabled or not permitted (some managed services), neither can be
//! checked; `open` warns so and goes on.
//!
//! Every operation is bounded by [`RedisOptions::operation_timeout`]: a Redis that does not
//! answer in time is [`StoreError::Unavailable`], and the pool reconnects by itself once
//! Redis is back.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, HexPayload, Hops, TimeoutMs,
    Timestamp,
};
use deadpool_redis::redis::{self, RetryMethod, Script, Value};
use deadpool_redis::{Config, Pool, PoolError, Runtime};

use crate::clock::BackendTime;
use crate::error::StoreError;
use crate::model::{
    Cut, Lease, LeaseToken, Leased, NewCommand, NodeId, OpenCounts, Party, QueuedCommand,
    StoreConfig, SweepReport, expiry, grace_millis, hops_from_stored, hops_to_stored,
    new_command_id, parse_status,
};
use crate::store::Store;

const BACKEND: &str = "redis";

/// Devices per step of the walks over every device (`due_devices`, `sweep`): each step is
/// one script over about this many devices (`SSCAN … COUNT`), so no call holds Redis for
/// long however many devices there are.
const CHUNK: usize = 100;
const PRELUDE: &str = include_str!("redis.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local dev, typ, payload, conf, status = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local expires, max_open, new_id, open_ttl = ARGV[10], tonumber(ARGV[11]), ARGV[12], ARGV[13]
local dtype, timeout, by = ARGV[14], ARGV[15], ARGV[16]
housekeep(dev)
local ids = redis.call('ZRANGE', dkey(dev), 0, -1)
-- The dedup key is (device, type, party): only the same party's command is updated.
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ckey(id), 'type', 'status', 'by')
  if h[1] == typ and queued_by(h[3]) == by
    and (h[2] == 'pending' or h[2] == 'awaiting_confirmation') then
    redis.call('HSET', ckey(id), 'payload', payload, 'expires', expires, 'conf', conf,
      'dtype', dtype, 'timeout', timeout)
    set_status(id, h[2], status)
    redis.call('PEXPIRE', ckey(id), open_ttl)
    return {'updated', id}
  end
end
if #ids >= max_open then return {'full'} end
local seq = redis.call('INCR', P .. ':seq')
redis.call('HSET', ckey(new_id), 'id', new_id, 'dev', dev, 'type', typ, 'payload', payload,
  'conf', conf, 'attempts', 0, 'created', ARGV[2], 'expires', expires,
  'lease', '', 'rk', '', 'rv', '', 'seq', seq, 'dtype', dtype, 'timeout', timeout,
  'token', 0, 'owner', '', 'by', by)
set_status(new_id, nil, status)
redis.call('PEXPIRE', ckey(new_id), open_ttl)
redis.call('ZADD', dkey(dev), seq, new_id)
redis.call('SADD', DEVICES, dev)
return {'inserted', new_id}
",
    )
});

/// Leases the device's first `pending` command until now plus its own timeout plus the
/// grace, unless a command of the device is under a live lease: after `housekeep`, every
/// `delivering` command with a deadline holds a live lease (the lapsed ones were just
/// recovered), and drained ones (no deadline) do not count.
static LEASE_NEXT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local dev, owner, grace = ARGV[5], ARGV[6], tonumber(ARGV[7])
housekeep(dev)
local first = nil
for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
  local h = redis.call('HMGET', ckey(id), 'status', 'expires', 'lease')
  if h[1] == 'delivering' and h[3] and h[3] ~= '' then return {'busy'} end
  if not first and h[1] == 'pending' and tonumber(h[2]) > NOW then first = id end
end
if not first then return {'none'} end
-- Hashes written before the timeout was kept read as the default timeout.
local timeout = tonumber(redis.call('HGET', ckey(first), 'timeout') or '10000')
redis.call('HINCRBY', ckey(first), 'token', 1)
redis.call('HSET', ckey(first), 'lease', string.format('%d', NOW + timeout + grace),
  'owner', owner)
set_status(first, 'pending', 'delivering')
return {'ok', record(first)}
",
    )
});

/// Hands out every deliverable command of the device for good (no deadline).
static DRAIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local dev, owner = ARGV[5], ARGV[6]
housekeep(dev)
local out, n = {}, 0
for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
  local h = redis.call('HMGET', ckey(id), 'status', 'expires')
  if h[1] == 'pending' and tonumber(h[2]) > NOW then
    redis.call('HINCRBY', ckey(id), 'token', 1)
    redis.call('HSET', ckey(id), 'lease', '', 'owner', owner)
    set_status(id, 'pending', 'delivering')
    n = n + 1
    out[n] = record(id)
  end
end
return out
",
    )
});

static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local id, action = ARGV[5], ARGV[6]
local k = ckey(id)
local dev = redis.call('HGET', k, 'dev')
if not dev then return {'notfound'} end
housekeep(dev)
local status = redis.call('HGET', k, 'status')
local new = nil
if action == 'confirm' then
  if status ~= 'awaiting_confirmation' then return {'conflict', status} end
  new = 'pending'
else
  if status ~= 'pending' and status ~= 'awaiting_confirmation' then
    return {'conflict', status}
  end
  new = 'cancelled'
end
set_status(id, status, new)
if new ~= 'pending' then close(id, dev) end
return {'ok', record(id)}
",
    )
});

/// Ends a lease, fenced: only the live lease (same token and owner, still `delivering`; a
/// lapsed one not yet recovered included) may, so this script does not recover first.
static END_LEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local id, token, owner, action, rk, rv = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local k = ckey(id)
local h = redis.call('HMGET', k, 'dev', 'status', 'token', 'owner', 'attempts', 'expires')
if not h[1] then return {'notfound'} end
if h[2] ~= 'delivering' or h[3] ~= token or h[4] ~= owner then return {'stale'} end
local attempts = tonumber(h[5])
local new
if action == 'complete' then
  attempts = attempts + 1
  if rk == 'p' then new = 'succeeded' else new = 'failed' end
else
  if action == 'sent' then attempts = attempts + 1 end
  new = after_cut(attempts, h[6])
end
redis.call('HSET', k, 'attempts', attempts, 'lease', '', 'owner', '', 'rk', rk, 'rv', rv)
set_status(id, 'delivering', new)
if new ~= 'pending' then close(id, h[1]) end
return {'ok', record(id)}
",
    )
});

/// Records how far the delivery under a lease got, fenced like `END_LEASE`.
static RECORD_HOPS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local id, token, owner, hops = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local k = ckey(id)
local h = redis.call('HMGET', k, 'dev', 'status', 'token', 'owner')
if not h[1] then return {'notfound'} end
if h[2] ~= 'delivering' or h[3] ~= token or h[4] ~= owner then return {'stale'} end
redis.call('HSET', k, 'hops', hops)
return {'ok', record(id)}
",
    )
});

/// Ends every lease with a deadline held by the owner as lapsed. The `delivering` set is
/// what is scanned: the commands under a lease, of every device, and no others.
static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local owner = ARGV[5]
local out, n = {}, 0
for _, id in ipairs(redis.call('SMEMBERS', skey('delivering'))) do
  local h = redis.call('HMGET', ckey(id), 'dev', 'status', 'lease', 'owner')
  if not h[1] then
    for status in pairs(OPEN) do redis.call('SREM', skey(status), id) end
  elseif h[2] == 'delivering' and h[3] and h[3] ~= '' and h[4] == owner then
    lapse(id, h[1])
    n = n + 1
    out[n] = record(id)
  end
end
return out
",
    )
});

/// The open commands per status, from the per-status sets.
static OPEN_COUNTS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
return {redis.call('SCARD', skey('awaiting_confirmation')), redis.call('SCARD', skey('pending')),
  redis.call('SCARD', skey('delivering'))}
",
    )
});

/// Brings the keys of an older version up to this one, once (`P:version`): version 2 added
/// the per-status sets, filled here from the commands already stored.
static UPGRADE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local version = tonumber(redis.call('GET', P .. ':version') or '1')
if version >= 2 then return version end
for _, dev in ipairs(redis.call('SMEMBERS', DEVICES)) do
  for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
    local status = redis.call('HGET', ckey(id), 'status')
    if status and OPEN[status] then redis.call('SADD', skey(status), id) end
  end
end
redis.call('SET', P .. ':version', 2)
return 2
",
    )
});

// The reads below change nothing (no housekeeping): they report what is stored. A
// device's set may still name a command whose hash expired (an open command long past its
// TTL that no write of its device ended); it is skipped, and left for the next write.

static GET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local id = ARGV[5]
if redis.call('EXISTS', ckey(id)) == 0 then return {'notfound'} end
return {'ok', record(id)}
",
    )
});

static LIST_OPEN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local out, n = {}, 0
for _, id in ipairs(redis.call('ZRANGE', dkey(ARGV[5]), 0, -1)) do
  if redis.call('EXISTS', ckey(id)) == 1 then
    n = n + 1
    out[n] = record(id)
  end
end
return out
",
    )
});

static COUNT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local n = 0
for _, id in ipairs(redis.call('ZRANGE', dkey(ARGV[5]), 0, -1)) do
  n = n + redis.call('EXISTS', ckey(id))
end
return n
",
    )
});

/// One chunk of `due_devices`: the devices of one `SSCAN` step of `P:devices` from cursor
/// ARGV[5] (about ARGV[6] of them) that have a command to hand out now and no live lease
/// (`lease_next` would hand nothing out under one); returns the next cursor and those
/// devices. The store walks the set chunk by chunk, so no call reads every device.
static DUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local step = redis.call('SSCAN', DEVICES, ARGV[5], 'COUNT', tonumber(ARGV[6]))
local out, n = {}, 0
for _, dev in ipairs(step[2]) do
  local due, held = false, false
  for _, id in ipairs(redis.call('ZRANGE', dkey(dev), 0, -1)) do
    local h = redis.call('HMGET', ckey(id), 'status', 'expires', 'lease')
    if h[1] == 'pending' and tonumber(h[2]) > NOW then
      due = true
    elseif h[1] == 'delivering' and h[3] and h[3] ~= '' then
      if tonumber(h[3]) <= NOW then due = true else held = true end
    end
  end
  if due and not held then
    n = n + 1
    out[n] = dev
  end
end
return {step[1], out}
",
    )
});

/// One chunk of `sweep`: housekeeping of the devices of one `SSCAN` step of `P:devices`
/// from cursor ARGV[5] (about ARGV[6] of them), returning at most ARGV[7] expired records;
/// returns the next cursor, the counts and the records.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local step = redis.call('SSCAN', DEVICES, ARGV[5], 'COUNT', tonumber(ARGV[6]))
local e, r, f = 0, 0, 0
local max_records, records, n = tonumber(ARGV[7]), {}, 0
for _, dev in ipairs(step[2]) do
  local de, dr, df, ids = housekeep(dev)
  e, r, f = e + de, r + dr, f + df
  for _, id in ipairs(ids) do
    if n < max_records then
      n = n + 1
      records[n] = record(id)
    end
  end
end
return {step[1], e, r, f, records}
",
    )
});

/// Deletes up to ARGV[6] final commands whose TTL ended at or before ARGV[5] (the
/// retention's cutoff), oldest TTL first; returns how many.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local ids = redis.call('ZRANGEBYSCORE', FINAL, '-inf', tonumber(ARGV[5]), 'LIMIT', 0,
  tonumber(ARGV[6]))
for _, id in ipairs(ids) do
  redis.call('DEL', ckey(id))
  redis.call('ZREM', FINAL, id)
end
return #ids
",
    )
});

static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local _, _, _, ids = housekeep(ARGV[5])
local out = {}
for i, id in ipairs(ids) do out[i] = record(id) end
return out
",
    )
});

/// Where and how to open a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The connection URL, e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key the store writes; default `bridge-queue`.
    pub prefix: String,
    /// Most connections in the pool; default 8.
    pub max_connections: usize,
    /// Longest any one operation may take, getting a connection included, before it is
    /// [`StoreError::Unavailable`]; default 5 s.
    pub operation_timeout: Duration,
    /// Open even on a Redis whose `maxmemory-policy` is not `noeviction` (so it may evict
    /// a command's hash, and the command vanishes from its device's queue); default
    /// `false`, and [`RedisStore::open`] refuses such a Redis.
    pub allow_eviction: bool,
    /// Read the time from Redis's clock (`TIME`, sampled every minute and advanced on the
    /// [`StoreConfig`]'s clock in between) rather than from the `StoreConfig`'s clock
    /// alone; default `true`. Every server sharing the Redis then reads the same time, so
    /// one whose clock is off cannot take over another's live lease. Turn it off only to
    /// run the store on a test's virtual clock, where exact times are checked.
    pub backend_clock: bool,
}

impl RedisOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "bridge-queue".to_owned(),
            max_connections: 8,
            operation_timeout: Duration::from_secs(5),
            allow_eviction: false,
            backend_clock: true,
        }
    }

    /// The same options, reading the time from Redis's clock (`true`, the default) or from
    /// the [`StoreConfig`]'s clock alone; see the field of the same name.
    pub fn with_backend_clock(mut self, backend_clock: bool) -> Self {
        self.backend_clock = backend_clock;
        self
    }

    /// The same options, opening (`true`) or not (`false`, the default) on a Redis that may
    /// evict keys; see the field of the same name.
    pub fn allow_eviction(mut self, allow: bool) -> Self {
        self.allow_eviction = allow;
        self
    }

    /// The same options with another key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// A [`Store`] in Redis.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    config: StoreConfig,
    prefix: String,
    timeout: Duration,
    retention_ms: i64,
    /// Redis's clock, sampled ([`BackendTime`]): every time the store reads is Redis's
    /// (`TIME`), not this process's; `None`: the `StoreConfig`'s clock alone.
    time: Option<Arc<BackendTime>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(source: impl Into<crate::error::BoxError>) -> StoreError {
    let source = source.into();
    tracing::warn!(error = %source, "redis queue backend unavailable");
    StoreError::Unavailable {
        backend: BACKEND,
        source,
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
    {
        unavailable(e)
    } else {
        StoreError::Backend {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => redis_err(e),
        other => unavailable(other),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::backend(BACKEND, format!("unexpected {what} from a queue script"))
}

fn bytes(v: &Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        _ => Err(corrupt("value")),
    }
}

fn text(v: &Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?).map_err(|_| corrupt("text"))
}

fn number(v: &Value) -> Result<i64, StoreError> {
    text(v)?.parse().map_err(|_| corrupt("number"))
}

fn array(v: &Value) -> Result<&[Value], StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(corrupt("reply")),
    }
}

/// Decodes one `record(id)` reply (the hash fields in the order of `FIELDS`) into the
/// command and its lease token (0 when it was never leased, or in a hash written before
/// leases were fenced).
fn stored(v: &Value) -> Result<(QueuedCommand, u64), StoreError> {
    let f = array(v)?;
    if f.len() != 19 {
        return Err(corrupt("record"));
    }
    let lease = text(&f[9])?;
    let result = text(&f[10])?;
    let outcome = match result.as_str() {
        "" => None,
        "p" => Some(CommandOutcome::Payload(HexPayload::from_bytes(bytes(
            &f[11],
        )?))),
        "e" => Some(CommandOutcome::Error(
            DeviceErrorCode::try_from(text(&f[11])?).map_err(|_| corrupt("error code"))?,
        )),
        _ => return Err(corrupt("result kind")),
    };
    // Hashes written before leases were fenced have neither a token nor an owner.
    let token = match &f[15] {
        Value::Nil => 0,
        v => u64::try_from(number(v)?).map_err(|_| corrupt("lease token"))?,
    };
    let lease_owner = match &f[16] {
        Value::Nil => None,
        v => Some(text(v)?)
            .filter(|o| !o.is_empty())
            .map(|o| NodeId::new(&o))
            .transpose()
            .map_err(|_| corrupt("lease owner"))?,
    };
    let command = QueuedCommand {
        id: CommandId::try_from(text(&f[0])?).map_err(|_| corrupt("id"))?,
        device: DeviceId::try_from(text(&f[1])?).map_err(|_| corrupt("device id"))?,
        command_type: CommandType::try_from(text(&f[2])?).map_err(|_| corrupt("type"))?,
        payload: HexPayload::from_bytes(bytes(&f[3])?),
        status: parse_status(&text(&f[4])?).ok_or_else(|| corrupt("status"))?,
        requires_confirmation: text(&f[5])? == "1",
        attempts: u32::try_from(number(&f[6])?).map_err(|_| corrupt("attempts"))?,
        created_at: Timestamp::from_unix_millis(number(&f[7])?),
        expires_at: Timestamp::from_unix_millis(number(&f[8])?),
        lease_deadline: if lease.is_empty() {
            None
        } else {
            Some(Timestamp::from_unix_millis(
                lease.parse().map_err(|_| corrupt("lease"))?,
            ))
        },
        lease_owner,
        // Commands stored before the delivery settings were kept have neither field.
        device_type: match &f[13] {
            Value::Nil => None,
            v => Some(text(v)?)
                .filter(|t| !t.is_empty())
                .map(DeviceType::try_from)
                .transpose()
                .map_err(|_| corrupt("device type"))?,
        },
        timeout: match &f[14] {
            Value::Nil => TimeoutMs::DEFAULT,
            v => u64::try_from(number(v)?)
                .ok()
                .and_then(|ms| TimeoutMs::new(ms).ok())
                .ok_or_else(|| corrupt("timeout"))?,
        },
        // Commands stored before the party was kept were the backend's.
        queued_by: match &f[17] {
            Value::Nil => Party::Backend,
            v => Party::from_stored(&text(v)?).ok_or_else(|| corrupt("party"))?,
        },
        outcome,
        // Missing until an attempt recorded it (and in hashes written before it was kept).
        hops: match &f[18] {
            Value::Nil => Hops::NONE,
            v => match text(v)?.as_str() {
                "" => Hops::NONE,
                stored => hops_from_stored(stored).ok_or_else(|| corrupt("hops"))?,
            },
        },
    };
    Ok((command, token))
}

/// Decodes one `record(id)` reply into the command.
fn command(v: &Value) -> Result<QueuedCommand, StoreError> {
    stored(v).map(|(command, _)| command)
}

fn commands(v: &Value) -> Result<Vec<QueuedCommand>, StoreError> {
    array(v)?.iter().map(command).collect()
}

/// Decodes one `record(id)` reply of a command just leased to `owner`.
fn leased(v: &Value, owner: &NodeId) -> Result<Leased, StoreError> {
    let (command, token) = stored(v)?;
    Ok(Leased {
        lease: Lease {
            id: command.id.clone(),
            token: LeaseToken::from_u64(token),
            owner: owner.clone(),
        },
        command,
    })
}

/// Decodes the `{tag, ...}` reply of a script that answers one command.
fn one(v: &Value, id: &CommandId, action: &'static str) -> Result<QueuedCommand, StoreError> {
    let items = array(v)?;
    let tag = items.first().map(text).transpose()?.unwrap_or_default();
    match (tag.as_str(), items.get(1)) {
        ("ok", Some(record)) => command(record),
        ("notfound", _) => Err(StoreError::NotFound { id: id.clone() }),
        ("stale", _) => Err(StoreError::StaleLease { id: id.clone() }),
        ("conflict", Some(status)) => Err(StoreError::Conflict {
            id: id.clone(),
            action,
            status: parse_status(&text(status)?).ok_or_else(|| corrupt("status"))?,
        }),
        _ => Err(corrupt("reply")),
    }
}

impl RedisStore {
    /// Creates the connection pool, checks that Redis answers and brings keys written by an
    /// older version up to this one (once; see the module docs).
    pub async fn open(options: &RedisOptions, config: StoreConfig) -> Result<Self, StoreError> {
        let timeout = options.operation_timeout;
        let pool = Config::from_url(options.url.clone())
            .builder()
            .map_err(|e| StoreError::backend(BACKEND, format!("bad Redis configuration: {e}")))?
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::backend(BACKEND, format!("cannot build the pool: {e}")))?;
        Self::from_pool(pool, options, config).await
    }

    /// A store on a pool the caller already has: checks that Redis answers, checks its
    /// settings and brings keys written by an older version up to this one, exactly as
    /// [`RedisStore::open`] does (a Redis that may evict keys is refused unless
    /// [`RedisOptions::allow_eviction`]).
    ///
    /// Of `options`, `prefix`, `operation_timeout` (every operation, getting a connection
    /// included), `allow_eviction` and `backend_clock` are read; `url` and
    /// `max_connections` are the pool's business, and so are its own wait, create and
    /// recycle timeouts. The pool is shared, not taken: the caller (and clones of the store)
    /// keep using it, and the store writes only keys under its prefix.
    pub async fn from_pool(
        pool: Pool,
        options: &RedisOptions,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let store = Self {
            pool,
            prefix: options.prefix.clone(),
            timeout: options.operation_timeout,
            retention_ms: i64::try_from(config.retention.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            config,
            time: options.backend_clock.then(Arc::default),
        };
        store.ping().await?;
        store.check_settings(options.allow_eviction).await?;
        store.run(&UPGRADE, &[]).await?;
        Ok(store)
    }

    /// Reads one server setting with `CONFIG GET`: `Ok(None)` when the server has no such
    /// setting, `Ok(Err(why))` when it refused (CONFIG disabled or not permitted), and
    /// a lost connection is `Unavailable`.
    async fn config_get(&self, name: &str) -> Result<Result<Option<String>, String>, StoreError> {
        self.bounded(async {
            let mut conn = self.pool.get().await.map_err(pool_err)?;
            match redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<std::collections::HashMap<String, String>>(&mut *conn)
                .await
            {
                Ok(mut settings) => Ok(Ok(settings.remove(name))),
                Err(e) => match redis_err(e) {
                    StoreError::Backend { source, .. } => Ok(Err(source.to_string())),
                    other => Err(other),
                },
            }
        })
        .await
    }

    /// Checks the settings that decide whether Redis may lose queued commands (see the
    /// module docs): refuses a `maxmemory-policy` other than `noeviction` unless
    /// `allow_eviction`, warns when `appendonly` is `no` or the settings cannot be read.
    async fn check_settings(&self, allow_eviction: bool) -> Result<(), StoreError> {
        match self.config_get("maxmemory-policy").await? {
            Ok(Some(policy)) if policy != "noeviction" => {
                if allow_eviction {
                    tracing::warn!(
                        maxmemory_policy = %policy,
                        "Redis may evict keys: a queued command whose hash is evicted vanishes \
                         from its device's queue without a word (allowed by allow_eviction)"
                    );
                } else {
                    return Err(StoreError::UnsafeServerSetting {
                        backend: BACKEND,
                        setting: "maxmemory-policy",
                        value: policy,
                        why: "Redis may evict a queued command's hash when it runs out of \
                              memory, and the command vanishes from its device's queue without \
                              a word",
                        fix: "set `maxmemory-policy noeviction` (then a full Redis refuses \
                              writes, which the store reports as errors), or use a Redis of its \
                              own for the queue; to accept the loss, open with \
                              RedisOptions::allow_eviction(true)",
                    });
                }
            }
            Ok(_) => {}
            Err(why) => tracing::warn!(
                error = %why,
                "could not check Redis's maxmemory-policy (CONFIG GET refused): if it is not \
                 noeviction, Redis may evict queued commands without a word"
            ),
        }
        match self.config_get("appendonly").await? {
            Ok(Some(aof)) if aof == "no" => tracing::warn!(
                "Redis runs with appendonly no: queued commands are LOST if Redis restarts; \
                 set `appendonly yes` for them to survive"
            ),
            Ok(_) => {}
            Err(why) => tracing::warn!(
                error = %why,
                "could not check Redis's appendonly (CONFIG GET refused): without \
                 `appendonly yes`, queued commands are lost if Redis restarts"
            ),
        }
        Ok(())
    }

    /// Runs `op` within the operation timeout.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Ok(result) = tokio::time::timeout(self.timeout, op).await {
            result
        } else {
            Err(unavailable(format!("no answer within {:?}", self.timeout)))
        }
    }

    /// The time now by Redis's clock ([`BackendTime`]; one `TIME` when a sample is due).
    async fn now(&self) -> Result<Timestamp, StoreError> {
        let Some(time) = &self.time else {
            return Ok(self.config.clock.now());
        };
        if let Some(now) = time.now(&*self.config.clock) {
            return Ok(now);
        }
        let before = self.config.clock.now();
        let (secs, micros): (i64, i64) = self
            .bounded(async {
                let mut conn = self.pool.get().await.map_err(pool_err)?;
                redis::cmd("TIME")
                    .query_async::<(i64, i64)>(&mut *conn)
                    .await
                    .map_err(redis_err)
            })
            .await?;
        let after = self.config.clock.now();
        let backend = secs.saturating_mul(1000).saturating_add(micros / 1000);
        Ok(time.record(Timestamp::from_unix_millis(backend), before, after))
    }

    /// Runs a script at Redis's time now ([`run_at`](Self::run_at)).
    async fn run(&self, script: &Script, args: &[&[u8]]) -> Result<Value, StoreError> {
        let now = self.now().await?;
        self.run_at(now, script, args).await
    }

    /// Runs a script with the shared leading arguments (`now` among them) and then `args`.
    async fn run_at(
        &self,
        now: Timestamp,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let now = now.unix_millis().to_string();
        let max_attempts = self.config.max_attempts.to_string();
        let retention = self.retention_ms.to_string();
        self.bounded(async {
            let mut conn = self.pool.get().await.map_err(pool_err)?;
            let mut invocation = script.prepare_invoke();
            invocation
                .arg(self.prefix.as_bytes())
                .arg(now.as_bytes())
                .arg(max_attempts.as_bytes())
                .arg(retention.as_bytes());
            for arg in args {
                invocation.arg(*arg);
            }
            invocation
                .invoke_async::<Value>(&mut *conn)
                .await
                .map_err(redis_err)
        })
        .await
    }

    async fn transition(
        &self,
        id: &CommandId,
        action: &'static str,
    ) -> Result<QueuedCommand, StoreError> {
        let reply = self
            .run(&TRANSITION, &[id.as_str().as_bytes(), action.as_bytes()])
            .await?;
        one(&reply, id, action)
    }

    /// Ends `lease`: `action` is `complete`, `sent` or `not_sent`.
    async fn end_lease(
        &self,
        lease: &Lease,
        action: &'static str,
        outcome: Option<&CommandOutcome>,
    ) -> Result<QueuedCommand, StoreError> {
        let (kind, value): (&[u8], Vec<u8>) = match outcome {
            None => (b"", Vec::new()),
            Some(CommandOutcome::Payload(p)) => (b"p", p.as_bytes().to_vec()),
            Some(CommandOutcome::Error(e)) => (b"e", e.as_str().as_bytes().to_vec()),
        };
        let token = lease.token.as_u64().to_string();
        let reply = self
            .run(
                &END_LEASE,
                &[
                    lease.id.as_str().as_bytes(),
                    token.as_bytes(),
                    lease.owner.as_str().as_bytes(),
                    action.as_bytes(),
                    kind,
                    &value,
                ],
            )
            .await?;
        let name = if action == "complete" {
            "complete"
        } else {
            "release"
        };
        one(&reply, &lease.id, name)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        self.config.check_payload(&command.payload)?;
        let now = self.now().await?;
        let expires_at = expiry(now, command.ttl);
        let open_ttl = (expires_at.unix_millis() - now.unix_millis())
            .saturating_add(self.retention_ms)
            .to_string();
        let new_id = new_command_id()?;
        let conf: &[u8] = if command.requires_confirmation {
            b"1"
        } else {
            b"0"
        };
        let expires = expires_at.unix_millis().to_string();
        let max_open = self.config.max_open_per_device.to_string();
        let device_type = command
            .device_type
            .as_ref()
            .map_or("", DeviceType::as_str)
            .as_bytes();
        let timeout = command.timeout.get().to_string();
        let queued_by = command.queued_by.as_stored();
        let reply = self
            .run_at(
                now,
                &ENQUEUE,
                &[
                    command.device.as_str().as_bytes(),
                    command.command_type.as_str().as_bytes(),
                    command.payload.as_bytes(),
                    conf,
                    command.initial_status().as_str().as_bytes(),
                    expires.as_bytes(),
                    max_open.as_bytes(),
                    new_id.as_str().as_bytes(),
                    open_ttl.as_bytes(),
                    device_type,
                    timeout.as_bytes(),
                    queued_by.as_bytes(),
                ],
            )
            .await?;
        let items = array(&reply)?;
        let tag = items.first().map(text).transpose()?.unwrap_or_default();
        match (tag.as_str(), items.get(1)) {
            ("updated" | "inserted", Some(id)) => {
                CommandId::try_from(text(id)?).map_err(|_| corrupt("id"))
            }
            ("full", _) => Err(StoreError::QueueFull {
                device: command.device,
                max: self.config.max_open_per_device,
            }),
            _ => Err(corrupt("reply")),
        }
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.transition(id, "confirm").await
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.transition(id, "cancel").await
    }

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let grace = grace_millis(grace)?.to_string();
        let reply = self
            .run(
                &LEASE_NEXT,
                &[
                    device.as_str().as_bytes(),
                    owner.as_str().as_bytes(),
                    grace.as_bytes(),
                ],
            )
            .await?;
        let items = array(&reply)?;
        let tag = items.first().map(text).transpose()?.unwrap_or_default();
        match (tag.as_str(), items.get(1)) {
            ("ok", Some(record)) => leased(record, owner).map(Some),
            ("busy" | "none", _) => Ok(None),
            _ => Err(corrupt("reply")),
        }
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        self.end_lease(lease, "complete", Some(&outcome)).await
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let action = match cut {
            Cut::Sent => "sent",
            Cut::NotSent => "not_sent",
        };
        self.end_lease(lease, action, None).await
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        let token = lease.token.as_u64().to_string();
        let stored = hops_to_stored(&hops).unwrap_or_default();
        let reply = self
            .run(
                &RECORD_HOPS,
                &[
                    lease.id.as_str().as_bytes(),
                    token.as_bytes(),
                    lease.owner.as_str().as_bytes(),
                    stored.as_bytes(),
                ],
            )
            .await?;
        one(&reply, &lease.id, "record_hops").map(|_| ())
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let reply = self.run(&RECLAIM, &[owner.as_str().as_bytes()]).await?;
        commands(&reply)
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        let reply = self
            .run(
                &DRAIN,
                &[device.as_str().as_bytes(), owner.as_str().as_bytes()],
            )
            .await?;
        array(&reply)?
            .iter()
            .map(|record| leased(record, owner))
            .collect()
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.now().await?;
        let reply = self.run_at(now, &GET, &[id.as_str().as_bytes()]).await?;
        let command = one(&reply, id, "get")?;
        if self.config.retains(&command, now) {
            Ok(command)
        } else {
            Err(StoreError::NotFound { id: id.clone() })
        }
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let reply = self.run(&LIST_OPEN, &[device.as_str().as_bytes()]).await?;
        commands(&reply)
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let reply = self.run(&COUNT, &[device.as_str().as_bytes()]).await?;
        u32::try_from(number(&reply)?).map_err(|_| corrupt("count"))
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        // Chunk by chunk (`SSCAN`), each chunk one short script: a store with many devices
        // never holds Redis for one long call. A device the scan returns twice is listed once.
        let count = CHUNK.to_string();
        let mut cursor = "0".to_owned();
        let mut due = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let reply = self
                .run(&DUE, &[cursor.as_bytes(), count.as_bytes()])
                .await?;
            let [next, devices] = array(&reply)? else {
                return Err(corrupt("due_devices reply"));
            };
            for device in array(devices)? {
                let device = DeviceId::try_from(text(device)?).map_err(|_| corrupt("device id"))?;
                if due.len() < limit && seen.insert(device.clone()) {
                    due.push(device);
                }
            }
            cursor = text(next)?;
            if cursor == "0" || due.len() >= limit {
                break;
            }
        }
        due.sort();
        Ok(due)
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        // Chunk by chunk, as `due_devices`; each device's housekeeping is atomic on its own.
        let count = CHUNK.to_string();
        let mut cursor = "0".to_owned();
        let mut total = SweepReport::default();
        loop {
            let room = SweepReport::MAX_EXPIRED_COMMANDS
                .saturating_sub(total.expired_commands.len())
                .to_string();
            let reply = self
                .run(
                    &SWEEP,
                    &[cursor.as_bytes(), count.as_bytes(), room.as_bytes()],
                )
                .await?;
            let number = |v: &Value| number(v).map(|n| u64::try_from(n).unwrap_or(0));
            let [next, expired, recovered, failed, records] = array(&reply)? else {
                return Err(corrupt("sweep reply"));
            };
            total.merge(SweepReport {
                expired: number(expired)?,
                recovered: number(recovered)?,
                failed: number(failed)?,
                expired_commands: commands(records)?,
            });
            cursor = text(next)?;
            if cursor == "0" {
                break;
            }
        }
        Ok(total)
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let reply = self.run(&EXPIRE, &[device.as_str().as_bytes()]).await?;
        commands(&reply)
    }

    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        let cutoff = self
            .config
            .retention_cutoff(self.now().await?)
            .unix_millis()
            .to_string();
        let limit = limit.min(1 << 30).to_string();
        let reply = self
            .run(&PURGE, &[cutoff.as_bytes(), limit.as_bytes()])
            .await?;
        u64::try_from(number(&reply)?).map_err(|_| corrupt("count"))
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        let reply = self.run(&OPEN_COUNTS, &[]).await?;
        let count =
            |v: &Value| number(v).and_then(|n| u64::try_from(n).map_err(|_| corrupt("count")));
        match array(&reply)? {
            [awaiting, pending, delivering] => Ok(OpenCounts {
                awaiting_confirmation: count(awaiting)?,
                pending: count(pending)?,
                delivering: count(delivering)?,
            }),
            _ => Err(corrupt("counts reply")),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.pool.get().await.map_err(pool_err)?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map_err(redis_err)
                .map(drop)
        })
        .await
    }
}

//! Data written by the previous version of each durable backend, before commands kept their
//! device type and reply timeout: the store opens it, reads its commands with the defaults
//! (`None`, the registry's default type; the default timeout), and keeps new commands'
//! settings next to them. The data also predate fenced leases: their old commands read as
//! never leased and lease like new ones. And they predate the party in the dedup key: their
//! old commands read as the backend's (and are updated in place by the backend's), and a
//! user's command of the same type queues as a command of its own next to the backend's.

#![allow(clippy::expect_used)]

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
use bridge_protocol::{CommandType, DeviceId, DeviceType, HexPayload, TimeoutMs};
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
use bridge_queue::{NewCommand, Party, QueuedCommand, Store};

/// The id the old rows are written under.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
const OLD_ID: &str = "0123456789abcdef0123456789abcdef";

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
fn far_future_ms() -> i64 {
    bridge_protocol::Timestamp::now().unix_millis() + 3_600_000
}

/// The old command reads with the defaults; a new typed one keeps its settings and queues
/// after it.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
async fn assert_upgraded(store: &impl Store) {
    let device = DeviceId::new("lock-1").expect("device id");
    let old = store
        .get(&OLD_ID.try_into().expect("command id"))
        .await
        .expect("the old command reads");
    assert_eq!(old.device_type, None);
    assert_eq!(old.timeout, TimeoutMs::DEFAULT);
    assert_eq!(old.payload, HexPayload::from_bytes(vec![1, 2]));
    assert_eq!(old.queued_by, Party::Backend);
    // The backend's command of the old command's type updates it in place.
    let same = store
        .enqueue(NewCommand::new(
            device.clone(),
            CommandType::new("a").expect("command type"),
            HexPayload::from_bytes(vec![1, 2]),
        ))
        .await
        .expect("the backend's command updates the old one");
    assert_eq!(same.as_str(), OLD_ID);
    let new = store
        .enqueue(
            NewCommand::new(
                device.clone(),
                CommandType::new("b").expect("command type"),
                HexPayload::from_bytes(vec![3]),
            )
            .with_device_type(DeviceType::new("thermo").expect("device type"))
            .with_timeout(TimeoutMs::new(2_500).expect("timeout")),
        )
        .await
        .expect("a new command queues");
    let open: Vec<(String, Option<DeviceType>, TimeoutMs)> = store
        .list_open(&device)
        .await
        .expect("list_open")
        .iter()
        .map(|c: &QueuedCommand| (c.id.to_string(), c.device_type.clone(), c.timeout))
        .collect();
    assert_eq!(
        open,
        vec![
            (OLD_ID.to_owned(), None, TimeoutMs::DEFAULT),
            (
                new.to_string(),
                Some(DeviceType::new("thermo").expect("device type")),
                TimeoutMs::new(2_500).expect("timeout")
            ),
        ]
    );
}

/// After the upgrade, the old command leases like a new one: counted in `open_counts`, leased
/// to its node with a token that fences it, and completed once.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
async fn assert_old_command_leases(store: &impl Store) {
    use std::time::Duration;

    use bridge_protocol::http::{CommandOutcome, CommandStatus};
    use bridge_queue::{NodeId, StoreError};

    let device = DeviceId::new("lock-1").expect("device id");
    let node = NodeId::new("node-a").expect("node id");
    let counts = store.open_counts().await.expect("open_counts");
    assert_eq!((counts.pending, counts.delivering), (2, 0));
    let leased = store
        .lease_next(&device, &node, Duration::from_secs(5))
        .await
        .expect("lease_next")
        .expect("the old command is due first");
    assert_eq!(leased.command.id.as_str(), OLD_ID);
    assert_eq!(leased.command.lease_owner, Some(node.clone()));
    let counts = store.open_counts().await.expect("open_counts");
    assert_eq!((counts.pending, counts.delivering), (1, 1));
    let done = store
        .complete(
            &leased.lease,
            CommandOutcome::Payload(HexPayload::from_bytes(vec![0])),
        )
        .await
        .expect("the old command completes");
    assert_eq!((done.status, done.attempts), (CommandStatus::Succeeded, 1));
    assert!(matches!(
        store
            .complete(
                &leased.lease,
                CommandOutcome::Payload(HexPayload::from_bytes(vec![0]))
            )
            .await,
        Err(StoreError::StaleLease { .. })
    ));
    assert_eq!(store.open_counts().await.expect("open_counts").pending, 1);
}

/// After the upgrade, dedup is per party: the device's one open command (the backend's) is
/// not overwritten by a user's of the same type, which queues after it; the backend's next
/// one of that type still updates its own in place. (The dedup index of the old schema, on
/// the device and type alone, would refuse the user's command.)
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "redis"))]
async fn assert_dedup_is_per_party_after_upgrade(store: &impl Store) {
    use bridge_protocol::UserId;

    let device = DeviceId::new("lock-1").expect("device id");
    let kind = CommandType::new("b").expect("command type");
    let open = store.list_open(&device).await.expect("list_open");
    let [backends] = open.as_slice() else {
        panic!("one open command after the old one completed: {open:?}");
    };
    assert_eq!(backends.queued_by, Party::Backend);
    let alice = Party::User(UserId::new("alice").expect("user id"));
    let users = store
        .enqueue(
            NewCommand::new(
                device.clone(),
                kind.clone(),
                HexPayload::from_bytes(vec![7]),
            )
            .queued_by(alice.clone()),
        )
        .await
        .expect("a user's command of the same type queues");
    assert_ne!(users, backends.id);
    let again = store
        .enqueue(NewCommand::new(
            device.clone(),
            kind,
            HexPayload::from_bytes(vec![8]),
        ))
        .await
        .expect("the backend's command updates its own");
    assert_eq!(again, backends.id);
    let open: Vec<(String, Party, HexPayload)> = store
        .list_open(&device)
        .await
        .expect("list_open")
        .into_iter()
        .map(|c| (c.id.to_string(), c.queued_by, c.payload))
        .collect();
    assert_eq!(
        open,
        vec![
            (
                backends.id.to_string(),
                Party::Backend,
                HexPayload::from_bytes(vec![8])
            ),
            (users.to_string(), alice, HexPayload::from_bytes(vec![7])),
        ]
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_sqlite_file_of_the_previous_schema_gains_the_delivery_settings() {
    use bridge_queue::{SqliteOptions, SqliteStore, StoreConfig};
    use sqlx::Connection;

    let dir = std::env::temp_dir().join(format!(
        "bridge-queue-upgrade-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("queue.db");
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("create the old file");
        sqlx::query(
            "CREATE TABLE bridge_queued_commands (
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
                result_error TEXT
            )",
        )
        .execute(&mut conn)
        .await
        .expect("old schema");
        sqlx::query(
            "INSERT INTO bridge_queued_commands (id, device_id, command_type, payload, status,
                requires_confirmation, created_at, expires_at)
             VALUES (?1, 'lock-1', 'a', x'0102', 'pending', 0, 0, ?2)",
        )
        .bind(OLD_ID)
        .bind(far_future_ms())
        .execute(&mut conn)
        .await
        .expect("old row");
        conn.close().await.expect("close");
    }
    let store = SqliteStore::open(&SqliteOptions::new(&path), StoreConfig::default())
        .await
        .expect("the old file opens");
    assert_upgraded(&store).await;
    store.close().await;
    // Opening again finds the columns already there.
    let store = SqliteStore::open(&SqliteOptions::new(&path), StoreConfig::default())
        .await
        .expect("the upgraded file opens");
    assert_eq!(
        store
            .list_open(&"lock-1".try_into().expect("id"))
            .await
            .expect("list")
            .len(),
        2
    );
    assert_old_command_leases(&store).await;
    assert_dedup_is_per_party_after_upgrade(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file of the schema before fenced leases (with the delivery settings), holding a command
/// that version left `delivering` under a lease that lapsed while no server ran, and one
/// under a lease that still runs: the file gains the lease columns; the lapsed one is
/// recovered with its attempt counted and goes out again, while the running one, which has
/// no owner, still holds its device until its deadline (no node can end or reclaim it).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_sqlite_file_from_before_fenced_leases_recovers_its_old_leases() {
    use std::sync::Arc;
    use std::time::Duration;

    use bridge_protocol::Timestamp;
    use bridge_protocol::http::CommandStatus;
    use bridge_queue::{Clock, ManualClock, NodeId, SqliteOptions, SqliteStore, StoreConfig};
    use sqlx::Connection;

    let dir = std::env::temp_dir().join(format!(
        "bridge-queue-upgrade-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("queue.db");
    let clock = ManualClock::starting_now();
    let now = clock.now().unix_millis();
    {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("create the old file");
        sqlx::query(
            "CREATE TABLE bridge_queued_commands (
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
                timeout_ms INTEGER NOT NULL DEFAULT 10000
            )",
        )
        .execute(&mut conn)
        .await
        .expect("old schema");
        for (id, device, lease_until) in [
            (OLD_ID, "lock-1", now - 1_000),
            ("fedcba9876543210fedcba9876543210", "lock-2", now + 30_000),
        ] {
            sqlx::query(
                "INSERT INTO bridge_queued_commands (id, device_id, command_type, payload,
                    status, requires_confirmation, attempts, created_at, expires_at,
                    lease_until)
                 VALUES (?1, ?2, 'a', x'01', 'delivering', 0, 1, 0, ?3, ?4)",
            )
            .bind(id)
            .bind(device)
            .bind(far_future_ms())
            .bind(lease_until)
            .execute(&mut conn)
            .await
            .expect("old row");
        }
        conn.close().await.expect("close");
    }
    let config = StoreConfig::default().with_clock(Arc::new(clock.clone()));
    let store = SqliteStore::open(&SqliteOptions::new(&path), config)
        .await
        .expect("the old file opens");
    let node = NodeId::new("node-a").expect("node id");
    let (lapsed, running) = (
        DeviceId::new("lock-1").expect("device id"),
        DeviceId::new("lock-2").expect("device id"),
    );

    let counts = store.open_counts().await.expect("open_counts");
    assert_eq!((counts.pending, counts.delivering), (0, 2));
    assert!(store.reclaim(&node).await.expect("reclaim").is_empty());
    let leased = store
        .lease_next(&lapsed, &node, Duration::from_secs(5))
        .await
        .expect("lease_next")
        .expect("the lapsed command goes out again");
    assert_eq!(leased.command.id.as_str(), OLD_ID);
    assert_eq!(
        leased.command.attempts, 2,
        "the old lease's attempt and its lapse"
    );
    assert!(
        store
            .lease_next(&running, &node, Duration::from_secs(5))
            .await
            .expect("lease_next")
            .is_none(),
        "the running old lease still holds its device"
    );
    clock.advance(Duration::from_secs(30));
    let again = store
        .lease_next(&running, &node, Duration::from_secs(5))
        .await
        .expect("lease_next")
        .expect("handed out once the old lease lapsed");
    assert_eq!(
        (again.command.status, again.command.attempts),
        (CommandStatus::Delivering, 2)
    );
    assert!(again.command.lease_deadline > Some(Timestamp::from_unix_millis(now)));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_schema_at_migration_1_is_migrated_to_the_delivery_settings_and_fenced_leases() {
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig};
    use sqlx::Connection;

    let url = std::env::var("BRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("bq_upgrade_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("PostgreSQL answers (or set BRIDGE_TEST_POSTGRES_URL)");
    // The schema exactly as version 1 of the embedded migrations left it.
    let old = format!(
        "CREATE SCHEMA {schema};
        SET search_path TO {schema};
        CREATE TABLE bridge_queue_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO bridge_queue_migrations (version) VALUES (1);
        CREATE TABLE bridge_queued_commands (
            seq bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            device_id text NOT NULL,
            command_type text NOT NULL,
            payload bytea NOT NULL,
            status text NOT NULL,
            requires_confirmation boolean NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            created_at bigint NOT NULL,
            expires_at bigint NOT NULL,
            lease_until bigint,
            result_payload bytea,
            result_error text
        );
        INSERT INTO bridge_queued_commands (id, device_id, command_type, payload, status,
            requires_confirmation, created_at, expires_at)
        VALUES ('{OLD_ID}', 'lock-1', 'a', '\\x0102', 'pending', false, 0, {});",
        far_future_ms()
    );
    sqlx::raw_sql(&old)
        .execute(&mut conn)
        .await
        .expect("old schema");
    let options = PostgresOptions::new(url.clone()).with_schema(schema.clone());
    let result = async {
        let store = PostgresStore::open(&options, StoreConfig::default())
            .await
            .expect("the old schema opens");
        assert_upgraded(&store).await;
        assert_old_command_leases(&store).await;
        store.close().await;
        // Opening again finds every migration applied.
        let store = PostgresStore::open(&options, StoreConfig::default())
            .await
            .expect("the migrated schema opens");
        assert_eq!(store.open_counts().await.expect("open_counts").pending, 1);
        assert_dedup_is_per_party_after_upgrade(&store).await;
        store.close().await;
    };
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_hash_without_the_delivery_settings_and_lease_fields_reads_as_the_defaults() {
    use bridge_queue::{RedisOptions, RedisStore, StoreConfig};
    use deadpool_redis::redis;

    let url = std::env::var("BRIDGE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("bq-upgrade-{}", uuid::Uuid::new_v4().simple());
    let client = redis::Client::open(url.clone()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers (or set BRIDGE_TEST_REDIS_URL)");
    // A command hash with exactly the fields the previous scripts wrote.
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:c:{OLD_ID}"))
        .arg(&[
            ("id", OLD_ID.to_owned()),
            ("dev", "lock-1".to_owned()),
            ("type", "a".to_owned()),
            ("status", "pending".to_owned()),
            ("conf", "0".to_owned()),
            ("attempts", "0".to_owned()),
            ("created", "0".to_owned()),
            ("expires", far_future_ms().to_string()),
            ("lease", String::new()),
            ("rk", String::new()),
            ("rv", String::new()),
            ("seq", "1".to_owned()),
        ])
        .arg("payload")
        .arg(&[1u8, 2][..])
        .query_async(&mut conn)
        .await
        .expect("old hash");
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{prefix}:seq"))
        .arg(1)
        .ignore()
        .cmd("ZADD")
        .arg(format!("{prefix}:d:lock-1"))
        .arg(1)
        .arg(OLD_ID)
        .ignore()
        .cmd("SADD")
        .arg(format!("{prefix}:devices"))
        .arg("lock-1")
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("old indexes");
    let options = RedisOptions::new(url).with_prefix(prefix.clone());
    let result = async {
        let store = RedisStore::open(&options, StoreConfig::default())
            .await
            .expect("the store opens");
        assert_upgraded(&store).await;
        assert_old_command_leases(&store).await;
        // Opening again does not count the commands twice.
        let store = RedisStore::open(&options, StoreConfig::default())
            .await
            .expect("the store opens again");
        assert_eq!(store.open_counts().await.expect("open_counts").pending, 1);
        assert_dedup_is_per_party_after_upgrade(&store).await;
    };
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

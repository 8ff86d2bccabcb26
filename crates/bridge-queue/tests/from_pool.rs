//! Stores made from a pool the caller already has (`from_pool`): the conformance suite runs
//! through `open`, which builds a pool and calls `from_pool`; these tests hand over a pool
//! built here and check that it stays the caller's.

/// Reads a service URL from the environment, with this machine's default.
#[allow(dead_code)]
fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// One command through the store: enqueue, lease, complete, read back.
#[allow(dead_code)]
async fn round_trip(store: &impl bridge_queue::Store) -> bridge_protocol::CommandId {
    use std::time::Duration;

    use bridge_protocol::http::{CommandOutcome, CommandStatus};
    use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
    use bridge_queue::NodeId;

    let device = DeviceId::new("lock-1").expect("a valid device id");
    let unlock = CommandType::new("unlock").expect("a valid command type");
    let node = NodeId::new("node-a").expect("a valid node id");
    let id = store
        .enqueue_or_update(
            &device,
            &unlock,
            HexPayload::from_bytes(vec![1]),
            TtlSeconds::DEFAULT,
        )
        .await
        .expect("enqueue");
    let leased = store
        .lease_next(&device, &node, Duration::from_secs(5))
        .await
        .expect("lease_next")
        .expect("the command is due");
    assert_eq!(leased.command.id, id);
    let done = store
        .complete(
            &leased.lease,
            CommandOutcome::Payload(HexPayload::from_bytes(vec![0x01])),
        )
        .await
        .expect("complete");
    assert_eq!(done.status, CommandStatus::Succeeded);
    let read = store.get(&id).await.expect("get");
    assert_eq!(read.status, CommandStatus::Succeeded);
    assert_eq!(read.attempts, 1);
    id
}

#[cfg(feature = "postgres")]
mod postgres {
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig};
    use sqlx::postgres::PgPoolOptions;

    /// A pool of one connection, handed over: the store runs its migrations in its own
    /// schema and a round trip works; the caller's pool then still works, its connection's
    /// `search_path` is the caller's (the store sets its schema per transaction only), and
    /// the caller finds the store's table in the store's schema.
    #[tokio::test]
    async fn postgres_from_pool_shares_the_callers_pool_and_leaves_its_search_path() {
        let url = crate::service_url(
            "BRIDGE_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is unreachable at {url} ({e}); start it or set BRIDGE_TEST_POSTGRES_URL"
                )
            });
        let before: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&pool)
            .await
            .expect("read search_path");
        let schema = format!("bq_test_{}", uuid::Uuid::new_v4().simple());
        let options = PostgresOptions::new("unused: the pool is the caller's").with_schema(&schema);

        let store = PostgresStore::from_pool(pool.clone(), &options, StoreConfig::default())
            .await
            .expect("from_pool");
        let id = crate::round_trip(&store).await;

        let after: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&pool)
            .await
            .expect("the caller's pool still works");
        assert_eq!(
            after, before,
            "the store changed the connection's search_path"
        );
        let stored: String = sqlx::query_scalar(&format!(
            "SELECT status FROM \"{schema}\".bridge_queued_commands WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_one(&pool)
        .await
        .expect("the command is in the store's schema");
        assert_eq!(stored, "succeeded");

        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&pool)
            .await;
    }

    /// The schema name is quoted into SQL, so `from_pool` refuses one `open` would refuse,
    /// before touching the pool.
    #[tokio::test]
    async fn postgres_from_pool_refuses_an_invalid_schema() {
        let pool = PgPoolOptions::new().connect_lazy("postgres://postgres@127.0.0.1:1/none");
        let pool = pool.expect("a lazy pool");
        let options = PostgresOptions::new("unused").with_schema("Robert\"; DROP");
        let result = PostgresStore::from_pool(pool, &options, StoreConfig::default()).await;
        assert!(
            matches!(result, Err(bridge_queue::StoreError::InvalidInput(_))),
            "{result:?}"
        );
    }
}

#[cfg(feature = "redis")]
mod redis {
    use bridge_queue::{RedisOptions, RedisStore, StoreConfig};
    use deadpool_redis::redis;
    use deadpool_redis::{Config, Runtime};

    /// A pool of one connection, handed over: a round trip works through the store, and the
    /// caller's pool still serves the caller afterwards.
    #[tokio::test]
    async fn redis_from_pool_shares_the_callers_pool() {
        let url = crate::service_url("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let mut config = Config::from_url(url.clone());
        config.pool = Some(deadpool_redis::PoolConfig::new(1));
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .expect("build a pool");
        let prefix = format!("bq-test-{}", uuid::Uuid::new_v4().simple());
        let options = RedisOptions::new("unused: the pool is the caller's").with_prefix(&prefix);

        let store = RedisStore::from_pool(pool.clone(), &options, StoreConfig::default())
            .await
            .unwrap_or_else(|e| {
                panic!("from_pool on Redis at {url} failed ({e}); start it or set BRIDGE_TEST_REDIS_URL")
            });
        let id = crate::round_trip(&store).await;

        let mut conn = pool.get().await.expect("the caller's pool still works");
        let status: String = redis::cmd("HGET")
            .arg(format!("{prefix}:c:{}", id.as_str()))
            .arg("status")
            .query_async(&mut *conn)
            .await
            .expect("the command's hash is under the store's prefix");
        assert_eq!(status, "succeeded");

        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut *conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut *conn).await;
        }
    }
}

//! The conformance suite, run against every backend enabled by features.

#[cfg(feature = "memory")]
mod memory_harness {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{MemoryStore, StoreConfig, StoreError};

    /// Every store it opens shares the commands of one root store, as processes sharing a
    /// durable store would (the suite races two of them).
    pub(crate) struct MemoryHarness {
        root: MemoryStore,
    }

    #[async_trait]
    impl Harness for MemoryHarness {
        type Store = MemoryStore;
        async fn open(&self, config: StoreConfig) -> Result<MemoryStore, StoreError> {
            Ok(self.root.share(config))
        }
        async fn cleanup(&self) {}
    }

    #[allow(clippy::unused_async)] // the suite awaits every harness constructor
    pub(crate) async fn new() -> MemoryHarness {
        MemoryHarness {
            root: MemoryStore::default(),
        }
    }
}

#[cfg(feature = "memory")]
bridge_queue::conformance_tests!(memory, crate::memory_harness::new());

/// A private temp directory removed on drop.
#[cfg(feature = "sqlite")]
mod sqlite_harness {
    use std::path::PathBuf;

    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{SqliteOptions, SqliteStore, StoreConfig, StoreError};

    pub(crate) struct SqliteHarness {
        dir: PathBuf,
    }

    impl SqliteHarness {
        pub(crate) fn path(&self) -> PathBuf {
            self.dir.join("queue.db")
        }
    }

    #[async_trait]
    impl Harness for SqliteHarness {
        type Store = SqliteStore;
        async fn open(&self, config: StoreConfig) -> Result<SqliteStore, StoreError> {
            SqliteStore::open(&SqliteOptions::new(self.path()), config).await
        }
        async fn cleanup(&self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[allow(clippy::unused_async)] // the suite awaits every harness constructor
    pub(crate) async fn new() -> SqliteHarness {
        let dir = std::env::temp_dir().join(format!(
            "bridge-queue-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        SqliteHarness { dir }
    }
}

#[cfg(feature = "sqlite")]
bridge_queue::conformance_tests!(sqlite, crate::sqlite_harness::new(), durable);

/// Reads a service URL from the environment, with this machine's default.
#[allow(dead_code)]
fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[cfg(feature = "postgres")]
mod postgres_harness {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig, StoreError};
    use sqlx::Connection;

    pub(crate) struct PostgresHarness {
        options: PostgresOptions,
    }

    #[async_trait]
    impl Harness for PostgresHarness {
        type Store = PostgresStore;
        async fn open(&self, config: StoreConfig) -> Result<PostgresStore, StoreError> {
            PostgresStore::open(&self.options, config).await
        }
        async fn cleanup(&self) {
            drop_schema(self.options.url.clone(), self.options.schema.clone()).await;
        }
    }

    async fn drop_schema(url: String, schema: String) {
        let statement = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
            let _ = sqlx::query(&statement).execute(&mut conn).await;
        }
    }

    pub(crate) async fn new() -> PostgresHarness {
        let url = crate::service_url(
            "BRIDGE_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        if let Err(e) = sqlx::PgConnection::connect(&url).await {
            panic!(
                "PostgreSQL is unreachable at {url} ({e}); start it or set BRIDGE_TEST_POSTGRES_URL"
            );
        }
        let schema = format!("bq_test_{}", uuid::Uuid::new_v4().simple());
        PostgresHarness {
            // The suite checks exact times on its virtual clock (the backend's clock is
            // checked in tests/skewed_clock.rs).
            options: PostgresOptions::new(url)
                .with_schema(schema)
                .with_backend_clock(false),
        }
    }
}

#[cfg(feature = "postgres")]
bridge_queue::conformance_tests!(postgres, crate::postgres_harness::new(), durable);

#[cfg(feature = "redis")]
mod redis_harness {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{RedisOptions, RedisStore, StoreConfig, StoreError};
    use deadpool_redis::redis;

    pub(crate) struct RedisHarness {
        options: RedisOptions,
    }

    #[async_trait]
    impl Harness for RedisHarness {
        type Store = RedisStore;
        async fn open(&self, config: StoreConfig) -> Result<RedisStore, StoreError> {
            RedisStore::open(&self.options, config).await
        }
        async fn cleanup(&self) {
            delete_prefix(self.options.url.clone(), self.options.prefix.clone()).await;
        }
    }

    /// Deletes every key under `prefix`.
    async fn delete_prefix(url: String, prefix: String) {
        let Ok(client) = redis::Client::open(url) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }

    pub(crate) async fn new() -> RedisHarness {
        let url = crate::service_url("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let reachable = match redis::Client::open(url.clone()) {
            Ok(client) => client.get_multiplexed_async_connection().await.err(),
            Err(e) => Some(e),
        };
        if let Some(e) = reachable {
            panic!("Redis is unreachable at {url} ({e}); start it or set BRIDGE_TEST_REDIS_URL");
        }
        let prefix = format!("bq-test-{}", uuid::Uuid::new_v4().simple());
        RedisHarness {
            // The suite checks exact times on its virtual clock (the backend's clock is
            // checked in tests/skewed_clock.rs).
            options: RedisOptions::new(url)
                .with_prefix(prefix)
                .with_backend_clock(false),
        }
    }
}

#[cfg(feature = "redis")]
bridge_queue::conformance_tests!(redis, crate::redis_harness::new(), durable);

/// RabbitMQ notices composed with an SQLite state store in a temp dir.
#[cfg(all(feature = "rabbitmq", feature = "sqlite"))]
mod rabbitmq_harness {
    use std::time::Duration;

    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{
        RabbitMqOptions, RabbitMqStore, SqliteOptions, SqliteStore, StoreConfig, StoreError,
    };

    pub(crate) struct RabbitMqHarness {
        sqlite: crate::sqlite_harness::SqliteHarness,
        options: RabbitMqOptions,
    }

    #[async_trait]
    impl Harness for RabbitMqHarness {
        type Store = RabbitMqStore<SqliteStore>;
        async fn open(&self, config: StoreConfig) -> Result<Self::Store, StoreError> {
            let state = SqliteStore::open(&SqliteOptions::new(self.sqlite.path()), config).await?;
            RabbitMqStore::open(self.options.clone(), state).await
        }
        async fn cleanup(&self) {
            // The device queues expire on their own (idle_queue_expiry below).
            self.sqlite.cleanup().await;
        }
    }

    pub(crate) async fn new() -> RabbitMqHarness {
        let url = crate::service_url(
            "BRIDGE_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        if let Err(e) =
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
        {
            panic!("RabbitMQ is unreachable at {url} ({e}); start it or set BRIDGE_TEST_AMQP_URL");
        }
        let mut options = RabbitMqOptions::new(url)
            .with_prefix(format!("bq-test-{}", uuid::Uuid::new_v4().simple()));
        options.idle_queue_expiry = Duration::from_secs(30);
        RabbitMqHarness {
            sqlite: crate::sqlite_harness::new().await,
            options,
        }
    }
}

#[cfg(all(feature = "rabbitmq", feature = "sqlite"))]
bridge_queue::conformance_tests!(rabbitmq, crate::rabbitmq_harness::new(), durable);

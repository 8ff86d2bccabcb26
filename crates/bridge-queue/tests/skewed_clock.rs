//! Servers sharing a PostgreSQL or Redis store read the backend's clock, not their own.
//!
//! Each test opens the store twice on the same data, as two server processes would, one of
//! them with a clock that is wrong by an hour (a `ManualClock` set off the real time):
//!
//! * a node whose clock runs an hour fast must not see another node's live lease as lapsed
//!   (it would deliver the command a second time while the first delivery runs, and the
//!   first node's answer would then be refused as stale);
//! * a node whose clock is an hour behind must not take leases whose deadline has already
//!   passed for everyone else (another node would take the delivery over at once).

#![cfg(any(feature = "postgres", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandType, DeviceId, HexPayload, TimeoutMs, Timestamp, TtlSeconds};
use bridge_queue::{ManualClock, NodeId, Store, StoreConfig};

const GRACE: Duration = Duration::from_secs(5);
const HOUR_MS: i64 = 3_600_000;

fn clock_off_by(ms: i64) -> ManualClock {
    ManualClock::new(Timestamp::from_unix_millis(
        Timestamp::now().unix_millis() + ms,
    ))
}

fn config(clock: &ManualClock) -> StoreConfig {
    StoreConfig::default().with_clock(Arc::new(clock.clone()))
}

async fn enqueue(store: &dyn Store, device: &DeviceId) {
    store
        .enqueue_or_update(
            device,
            &CommandType::new("unlock").expect("valid"),
            HexPayload::from_bytes(vec![1]),
            TtlSeconds::DEFAULT,
        )
        .await
        .expect("enqueue");
}

/// `right` is a node with the real time; `fast` one whose clock is an hour ahead.
async fn a_fast_node_cannot_take_over_a_live_lease(right: &dyn Store, fast: &dyn Store) {
    let device = DeviceId::new("lock-fast").expect("valid");
    let a = NodeId::new("node-right").expect("valid");
    let b = NodeId::new("node-fast").expect("valid");
    enqueue(right, &device).await;
    let leased = right
        .lease_next(&device, &a, GRACE)
        .await
        .expect("lease")
        .expect("due");
    assert_eq!(leased.command.timeout, TimeoutMs::DEFAULT);
    assert!(
        fast.lease_next(&device, &b, GRACE)
            .await
            .expect("lease")
            .is_none(),
        "the fast node took over a live lease"
    );
    let report = fast.sweep().await.expect("sweep");
    assert_eq!((report.recovered, report.failed), (0, 0), "{report:?}");
    let done = right
        .complete(
            &leased.lease,
            CommandOutcome::Payload(HexPayload::from_bytes(vec![0])),
        )
        .await
        .expect("the live holder ends its lease");
    assert_eq!((done.status, done.attempts), (CommandStatus::Succeeded, 1));
}

/// `right` is a node with the real time (a `ManualClock` it moves); `slow` one whose clock
/// is an hour behind.
async fn a_slow_node_takes_leases_that_last(
    right: &dyn Store,
    right_clock: &ManualClock,
    slow: &dyn Store,
) {
    let device = DeviceId::new("lock-slow").expect("valid");
    let a = NodeId::new("node-right").expect("valid");
    let c = NodeId::new("node-slow").expect("valid");
    enqueue(right, &device).await;
    let leased = slow
        .lease_next(&device, &c, GRACE)
        .await
        .expect("lease")
        .expect("due");
    assert!(
        right
            .lease_next(&device, &a, GRACE)
            .await
            .expect("lease")
            .is_none(),
        "the slow node's lease had lapsed as soon as it was taken"
    );
    // Once it really lapses, the delivery is handed out again, and the slow node's late
    // answer is refused.
    right_clock.advance(TimeoutMs::DEFAULT.as_duration() + GRACE + Duration::from_secs(1));
    let again = right
        .lease_next(&device, &a, GRACE)
        .await
        .expect("lease")
        .expect("the lapsed lease is handed out again");
    assert_eq!(again.command.id, leased.command.id);
    assert!(matches!(
        slow.complete(
            &leased.lease,
            CommandOutcome::Payload(HexPayload::from_bytes(vec![0]))
        )
        .await,
        Err(bridge_queue::StoreError::StaleLease { .. })
    ));
}

#[cfg(feature = "postgres")]
mod postgres {
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig};
    use sqlx::Connection as _;

    use super::{HOUR_MS, clock_off_by, config};

    async fn open(options: &PostgresOptions, config: StoreConfig) -> PostgresStore {
        PostgresStore::open(options, config)
            .await
            .expect("PostgreSQL opens (is it running? BRIDGE_TEST_POSTGRES_URL)")
    }

    fn options() -> PostgresOptions {
        let url = std::env::var("BRIDGE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("bq_skew_{}", uuid::Uuid::new_v4().simple());
        PostgresOptions::new(url).with_schema(schema)
    }

    async fn drop_schema(options: &PostgresOptions) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&options.url).await {
            let _ = sqlx::query(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                options.schema
            ))
            .execute(&mut conn)
            .await;
        }
    }

    #[tokio::test]
    async fn a_postgres_node_whose_clock_is_an_hour_fast_cannot_take_over_a_live_lease() {
        let options = options();
        let right = open(&options, config(&clock_off_by(0))).await;
        let fast = open(&options, config(&clock_off_by(HOUR_MS))).await;
        super::a_fast_node_cannot_take_over_a_live_lease(&right, &fast).await;
        drop_schema(&options).await;
    }

    #[tokio::test]
    async fn a_postgres_node_whose_clock_is_an_hour_behind_takes_leases_that_last() {
        let options = options();
        let right_clock = clock_off_by(0);
        let right = open(&options, config(&right_clock)).await;
        let slow = open(&options, config(&clock_off_by(-HOUR_MS))).await;
        super::a_slow_node_takes_leases_that_last(&right, &right_clock, &slow).await;
        drop_schema(&options).await;
    }
}

#[cfg(feature = "redis")]
mod redis {
    use bridge_queue::{RedisOptions, RedisStore, StoreConfig};
    use deadpool_redis::redis;

    use super::{HOUR_MS, clock_off_by, config};

    async fn open(options: &RedisOptions, config: StoreConfig) -> RedisStore {
        RedisStore::open(options, config)
            .await
            .expect("Redis opens (is it running? BRIDGE_TEST_REDIS_URL)")
    }

    fn options() -> RedisOptions {
        let url = std::env::var("BRIDGE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        RedisOptions::new(url).with_prefix(format!("bq-skew-{}", uuid::Uuid::new_v4().simple()))
    }

    async fn delete_prefix(options: &RedisOptions) {
        let Ok(client) = redis::Client::open(options.url.clone()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", options.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }

    #[tokio::test]
    async fn a_redis_node_whose_clock_is_an_hour_fast_cannot_take_over_a_live_lease() {
        let options = options();
        let right = open(&options, config(&clock_off_by(0))).await;
        let fast = open(&options, config(&clock_off_by(HOUR_MS))).await;
        super::a_fast_node_cannot_take_over_a_live_lease(&right, &fast).await;
        delete_prefix(&options).await;
    }

    #[tokio::test]
    async fn a_redis_node_whose_clock_is_an_hour_behind_takes_leases_that_last() {
        let options = options();
        let right_clock = clock_off_by(0);
        let right = open(&options, config(&right_clock)).await;
        let slow = open(&options, config(&clock_off_by(-HOUR_MS))).await;
        super::a_slow_node_takes_leases_that_last(&right, &right_clock, &slow).await;
        delete_prefix(&options).await;
    }
}

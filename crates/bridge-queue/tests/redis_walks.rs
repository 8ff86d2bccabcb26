//! The Redis store walks its devices in bounded chunks: `due_devices` and `sweep` over many
//! devices are many short scripts (one `SSCAN` step each), not one script over every device
//! that holds Redis (single-threaded) for as long as it runs.
//!
//! On a private `redis-server`, whose command statistics count this test's calls only.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
use bridge_queue::{ManualClock, RedisOptions, RedisStore, Store, StoreConfig};
use deadpool_redis::redis;

mod private_redis;

const DEVICES: usize = 1000;

/// Scripts run since the statistics were last reset (`EVALSHA` and `EVAL`).
async fn scripts_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split([':', ','])
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_over_every_device_are_many_short_scripts() {
    let server = private_redis::start(&[]).await;
    let clock = ManualClock::starting_now();
    let store = RedisStore::open(
        &RedisOptions::new(&server.url).with_backend_clock(false),
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    )
    .await
    .expect("open");
    let command_type = CommandType::new("unlock").expect("valid");
    let ttl = TtlSeconds::new(10).expect("valid");
    for n in 0..DEVICES {
        let device = DeviceId::new(&format!("lock-{n}")).expect("valid");
        store
            .enqueue_or_update(&device, &command_type, HexPayload::from_bytes(vec![1]), ttl)
            .await
            .expect("enqueue");
    }
    let client = redis::Client::open(server.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");

    reset_stats(&mut conn).await;
    let due = store.due_devices(usize::MAX).await.expect("due");
    assert_eq!(due.len(), DEVICES, "every device is due, each once");
    let scripts = scripts_run(&mut conn).await;
    assert!(
        scripts >= 5,
        "due_devices over {DEVICES} devices ran {scripts} script(s): one call walked them all"
    );

    clock.advance(Duration::from_secs(10));
    reset_stats(&mut conn).await;
    let report = store.sweep().await.expect("sweep");
    assert_eq!(report.expired, u64::try_from(DEVICES).expect("fits"));
    let scripts = scripts_run(&mut conn).await;
    assert!(
        scripts >= 5,
        "sweep over {DEVICES} devices ran {scripts} script(s): one call walked them all"
    );
    assert!(store.due_devices(usize::MAX).await.expect("due").is_empty());
}

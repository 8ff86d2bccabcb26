//! The offline queue's delivery cycle per backend: enqueue → `lease_next` → `complete` of one
//! command, run back to back by one task. Throughput in cycles per second.
//!
//! Run: `cargo bench -p benches --bench queue`. Needs the local PostgreSQL, Redis and
//! RabbitMQ (`BRIDGE_TEST_POSTGRES_URL`, `BRIDGE_TEST_REDIS_URL`, `BRIDGE_TEST_AMQP_URL`,
//! defaulting to this machine's);
//! each backend works in a namespace of its own (schema, key prefix, temp file) and removes
//! it afterwards. Figures and the services' own raw figures are in BENCHMARKS.md.

use std::time::Duration;

use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
use bridge_queue::{
    MemoryStore, NodeId, PostgresOptions, PostgresStore, RabbitMqOptions, RabbitMqStore,
    RedisOptions, RedisStore, SqliteOptions, SqliteStore, Store, StoreConfig,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// The grace of each lease, on top of the command's own timeout.
const GRACE: Duration = Duration::from_secs(5);

/// One delivery cycle: queue a command, lease it, record the device's answer.
async fn cycle(store: &dyn Store, node: &NodeId, device: &DeviceId, command_type: &CommandType) {
    let payload = HexPayload::from_bytes(vec![0xaa, 0xbb, 0xcc, 0xdd]);
    let id = store
        .enqueue_or_update(device, command_type, payload, TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let leased = store
        .lease_next(device, node, GRACE)
        .await
        .expect("lease")
        .expect("the command just queued is due");
    assert_eq!(leased.command.id, id);
    store
        .complete(
            &leased.lease,
            CommandOutcome::Payload(HexPayload::from_bytes(vec![1])),
        )
        .await
        .expect("complete");
}

fn bench_store(c: &mut Criterion, rt: &Runtime, name: &str, store: &dyn Store) {
    let device = DeviceId::new("bench-lock").expect("valid");
    let command_type = CommandType::new("unlock").expect("valid");
    let node = NodeId::new("bench-node").expect("valid");
    let mut group = c.benchmark_group("queue_cycle");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(name, |b| {
        b.to_async(rt)
            .iter(|| cycle(store, &node, &device, &command_type));
    });
    group.finish();
}

fn queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let namespace = format!("bq_bench_{}", uuid::Uuid::new_v4().simple());

    let memory = MemoryStore::new(StoreConfig::default());
    bench_store(c, &rt, "memory", &memory);

    let dir = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = rt
        .block_on(SqliteStore::open(
            &SqliteOptions::new(dir.join("queue.db")),
            StoreConfig::default(),
        ))
        .expect("open SQLite");
    bench_store(c, &rt, "sqlite", &sqlite);
    rt.block_on(sqlite.close());
    let _ = std::fs::remove_dir_all(&dir);

    let pg_url = std::env::var("BRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let postgres = rt
        .block_on(PostgresStore::open(
            &PostgresOptions::new(pg_url.clone()).with_schema(namespace.clone()),
            StoreConfig::default(),
        ))
        .expect("open PostgreSQL (is it running? BRIDGE_TEST_POSTGRES_URL)");
    bench_store(c, &rt, "postgres", &postgres);
    rt.block_on(postgres.close());
    // Remove the bench's schema with the machine's psql.
    let dropped = std::process::Command::new("psql")
        .arg(&pg_url)
        .args([
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE"),
        ])
        .status();
    if !dropped.is_ok_and(|s| s.success()) {
        eprintln!("could not drop schema {namespace}; drop it by hand");
    }

    let redis_url = std::env::var("BRIDGE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let options = RedisOptions::new(redis_url).with_prefix(namespace.clone());
    // Final commands expire quickly (a minute after their TTL) so the bench leaves nothing
    // behind for long.
    let config = StoreConfig::default().with_retention(Duration::from_mins(1));
    let redis = rt
        .block_on(RedisStore::open(&options, config))
        .expect("open Redis (is it running? BRIDGE_TEST_REDIS_URL)");
    bench_store(c, &rt, "redis", &redis);

    // RabbitMQ carries the delivery notices; the state is in memory here, so the figure is
    // the broker's share: one persistent, confirmed publish per enqueue (the end of the lease
    // looks for a command behind it and, finding none, publishes nothing).
    let amqp_url = std::env::var("BRIDGE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let mut options = RabbitMqOptions::new(amqp_url).with_prefix(namespace.clone());
    // The bench's device queue is deleted by the broker a minute after the bench.
    options.idle_queue_expiry = Duration::from_mins(1);
    let rabbitmq = rt
        .block_on(RabbitMqStore::open(
            options,
            MemoryStore::new(StoreConfig::default()),
        ))
        .expect("open RabbitMQ (is it running? BRIDGE_TEST_AMQP_URL)");
    bench_store(c, &rt, "rabbitmq+memory", &rabbitmq);
}

criterion_group!(benches, queue);
criterion_main!(benches);

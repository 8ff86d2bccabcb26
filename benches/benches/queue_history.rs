//! Does a long history slow the queue? `enqueue`, `lease_next` and `complete` of one device,
//! each timed on its own, on an empty store and on the same store holding 1,000,000 final
//! commands (half of them the benched device's own, the rest spread over 10,000 other
//! devices), for SQLite and PostgreSQL. The two are measured in the same run, side by side;
//! BENCHMARKS.md records the ratio (1M / empty), which stays near 1 when no statement reads
//! the history.
//!
//! Run: `cargo bench -p benches --bench queue_history`. Needs the local PostgreSQL
//! (`BRIDGE_TEST_POSTGRES_URL`, default this machine's). The history is written with one
//! bulk `INSERT … SELECT` per store (a few seconds each); each store works in a namespace of
//! its own (temp file, schema) and removes it afterwards.

use std::time::{Duration, Instant};

use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{CommandType, DeviceId, HexPayload, Timestamp, TtlSeconds};
use bridge_queue::{
    NodeId, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, StoreConfig,
};
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use sqlx::Connection as _;
use tokio::runtime::Runtime;

/// Final commands written before the "history" figures.
const HISTORY: i64 = 1_000_000;
/// The benched device; half of the history is its own.
const DEVICE: &str = "bench-lock";
/// The grace of each lease.
const GRACE: Duration = Duration::from_secs(5);

/// One bulk statement that writes [`HISTORY`] final commands, of every final status, whose
/// TTL ends in a day (so retention leaves them be). `?1`/`$1`: now in unix ms.
fn history_sql(series: &str, param: &str) -> String {
    format!(
        "INSERT INTO bridge_queued_commands
         (id, device_id, command_type, payload, status, requires_confirmation, attempts,
          created_at, expires_at)
         SELECT 'hist-' || i,
                CASE WHEN i % 2 = 0 THEN '{DEVICE}' ELSE 'dev-' || (i % 10000) END,
                'unlock', {payload},
                CASE i % 4 WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed'
                           WHEN 2 THEN 'expired' ELSE 'cancelled' END,
                {no}, 1, {param}, {param} + 86400000
         FROM {series}",
        payload = if param == "$1" {
            "'\\x01'::bytea"
        } else {
            "x'01'"
        },
        no = if param == "$1" { "false" } else { "0" },
    )
}

/// The three operations of one delivery, each timed alone over `iters` cycles.
#[derive(Clone, Copy)]
enum Op {
    Enqueue,
    LeaseNext,
    Complete,
}

async fn timed(store: &dyn Store, op: Op, iters: u64) -> Duration {
    let device = DeviceId::new(DEVICE).expect("valid");
    let command_type = CommandType::new("unlock").expect("valid");
    let node = NodeId::new("bench-node").expect("valid");
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let payload = HexPayload::from_bytes(vec![0xaa, 0xbb]);
        let started = Instant::now();
        store
            .enqueue_or_update(&device, &command_type, payload, TtlSeconds::DEFAULT)
            .await
            .expect("enqueue");
        if matches!(op, Op::Enqueue) {
            total += started.elapsed();
        }
        let started = Instant::now();
        let leased = store
            .lease_next(&device, &node, GRACE)
            .await
            .expect("lease")
            .expect("the command just queued is due");
        if matches!(op, Op::LeaseNext) {
            total += started.elapsed();
        }
        let started = Instant::now();
        store
            .complete(
                &leased.lease,
                CommandOutcome::Payload(HexPayload::from_bytes(vec![1])),
            )
            .await
            .expect("complete");
        if matches!(op, Op::Complete) {
            total += started.elapsed();
        }
    }
    total
}

fn bench_ops(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    label: &str,
    store: &dyn Store,
) {
    for (name, op) in [
        ("enqueue", Op::Enqueue),
        ("lease_next", Op::LeaseNext),
        ("complete", Op::Complete),
    ] {
        group.bench_function(format!("{label}/{name}"), |b| {
            b.to_async(rt).iter_custom(|iters| timed(store, op, iters));
        });
    }
}

fn sqlite(c: &mut Criterion, rt: &Runtime, namespace: &str) {
    let dir = std::env::temp_dir().join(namespace);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let open = |file: &str| {
        let path = dir.join(file);
        let store = rt
            .block_on(SqliteStore::open(
                &SqliteOptions::new(&path),
                StoreConfig::default(),
            ))
            .expect("open SQLite");
        (store, path)
    };
    let (empty, _) = open("empty.db");
    let (full, path) = open("history.db");
    rt.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        let series = format!(
            "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {HISTORY})
              SELECT i FROM n)"
        );
        sqlx::query(&history_sql(&series, "?1"))
            .bind(Timestamp::now().unix_millis())
            .execute(&mut conn)
            .await
            .expect("write the history");
        conn.close().await.expect("close");
    });
    let mut group = c.benchmark_group("queue_history/sqlite");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    bench_ops(&mut group, rt, "empty", &empty);
    bench_ops(&mut group, rt, "1M_final", &full);
    group.finish();
    rt.block_on(empty.close());
    rt.block_on(full.close());
    let _ = std::fs::remove_dir_all(&dir);
}

fn postgres(c: &mut Criterion, rt: &Runtime, namespace: &str) {
    let url = std::env::var("BRIDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let open = |schema: &str| {
        rt.block_on(PostgresStore::open(
            &PostgresOptions::new(url.clone()).with_schema(schema),
            StoreConfig::default(),
        ))
        .expect("open PostgreSQL (is it running? BRIDGE_TEST_POSTGRES_URL)")
    };
    let empty_schema = format!("{namespace}_empty");
    let full_schema = format!("{namespace}_history");
    let empty = open(&empty_schema);
    let full = open(&full_schema);
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query(&format!("SET search_path TO \"{full_schema}\""))
            .execute(&mut conn)
            .await
            .expect("search path");
        let series = format!("generate_series(1, {HISTORY}) AS i");
        sqlx::query(&history_sql(&series, "$1"))
            .bind(Timestamp::now().unix_millis())
            .execute(&mut conn)
            .await
            .expect("write the history");
        sqlx::query("ANALYZE bridge_queued_commands")
            .execute(&mut conn)
            .await
            .expect("analyze");
        conn.close().await.expect("close");
    });
    let mut group = c.benchmark_group("queue_history/postgres");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    bench_ops(&mut group, rt, "empty", &empty);
    bench_ops(&mut group, rt, "1M_final", &full);
    group.finish();
    rt.block_on(empty.close());
    rt.block_on(full.close());
    rt.block_on(async {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
            for schema in [&empty_schema, &full_schema] {
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await;
            }
        }
    });
}

fn queue_history(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let namespace = format!("bq_hist_{}", uuid::Uuid::new_v4().simple());
    sqlite(c, &rt, &namespace);
    postgres(c, &rt, &namespace);
}

criterion_group!(benches, queue_history);
criterion_main!(benches);

//! No statement of the SQL stores reads the whole history.
//!
//! Final commands stay in the table until retention deletes them, so a table holds far more
//! of them than open ones; a statement that scans the table (or a whole index over every
//! row) gets slower with every command ever queued. This suite runs the whole conformance
//! suite on the PostgreSQL store while recording every statement the store sends (sqlx logs each
//! one under the `sqlx::query` target), then asks the database for the plan of each
//! (SQLite's `EXPLAIN QUERY PLAN`; PostgreSQL's generic plan with sequential scans
//! disabled, so that a small test table does not hide a missing index) and fails on any
//! read of the table that is not a search by key or a read of an index over open commands
//! only. Every case the suite gains is checked too.

#![cfg(feature = "postgres")]

mod plans;

mod postgres {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig, StoreError};
    use sqlx::{Connection as _, Executor as _, Row as _};

    use crate::plans::{OPEN_INDEXES, parameter_count, record_statements, table_statements};

    /// A store in a private schema whose `cleanup` checks the plan of every statement
    /// recorded, before dropping the schema.
    pub(crate) struct PlanHarness {
        options: PostgresOptions,
    }

    /// Full reads of the command table in a JSON plan node and its children.
    fn walk(node: &serde_json::Value, found: &mut Vec<String>) {
        let field = |name: &str| node.get(name).and_then(serde_json::Value::as_str);
        let on_table = field("Relation Name") == Some("bridge_queued_commands");
        match field("Node Type") {
            Some("Seq Scan") if on_table => found.push("Seq Scan".to_owned()),
            Some("Index Scan" | "Index Only Scan" | "Bitmap Index Scan") => {
                let index = field("Index Name").unwrap_or_default();
                let by_key = node.get("Index Cond").is_some();
                if index.starts_with("bridge_queued_commands")
                    && !by_key
                    && !OPEN_INDEXES.contains(&index)
                {
                    found.push(format!("a whole read of index {index}"));
                }
            }
            _ => {}
        }
        if let Some(children) = node.get("Plans").and_then(serde_json::Value::as_array) {
            for child in children {
                walk(child, found);
            }
        }
    }

    /// Full reads of the command table in the generic plan of `sql`, if any.
    async fn full_reads(conn: &mut sqlx::PgConnection, sql: &str) -> Vec<String> {
        conn.execute("DEALLOCATE ALL").await.expect("deallocate");
        sqlx::raw_sql(&format!("PREPARE plan_check AS {sql}"))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("cannot prepare {sql}: {e}"));
        let nulls = vec!["NULL"; parameter_count(sql, '$')].join(", ");
        let execute = if nulls.is_empty() {
            "EXECUTE plan_check".to_owned()
        } else {
            format!("EXECUTE plan_check({nulls})")
        };
        let row = sqlx::raw_sql(&format!("EXPLAIN (FORMAT JSON) {execute}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("no plan for {sql}: {e}"));
        // The simple protocol answers in text; the column is `json`, which this build of
        // sqlx does not decode, so read its text.
        let text: String = row.try_get_unchecked(0).expect("the plan as text");
        let plan: serde_json::Value = serde_json::from_str(&text).expect("a JSON plan");
        let mut found = Vec::new();
        for entry in plan.as_array().into_iter().flatten() {
            if let Some(node) = entry.get("Plan") {
                walk(node, &mut found);
            }
        }
        found
    }

    #[async_trait]
    impl Harness for PlanHarness {
        type Store = PostgresStore;
        async fn open(&self, config: StoreConfig) -> Result<PostgresStore, StoreError> {
            PostgresStore::open(&self.options, config).await
        }
        async fn cleanup(&self) {
            let statements = table_statements();
            let (url, schema) = (self.options.url.clone(), self.options.schema.clone());
            let checked = statements.clone();
            // On a runtime of its own: sqlx's simple-protocol futures are not provably
            // `Send` inside an `async_trait` method.
            let found = tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(check(url, schema, checked))
            })
            .await
            .expect("the check ran");
            assert!(
                !statements.is_empty(),
                "no statement was recorded: is the recorder installed?"
            );
            assert!(
                found.is_empty(),
                "statements that read the whole table:\n{}",
                found.join("\n")
            );
        }
    }

    /// The full reads in the plans of `statements`, then drops the schema.
    async fn check(url: String, schema: String, statements: Vec<String>) -> Vec<String> {
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .expect("PostgreSQL answers");
        // The generic plan, as a statement run many times gets: it cannot lean on the
        // values of its parameters. Sequential scans off, so that the few rows of a test
        // table do not make one look cheaper than an index that exists.
        let setup = format!(
            "SET search_path TO \"{schema}\"; SET enable_seqscan = off; \
             SET plan_cache_mode = force_generic_plan"
        );
        sqlx::raw_sql(&setup)
            .execute(&mut conn)
            .await
            .expect("session settings");
        let mut found = Vec::new();
        for sql in &statements {
            for read in full_reads(&mut conn, sql).await {
                found.push(format!("{read}\n    in: {sql}"));
            }
        }
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&mut conn)
            .await;
        found
    }

    pub(crate) async fn new() -> PlanHarness {
        record_statements();
        let url = std::env::var("BRIDGE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        if let Err(e) = sqlx::PgConnection::connect(&url).await {
            panic!(
                "PostgreSQL is unreachable at {url} ({e}); start it or set BRIDGE_TEST_POSTGRES_URL"
            );
        }
        let schema = format!("bq_plans_{}", uuid::Uuid::new_v4().simple());
        PlanHarness {
            options: PostgresOptions::new(url)
                .with_schema(schema)
                .with_backend_clock(false),
        }
    }
}

bridge_queue::conformance_tests!(postgres_plans, crate::postgres::new(), durable);

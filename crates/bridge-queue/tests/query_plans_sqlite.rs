//! No statement of the SQL stores reads the whole history.
//!
//! Final commands stay in the table until retention deletes them, so a table holds far more
//! of them than open ones; a statement that scans the table (or a whole index over every
//! row) gets slower with every command ever queued. This suite runs the whole conformance
//! suite on the SQLite store while recording every statement the store sends (sqlx logs each
//! one under the `sqlx::query` target), then asks the database for the plan of each
//! (SQLite's `EXPLAIN QUERY PLAN`; PostgreSQL's generic plan with sequential scans
//! disabled, so that a small test table does not hide a missing index) and fails on any
//! read of the table that is not a search by key or a read of an index over open commands
//! only. Every case the suite gains is checked too.

#![cfg(feature = "sqlite")]

mod plans;

mod sqlite {
    use std::path::PathBuf;

    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{SqliteOptions, SqliteStore, StoreConfig, StoreError};
    use sqlx::{Connection as _, Row as _};

    use crate::plans::{OPEN_INDEXES, record_statements, table_statements};

    /// A store in a private temp file whose `cleanup` checks the plan of every statement
    /// recorded, before removing the file.
    pub(crate) struct PlanHarness {
        dir: PathBuf,
    }

    impl PlanHarness {
        fn path(&self) -> PathBuf {
            self.dir.join("queue.db")
        }
    }

    /// Full reads of the command table in the plan of `sql`, if any.
    async fn full_reads(conn: &mut sqlx::SqliteConnection, sql: &str) -> Vec<String> {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("no plan for {sql}: {e}"));
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .filter(|detail| {
                // `SEARCH` reads by key; `SCAN t USING INDEX i` reads all of `i`, which is
                // fine only for an index over open commands.
                detail.starts_with("SCAN bridge_queued_commands")
                    && !OPEN_INDEXES.iter().any(|index| {
                        detail.ends_with(&format!("USING INDEX {index}"))
                            || detail.ends_with(&format!("USING COVERING INDEX {index}"))
                    })
            })
            .collect()
    }

    #[async_trait]
    impl Harness for PlanHarness {
        type Store = SqliteStore;
        async fn open(&self, config: StoreConfig) -> Result<SqliteStore, StoreError> {
            SqliteStore::open(&SqliteOptions::new(self.path()), config).await
        }
        async fn cleanup(&self) {
            let statements = table_statements();
            let url = format!("sqlite://{}", self.path().display());
            let found = match sqlx::SqliteConnection::connect(&url).await {
                Ok(mut conn) => {
                    let mut found = Vec::new();
                    for sql in &statements {
                        for read in full_reads(&mut conn, sql).await {
                            found.push(format!("{read}\n    in: {sql}"));
                        }
                    }
                    Ok(found)
                }
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_dir_all(&self.dir);
            let found = found.expect("the test file opens");
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

    #[allow(clippy::unused_async)] // the suite awaits every harness constructor
    pub(crate) async fn new() -> PlanHarness {
        record_statements();
        let dir = std::env::temp_dir().join(format!(
            "bridge-queue-plans-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        PlanHarness { dir }
    }
}

bridge_queue::conformance_tests!(sqlite_plans, crate::sqlite::new(), durable);

//! What the query-plan suites share: the statement recorder and the indexes over open
//! commands.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// Indexes over the open commands only (partial indexes whose condition lists open
/// statuses): reading one whole reads no history.
pub(crate) const OPEN_INDEXES: &[&str] = &[
    "bridge_queued_commands_open",
    "bridge_queued_commands_open_status",
    "bridge_queued_commands_open_expiry",
    "bridge_queued_commands_open_lease",
    "bridge_queued_commands_dedup_party",
    "bridge_queued_commands_lease_owner",
];

/// The statements sent so far in this process.
static STATEMENTS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Records the SQL of every `sqlx::query` event.
struct Recorder;

struct StatementVisitor {
    summary: String,
    statement: String,
}

impl Visit for StatementVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "db.statement" => value.clone_into(&mut self.statement),
            "summary" => value.clone_into(&mut self.summary),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "db.statement" || field.name() == "summary" {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut visitor = StatementVisitor {
            summary: String::new(),
            statement: String::new(),
        };
        event.record(&mut visitor);
        // sqlx leaves `db.statement` empty when the summary (its first four words) is the
        // whole statement.
        let sql = if visitor.statement.trim().is_empty() {
            visitor.summary
        } else {
            visitor.statement.trim().to_owned()
        };
        STATEMENTS.lock().expect("not poisoned").insert(sql);
    }
}

/// Installs the recorder as the process's subscriber (once).
pub(crate) fn record_statements() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
}

/// The recorded statements that read or write the command table (DDL left out: it runs
/// once, at open).
pub(crate) fn table_statements() -> Vec<String> {
    STATEMENTS
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|sql| sql.contains("bridge_queued_commands"))
        .filter(|sql| {
            let first = sql.split_whitespace().next().unwrap_or("").to_uppercase();
            !matches!(first.as_str(), "CREATE" | "ALTER" | "DROP")
        })
        .cloned()
        .collect()
}

/// The highest `?N` / `$N` parameter number in `sql`.
#[allow(dead_code)] // the SQLite check binds no parameters
pub(crate) fn parameter_count(sql: &str, sigil: char) -> usize {
    let mut max = 0;
    for (i, c) in sql.char_indices() {
        if c == sigil {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                max = max.max(n);
            }
        }
    }
    max
}

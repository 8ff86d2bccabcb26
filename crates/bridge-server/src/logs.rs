//! The binary's log set-up, shared with the benchmarks so that they pay what production pays.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

use crate::LogFormat;

/// Installs the `bridge-server` binary's global `tracing` subscriber: `fmt` to stderr in
/// `format`, filtered by `RUST_LOG` (`info` when it is unset or unreadable), with colours
/// only on a terminal.
///
/// # Errors
///
/// When a global subscriber is installed already.
pub fn init_logs(format: LogFormat) -> Result<(), TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().finish().try_init(),
        LogFormat::Human => builder.finish().try_init(),
    }
}

//! Request-id correlation between commands and device answers.
//!
//! (crate docs are written below)

mod config;
mod correlator;
mod deadlines;
mod error;
mod ids;
mod manager;
mod stats;
mod transport;

pub use config::SessionConfig;
pub use correlator::{CommandResult, Correlator, Finished, MarkSent, Removed, ResponseAccepted};
pub use error::{CommandError, RejectReason, ResponseRejected, TransportError};
pub use manager::SessionManager;
pub use stats::SessionStats;
pub use transport::Transport;

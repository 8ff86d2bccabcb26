//! The errors of a [`Store`](crate::Store).

use bridge_protocol::http::CommandStatus;
use bridge_protocol::{CommandId, DeviceId, ValueError};

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// The server maps these to PROTOCOL.md 4 answers: [`QueueFull`](Self::QueueFull) is 429
/// `queue_full`, [`Conflict`](Self::Conflict) 409 `conflict`, [`NotFound`](Self::NotFound) 404
/// `not_found`, [`InvalidInput`](Self::InvalidInput) 400, [`Unavailable`](Self::Unavailable)
/// 503 `unavailable`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The device already holds the most non-final commands it may hold.
    #[error("the queue of device {device} is full ({max} commands that are not final)")]
    QueueFull {
        /// The device.
        device: DeviceId,
        /// The configured cap.
        max: u32,
    },
    /// The command is not in a state that allows the operation (`confirm`, `cancel`; a
    /// lease that cannot be ended is [`StaleLease`](Self::StaleLease) instead).
    #[error("cannot {action} command {id}: it is {}", status.as_str())]
    Conflict {
        /// The command.
        id: CommandId,
        /// What was attempted (`confirm`, `cancel`).
        action: &'static str,
        /// The state it is in.
        status: CommandStatus,
    },
    /// The caller's lease is no longer the command's live lease: it lapsed and was recovered
    /// (or reclaimed, or handed to another node). Nothing was changed. Do not retry: the
    /// command is, or was, delivered again by whoever holds it now.
    #[error("the lease on command {id} was lost: it lapsed and the command was handed out again")]
    StaleLease {
        /// The command.
        id: CommandId,
    },
    /// No command has this id.
    #[error("no command with id {id}")]
    NotFound {
        /// The id asked for.
        id: CommandId,
    },
    /// The input was refused before it reached the backend.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The backend did not answer (connection refused or lost, timeout, pool exhausted).
    /// Nothing was changed that the caller was told about; retrying later is safe.
    #[error("the {backend} queue backend is unavailable: {source}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What the client library said.
        #[source]
        source: BoxError,
    },
    /// The backend's server is set up so that it would lose queued commands without a
    /// word (a Redis that may evict keys), so the store refuses to open on it. Retrying
    /// will not help: change the setting, or opt out where the backend's options allow it.
    #[error("the {backend} server's {setting} is {value:?}: {why}; {fix}")]
    UnsafeServerSetting {
        /// Which backend.
        backend: &'static str,
        /// The server setting.
        setting: &'static str,
        /// Its value on the server.
        value: String,
        /// What it would do to queued commands.
        why: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// The backend answered with an error that retrying will not fix (a failed statement,
    /// a stored value this crate cannot read).
    #[error("the {backend} queue backend failed: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// True when the same call may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres", feature = "redis")),
        allow(dead_code)
    )]
    pub(crate) fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Self::Backend {
            backend,
            source: message.into().into(),
        }
    }
}

impl From<ValueError> for StoreError {
    fn from(e: ValueError) -> Self {
        Self::InvalidInput(InvalidInput::Value(e))
    }
}

/// Input a store refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A payload with no bytes: there is nothing to write to the device.
    #[error("payload must not be empty")]
    EmptyPayload,
    /// A payload over [`StoreConfig::max_payload_bytes`](crate::StoreConfig::max_payload_bytes).
    #[error("payload of {len} bytes is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A node id that is empty, too long or has control characters.
    #[error("a node id has 1 to {max} characters and no control characters (got {len})")]
    NodeId {
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `lease_next` was given a grace over [`Leased::MAX_GRACE`](crate::Leased::MAX_GRACE).
    #[error("a lease grace may be at most {max:?}")]
    LeaseGraceTooLong {
        /// The limit.
        max: std::time::Duration,
    },
    /// A RabbitMQ queue-name prefix too long for a device queue's name to fit AMQP's
    /// 255-byte limit.
    #[error("a queue-name prefix may be at most {max} bytes (got {len})")]
    QueuePrefixTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value (an id, a TTL) that does not pass the protocol's validation.
    #[error(transparent)]
    Value(#[from] ValueError),
}

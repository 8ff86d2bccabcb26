//! The offline command store.
//!
//! Commands for a device that is offline wait here until the device comes back
//! (PROTOCOL.md 4.2). [`Store`] is the one interface; the backends sit behind cargo
//! features and keep the same promises, proven by one conformance suite (module `testkit`,
//! behind the feature of that name, so a third party's store can run it too):
//!
//! | feature    | store            | for |
//! |------------|------------------|-----|
//! | `memory` (default) | `MemoryStore`    | tests and development; nothing survives the process |
//! | `sqlite`   | `SqliteStore`    | the server's embedded durable default; survives kill -9 |
//! | `postgres` | `PostgresStore`  | shared durable store for several server processes; `open` from a URL or `from_pool` on a caller's `sqlx::PgPool` |
//! | `redis`    | `RedisStore`     | deployments that already run Redis; `open` from a URL or `from_pool` on a caller's `deadpool_redis::Pool` |
//! | `rabbitmq` | `RabbitMqStore`  | push delivery through RabbitMQ queues, state in another store (see the `rabbitmq` module); `open` from a URL or `from_connection` on a caller's `Arc<lapin::Connection>` (the URL is still used once that connection has closed) |
//!
//! Time (TTL, lease deadlines) is read from the [`Clock`] in [`StoreConfig`], so tests move
//! a [`ManualClock`] instead of sleeping.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use bridge_protocol::http::{CommandOutcome, CommandStatus};
//! use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
//! use bridge_queue::{MemoryStore, NodeId, Store, StoreConfig, StoreError};
//!
//! let store = MemoryStore::new(StoreConfig::default());
//! let lock = DeviceId::new("lock-1")?;
//! let unlock = CommandType::new("unlock")?;
//!
//! // Queued while the device is away; a second one of the same type, queued by the same
//! // party (here the backend, the default), updates it in place.
//! let id = store
//!     .enqueue_or_update(&lock, &unlock, HexPayload::from_bytes(vec![1]), TtlSeconds::DEFAULT)
//!     .await?;
//! let same = store
//!     .enqueue_or_update(&lock, &unlock, HexPayload::from_bytes(vec![2]), TtlSeconds::DEFAULT)
//!     .await?;
//! assert_eq!(id, same);
//!
//! // The device is back: lease its next command, send it, record the answer. The lease
//! // lasts the command's own timeout plus a grace for the round trips around it.
//! let node = NodeId::new("node-a")?;
//! let grace = Duration::from_secs(5);
//! let leased = store.lease_next(&lock, &node, grace).await?.expect("one is due");
//! assert_eq!(leased.command.payload, HexPayload::from_bytes(vec![2]));
//! assert!(leased.command.lease_deadline.is_some());
//! // One delivery per device at a time: nothing else is handed out while the lease lives.
//! assert!(store.lease_next(&lock, &node, grace).await?.is_none());
//! let done = store
//!     .complete(&leased.lease, CommandOutcome::Payload(HexPayload::from_bytes(vec![0x01])))
//!     .await?;
//! assert_eq!(done.status, CommandStatus::Succeeded);
//! assert_eq!(done.attempts, 1);
//!
//! // Too late to cancel.
//! assert!(matches!(store.cancel(&id).await, Err(StoreError::Conflict { .. })));
//! # Ok(())
//! # }
//! ```

mod clock;
mod error;
#[cfg(feature = "memory")]
mod memory;
mod model;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, InvalidInput, StoreError};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
pub use model::{
    Cut, Lease, LeaseToken, Leased, NewCommand, NodeId, OpenCounts, Party, QueuedCommand,
    StoreConfig, SweepReport,
};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{RabbitMqOptions, RabbitMqStore};
#[cfg(feature = "redis")]
pub use redis::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore};
pub use store::Store;

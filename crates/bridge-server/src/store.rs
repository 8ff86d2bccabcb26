//! Opening the queue backend a [`QueueUrl`] names.

use std::sync::Arc;

use bridge_queue::{MemoryStore, Store, StoreConfig};

use crate::ServerError;
use crate::config::QueueUrl;

/// Opens the store `url` names, with `config`'s limits.
///
/// `memory://` is always available; `sqlite://PATH` (default feature `sqlite`),
/// `postgres://...` (feature `postgres`) and `redis://...` (feature `redis`) need their
/// cargo feature, and are refused with [`ServerError::BackendUnavailable`] without it.
/// `amqp://` is understood by the configuration but bridge-queue has no RabbitMQ store, so
/// it is refused too.
pub async fn open_store(
    url: &QueueUrl,
    config: StoreConfig,
) -> Result<Arc<dyn Store>, ServerError> {
    match url {
        QueueUrl::Memory => Ok(Arc::new(MemoryStore::new(config))),
        #[cfg(feature = "sqlite")]
        QueueUrl::Sqlite(path) => {
            let options = bridge_queue::SqliteOptions::new(path);
            Ok(Arc::new(
                bridge_queue::SqliteStore::open(&options, config).await?,
            ))
        }
        #[cfg(not(feature = "sqlite"))]
        QueueUrl::Sqlite(_) => Err(ServerError::BackendUnavailable {
            backend: "sqlite",
            reason: "this build lacks the `sqlite` feature",
        }),
        #[cfg(feature = "postgres")]
        QueueUrl::Postgres(url) => {
            let options = bridge_queue::PostgresOptions::new(url.clone());
            Ok(Arc::new(
                bridge_queue::PostgresStore::open(&options, config).await?,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        QueueUrl::Postgres(_) => Err(ServerError::BackendUnavailable {
            backend: "postgres",
            reason: "this build lacks the `postgres` feature",
        }),
        #[cfg(feature = "redis")]
        QueueUrl::Redis(url) => {
            let options = bridge_queue::RedisOptions::new(url.clone());
            Ok(Arc::new(
                bridge_queue::RedisStore::open(&options, config).await?,
            ))
        }
        #[cfg(not(feature = "redis"))]
        QueueUrl::Redis(_) => Err(ServerError::BackendUnavailable {
            backend: "redis",
            reason: "this build lacks the `redis` feature",
        }),
        QueueUrl::Amqp(_) => Err(ServerError::BackendUnavailable {
            backend: "amqp",
            reason: "bridge-queue has no RabbitMQ store yet",
        }),
    }
}

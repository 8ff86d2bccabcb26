//! Opening the queue backend a [`QueueUrl`] names.

use std::sync::Arc;

use bridge_queue::{MemoryStore, Store, StoreConfig};

use crate::ServerError;
use crate::config::QueueUrl;

/// Where `amqp://` keeps the commands' state: a SQLite file in the working directory.
pub const RABBITMQ_STATE_FILE: &str = "bridge-queue-state.sqlite";

/// Opens the store `url` names, with `config`'s limits.
///
/// `memory://` is always available; `sqlite://PATH` (default feature `sqlite`),
/// `postgres://...` (feature `postgres`), `redis://...` (feature `redis`) and `amqp://...`
/// (feature `rabbitmq`) need their cargo feature, and are refused with
/// [`ServerError::BackendUnavailable`] without it.
///
/// RabbitMQ carries delivery notices only; bridge-queue's `RabbitMqStore` keeps the
/// commands' state in a companion store, which the server makes the SQLite file
/// [`RABBITMQ_STATE_FILE`] in the working directory. (The server delivers by leasing, on its
/// own triggers; the notices serve other AMQP consumers and wake-ups.)
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
        #[cfg(feature = "rabbitmq")]
        QueueUrl::Amqp(url) => {
            let state = bridge_queue::SqliteStore::open(
                &bridge_queue::SqliteOptions::new(RABBITMQ_STATE_FILE),
                config,
            )
            .await?;
            let options = bridge_queue::RabbitMqOptions::new(url.clone());
            Ok(Arc::new(
                bridge_queue::RabbitMqStore::open(options, state).await?,
            ))
        }
        #[cfg(not(feature = "rabbitmq"))]
        QueueUrl::Amqp(_) => Err(ServerError::BackendUnavailable {
            backend: "rabbitmq",
            reason: "this build lacks the `rabbitmq` feature",
        }),
    }
}

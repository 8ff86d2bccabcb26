//! The retention task: deletes final commands whose retention is over, off the request path.
//!
//! Every [`INTERVAL`] it asks the store to [`purge`](Store::purge) a batch of [`BATCH`]
//! commands, and again while a whole batch was deleted, yielding between batches, so a
//! large backlog (a server that was down for a while) is worked off in bounded steps that
//! never hold the backend for long. `GET /v1/commands/{id}` answers 404 for such a command
//! as soon as its retention is over, deleted or not: the store's `get` checks it.

use std::sync::Arc;
use std::time::Duration;

use bridge_queue::Store;
use tokio::task::JoinHandle;

/// Time between two rounds.
pub(crate) const INTERVAL: Duration = Duration::from_mins(1);

/// Commands deleted per `purge` call.
pub(crate) const BATCH: usize = 1000;

/// Starts the task on the current runtime; abort the handle to stop it.
pub(crate) fn spawn(store: Arc<dyn Store>) -> JoinHandle<()> {
    tokio::spawn(run(store, INTERVAL, BATCH))
}

/// Purges in batches of `batch` every `interval`, the first round one interval in.
async fn run(store: Arc<dyn Store>, interval: Duration, batch: usize) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        round(&*store, batch).await;
    }
}

/// One round: batches until one comes back short (or the store fails; the next round
/// tries again).
async fn round(store: &dyn Store, batch: usize) {
    let mut total = 0_u64;
    loop {
        match store.purge(batch).await {
            Ok(deleted) => {
                total = total.saturating_add(deleted);
                if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot delete final commands past their retention");
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(
            deleted = total,
            "deleted final commands past their retention"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bridge_protocol::http::CommandStatus;
    use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
    use bridge_queue::{ManualClock, MemoryStore, Store, StoreConfig};

    use super::run;

    /// The task deletes every final command past its retention, however many batches that
    /// takes, and leaves the others; on virtual time, so nothing sleeps.
    #[tokio::test(start_paused = true)]
    async fn the_retention_task_deletes_final_commands_past_their_retention_in_batches() {
        let clock = ManualClock::starting_now();
        let retention = Duration::from_hours(1);
        let store = Arc::new(MemoryStore::new(
            StoreConfig::default()
                .with_retention(retention)
                .with_clock(Arc::new(clock.clone())),
        ));
        let ttl = TtlSeconds::new(60).expect("valid");
        // Seven commands cancelled (final), on seven devices; one left pending.
        for n in 0..7 {
            let device = DeviceId::new(&format!("lock-{n}")).expect("valid");
            let id = store
                .enqueue_or_update(
                    &device,
                    &CommandType::new("unlock").expect("valid"),
                    HexPayload::from_bytes(vec![1]),
                    ttl,
                )
                .await
                .expect("enqueue");
            store.cancel(&id).await.expect("cancel");
        }
        let open_device = DeviceId::new("lock-open").expect("valid");
        let open = store
            .enqueue_or_update(
                &open_device,
                &CommandType::new("unlock").expect("valid"),
                HexPayload::from_bytes(vec![1]),
                ttl,
            )
            .await
            .expect("enqueue");
        clock.advance(Duration::from_mins(1) + retention);

        let task = tokio::spawn(run(
            Arc::clone(&store) as Arc<dyn Store>,
            Duration::from_secs(10),
            3,
        ));
        // One round, ten seconds in (three batches: 3, 3, 1), deletes all seven.
        tokio::time::sleep(Duration::from_secs(11)).await;
        task.abort();
        assert_eq!(store.purge(100).await.expect("purge"), 0, "nothing left");
        assert_eq!(
            store.get(&open).await.expect("open commands stay").status,
            CommandStatus::Pending
        );
    }
}

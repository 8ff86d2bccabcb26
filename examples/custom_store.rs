//! A `Store` of your own, checked by the conformance suite every backend runs.
//!
//! `cargo test -p examples --example custom_store` — the conformance suite on it.
//! `cargo run -p examples --example custom_store` — a server queuing commands in it.
//!
//! `AuditedStore` keeps an audit trail of every change to the queue (who queued what, each
//! delivery, each outcome) and leaves the storing to any other `Store` — here the
//! in-memory one; `PostgresStore::from_pool` on the service's own pool would do the same.
//! The conformance suite (`bridge_queue::testkit`) checks that the wrapper keeps every
//! promise of the trait: dedup in place, one lease per device across processes, fencing,
//! expiry, attempts, … — the same cases the built-in backends pass.

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BridgeClient, BridgeConfig, Credentials};
use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{CommandId, CommandType, DeviceId, HexPayload, Hops, TtlSeconds};
use bridge_queue::{
    Cut, Lease, Leased, MemoryStore, NewCommand, NodeId, OpenCounts, QueuedCommand, Store,
    StoreConfig, StoreError, SweepReport,
};
use bridge_server::{Server, ServerConfig};
use serde_json::{Value, json};

type BoxError = Box<dyn Error + Send + Sync>;

/// Most lines the trail keeps; older ones are dropped first.
const TRAIL: usize = 10_000;

/// A store that records every change to the queue, and stores through `S`.
struct AuditedStore<S> {
    inner: S,
    trail: Arc<Mutex<Vec<String>>>,
}

impl<S: Store> AuditedStore<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            trail: Arc::default(),
        }
    }

    /// Records `line` when `result` is a change that happened.
    fn record<T>(&self, result: &Result<T, StoreError>, line: impl FnOnce(&T) -> String) {
        if let Ok(value) = result
            && let Ok(mut trail) = self.trail.lock()
        {
            if trail.len() == TRAIL {
                trail.remove(0);
            }
            trail.push(line(value));
        }
    }

    fn trail(&self) -> Vec<String> {
        self.trail.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

fn ended(command: &QueuedCommand) -> String {
    format!(
        "{} {} is {:?} after {} attempt(s)",
        command.device, command.id, command.status, command.attempts
    )
}

#[async_trait]
impl<S: Store> Store for AuditedStore<S> {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        let what = format!("{} queued by {}", command.device, command.queued_by);
        let result = self.inner.enqueue(command).await;
        self.record(&result, |id| format!("{what}: {id}"));
        result
    }

    async fn enqueue_or_update(
        &self,
        device: &DeviceId,
        command_type: &CommandType,
        payload: HexPayload,
        ttl: TtlSeconds,
    ) -> Result<CommandId, StoreError> {
        let result = self
            .inner
            .enqueue_or_update(device, command_type, payload, ttl)
            .await;
        self.record(&result, |id| {
            format!("{device} {command_type} queued: {id}")
        });
        result
    }

    async fn enqueue_with_confirmation(
        &self,
        device: &DeviceId,
        command_type: &CommandType,
        payload: HexPayload,
        ttl: TtlSeconds,
    ) -> Result<CommandId, StoreError> {
        let result = self
            .inner
            .enqueue_with_confirmation(device, command_type, payload, ttl)
            .await;
        self.record(&result, |id| {
            format!("{device} {command_type} awaits confirmation: {id}")
        });
        result
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let result = self.inner.confirm(id).await;
        self.record(&result, |c| format!("{} {} confirmed", c.device, c.id));
        result
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let result = self.inner.cancel(id).await;
        self.record(&result, ended);
        result
    }

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let result = self.inner.lease_next(device, owner, grace).await;
        if let Ok(Some(leased)) = &result {
            self.record(&Ok::<_, StoreError>(()), |()| {
                format!("{device} {} delivering by {owner}", leased.command.id)
            });
        }
        result
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let result = self.inner.complete(lease, outcome).await;
        self.record(&result, ended);
        result
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let result = self.inner.release(lease, cut).await;
        self.record(&result, ended);
        result
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let result = self.inner.reclaim(owner).await;
        if let Ok(back) = &result
            && !back.is_empty()
        {
            self.record(&result, |back| format!("{owner} reclaimed {}", back.len()));
        }
        result
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        let result = self.inner.drain_pending(device, owner).await;
        self.record(&result, |drained| {
            format!("{device}: {} drained by {owner}", drained.len())
        });
        result
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.get(id).await
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.list_open(device).await
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        self.inner.pending_count(device).await
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        self.inner.due_devices(limit).await
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        // Forwarded, so the wrapped store keeps how far each attempt got (the trait's
        // default would keep nothing).
        self.inner.record_hops(lease, hops).await
    }

    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        let result = self.inner.purge(limit).await;
        if let Ok(deleted) = &result
            && *deleted > 0
        {
            self.record(&result, |deleted| {
                format!("purge: {deleted} final command(s) past their retention")
            });
        }
        result
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let result = self.inner.sweep().await;
        if let Ok(report) = &result
            && report.expired + report.recovered + report.failed > 0
        {
            self.record(&result, |report| {
                format!(
                    "sweep: {} expired, {} recovered, {} failed",
                    report.expired, report.recovered, report.failed
                )
            });
        }
        result
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let result = self.inner.expire(device).await;
        if let Ok(expired) = &result {
            for command in expired {
                self.record(&Ok::<_, StoreError>(()), |()| ended(command));
            }
        }
        result
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        self.inner.open_counts().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// The conformance suite on `AuditedStore<MemoryStore>`: every store a harness opens shares
/// one root's commands, as processes sharing a database would (some cases race two).
#[cfg(test)]
mod conformance {
    use async_trait::async_trait;
    use bridge_queue::testkit::Harness;
    use bridge_queue::{MemoryStore, StoreConfig, StoreError};

    use super::AuditedStore;

    pub(crate) struct AuditHarness {
        root: MemoryStore,
    }

    #[async_trait]
    impl Harness for AuditHarness {
        type Store = AuditedStore<MemoryStore>;
        async fn open(&self, config: StoreConfig) -> Result<Self::Store, StoreError> {
            Ok(AuditedStore::new(self.root.share(config)))
        }
        async fn cleanup(&self) {}
    }

    #[allow(clippy::unused_async)] // the suite awaits every harness constructor
    pub(crate) async fn harness() -> AuditHarness {
        AuditHarness {
            root: MemoryStore::default(),
        }
    }
}

#[cfg(test)]
bridge_queue::conformance_tests!(audited, crate::conformance::harness());

/// Serves with the audited store: a command queued for an offline lock is delivered when
/// its phone connects, and the trail tells the story.
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let store = Arc::new(AuditedStore::new(MemoryStore::new(StoreConfig::default())));
    let server = Server::builder(ServerConfig::default())
        .development_mode()
        .store(Arc::clone(&store) as Arc<dyn Store>)
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.clone().serve(listener, std::future::pending()));

    let http = reqwest::Client::new();
    let queued: Value = http
        .post(format!("http://{addr}/v1/devices/lock-1/commands"))
        .json(&json!({"payload":"01","commandType":"unlock","ifOffline":"queue"}))
        .send()
        .await?
        .json()
        .await?;
    println!("POST (lock-1 offline): {queued}");
    let id = queued["commandId"]
        .as_str()
        .ok_or("no commandId")?
        .to_owned();

    let lock = DeviceId::new("lock-1")?;
    let phone = BridgeClient::start(
        BridgeConfig::new(
            format!("ws://{addr}/ws"),
            Credentials::Development {
                user_id: "phone-1".into(),
            },
            vec![lock.clone()],
        ),
        Arc::new(SimulatedLocks::new([lock], LockBehaviour::default())),
    );
    phone.wait_connected(1).await?;
    let mut tries = 0;
    let command = loop {
        let command: Value = http
            .get(format!("http://{addr}/v1/commands/{id}"))
            .send()
            .await?
            .json()
            .await?;
        tries += 1;
        if command["status"] == "succeeded" || tries > 250 {
            break command;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("GET /v1/commands/{id}: {command}");
    phone.shutdown().await;
    server.shutdown().await;
    println!("the audit trail:");
    for line in store.trail() {
        println!("  {line}");
    }
    if command["status"] != "succeeded" {
        return Err("the queued command was not delivered".into());
    }
    Ok(())
}

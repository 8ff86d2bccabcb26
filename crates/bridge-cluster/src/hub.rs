//! [`ClusterHub`]: a [`LocalHub`] joined to the other nodes over NATS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bridge_hub::{Hub, HubHealth, LocalHub};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::ClusterConfig;
use crate::membership::{Change, Incarnation, Membership};
use crate::subjects::Subjects;
use crate::wire;

/// What the background tasks and the hub share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) me: Incarnation,
    pub(crate) subjects: Subjects,
    pub(crate) state: Mutex<ClusterState>,
}

pub(crate) struct ClusterState {
    pub(crate) membership: Membership,
    /// Whether the NATS client is connected (its last event).
    pub(crate) connected: bool,
}

impl Shared {
    /// Applies membership changes: logs them (and, in later steps, drops what dead nodes
    /// held).
    fn changed(&self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Joined(who) if who == self.me => {
                    tracing::info!(node = %who.node, "joined the cluster");
                }
                Change::Joined(who) => {
                    tracing::info!(node = %who.node, epoch = who.epoch, "a node joined");
                }
                Change::Restarted { old, new } => {
                    tracing::warn!(
                        node = %new.node,
                        old_epoch = old.epoch,
                        new_epoch = new.epoch,
                        "a node restarted"
                    );
                }
                Change::Left(who) if who == self.me => {
                    tracing::warn!(
                        "left the cluster: this node's own heartbeats do not come back from \
                         NATS; serving this node's connections only"
                    );
                }
                Change::Left(who) => {
                    tracing::warn!(node = %who.node, epoch = who.epoch, "a node left or died");
                }
            }
        }
    }

    /// Runs the membership table's expiry at `now`.
    fn expire(&self, now: Instant) {
        let changes = self.state.lock().membership.expire(now);
        self.changed(changes);
    }

    fn heard(&self, who: &Incarnation, now: Instant) {
        let change = self.state.lock().membership.heartbeat(who, now);
        self.changed(change.into_iter().collect());
    }

    fn goodbye(&self, who: &Incarnation) {
        let change = self.state.lock().membership.leave(who);
        self.changed(change.into_iter().collect());
    }

    pub(crate) fn health(&self) -> HubHealth {
        let state = self.state.lock();
        let nodes = state.membership.len();
        let reason = if !state.connected {
            Some(format!(
                "not connected to the cluster's NATS server at {}",
                self.config.url
            ))
        } else if !state.membership.is_alive(&self.me) {
            Some("not joined to the cluster yet: this node's heartbeat has not come back".into())
        } else {
            None
        };
        HubHealth::cluster(nodes, reason)
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A [`Hub`] over a [`LocalHub`] that joins the other nodes meeting on one NATS server
/// (PROTOCOL.md 5).
///
/// Install it with the server's `ServerBuilder::wrap_hub`:
/// `builder.wrap_hub(move |local| ClusterHub::start(config, local))`. The local hub still
/// owns this process's sockets; the methods it overrides are distributed over NATS, the
/// others delegate to the local hub. Start it inside a Tokio runtime: it connects in the
/// background (a node starts without NATS and serves its own connections meanwhile) and
/// reconnects by itself.
pub struct ClusterHub {
    local: LocalHub,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHub")
            .field("node", &self.shared.me.node)
            .field("health", &self.shared.health())
            .finish_non_exhaustive()
    }
}

impl ClusterHub {
    /// Joins the cluster of `config` around `local`, and returns the hub to install.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn start(config: ClusterConfig, local: LocalHub) -> Arc<Self> {
        let me = Incarnation {
            node: config.node_id.clone(),
            epoch: fastrand::u64(1..),
        };
        let subjects = Subjects::new(&config.prefix);
        let shared = Arc::new(Shared {
            me,
            subjects,
            state: Mutex::new(ClusterState {
                membership: Membership::new(config.dead_after),
                connected: false,
            }),
            config,
        });
        let tasks = vec![tokio::spawn(run(Arc::clone(&shared)))];
        Arc::new(Self {
            local,
            shared,
            tasks,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.me.node
    }

    /// The nodes this node sees alive (itself included once it has joined), ordered by id.
    pub fn nodes(&self) -> Vec<String> {
        self.shared
            .state
            .lock()
            .membership
            .nodes()
            .map(|n| n.node)
            .collect()
    }
}

impl Drop for ClusterHub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Hub for ClusterHub {
    fn local(&self) -> &LocalHub {
        &self.local
    }

    fn health(&self) -> HubHealth {
        self.shared.health()
    }
}

/// Connects, then keeps the node's heartbeat and its view of the others until aborted.
async fn run(shared: Arc<Shared>) {
    let events = Arc::clone(&shared);
    let options = async_nats::ConnectOptions::new()
        .name(format!("bridge-server {}", shared.me.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(shared.config.heartbeat.max(Duration::from_millis(100)))
        .connection_timeout(shared.config.dead_after)
        .reconnect_delay_callback(|attempts| {
            // Quick first retries, then at most 2 s between them: a cluster heals within
            // seconds of NATS coming back.
            Duration::from_millis(100 * u64::try_from(attempts.min(20)).unwrap_or(20))
        })
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move { on_event(&shared, &event) }
        });
    let client = match options.connect(shared.config.url.as_str()).await {
        Ok(client) => client,
        Err(error) => {
            // Only an unusable address gets here (retry_on_initial_connect retries the rest).
            tracing::error!(%error, url = %shared.config.url, "cannot use the cluster's NATS server; serving this node's connections only");
            return;
        }
    };
    let heartbeats = match client.subscribe(shared.subjects.heartbeat()).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::error!(%error, "cannot subscribe to the cluster's heartbeats");
            return;
        }
    };
    let listen = tokio::spawn(listen_heartbeats(Arc::clone(&shared), heartbeats));
    let _abort_listener = AbortOnDrop(listen);
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = wire::heartbeat(&shared.me, false);
    loop {
        tick.tick().await;
        shared.expire(now());
        // While NATS is away the client buffers publications; a beat that cannot even be
        // buffered in time is skipped (the next one will do).
        let publish = client.publish(shared.subjects.heartbeat(), beat.clone());
        if tokio::time::timeout(shared.config.heartbeat, publish)
            .await
            .is_err()
        {
            tracing::debug!("heartbeat not published in time");
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn on_event(shared: &Shared, event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!(url = %shared.config.url, "connected to the cluster's NATS server");
            shared.state.lock().connected = true;
        }
        async_nats::Event::Disconnected => {
            tracing::warn!(
                url = %shared.config.url,
                "lost the cluster's NATS server; serving this node's connections only until it is back"
            );
            shared.state.lock().connected = false;
        }
        other => tracing::debug!(event = %other, "NATS client event"),
    }
}

async fn listen_heartbeats(shared: Arc<Shared>, mut heartbeats: async_nats::Subscriber) {
    while let Some(message) = heartbeats.next().await {
        match wire::parse_heartbeat(&message.payload) {
            Some((who, false)) => shared.heard(&who, now()),
            Some((who, true)) => shared.goodbye(&who),
            None => tracing::debug!("ignored a malformed heartbeat"),
        }
    }
}

//! Several bridge-server nodes as one (PROTOCOL.md 5), over NATS.
//!
//! [`ClusterHub`] wraps a node's [`LocalHub`](bridge_hub::LocalHub) and is installed through
//! the same public seam a user's own hub would use, the server's `ServerBuilder::wrap_hub`:
//!
//! ```no_run
//! # use bridge_cluster::{ClusterConfig, ClusterHub};
//! # fn wire(local: bridge_hub::LocalHub) {
//! let config = ClusterConfig::new("nats://127.0.0.1:4222", "node-a");
//! let hub = ClusterHub::start(config, local);
//! # let _ = hub;
//! # }
//! ```
//!
//! What it distributes, and how, is described in ARCHITECTURE.md ("Clusters").
//!
//! * **Membership** by heartbeats on `P.cluster.heartbeat` (every second by default): a node
//!   silent for [`ClusterConfig::dead_after`] (5 s) is dead. A node is *joined* while its own
//!   heartbeat comes back through NATS; until then (and within `dead_after` of losing NATS)
//!   [`Hub::health`](bridge_hub::Hub::health) says not ready, and the node serves its own
//!   connections only.
//! * **Presence** on `P.cluster.presence`: each node reports per device how many bridges hold
//!   it there and what its best holder last said (link, rssi), on every change, and a
//!   snapshot of everything when a node joins or it reconnects. A node's view of the others
//!   ([`PresenceTable`]) is merged into `GET /v1/devices`, and into the `device_status`
//!   frames of the local hub through its
//!   [`PresenceOverlay`](bridge_hub::PresenceOverlay).
//! * **Broadcasts** (events, `command_result` announcements) and frames for a user on
//!   `P.cluster.broadcast` and `P.cluster.user`, with a reply inbox: each other node queues
//!   the frame for its own connections and answers how many, so `delivered` counts them all.

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hub;
mod membership;
mod presence;
mod routing;
mod subjects;
mod wire;

use std::time::Duration;

pub use hub::ClusterHub;
pub use membership::{Change, Incarnation, Membership};
pub use presence::PresenceTable;
pub use routing::{Route, choose};

/// How a node joins its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The NATS server the cluster meets on (`--cluster`, e.g. `nats://127.0.0.1:4222`).
    pub url: String,
    /// This node's id (`--node-id`): unique in the cluster, the same across restarts.
    pub node_id: String,
    /// Prefix of every subject (`--cluster-prefix`, default `bridge`).
    pub prefix: String,
    /// Time between two heartbeats of this node (default 1 s).
    pub heartbeat: Duration,
    /// Silence after which a node is declared dead (default 5 s, so that a dead node's
    /// commands end within the 10 s of PROTOCOL.md 5).
    pub dead_after: Duration,
    /// How long a broadcast waits for the other nodes' counts (default 1 s); a node that
    /// has not answered by then counts 0.
    pub gather_timeout: Duration,
}

impl ClusterConfig {
    /// Default prefix of every subject.
    pub const DEFAULT_PREFIX: &'static str = "bridge";

    /// The cluster on the NATS server `url`, as node `node_id`, with every other default.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// Sets the subject prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            node_id: String::new(),
            prefix: Self::DEFAULT_PREFIX.into(),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            gather_timeout: Duration::from_secs(1),
        }
    }
}

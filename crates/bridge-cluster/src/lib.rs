//! Several bridge-server nodes as one (PROTOCOL.md 5), over NATS.
//!
//! [`ClusterHub`] wraps a node's [`LocalHub`](bridge_hub::LocalHub) and is installed through
//! the same public seam a user's own hub would use, the server's `ServerBuilder::wrap_hub`:
//!
//! ```no_run
//! # use bridge_cluster::{ClusterConfig, ClusterHub};
//! # fn wire(builder: bridge_hub::LocalHub) {
//! let config = ClusterConfig::new("nats://127.0.0.1:4222", "node-a");
//! let hub = ClusterHub::start(config, builder);
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

mod hub;
mod membership;
mod subjects;
mod wire;

use std::time::Duration;

pub use hub::ClusterHub;
pub use membership::{Change, Incarnation, Membership};

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
        }
    }
}

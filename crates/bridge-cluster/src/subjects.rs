//! The NATS subjects a cluster uses, all under its prefix (`--cluster-prefix`, default
//! `bridge`), so that several clusters can share one NATS server.

/// Subject names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    heartbeat: String,
    presence: String,
    broadcast: String,
    user: String,
    node: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            heartbeat: format!("{prefix}.cluster.heartbeat"),
            presence: format!("{prefix}.cluster.presence"),
            broadcast: format!("{prefix}.cluster.broadcast"),
            user: format!("{prefix}.cluster.user"),
            node: format!("{prefix}.cluster.node."),
        }
    }

    /// `P.cluster.node.{hex of the node id}`: messages for one node (forwarded writes and
    /// their ends; answers and losses for their senders). The id is hex-encoded: a node id
    /// may hold characters a subject may not.
    pub(crate) fn node(&self, node: &str) -> String {
        use std::fmt::Write;
        let mut subject = self.node.clone();
        for byte in node.as_bytes() {
            let _ = write!(subject, "{byte:02x}");
        }
        subject
    }

    /// `P.cluster.presence`: each node's presence reports (snapshots and per-device
    /// changes).
    pub(crate) fn presence(&self) -> String {
        self.presence.clone()
    }

    /// `P.cluster.broadcast`: a frame for a device's subscribers on every node; each node
    /// answers how many it queued it for.
    pub(crate) fn broadcast(&self) -> String {
        self.broadcast.clone()
    }

    /// `P.cluster.user`: a frame for every connection of a user, on every node.
    pub(crate) fn user(&self) -> String {
        self.user.clone()
    }

    /// `P.cluster.heartbeat`: every node's heartbeat, and its goodbye.
    pub(crate) fn heartbeat(&self) -> String {
        self.heartbeat.clone()
    }
}

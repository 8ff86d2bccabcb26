//! The NATS subjects a cluster uses, all under its prefix (`--cluster-prefix`, default
//! `bridge`), so that several clusters can share one NATS server.

/// Subject names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    heartbeat: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            heartbeat: format!("{prefix}.cluster.heartbeat"),
        }
    }

    /// `P.cluster.heartbeat`: every node's heartbeat, and its goodbye.
    pub(crate) fn heartbeat(&self) -> String {
        self.heartbeat.clone()
    }
}

//! The dispatcher's [`Outlet`] over the hub and the server's metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_dispatch::Outlet;
use bridge_hub::{Frame, Hub};
use bridge_protocol::{CommandResult, DeviceId, ServerToUser};

use crate::metrics::Metrics;

/// Announces `command_result` frames to a device's subscribers through the hub, and counts
/// every command's end in `bridge_commands_total` and `bridge_command_duration_seconds`, and
/// every recovered panic of the dispatcher in `bridge_task_panics_total`.
pub(crate) struct HubOutlet {
    hub: Arc<dyn Hub>,
    metrics: Arc<Metrics>,
}

impl HubOutlet {
    pub(crate) fn new(hub: Arc<dyn Hub>, metrics: Arc<Metrics>) -> Self {
        Self { hub, metrics }
    }
}

#[async_trait]
impl Outlet for HubOutlet {
    async fn announce(&self, device: &DeviceId, result: CommandResult) {
        let frame = Frame::from(ServerToUser::CommandResult(result));
        let delivered = self.hub.broadcast(device, &frame).await;
        tracing::debug!(%device, delivered, "command_result announced");
    }

    fn command_ended(&self, outcome: &'static str, sent_for: Option<Duration>) {
        self.metrics.command(outcome);
        if let Some(elapsed) = sent_for {
            self.metrics.command_duration(elapsed);
        }
    }

    fn task_panicked(&self, what: &'static str) {
        self.metrics.task_panicked(what);
    }

    fn queued(&self, device: &DeviceId) {
        self.hub.queued(device);
    }
}

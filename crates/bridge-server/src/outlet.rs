//! The dispatcher's [`Outlet`] over the hub and the server's metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_dispatch::Outlet;
use bridge_hub::{Frame, Hub};
use bridge_protocol::{CommandResult, DeviceId, ServerToUser};

use crate::hooks::HookQueue;
use crate::metrics::Metrics;

/// Announces `command_result` frames to a device's subscribers through the hub, and counts
/// every command's end in `bridge_commands_total` and `bridge_command_duration_seconds`, and
/// every recovered panic of the dispatcher in `bridge_task_panics_total`; every command's
/// end also goes to the application's hooks.
pub(crate) struct HubOutlet {
    hub: Arc<dyn Hub>,
    metrics: Arc<Metrics>,
    hooks: Arc<HookQueue>,
}

impl HubOutlet {
    pub(crate) fn new(hub: Arc<dyn Hub>, metrics: Arc<Metrics>, hooks: Arc<HookQueue>) -> Self {
        Self {
            hub,
            metrics,
            hooks,
        }
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

    fn command_ended_for(
        &self,
        device: &DeviceId,
        outcome: &'static str,
        sent_for: Option<Duration>,
    ) {
        self.command_ended(outcome, sent_for);
        self.hooks.command_ended(device, outcome, sent_for);
    }

    fn task_panicked(&self, what: &'static str) {
        self.metrics.task_panicked(what);
    }

    fn queued(&self, device: &DeviceId) {
        self.hub.queued(device);
    }
}

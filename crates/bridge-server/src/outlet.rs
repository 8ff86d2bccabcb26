//! The dispatcher's [`Outlet`] over the hub and the server's metrics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_dispatch::Outlet;
use bridge_hub::{Frame, Hub};
use bridge_protocol::http::CommandResponse;
use bridge_protocol::{CommandResult, DeviceId, Hops, RequestId, ServerToUser, StreamEvent};

use crate::hooks::HookQueue;
use crate::metrics::Metrics;
use crate::stream::LiveStream;

/// Announces `command_result` frames to a device's subscribers through the hub, and counts
/// every command's end in `bridge_commands_total` and `bridge_command_duration_seconds`, and
/// every recovered panic of the dispatcher in `bridge_task_panics_total`; the stages of
/// sent commands go to `bridge_command_stage_seconds`, and every `command_result` of a
/// command that ended after it was sent or queued to the live stream (PROTOCOL.md 4.5);
/// every command's end also goes to the application's hooks.
pub(crate) struct HubOutlet {
    hub: Arc<dyn Hub>,
    metrics: Arc<Metrics>,
    hooks: Arc<HookQueue>,
    stream: Arc<LiveStream>,
}

impl HubOutlet {
    pub(crate) fn new(
        hub: Arc<dyn Hub>,
        metrics: Arc<Metrics>,
        hooks: Arc<HookQueue>,
        stream: Arc<LiveStream>,
    ) -> Self {
        Self {
            hub,
            metrics,
            hooks,
            stream,
        }
    }
}

#[async_trait]
impl Outlet for HubOutlet {
    async fn announce(&self, device: &DeviceId, result: CommandResult) {
        self.stream
            .publish_with(device, || StreamEvent::CommandResult(result.clone()));
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

    fn stages_reached(&self, hops: &Hops) {
        self.metrics.stages(hops);
    }

    fn command_answered(
        &self,
        device: &DeviceId,
        request_id: &RequestId,
        answer: &CommandResponse,
    ) {
        self.stream.publish_with(device, || {
            StreamEvent::CommandResult(answer.to_result(Some(*request_id), device.clone()))
        });
    }

    fn task_panicked(&self, what: &'static str) {
        self.metrics.task_panicked(what);
    }

    fn queued(&self, device: &DeviceId) {
        self.hub.queued(device);
    }
}

//! What the server does with the hub's events.
//!
//! The hub's event sink only puts events on a channel; one task takes them off in order and
//! acts: answers go to the session manager, lost bridges fail their pending commands at
//! once, presence changes start delivery passes, user commands run on their own tasks.

use std::sync::{Arc, Weak};

use bridge_hub::{Frame, HubEvent};
use bridge_protocol::{ConnectionId, ErrorCode, ErrorFrame, Role, ServerToUser};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::error::ApiError;
use crate::server::Core;

/// Handles events until the hub (and with it the channel's sender) is gone.
pub(crate) async fn dispatch(core: Weak<Core>, mut events: mpsc::UnboundedReceiver<HubEvent>) {
    while let Some(event) = events.recv().await {
        let Some(core) = core.upgrade() else { return };
        handle(&core, event).await;
    }
}

async fn handle(core: &Arc<Core>, event: HubEvent) {
    match event {
        HubEvent::BleResponse {
            connection,
            response,
        } => {
            if let Err(rejected) = core.session.handle_response(connection, response) {
                let code = rejected.error_code();
                core.metrics.frame_rejected(code);
                let message = match code {
                    ErrorCode::Forbidden => "this request was sent to another connection or device",
                    _ => "no command is pending with this requestId",
                };
                let frame = Frame::from(ServerToUser::Error(ErrorFrame::new(
                    code,
                    message,
                    Some(rejected.request_id),
                )));
                // The connection may be gone already; nothing else to tell it then.
                let _ = core.hub.send_to_connection(connection, &frame).await;
            }
        }
        HubEvent::DeviceReleased {
            device_id,
            connection,
            ..
        } => core.session.device_released(connection, &device_id),
        HubEvent::ConnectionClosed {
            connection,
            role: Role::Bridge,
            ..
        } => core.session.connection_lost(connection),
        HubEvent::DeviceOnline { device_id } => core.dispatch.device_online(&device_id),
        HubEvent::DeviceOffline { device_id } => core.dispatch.device_offline(&device_id),
        HubEvent::BleStatusReported {
            device_id,
            connected: true,
            ..
        } => core.dispatch.link_up(&device_id),
        HubEvent::UserCommand {
            connection,
            user_id,
            command,
        } => {
            if !core.begin_user_command(connection) {
                core.metrics.frame_rejected(ErrorCode::RateLimited);
                let frame = Frame::from(ServerToUser::Error(ErrorFrame::new(
                    ErrorCode::RateLimited,
                    "too many commands running on this connection; wait for their results",
                    Some(command.request_id),
                )));
                let _ = core.hub.send_to_connection(connection, &frame).await;
                return;
            }
            let core = Arc::clone(core);
            let span = tracing::info_span!("user_command", %connection, user = %user_id);
            tokio::spawn(
                async move {
                    let request_id = command.request_id;
                    let device = command.device_id.clone();
                    let frame = match core.dispatch.execute(device.clone(), command.command).await {
                        Ok(response) => Frame::from(ServerToUser::CommandResult(
                            response.into_result(Some(request_id), device),
                        )),
                        Err(refusal) => Frame::from(ServerToUser::Error(
                            ApiError::from(refusal).to_frame(Some(request_id)),
                        )),
                    };
                    core.end_user_command(connection);
                    if core
                        .hub
                        .send_to_connection(connection, &frame)
                        .await
                        .is_err()
                    {
                        tracing::debug!("the user connection closed before its command ended");
                    }
                }
                .instrument(span),
            );
        }
        HubEvent::FrameRejected { code, .. } => core.metrics.frame_rejected(code),
        _ => {}
    }
}

impl Core {
    /// Counts one more command on a user connection, unless it has as many as allowed.
    fn begin_user_command(&self, connection: ConnectionId) -> bool {
        let mut running = self.user_commands.lock();
        let n = running.entry(connection).or_insert(0);
        if *n >= self.max_user_commands {
            return false;
        }
        *n += 1;
        true
    }

    fn end_user_command(&self, connection: ConnectionId) {
        let mut running = self.user_commands.lock();
        if let Some(n) = running.get_mut(&connection) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&connection);
            }
        }
    }
}

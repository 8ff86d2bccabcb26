//! What the server does with the hub's answers and events.
//!
//! There is no dispatcher task and no channel between the hub and the server: everything
//! here runs synchronously on the task of the connection it concerns, as a short,
//! non-blocking step, in the order the hub reports it.
//!
//! * A bridge's `ble_response` (and `ble_progress`, 1.1) goes to [`responses`], the hub's
//!   [`ResponseHandler`](bridge_hub::ResponseHandler): a call to
//!   [`SessionManager::handle_response`](bridge_session::SessionManager::handle_response)
//!   (sharded, so connections rarely meet on a lock). A refusal is answered by the hub itself.
//! * A released device or a closed bridge connection fails its pending commands at once
//!   (`bridge_lost`), in the same way.
//! * Presence changes go to the [`Dispatcher`](bridge_dispatch::Dispatcher): a device online,
//!   offline, or a holder's `ble_status` whose link turns up (`connected: true` after
//!   `false` or nothing from that holder; a repeated `true` is no news). Each is a synchronous step
//!   of its engine (a pass starts, or the running one is marked to go again), so nothing is
//!   ever dropped and nothing waits in a queue.
//! * A user's `command` frame runs on its own task, holding the hub's in-flight ticket
//!   (the per-connection cap, [`HubConfig::max_commands_per_connection`](bridge_hub::HubConfig))
//!   until its result is ready.
//! * Refused frames are counted in the metrics.
//! * What the application's [`Hooks`](crate::Hooks) hear about (users, devices, bridges)
//!   is put on the bounded hook queue with a `try_send` that never waits (`hooks.rs`).
//!
//! So nothing is buffered between the hub and the server, and there is nothing to bound:
//! the memory an event can hold is a spawned task (one store call or send per device with a
//! delivery pass, a user command per running command, both bounded by the hub's limits).

use std::sync::{Arc, OnceLock, Weak};

use bridge_hub::{
    EventSink, Frame, HubEvent, InFlight, ResponseHandler, ResponseRefused, UserId as HubUserId,
};
use bridge_protocol::{
    CommandFrame, ConnectionId, DeviceStatus, ErrorCode, Role, ServerToUser, StreamEvent, UserId,
};
use bridge_queue::Party;
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::error::ApiError;
use crate::server::Core;

/// Where the hub's handlers find the server, set once it is built. Weak, because the
/// server owns the hub: a strong reference from the hub back would keep both alive forever.
pub(crate) type CoreSlot = Arc<OnceLock<Weak<Core>>>;

/// The hub's `ble_response` and `ble_progress` handler: the session manager matches them.
pub(crate) fn responses(slot: CoreSlot) -> impl ResponseHandler {
    Responses(slot)
}

struct Responses(CoreSlot);

impl ResponseHandler for Responses {
    fn on_response(
        &self,
        connection: ConnectionId,
        response: bridge_protocol::BleResponse,
    ) -> Result<(), ResponseRefused> {
        let Some(core) = self.0.get().and_then(Weak::upgrade) else {
            // No server (yet, or any more): nothing can be pending.
            return Err(ResponseRefused::new(
                response.request_id,
                ErrorCode::UnknownRequest,
            ));
        };
        core.session
            .handle_response(connection, response)
            .map_err(|rejected| ResponseRefused::new(rejected.request_id, rejected.error_code()))
    }

    fn on_progress(
        &self,
        connection: ConnectionId,
        progress: &bridge_protocol::BleProgress,
    ) -> Result<(), ResponseRefused> {
        let Some(core) = self.0.get().and_then(Weak::upgrade) else {
            return Err(ResponseRefused::new(
                progress.request_id,
                ErrorCode::UnknownRequest,
            ));
        };
        core.session
            .handle_progress(connection, progress)
            .map(|_| ())
            .map_err(|rejected| ResponseRefused::new(rejected.request_id, rejected.error_code()))
    }
}

/// The hub's event sink. `runtime` is where user commands and delivery passes are spawned
/// (an event may be reported from a thread outside the runtime, such as a connection's
/// future dropped elsewhere).
pub(crate) fn sink(slot: CoreSlot, runtime: Handle) -> impl EventSink {
    move |event: HubEvent| {
        if let Some(core) = slot.get().and_then(Weak::upgrade) {
            handle(&core, &runtime, event);
        }
    }
}

fn handle(core: &Arc<Core>, runtime: &Handle, event: HubEvent) {
    // A distributed hub (a cluster) learns of presence changes here, then the application's
    // hooks hear of it (a non-blocking `try_send`).
    core.hub.observe(&event);
    core.hooks.observe(&event);
    match event {
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
        HubEvent::DeviceOnline { device_id } => {
            stream_presence(core, &device_id);
            core.dispatch.device_online(&device_id);
        }
        HubEvent::DeviceOffline { device_id } => {
            stream_presence(core, &device_id);
            core.dispatch.device_offline(&device_id);
        }
        HubEvent::BleStatusReported {
            device_id,
            connected,
            was_connected,
            ..
        } => {
            if was_connected != Some(connected) {
                stream_presence(core, &device_id);
            }
            // Only a link that turns up starts a delivery pass: a bridge repeating
            // `connected: true` would otherwise start one per frame.
            if connected && was_connected != Some(true) {
                core.dispatch.link_up(&device_id);
            }
        }
        HubEvent::UserCommand {
            connection,
            user_id,
            command,
            in_flight,
        } => {
            let span = tracing::info_span!("user_command", %connection, user = %user_id);
            runtime.spawn(
                run_user_command(Arc::clone(core), connection, user_id, command, in_flight)
                    .instrument(span),
            );
        }
        HubEvent::DeliveryRequested { device_id } => core.dispatch.delivery_requested(&device_id),
        HubEvent::FrameRejected { code, .. } => core.metrics.frame_rejected(code),
        _ => {}
    }
}

/// Streams the device's presence as the hub has it now (PROTOCOL.md 4.5 `device_status`), to
/// the readers of `GET /v1/stream` that take it.
fn stream_presence(core: &Core, device: &bridge_protocol::DeviceId) {
    core.stream.publish_with(device, || {
        let presence = core.local.device_presence(device);
        StreamEvent::DeviceStatus(DeviceStatus {
            device_id: device.clone(),
            online: presence.online,
            ble_connected: presence.ble_connected,
        })
    });
}

/// Runs a user's `command` frame and answers it on its connection. `in_flight` is its place
/// under the connection's cap, given back as soon as the result is ready. The command is
/// `user`'s: queued, it updates in place only a command `user` queued (PROTOCOL.md 4.2).
async fn run_user_command(
    core: Arc<Core>,
    connection: ConnectionId,
    user: HubUserId,
    command: CommandFrame,
    in_flight: InFlight,
) {
    let request_id = command.request_id;
    let device = command.device_id.clone();
    // A token's `sub` is not checked at the upgrade; one the queue cannot name (over 128
    // characters, control characters) cannot own commands, so its command is refused.
    let frame = match UserId::new(user.as_str()) {
        Ok(user) => match core
            .dispatch
            .execute(device.clone(), command.command, Party::User(user))
            .await
        {
            Ok(response) => Frame::from(ServerToUser::CommandResult(
                response.into_result(Some(request_id), device),
            )),
            Err(refusal) => Frame::from(ServerToUser::Error(
                ApiError::from(refusal).to_frame(Some(request_id)),
            )),
        },
        Err(error) => Frame::from(ServerToUser::Error(
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("this user id cannot send commands: {error}"),
            )
            .to_frame(Some(request_id)),
        )),
    };
    // Before the answer goes out: a client that sends its next command on seeing this one's
    // result must find the place free.
    drop(in_flight);
    if core
        .hub
        .send_to_connection(connection, &frame)
        .await
        .is_err()
    {
        tracing::debug!("the user connection closed before its command ended");
    }
}

//! The one command path shared by `POST /v1/devices/{deviceId}/commands` and a user's
//! `command` frame (PROTOCOL.md 4.1 and 3.4).

use std::sync::Arc;

use bridge_protocol::http::{CommandRequest, CommandResponse};
use bridge_protocol::{DeviceId, ErrorCode, Hops, RegistryError, ServerToUser};
use bridge_queue::NewCommand;
use bridge_session::CommandError;
use tokio::time::Instant;
use tracing::Instrument;

use crate::delivery::Watched;
use crate::error::ApiError;
use crate::server::Core;

/// Runs one command: sends it now if the device is online, queues it if asked to, and
/// answers with the status of PROTOCOL.md 4.1 or the refusal as an error.
pub(crate) async fn execute(
    core: &Arc<Core>,
    device: DeviceId,
    request: CommandRequest,
) -> Result<CommandResponse, ApiError> {
    let span = tracing::info_span!("command", device = %device, request_id = tracing::field::Empty);
    let result = run(core, device, request).instrument(span).await;
    let outcome = match &result {
        Ok(response) => response.outcome(),
        Err(error) => error.code().as_str(),
    };
    core.metrics.command(outcome);
    result
}

async fn run(
    core: &Arc<Core>,
    device: DeviceId,
    request: CommandRequest,
) -> Result<CommandResponse, ApiError> {
    let device_type = match core.registry.resolve(
        request
            .device_type
            .as_ref()
            .map(bridge_protocol::DeviceType::as_str),
    ) {
        Ok((name, _)) => name.clone(),
        Err(RegistryError::NoDefault) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "`deviceType` is required: the registry has no default type",
            ));
        }
        Err(error) => {
            return Err(ApiError::new(
                ErrorCode::UnknownDeviceType,
                error.to_string(),
            ));
        }
    };

    if request.requires_confirmation {
        let command_id = enqueue(core, &device, &request).await?;
        tracing::info!(%command_id, "queued, awaiting confirmation");
        return Ok(CommandResponse::AwaitingConfirmation { command_id });
    }

    let start = Instant::now();
    let result = core
        .session
        .send_command(
            device.clone(),
            Some(device_type.as_str()),
            request.payload.clone(),
            request.timeout_ms.as_duration(),
        )
        .await;
    // The duration of commands that reached a device (or were cut off on the way), as the
    // delivery engine counts them.
    if matches!(
        result,
        Ok(_)
            | Err(CommandError::DeviceError(_) | CommandError::BridgeLost | CommandError::Timeout)
    ) {
        core.metrics.command_duration(start.elapsed());
    }
    let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let response = match result {
        Ok(reply) => {
            tracing::Span::current()
                .record("request_id", tracing::field::display(reply.request_id));
            CommandResponse::Succeeded {
                request_id: reply.request_id,
                payload: reply.payload,
                latency_ms: u64::try_from(reply.latency.as_millis()).unwrap_or(u64::MAX),
                hops: Hops::NONE,
            }
        }
        Err(CommandError::Offline) if request.wants_queue() => {
            let command_id = enqueue(core, &device, &request).await?;
            tracing::info!(%command_id, "device offline: queued");
            // The device may have come online since it was found offline; its pass would
            // then have missed this command.
            if core.hub.device_presence(&device).await.online {
                crate::delivery::kick(core, &device);
            }
            CommandResponse::Queued { command_id }
        }
        Err(CommandError::Offline) => CommandResponse::Offline,
        Err(CommandError::BridgeLost) => CommandResponse::BridgeLost { hops: Hops::NONE },
        Err(CommandError::Timeout) => CommandResponse::Timeout { hops: Hops::NONE },
        Err(CommandError::DeviceError(error)) => CommandResponse::DeviceError {
            error,
            hops: Hops::NONE,
        },
        Err(CommandError::UnknownDeviceType(name)) => {
            return Err(ApiError::new(
                ErrorCode::UnknownDeviceType,
                format!("unknown device type `{name}`"),
            ));
        }
        Err(CommandError::TooManyPending) => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many commands pending on this server; try again later",
            ));
        }
        Err(error) => {
            return Err(ApiError::new(ErrorCode::Unavailable, error.to_string()));
        }
    };
    tracing::info!(status = response.outcome(), latency_ms, "command ended");
    Ok(response)
}

async fn enqueue(
    core: &Arc<Core>,
    device: &DeviceId,
    request: &CommandRequest,
) -> Result<bridge_protocol::CommandId, ApiError> {
    let Some(command_type) = request.command_type.clone() else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`commandType` is required to queue a command",
        ));
    };
    // The type as asked: none means the registry's default at delivery time.
    let mut command = NewCommand::new(device.clone(), command_type, request.payload.clone())
        .with_ttl(request.ttl_seconds)
        .with_timeout(request.timeout_ms);
    if let Some(device_type) = &request.device_type {
        command = command.with_device_type(device_type.clone());
    }
    if request.requires_confirmation {
        command = command.requiring_confirmation();
    }
    let id = core.store.enqueue(command).await?;
    let expires_at = core
        .store
        .get(&id)
        .await
        .map_or_else(|_| bridge_protocol::Timestamp::now(), |c| c.expires_at);
    core.delivery.watch(
        id.clone(),
        Watched {
            device: device.clone(),
            expires_at,
        },
    );
    Ok(id)
}

/// The `command_result` frame answering a user's `command` frame.
pub(crate) fn result_frame(
    request_id: bridge_protocol::RequestId,
    device: DeviceId,
    response: CommandResponse,
) -> ServerToUser {
    ServerToUser::CommandResult(response.into_result(Some(request_id), device))
}

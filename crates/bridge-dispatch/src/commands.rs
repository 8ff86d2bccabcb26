//! The one command path of `POST /v1/devices/{deviceId}/commands` and a user's `command`
//! frame (PROTOCOL.md 4.1 and 3.4), and the queue operations that start deliveries.

use bridge_protocol::http::{CommandRequest, CommandResponse};
use bridge_protocol::{CommandId, DeviceId, ErrorCode, RegistryError};
use bridge_queue::{InvalidInput, NewCommand, Party, QueuedCommand, StoreError};
use bridge_session::{CommandError, CommandFailure};
use tokio::time::Instant;
use tracing::Instrument;

use crate::driver::Dispatcher;

/// Why a command was refused (an error body over HTTP, an error frame over WebSocket).
/// [`code`](Self::code) says which.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No `deviceType` was given and the registry has no default (`invalid_request`).
    #[error("`deviceType` is required: the registry has no default type")]
    NoDefaultDeviceType,
    /// The `deviceType` is not in the registry (`unknown_device_type`); holds its name.
    #[error("unknown device type `{0}`")]
    UnknownDeviceType(String),
    /// The command asks to be queued but has no `commandType` (`invalid_request`).
    #[error("`commandType` is required to queue a command")]
    CommandTypeRequired,
    /// The server holds as many pending commands as it may (`unavailable`): try again later.
    #[error("too many commands pending on this server; try again later")]
    Overloaded,
    /// The server is shutting down (`unavailable`): try another node or again later.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The queue refused or could not be reached (`queue_full`, `unavailable`, …).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refusal {
    /// The error code of PROTOCOL.md 3.5/4 this refusal is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoDefaultDeviceType | Self::CommandTypeRequired => ErrorCode::InvalidRequest,
            Self::UnknownDeviceType(_) => ErrorCode::UnknownDeviceType,
            Self::Overloaded | Self::ShuttingDown => ErrorCode::Unavailable,
            Self::Store(error) => store_error_code(error),
        }
    }
}

/// The error code a store refusal is answered with.
pub fn store_error_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::QueueFull { .. } => ErrorCode::QueueFull,
        StoreError::Conflict { .. } => ErrorCode::Conflict,
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::InvalidInput(
            InvalidInput::EmptyPayload | InvalidInput::PayloadTooLarge { .. },
        ) => ErrorCode::InvalidPayload,
        StoreError::InvalidInput(_) => ErrorCode::InvalidRequest,
        _ => ErrorCode::Unavailable,
    }
}

/// How long a command was out at a bridge, and its `ble_write`'s `requestId`.
struct SentFor {
    elapsed: std::time::Duration,
    request_id: Option<bridge_protocol::RequestId>,
}

impl Dispatcher {
    /// Runs one command of `party` (the backend for `POST /v1/devices/{id}/commands`, the
    /// user for a `command` frame): sends it now if the device is online, queues it if asked
    /// to (`ifOffline: queue`, or `requiresConfirmation`), and answers with the status of
    /// PROTOCOL.md 4.1, or the refusal. A queued command is `party`'s: it updates in place
    /// only a command of the same type that `party` queued (PROTOCOL.md 4.2), never
    /// another party's.
    pub async fn execute(
        &self,
        device: DeviceId,
        request: CommandRequest,
        party: Party,
    ) -> Result<CommandResponse, Refusal> {
        let span = tracing::info_span!("command", device = %device, party = %party);
        // The command's future is wrapped in its span only when a subscriber takes it.
        let result = if span.is_disabled() {
            self.run(&device, request, party).await
        } else {
            self.run(&device, request, party)
                .instrument(span.clone())
                .await
        };
        let outcome = match &result {
            Ok((response, _)) => response.outcome(),
            Err(refusal) => refusal.code().as_str(),
        };
        span.in_scope(|| tracing::info!(outcome, "command ended"));
        let sent = result.as_ref().ok().and_then(|(_, sent)| sent.as_ref());
        self.inner
            .outlet
            .command_ended_for(&device, outcome, sent.map(|sent| sent.elapsed));
        if let (Ok((response, _)), Some(sent)) = (&result, sent) {
            let outlet = &self.inner.outlet;
            outlet.stages_reached(&response.hops());
            if let Some(request_id) = &sent.request_id {
                outlet.command_answered(&device, request_id, response);
            }
        }
        result.map(|(response, _)| response)
    }

    /// The answer, and, if the command went out to a bridge, how long for and its
    /// `ble_write`'s `requestId`.
    async fn run(
        &self,
        device: &DeviceId,
        mut request: CommandRequest,
        party: Party,
    ) -> Result<(CommandResponse, Option<SentFor>), Refusal> {
        let device_type = match self.inner.registry.resolve(
            request
                .device_type
                .as_ref()
                .map(bridge_protocol::DeviceType::as_str),
        ) {
            Ok((name, _)) => name.clone(),
            Err(RegistryError::NoDefault) => return Err(Refusal::NoDefaultDeviceType),
            Err(_) => {
                let name = request
                    .device_type
                    .as_ref()
                    .map_or_else(String::new, |t| t.as_str().to_owned());
                return Err(Refusal::UnknownDeviceType(name));
            }
        };

        if request.requires_confirmation {
            let command_id = self.enqueue(device, &request, party).await?;
            tracing::info!(%command_id, "queued, awaiting confirmation");
            return Ok((CommandResponse::AwaitingConfirmation { command_id }, None));
        }

        // The payload is needed again only if an offline command is then queued.
        let payload = if request.wants_queue() {
            request.payload.clone()
        } else {
            std::mem::take(&mut request.payload)
        };
        let start = Instant::now();
        let result = self
            .inner
            .sender
            .send_command_traced(
                device.clone(),
                Some(device_type.as_str()),
                payload,
                request.timeout_ms.as_duration(),
            )
            .await;
        let elapsed = start.elapsed();
        let (result, hops, request_id) = match result {
            Ok(reply) => {
                let (hops, id) = (reply.hops, reply.request_id);
                (Ok(reply), hops, Some(id))
            }
            Err(CommandFailure {
                error,
                hops,
                request_id,
                ..
            }) => (Err(error), hops, request_id),
        };
        let sent_for = Some(SentFor {
            elapsed,
            request_id,
        });
        let response = match result {
            Ok(reply) => CommandResponse::Succeeded {
                request_id: reply.request_id,
                payload: reply.payload,
                latency_ms: u64::try_from(reply.latency.as_millis()).unwrap_or(u64::MAX),
                hops,
            },
            Err(CommandError::Offline) if request.wants_queue() => {
                let command_id = self.enqueue(device, &request, party).await?;
                tracing::info!(%command_id, "device offline: queued");
                return Ok((CommandResponse::Queued { command_id }, None));
            }
            Err(CommandError::Offline) => return Ok((CommandResponse::Offline, None)),
            // `stage`/`progress`: how far it got (PROTOCOL.md 4.1, 1.1).
            Err(CommandError::BridgeLost) => CommandResponse::BridgeLost { hops },
            Err(CommandError::Timeout) => CommandResponse::Timeout { hops },
            Err(CommandError::DeviceError(error)) => CommandResponse::DeviceError { error, hops },
            Err(CommandError::UnknownDeviceType(name)) => {
                return Err(Refusal::UnknownDeviceType(name));
            }
            Err(CommandError::TooManyPending) => return Err(Refusal::Overloaded),
            Err(error) => {
                tracing::warn!(%error, "command not sent");
                return Err(Refusal::ShuttingDown);
            }
        };
        Ok((response, sent_for))
    }

    async fn enqueue(
        &self,
        device: &DeviceId,
        request: &CommandRequest,
        party: Party,
    ) -> Result<CommandId, Refusal> {
        let Some(command_type) = request.command_type.clone() else {
            return Err(Refusal::CommandTypeRequired);
        };
        // The type as asked: none means the registry's default at delivery time.
        let mut command = NewCommand::new(device.clone(), command_type, request.payload.clone())
            .with_ttl(request.ttl_seconds)
            .with_timeout(request.timeout_ms)
            .queued_by(party);
        if let Some(device_type) = &request.device_type {
            command = command.with_device_type(device_type.clone());
        }
        if request.requires_confirmation {
            command = command.requiring_confirmation();
        }
        let id = self.inner.store.enqueue(command).await?;
        // The device may have come online since it was found offline: its pass would have
        // missed this command.
        self.queued(device);
        Ok(id)
    }

    /// `POST /v1/commands/{commandId}/confirm`: the command may now be delivered, at once if
    /// its device is online.
    pub async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let command = self.inner.store.confirm(id).await?;
        self.queued(&command.device);
        Ok(command)
    }

    /// `POST /v1/commands/{commandId}/cancel`: the command ends `cancelled`, announced to its
    /// device's subscribers.
    pub async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let command = self.inner.store.cancel(id).await?;
        self.announce(&command);
        Ok(command)
    }

    /// `GET /v1/commands/{commandId}`. If the read finds the command's TTL passed, its end is
    /// announced like any other expiry.
    pub async fn command(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let command = self.inner.store.get(id).await?;
        if command.status.is_final() {
            return Ok(command);
        }
        let expired = self.expire(&command.device).await;
        Ok(expired
            .into_iter()
            .find(|c| c.id == command.id)
            .unwrap_or(command))
    }

    /// `GET /v1/devices/{deviceId}/commands`: the device's commands that are not final, in
    /// delivery order, after announcing the ones whose TTL passed.
    pub async fn device_commands(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<QueuedCommand>, StoreError> {
        self.expire(device).await;
        self.inner.store.list_open(device).await
    }

    /// `pendingCommands` of `GET /v1/devices/{deviceId}`: the device's commands that are not
    /// final, after announcing the ones whose TTL passed.
    pub async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        self.expire(device).await;
        self.inner.store.pending_count(device).await
    }

    /// Ends the device's commands whose TTL passed and announces them; returns them.
    async fn expire(&self, device: &DeviceId) -> Vec<QueuedCommand> {
        match self.inner.store.expire(device).await {
            Ok(expired) => {
                for command in &expired {
                    self.announce(command);
                }
                expired
            }
            Err(error) => {
                tracing::warn!(%error, %device, "cannot expire the queue");
                Vec::new()
            }
        }
    }
}

//! HTTP request and response bodies (PROTOCOL.md section 4).
//!
//! Request bodies decode through [`CommandRequest::from_json`] and
//! [`EventRequest::from_json`], which answer bad input with the exact error code. Response
//! bodies derive serde both ways, so a client in Rust reads what the server writes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    CommandId, CommandResult, CommandType, DeviceErrorCode, DeviceId, DeviceType, ErrorCode,
    HexPayload, Hops, RequestId, ResultStatus, TimeoutMs, Timestamp, TtlSeconds,
};

/// What to do with a command for a device that is offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IfOffline {
    /// Answer `offline` at once (the default).
    #[default]
    Fail,
    /// Store the command until the device is online.
    Queue,
}

/// The body of `POST /v1/devices/{deviceId}/commands`, and the fields of a `command` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    /// Picks the BLE UUIDs; absent means the registry's default type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<DeviceType>,
    /// Bytes to write.
    pub payload: HexPayload,
    /// How long to wait for the device's reply.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub timeout_ms: TimeoutMs,
    /// What to do when the device is offline.
    #[cfg_attr(feature = "openapi", schema(required = false, default = "fail"))]
    pub if_offline: IfOffline,
    /// Dedup key of the queue; required for `queue` and for `requiresConfirmation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_type: Option<CommandType>,
    /// How long a queued command stays deliverable.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub ttl_seconds: TtlSeconds,
    /// Always queue, and deliver only after `confirm`.
    #[cfg_attr(feature = "openapi", schema(required = false, default = false))]
    pub requires_confirmation: bool,
}

impl CommandRequest {
    /// A request with every optional field at its default.
    pub fn new(payload: HexPayload) -> Self {
        Self {
            device_type: None,
            payload,
            timeout_ms: TimeoutMs::DEFAULT,
            if_offline: IfOffline::Fail,
            command_type: None,
            ttl_seconds: TtlSeconds::DEFAULT,
            requires_confirmation: false,
        }
    }

    /// Decodes an HTTP body. Refusals are `invalid_request` (not JSON, not an object, a
    /// required field missing, a field of the wrong type or out of range, `commandType`
    /// missing for `queue` or `requiresConfirmation`) or `invalid_payload`.
    pub fn from_json(body: &str, limits: &crate::Limits) -> Result<Self, crate::ProtocolError> {
        crate::decode::decode_command_body(body, limits)
    }

    /// Whether this command goes to the queue rather than waiting for the device now.
    pub fn wants_queue(&self) -> bool {
        self.requires_confirmation || self.if_offline == IfOffline::Queue
    }
}

/// The body of `POST /v1/devices/{deviceId}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRequest {
    /// The event's `type`; not one the protocol defines.
    #[serde(rename = "type")]
    pub event_type: crate::EventType,
    /// The event's data, passed through to subscribers as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl EventRequest {
    /// Decodes an HTTP body; refusals are `invalid_request`.
    pub fn from_json(body: &str) -> Result<Self, crate::ProtocolError> {
        crate::decode::decode_event_body(body)
    }
}

/// The answer to `POST /v1/devices/{deviceId}/commands`, tagged by `status`.
///
/// The answers of a command that was sent to a bridge (200, 502, 503 `bridge_lost`, 504)
/// carry [`Hops`] (1.1 `stage` and `progress`); with [`Hops::NONE`] they are the 1.0 shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommandResponse {
    /// 200: the device answered.
    #[serde(rename_all = "camelCase")]
    #[cfg_attr(feature = "openapi", schema(title = "CommandSucceeded"))]
    Succeeded {
        /// The `requestId` of the `ble_write`.
        request_id: RequestId,
        /// The device's reply.
        payload: HexPayload,
        /// Milliseconds from sending to the answer.
        latency_ms: u64,
        /// How far the command got.
        #[serde(flatten)]
        hops: Hops,
    },
    /// 202: the device was offline and the command was queued.
    #[serde(rename_all = "camelCase")]
    #[cfg_attr(feature = "openapi", schema(title = "CommandQueued"))]
    Queued {
        /// The queued command's id.
        command_id: CommandId,
    },
    /// 202: the command was queued and waits for `confirm`.
    #[serde(rename_all = "camelCase")]
    #[cfg_attr(feature = "openapi", schema(title = "CommandAwaitingConfirmation"))]
    AwaitingConfirmation {
        /// The queued command's id.
        command_id: CommandId,
    },
    /// 502: the bridge reported a failure.
    #[cfg_attr(feature = "openapi", schema(title = "CommandDeviceError"))]
    DeviceError {
        /// The bridge's failure code.
        error: DeviceErrorCode,
        /// How far the command got.
        #[serde(flatten)]
        hops: Hops,
    },
    /// 503: no bridge holds the device.
    #[cfg_attr(feature = "openapi", schema(title = "CommandOffline"))]
    Offline,
    /// 503: the bridge went away before answering.
    #[cfg_attr(feature = "openapi", schema(title = "CommandBridgeLost"))]
    BridgeLost {
        /// How far the command got.
        #[serde(flatten)]
        hops: Hops,
    },
    /// 504: no answer within `timeoutMs`.
    #[cfg_attr(feature = "openapi", schema(title = "CommandTimeout"))]
    Timeout {
        /// How far the command got.
        #[serde(flatten)]
        hops: Hops,
    },
}

impl CommandResponse {
    /// The HTTP status of this answer (PROTOCOL.md 4.1).
    pub const fn http_status(&self) -> u16 {
        match self {
            Self::Succeeded { .. } => 200,
            Self::Queued { .. } | Self::AwaitingConfirmation { .. } => 202,
            Self::DeviceError { .. } => 502,
            Self::Offline | Self::BridgeLost { .. } => 503,
            Self::Timeout { .. } => 504,
        }
    }

    /// The status of this answer, as its `command_result` frame reports it.
    pub const fn result_status(&self) -> ResultStatus {
        match self {
            Self::Succeeded { .. } => ResultStatus::Succeeded,
            Self::Queued { .. } => ResultStatus::Queued,
            Self::AwaitingConfirmation { .. } => ResultStatus::AwaitingConfirmation,
            Self::DeviceError { .. } => ResultStatus::DeviceError,
            Self::Offline => ResultStatus::Offline,
            Self::BridgeLost { .. } => ResultStatus::BridgeLost,
            Self::Timeout { .. } => ResultStatus::Timeout,
        }
    }

    /// The `outcome` label of `bridge_commands_total` (PROTOCOL.md 4.4): the `status` word.
    pub const fn outcome(&self) -> &'static str {
        self.result_status().as_str()
    }

    /// How far the command got; [`Hops::NONE`] for the answers of a command never sent.
    pub const fn hops(&self) -> Hops {
        match self {
            Self::Succeeded { hops, .. }
            | Self::DeviceError { hops, .. }
            | Self::BridgeLost { hops }
            | Self::Timeout { hops } => *hops,
            Self::Queued { .. } | Self::AwaitingConfirmation { .. } | Self::Offline => Hops::NONE,
        }
    }

    /// The `command_result` frame that reports this answer (PROTOCOL.md 3.4 and 4.5): the
    /// same status, the reply or failure code, the `commandId` of a queued command, and the
    /// stage and progress. `request_id` is the user's `requestId` for a `command` frame's
    /// answer, or the `ble_write`'s for the stream.
    pub fn into_result(self, request_id: Option<RequestId>, device: DeviceId) -> CommandResult {
        let mut result = CommandResult::new(device, self.result_status());
        result.request_id = request_id;
        match self {
            Self::Succeeded { payload, hops, .. } => {
                result.payload = Some(payload);
                result.hops = hops;
            }
            Self::Queued { command_id } | Self::AwaitingConfirmation { command_id } => {
                result.command_id = Some(command_id);
            }
            Self::DeviceError { error, hops } => {
                result.error = Some(error);
                result.hops = hops;
            }
            Self::BridgeLost { hops } | Self::Timeout { hops } => result.hops = hops,
            Self::Offline => {}
        }
        result
    }

    /// Appends the answer's JSON body to `buf`: byte for byte what serde_json writes for
    /// it (a property test checks this for every variant), written field by field without
    /// serde's map machinery and escape scan of ids, hex and numbers.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        use crate::frames::{json_request_id, json_string, push_hex, push_u64};
        match self {
            Self::Succeeded {
                request_id,
                payload,
                latency_ms,
                hops,
            } => {
                buf.extend_from_slice(br#"{"status":"succeeded","requestId":"#);
                json_request_id(buf, request_id);
                buf.extend_from_slice(br#","payload":""#);
                push_hex(buf, payload.as_bytes());
                buf.extend_from_slice(br#"","latencyMs":"#);
                push_u64(buf, *latency_ms);
                write_hops(buf, hops);
            }
            Self::Queued { command_id } => {
                buf.extend_from_slice(br#"{"status":"queued","commandId":"#);
                json_string(buf, command_id.as_str());
            }
            Self::AwaitingConfirmation { command_id } => {
                buf.extend_from_slice(br#"{"status":"awaiting_confirmation","commandId":"#);
                json_string(buf, command_id.as_str());
            }
            Self::DeviceError { error, hops } => {
                buf.extend_from_slice(br#"{"status":"device_error","error":"#);
                json_string(buf, error.as_str());
                write_hops(buf, hops);
            }
            Self::Offline => buf.extend_from_slice(br#"{"status":"offline""#),
            Self::BridgeLost { hops } => {
                buf.extend_from_slice(br#"{"status":"bridge_lost""#);
                write_hops(buf, hops);
            }
            Self::Timeout { hops } => {
                buf.extend_from_slice(br#"{"status":"timeout""#);
                write_hops(buf, hops);
            }
        }
        buf.push(b'}');
    }

    /// As [`CommandResponse::into_result`], for a borrowed answer.
    pub fn to_result(&self, request_id: Option<RequestId>, device: DeviceId) -> CommandResult {
        self.clone().into_result(request_id, device)
    }
}

/// The flattened `stage` and `progress` of an answer, each left out when empty, as serde
/// writes [`Hops`] after the answer's own fields.
fn write_hops(buf: &mut Vec<u8>, hops: &Hops) {
    use crate::frames::push_u64;
    if let Some(stage) = hops.stage {
        buf.extend_from_slice(br#","stage":""#);
        buf.extend_from_slice(stage.as_str().as_bytes());
        buf.push(b'"');
    }
    let progress = &hops.progress;
    if !progress.is_empty() {
        buf.extend_from_slice(br#","progress":{"#);
        let mut first = true;
        for (name, ms) in [
            (&br#""receivedMs":"#[..], progress.received_ms),
            (br#""connectedMs":"#, progress.connected_ms),
            (br#""writtenMs":"#, progress.written_ms),
        ] {
            if let Some(ms) = ms {
                if !first {
                    buf.push(b',');
                }
                first = false;
                buf.extend_from_slice(name);
                push_u64(buf, u64::from(ms));
            }
        }
        buf.push(b'}');
    }
}

/// The body of every HTTP error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an error body: the code and a message for the developer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorBody {
    /// A new error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    /// The HTTP status that carries it.
    pub fn http_status(&self) -> u16 {
        self.error.code.http_status()
    }
}

/// The state of a queued command (PROTOCOL.md 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommandStatus {
    /// Waits for `confirm` before it may be delivered.
    AwaitingConfirmation,
    /// Waits for delivery.
    Pending,
    /// Sent to a bridge; the answer is awaited.
    Delivering,
    /// The device answered.
    Succeeded,
    /// Failed for good (a device error, or too many attempts).
    Failed,
    /// Its TTL passed before delivery.
    Expired,
    /// Cancelled before delivery.
    Cancelled,
}

impl CommandStatus {
    /// True for the states a command never leaves.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Expired | Self::Cancelled
        )
    }

    /// The status a `command_result` reports for a command that ended in this state;
    /// `None` while it is not final.
    pub const fn result_status(self) -> Option<ResultStatus> {
        match self {
            Self::Succeeded => Some(ResultStatus::Succeeded),
            Self::Failed => Some(ResultStatus::Failed),
            Self::Expired => Some(ResultStatus::Expired),
            Self::Cancelled => Some(ResultStatus::Cancelled),
            Self::AwaitingConfirmation | Self::Pending | Self::Delivering => None,
        }
    }

    /// The status as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A final command's result: `{"payload":"01"}` or `{"error":"gatt_write_failed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum CommandOutcome {
    /// The device's reply.
    Payload(HexPayload),
    /// Why it failed.
    Error(DeviceErrorCode),
}

/// A queued command as `GET /v1/commands/{commandId}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    /// Its id.
    pub command_id: CommandId,
    /// Its device.
    pub device_id: DeviceId,
    /// Its dedup key.
    pub command_type: CommandType,
    /// Where it is in its lifecycle.
    pub status: CommandStatus,
    /// How many times it was sent to a bridge.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it stops being deliverable.
    pub expires_at: Timestamp,
    /// The result, once final and when there is one; `null` before.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub result: Option<CommandOutcome>,
    /// How far the latest attempt got (1.1): `stage` and `progress`, each left out when empty.
    #[serde(flatten)]
    pub hops: Hops,
}

impl CommandView {
    /// The `command_result` frame announcing this command's end to its device's subscribers
    /// (PROTOCOL.md 3.3): `commandId`, the final status, the reply or failure code, and how
    /// far the latest attempt got. `None` while the command is not final.
    pub fn result_frame(&self) -> Option<CommandResult> {
        let status = self.status.result_status()?;
        let mut result = CommandResult::new(self.device_id.clone(), status);
        result.command_id = Some(self.command_id.clone());
        match &self.result {
            Some(CommandOutcome::Payload(payload)) => result.payload = Some(payload.clone()),
            Some(CommandOutcome::Error(error)) => result.error = Some(error.clone()),
            None => {}
        }
        result.hops = self.hops;
        Some(result)
    }
}

/// `GET /v1/devices/{deviceId}/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandList {
    /// The device's commands that are not final, in delivery order.
    pub commands: Vec<CommandView>,
}

/// `GET /v1/devices/{deviceId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The device.
    pub device_id: DeviceId,
    /// Whether at least one bridge holds it.
    pub online: bool,
    /// What the bridge the server would route through last reported.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ble_connected: Option<bool>,
    /// How many bridge connections hold it.
    pub bridges: u32,
    /// Its queued commands that are not final.
    pub pending_commands: u32,
    /// The bridge connections of the answering server that hold it, best route first
    /// (PROTOCOL.md 2's order). An addition to PROTOCOL.md 4.3, left out when empty (so a
    /// device held by no bridge of this server reads exactly as 4.3 shows); in a cluster,
    /// holders on other nodes count in `bridges` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderView>,
}

/// One bridge connection holding a device, in [`DeviceView::holders`]:
/// `{"userId":"phone-a","bleConnected":true,"rssi":-60,"commandsInFlight":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HolderView {
    /// The bridge's user id (its token's `sub`, or `userId` in development mode).
    pub user_id: String,
    /// Its last `ble_status`'s `connected` for the device; null before any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ble_connected: Option<bool>,
    /// Its last reported `rssi` for the device; null if never reported.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub rssi: Option<i8>,
    /// Commands in flight on this bridge connection now, every device's together.
    pub commands_in_flight: u32,
}

/// One entry of `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    /// The device.
    pub device_id: DeviceId,
    /// Always true in this listing.
    pub online: bool,
    /// What the routed-to bridge last reported.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ble_connected: Option<bool>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    /// The online devices.
    pub devices: Vec<DeviceSummary>,
}

/// `202` answer of `POST /v1/devices/{deviceId}/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventAccepted {
    /// How many user connections the event was sent to.
    pub delivered: u64,
}

/// One entry of `GET /v1/device-types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceTypeView {
    /// The type's name.
    pub device_type: DeviceType,
    /// GATT service UUID.
    pub service_uuid: Uuid,
    /// Write characteristic UUID.
    pub write_uuid: Uuid,
    /// Listen (notify) characteristic UUID.
    pub listen_uuid: Uuid,
}

/// `GET /v1/device-types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceTypeList {
    /// Every registered type.
    pub device_types: Vec<DeviceTypeView>,
    /// The type used when a command names none.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub default_type: Option<DeviceType>,
}

impl From<&crate::ConfigRegistry> for DeviceTypeList {
    fn from(registry: &crate::ConfigRegistry) -> Self {
        Self {
            device_types: registry
                .iter()
                .map(|(name, config)| DeviceTypeView {
                    device_type: name.clone(),
                    service_uuid: config.service_uuid,
                    write_uuid: config.write_uuid,
                    listen_uuid: config.listen_uuid,
                })
                .collect(),
            default_type: registry.default_type().cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Progress, Stage};

    fn id(s: &str) -> CommandId {
        CommandId::new(s).unwrap()
    }

    fn device() -> DeviceId {
        DeviceId::new("lock-1").unwrap()
    }

    fn written() -> Hops {
        Hops {
            stage: Some(Stage::Written),
            progress: Progress {
                received_ms: Some(3),
                connected_ms: None,
                written_ms: Some(41),
            },
        }
    }

    /// One answer of each status, with the status code, outcome label and result status
    /// PROTOCOL.md 4.1 and 4.4 give it.
    fn every_answer() -> Vec<(CommandResponse, u16, &'static str, ResultStatus)> {
        let error = DeviceErrorCode::new("gatt_write_failed").unwrap();
        vec![
            (
                CommandResponse::Succeeded {
                    request_id: RequestId::new("r-1").unwrap(),
                    payload: HexPayload::from(vec![1]),
                    latency_ms: 12,
                    hops: written(),
                },
                200,
                "succeeded",
                ResultStatus::Succeeded,
            ),
            (
                CommandResponse::Queued {
                    command_id: id("q"),
                },
                202,
                "queued",
                ResultStatus::Queued,
            ),
            (
                CommandResponse::AwaitingConfirmation {
                    command_id: id("a"),
                },
                202,
                "awaiting_confirmation",
                ResultStatus::AwaitingConfirmation,
            ),
            (
                CommandResponse::DeviceError {
                    error,
                    hops: written(),
                },
                502,
                "device_error",
                ResultStatus::DeviceError,
            ),
            (
                CommandResponse::Offline,
                503,
                "offline",
                ResultStatus::Offline,
            ),
            (
                CommandResponse::BridgeLost { hops: Hops::SENT },
                503,
                "bridge_lost",
                ResultStatus::BridgeLost,
            ),
            (
                CommandResponse::Timeout { hops: written() },
                504,
                "timeout",
                ResultStatus::Timeout,
            ),
        ]
    }

    #[test]
    fn every_answer_has_the_status_code_and_outcome_label_of_the_protocol() {
        for (response, status, outcome, result_status) in every_answer() {
            assert_eq!(response.http_status(), status, "{response:?}");
            assert_eq!(response.outcome(), outcome, "{response:?}");
            assert_eq!(response.result_status(), result_status, "{response:?}");
            // The outcome label is the `status` word of the body.
            let body = serde_json::to_value(&response).unwrap();
            assert_eq!(body["status"], outcome);
        }
    }

    #[test]
    fn every_answer_becomes_the_command_result_with_the_same_fields() {
        for (response, _, _, status) in every_answer() {
            let request_id = Some(RequestId::new("c-2").unwrap());
            let result = response.to_result(request_id, device());
            assert_eq!(result.request_id, request_id);
            assert_eq!(result.device_id, device());
            assert_eq!(result.status, status);
            assert_eq!(result.hops, response.hops());
            // Every field the answer's body has (but `requestId` and `latencyMs`, which
            // belong to HTTP) comes back in the frame with the same value.
            let body = serde_json::to_value(&response).unwrap();
            let frame = serde_json::to_value(&result).unwrap();
            for (key, value) in body.as_object().unwrap() {
                if key != "requestId" && key != "latencyMs" {
                    assert_eq!(frame.get(key), Some(value), "{key} of {body}");
                }
            }
            assert_eq!(response.clone().into_result(request_id, device()), result);
        }
    }

    #[test]
    fn answers_of_a_command_never_sent_carry_no_hops() {
        for response in [
            CommandResponse::Queued {
                command_id: id("q"),
            },
            CommandResponse::AwaitingConfirmation {
                command_id: id("a"),
            },
            CommandResponse::Offline,
        ] {
            assert_eq!(response.hops(), Hops::NONE);
        }
    }

    #[test]
    fn answers_without_hops_keep_their_1_0_shape() {
        for text in [
            r#"{"status":"succeeded","requestId":"r","payload":"01","latencyMs":12}"#,
            r#"{"status":"device_error","error":"gatt_write_failed"}"#,
            r#"{"status":"bridge_lost"}"#,
            r#"{"status":"timeout"}"#,
        ] {
            let response: CommandResponse = serde_json::from_str(text).unwrap();
            assert_eq!(response.hops(), Hops::NONE, "{text}");
            assert_eq!(serde_json::to_string(&response).unwrap(), text);
        }
    }

    #[test]
    fn only_final_statuses_have_a_result_status() {
        let all = [
            (CommandStatus::AwaitingConfirmation, None),
            (CommandStatus::Pending, None),
            (CommandStatus::Delivering, None),
            (CommandStatus::Succeeded, Some(ResultStatus::Succeeded)),
            (CommandStatus::Failed, Some(ResultStatus::Failed)),
            (CommandStatus::Expired, Some(ResultStatus::Expired)),
            (CommandStatus::Cancelled, Some(ResultStatus::Cancelled)),
        ];
        for (status, result) in all {
            assert_eq!(status.result_status(), result, "{status:?}");
            assert_eq!(result.is_some(), status.is_final(), "{status:?}");
            if let Some(result) = result {
                assert_eq!(result.as_str(), status.as_str());
            }
        }
    }

    fn view(status: CommandStatus, result: Option<CommandOutcome>) -> CommandView {
        let now = Timestamp::now();
        CommandView {
            command_id: id("9b2e"),
            device_id: device(),
            command_type: CommandType::new("unlock").unwrap(),
            status,
            attempts: 1,
            created_at: now,
            expires_at: now,
            result,
            hops: written(),
        }
    }

    #[test]
    fn a_final_command_is_announced_with_its_id_outcome_and_hops() {
        let error = DeviceErrorCode::new("gatt_write_failed").unwrap();
        let failed = view(
            CommandStatus::Failed,
            Some(CommandOutcome::Error(error.clone())),
        )
        .result_frame()
        .unwrap();
        assert_eq!(failed.command_id, Some(id("9b2e")));
        assert_eq!(failed.request_id, None);
        assert_eq!(failed.status, ResultStatus::Failed);
        assert_eq!(failed.error, Some(error));
        assert_eq!(failed.payload, None);
        assert_eq!(failed.hops, written());

        let payload = HexPayload::from(vec![1]);
        let succeeded = view(
            CommandStatus::Succeeded,
            Some(CommandOutcome::Payload(payload.clone())),
        )
        .result_frame()
        .unwrap();
        assert_eq!(succeeded.status, ResultStatus::Succeeded);
        assert_eq!(succeeded.payload, Some(payload));

        for status in [CommandStatus::Expired, CommandStatus::Cancelled] {
            let result = view(status, None).result_frame().unwrap();
            assert_eq!(Some(result.status), status.result_status());
            assert_eq!((result.payload, result.error), (None, None));
        }
    }

    #[test]
    fn a_command_that_is_not_final_is_not_announced() {
        for status in [
            CommandStatus::AwaitingConfirmation,
            CommandStatus::Pending,
            CommandStatus::Delivering,
        ] {
            assert_eq!(view(status, None).result_frame(), None, "{status:?}");
        }
    }

    #[test]
    fn a_command_view_shows_hops_only_when_there_are_some() {
        let mut v = view(CommandStatus::Pending, None);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["stage"], "written");
        assert_eq!(json["progress"]["writtenMs"], 41);
        v.hops = Hops::NONE;
        let json = serde_json::to_value(&v).unwrap();
        assert!(json.get("stage").is_none() && json.get("progress").is_none());
        assert_eq!(serde_json::from_value::<CommandView>(json).unwrap(), v);
    }
}

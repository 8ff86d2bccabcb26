//! WebSocket frames (PROTOCOL.md section 3): one enum per direction, with the frame bodies.
//!
//! Every enum serializes to exactly the JSON of PROTOCOL.md (field names, `type` tags) and
//! decodes through [`crate::decode`]'s entry points, which refuse bad input with the precise
//! [`ErrorCode`](crate::ErrorCode).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::http::CommandRequest;
use crate::{
    CommandId, DeviceErrorCode, DeviceId, DeviceType, ErrorFrame, HexPayload, Hops, RequestId,
    Stage, TimeoutMs, ValueError,
};

/// Every `type` PROTOCOL.md defines (1.1 included: `ble_progress`, the stream's `overflow`,
/// MQTT's `hello`, `welcome` and `bye`). An application event may not use one of these.
pub const RESERVED_TYPES: &[&str] = &[
    "ble_write",
    "ble_response",
    "ble_status",
    "ble_progress",
    "release",
    "device_status",
    "command_result",
    "subscribe",
    "unsubscribe",
    "command",
    "ack",
    "error",
    "ping",
    "pong",
    "overflow",
    "hello",
    "welcome",
    "bye",
];

/// `ble_write` (server → bridge): write `payload` to the device and answer with its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BleWrite {
    /// Chosen by the server; the bridge echoes it byte for byte.
    pub request_id: RequestId,
    /// The device to write to.
    pub device_id: DeviceId,
    /// The device's type, as named in the registry.
    pub device_type: DeviceType,
    /// GATT service UUID.
    pub service_uuid: Uuid,
    /// Characteristic to write `payload` to.
    pub write_uuid: Uuid,
    /// Characteristic whose notification carries the reply.
    pub listen_uuid: Uuid,
    /// Bytes to write.
    pub payload: HexPayload,
    /// How long the server will still wait for the answer.
    pub timeout_ms: TimeoutMs,
}

/// What a bridge reports for a `ble_write`: the device's reply, or a BLE failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BleOutcome {
    /// The device's reply bytes (`payload`).
    Payload(HexPayload),
    /// A short failure code such as `gatt_write_failed` (`error`).
    Error(DeviceErrorCode),
}

/// `ble_response` (bridge → server): the answer to a `ble_write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BleResponse {
    /// The `requestId` of the `ble_write` this answers.
    pub request_id: RequestId,
    /// The device that answered.
    pub device_id: DeviceId,
    /// Reply or failure; exactly one of `payload` and `error` on the wire.
    #[serde(flatten)]
    pub outcome: BleOutcome,
}

/// `ble_status` (bridge → server): the bridge's BLE link to a device changed. Claims the
/// device for this connection if it does not hold it yet and may bridge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BleStatus {
    /// The device.
    pub device_id: DeviceId,
    /// Whether the bridge has a BLE link to it now.
    pub connected: bool,
    /// Signal strength in dBm (`-128..=127`); absent keeps the last reported value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i8>,
}

/// `ble_progress` (bridge → server, 1.1): how far the bridge has got with a pending
/// `ble_write`. Never resolves a command and never extends its timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BleProgress {
    /// The `requestId` of the `ble_write` it reports on.
    pub request_id: RequestId,
    /// The device.
    pub device_id: DeviceId,
    /// The stage reached: `received`, `connected` or `written` (never `sent`; the decoder
    /// refuses it).
    pub stage: Stage,
}

/// `release` (bridge → server): stop relaying for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// The device.
    pub device_id: DeviceId,
}

/// `subscribe` and `unsubscribe` (user → server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionChange {
    /// Echoed in the `ack` or error frame.
    pub request_id: RequestId,
    /// The device.
    pub device_id: DeviceId,
}

/// `command` (user → server): the HTTP command body of PROTOCOL.md 4.1, over WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandFrame {
    /// Chosen by the user; echoed in the `command_result`.
    pub request_id: RequestId,
    /// The device to command.
    pub device_id: DeviceId,
    /// The same fields and meaning as the HTTP body.
    #[serde(flatten)]
    pub command: CommandRequest,
}

/// `device_status` (server → user): a device's presence or BLE link changed, or the initial
/// snapshot after connecting or subscribing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The device.
    pub device_id: DeviceId,
    /// Whether at least one bridge holds it.
    pub online: bool,
    /// What the bridge the server would route through last reported; `null` before any
    /// report and while offline.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub ble_connected: Option<bool>,
}

/// The `type` of an application event: a short name that is not one of [`RESERVED_TYPES`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    /// Validates an event type: 1 to 64 characters, no control characters, not reserved.
    pub fn new(s: &str) -> Result<Self, ValueError> {
        // Same character rule as every short name.
        DeviceType::new(s).map_err(|e| match e {
            ValueError::Empty { .. } => ValueError::Empty { what: "type" },
            ValueError::TooLong { max, .. } => ValueError::TooLong { what: "type", max },
            ValueError::ForbiddenChar { allowed, .. } => ValueError::ForbiddenChar {
                what: "type",
                allowed,
            },
            other => other,
        })?;
        if RESERVED_TYPES.contains(&s) {
            return Err(ValueError::ForbiddenChar {
                what: "type",
                allowed: "a name that is not a type the protocol defines",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The type as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EventType {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// An application event (server → user), broadcast to a device's subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AppEvent {
    /// The event's `type`, chosen by the backend.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The device.
    pub device_id: DeviceId,
    /// The event's data, as the backend sent it; omitted when the backend sent none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The status a `command_result` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResultStatus {
    /// The device answered.
    Succeeded,
    /// The device was offline; the command was queued (`commandId` given).
    Queued,
    /// The command was queued and waits for `confirm` (`commandId` given).
    AwaitingConfirmation,
    /// The bridge reported a BLE failure (`error` given).
    DeviceError,
    /// No bridge holds the device.
    Offline,
    /// The bridge went away before answering.
    BridgeLost,
    /// No answer in time.
    Timeout,
    /// A queued command failed for good (`error` given).
    Failed,
    /// A queued command was cancelled.
    Cancelled,
    /// A queued command's TTL passed before it could be delivered.
    Expired,
}

impl ResultStatus {
    /// The status as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Queued => "queued",
            Self::AwaitingConfirmation => "awaiting_confirmation",
            Self::DeviceError => "device_error",
            Self::Offline => "offline",
            Self::BridgeLost => "bridge_lost",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => Self::Succeeded,
            "queued" => Self::Queued,
            "awaiting_confirmation" => Self::AwaitingConfirmation,
            "device_error" => Self::DeviceError,
            "offline" => Self::Offline,
            "bridge_lost" => Self::BridgeLost,
            "timeout" => Self::Timeout,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// `command_result` (server → user): the outcome of a user's `command` frame (with its
/// `requestId`) or of a queued command reaching a final state (with its `commandId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    /// The user's `requestId`, when this answers a `command` frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The queued command's id, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
    /// The device.
    pub device_id: DeviceId,
    /// The outcome.
    pub status: ResultStatus,
    /// The device's reply, for `succeeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<HexPayload>,
    /// The failure code, for `device_error` and `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DeviceErrorCode>,
    /// How far the command got (1.1 `stage` and `progress`), each left out when empty.
    #[serde(flatten)]
    pub hops: Hops,
}

impl CommandResult {
    /// A result with only the required fields; the optional ones are absent.
    pub const fn new(device_id: DeviceId, status: ResultStatus) -> Self {
        Self {
            request_id: None,
            command_id: None,
            device_id,
            status,
            payload: None,
            error: None,
            hops: Hops::NONE,
        }
    }
}

/// `ack` (server → user): a `subscribe` or `unsubscribe` was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The acknowledged frame's `requestId`.
    pub request_id: RequestId,
}

/// Frames a bridge sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeToServer {
    /// `ble_response`.
    BleResponse(BleResponse),
    /// `ble_status`.
    BleStatus(BleStatus),
    /// `ble_progress` (1.1).
    BleProgress(BleProgress),
    /// `release`.
    Release(Release),
    /// `ping`.
    Ping,
}

/// Frames the server sends to a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerToBridge {
    /// `ble_write`.
    BleWrite(BleWrite),
    /// `error`.
    Error(ErrorFrame),
    /// `pong`.
    Pong,
}

/// Frames a user sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserToServer {
    /// `subscribe`.
    Subscribe(SubscriptionChange),
    /// `unsubscribe`.
    Unsubscribe(SubscriptionChange),
    /// `command`.
    Command(CommandFrame),
    /// `ping`.
    Ping,
}

/// Frames the server sends to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerToUser {
    /// `device_status`.
    DeviceStatus(DeviceStatus),
    /// An application event with a backend-chosen `type`.
    Event(AppEvent),
    /// `command_result`.
    CommandResult(CommandResult),
    /// `ack`.
    Ack(Ack),
    /// `error`.
    Error(ErrorFrame),
    /// `pong`.
    Pong,
}

/// A frame body with its `type` tag in front.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
pub(crate) struct TypeOnly {
    #[serde(rename = "type")]
    pub(crate) ty: &'static str,
}

pub(crate) fn tagged<S: Serializer, T: Serialize>(
    s: S,
    ty: &'static str,
    body: &T,
) -> Result<S::Ok, S::Error> {
    Tagged { ty, body }.serialize(s)
}

impl Serialize for BridgeToServer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::BleResponse(f) => tagged(s, "ble_response", f),
            Self::BleStatus(f) => tagged(s, "ble_status", f),
            Self::BleProgress(f) => tagged(s, "ble_progress", f),
            Self::Release(f) => tagged(s, "release", f),
            Self::Ping => TypeOnly { ty: "ping" }.serialize(s),
        }
    }
}

impl Serialize for ServerToBridge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::BleWrite(f) => tagged(s, "ble_write", f),
            Self::Error(f) => tagged(s, "error", f),
            Self::Pong => TypeOnly { ty: "pong" }.serialize(s),
        }
    }
}

impl Serialize for UserToServer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Subscribe(f) => tagged(s, "subscribe", f),
            Self::Unsubscribe(f) => tagged(s, "unsubscribe", f),
            Self::Command(f) => tagged(s, "command", f),
            Self::Ping => TypeOnly { ty: "ping" }.serialize(s),
        }
    }
}

impl Serialize for ServerToUser {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::DeviceStatus(f) => tagged(s, "device_status", f),
            // The event carries its own `type`.
            Self::Event(f) => f.serialize(s),
            Self::CommandResult(f) => tagged(s, "command_result", f),
            Self::Ack(f) => tagged(s, "ack", f),
            Self::Error(f) => tagged(s, "error", f),
            Self::Pong => TypeOnly { ty: "pong" }.serialize(s),
        }
    }
}

/// `to_json` and `write_json` for each frame enum.
macro_rules! encoders {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The frame as the JSON text of one WebSocket text frame.
            pub fn to_json(&self) -> String {
                // Serializing these types cannot fail: every map key is a string and every
                // value serializes infallibly.
                serde_json::to_string(self).unwrap_or_default()
            }

            /// Appends the frame's JSON text to `buf`, reusing its allocation.
            pub fn write_json(&self, buf: &mut Vec<u8>) {
                // As in `to_json`, serialization of these types cannot fail.
                let _ = serde_json::to_writer(buf, self);
            }
        }
    )*};
}

pub(crate) use encoders;

encoders!(BridgeToServer, UserToServer, ServerToUser);

impl ServerToBridge {
    /// The frame as the JSON text of one WebSocket text frame.
    pub fn to_json(&self) -> String {
        if let Self::BleWrite(write) = self {
            return write.to_json();
        }
        let mut buf = Vec::with_capacity(256);
        self.write_json(&mut buf);
        // Only UTF-8 is written; the fallback is never taken.
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Appends the frame's JSON text to `buf`, reusing its allocation.
    ///
    /// A `ble_write` (one per command) is written field by field, byte for byte what its
    /// `Serialize` impl writes, without serde's per-byte escape scan of strings that need
    /// no escaping (ids, UUIDs and hex); the other frames go through serde.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        match self {
            Self::BleWrite(write) => write.write_json(buf),
            // As in `to_json` of the other frames, serialization cannot fail.
            other => {
                let _ = serde_json::to_writer(buf, other);
            }
        }
    }
}

impl BleWrite {
    /// The JSON text of `ServerToBridge::BleWrite(self)` (the same as its
    /// [`ServerToBridge::to_json`]), in a `String` whose capacity is exactly its length
    /// unless a name needed escaping.
    ///
    /// An exact-size `String` becomes a `Bytes` (a WebSocket frame's text) without another
    /// allocation, so a `ble_write` is serialized straight into its frame's one buffer.
    pub fn to_json(&self) -> String {
        let mut buf = Vec::with_capacity(self.json_len_unescaped());
        self.write_json(&mut buf);
        // Only UTF-8 is written; the fallback is never taken.
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The length of [`to_json`](Self::to_json)'s text when neither id nor type needs
    /// escaping (always so for a request id this server makes and for names without `"`,
    /// `\` or control characters); more is then written, and the buffer grows.
    fn json_len_unescaped(&self) -> usize {
        // The fixed text around the values, the quotes of the three strings included.
        const FIXED: usize = r#"{"type":"ble_write","requestId":"","deviceId":"","deviceType":"","serviceUuid":"","writeUuid":"","listenUuid":"","payload":"","timeoutMs":}"#.len();
        const UUIDS: usize = 3 * 36;
        let timeout = self.timeout_ms.get();
        FIXED
            + self.request_id.as_bytes().len()
            + self.device_id.as_str().len()
            + self.device_type.as_str().len()
            + UUIDS
            + 2 * self.payload.as_bytes().len()
            + decimal_digits(u64::from(timeout))
    }

    /// `{"type":"ble_write",...}`: the same text as serializing
    /// `ServerToBridge::BleWrite(self)` with serde_json.
    fn write_json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(br#"{"type":"ble_write","requestId":"#);
        json_request_id(buf, &self.request_id);
        buf.extend_from_slice(br#","deviceId":"#);
        json_string(buf, self.device_id.as_str());
        buf.extend_from_slice(br#","deviceType":"#);
        json_string(buf, self.device_type.as_str());
        for (name, value) in [
            (&br#","serviceUuid":""#[..], &self.service_uuid),
            (br#"","writeUuid":""#, &self.write_uuid),
            (br#"","listenUuid":""#, &self.listen_uuid),
        ] {
            buf.extend_from_slice(name);
            buf.extend_from_slice(&hyphenated_lower(value));
        }
        buf.extend_from_slice(br#"","payload":""#);
        push_hex(buf, self.payload.as_bytes());
        buf.extend_from_slice(br#"","timeoutMs":"#);
        push_u64(buf, u64::from(self.timeout_ms.get()));
        buf.push(b'}');
    }
}

/// `uuid`'s hyphenated lower-case text (`Uuid::hyphenated().encode_lower`), its four
/// 32-bit words rendered eight digits at a time.
pub(crate) fn hyphenated_lower(uuid: &uuid::Uuid) -> [u8; 36] {
    let words = uuid.as_u128();
    // Each shift leaves one 32-bit word in the low bits: the casts keep exactly it.
    #[allow(clippy::cast_possible_truncation)]
    let [a, b, c, d] = [96, 64, 32, 0].map(|shift| crate::ids::hex8((words >> shift) as u32));
    let mut text = [b'-'; 36];
    text[..8].copy_from_slice(&a);
    text[9..13].copy_from_slice(&b[..4]);
    text[14..18].copy_from_slice(&b[4..]);
    text[19..23].copy_from_slice(&c[..4]);
    text[24..28].copy_from_slice(&c[4..]);
    text[28..].copy_from_slice(&d);
    text
}

/// Appends `bytes` as lower-case hex digits, as [`HexPayload`]'s `Display` writes them.
pub(crate) fn push_hex(buf: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.reserve(bytes.len() * 2);
    for b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 0xF)]);
    }
}

/// How many digits [`push_u64`] writes for `n`.
fn decimal_digits(n: u64) -> usize {
    // `ilog10` of a `u64` is at most 19: the cast cannot truncate.
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends `n` in decimal, as its `Display` (and serde_json) writes it.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        digits[at] = b'0' + digit;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Appends `s` as a JSON string: as is between quotes when nothing in it needs escaping
/// (serde_json escapes only `"`, `\` and control characters), through serde_json otherwise.
pub(crate) fn json_string(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(buf, s);
    } else {
        push_quoted(buf, s.as_bytes());
    }
}

/// [`json_string`] of a request id, read as the bytes it holds: printable ASCII, so they
/// need no second UTF-8 check (`RequestId::as_str` makes one) unless escaping is needed.
pub(crate) fn json_request_id(buf: &mut Vec<u8>, id: &RequestId) {
    let bytes = id.as_bytes();
    if needs_escape(bytes) {
        json_string(buf, id.as_str());
    } else {
        push_quoted(buf, bytes);
    }
}

/// Whether serde_json would escape any of `bytes` (`"`, `\` or a control character).
fn needs_escape(bytes: &[u8]) -> bool {
    // A scan without early exit, which the compiler can vectorize: the strings written
    // here (ids, names) almost never need escaping.
    bytes.iter().fold(0u8, |acc, &b| {
        acc | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }) != 0
}

/// Appends `bytes` between quotes.
fn push_quoted(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(bytes);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::hyphenated_lower;

    fn uuid_crate_text(uuid: &uuid::Uuid) -> Vec<u8> {
        let mut buf = uuid::Uuid::encode_buffer();
        uuid.hyphenated().encode_lower(&mut buf).as_bytes().to_vec()
    }

    proptest! {
        /// The UUID text of a `ble_write` is byte for byte what the `uuid` crate writes.
        #[test]
        fn uuids_are_written_as_the_uuid_crate_writes_them(bits in any::<u128>()) {
            let uuid = uuid::Uuid::from_u128(bits);
            prop_assert_eq!(hyphenated_lower(&uuid).to_vec(), uuid_crate_text(&uuid));
        }
    }

    #[test]
    fn edge_uuids_are_written_as_the_uuid_crate_writes_them() {
        for bits in [
            0,
            u128::MAX,
            0x0000_180a_0000_1000_8000_0080_5f9b_34fb,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            0xa0a0_a0a0_a0a0_a0a0_a0a0_a0a0_a0a0_a0a0,
            0x9f9f_9f9f_9f9f_9f9f_9f9f_9f9f_9f9f_9f9f,
        ] {
            let uuid = uuid::Uuid::from_u128(bits);
            assert_eq!(hyphenated_lower(&uuid).to_vec(), uuid_crate_text(&uuid));
        }
    }
}

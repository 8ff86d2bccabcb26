//! The bridge wire protocol, version 1.1, as plain data and pure functions.
//!
//! This crate is the code form of `docs/PROTOCOL.md` (in the repository root): every
//! WebSocket frame, MQTT frame, stream event and HTTP body as a
//! typed value, the validated identifiers they are made of, the error codes, and the
//! device-type registry. It does no IO and needs no async runtime, so the server, the client
//! library, a phone simulator and a third party's gateway all share one definition of the
//! wire.
//!
//! * Frames: one enum per direction — [`BridgeToServer`], [`ServerToBridge`],
//!   [`UserToServer`], [`ServerToUser`] — each with a `decode` entry point that returns the
//!   typed frame or a [`ProtocolError`] carrying the exact [`ErrorCode`] of PROTOCOL.md 3.5
//!   (and the offending `requestId` when one could be read), and a `to_json` encoder.
//! * Values: [`RequestId`] (inline, allocation-free), [`DeviceId`], [`HexPayload`] (bytes,
//!   hex on the wire), [`TimeoutMs`], [`TtlSeconds`], [`Timestamp`] and the short names.
//! * HTTP bodies of PROTOCOL.md 4: [`http`], with the mappings that belong to the wire:
//!   [`CommandResponse`](http::CommandResponse)'s HTTP status, metric outcome and
//!   `command_result` frame, and a final [`CommandView`](http::CommandView)'s announcement.
//! * Version 1.1: [`BleProgress`] and the [`Stage`]/[`Progress`] of an answer ([`Hops`]);
//!   the live stream's [`StreamEvent`]; bridges over MQTT ([`MqttBridgeFrame`],
//!   [`MqttServerFrame`], [`Hello`], [`BridgeId`]).
//! * [`ConfigRegistry`]: device type → BLE UUIDs, loadable from TOML.
//! * Feature `openapi`: `utoipa::ToSchema` for the HTTP bodies and the values they are made
//!   of, derived next to their serde attributes (the server's `GET /v1/openapi.json` is built
//!   from them, so the document follows the types). It adds utoipa only: no IO.
//!
//! How ambiguous input is read is written down in [`decode`].
//!
//! # Example
//!
//! ```
//! use bridge_protocol::{BleOutcome, BridgeToServer, ErrorCode, Limits};
//!
//! let limits = Limits::default();
//! let frame = BridgeToServer::decode(
//!     r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"0A"}"#,
//!     &limits,
//! )?;
//! let BridgeToServer::BleResponse(response) = &frame else { unreachable!() };
//! assert_eq!(response.outcome, BleOutcome::Payload(vec![0x0a].into()));
//! // Output is lower-case hex.
//! assert_eq!(
//!     frame.to_json(),
//!     r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"0a"}"#
//! );
//!
//! // Bad input becomes a typed error that already knows its answer.
//! let err = BridgeToServer::decode(
//!     r#"{"type":"ble_response","requestId":"r-2","deviceId":"lock-1","payload":"abc"}"#,
//!     &limits,
//! )
//! .unwrap_err();
//! assert_eq!(err.code, ErrorCode::InvalidPayload);
//! assert_eq!(err.request_id.unwrap().as_str(), "r-2");
//! # Ok::<(), bridge_protocol::ProtocolError>(())
//! ```

mod answer;
pub mod decode;
mod error;
mod frames;
pub mod http;
mod ids;
mod mqtt;
#[cfg(feature = "openapi")]
mod openapi;
mod progress;
mod registry;
mod stream;
mod values;
mod write_reader;

pub use decode::LastDeviceId;
pub use error::{ErrorCode, ErrorFrame, ProtocolError};
pub use frames::{
    Ack, AppEvent, BleOutcome, BleProgress, BleResponse, BleStatus, BleWrite, BridgeToServer,
    CommandFrame, CommandResult, DeviceStatus, EventType, RESERVED_TYPES, Release, ResultStatus,
    ServerToBridge, ServerToUser, SubscriptionChange, UserToServer,
};
pub use ids::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, MAX_DEVICE_ID_CHARS,
    MAX_NAME_CHARS, MAX_REQUEST_ID_LEN, RequestId, UserId,
};
pub use mqtt::{
    BridgeId, Credentials, Hello, MAX_BRIDGE_ID_CHARS, MqttBridgeFrame, MqttServerFrame, Token,
};
pub use progress::{Hops, Progress, Stage};
pub use registry::{
    BLUETOOTH_BASE_UUID, ConfigRegistry, DeviceConfig, RegistryError, expand_short_uuid,
    parse_ble_uuid,
};
pub use stream::StreamEvent;
pub use values::{HexPayload, Limits, TimeoutMs, Timestamp, TtlSeconds, ValueError};

/// The role of a connection or token (PROTOCOL.md 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// An end user's browser tab or app, over WebSocket.
    User,
    /// A phone or gateway near BLE devices, over WebSocket.
    Bridge,
    /// The application backend, over HTTP.
    Service,
}

impl Role {
    /// The role as written in tokens and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bridge => "bridge",
            Self::Service => "service",
        }
    }
}

/// Identifies one WebSocket connection inside one server process.
///
/// Not a wire type: the hub hands these out, and the session manager records which
/// connection carried each `ble_write`, so that only that connection may answer it
/// (PROTOCOL.md 3.2). Defined here so that the crates that share it need not depend on each
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// Wraps a raw id. The hub guarantees uniqueness within a process.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

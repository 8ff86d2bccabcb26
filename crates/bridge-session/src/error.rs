//! Why a command has no answer, why a transport could not send, and why an answer was refused.

use bridge_protocol::{DeviceErrorCode, ErrorCode, RequestId};

/// Why [`SessionManager::send_command`](crate::SessionManager::send_command) returned no reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No bridge holds the device (HTTP `offline`).
    #[error("device is offline: no bridge holds it")]
    Offline,
    /// The bridge connection that carried the command closed, or released the device, before
    /// answering (HTTP `bridge_lost`).
    #[error("the bridge went away before answering")]
    BridgeLost,
    /// No answer within the command's timeout (HTTP `timeout`).
    #[error("no answer within the timeout")]
    Timeout,
    /// The bridge reported a BLE failure (HTTP `device_error`).
    #[error("the bridge reported a device error: {0}")]
    DeviceError(DeviceErrorCode),
    /// The device type is not in the registry, or none was given and the registry has no
    /// default (HTTP `unknown_device_type`). Holds the name asked for, empty when none was.
    #[error("unknown device type: {0}")]
    UnknownDeviceType(String),
    /// The server already has as many commands pending as it is configured to allow.
    #[error("too many commands pending")]
    TooManyPending,
    /// The session manager is shutting down.
    #[error("the session manager is shutting down")]
    Shutdown,
}

/// Why a [`Transport`](crate::Transport) could not send a `ble_write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No bridge connection holds the device.
    #[error("no bridge holds the device")]
    Offline,
}

/// Which of the three checks of PROTOCOL.md 3.2 a `ble_response` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// No command with this request id is pending: never issued by this server, already
    /// answered, timed out, or cancelled.
    UnknownRequest,
    /// The command is still pending but its deadline has passed; it is about to time out and
    /// the answer is too late to count.
    Late,
    /// The command went out on another connection.
    WrongConnection,
    /// The command was sent to another device.
    WrongDevice,
}

impl RejectReason {
    /// The error code the hub answers the bridge with: `unknown_request` or `forbidden`.
    pub const fn error_code(self) -> ErrorCode {
        match self {
            Self::UnknownRequest | Self::Late => ErrorCode::UnknownRequest,
            Self::WrongConnection | Self::WrongDevice => ErrorCode::Forbidden,
        }
    }
}

/// A `ble_response` that resolved nothing. The pending command, if any, is untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ble_response {request_id} rejected: {reason:?}")]
pub struct ResponseRejected {
    /// The `requestId` of the refused answer, for the error frame.
    pub request_id: RequestId,
    /// Which check failed.
    pub reason: RejectReason,
}

impl ResponseRejected {
    /// The error code the hub answers the bridge with: `unknown_request` or `forbidden`.
    pub const fn error_code(&self) -> ErrorCode {
        self.reason.error_code()
    }
}

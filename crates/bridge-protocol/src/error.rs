//! Error codes (PROTOCOL.md 3.5 and 4) and the typed error every decoder returns.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{RequestId, ValueError};

/// Every error code of PROTOCOL.md, for WebSocket error frames and HTTP error bodies alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, not an object, no string `type`, a binary frame, a required field missing or
    /// of the wrong type.
    InvalidMessage,
    /// A `type` this role may not send.
    UnknownType,
    /// `payload` present but not a string, not even-length hex, or over the size limit.
    InvalidPayload,
    /// The connection or token may not do this for this device.
    Forbidden,
    /// A `ble_response` for nothing pending.
    UnknownRequest,
    /// The connection sends faster than its limit.
    RateLimited,
    /// An HTTP body (or a `command` frame field) that is not JSON, misses a required field or
    /// has one of the wrong type or range.
    InvalidRequest,
    /// No such resource.
    NotFound,
    /// A device type the registry does not know.
    UnknownDeviceType,
    /// The resource is not in a state that allows the operation.
    Conflict,
    /// The device's queue is full.
    QueueFull,
    /// Missing or invalid credentials.
    Unauthorized,
    /// A dependency (such as the queue backend) does not answer.
    Unavailable,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::UnknownType => "unknown_type",
            Self::InvalidPayload => "invalid_payload",
            Self::Forbidden => "forbidden",
            Self::UnknownRequest => "unknown_request",
            Self::RateLimited => "rate_limited",
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::UnknownDeviceType => "unknown_device_type",
            Self::Conflict => "conflict",
            Self::QueueFull => "queue_full",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
        }
    }

    /// The HTTP status that carries this code in an error body.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidMessage
            | Self::InvalidPayload
            | Self::InvalidRequest
            | Self::UnknownType => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound | Self::UnknownDeviceType | Self::UnknownRequest => 404,
            Self::Conflict => 409,
            Self::QueueFull | Self::RateLimited => 429,
            Self::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused frame or body: the exact code to answer with, a message for the peer's
/// developer, and the `requestId` of the offending frame when one could be read.
///
/// Decoders return this so that the caller can answer every bad input precisely without
/// parsing it a second time: [`ProtocolError::to_error_frame`] is the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The error code to answer with.
    pub code: ErrorCode,
    /// What was wrong, in words.
    pub message: Cow<'static, str>,
    /// The offending frame's `requestId`, when it had a valid one.
    pub request_id: Option<RequestId>,
}

impl ProtocolError {
    /// A new error without a request id.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            request_id: None,
        }
    }

    /// Attaches the offending frame's request id.
    pub fn with_request_id(mut self, request_id: Option<RequestId>) -> Self {
        self.request_id = request_id;
        self
    }

    /// An `invalid_message` error.
    pub fn invalid_message(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message)
    }

    /// The error frame that answers the refused input.
    pub fn to_error_frame(&self) -> ErrorFrame {
        ErrorFrame {
            code: self.code,
            message: self.message.to_string(),
            request_id: self.request_id,
        }
    }

    /// The HTTP error body that answers the refused input.
    pub fn to_error_body(&self) -> crate::http::ErrorBody {
        crate::http::ErrorBody::new(self.code, self.message.to_string())
    }

    /// Maps a value error in field `field` to the code PROTOCOL.md gives it: `invalid_payload`
    /// for the payload, `default` for everything else.
    pub(crate) fn from_value(err: &ValueError, default: ErrorCode) -> Self {
        let code = match err {
            ValueError::NotHex | ValueError::PayloadTooLarge { .. } => ErrorCode::InvalidPayload,
            _ => default,
        };
        Self::new(code, err.to_string())
    }
}

/// The `error` frame (PROTOCOL.md 3.5), sent to bridges and users alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The `requestId` of the frame this answers, when one could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl ErrorFrame {
    /// A new error frame.
    pub fn new(code: ErrorCode, message: impl Into<String>, request_id: Option<RequestId>) -> Self {
        Self {
            code,
            message: message.into(),
            request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::InvalidMessage,
            ErrorCode::UnknownType,
            ErrorCode::InvalidPayload,
            ErrorCode::Forbidden,
            ErrorCode::UnknownRequest,
            ErrorCode::RateLimited,
            ErrorCode::InvalidRequest,
            ErrorCode::NotFound,
            ErrorCode::UnknownDeviceType,
            ErrorCode::Conflict,
            ErrorCode::QueueFull,
            ErrorCode::Unauthorized,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn http_statuses_match_section_4() {
        assert_eq!(ErrorCode::QueueFull.http_status(), 429);
        assert_eq!(ErrorCode::UnknownDeviceType.http_status(), 404);
        assert_eq!(ErrorCode::InvalidPayload.http_status(), 400);
        assert_eq!(ErrorCode::Conflict.http_status(), 409);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
    }
}

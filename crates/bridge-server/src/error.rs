//! HTTP error answers and the server's own errors.

use std::cell::RefCell;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bridge_dispatch::Refusal;
use bridge_protocol::http::{CommandResponse, ErrorBody};
use bridge_protocol::{ErrorCode, ErrorFrame, ProtocolError, RequestId};
use bridge_queue::StoreError;

use crate::auth::AuthError;

/// The message of every `unavailable` answer caused by the queue backend (the detail goes
/// to the log only).
pub(crate) const QUEUE_UNAVAILABLE: &str = "the queue backend is unavailable";

/// An error answer of the HTTP API: `{"error":{"code","message"}}` with its status.
///
/// The status is the code's status of PROTOCOL.md 4, except for a body over the size limit
/// (413 with code `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code.http_status()),
            body: ErrorBody::new(code, message),
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same refusal as an error frame answering a user's `command` frame.
    pub(crate) fn to_frame(&self, request_id: Option<RequestId>) -> ErrorFrame {
        ErrorFrame::new(
            self.body.error.code,
            self.body.error.message.clone(),
            request_id,
        )
    }

    /// A store refusal. A backend failure (`unavailable`) is logged with its detail and
    /// answered with [`QUEUE_UNAVAILABLE`] only: the client library's text can name hosts,
    /// user names or paths, which unauthenticated callers must not read.
    pub(crate) fn from_store(error: &StoreError) -> Self {
        let code = bridge_dispatch::store_error_code(error);
        if code == ErrorCode::Unavailable {
            tracing::warn!(%error, "queue backend error");
            return Self::new(code, QUEUE_UNAVAILABLE);
        }
        Self::new(code, error.to_string())
    }
}

/// Lets handlers answer a store refusal with `?`.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::from_store(&error)
    }
}

/// Lets handlers answer a refused command with `?`.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Store(error) => Self::from_store(&error),
            refusal => Self::new(refusal.code(), refusal.to_string()),
        }
    }
}

impl From<&ProtocolError> for ApiError {
    fn from(error: &ProtocolError) -> Self {
        Self::new(error.code, error.message.to_string())
    }
}

impl From<&AuthError> for ApiError {
    fn from(error: &AuthError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON response with `status`.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(error) => {
            tracing::error!(%error, "could not serialize a response body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

thread_local! {
    /// The buffer this thread writes command answers into; each body is then copied out
    /// at its exact size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The answer to a command, with its PROTOCOL.md status.
///
/// The body is written by [`CommandResponse::write_json`] (byte for byte serde's text,
/// without its map machinery) into this thread's scratch buffer, then copied into a body of
/// exactly its size: `Bytes` takes an exact-size buffer without the extra shared header it
/// allocates for a `Vec` whose capacity exceeds its length.
pub(crate) fn json_with_code(status: u16, body: &CommandResponse) -> Response {
    /// A scratch buffer grown past this (an answer with a large reply) is not kept.
    const SCRATCH_KEPT: usize = 4096;
    let bytes = SCRATCH.with(|scratch| {
        if let Ok(mut buf) = scratch.try_borrow_mut() {
            buf.clear();
            body.write_json(&mut buf);
            let bytes = Bytes::copy_from_slice(&buf);
            if buf.capacity() > SCRATCH_KEPT {
                *buf = Vec::new();
            }
            bytes
        } else {
            // Not reached (writing an answer writes no other); a buffer of its own then.
            let mut buf = Vec::new();
            body.write_json(&mut buf);
            Bytes::from(buf)
        }
    });
    json_bytes(status_of(status), bytes)
}

/// A response carrying `bytes` of JSON with `status`.
fn json_bytes(status: StatusCode, bytes: impl IntoResponse) -> Response {
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why a server could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The queue backend could not be opened.
    #[error("cannot open the queue: {0}")]
    Queue(#[from] StoreError),
    /// The queue URL names a backend this build does not include.
    #[error("the {backend} queue backend is not available: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why (a missing cargo feature, not implemented yet).
        reason: &'static str,
    },
    /// The device-type registry could not be loaded.
    #[error("cannot load the device types: {0}")]
    Registry(#[from] bridge_protocol::RegistryError),
    /// Listening or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A development-mode server asked to serve on an address other people can reach,
    /// without [`ServerBuilder::allow_unauthenticated`](crate::ServerBuilder::allow_unauthenticated).
    #[error(
        "refusing to serve on {0} in development mode: anyone who can reach it could command every device. \
         Configure a JWT secret, listen on a loopback address such as 127.0.0.1, \
         or call ServerBuilder::allow_unauthenticated() if you really mean it"
    )]
    UnauthenticatedListener(std::net::SocketAddr),
}

/// Why [`ServerBuilder::build`](crate::ServerBuilder::build) refused to build a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// An application frame type is one PROTOCOL.md defines.
    #[error(
        "`{0}` is a frame type the protocol defines; an application frame needs a name of its own"
    )]
    ReservedFrameType(String),
    /// An application frame type that could not be a `type` (empty, over 64 characters,
    /// control characters).
    #[error("`{name}` cannot be a frame type: {reason}")]
    InvalidFrameType {
        /// The name given.
        name: String,
        /// Why not.
        reason: bridge_protocol::ValueError,
    },
    /// An application frame type registered twice.
    #[error("the frame type `{0}` is registered twice")]
    DuplicateFrameType(String),
    /// No JWT secret, and [`ServerBuilder::development_mode`](crate::ServerBuilder::development_mode)
    /// was not said: a server is authenticated unless the application says otherwise.
    #[error(
        "no JWT secret: set ServerConfig::jwt_secret, or call ServerBuilder::development_mode() \
         to run without authentication (loopback only)"
    )]
    NoJwtSecret,
    /// A JWT secret and [`ServerBuilder::development_mode`](crate::ServerBuilder::development_mode)
    /// both: which one is meant is unclear.
    #[error("development mode was asked for, but the configuration has a JWT secret")]
    DevelopmentModeWithSecret,
    /// The configuration breaks a rule the server will not run without
    /// ([`ServerConfig::validate`](crate::ServerConfig::validate)).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

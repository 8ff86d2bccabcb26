//! HTTP error answers and the server's own errors.

use std::cell::RefCell;
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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

impl ApiError {
    /// The answer, in `headers` (emptied first; see [`json_answer`]).
    pub(crate) fn into_answer<B: From<Bytes>>(self, headers: HeaderMap) -> Response<B> {
        json_answer_of(self.status, &self.body, headers)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_answer(HeaderMap::new())
    }
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON response with `status`.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    json_answer_of(status, body, HeaderMap::new())
}

/// [`json_response`] in `headers` and with any body type made from bytes.
fn json_answer_of<T: serde::Serialize, B: From<Bytes>>(
    status: StatusCode,
    body: &T,
    headers: HeaderMap,
) -> Response<B> {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_answer(status, Bytes::from(bytes), headers),
        Err(error) => {
            tracing::error!(%error, "could not serialize a response body");
            // What `StatusCode::INTERNAL_SERVER_ERROR.into_response()` is once axum's route
            // future has given it its `Content-Length`.
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::new(),
                headers,
                None,
            )
        }
    }
}

thread_local! {
    /// The buffer this thread writes command answers into; each body is then copied out
    /// at its exact size.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The answer to a command, with its PROTOCOL.md status, in `headers` (emptied first; see
/// [`json_answer`]).
///
/// The body is written by [`CommandResponse::write_json`] (byte for byte serde's text,
/// without its map machinery) into this thread's scratch buffer, then copied into a body of
/// exactly its size: `Bytes` takes an exact-size buffer without the extra shared header it
/// allocates for a `Vec` whose capacity exceeds its length.
pub(crate) fn json_with_code<B: From<Bytes>>(
    status: u16,
    body: &CommandResponse,
    headers: HeaderMap,
) -> Response<B> {
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
    json_answer(status_of(status), bytes, headers)
}

/// A response carrying `bytes` of JSON with `status`: what `(status, bytes).into_response()`
/// with its `Content-Type` set to `application/json` gives once axum's route future has
/// added its `Content-Length` — those two headers, in that order — built directly.
///
/// `headers` is emptied and holds the answer's headers: a map to reuse, so that the answer
/// allocates none (the fast path of the command route passes its request's, which it has
/// read; hyper keeps an answer's map for the next request's head).
pub(crate) fn json_answer<B: From<Bytes>>(
    status: StatusCode,
    bytes: Bytes,
    headers: HeaderMap,
) -> Response<B> {
    answer(
        status,
        bytes,
        headers,
        Some(HeaderValue::from_static("application/json")),
    )
}

/// A response with `status`, `Content-Type: content_type` if given, and `bytes` with their
/// `Content-Length`, in `headers` (emptied first).
fn answer<B: From<Bytes>>(
    status: StatusCode,
    bytes: Bytes,
    mut headers: HeaderMap,
    content_type: Option<HeaderValue>,
) -> Response<B> {
    headers.clear();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(header::CONTENT_LENGTH, content_length(bytes.len()));
    let mut response = Response::new(B::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The `Content-Length` value of a body of `len` bytes. Those of small sizes (every JSON
/// answer of the API but the largest) are made once, as static values: formatting one
/// allocates, and cloning a formatted one counts references.
pub(crate) fn content_length(len: usize) -> HeaderValue {
    /// The sizes whose values are made once.
    const SMALL_SIZES: usize = 1024;
    static SMALL: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..SMALL_SIZES)
            .map(|len| {
                // Leaked once per process, so that each value is `'static`.
                let text: &'static str = Box::leak(len.to_string().into_boxed_str());
                HeaderValue::from_static(text)
            })
            .collect()
    });
    SMALL
        .get(len)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(len))
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::content_length;

    #[test]
    fn content_length_is_the_decimal_size_whether_made_once_or_not() {
        for len in (0..2048).chain([4095, 65_536, usize::MAX]) {
            assert_eq!(content_length(len), HeaderValue::from(len), "{len}");
        }
    }
}

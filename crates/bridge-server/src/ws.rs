//! `GET /ws`: authentication before the upgrade, then the connection goes to the hub.
//!
//! The upgrade is done with hyper's upgrade mechanism, not axum's `WebSocketUpgrade`: the
//! handshake's answer is built here, and the upgraded connection is served by the hub's own
//! frame layer, [`ServerWebSocket`] (tungstenite's server behaviour, with
//! [`HubConfig::websocket_config`](bridge_hub::HubConfig::websocket_config) applied exactly:
//! 1 KiB read buffer, frame size limit enforced before buffering), so there is no message
//! conversion between two WebSocket libraries on every frame, no zeroing of the read buffer
//! before every read, and a frame that straddles the end of that small buffer is still
//! read with one system call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bridge_hub::{ConnectionInfo, DeviceAccess, ServerWebSocket, UserId};
use bridge_protocol::{ErrorCode, Role};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

use crate::auth::{AuthError, DeviceGrant, UpgradeRequest, WsIdentity};
use crate::error::ApiError;
use crate::preface::ServedIo;
use crate::server::Core;

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The query parameters of a `GET /ws` request, decoded and in order (`deviceId` may
/// repeat); the reason when the query string cannot be read.
pub(crate) fn upgrade_query(uri: &axum::http::Uri) -> Result<Vec<(String, String)>, String> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|error| error.body_text())
}

pub(crate) async fn upgrade(State(core): State<Arc<Core>>, mut request: Request) -> Response {
    if !core.local.is_accepting() {
        return ApiError::new(ErrorCode::Unavailable, "the server is shutting down")
            .into_response();
    }
    if request.version() >= Version::HTTP_2 {
        // No extended CONNECT (RFC 8441) is offered, so no client should try; one that
        // does is told what to do.
        return ApiError::new(
            ErrorCode::InvalidRequest,
            "a WebSocket is opened over HTTP/1.1: connect to /ws without HTTP/2",
        )
        .with_status(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        .into_response();
    }
    let query = match upgrade_query(request.uri()) {
        Ok(query) => query,
        Err(reason) => {
            return ApiError::new(ErrorCode::InvalidRequest, reason).into_response();
        }
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let identity = match core.auth.authenticate_ws(&UpgradeRequest {
        authorization,
        query,
    }) {
        Ok(identity) => identity,
        Err(error) => {
            tracing::info!(%error, "WebSocket refused");
            return ApiError::from(&error).into_response();
        }
    };

    let headers = request.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_upgrade = request.method() == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    let (true, Some(key)) = (is_upgrade, key) else {
        return ApiError::new(
            ErrorCode::InvalidRequest,
            "expected a WebSocket upgrade request",
        )
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .into_response();
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut response = ApiError::new(
            ErrorCode::InvalidRequest,
            "only WebSocket version 13 is supported",
        )
        .with_status(StatusCode::UPGRADE_REQUIRED)
        .into_response();
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }

    let user = UserId::new(&identity.principal.subject);
    // The hub refuses one more with 1008 after the upgrade; this answers the usual case
    // before it, with a status a client understands. Two racing for the last place: the
    // hub's check decides.
    let max_connections = core.local.config().max_connections_per_user;
    if identity.principal.role != Role::Bridge
        && core.local.user_connections(&user) >= max_connections
    {
        tracing::info!(user = %user, "WebSocket refused: too many connections for this user");
        return ApiError::new(
            ErrorCode::RateLimited,
            format!("this user has {max_connections} connections open, as many as it may"),
        )
        .into_response();
    }
    let info = match connection_info(identity) {
        Ok(info) => info,
        Err(error) => return ApiError::from(&error).into_response(),
    };

    let on_upgrade = hyper::upgrade::on(&mut request);
    // Served by `Server::serve`: the connection's place under `max_connections` is kept by
    // the WebSocket for as long as it lives.
    let slot = request
        .extensions_mut()
        .remove::<crate::server::ConnectionSlot>();
    let hub = core.local.clone();
    let ws_config = hub.config().websocket_config();
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    // A TCP connection (what `Server::serve` accepts) is served without
                    // hyper's upgrade wrappers, with the bytes hyper read past the request
                    // (after any the server read first and hyper has not taken: none, as
                    // hyper reads a request's head whole); any other transport through
                    // them.
                    let reason = match upgraded.downcast::<ServedIo<TcpStream>>() {
                        Ok(parts) => {
                            let (tcp, mut unread) = parts.io.into_inner().into_parts();
                            let read = if unread.is_empty() {
                                &parts.read_buf[..]
                            } else {
                                unread.extend_from_slice(&parts.read_buf);
                                &unread[..]
                            };
                            let socket =
                                ServerWebSocket::from_partially_read(tcp, read, &ws_config);
                            hub.serve(socket, info).await
                        }
                        Err(upgraded) => {
                            let socket = ServerWebSocket::new(TokioIo::new(upgraded), &ws_config);
                            hub.serve(socket, info).await
                        }
                    };
                    drop(slot);
                    tracing::debug!(reason = reason.as_str(), "connection ended");
                }
                Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
            }
        }
        .in_current_span(),
    );

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The hub's view of an authenticated connection: its role, user, the devices it named and
/// may touch, and when its token expires. The one mapping for both transports: `GET /ws`
/// and an MQTT bridge's `hello` ([`Server::authenticate_hello`](crate::Server::authenticate_hello)).
pub(crate) fn connection_info(identity: WsIdentity) -> Result<ConnectionInfo, AuthError> {
    let principal = identity.principal;
    let access = match principal.devices {
        DeviceGrant::All => DeviceAccess::All,
        DeviceGrant::Only(set) => DeviceAccess::only(set),
    };
    let user = UserId::new(&principal.subject);
    let mut info = if principal.role == Role::Bridge {
        ConnectionInfo::bridge(user, identity.initial_devices, access)
    } else {
        ConnectionInfo::user(user, access)
    };
    if let Some(exp) = principal.expires_at {
        // `exp` is at most `Claims::MAX_EXP`, which every clock holds; were it not, the
        // connection would be refused rather than the task panic.
        let Some(expiry) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp)) else {
            return Err(AuthError::Malformed("claim `exp` is out of range".into()));
        };
        info = info.with_expiry(expiry);
    }
    Ok(info)
}

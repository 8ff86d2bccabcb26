//! The HTTP API of PROTOCOL.md 4 and the operational endpoints.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bridge_hub::Frame;
use bridge_protocol::http::{
    CommandList, CommandRequest, CommandStatus, DeviceList, DeviceSummary, DeviceTypeList,
    DeviceView, EventAccepted, EventRequest,
};
use bridge_protocol::{AppEvent, CommandId, DeviceId, ErrorCode, ServerToUser, StreamEvent};
use bridge_queue::Party;

use crate::error::{ApiError, QUEUE_UNAVAILABLE, json_response, json_with_code};

/// The body of `/readyz`'s 503 when the hub is not ready (a cluster node that has not
/// joined, or lost NATS).
const HUB_UNAVAILABLE: &str = "this node has not joined its cluster";
use crate::metrics::Gauges;
use crate::server::Core;
use crate::ws;

pub(crate) fn router(core: Arc<Core>) -> Router {
    let api = Router::new()
        .route(
            "/devices/{device_id}/commands",
            post(post_command).get(list_commands),
        )
        .route("/devices/{device_id}", get(get_device))
        .route("/devices", get(list_devices))
        .route("/devices/{device_id}/events", post(post_event))
        .route("/commands/{command_id}", get(get_command))
        .route("/commands/{command_id}/confirm", post(confirm_command))
        .route("/commands/{command_id}/cancel", post(cancel_command))
        .route("/device-types", get(device_types))
        .route("/stream", get(stream))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&core),
            require_service,
        ));
    let router = Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", api)
        .fallback(not_found);
    // Development mode: every route, `/healthz` and the fallback included, first checks
    // that the request comes from a loopback client (PROTOCOL.md 1.2).
    let router = if core.auth.is_development() {
        router.layer(middleware::from_fn_with_state(
            Arc::clone(&core),
            require_loopback,
        ))
    } else {
        router
    };
    router.with_state(core)
}

/// Development mode's `Host`/`Origin` check, before anything else (PROTOCOL.md 1.2): a web
/// page, a cross-origin form or a DNS rebinding gets 403 `forbidden`.
async fn require_loopback(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let mut hosts: Vec<Option<&str>> = headers
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    if let Some(authority) = request.uri().authority() {
        hosts.push(Some(authority.as_str()));
    }
    // The request target's authority repeats the Host header (absolute form): one name.
    hosts.dedup();
    let origins = headers
        .get_all(header::ORIGIN)
        .iter()
        .map(|v| v.to_str().ok());
    match core.auth.check_loopback(&hosts, origins) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            tracing::info!(%error, "request refused");
            ApiError::from(&error).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// The `service` token check of every `/v1` route (open in development mode).
async fn require_service(State(core): State<Arc<Core>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match core.auth.check_service(authorization) {
        Ok(()) => next.run(request).await,
        Err(error) => ApiError::from(&error).into_response(),
    }
}

/// Reads a body of at most the configured size; [`utf8`] reads it as text, in place.
async fn read_body(core: &Core, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = core.config.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body is over the limit of {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    })
}

/// A body read by [`read_body`] as UTF-8 text (no copy).
fn utf8(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "the body is not UTF-8 text"))
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(raw).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
}

fn command_id(raw: &str) -> Result<CommandId, ApiError> {
    // An id that cannot be valid names no command.
    CommandId::new(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "no such command"))
}

async fn post_command(
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let device = device_id(&device)?;
    let body = read_body(&core, body).await?;
    let request =
        CommandRequest::from_json(utf8(&body)?, &core.limits).map_err(|e| ApiError::from(&e))?;
    // The HTTP API is the application backend's: its queued commands are the backend's
    // (PROTOCOL.md 4.2, dedup per party).
    let response = core
        .dispatch
        .execute(device, request, Party::Backend)
        .await?;
    Ok(json_with_code(response.http_status(), &response))
}

async fn list_commands(
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let device = device_id(&device)?;
    let open = core.dispatch.device_commands(&device).await?;
    let list = CommandList {
        commands: open
            .iter()
            .map(bridge_queue::QueuedCommand::to_view)
            .collect(),
    };
    Ok(json_response(StatusCode::OK, &list))
}

async fn get_device(
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let device = device_id(&device)?;
    let presence = core.hub.device_presence(&device).await;
    let pending = core.dispatch.pending_count(&device).await?;
    let view = DeviceView {
        device_id: device,
        online: presence.online,
        ble_connected: presence.ble_connected,
        bridges: u32::try_from(presence.bridges).unwrap_or(u32::MAX),
        pending_commands: pending,
    };
    Ok(json_response(StatusCode::OK, &view))
}

async fn list_devices(State(core): State<Arc<Core>>) -> Response {
    let devices = core
        .hub
        .online_devices()
        .await
        .into_iter()
        .map(|p| DeviceSummary {
            device_id: p.device_id,
            online: p.online,
            ble_connected: p.ble_connected,
        })
        .collect();
    json_response(StatusCode::OK, &DeviceList { devices })
}

async fn post_event(
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let device = device_id(&device)?;
    let body = read_body(&core, body).await?;
    let event = EventRequest::from_json(utf8(&body)?).map_err(|e| ApiError::from(&e))?;
    let event = AppEvent {
        event_type: event.event_type,
        device_id: device.clone(),
        data: event.data,
    };
    core.stream
        .publish_with(&device, || StreamEvent::Event(event.clone()));
    let frame = Frame::from(ServerToUser::Event(event));
    let delivered = core.hub.broadcast(&device, &frame).await;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &EventAccepted {
            delivered: delivered as u64,
        },
    ))
}

/// `GET /v1/stream` (PROTOCOL.md 4.5): Server-Sent Events, `?deviceId=` (repeatable) to
/// limit it to those devices.
async fn stream(
    State(core): State<Arc<Core>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let devices = crate::stream::device_filter(query.as_deref())
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    Ok(core.stream.subscribe(devices).into_response())
}

async fn get_command(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.command(&id).await?;
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

async fn confirm_command(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.confirm(&id).await?;
    tracing::info!(command_id = %id, "confirmed");
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

async fn cancel_command(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.cancel(&id).await?;
    tracing::info!(command_id = %id, "cancelled");
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

async fn device_types(State(core): State<Arc<Core>>) -> Response {
    json_response(StatusCode::OK, &DeviceTypeList::from(&*core.registry))
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(core): State<Arc<Core>>) -> Response {
    let health = core.hub.health();
    if !health.ready {
        let reason = health.reason.as_deref().unwrap_or("the hub is not ready");
        tracing::warn!(reason, "not ready: the hub");
        // The detail (hosts) is for the log, not for unauthenticated callers.
        return ApiError::new(ErrorCode::Unavailable, HUB_UNAVAILABLE).into_response();
    }
    match core.store.ping().await {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Err(error) => {
            tracing::warn!(%error, "not ready: the queue backend does not answer");
            // The detail (hosts, user names) is for the log, not for unauthenticated callers.
            ApiError::new(ErrorCode::Unavailable, QUEUE_UNAVAILABLE).into_response()
        }
    }
}

async fn metrics(State(core): State<Arc<Core>>, request: Request) -> Response {
    if core.config.metrics_require_token {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(error) = core.auth.check_service(authorization) {
            return ApiError::from(&error).into_response();
        }
    }
    let counts = core.hub.counts().await;
    let mut gauges = Gauges {
        user_connections: counts.user_connections,
        bridge_connections: counts.bridge_connections,
        devices_online: counts.devices_online,
        commands_pending: core.session.pending(),
        queue: Vec::new(),
        cluster_nodes: core.hub.health().cluster_nodes,
    };
    match core.store.open_counts().await {
        Ok(open) => {
            gauges.queue = [
                CommandStatus::AwaitingConfirmation,
                CommandStatus::Pending,
                CommandStatus::Delivering,
            ]
            .into_iter()
            .map(|status| {
                (
                    status.as_str(),
                    usize::try_from(open.of(status)).unwrap_or(usize::MAX),
                )
            })
            .collect();
        }
        Err(error) => tracing::warn!(%error, "cannot count the queue for /metrics"),
    }
    let text = core.metrics.render(&gauges);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

//! The HTTP API of PROTOCOL.md 4 and the operational endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bridge_hub::Frame;
use bridge_protocol::http::{
    CommandList, CommandRequest, CommandResponse, CommandStatus, CommandView, DeviceList,
    DeviceSummary, DeviceTypeList, DeviceView, ErrorBody, EventAccepted, EventRequest, HolderView,
};
use bridge_protocol::{AppEvent, CommandId, DeviceId, ErrorCode, ServerToUser, StreamEvent};
use bridge_queue::Party;
use futures_util::future::Either;

use crate::auth::HeldToken;
use crate::error::{ApiError, QUEUE_UNAVAILABLE, json_response, json_with_code};
use crate::openapi::{
    BadRequest, CommandUnavailable, Conflict, Forbidden, Health, NotFound, PayloadTooLarge,
    QueueFull, Unauthorized, Unavailable,
};
use crate::server::Core;

/// The body of `/readyz`'s 503 when the hub is not ready (a cluster node that has not
/// joined, or lost NATS).
const HUB_UNAVAILABLE: &str = "this node has not joined its cluster";
use crate::metrics::Gauges;
use crate::ws;

pub(crate) fn router(core: Arc<Core>) -> Router {
    // The API's routes with their full paths, not a router nested at `/v1`: nesting wraps
    // every route in two more boxed layers and rebuilds each request's URI without the
    // prefix, for nothing a handler reads. The `service` token is the first extractor of
    // every `/v1` handler ([`ServiceToken`]) and of each route's answer to a method it does
    // not serve ([`method_not_allowed`]), rather than a layer around the routes, which
    // would box and clone per request. What is answered is the same: the `/v1` routes (a
    // method a route does not serve included, with its `Allow`) need the token,
    // `/v1/openapi.json` does not, and a path no route serves, under `/v1` or not, reaches
    // the one fallback (`tests/e2e/auth.rs`,
    // `which_routes_need_the_service_token_and_what_they_answer`).
    let api = Router::new()
        .route(
            "/v1/devices/{device_id}/commands",
            post(post_command)
                .get(list_commands)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/devices/{device_id}",
            get(get_device).fallback(method_not_allowed),
        )
        .route(
            "/v1/devices",
            get(list_devices).fallback(method_not_allowed),
        )
        .route(
            "/v1/devices/{device_id}/events",
            post(post_event).fallback(method_not_allowed),
        )
        .route(
            "/v1/commands/{command_id}",
            get(get_command).fallback(method_not_allowed),
        )
        .route(
            "/v1/commands/{command_id}/confirm",
            post(confirm_command).fallback(method_not_allowed),
        )
        .route(
            "/v1/commands/{command_id}/cancel",
            post(cancel_command).fallback(method_not_allowed),
        )
        .route(
            "/v1/device-types",
            get(device_types).fallback(method_not_allowed),
        )
        .route("/v1/stream", get(stream).fallback(method_not_allowed))
        // The API's description needs no token.
        .route("/v1/openapi.json", get(openapi_json));
    let router = Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(crate::console::routes())
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

/// The HTTP API of [`Server::router`] as one service, with
/// `POST /v1/devices/{deviceId}/commands` (every command, the hot path) recognised in front
/// of it: what [`Server::serve`] serves, and [`Server::service`] gives to call in process.
///
/// The router's generic routing costs per request a clone of the route's boxed service
/// and a boxed future at each of its two levels, the URL parameters' `Vec` and extensions
/// map, the `Path<String>`, and the request body boxed into a [`Body`]. For exactly that
/// route this service checks the token and calls `send_command`, the handler's one
/// definition, directly; every other request goes to the router unchanged. It answers
/// what the router answers, headers included (`Content-Length` as axum sets it); a test
/// (`tests/e2e/fast_path.rs`) compares the two over generated requests. What it takes is
/// only what cannot answer differently:
///
/// * not in development mode (the router's loopback check comes first there: every
///   request goes to the router);
/// * the method is `POST` (`HEAD` and the others are the router's);
/// * the path is `/v1/devices/` + one non-empty segment with no `/` and no `%` (so axum's
///   percent-decoding would leave it as it is) + `/commands`, nothing after it (a
///   trailing `/` is another path; the query is not part of the path).
///
/// [`Server::router`]: crate::Server::router
/// [`Server::serve`]: crate::Server::serve
/// [`Server::service`]: crate::Server::service
#[derive(Clone)]
pub struct ApiService {
    core: Arc<Core>,
    router: Router,
    /// Whether the fast path may be taken (not development mode).
    fast: bool,
}

impl std::fmt::Debug for ApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiService")
            .field("fast", &self.fast)
            .finish_non_exhaustive()
    }
}

/// The device segment of a path the fast path of [`ApiService`] takes, if it is one.
pub(crate) fn command_route_device(path: &str) -> Option<&str> {
    let device = path
        .strip_prefix("/v1/devices/")?
        .strip_suffix("/commands")?;
    (!device.is_empty() && !device.bytes().any(|b| b == b'/' || b == b'%')).then_some(device)
}

impl ApiService {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        let fast = !core.auth.is_development();
        let router = router(Arc::clone(&core));
        Self { core, router, fast }
    }

    /// Where `request` goes: the fast path, with what comes before its body already
    /// read, or the router.
    ///
    /// What comes before the body is read here, in the router's order (the token, then
    /// the device), so that the answer's future (made by [`FastCommand::answer`] inside
    /// the caller's own future, where it is polled, not moved into it) holds neither the
    /// request's head nor its URI.
    ///
    /// `connection`: what the request's connection remembers of its earlier requests (see
    /// [`Remembered`]), if the caller keeps it.
    pub(crate) fn route<B>(
        &self,
        request: Request<B>,
        mut connection: Option<&mut Remembered>,
    ) -> Routing<B> {
        let segment = if self.fast && request.method() == Method::POST {
            command_route_device(request.uri().path())
        } else {
            None
        };
        // The device is read before the token is checked (the path is read once), and
        // its refusal is answered only after the token's, as the router answers.
        let Some(device) = segment.map(|segment| match connection.as_deref_mut() {
            Some(connection) => connection.device(segment),
            None => device_id(segment),
        }) else {
            return Routing::Router(request);
        };
        let (mut parts, body) = request.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let device = check_service_token(
            &self.core,
            &headers,
            connection.map(|connection| &mut connection.token),
        )
        .map_err(|error| ApiError::from(&error))
        .and(device);
        Routing::Fast(FastCommand {
            core: Arc::clone(&self.core),
            device,
            body,
            headers,
        })
    }

    /// The router's answer to `request`.
    pub(crate) fn call_router<B>(
        &self,
        request: Request<B>,
    ) -> axum::routing::future::RouteFuture<Infallible>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        use tower::Service as _;
        self.router.clone().call(request)
    }
}

/// What an HTTP connection remembers of its earlier requests for [`ApiService::route`]:
/// a backend's kept-alive connection sends the same token, and often commands the same
/// device, again and again.
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    /// The `Authorization` header accepted last.
    token: HeldToken,
    /// The device of the last command whose path segment was a valid device id (the
    /// segment is its text).
    device: Option<DeviceId>,
}

impl Remembered {
    /// [`device_id`] of a command route's path segment: the last one, if it is the same
    /// text (a clone of an `Arc`, rather than checking the text and allocating it again).
    fn device(&mut self, segment: &str) -> Result<DeviceId, ApiError> {
        if let Some(device) = &self.device
            && device.as_str() == segment
        {
            return Ok(device.clone());
        }
        let device = device_id(segment)?;
        self.device = Some(device.clone());
        Ok(device)
    }
}

/// Where [`ApiService::route`] sends a request.
pub(crate) enum Routing<B> {
    /// The command route's fast path.
    Fast(FastCommand<B>),
    /// Everything else: the router.
    Router(Request<B>),
}

/// A request [`ApiService`]'s fast path takes, with what comes before its body read.
pub(crate) struct FastCommand<B> {
    core: Arc<Core>,
    /// The device, or the refusal of the token or of the device id.
    device: Result<DeviceId, ApiError>,
    body: B,
    /// The request's header map, which the answer is built in (emptied first).
    headers: HeaderMap,
}

impl<B: HttpBody<Data = Bytes>> FastCommand<B> {
    /// The answer: always whole JSON bytes (a command's answer or an error body) with its
    /// `Content-Type` and `Content-Length` (see [`json_answer`](crate::error::json_answer)).
    pub(crate) async fn answer(self) -> Response<Bytes> {
        let Self {
            core,
            device,
            body,
            headers,
        } = self;
        let answer = match device {
            Ok(device) => send_command(&core, device, body).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(answer) => json_with_code(answer.http_status(), &answer, headers),
            Err(error) => error.into_answer(headers),
        }
    }
}

/// The boxed future of [`ApiService`]'s fast path called as a `tower` service.
type FastFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> tower::Service<Request<B>> for ApiService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<FastFuture, axum::routing::future::RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.route(request, None) {
            Routing::Fast(command) => Either::Left(Box::pin(async move {
                Ok(command.answer().await.map(Body::from))
            })),
            Routing::Router(request) => Either::Right(self.call_router(request)),
        }
    }
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

/// The `service` token of a `/v1` request, checked (open in development mode): the first
/// extractor of every `/v1` handler, so the check comes before anything else is read, and
/// a refusal is 401 `unauthorized` or 403 `forbidden`.
pub(crate) struct ServiceToken;

impl FromRequestParts<Arc<Core>> for ServiceToken {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Response> {
        check_service_token(core, &parts.headers, None)
            .map(|()| Self)
            .map_err(|error| ApiError::from(&error).into_response())
    }
}

/// The check of [`ServiceToken`], on a request's headers.
///
/// `connection`: what the request's connection remembers of the header its earlier
/// requests were accepted with ([`HeldToken`]), if the caller keeps it.
fn check_service_token(
    core: &Core,
    headers: &HeaderMap,
    connection: Option<&mut HeldToken>,
) -> Result<(), crate::auth::AuthError> {
    // The first `Authorization` value, as `get` answers it, found by walking the few
    // entries of a request's head rather than hashing the name and probing the map.
    let authorization = headers
        .iter()
        .find_map(|(name, value)| (name == header::AUTHORIZATION).then_some(value));
    // A remembered token, read from the header's bytes: the usual call.
    if authorization.is_some_and(|v| match connection {
        Some(connection) => core.auth.holds_service_token_on(v.as_bytes(), connection),
        None => core.auth.holds_service_token(v.as_bytes()),
    }) {
        return Ok(());
    }
    core.auth
        .check_service(authorization.and_then(|v| v.to_str().ok()))
}

/// A `/v1` route's answer to a method it does not serve: 405 (axum adds `Allow`), after
/// the token check as for the methods it serves.
async fn method_not_allowed(_: ServiceToken) -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

/// Reads a body of at most the configured size; [`utf8`] reads it as text, in place.
async fn read_body<B: HttpBody<Data = Bytes>>(core: &Core, body: B) -> Result<Bytes, ApiError> {
    let limit = core.config.max_body_bytes;
    collect_limited(body, limit).await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body is over the limit of {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    })
}

/// The body's data, or `None` when it holds more than `limit` bytes or cannot be read:
/// what `axum::body::to_bytes(body, limit)` answers (`Ok` or `Err`), without its list of
/// buffers and its wrappers — a body of one chunk, the usual one, is handed back as it
/// came, and only a body of several is copied into one buffer. (A property test checks it
/// against `to_bytes` for any chunking and limit.)
///
/// Any body type: an axum [`Body`], or hyper's own on the fast path of [`ApiService`]
/// (not boxed into a `Body` first). Frames that are not data (trailers) are skipped, as
/// `Body::into_data_stream` skips them.
async fn collect_limited<B: HttpBody<Data = Bytes>>(body: B, limit: usize) -> Option<Bytes> {
    let mut body = std::pin::pin!(body);
    let mut remaining = limit;
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    // A body that says it has ended is not polled again (`poll_frame` would answer `None`):
    // hyper's, with a `Content-Length`, says so once its last byte is handed over, and
    // the poll that would find the end costs a round through its body channel.
    while !body.is_end_stream() {
        let Some(frame) =
            std::future::poll_fn(|cx| crate::server::poll_body_frame(body.as_mut(), cx)).await
        else {
            break;
        };
        let Ok(chunk) = frame.ok()?.into_data() else {
            continue;
        };
        if chunk.len() > remaining {
            return None;
        }
        remaining -= chunk.len();
        if chunk.is_empty() {
            continue;
        }
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(head) => {
                joined.reserve(head.len() + chunk.len());
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Some(match first {
        Some(only) => only,
        None => joined.into(),
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

/// Sends a command to a device, or queues it (PROTOCOL.md 4.1).
///
/// The answer's status tells what happened. Once the command was sent to a bridge, its
/// answer (200, 502, 503 `bridge_lost`, 504) also carries `stage`, the last stage reached
/// (`sent`, `received`, `connected`, `written`), and `progress`, the milliseconds from
/// sending to each stage the bridge reported (left out when it reported none).
#[utoipa::path(
    post,
    path = "/v1/devices/{deviceId}/commands",
    operation_id = "sendCommand",
    tag = "commands",
    params(("deviceId" = DeviceId, Path, description = "The device.")),
    request_body(
        content = CommandRequest,
        example = json!({"deviceType":"smart-lock","payload":"aabbccdd","timeoutMs":10000,
            "ifOffline":"fail","commandType":"unlock","ttlSeconds":3600,"requiresConfirmation":false}),
    ),
    responses(
        (status = 200, description = "The device answered.", body = CommandResponse,
            example = json!({"status":"succeeded","requestId":"4f1c9a7e0b2d4c6f","payload":"01","latencyMs":12})),
        (status = 202, description = "Queued: the device was offline and `ifOffline` is `queue`, or `requiresConfirmation` (it then waits for `confirm`).",
            body = CommandResponse,
            examples(
                ("queued" = (value = json!({"status":"queued","commandId":"9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31"}))),
                ("awaiting_confirmation" = (value = json!({"status":"awaiting_confirmation","commandId":"9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31"}))),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "The device type is unknown (`unknown_device_type`).", body = ErrorBody,
            example = json!({"error":{"code":"unknown_device_type","message":"unknown device type `smart-bulb`"}})),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = QueueFull),
        (status = 502, description = "The bridge reported a failure.", body = CommandResponse,
            example = json!({"status":"device_error","error":"gatt_write_failed"})),
        (status = 503, description = "The device is offline and `ifOffline` is `fail` (`offline`), or the bridge went away before answering (`bridge_lost`): a command answer. Or an error body `unavailable` (the queue backend does not answer, or the server is at capacity or shutting down).",
            body = CommandUnavailable,
            examples(
                ("offline" = (value = json!({"status":"offline"}))),
                ("bridge_lost" = (value = json!({"status":"bridge_lost"}))),
                ("unavailable" = (value = json!({"error":{"code":"unavailable","message":"the queue backend is unavailable"}}))),
            )),
        (status = 504, description = "No answer within `timeoutMs`.", body = CommandResponse,
            example = json!({"status":"timeout","stage":"written","progress":{"receivedMs":3,"writtenMs":41}})),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn post_command(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let answer = send_command(&core, device_id(&device)?, body).await?;
    Ok(json_with_code(
        answer.http_status(),
        &answer,
        HeaderMap::new(),
    ))
}

/// `POST /v1/devices/{deviceId}/commands` once its token is checked: the one definition
/// of what it does, called by [`post_command`] (through the router) and by
/// [`ApiService`]'s fast path, which answer with `json_with_code`. `device` is the path's
/// segment, percent-decoded and checked.
async fn send_command<B: HttpBody<Data = Bytes>>(
    core: &Core,
    device: DeviceId,
    body: B,
) -> Result<CommandResponse, ApiError> {
    let body = read_body(core, body).await?;
    let request =
        CommandRequest::from_json(utf8(&body)?, &core.limits).map_err(|e| ApiError::from(&e))?;
    // The HTTP API is the application backend's: its queued commands are the backend's
    // (PROTOCOL.md 4.2, dedup per party).
    Ok(core
        .dispatch
        .execute(device, request, Party::Backend)
        .await?)
}

/// The device's queued commands that are not final, in delivery order (PROTOCOL.md 4.2).
#[utoipa::path(
    get,
    path = "/v1/devices/{deviceId}/commands",
    operation_id = "listDeviceCommands",
    tag = "commands",
    params(("deviceId" = DeviceId, Path, description = "The device.")),
    responses(
        (status = 200, description = "The device's open commands.", body = CommandList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_commands(
    _: ServiceToken,
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

/// A device's presence and queue (PROTOCOL.md 4.3). A device never seen is offline with
/// no bridges and no pending commands, not 404.
#[utoipa::path(
    get,
    path = "/v1/devices/{deviceId}",
    operation_id = "getDevice",
    tag = "devices",
    params(("deviceId" = DeviceId, Path, description = "The device.")),
    responses(
        (status = 200, description = "The device.", body = DeviceView,
            example = json!({"deviceId":"lock-1","online":true,"bleConnected":true,"bridges":1,"pendingCommands":0})),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get_device(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    Path(device): Path<String>,
) -> Result<Response, ApiError> {
    let device = device_id(&device)?;
    let presence = core.hub.device_presence(&device).await;
    let pending = core.dispatch.pending_count(&device).await?;
    let holders = core
        .hub
        .local()
        .device_holders(&device)
        .into_iter()
        .map(|h| HolderView {
            user_id: h.user_id.as_str().to_owned(),
            ble_connected: h.ble_connected,
            rssi: h.rssi,
            commands_in_flight: h.commands_in_flight,
        })
        .collect();
    let view = DeviceView {
        device_id: device,
        online: presence.online,
        ble_connected: presence.ble_connected,
        bridges: u32::try_from(presence.bridges).unwrap_or(u32::MAX),
        pending_commands: pending,
        holders,
    };
    Ok(json_response(StatusCode::OK, &view))
}

/// The online devices (PROTOCOL.md 4.3).
#[utoipa::path(
    get,
    path = "/v1/devices",
    operation_id = "listDevices",
    tag = "devices",
    responses(
        (status = 200, description = "The online devices.", body = DeviceList,
            example = json!({"devices":[{"deviceId":"lock-1","online":true,"bleConnected":true}]})),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_devices(_: ServiceToken, State(core): State<Arc<Core>>) -> Response {
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

/// Broadcasts an application event to the device's subscribers (PROTOCOL.md 4.3); a
/// `type` the protocol defines is 400 `invalid_request`.
#[utoipa::path(
    post,
    path = "/v1/devices/{deviceId}/events",
    operation_id = "postEvent",
    tag = "devices",
    params(("deviceId" = DeviceId, Path, description = "The device.")),
    request_body(content = EventRequest, example = json!({"type":"state_changed","data":{"locked":false}})),
    responses(
        (status = 202, description = "Sent; `delivered` is the number of user connections it was sent to.",
            body = EventAccepted, example = json!({"delivered":2})),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn post_event(
    _: ServiceToken,
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

/// The live stream (PROTOCOL.md 4.5): Server-Sent Events, `?deviceId=` (repeatable) to
/// limit it to those devices.
///
/// Each event is `event: <type>` and `data: <one JSON object>` (a `StreamEvent`): the
/// WebSocket frame of that type — `device_status`, application events, and `command_result`
/// for every command that ends after it was sent to a bridge or queued. A comment line comes
/// at least every 15 s. A client that does not read fast enough is sent `event: overflow`
/// and disconnected.
#[utoipa::path(
    get,
    path = "/v1/stream",
    operation_id = "stream",
    tag = "stream",
    params(("deviceId" = Option<Vec<DeviceId>>, Query, explode = true,
        description = "Limit the stream to these devices (repeatable).")),
    responses(
        (status = 200, description = "The stream: Server-Sent Events whose `data:` is a `StreamEvent`.",
            content_type = "text/event-stream", body = String,
            example = "event: device_status\ndata: {\"type\":\"device_status\",\"deviceId\":\"lock-1\",\"online\":true,\"bleConnected\":true}\n\n"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn stream(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let devices = crate::stream::device_filter(query.as_deref())
        .map_err(|message| ApiError::new(ErrorCode::InvalidRequest, message))?;
    Ok(core.stream.subscribe(devices).into_response())
}

/// A queued command (PROTOCOL.md 4.2), with `stage` and `progress` of its latest attempt.
#[utoipa::path(
    get,
    path = "/v1/commands/{commandId}",
    operation_id = "getCommand",
    tag = "commands",
    params(("commandId" = CommandId, Path, description = "The queued command.")),
    responses(
        (status = 200, description = "The command.", body = CommandView,
            example = json!({"commandId":"9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31","deviceId":"lock-1",
                "commandType":"unlock","status":"succeeded","attempts":1,
                "createdAt":"2026-11-23T06:37:11.123Z","expiresAt":"2026-11-23T07:37:11.123Z",
                "result":{"payload":"01"},"stage":"written","progress":{"receivedMs":3,"writtenMs":41}})),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get_command(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.command(&id).await?;
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

/// Confirms a command that is `awaiting_confirmation` (PROTOCOL.md 4.2); a confirmed command
/// for an online device is delivered at once.
#[utoipa::path(
    post,
    path = "/v1/commands/{commandId}/confirm",
    operation_id = "confirmCommand",
    tag = "commands",
    params(("commandId" = CommandId, Path, description = "The queued command.")),
    responses(
        (status = 200, description = "Confirmed: the command.", body = CommandView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn confirm_command(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.confirm(&id).await?;
    tracing::info!(command_id = %id, "confirmed");
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

/// Cancels a queued command (PROTOCOL.md 4.2), unless it is `delivering` or final.
#[utoipa::path(
    post,
    path = "/v1/commands/{commandId}/cancel",
    operation_id = "cancelCommand",
    tag = "commands",
    params(("commandId" = CommandId, Path, description = "The queued command.")),
    responses(
        (status = 200, description = "Cancelled: the command.", body = CommandView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn cancel_command(
    _: ServiceToken,
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = command_id(&id)?;
    let command = core.dispatch.cancel(&id).await?;
    tracing::info!(command_id = %id, "cancelled");
    Ok(json_response(StatusCode::OK, &command.to_view()))
}

/// The device types of the server's registry and the default one (PROTOCOL.md 4.3).
#[utoipa::path(
    get,
    path = "/v1/device-types",
    operation_id = "listDeviceTypes",
    tag = "devices",
    responses(
        (status = 200, description = "The device types.", body = DeviceTypeList,
            example = json!({"deviceTypes":[{"deviceType":"smart-lock",
                "serviceUuid":"0000fff0-0000-1000-8000-00805f9b34fb",
                "writeUuid":"0000fff1-0000-1000-8000-00805f9b34fb",
                "listenUuid":"0000fff2-0000-1000-8000-00805f9b34fb"}],"defaultType":"smart-lock"})),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn device_types(_: ServiceToken, State(core): State<Arc<Core>>) -> Response {
    json_response(StatusCode::OK, &DeviceTypeList::from(&*core.registry))
}

/// 200 while the process serves (PROTOCOL.md 4.4). No token.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process serves.", body = Health, example = json!({"status":"ok"})),
    ),
)]
pub(crate) async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// 200 when the queue backend answers (and, in a cluster, the node has joined), 503
/// otherwise (PROTOCOL.md 4.4, 5). No token.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Health, example = json!({"status":"ready"})),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn readyz(State(core): State<Arc<Core>>) -> Response {
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

/// Prometheus metrics in the text format (PROTOCOL.md 4.4). No token, unless the server is
/// configured to ask for a `service` one (then 401 and 403 as on `/v1`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics, Prometheus text format 0.0.4.",
            content_type = "text/plain", body = String,
            example = "# TYPE bridge_devices_online gauge\nbridge_devices_online 1\n"),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security((), ("bearer" = [])),
)]
pub(crate) async fn metrics(State(core): State<Arc<Core>>, request: Request) -> Response {
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

/// This document: the OpenAPI 3.1 description of the HTTP API. No token: it holds nothing
/// secret.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json",
            body = Object),
    ),
)]
pub(crate) async fn openapi_json() -> Response {
    let mut response = (StatusCode::OK, crate::openapi::openapi_json()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::{Body, Bytes};
    use proptest::prelude::*;

    use super::collect_limited;

    fn body(chunks: &[Vec<u8>]) -> Body {
        let chunks: Vec<Result<Bytes, Infallible>> =
            chunks.iter().map(|c| Ok(Bytes::from(c.clone()))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    /// A body that says when it has ended (as hyper's with a `Content-Length` does), unlike
    /// a stream's: `collect_limited` then stops without polling for the end.
    struct SelfEnding(std::collections::VecDeque<Bytes>);

    impl axum::body::HttpBody for SelfEnding {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn self_ending(chunks: &[Vec<u8>]) -> SelfEnding {
        SelfEnding(chunks.iter().map(|c| Bytes::from(c.clone())).collect())
    }

    proptest! {
        /// A body that tells its end is read as `to_bytes` reads it, chunk for chunk.
        #[test]
        fn collect_limited_reads_a_self_ending_body_as_to_bytes_does(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            slack in -45i64..45,
        ) {
            let total: usize = chunks.iter().map(Vec::len).sum();
            let limit = usize::try_from(i64::try_from(total).unwrap_or(0) + slack).unwrap_or(0);
            let ours = run(collect_limited(self_ending(&chunks), limit));
            let axums = run(axum::body::to_bytes(Body::new(self_ending(&chunks)), limit)).ok();
            prop_assert_eq!(ours, axums);
        }

        /// `collect_limited` accepts and refuses exactly the bodies `axum::body::to_bytes`
        /// does, with the same bytes: any chunking (empty chunks included), any limit
        /// around the body's length.
        #[test]
        fn collect_limited_answers_what_to_bytes_answers(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            slack in -45i64..45,
        ) {
            let total: usize = chunks.iter().map(Vec::len).sum();
            let limit = usize::try_from(i64::try_from(total).unwrap_or(0) + slack).unwrap_or(0);
            let ours = run(collect_limited(body(&chunks), limit));
            let axums = run(axum::body::to_bytes(body(&chunks), limit)).ok();
            prop_assert_eq!(ours, axums);
        }
    }

    #[test]
    fn a_body_that_fails_is_refused_as_to_bytes_refuses_it() {
        let failing = || {
            Body::from_stream(futures_util::stream::iter(vec![
                Ok(Bytes::from_static(b"{}")),
                Err(std::io::Error::other("reset")),
            ]))
        };
        assert_eq!(run(collect_limited(failing(), 1024)), None);
        assert!(run(axum::body::to_bytes(failing(), 1024)).is_err());
        // One chunk comes back as it came.
        assert_eq!(
            run(collect_limited(Body::from("{\"payload\":\"03\"}"), 1024)),
            Some(Bytes::from_static(b"{\"payload\":\"03\"}"))
        );
    }

    #[test]
    fn a_connection_remembers_the_last_valid_device_by_its_text() {
        let mut remembered = super::Remembered::default();
        let first = remembered.device("lock-1").unwrap();
        assert_eq!(first.as_str(), "lock-1");
        // The same text: the same device, not made again.
        let again = remembered.device("lock-1").unwrap();
        assert!(std::ptr::eq(first.as_str(), again.as_str()));
        // Another text is read as `device_id` reads it, valid or not.
        assert_eq!(remembered.device("lock-2").unwrap().as_str(), "lock-2");
        let refused = remembered.device("lock\u{7}").unwrap_err();
        let expected = super::device_id("lock\u{7}").unwrap_err();
        assert_eq!(refused, expected);
        // A refused one leaves the last valid one remembered.
        assert_eq!(remembered.device("lock-2").unwrap().as_str(), "lock-2");
        assert_eq!(remembered.device("lock-1").unwrap().as_str(), "lock-1");
    }
}

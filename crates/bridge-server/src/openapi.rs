//! The OpenAPI 3.1 description of the HTTP API (PROTOCOL.md 4), served at
//! `GET /v1/openapi.json`.
//!
//! Generated from the code with `utoipa`: each handler of `routes.rs` carries its operation
//! (path, parameters, every status PROTOCOL.md 4 gives it, security), and the bodies are the
//! wire types of `bridge-protocol` (its `openapi` feature), whose schemas are derived next to
//! their serde attributes. So the document cannot drift from the types; the tests check it
//! against PROTOCOL.md's endpoints and statuses, against the OpenAPI 3.1 JSON Schema, and
//! real answers against it.
//!
//! The document is built once, on first use, and needs no token: it describes the API and
//! holds nothing secret (no configuration, no device, no address). It names no server, so
//! its paths are relative to the host it is read from; an application that nests
//! [`Server::router`](crate::Server::router) under a prefix serves the same document, whose
//! paths then lack that prefix (give generated clients the prefixed base URL).

use std::borrow::Cow;
use std::sync::LazyLock;

use bridge_protocol::http::{CommandResponse, ErrorBody};
use bridge_protocol::{ErrorCode, StreamEvent};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Response};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use crate::routes;

/// The security scheme of the `/v1` endpoints: a `service` JWT as a bearer token.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bridge HTTP API",
        version = "1.1",
        description = "The HTTP API of the bridge server (PROTOCOL.md section 4, protocol \
            version 1.1): commands to BLE devices reached through nearby phones, the offline \
            queue, presence, application events, the live stream, and the operational \
            endpoints.\n\n\
            `/v1` endpoints need a `service` token (an HS256 JWT with `role: service`, \
            `Authorization: Bearer <jwt>`) when the server has a JWT secret; in development \
            mode (no secret, loopback clients only) they need none. `/healthz`, `/readyz` and \
            this document need no token; `/metrics` needs one only when the server is \
            configured so.\n\n\
            Errors are `{\"error\":{\"code\":\"...\",\"message\":\"...\"}}` with a 4xx or 5xx \
            status. Times are RFC 3339 strings in UTC. Phones and users speak WebSocket \
            (`GET /ws`, PROTOCOL.md 1-3), which this document does not describe.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    paths(
        routes::post_command,
        routes::list_commands,
        routes::get_command,
        routes::confirm_command,
        routes::cancel_command,
        routes::get_device,
        routes::list_devices,
        routes::post_event,
        routes::device_types,
        routes::stream,
        routes::healthz,
        routes::readyz,
        routes::metrics,
        routes::openapi_json,
    ),
    components(
        schemas(StreamEvent, Health, ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            QueueFull,
            Unavailable
        ),
    ),
    modifiers(&Security),
    tags(
        (name = "commands", description = "Commands to devices and the offline queue (PROTOCOL.md 4.1, 4.2)."),
        (name = "devices", description = "Presence, application events and device types (PROTOCOL.md 4.3)."),
        (name = "stream", description = "The live stream of Server-Sent Events (PROTOCOL.md 4.5)."),
        (name = "operations", description = "Health, readiness, metrics and this document (PROTOCOL.md 4.4)."),
    ),
)]
struct ApiDoc;

/// Adds the bearer security scheme.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        bearer.description = Some(
            "An HS256 JWT with `sub`, `exp` and `role: service` (PROTOCOL.md 1.1). Missing, \
             malformed, badly signed or expired: 401 `unauthorized`; another role: 403 \
             `forbidden`. Not needed in development mode."
                .to_owned(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(bearer));
    }
}

/// The document as JSON text, built on first use.
pub fn openapi_json() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        // Serializing the document cannot fail: every map key is a string.
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        name_union_members(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    });
    &DOCUMENT
}

/// Makes each titled member of a component's `oneOf`/`anyOf` a component of that name,
/// referenced from the union (the variants of `CommandResponse`, the stream's events).
///
/// The schemas are derived inline; client generators (openapi-generator,
/// openapi-python-client) make a named class of a union member only when it is a reference,
/// and some refuse an inline `allOf` member (a variant with flattened fields) altogether.
fn name_union_members(doc: &mut serde_json::Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    let mut named = Vec::new();
    for schema in schemas.values_mut() {
        for union in ["oneOf", "anyOf"] {
            let members = schema
                .get_mut(union)
                .and_then(serde_json::Value::as_array_mut);
            for member in members.into_iter().flatten() {
                let Some(title) = take_title(member) else {
                    continue;
                };
                let reference =
                    serde_json::json!({ "$ref": format!("#/components/schemas/{title}") });
                named.push((title, std::mem::replace(member, reference)));
            }
        }
    }
    for (title, schema) in named {
        schemas.entry(title).or_insert(schema);
    }
}

/// The title of a union member: its own, or (utoipa puts a variant's title on the part of a
/// variant with flattened fields that holds the tag) that of one of its `allOf` parts,
/// removed from there.
fn take_title(member: &mut serde_json::Value) -> Option<String> {
    if let Some(title) = member.get("title").and_then(serde_json::Value::as_str) {
        return Some(title.to_owned());
    }
    let parts = member.get_mut("allOf")?.as_array_mut()?;
    let title = parts
        .iter_mut()
        .find_map(|part| part.as_object_mut()?.remove("title"))?;
    let title = title.as_str()?.to_owned();
    member["title"] = serde_json::Value::String(title.clone());
    Some(title)
}

/// The body of `/healthz` and `/readyz` (200): `{"status":"ok"}` or `{"status":"ready"}`.
pub(crate) struct Health;

impl PartialSchema for Health {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .enum_values(Some(["ok", "ready"])),
            )
            .required("status")
            .into()
    }
}

impl ToSchema for Health {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Health")
    }
}

/// The body of `POST /v1/devices/{deviceId}/commands`'s 503: a command answer (`offline`,
/// `bridge_lost`) or an error body (`unavailable`).
pub(crate) struct CommandUnavailable;

impl PartialSchema for CommandUnavailable {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(
                CommandResponse::name(),
            ))
            .item(utoipa::openapi::Ref::from_schema_name(ErrorBody::name()))
            .into()
    }
}

impl ToSchema for CommandUnavailable {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CommandUnavailable")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            CommandResponse::name().into_owned(),
            CommandResponse::schema(),
        ));
        schemas.push((ErrorBody::name().into_owned(), ErrorBody::schema()));
        CommandResponse::schemas(schemas);
        ErrorBody::schemas(schemas);
    }
}

/// An error answer: the error body, with an example of `code`.
fn error_response(description: &str, code: ErrorCode, message: &str) -> Response {
    let example = serde_json::to_value(ErrorBody::new(code, message)).unwrap_or_default();
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                )))
                .example(Some(example))
                .build(),
        )
        .build()
}

macro_rules! error_responses {
    ($($name:ident: $description:literal, $code:expr, $message:literal;)*) => {
        $(
            #[doc = $description]
            pub(crate) struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), error_response($description, $code, $message).into())
                }
            }
        )*
    };
}

error_responses! {
    BadRequest: "Bad input: `invalid_request` (a body that is not JSON, misses a required field or has one of the wrong type or range; a device id that is not valid) or `invalid_payload`.",
        ErrorCode::InvalidRequest, "timeoutMs must be 1 to 120000";
    Unauthorized: "No `service` token, or one that is malformed, badly signed or expired (`unauthorized`).",
        ErrorCode::Unauthorized, "missing credentials: a bearer token";
    Forbidden: "A valid token of another role; in development mode, a request whose `Host` or `Origin` is not a loopback one (`forbidden`).",
        ErrorCode::Forbidden, "role `user` may not call the HTTP API";
    NotFound: "No such command (`not_found`).",
        ErrorCode::NotFound, "no such command";
    Conflict: "The command is not in a state that allows this (`conflict`): `confirm` needs `awaiting_confirmation`; `cancel` refuses a command that is `delivering` or final.",
        ErrorCode::Conflict, "cannot confirm command 9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31: it is pending";
    PayloadTooLarge: "The body is over the server's size limit (default 64 KiB; `invalid_request`).",
        ErrorCode::InvalidRequest, "the body is over the limit of 65536 bytes";
    QueueFull: "The device's queue is full (`queue_full`).",
        ErrorCode::QueueFull, "the queue of device lock-1 is full (100 commands that are not final)";
    Unavailable: "The queue backend does not answer, or the server is at capacity or shutting down (`unavailable`).",
        ErrorCode::Unavailable, "the queue backend is unavailable";
}

/// The operation of `method path` in the document, for tests.
#[cfg(test)]
fn operation(path: &str, method: &str) -> Option<utoipa::openapi::path::Operation> {
    let doc = ApiDoc::openapi();
    let item = doc.paths.paths.get(path)?;
    match method {
        "get" => item.get.clone(),
        "post" => item.post.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        assert_eq!(doc["info"]["version"], "1.1");
    }

    #[test]
    fn titled_union_members_become_components_of_their_own() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let members = schemas["CommandResponse"]["oneOf"].as_array().unwrap();
        assert_eq!(members.len(), 7);
        for member in members {
            let reference = member["$ref"]
                .as_str()
                .unwrap_or_else(|| panic!("{member}"));
            let name = reference.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas[name].is_object(), "{name}");
        }
        assert_eq!(
            members[0]["$ref"], "#/components/schemas/CommandSucceeded",
            "named by the variant's title"
        );
        let events = schemas["StreamEvent"]["anyOf"].as_array().unwrap();
        assert!(events.iter().all(|e| e["$ref"].is_string()), "{events:?}");
    }

    #[test]
    fn api_endpoints_ask_for_the_bearer_token_and_operations_do_not() {
        let secured = operation("/v1/devices/{deviceId}/commands", "post").unwrap();
        let security = serde_json::to_value(secured.security).unwrap();
        assert_eq!(security, serde_json::json!([{BEARER: []}]));
        for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
            let open = operation(path, "get").unwrap();
            assert!(open.security.is_none(), "{path}");
        }
        // `/metrics` may be configured to ask for one: none, or the bearer token.
        let metrics = operation("/metrics", "get").unwrap();
        let security = serde_json::to_value(metrics.security).unwrap();
        assert_eq!(security, serde_json::json!([{}, {BEARER: []}]));
    }
}

//! OpenAPI schemas of the wire types (feature `openapi`), for the server's
//! `GET /v1/openapi.json`.
//!
//! The structs and enums of the HTTP bodies derive [`utoipa::ToSchema`] where they are
//! defined, next to their serde attributes, which the derive reads: a field renamed, left
//! out when empty or flattened on the wire is renamed, optional or flattened in the schema
//! too. The validated values, whose serde impls are hand-written (a hex string, a bounded
//! number, an RFC 3339 time, an id with a length and character rule), describe themselves
//! here, with the same bounds their constructors check. So is the live stream's
//! [`StreamEvent`](crate::StreamEvent), whose frames carry their `type` tag outside their
//! struct.
//!
//! The feature adds `utoipa` only (no IO, no async runtime); without it this crate depends on
//! serde, serde_json, uuid, toml and thiserror alone.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ObjectBuilder, Ref, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::{
    AppEvent, CommandId, CommandResult, CommandType, DeviceErrorCode, DeviceId, DeviceStatus,
    DeviceType, EventType, HexPayload, MAX_DEVICE_ID_CHARS, MAX_NAME_CHARS, MAX_REQUEST_ID_LEN,
    RESERVED_TYPES, RequestId, StreamEvent, TimeoutMs, Timestamp, TtlSeconds, UserId,
};

/// No control character (Unicode category Cc, what `char::is_control` refuses).
const NO_CONTROL_CHARACTERS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
}

/// A string of 1 to `max` characters without control characters.
fn name(description: &str, max: usize, example: &str) -> RefOr<Schema> {
    string(description)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(NO_CONTROL_CHARACTERS))
        .examples([serde_json::json!(example)])
        .into()
}

macro_rules! named {
    ($($ty:ty => $name:literal: $schema:expr;)*) => {
        $(
            impl PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    $schema
                }
            }
            impl ToSchema for $ty {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed($name)
                }
            }
        )*
    };
}

named! {
    DeviceId => "DeviceId": name(
        "The id of a BLE device: 1 to 128 characters, no control characters.",
        MAX_DEVICE_ID_CHARS,
        "lock-1",
    );
    UserId => "UserId": name(
        "The id of a user: 1 to 128 characters, no control characters.",
        MAX_DEVICE_ID_CHARS,
        "owner-1",
    );
    DeviceType => "DeviceType": name(
        "The name of a device type of the server's registry: 1 to 64 characters, no control characters.",
        MAX_NAME_CHARS,
        "smart-lock",
    );
    CommandType => "CommandType": name(
        "The dedup key of a queued command (PROTOCOL.md 4.2): 1 to 64 characters, no control characters.",
        MAX_NAME_CHARS,
        "unlock",
    );
    CommandId => "CommandId": name(
        "The id the queue gave a queued command: 1 to 64 characters, no control characters.",
        MAX_NAME_CHARS,
        "9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31",
    );
    DeviceErrorCode => "DeviceErrorCode": name(
        "The short error code a bridge reported for a failed BLE operation.",
        MAX_NAME_CHARS,
        "gatt_write_failed",
    );
    EventType => "EventType": string(&format!(
        "The `type` of an application event: 1 to 64 characters, no control characters, and \
         not one of the types the protocol defines ({}): those are 400 `invalid_request`.",
        RESERVED_TYPES
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .min_length(Some(1))
    .max_length(Some(MAX_NAME_CHARS))
    .pattern(Some(NO_CONTROL_CHARACTERS))
    .examples([serde_json::json!("state_changed")])
    .into();
    RequestId => "RequestId": string(
        "The id of a `ble_write` (or a user's request): 1 to 64 printable ASCII characters.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_REQUEST_ID_LEN))
    .pattern(Some(r"^[\u0020-\u007E]*$"))
    .examples([serde_json::json!("4f1c9a7e0b2d4c6f8a1e3b5d7f9c0e2a")])
    .into();
    HexPayload => "HexPayload": string(
        "Bytes as hex: even length, case-insensitive on input, lower-case on output; at most \
         512 decoded bytes on input unless the server is configured otherwise.",
    )
    .pattern(Some("^(?:[0-9a-fA-F]{2})*$"))
    .examples([serde_json::json!("aabbccdd")])
    .into();
    TimeoutMs => "TimeoutMs": ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .description(Some("How long to wait for the device's reply, in milliseconds."))
        .minimum(Some(TimeoutMs::MIN))
        .maximum(Some(TimeoutMs::MAX))
        .default(Some(serde_json::json!(TimeoutMs::DEFAULT.get())))
        .into();
    TtlSeconds => "TtlSeconds": ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .description(Some("How long a queued command stays deliverable, in seconds."))
        .minimum(Some(TtlSeconds::MIN))
        .maximum(Some(TtlSeconds::MAX))
        .default(Some(serde_json::json!(TtlSeconds::DEFAULT.get())))
        .into();
    Timestamp => "Timestamp": string("An RFC 3339 time in UTC.")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .examples([serde_json::json!("2026-11-23T06:37:11.123Z")])
        .into();
}

/// `{"type": <name>}` and the fields of `T`: a frame whose `type` tag is written by the
/// enum that carries it, not by its struct. Titled, so that the server's document makes it
/// a component of its own (client generators want named members of a union).
fn tagged<T: ToSchema>(title: &str, tag: &str) -> Schema {
    AllOfBuilder::new()
        .title(Some(title))
        .item(type_tag(tag))
        .item(Ref::from_schema_name(T::name()))
        .into()
}

/// `{"type": <tag>}`.
fn type_tag(tag: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .enum_values(Some([tag])),
        )
        .required("type")
}

impl PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        // `anyOf`, not `oneOf`: an application event's schema cannot say that its `type` is
        // none of the protocol's (the `event:` line tells which one it is).
        AnyOfBuilder::new()
            .description(Some(
                "The `data:` object of one event of `GET /v1/stream`: the WebSocket frame of \
                 PROTOCOL.md 3.3 of the event's type (`device_status`, `command_result`, an \
                 application event), or `{\"type\":\"overflow\"}`. The `event:` line names \
                 the type.",
            ))
            .item(tagged::<DeviceStatus>("DeviceStatusEvent", "device_status"))
            .item(tagged::<CommandResult>(
                "CommandResultEvent",
                "command_result",
            ))
            .item(Ref::from_schema_name(AppEvent::name()))
            .item(type_tag("overflow").title(Some("OverflowEvent")))
            .into()
    }
}

impl ToSchema for StreamEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (DeviceStatus::name(), DeviceStatus::schema()),
            (CommandResult::name(), CommandResult::schema()),
            (AppEvent::name(), AppEvent::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
        DeviceStatus::schemas(schemas);
        CommandResult::schemas(schemas);
        AppEvent::schemas(schemas);
    }
}

//! Every JSON example of PROTOCOL.md is a golden fixture: it decodes with the decoder of its
//! direction and re-encodes to an equivalent value.
//!
//! "Equivalent" means: every field of the example comes back with the same value, and any
//! field the encoder adds is a documented default (for example `ttlSeconds` on a `command`),
//! so decoding the re-encoded text gives the same typed value.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bridge_protocol::http::{
    CommandRequest, CommandResponse, DeviceTypeList, ErrorBody, EventRequest,
};
use bridge_protocol::{
    BridgeToServer, Limits, MqttBridgeFrame, MqttServerFrame, ServerToBridge, ServerToUser,
    StreamEvent, UserToServer,
};
use serde_json::Value;

/// Which decoder a fixture belongs to.
#[derive(Debug, Clone, Copy)]
enum Kind {
    ToBridge,
    FromBridge,
    ToUser,
    FromUser,
    HttpCommandBody,
    HttpCommandResponse,
    HttpError,
    HttpEventBody,
    HttpDeviceTypes,
    /// An event of the live stream (4.5).
    Stream,
    /// A message a bridge publishes over MQTT (6).
    MqttUp,
    /// A message the server publishes to a bridge over MQTT (6).
    MqttDown,
}

/// The JSON examples of PROTOCOL.md, in the order they appear.
const FIXTURES: &[(Kind, &str)] = &[
    (
        Kind::ToBridge,
        r#"{"type":"ble_write","requestId":"4f1c...","deviceId":"lock-1","deviceType":"smart-lock",
 "serviceUuid":"0000fff0-0000-1000-8000-00805f9b34fb",
 "writeUuid":"0000fff1-0000-1000-8000-00805f9b34fb",
 "listenUuid":"0000fff2-0000-1000-8000-00805f9b34fb",
 "payload":"aabbccdd","timeoutMs":10000}"#,
    ),
    (
        Kind::FromBridge,
        r#"{"type":"ble_response","requestId":"4f1c...","deviceId":"lock-1","payload":"01"}"#,
    ),
    (
        Kind::FromBridge,
        r#"{"type":"ble_response","requestId":"4f1c...","deviceId":"lock-1","error":"gatt_write_failed"}"#,
    ),
    (
        Kind::FromBridge,
        r#"{"type":"ble_status","deviceId":"lock-1","connected":true,"rssi":-61}"#,
    ),
    (
        Kind::FromBridge,
        r#"{"type":"ble_progress","requestId":"4f1c...","deviceId":"lock-1","stage":"written"}"#,
    ),
    (
        Kind::FromBridge,
        r#"{"type":"release","deviceId":"lock-1"}"#,
    ),
    (Kind::FromBridge, r#"{"type":"release","deviceId":"..."}"#),
    (Kind::FromBridge, r#"{"type":"ping"}"#),
    (Kind::FromUser, r#"{"type":"ping"}"#),
    (Kind::ToUser, r#"{"type":"pong"}"#),
    (Kind::ToBridge, r#"{"type":"pong"}"#),
    (
        Kind::ToUser,
        r#"{"type":"device_status","deviceId":"lock-1","online":true,"bleConnected":true}"#,
    ),
    (
        Kind::ToUser,
        r#"{"type":"state_changed","deviceId":"lock-1","data":{"locked":false}}"#,
    ),
    (
        Kind::ToUser,
        r#"{"type":"command_result","requestId":"c-2","deviceId":"lock-1","status":"succeeded","payload":"01"}"#,
    ),
    (
        Kind::ToUser,
        r#"{"type":"command_result","commandId":"9b2e...","deviceId":"lock-1","status":"failed","error":"gatt_write_failed"}"#,
    ),
    (
        Kind::FromUser,
        r#"{"type":"subscribe","requestId":"c-1","deviceId":"lock-1"}"#,
    ),
    (
        Kind::FromUser,
        r#"{"type":"unsubscribe","requestId":"c-3","deviceId":"lock-1"}"#,
    ),
    (Kind::ToUser, r#"{"type":"ack","requestId":"c-1"}"#),
    (
        Kind::FromUser,
        r#"{"type":"command","requestId":"c-2","deviceId":"lock-1","deviceType":"smart-lock",
 "payload":"aabb","timeoutMs":5000,"ifOffline":"queue","commandType":"unlock"}"#,
    ),
    (
        Kind::ToUser,
        r#"{"type":"error","code":"invalid_message","message":"expected a JSON object","requestId":"c-9"}"#,
    ),
    (
        Kind::ToBridge,
        r#"{"type":"error","code":"invalid_message","message":"expected a JSON object","requestId":"c-9"}"#,
    ),
    (
        Kind::HttpCommandBody,
        r#"{"deviceType":"smart-lock","payload":"aabbccdd","timeoutMs":10000,
 "ifOffline":"fail","commandType":"unlock","ttlSeconds":3600,"requiresConfirmation":false}"#,
    ),
    (
        Kind::HttpCommandResponse,
        r#"{"status":"succeeded","requestId":"...","payload":"01","latencyMs":12}"#,
    ),
    (
        Kind::HttpCommandResponse,
        r#"{"status":"queued","commandId":"..."}"#,
    ),
    (
        Kind::HttpCommandResponse,
        r#"{"status":"awaiting_confirmation","commandId":"..."}"#,
    ),
    (
        Kind::HttpCommandResponse,
        r#"{"status":"device_error","error":"gatt_write_failed"}"#,
    ),
    (Kind::HttpCommandResponse, r#"{"status":"offline"}"#),
    (Kind::HttpCommandResponse, r#"{"status":"bridge_lost"}"#),
    (Kind::HttpCommandResponse, r#"{"status":"timeout"}"#),
    (
        Kind::HttpCommandResponse,
        r#"{"status":"timeout","stage":"written","progress":{"receivedMs":3,"writtenMs":41}}"#,
    ),
    (
        Kind::HttpError,
        r#"{"error":{"code":"queue_full","message":"the device's queue is full"}}"#,
    ),
    (
        Kind::HttpEventBody,
        r#"{"type":"state_changed","data":{"locked":false}}"#,
    ),
    (
        Kind::HttpDeviceTypes,
        r#"{"deviceTypes":[{"deviceType":"smart-lock","serviceUuid":"0000fff0-0000-1000-8000-00805f9b34fb","writeUuid":"0000fff1-0000-1000-8000-00805f9b34fb","listenUuid":"0000fff2-0000-1000-8000-00805f9b34fb"}],"defaultType":"smart-lock"}"#,
    ),
    (Kind::Stream, r#"{"type":"overflow"}"#),
    (
        Kind::MqttUp,
        r#"{"type":"hello","token":"<jwt>","deviceIds":["lock-1"]}"#,
    ),
    (
        Kind::MqttUp,
        r#"{"type":"hello","userId":"owner-1","deviceIds":["lock-1"]}"#,
    ),
    (Kind::MqttDown, r#"{"type":"welcome"}"#),
    (Kind::MqttUp, r#"{"type":"bye"}"#),
    (Kind::MqttUp, r#"{"type":"ping"}"#),
    (Kind::MqttDown, r#"{"type":"pong"}"#),
];

/// Shapes in PROTOCOL.md that show a structure rather than a complete value (a stand-in
/// error code, a device view without its `deviceId`). The device view's full form is a
/// fixture of the server's tests.
const TEMPLATES: &[&str] = &[
    r#"{"error":{"code":"...","message":"..."}}"#,
    r#"{"online":false,"bleConnected":null,"bridges":0,"pendingCommands":0}"#,
];

/// Decodes `text` with the decoder of `kind` and re-encodes it.
fn round_trip(kind: Kind, text: &str) -> String {
    let limits = Limits::default();
    match kind {
        Kind::ToBridge => ServerToBridge::decode(text).unwrap().to_json(),
        Kind::FromBridge => BridgeToServer::decode(text, &limits).unwrap().to_json(),
        Kind::ToUser => ServerToUser::decode(text).unwrap().to_json(),
        Kind::FromUser => UserToServer::decode(text, &limits).unwrap().to_json(),
        Kind::HttpCommandBody => {
            serde_json::to_string(&CommandRequest::from_json(text, &limits).unwrap()).unwrap()
        }
        Kind::HttpCommandResponse => {
            serde_json::to_string(&serde_json::from_str::<CommandResponse>(text).unwrap()).unwrap()
        }
        Kind::HttpError => {
            serde_json::to_string(&serde_json::from_str::<ErrorBody>(text).unwrap()).unwrap()
        }
        Kind::HttpEventBody => {
            serde_json::to_string(&EventRequest::from_json(text).unwrap()).unwrap()
        }
        Kind::HttpDeviceTypes => {
            serde_json::to_string(&serde_json::from_str::<DeviceTypeList>(text).unwrap()).unwrap()
        }
        Kind::Stream => StreamEvent::decode(text).unwrap().to_json(),
        Kind::MqttUp => MqttBridgeFrame::decode(text, &limits).unwrap().to_json(),
        Kind::MqttDown => MqttServerFrame::decode(text).unwrap().to_json(),
    }
}

/// Fields an encoder may add to an example: documented defaults.
fn is_documented_default(key: &str, value: &Value) -> bool {
    matches!(
        (key, value),
        ("ttlSeconds", Value::Number(n)) if n.as_u64() == Some(3600)
    ) || matches!((key, value), ("requiresConfirmation", Value::Bool(false)))
}

#[test]
fn every_protocol_example_decodes_and_re_encodes_to_an_equivalent_value() {
    for (kind, text) in FIXTURES {
        let original: Value = serde_json::from_str(text).unwrap();
        let encoded = round_trip(*kind, text);
        let reencoded: Value = serde_json::from_str(&encoded).unwrap();
        let (Value::Object(orig), Value::Object(back)) = (&original, &reencoded) else {
            panic!("{kind:?}: not an object: {text}");
        };
        for (key, value) in orig {
            assert_eq!(
                back.get(key),
                Some(value),
                "{kind:?}: field `{key}` of {text}"
            );
        }
        for (key, value) in back {
            assert!(
                orig.contains_key(key) || is_documented_default(key, value),
                "{kind:?}: encoder added `{key}` to {text}"
            );
        }
        // Encoding is stable: a second round trip gives the same text.
        assert_eq!(round_trip(*kind, &encoded), encoded, "{kind:?}: {text}");
    }
}

/// Every JSON object of PROTOCOL.md: those in ```json blocks (joined across lines) and the
/// inline code spans that parse as JSON objects.
fn protocol_examples(doc: &str) -> Vec<Value> {
    let mut out: Vec<Value> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with('{'))
        .filter_map(|span| serde_json::from_str(span).ok())
        .collect();
    let mut in_block = false;
    let mut pending = String::new();
    for line in doc.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = trimmed == "```json";
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        pending.push_str(line);
        pending.push('\n');
        if let Ok(value) = serde_json::from_str::<Value>(&pending) {
            out.push(value);
            pending.clear();
        }
    }
    out
}

#[test]
fn fixtures_cover_every_json_example_of_the_protocol_document() {
    // The repository carries the document (docs/PROTOCOL.md); `cargo xtask ci` checks that it
    // is the shared one.
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path.display()));
    let examples = protocol_examples(&doc);
    assert!(
        examples.len() >= 20,
        "found only {} examples",
        examples.len()
    );
    let fixtures: Vec<Value> = FIXTURES
        .iter()
        .map(|(_, t)| serde_json::from_str(t).unwrap())
        .collect();
    let templates: Vec<Value> = TEMPLATES
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    for example in examples {
        assert!(
            fixtures.contains(&example) || templates.contains(&example),
            "PROTOCOL.md example has no golden fixture: {example}"
        );
    }
}

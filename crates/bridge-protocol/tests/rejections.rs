//! The decoders refuse exactly what PROTOCOL.md 3.5 says, with the exact code, and echo the
//! `requestId` whenever the frame had a readable one.

#![allow(clippy::unwrap_used)]

use bridge_protocol::http::{CommandRequest, EventRequest, IfOffline};
use bridge_protocol::{
    BleOutcome, BridgeToServer, Credentials, ErrorCode, Limits, MqttBridgeFrame, MqttServerFrame,
    ProtocolError, ServerToBridge, ServerToUser, Stage, StreamEvent, UserToServer,
};

fn bridge(text: &str) -> Result<BridgeToServer, ProtocolError> {
    BridgeToServer::decode(text, &Limits::default())
}

fn user(text: &str) -> Result<UserToServer, ProtocolError> {
    UserToServer::decode(text, &Limits::default())
}

/// Asserts a refusal with `code`, and the echoed request id.
#[track_caller]
fn refused(
    result: Result<impl std::fmt::Debug, ProtocolError>,
    code: ErrorCode,
    request_id: Option<&str>,
) {
    let err = result.expect_err("input must be refused");
    assert_eq!(err.code, code, "{err}");
    assert_eq!(
        err.request_id
            .as_ref()
            .map(bridge_protocol::RequestId::as_str),
        request_id,
        "{err}"
    );
    // The answer is itself a valid error frame.
    let frame = serde_json::to_value(err.to_error_frame()).unwrap();
    assert_eq!(frame["code"], code.as_str());
}

#[test]
fn text_that_is_not_a_json_object_is_invalid_message() {
    for text in [
        "",
        "   ",
        "not json",
        "[]",
        r#"["ble_response"]"#,
        "42",
        r#""ping""#,
        "null",
        "{",
        r#"{"type":"ping"} x"#,
    ] {
        refused(bridge(text), ErrorCode::InvalidMessage, None);
        refused(user(text), ErrorCode::InvalidMessage, None);
    }
}

#[test]
fn a_missing_or_non_string_type_is_invalid_message_with_the_request_id() {
    refused(
        bridge(r#"{"requestId":"r-1"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        bridge(r#"{"type":7,"requestId":"r-1"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        user(r#"{"type":null,"requestId":"c-1"}"#),
        ErrorCode::InvalidMessage,
        Some("c-1"),
    );
}

#[test]
fn a_binary_frame_is_invalid_message() {
    assert_eq!(
        ProtocolError::binary_frame().code,
        ErrorCode::InvalidMessage
    );
}

#[test]
fn a_type_the_role_may_not_send_is_unknown_type() {
    refused(
        bridge(r#"{"type":"subscribe","requestId":"c-1","deviceId":"lock-1"}"#),
        ErrorCode::UnknownType,
        Some("c-1"),
    );
    refused(
        user(r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"01"}"#),
        ErrorCode::UnknownType,
        Some("r-1"),
    );
    refused(
        user(r#"{"type":"ble_write"}"#),
        ErrorCode::UnknownType,
        None,
    );
    refused(
        bridge(r#"{"type":"launch_rockets"}"#),
        ErrorCode::UnknownType,
        None,
    );
}

#[test]
fn ble_response_needs_exactly_one_of_payload_and_error() {
    refused(
        bridge(r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        bridge(
            r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"01","error":"x"}"#,
        ),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    // `null` counts as absent.
    let ok = bridge(r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":null,"error":"gatt_write_failed"}"#).unwrap();
    let BridgeToServer::BleResponse(r) = ok else {
        panic!()
    };
    assert!(matches!(r.outcome, BleOutcome::Error(e) if e.as_str() == "gatt_write_failed"));
}

#[test]
fn a_request_id_over_64_characters_is_invalid_message_and_not_echoed() {
    let long = "x".repeat(65);
    refused(
        bridge(&format!(
            r#"{{"type":"ble_response","requestId":"{long}","deviceId":"lock-1","payload":"01"}}"#
        )),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        user(&format!(
            r#"{{"type":"subscribe","requestId":"{long}","deviceId":"lock-1"}}"#
        )),
        ErrorCode::InvalidMessage,
        None,
    );
    let max = "x".repeat(64);
    assert!(
        user(&format!(
            r#"{{"type":"subscribe","requestId":"{max}","deviceId":"lock-1"}}"#
        ))
        .is_ok()
    );
}

#[test]
fn missing_or_mistyped_required_fields_are_invalid_message() {
    refused(
        bridge(r#"{"type":"ble_response","deviceId":"lock-1","payload":"01"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_response","requestId":5,"deviceId":"lock-1","payload":"01"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_response","requestId":"r-1","deviceId":1,"payload":"01"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        bridge(r#"{"type":"ble_response","requestId":"r-1","deviceId":"","payload":"01"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        bridge(r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","error":7}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    refused(
        bridge(r#"{"type":"ble_status","deviceId":"lock-1"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_status","deviceId":"lock-1","connected":"yes"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_status","deviceId":"lock-1","connected":true,"rssi":-500}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_status","deviceId":"lock-1","connected":true,"rssi":-61.5}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"release"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        user(r#"{"type":"subscribe","deviceId":"lock-1"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        user(r#"{"type":"unsubscribe","requestId":"c-3"}"#),
        ErrorCode::InvalidMessage,
        Some("c-3"),
    );
    refused(
        user(r#"{"type":"command","requestId":"c-2","payload":"01"}"#),
        ErrorCode::InvalidMessage,
        Some("c-2"),
    );
}

#[test]
fn a_duplicated_key_is_invalid_message() {
    refused(
        bridge(r#"{"type":"release","deviceId":"a","deviceId":"b"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
}

#[test]
fn device_ids_with_control_characters_are_refused() {
    refused(
        bridge(r#"{"type":"release","deviceId":"lock\u0000"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
}

#[test]
fn bad_payloads_are_invalid_payload() {
    let frame = |payload: &str| {
        format!(
            r#"{{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":{payload}}}"#
        )
    };
    for bad in [
        r#""abc""#,
        r#""zz""#,
        "17",
        "true",
        r#"["aa"]"#,
        r#"{"hex":"aa"}"#,
    ] {
        refused(bridge(&frame(bad)), ErrorCode::InvalidPayload, Some("r-1"));
    }
    let over = format!(r#""{}""#, "00".repeat(513));
    refused(
        bridge(&frame(&over)),
        ErrorCode::InvalidPayload,
        Some("r-1"),
    );
    let at_limit = format!(r#""{}""#, "00".repeat(512));
    assert!(bridge(&frame(&at_limit)).is_ok());
    // The limit is configurable.
    let small = Limits {
        max_payload_bytes: 2,
    };
    let err = BridgeToServer::decode(&frame(r#""aabbcc""#), &small).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPayload);
}

#[test]
fn unknown_fields_are_ignored() {
    assert!(bridge(r#"{"type":"ping","extra":{"nested":[1,2,3]}}"#).is_ok());
    assert!(user(r#"{"type":"subscribe","requestId":"c-1","deviceId":"lock-1","x":null}"#).is_ok());
}

#[test]
fn command_frames_refuse_body_fields_as_http_would() {
    let cmd = |extra: &str| {
        format!(
            r#"{{"type":"command","requestId":"c-2","deviceId":"lock-1","payload":"aabb"{extra}}}"#
        )
    };
    refused(
        user(&cmd(r#","timeoutMs":0"#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(r#","timeoutMs":120001"#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(r#","timeoutMs":"5""#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(r#","ifOffline":"retry""#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(r#","ifOffline":"queue""#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(r#","requiresConfirmation":true"#)),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(&cmd(
            r#","ttlSeconds":604801,"commandType":"u","ifOffline":"queue""#,
        )),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    refused(
        user(r#"{"type":"command","requestId":"c-2","deviceId":"lock-1","payload":"xyz"}"#),
        ErrorCode::InvalidPayload,
        Some("c-2"),
    );
    refused(
        user(r#"{"type":"command","requestId":"c-2","deviceId":"lock-1"}"#),
        ErrorCode::InvalidRequest,
        Some("c-2"),
    );
    let UserToServer::Command(c) =
        user(&cmd(r#","ifOffline":"queue","commandType":"unlock""#)).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.command.if_offline, IfOffline::Queue);
    assert_eq!(c.command.timeout_ms.get(), 10_000);
}

#[test]
fn http_command_bodies_use_invalid_request_and_invalid_payload() {
    let limits = Limits::default();
    let err = |body: &str| CommandRequest::from_json(body, &limits).unwrap_err().code;
    assert_eq!(err("not json"), ErrorCode::InvalidRequest);
    assert_eq!(err("[1]"), ErrorCode::InvalidRequest);
    assert_eq!(err("{}"), ErrorCode::InvalidRequest);
    assert_eq!(
        err(r#"{"payload":"aa","timeoutMs":-1}"#),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        err(r#"{"payload":"aa","deviceType":""}"#),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        err(r#"{"payload":"aa","requiresConfirmation":"no"}"#),
        ErrorCode::InvalidRequest
    );
    assert_eq!(err(r#"{"payload":"aaa"}"#), ErrorCode::InvalidPayload);
    assert_eq!(err(r#"{"payload":12}"#), ErrorCode::InvalidPayload);
    let ok = CommandRequest::from_json(r#"{"payload":"AABB"}"#, &limits).unwrap();
    assert_eq!(ok.payload.as_bytes(), &[0xaa, 0xbb]);
    assert_eq!(ok.device_type, None);
    assert!(!ok.wants_queue());
}

#[test]
fn event_bodies_may_not_use_a_protocol_type() {
    for reserved in [
        "ble_write",
        "device_status",
        "command_result",
        "error",
        "pong",
        // 1.1
        "ble_progress",
        "overflow",
        "hello",
        "welcome",
        "bye",
    ] {
        let err = EventRequest::from_json(&format!(r#"{{"type":"{reserved}","data":{{}}}}"#))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{reserved}");
    }
    assert_eq!(
        EventRequest::from_json(r#"{"data":{}}"#).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    let ok = EventRequest::from_json(r#"{"type":"doorbell"}"#).unwrap();
    assert_eq!(ok.event_type.as_str(), "doorbell");
    assert_eq!(ok.data, None);
}

// Version 1.1

#[test]
fn ble_progress_needs_a_stage_the_bridge_may_report() {
    for stage in [r#""sent""#, r#""delivered""#, r#""WRITTEN""#, "3", "null"] {
        refused(
            bridge(&format!(
                r#"{{"type":"ble_progress","requestId":"r-1","deviceId":"lock-1","stage":{stage}}}"#
            )),
            ErrorCode::InvalidMessage,
            Some("r-1"),
        );
    }
    for (stage, expected) in [
        ("received", Stage::Received),
        ("connected", Stage::Connected),
        ("written", Stage::Written),
    ] {
        let frame = bridge(&format!(
            r#"{{"type":"ble_progress","requestId":"r-1","deviceId":"lock-1","stage":"{stage}"}}"#
        ))
        .unwrap();
        let BridgeToServer::BleProgress(progress) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(progress.stage, expected);
    }
}

#[test]
fn ble_progress_checks_request_id_and_device_id_as_ble_response_does() {
    let long = "x".repeat(65);
    refused(
        bridge(&format!(
            r#"{{"type":"ble_progress","requestId":"{long}","deviceId":"lock-1","stage":"written"}}"#
        )),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_progress","deviceId":"lock-1","stage":"written"}"#),
        ErrorCode::InvalidMessage,
        None,
    );
    refused(
        bridge(r#"{"type":"ble_progress","requestId":"r-1","stage":"written"}"#),
        ErrorCode::InvalidMessage,
        Some("r-1"),
    );
    // A user may not send it.
    refused(
        user(r#"{"type":"ble_progress","requestId":"r-1","deviceId":"lock-1","stage":"written"}"#),
        ErrorCode::UnknownType,
        Some("r-1"),
    );
}

#[test]
fn mqtt_frames_are_unknown_types_over_websocket() {
    for text in [
        r#"{"type":"hello","token":"t","deviceIds":["lock-1"]}"#,
        r#"{"type":"bye"}"#,
    ] {
        refused(bridge(text), ErrorCode::UnknownType, None);
        refused(user(text), ErrorCode::UnknownType, None);
    }
    refused(
        ServerToBridge::decode(r#"{"type":"welcome"}"#),
        ErrorCode::UnknownType,
        None,
    );
    // Nor are 1.1 types application events for a user.
    for ty in ["welcome", "overflow", "ble_progress"] {
        refused(
            ServerToUser::decode(&format!(r#"{{"type":"{ty}","deviceId":"lock-1"}}"#)),
            ErrorCode::UnknownType,
            None,
        );
    }
}

fn mqtt(text: &str) -> Result<MqttBridgeFrame, ProtocolError> {
    MqttBridgeFrame::decode(text, &Limits::default())
}

#[test]
fn a_hello_without_credentials_is_unauthorized() {
    for text in [
        r#"{"type":"hello","deviceIds":["lock-1"]}"#,
        r#"{"type":"hello","token":"","deviceIds":["lock-1"]}"#,
        r#"{"type":"hello","token":null,"userId":null}"#,
    ] {
        refused(mqtt(text), ErrorCode::Unauthorized, None);
    }
}

#[test]
fn a_hello_with_both_or_malformed_credentials_is_invalid_message() {
    for text in [
        r#"{"type":"hello","token":"t","userId":"owner-1","deviceIds":["lock-1"]}"#,
        r#"{"type":"hello","token":42}"#,
        r#"{"type":"hello","userId":""}"#,
        r#"{"type":"hello","userId":"owner\u0007"}"#,
    ] {
        refused(mqtt(text), ErrorCode::InvalidMessage, None);
    }
    let long = "u".repeat(129);
    refused(
        mqtt(&format!(r#"{{"type":"hello","userId":"{long}"}}"#)),
        ErrorCode::InvalidMessage,
        None,
    );
}

#[test]
fn hello_device_ids_follow_the_device_id_rule() {
    for device_ids in [
        r#""lock-1""#,
        "[1]",
        r#"[""]"#,
        r#"["lock\n1"]"#,
        r#"{"a":"lock-1"}"#,
    ] {
        refused(
            mqtt(&format!(
                r#"{{"type":"hello","userId":"owner-1","deviceIds":{device_ids}}}"#
            )),
            ErrorCode::InvalidMessage,
            None,
        );
    }
    let long = "d".repeat(129);
    refused(
        mqtt(&format!(
            r#"{{"type":"hello","userId":"owner-1","deviceIds":["{long}"]}}"#
        )),
        ErrorCode::InvalidMessage,
        None,
    );
}

#[test]
fn a_hello_reads_its_devices_once_each_in_order() {
    let frame = mqtt(r#"{"type":"hello","userId":"owner-1","deviceIds":["b","a","b"]}"#).unwrap();
    let MqttBridgeFrame::Hello(hello) = frame else {
        panic!("{frame:?}")
    };
    let ids: Vec<&str> = hello
        .device_ids
        .iter()
        .map(bridge_protocol::DeviceId::as_str)
        .collect();
    assert_eq!(ids, ["b", "a"]);
    assert!(matches!(hello.credentials, Credentials::UserId(u) if u.as_str() == "owner-1"));
    // No `deviceIds`: a bridge that claims its devices later with `ble_status`.
    let frame = mqtt(r#"{"type":"hello","token":"jwt"}"#).unwrap();
    let MqttBridgeFrame::Hello(hello) = frame else {
        panic!("{frame:?}")
    };
    assert!(hello.device_ids.is_empty());
}

#[test]
fn over_mqtt_the_websocket_frames_are_refused_as_over_websocket() {
    refused(
        mqtt(r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock-1","payload":"abc"}"#),
        ErrorCode::InvalidPayload,
        Some("r-1"),
    );
    refused(
        mqtt(r#"{"type":"subscribe","requestId":"c-1","deviceId":"lock-1"}"#),
        ErrorCode::UnknownType,
        Some("c-1"),
    );
    refused(mqtt("[]"), ErrorCode::InvalidMessage, None);
    refused(
        MqttServerFrame::decode(r#"{"type":"hello","token":"t"}"#),
        ErrorCode::UnknownType,
        None,
    );
}

#[test]
fn answers_with_a_bad_stage_or_progress_are_invalid_message() {
    for extra in [
        r#""stage":"delivered""#,
        r#""stage":1"#,
        r#""progress":[3]"#,
        r#""progress":{"receivedMs":-1}"#,
        r#""progress":{"writtenMs":"41"}"#,
        r#""progress":{"writtenMs":4294967296}"#,
    ] {
        let text = format!(
            r#"{{"type":"command_result","requestId":"c-2","deviceId":"lock-1","status":"timeout",{extra}}}"#
        );
        refused(
            ServerToUser::decode(&text),
            ErrorCode::InvalidMessage,
            Some("c-2"),
        );
        refused(
            StreamEvent::decode(&text),
            ErrorCode::InvalidMessage,
            Some("c-2"),
        );
    }
}

#[test]
fn the_stream_carries_no_answers_to_a_users_own_requests() {
    for text in [
        r#"{"type":"ack","requestId":"c-1"}"#,
        r#"{"type":"pong"}"#,
        r#"{"type":"error","code":"forbidden","message":"no"}"#,
    ] {
        let err = StreamEvent::decode(text).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType, "{text}");
    }
}

//! Properties: every frame the encoders can produce decodes back to the same value, and no
//! input, however hostile, makes a decoder panic.

#![allow(clippy::unwrap_used)]

use bridge_protocol::http::{CommandRequest, CommandResponse, EventRequest, IfOffline};
use bridge_protocol::{
    BleOutcome, BleResponse, BleStatus, BleWrite, BridgeToServer, CommandFrame, CommandType,
    DeviceConfig, DeviceErrorCode, DeviceId, DeviceType, HexPayload, Limits, Release, RequestId,
    ServerToBridge, ServerToUser, SubscriptionChange, TimeoutMs, TtlSeconds, UserToServer,
};
use bridge_protocol::{
    BleProgress, CommandResult, Credentials, Hello, Hops, MqttBridgeFrame, Progress, ResultStatus,
    Stage, StreamEvent, Token, UserId,
};
use proptest::prelude::*;

fn request_id() -> impl Strategy<Value = RequestId> {
    "[ -~]{1,64}".prop_map(|s| RequestId::new(&s).unwrap())
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    // Any non-control characters, including non-ASCII and JSON-special ones.
    "[^\\p{Cc}]{1,40}".prop_map(|s| DeviceId::new(&s).unwrap())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_\\-\"\\\\é]{1,20}"
}

fn payload() -> impl Strategy<Value = HexPayload> {
    proptest::collection::vec(any::<u8>(), 0..=512).prop_map(HexPayload::from_bytes)
}

fn from_bridge() -> impl Strategy<Value = BridgeToServer> {
    prop_oneof![
        (request_id(), device_id(), payload()).prop_map(|(r, d, p)| {
            BridgeToServer::BleResponse(BleResponse {
                request_id: r,
                device_id: d,
                outcome: BleOutcome::Payload(p),
            })
        }),
        (request_id(), device_id(), name()).prop_map(|(r, d, e)| {
            BridgeToServer::BleResponse(BleResponse {
                request_id: r,
                device_id: d,
                outcome: BleOutcome::Error(DeviceErrorCode::new(&e).unwrap()),
            })
        }),
        (
            device_id(),
            any::<bool>(),
            proptest::option::of(any::<i8>())
        )
            .prop_map(|(d, c, rssi)| {
                BridgeToServer::BleStatus(BleStatus {
                    device_id: d,
                    connected: c,
                    rssi,
                })
            }),
        (
            request_id(),
            device_id(),
            prop::sample::select(vec![Stage::Received, Stage::Connected, Stage::Written])
        )
            .prop_map(|(r, d, stage)| {
                BridgeToServer::BleProgress(BleProgress {
                    request_id: r,
                    device_id: d,
                    stage,
                })
            }),
        device_id().prop_map(|d| BridgeToServer::Release(Release { device_id: d })),
        Just(BridgeToServer::Ping),
    ]
}

fn hops() -> impl Strategy<Value = Hops> {
    let ms = || proptest::option::of(any::<u32>());
    (
        proptest::option::of(prop::sample::select(Stage::ALL.to_vec())),
        ms(),
        ms(),
        ms(),
    )
        .prop_map(|(stage, received_ms, connected_ms, written_ms)| Hops {
            stage,
            progress: Progress {
                received_ms,
                connected_ms,
                written_ms,
            },
        })
}

fn command_response() -> impl Strategy<Value = CommandResponse> {
    let command_id = || name().prop_map(|c| bridge_protocol::CommandId::new(&c).unwrap());
    prop_oneof![
        (request_id(), payload(), any::<u64>(), hops()).prop_map(
            |(request_id, payload, latency_ms, hops)| {
                CommandResponse::Succeeded {
                    request_id,
                    payload,
                    latency_ms,
                    hops,
                }
            }
        ),
        command_id().prop_map(|command_id| CommandResponse::Queued { command_id }),
        command_id().prop_map(|command_id| CommandResponse::AwaitingConfirmation { command_id }),
        (name(), hops()).prop_map(|(e, hops)| CommandResponse::DeviceError {
            error: DeviceErrorCode::new(&e).unwrap(),
            hops,
        }),
        Just(CommandResponse::Offline),
        hops().prop_map(|hops| CommandResponse::BridgeLost { hops }),
        hops().prop_map(|hops| CommandResponse::Timeout { hops }),
    ]
}

fn from_mqtt_bridge() -> impl Strategy<Value = MqttBridgeFrame> {
    let credentials = prop_oneof![
        "[ -~]{1,200}".prop_map(|t| Credentials::Token(Token::new(t).unwrap())),
        "[^\\p{Cc}]{1,40}".prop_map(|u| Credentials::UserId(UserId::new(&u).unwrap())),
    ];
    prop_oneof![
        (
            credentials,
            proptest::collection::btree_set(device_id(), 0..5)
        )
            .prop_map(|(credentials, devices)| MqttBridgeFrame::Hello(Hello {
                credentials,
                device_ids: devices.into_iter().collect(),
            })),
        Just(MqttBridgeFrame::Bye),
        from_bridge().prop_map(MqttBridgeFrame::Frame),
    ]
}

fn from_user() -> impl Strategy<Value = UserToServer> {
    let command = (
        request_id(),
        device_id(),
        payload(),
        1u64..=120_000,
        1u64..=604_800,
        proptest::option::of(name()),
        proptest::option::of(name()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(r, d, p, t, ttl, ty, ct, queue, confirm)| {
            let command_type = ct.map(|c| CommandType::new(&c).unwrap());
            let (queue, confirm) = if command_type.is_some() {
                (queue, confirm)
            } else {
                (false, false)
            };
            UserToServer::Command(CommandFrame {
                request_id: r,
                device_id: d,
                command: CommandRequest {
                    device_type: ty.map(|t| DeviceType::new(&t).unwrap()),
                    payload: p,
                    timeout_ms: TimeoutMs::new(t).unwrap(),
                    if_offline: if queue {
                        IfOffline::Queue
                    } else {
                        IfOffline::Fail
                    },
                    command_type,
                    ttl_seconds: TtlSeconds::new(ttl).unwrap(),
                    requires_confirmation: confirm,
                },
            })
        });
    prop_oneof![
        (request_id(), device_id()).prop_map(|(r, d)| UserToServer::Subscribe(
            SubscriptionChange {
                request_id: r,
                device_id: d
            }
        )),
        (request_id(), device_id()).prop_map(|(r, d)| UserToServer::Unsubscribe(
            SubscriptionChange {
                request_id: r,
                device_id: d
            }
        )),
        command,
        Just(UserToServer::Ping),
    ]
}

proptest! {
    #[test]
    fn mqtt_bridge_frames_round_trip(frame in from_mqtt_bridge()) {
        let text = frame.to_json();
        prop_assert_eq!(MqttBridgeFrame::decode(&text, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn command_results_round_trip_with_any_hops(r in request_id(), d in device_id(), hops in hops()) {
        let mut result = CommandResult::new(d, ResultStatus::Timeout);
        result.request_id = Some(r);
        result.hops = hops;
        let frame = ServerToUser::CommandResult(result.clone());
        let text = frame.to_json();
        prop_assert_eq!(ServerToUser::decode(&text).unwrap(), frame);
        let event = StreamEvent::CommandResult(result);
        prop_assert_eq!(StreamEvent::decode(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn bridge_frames_round_trip(frame in from_bridge()) {
        let text = frame.to_json();
        prop_assert_eq!(BridgeToServer::decode(&text, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn user_frames_round_trip(frame in from_user()) {
        let text = frame.to_json();
        prop_assert_eq!(UserToServer::decode(&text, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn ble_writes_round_trip(r in request_id(), d in device_id(), t in name(), p in payload(), ms in 1u64..=120_000) {
        let config = DeviceConfig::SMART_LOCK;
        let frame = ServerToBridge::BleWrite(BleWrite {
            request_id: r,
            device_id: d,
            device_type: DeviceType::new(&t).unwrap(),
            service_uuid: config.service_uuid,
            write_uuid: config.write_uuid,
            listen_uuid: config.listen_uuid,
            payload: p,
            timeout_ms: TimeoutMs::new(ms).unwrap(),
        });
        prop_assert_eq!(ServerToBridge::decode(&frame.to_json()).unwrap(), frame);
    }

    #[test]
    fn ble_writes_are_written_exactly_as_serde_writes_them(
        r in request_id(), d in device_id(), t in name(), p in payload(), ms in 1u64..=120_000,
        uuids in any::<[u128; 3]>(),
    ) {
        let frame = ServerToBridge::BleWrite(BleWrite {
            request_id: r,
            device_id: d,
            device_type: DeviceType::new(&t).unwrap(),
            service_uuid: uuid::Uuid::from_u128(uuids[0]),
            write_uuid: uuid::Uuid::from_u128(uuids[1]),
            listen_uuid: uuid::Uuid::from_u128(uuids[2]),
            payload: p,
            timeout_ms: TimeoutMs::new(ms).unwrap(),
        });
        let mut written = Vec::new();
        frame.write_json(&mut written);
        let serde = serde_json::to_string(&frame).unwrap();
        prop_assert_eq!(String::from_utf8(written).unwrap(), serde.clone());
        prop_assert_eq!(frame.to_json(), serde.clone());
        if let ServerToBridge::BleWrite(write) = &frame {
            prop_assert_eq!(write.to_json(), serde);
        }
    }

    #[test]
    fn a_ble_write_without_escapes_is_written_into_a_buffer_of_exactly_its_length(
        r in "[ !#-\\[\\]-~]{1,64}", d in "[a-zA-Z0-9:_é-]{1,40}", t in "[a-z_-]{1,20}",
        p in payload(),
        // Every digit count, its edges included.
        ms in prop_oneof![
            1u64..=120_000,
            prop::sample::select(vec![9, 10, 99, 100, 999, 1_000, 9_999, 10_000, 99_999, 100_000]),
        ],
    ) {
        let write = BleWrite {
            request_id: RequestId::new(&r).unwrap(),
            device_id: DeviceId::new(&d).unwrap(),
            device_type: DeviceType::new(&t).unwrap(),
            service_uuid: DeviceConfig::SMART_LOCK.service_uuid,
            write_uuid: DeviceConfig::SMART_LOCK.write_uuid,
            listen_uuid: DeviceConfig::SMART_LOCK.listen_uuid,
            payload: p,
            timeout_ms: TimeoutMs::new(ms).unwrap(),
        };
        let text = write.to_json();
        // Exact: the frame's buffer is the text's, with no second allocation.
        prop_assert_eq!(text.capacity(), text.len());
        prop_assert_eq!(text, serde_json::to_string(&ServerToBridge::BleWrite(write)).unwrap());
    }

    #[test]
    fn command_responses_are_written_exactly_as_serde_writes_them(answer in command_response()) {
        let mut written = b"prefix".to_vec();
        answer.write_json(&mut written);
        let serde = serde_json::to_string(&answer).unwrap();
        prop_assert_eq!(String::from_utf8(written).unwrap(), format!("prefix{serde}"));
    }

    #[test]
    fn hex_payloads_are_the_same_value_however_held(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        use std::hash::{BuildHasher, RandomState};
        let heap = HexPayload::from_bytes(bytes.clone());
        let decoded = HexPayload::from_hex(&heap.to_hex(), usize::MAX).unwrap();
        prop_assert_eq!(&decoded, &heap);
        prop_assert_eq!(decoded.as_bytes(), &bytes[..]);
        prop_assert_eq!(decoded.len(), bytes.len());
        prop_assert_eq!(decoded.is_empty(), bytes.is_empty());
        prop_assert_eq!(decoded.to_hex(), heap.to_hex());
        prop_assert_eq!(serde_json::to_string(&decoded).unwrap(), serde_json::to_string(&heap).unwrap());
        let hasher = RandomState::new();
        prop_assert_eq!(hasher.hash_one(&decoded), hasher.hash_one(&heap));
        prop_assert_eq!(hasher.hash_one(&decoded), hasher.hash_one(&bytes));
        prop_assert_eq!(decoded.clone().into_bytes(), bytes);
    }

    #[test]
    fn hex_payloads_round_trip_in_any_case(bytes in proptest::collection::vec(any::<u8>(), 0..64), upper in any::<bool>()) {
        let hex = HexPayload::from_bytes(bytes.clone()).to_hex();
        let hex = if upper { hex.to_uppercase() } else { hex };
        prop_assert_eq!(HexPayload::from_hex(&hex, 512).unwrap().into_bytes(), bytes);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_text(text in ".{0,300}") {
        let limits = Limits::default();
        let _ = BridgeToServer::decode(&text, &limits);
        let _ = UserToServer::decode(&text, &limits);
        let _ = ServerToBridge::decode(&text);
        let _ = ServerToUser::decode(&text);
        let _ = CommandRequest::from_json(&text, &limits);
        let _ = EventRequest::from_json(&text);
    }

    #[test]
    fn decoders_never_panic_on_json_shaped_input(
        ty in prop_oneof![Just("ble_response"), Just("ble_status"), Just("command"), Just("subscribe"), Just("device_status"), Just("command_result"), Just("ble_write"), Just("error"), Just("x")],
        fields in proptest::collection::vec((
            prop_oneof![Just("requestId"), Just("deviceId"), Just("payload"), Just("error"), Just("connected"), Just("rssi"), Just("timeoutMs"), Just("ifOffline"), Just("commandType"), Just("ttlSeconds"), Just("status"), Just("code"), Just("data"), Just("online")],
            prop_oneof![Just("null".to_owned()), Just("true".to_owned()), any::<i64>().prop_map(|n| n.to_string()), any::<f64>().prop_map(|f| f.to_string()), ".{0,70}".prop_map(|s| serde_json::to_string(&s).unwrap()), Just("[]".to_owned()), Just("{}".to_owned())],
        ), 0..8),
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let text = format!("{{\"type\":\"{ty}\",{}}}", body.join(","));
        let limits = Limits::default();
        let _ = BridgeToServer::decode(&text, &limits);
        let _ = UserToServer::decode(&text, &limits);
        let _ = ServerToBridge::decode(&text);
        let _ = ServerToUser::decode(&text);
        let _ = CommandRequest::from_json(&text, &limits);
    }
}

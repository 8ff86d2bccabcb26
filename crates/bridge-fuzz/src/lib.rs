//! The bodies of the fuzz targets: one function per decoder family that hostile input
//! reaches, each taking arbitrary bytes. A panic is a bug — a decoder that panics, or a
//! value that decodes but does not survive an encode/decode round trip.
//!
//! Two drivers call them:
//!
//! * `fuzz/` (cargo-fuzz, nightly): one libFuzzer target per function, run for a fixed time
//!   by `cargo xtask fuzz [--seconds N] [TARGET]`, starting from the seed corpora in
//!   `fuzz/seeds/<target>/`.
//! * `tests/seeds.rs` (stable, in the normal test suite): every function over its seed
//!   corpus and over `fuzz/regressions/<target>/`, where each crash input the fuzzer found is
//!   kept once it is fixed. So CI exercises the targets without nightly.
//!
//! [`TARGETS`] lists them by name; the names are the fuzz targets' and the corpus
//! directories'.

use bridge_protocol::http::{CommandRequest, EventRequest};
use bridge_protocol::{
    BridgeId, BridgeToServer, CommandId, ConfigRegistry, DeviceId, Limits, MqttBridgeFrame,
    MqttServerFrame, ServerToBridge, ServerToUser, StreamEvent, UserId, UserToServer,
};
use bridge_server::auth::{Authenticator, Claims, UpgradeRequest};

/// A fuzz target's body: arbitrary bytes in, a panic for a bug.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz/` binary and corpus directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("bridge_frame", bridge_frame),
    ("user_frame", user_frame),
    ("http_body", http_body),
    ("query", query),
    ("token", token),
    ("mqtt", mqtt),
    ("cluster_wire", cluster_wire),
    ("device_types", device_types),
    ("websocket_server", websocket_server),
];

/// Frames a phone sends over WebSocket (`BridgeToServer::decode`, and the `type` the hub
/// reads of an application frame), and frames the server sends a phone as the bridge
/// library reads them (`ServerToBridge::decode`).
pub fn bridge_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    match BridgeToServer::decode(text, &limits) {
        Ok(frame) => assert_eq!(
            BridgeToServer::decode(&frame.to_json(), &limits).ok(),
            Some(frame)
        ),
        // The server answers a refusal with its error frame.
        Err(error) => drop(error.to_error_frame()),
    }
    let _ = bridge_protocol::decode::frame_type(text);
    let _ = bridge_protocol::decode::frame_request_id(text);
    if let Ok(frame) = ServerToBridge::decode(text) {
        assert_eq!(ServerToBridge::decode(&frame.to_json()).ok(), Some(frame));
    }
}

/// Frames a user sends over WebSocket (`UserToServer::decode`), and what the user library
/// reads from the server (`ServerToUser::decode`) and from `GET /v1/stream`
/// (`StreamEvent::decode`).
pub fn user_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    match UserToServer::decode(text, &limits) {
        Ok(frame) => assert_eq!(
            UserToServer::decode(&frame.to_json(), &limits).ok(),
            Some(frame)
        ),
        Err(error) => drop(error.to_error_frame()),
    }
    if let Ok(frame) = ServerToUser::decode(text) {
        assert_eq!(ServerToUser::decode(&frame.to_json()).ok(), Some(frame));
    }
    let _ = StreamEvent::decode(text);
}

/// HTTP request bodies (`POST /v1/devices/{id}/commands`, `POST /v1/devices/{id}/events`)
/// and the ids the routes read from a path.
pub fn http_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    if let Ok(request) = CommandRequest::from_json(text, &limits) {
        let json = serde_json::to_string(&request).expect("a command request encodes");
        assert_eq!(
            CommandRequest::from_json(&json, &limits).ok(),
            Some(request)
        );
    }
    if let Ok(event) = EventRequest::from_json(text) {
        let json = serde_json::to_string(&event).expect("an event request encodes");
        assert_eq!(EventRequest::from_json(&json).ok(), Some(event));
    }
    if let Ok(device) = DeviceId::new(text) {
        assert_eq!(device.as_str(), text);
    }
    let _ = CommandId::new(text);
}

/// Query strings and the headers development mode checks: `GET /v1/stream?deviceId=…`, the
/// `GET /ws` query (read, then authenticated in development and in token mode), and the
/// loopback check of `Host` and `Origin`.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(devices)) = bridge_server::fuzzing::stream_device_filter(text) {
        assert!(!devices.is_empty());
    }
    if let Some(Ok(query)) = bridge_server::fuzzing::ws_query(&format!("/ws?{text}")) {
        let request = UpgradeRequest {
            authorization: None,
            query,
        };
        if let Ok(identity) = Authenticator::development().authenticate_ws(&request) {
            assert!(UserId::new(&identity.principal.subject).is_ok());
        }
        let _ = jwt().authenticate_ws(&request);
    }
    let development = Authenticator::development();
    let _ = development.check_loopback(&[Some(text)], [Some(text)]);
    let _ = bridge_server::auth::is_loopback_host(text);
    let _ = bridge_server::auth::is_loopback_origin(text);
}

/// The secret of the `token` target's authenticator (at least 32 bytes, as the server
/// requires).
pub const TOKEN_SECRET: &[u8] = b"the fuzz targets' secret, 32 bytes or more";

fn jwt() -> Authenticator {
    Authenticator::jwt(TOKEN_SECRET)
}

/// Tokens, as a phone, a user or a backend sends them: the bytes as a token's text (which
/// almost never passes the signature), and, when they are JSON, as the claims of a token
/// signed with the server's secret — so the claims' checks (`sub`, `exp`, `role`, `devices`)
/// see arbitrary values.
pub fn token(data: &[u8]) {
    let auth = jwt();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = auth.authenticate_service(Some(&format!("Bearer {text}")));
        let _ = auth.check_service(Some(text));
        let _ = auth.authenticate_ws(&UpgradeRequest {
            authorization: None,
            query: vec![("token".into(), text.into())],
        });
    }
    let Ok(claims) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(data) else {
        return;
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET);
    let Ok(signed) = jsonwebtoken::encode(&header, &claims, &key) else {
        return;
    };
    let bearer = format!("Bearer {signed}");
    for principal in [
        auth.authenticate_service(Some(&bearer)),
        auth.authenticate_ws(&UpgradeRequest {
            authorization: Some(bearer.clone()),
            query: vec![("deviceId".into(), "lock-1".into())],
        })
        .map(|identity| identity.principal),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            UserId::new(&principal.subject).is_ok(),
            "an accepted token's `sub` is a valid id"
        );
        assert!(
            principal
                .expires_at
                .is_some_and(|exp| exp <= Claims::MAX_EXP),
            "an accepted token's `exp` is bounded"
        );
    }
}

/// What a bridge publishes over MQTT (`hello`, `bye`, its frames) and the topic names it
/// publishes on; what the server publishes, as the bridge side reads it.
pub fn mqtt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    if let Ok(frame) = MqttBridgeFrame::decode(text, &limits) {
        assert_eq!(
            MqttBridgeFrame::decode(&frame.to_json(), &limits).ok(),
            Some(frame)
        );
    }
    if let Ok(frame) = MqttServerFrame::decode(text) {
        assert_eq!(MqttServerFrame::decode(&frame.to_json()).ok(), Some(frame));
    }
    if let Some(bridge) = BridgeId::from_up_topic("bridge", text) {
        assert_eq!(bridge.up_topic("bridge"), text);
    }
    let _ = BridgeId::new(text);
}

/// The messages cluster nodes exchange over NATS: heartbeats, presence reports, and the
/// frame of a forwarded `write` (`bridge-cluster`'s wire decoders).
pub fn cluster_wire(data: &[u8]) {
    let _ = bridge_cluster::fuzzing::heartbeat(data);
    let _ = bridge_cluster::fuzzing::presence(data);
    let _ = bridge_cluster::fuzzing::write(data);
}

/// The device-type registry file (`--device-types`, TOML).
pub fn device_types(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(registry) = ConfigRegistry::from_toml_str(text) {
        for (name, _) in registry.iter() {
            assert!(registry.get(name.as_str()).is_ok());
        }
        let _ = registry.resolve(None);
    }
}

/// What a client sends over WebSocket, as the server's frame layer reads it
/// (`bridge_hub::ServerWebSocket`) against tungstenite's server with the same configuration
/// (the first four bytes choose the frame limit, write sizes, stalls and read chunks): a
/// panic is a difference in the messages, errors or bytes written back.
pub fn websocket_server(data: &[u8]) {
    bridge_hub::fuzzing::websocket_server(data);
}

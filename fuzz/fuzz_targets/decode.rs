//! Feeds arbitrary bytes to every decoder of `bridge-protocol`. Any panic is a bug; so is a
//! frame that decodes but does not survive an encode/decode round trip.
#![no_main]

use bridge_protocol::http::{CommandRequest, EventRequest};
use bridge_protocol::{BridgeToServer, Limits, ServerToBridge, ServerToUser, UserToServer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    if let Ok(frame) = BridgeToServer::decode(text, &limits) {
        assert_eq!(BridgeToServer::decode(&frame.to_json(), &limits).ok(), Some(frame));
    }
    if let Ok(frame) = UserToServer::decode(text, &limits) {
        assert_eq!(UserToServer::decode(&frame.to_json(), &limits).ok(), Some(frame));
    }
    if let Ok(frame) = ServerToBridge::decode(text) {
        assert_eq!(ServerToBridge::decode(&frame.to_json()).ok(), Some(frame));
    }
    let _ = ServerToUser::decode(text);
    let _ = CommandRequest::from_json(text, &limits);
    let _ = EventRequest::from_json(text);
});

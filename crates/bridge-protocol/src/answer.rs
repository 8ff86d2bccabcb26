//! The phone's one frame per command, `ble_response`, written without serde.

use crate::frames::{json_request_id, json_string, push_hex};
use crate::{BleOutcome, BleResponse};

impl BleResponse {
    /// Appends the `ble_response` frame of this answer to `buf`: byte for byte what
    /// `BridgeToServer::BleResponse(self).to_json()` writes, field by field, without serde's
    /// per-byte escape scan of strings that need no escaping (a property test checks the
    /// two agree). A phone writes one per command.
    pub fn write_frame_json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(br#"{"type":"ble_response","requestId":"#);
        json_request_id(buf, &self.request_id);
        buf.extend_from_slice(br#","deviceId":"#);
        json_string(buf, self.device_id.as_str());
        match &self.outcome {
            BleOutcome::Payload(payload) => {
                buf.extend_from_slice(br#","payload":""#);
                push_hex(buf, payload.as_bytes());
                buf.extend_from_slice(br#""}"#);
            }
            BleOutcome::Error(code) => {
                buf.extend_from_slice(br#","error":"#);
                json_string(buf, code.as_str());
                buf.push(b'}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use crate::{
        BleOutcome, BleResponse, BridgeToServer, DeviceErrorCode, DeviceId, HexPayload, RequestId,
    };

    proptest! {
        #[test]
        fn the_written_frame_is_serdes(
            request_id in "[ -~]{1,64}",
            device_id in "\\PC{1,64}",
            payload in prop::collection::vec(any::<u8>(), 0..64),
            error in prop::option::of("[a-z_]{1,32}"),
        ) {
            let (Ok(request_id), Ok(device_id)) =
                (RequestId::new(&request_id), DeviceId::new(&device_id))
            else {
                return Ok(());
            };
            let outcome = match error.map(|e| DeviceErrorCode::new(&e)) {
                Some(Ok(code)) => BleOutcome::Error(code),
                Some(Err(_)) => return Ok(()),
                None => BleOutcome::Payload(HexPayload::from_bytes(payload)),
            };
            let answer = BleResponse { request_id, device_id, outcome };
            let mut buf = b"before".to_vec();
            answer.write_frame_json(&mut buf);
            let serde = BridgeToServer::BleResponse(answer).to_json();
            prop_assert_eq!(&buf[..6], b"before");
            prop_assert_eq!(std::str::from_utf8(&buf[6..]).unwrap(), serde);
        }
    }

    #[test]
    fn strings_that_need_escaping_are_escaped_as_serde_escapes_them() {
        let answer = BleResponse {
            request_id: RequestId::new(r#"a"b\c"#).unwrap(),
            device_id: DeviceId::new("lock \"1\" \\ é").unwrap(),
            outcome: BleOutcome::Payload(HexPayload::from_bytes(vec![0xab, 0x01])),
        };
        let mut buf = Vec::new();
        answer.write_frame_json(&mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            BridgeToServer::BleResponse(answer).to_json()
        );
    }
}

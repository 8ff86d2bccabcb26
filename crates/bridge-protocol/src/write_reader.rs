//! The phone's one frame per command, `ble_write`, read in one pass when it has exactly the
//! shape the server writes (`ServerToBridge::to_json`): the fields in their order, strings
//! without escapes, no spaces. Anything else, and any value a constructor refuses, goes
//! through [`ServerToBridge::decode`], so refusals and their error codes are unchanged; a
//! property test checks that the two agree on every input.

use crate::decode::{plain_string_end, recent_device_id};
use crate::{
    BleWrite, DeviceType, HexPayload, ProtocolError, RequestId, ServerToBridge, TimeoutMs,
};

impl ServerToBridge {
    /// The same result as [`ServerToBridge::decode`] for every input; a `ble_write` in the
    /// server's own shape is read in one pass, without the general reader's field table.
    pub fn decode_fast(text: &str) -> Result<Self, ProtocolError> {
        match canonical_ble_write(text) {
            Some(write) => Ok(Self::BleWrite(write)),
            None => Self::decode(text),
        }
    }
}

/// Reads `text` left to right; also the reader of the phone's `ble_response` in the shape
/// it writes (`decode.rs`).
pub(crate) struct Fields<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Fields<'a> {
    /// A reader at the start of `text`.
    pub(crate) const fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    /// Whether the whole text was read.
    pub(crate) const fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    /// Skips `expected`, which must come next.
    pub(crate) fn literal(&mut self, expected: &[u8]) -> Option<()> {
        let end = self.at + expected.len();
        (self.text.as_bytes().get(self.at..end)? == expected).then(|| self.at = end)
    }

    /// A string's contents up to its closing quote (which is not consumed): `None` if it
    /// has an escape or a control character (left to the general reader).
    // Inlined: called once per string of a hot frame, its call and frame set-up cost about
    // as much as the scan of a short id.
    #[inline]
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        let end = plain_string_end(self.text.as_bytes(), start)?;
        self.at = end;
        // Cut at an ASCII quote: always on a character boundary.
        self.text.get(start..end)
    }

    /// A JSON integer without sign, fraction or leading zero.
    fn integer(&mut self) -> Option<u64> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let len = bytes
            .get(start..)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if len == 0 || (len > 1 && bytes[start] == b'0') {
            return None;
        }
        self.at = start + len;
        self.text.get(start..start + len)?.parse().ok()
    }
}

/// The `ble_write` in `text` if it has exactly the server's shape and valid values.
fn canonical_ble_write(text: &str) -> Option<BleWrite> {
    let mut fields = Fields::new(text);
    fields.literal(br#"{"type":"ble_write","requestId":""#)?;
    let request_id = fields.string()?;
    fields.literal(br#"","deviceId":""#)?;
    let device_id = fields.string()?;
    fields.literal(br#"","deviceType":""#)?;
    let device_type = fields.string()?;
    fields.literal(br#"","serviceUuid":""#)?;
    let service_uuid = fields.string()?;
    fields.literal(br#"","writeUuid":""#)?;
    let write_uuid = fields.string()?;
    fields.literal(br#"","listenUuid":""#)?;
    let listen_uuid = fields.string()?;
    fields.literal(br#"","payload":""#)?;
    let payload = fields.string()?;
    fields.literal(br#"","timeoutMs":"#)?;
    let timeout_ms = fields.integer()?;
    fields.literal(b"}")?;
    if !fields.at_end() {
        return None;
    }
    // The constructors the general reader uses, so the values are the same.
    Some(BleWrite {
        request_id: RequestId::new(request_id).ok()?,
        device_id: recent_device_id(device_id).ok()?,
        device_type: DeviceType::new(device_type).ok()?,
        service_uuid: uuid::Uuid::parse_str(service_uuid).ok()?,
        write_uuid: uuid::Uuid::parse_str(write_uuid).ok()?,
        listen_uuid: uuid::Uuid::parse_str(listen_uuid).ok()?,
        payload: HexPayload::from_hex(payload, usize::MAX).ok()?,
        timeout_ms: TimeoutMs::new(timeout_ms).ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use crate::{BleWrite, DeviceId, DeviceType, HexPayload, RequestId, ServerToBridge, TimeoutMs};

    fn any_write() -> impl Strategy<Value = BleWrite> {
        (
            "[ -~]{1,40}",
            prop_oneof!["lock-[0-9]{1,3}", "\\PC{1,20}"],
            "[a-z][a-z0-9-]{0,20}",
            any::<[u128; 3]>(),
            prop::collection::vec(any::<u8>(), 0..40),
            1u64..200_000,
        )
            .prop_filter_map("valid values", |(r, d, t, uuids, payload, timeout)| {
                Some(BleWrite {
                    request_id: RequestId::new(&r).ok()?,
                    device_id: DeviceId::new(&d).ok()?,
                    device_type: DeviceType::new(&t).ok()?,
                    service_uuid: uuid::Uuid::from_u128(uuids[0]),
                    write_uuid: uuid::Uuid::from_u128(uuids[1]),
                    listen_uuid: uuid::Uuid::from_u128(uuids[2]),
                    payload: HexPayload::from_bytes(payload),
                    timeout_ms: TimeoutMs::new(timeout).ok()?,
                })
            })
    }

    /// One edit of a frame's text: a character replaced, inserted or removed.
    fn edit(text: &str, at: usize, kind: u8, with: char) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        match kind % 3 {
            0 if at < chars.len() => chars[at] = with,
            1 => chars.insert(at, with),
            _ if at < chars.len() => {
                chars.remove(at);
            }
            _ => chars.push(with),
        }
        chars.into_iter().collect()
    }

    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                '"', '\\', '0', '1', '9', 'a', 'f', 'g', 'A', '-', ' ', '}', '{', ',', ':', '.',
                '\u{1}', '\u{7f}', 'é', 'n',
            ]),
            any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn the_server_s_frames_read_as_the_general_reader_reads_them(write in any_write()) {
            let text = ServerToBridge::BleWrite(write.clone()).to_json();
            // Strings with escapes are the general reader's.
            if !text.contains('\\') {
                prop_assert!(super::canonical_ble_write(&text).is_some(), "{}", text);
            }
            prop_assert_eq!(
                ServerToBridge::decode_fast(&text),
                Ok(ServerToBridge::BleWrite(write))
            );
            prop_assert_eq!(ServerToBridge::decode_fast(&text), ServerToBridge::decode(&text));
        }

        #[test]
        fn edited_frames_read_as_the_general_reader_reads_them(
            write in any_write(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any_char()), 1..4),
        ) {
            let mut text = ServerToBridge::BleWrite(write).to_json();
            for (at, kind, with) in edits {
                text = edit(&text, at, kind, with);
            }
            prop_assert_eq!(ServerToBridge::decode_fast(&text), ServerToBridge::decode(&text));
        }
    }

    #[test]
    fn values_the_constructors_refuse_get_the_general_reader_s_errors() {
        let good = r#"{"type":"ble_write","requestId":"r-1","deviceId":"lock-1","deviceType":"smart-lock","serviceUuid":"0000fff0-0000-1000-8000-00805f9b34fb","writeUuid":"0000fff1-0000-1000-8000-00805f9b34fb","listenUuid":"0000fff2-0000-1000-8000-00805f9b34fb","payload":"03","timeoutMs":5000}"#;
        assert!(ServerToBridge::decode_fast(good).is_ok());
        for (from, to) in [
            (r#""payload":"03""#, r#""payload":"0""#),
            (r#""timeoutMs":5000"#, r#""timeoutMs":0"#),
            ("5000}", "5000}x"),
            ("5000}", "5000} "),
            (r#""timeoutMs":5000"#, r#""timeoutMs":05000"#),
            (
                r#""timeoutMs":5000"#,
                r#""timeoutMs":99999999999999999999999"#,
            ),
            ("0000fff1-0000", "0000fff1-000g"),
            (r#""requestId":"r-1""#, r#""requestId":"""#),
            (r#""deviceId":"lock-1""#, r#""deviceId":"""#),
            (r#""deviceType":"smart-lock""#, r#""deviceType":"""#),
        ] {
            let text = good.replace(from, to);
            assert_ne!(text, good);
            assert!(super::canonical_ble_write(&text).is_none(), "{text}");
            assert_eq!(
                ServerToBridge::decode_fast(&text),
                ServerToBridge::decode(&text),
                "{text}"
            );
        }
    }
}

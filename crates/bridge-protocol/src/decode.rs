//! Decoding: one entry point per direction, from text to a typed frame or a typed
//! [`ProtocolError`] with the exact code of PROTOCOL.md 3.5.
//!
//! # How input is read (the protocol crate's reading of PROTOCOL.md)
//!
//! * The text must be one JSON object; anything else (not JSON, an array, a string, trailing
//!   data) is `invalid_message`. A key that appears twice is `invalid_message`.
//! * `type` must be a string; a `type` the sending role may not send is `unknown_type`.
//! * A field whose value is `null` counts as absent. Unknown fields are ignored.
//! * A required field that is missing or of the wrong JSON type is `invalid_message`; so is
//!   a value that breaks its rule (an empty `deviceId`, a `requestId` over 64 characters).
//! * `payload` that is not a string, not even-length hex, or over the limit is
//!   `invalid_payload`. Structural problems are reported before payload problems.
//! * A `command` frame: `requestId` and `deviceId` follow the frame rules above; the fields
//!   it shares with the HTTP command body are refused as HTTP would refuse them
//!   (`invalid_request`, or `invalid_payload`), per PROTOCOL.md 3.4.
//! * The error carries the frame's `requestId` whenever the frame had a valid one, even when
//!   the refusal is about another field. A `requestId` that is itself invalid is not echoed,
//!   so that the error frame is always valid.
//! * `rssi` is an integer from -128 to 127 (dBm).
//!
//! ## Version 1.1
//!
//! * `ble_progress`: `requestId` and `deviceId` as for `ble_response`; `stage` is required and
//!   must be `received`, `connected` or `written`. Any other value, `sent` included (the
//!   server's own stage, never the bridge's), and a non-string, is `invalid_message`.
//!   Whether the stage is later than one already reported is the session's business, not
//!   the decoder's: such a frame decodes and is then ignored.
//! * `stage` and `progress` on answers (`command_result`, the HTTP command answer,
//!   `GET /v1/commands/{commandId}`): `stage` may also be `sent`. `progress` is an object
//!   whose `receivedMs`, `connectedMs` and `writtenMs` are integers from 0 to 2^32-1 (a
//!   command waits at most 120 s); its other keys are ignored, and an empty `progress`
//!   reads as absent (encoders leave it out). The decoders do not cross-check `stage`
//!   against `progress`: both are the server's report.
//! * The stream (4.5): [`StreamEvent::decode`] reads a `data:` object; `overflow` is its own
//!   event, every other `type` reads as [`ServerToUser::decode`] reads it, and frames the
//!   stream never carries (`ack`, `error`, `pong`) are `unknown_type`.
//! * MQTT (section 6): `hello`, `welcome` and `bye` are `unknown_type` for the WebSocket
//!   decoders and are read only by [`MqttBridgeFrame::decode`] and
//!   [`MqttServerFrame::decode`], which otherwise read exactly as their WebSocket
//!   counterparts. In a `hello`:
//!   * exactly one of `token` and `userId`. Both is `invalid_message` (which identity would
//!     be meant is unclear). Neither, or an empty `token`, is `unauthorized`: PROTOCOL.md 6
//!     answers a missing token with that code, and a development-mode `hello` without
//!     `userId` is missing its credentials just the same;
//!   * `token` must be a string; its content is the authenticator's to judge (a malformed
//!     one is `unauthorized` there, not here);
//!   * `userId` follows the id rule of section 3 (1 to 128 characters, no control
//!     characters); a `userId` that breaks it is `invalid_message`, as a bad `?userId=` is
//!     a 400 over WebSocket;
//!   * `deviceIds` is an array of device ids, each 1 to 128 characters without control
//!     characters (otherwise `invalid_message`); absent or `null` means none, and a repeated
//!     id counts once (as repeated `deviceId` query parameters do);
//!   * a bridge id is never read from a frame: [`BridgeId`](crate::BridgeId) comes from the
//!     topic.
//!
//! Decoding borrows from the input and validates each field once; the hot frames
//! (`ble_response`, `ble_write`) are read without building a generic JSON tree. A
//! `ble_response` in exactly the shape a phone writes it (`BleResponse::write_frame_json`)
//! is read in one pass without even the envelope; any other text, and any value a
//! constructor refuses, goes through the general reader, whose result it always equals.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::frames::{
    Ack, AppEvent, BleOutcome, BleProgress, BleResponse, BleStatus, BleWrite, CommandFrame,
    CommandResult, DeviceStatus, EventType, Release, ResultStatus, SubscriptionChange,
};
use crate::http::{CommandRequest, EventRequest, IfOffline};
use crate::mqtt::{Credentials, Hello, MqttBridgeFrame, MqttServerFrame, Token};
use crate::write_reader::Fields;
use crate::{
    BridgeToServer, CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, ErrorCode,
    ErrorFrame, HexPayload, Hops, Limits, Progress, ProtocolError, RequestId, ServerToBridge,
    ServerToUser, Stage, StreamEvent, TimeoutMs, TtlSeconds, UserId, UserToServer, ValueError,
};

/// Declares the envelope (every field any frame or body may carry, each as its raw JSON
/// text), the serde struct that reads it, and the key → field table of the fast reader.
macro_rules! envelope {
    ($($field:ident = $key:literal,)*) => {
        /// Every field any frame or body may carry, each as its raw JSON text (a value
        /// whose text is `null` counts as absent).
        #[derive(Default, Debug, PartialEq, Eq)]
        struct Envelope<'a> {
            $($field: Option<&'a str>,)*
            /// Set by the fast reader: no string value holds an escape, so each one is the
            /// text between its quotes.
            plain: bool,
        }

        /// The serde reading of [`Envelope`]: the reference the fast reader is held to.
        #[derive(Deserialize, Default)]
        struct SerdeEnvelope<'a> {
            $(
                #[serde(rename = $key, borrow, default)]
                $field: Option<&'a RawValue>,
            )*
        }

        impl<'a> From<SerdeEnvelope<'a>> for Envelope<'a> {
            fn from(env: SerdeEnvelope<'a>) -> Self {
                Self {
                    $($field: env.$field.map(RawValue::get),)*
                    plain: false,
                }
            }
        }

        /// The envelope's fields, numbered for the fast reader's record of keys seen.
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Clone, Copy)]
        enum Field {
            $($field,)*
        }

        impl<'a> Envelope<'a> {
            /// The field a key names, with its slot; `None` for a key no frame knows.
            fn slot(&mut self, key: &str) -> Option<(Field, &mut Option<&'a str>)> {
                match key {
                    $($key => Some((Field::$field, &mut self.$field)),)*
                    _ => None,
                }
            }
        }
    };
}

envelope! {
    ty = "type",
    request_id = "requestId",
    device_id = "deviceId",
    device_type = "deviceType",
    service_uuid = "serviceUuid",
    write_uuid = "writeUuid",
    listen_uuid = "listenUuid",
    payload = "payload",
    timeout_ms = "timeoutMs",
    error = "error",
    connected = "connected",
    rssi = "rssi",
    if_offline = "ifOffline",
    command_type = "commandType",
    ttl_seconds = "ttlSeconds",
    requires_confirmation = "requiresConfirmation",
    command_id = "commandId",
    status = "status",
    online = "online",
    ble_connected = "bleConnected",
    data = "data",
    code = "code",
    message = "message",
    stage = "stage",
    progress = "progress",
    token = "token",
    user_id = "userId",
    device_ids = "deviceIds",
}

/// The high bit of each byte of `word` (eight bytes of a string, first byte lowest) that is
/// `"`, `\\` or a control character, the bytes that end a plain string; the lowest flag is
/// exact, flags above it may be spurious.
const fn string_stops(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte below `n` (for `n <= 0x80`), by borrow.
    const fn below(word: u64, n: u64) -> u64 {
        word.wrapping_sub(ONES * n) & !word & HIGHS
    }
    below(word ^ (ONES * b'"' as u64), 1)
        | below(word ^ (ONES * b'\\' as u64), 1)
        | below(word, 0x20)
}

/// The closing quote of a JSON string whose first character is at `start` in `b`, or
/// `None` when an escape or a control character comes first (an escaped quote shows as its
/// backslash) or the text ends. Eight bytes at a time, then byte by byte.
pub(crate) fn plain_string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    while let Some(chunk) = b.get(j..).and_then(<[u8]>::first_chunk::<8>) {
        let mask = string_stops(u64::from_le_bytes(*chunk));
        if mask != 0 {
            // The lowest flagged byte is the first stop (flags above it may be spurious).
            j += (mask.trailing_zeros() / 8) as usize;
            return (b[j] == b'"').then_some(j);
        }
        j += 8;
    }
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j),
            b'\\' | 0..=0x1F => return None,
            _ => j += 1,
        }
    }
    None
}

/// A fast reader of the common envelope: one flat JSON object whose keys have no escapes
/// and whose values are strings without escapes, `true`, `false`, `null` or integers of at
/// most 20 characters. It returns what the serde reading ([`SerdeEnvelope`]) returns for
/// such text, and `None` for anything else — a nested value, an escape, a key twice (known
/// ones), a syntax error — which then goes through serde, so errors and unusual input are
/// read exactly as before. A property test (`fast_envelope_reads_as_serde_does`) holds it to
/// that.
fn fast_envelope_into<'a>(text: &'a str, env: &mut Envelope<'a>) -> Option<()> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let string_end = |j: usize| plain_string_end(b, j).map(|quote| quote + 1);
    let mut seen = 0u32;
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(i + 1)?;
            let key = text.get(i + 1..key_end - 1)?;
            i = ws(key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = ws(i + 1);
            let end = match b.get(start)? {
                b'"' => string_end(start + 1)?,
                b't' if b[start..].starts_with(b"true") => start + 4,
                b'f' if b[start..].starts_with(b"false") => start + 5,
                b'n' if b[start..].starts_with(b"null") => start + 4,
                b'-' | b'0'..=b'9' => {
                    let digits = usize::from(b[start] == b'-');
                    let mut end = start + digits;
                    while end < b.len() && b[end].is_ascii_digit() {
                        end += 1;
                    }
                    let len = end - start - digits;
                    // One digit at least, no leading zero, no fraction or exponent (the
                    // next byte must end the value), and short enough to be read as is.
                    if len == 0 || (len > 1 && b[start + digits] == b'0') || end - start > 20 {
                        return None;
                    }
                    end
                }
                _ => return None,
            };
            let value = text.get(start..end)?;
            if let Some((field, slot)) = env.slot(key) {
                let bit = 1u32 << (field as u32);
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                *slot = (value != "null").then_some(value);
            }
            i = ws(end);
            match b.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    env.plain = true;
    (ws(i) == b.len()).then_some(())
}

/// [`fast_envelope_into`] into a new envelope.
#[cfg(test)]
fn fast_envelope(text: &str) -> Option<Envelope<'_>> {
    let mut env = Envelope::default();
    fast_envelope_into(text, &mut env).map(|()| env)
}

/// A field of the envelope, read with the error code used for structural problems.
struct Reader<'e, 'a> {
    env: &'e Envelope<'a>,
    /// `invalid_message` for frames, `invalid_request` for HTTP bodies and command fields.
    code: ErrorCode,
}

fn parse_envelope(text: &str, code: ErrorCode) -> Result<Envelope<'_>, ProtocolError> {
    let mut env = Envelope::default();
    parse_envelope_into(text, code, &mut env)?;
    Ok(env)
}

/// [`parse_envelope`] into `env` (a new, empty envelope): the hot decoders keep the
/// envelope (28 fields) where it is instead of moving it out of each call.
fn parse_envelope_into<'a>(
    text: &'a str,
    code: ErrorCode,
    env: &mut Envelope<'a>,
) -> Result<(), ProtocolError> {
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first();
    if first != Some(&b'{') {
        return Err(ProtocolError::new(code, "expected a JSON object"));
    }
    if fast_envelope_into(text, env).is_none() {
        // What the fast reader wrote, if anything, is replaced.
        *env = serde_envelope(text, code)?;
    }
    Ok(())
}

/// The serde reading of an envelope (anything [`fast_envelope`] leaves to it).
fn serde_envelope(text: &str, code: ErrorCode) -> Result<Envelope<'_>, ProtocolError> {
    serde_json::from_str::<SerdeEnvelope<'_>>(text)
        .map(Envelope::from)
        .map_err(|e| ProtocolError::new(code, format!("not valid JSON: {e}")))
}

/// The string inside a raw JSON value, or `None` when the value is not a string. `plain`
/// says the text is known to hold no escape (a value the fast reader accepted).
fn raw_str(text: &str, plain: bool) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !plain && inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        // Valid JSON without escapes: the text between the quotes is the string.
        Some(Cow::Borrowed(inner))
    }
}

fn field_message(name: &str, what: &str) -> Cow<'static, str> {
    Cow::Owned(format!("field `{name}` {what}"))
}

impl<'a> Reader<'_, 'a> {
    fn missing(&self, name: &str) -> ProtocolError {
        ProtocolError::new(self.code, field_message(name, "is required"))
    }

    fn wrong_type(&self, name: &str, expected: &str) -> ProtocolError {
        ProtocolError::new(
            self.code,
            field_message(name, &format!("must be {expected}")),
        )
    }

    fn invalid(&self, err: &ValueError) -> ProtocolError {
        ProtocolError::from_value(err, self.code)
    }

    fn opt_str(
        &self,
        raw: Option<&'a str>,
        name: &str,
    ) -> Result<Option<Cow<'a, str>>, ProtocolError> {
        raw.map(|r| raw_str(r, self.env.plain).ok_or_else(|| self.wrong_type(name, "a string")))
            .transpose()
    }

    fn req_str(&self, raw: Option<&'a str>, name: &str) -> Result<Cow<'a, str>, ProtocolError> {
        self.opt_str(raw, name)?.ok_or_else(|| self.missing(name))
    }

    fn opt_bool(&self, raw: Option<&str>, name: &str) -> Result<Option<bool>, ProtocolError> {
        raw.map(|r| match r {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.wrong_type(name, "a boolean")),
        })
        .transpose()
    }

    fn req_bool(&self, raw: Option<&str>, name: &str) -> Result<bool, ProtocolError> {
        self.opt_bool(raw, name)?.ok_or_else(|| self.missing(name))
    }

    fn opt_u64(&self, raw: Option<&str>, name: &str) -> Result<Option<u64>, ProtocolError> {
        raw.map(|r| {
            let t = r;
            if t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<u64>()
                    .map_err(|_| self.wrong_type(name, "a non-negative integer"))
            } else {
                Err(self.wrong_type(name, "a non-negative integer"))
            }
        })
        .transpose()
    }

    fn req_u64(&self, raw: Option<&str>, name: &str) -> Result<u64, ProtocolError> {
        self.opt_u64(raw, name)?.ok_or_else(|| self.missing(name))
    }

    fn device_id(&self) -> Result<DeviceId, ProtocolError> {
        let s = self.req_str(self.env.device_id, "deviceId")?;
        recent_device_id(&s).map_err(|e| self.invalid(&e))
    }

    fn request_id(&self) -> Result<RequestId, ProtocolError> {
        let s = self.req_str(self.env.request_id, "requestId")?;
        RequestId::new(&s).map_err(|e| self.invalid(&e))
    }

    fn device_type(&self) -> Result<DeviceType, ProtocolError> {
        let s = self.req_str(self.env.device_type, "deviceType")?;
        DeviceType::new(&s).map_err(|e| self.invalid(&e))
    }

    fn uuid(&self, raw: Option<&'a str>, name: &str) -> Result<uuid::Uuid, ProtocolError> {
        let s = self.req_str(raw, name)?;
        uuid::Uuid::parse_str(&s).map_err(|_| self.wrong_type(name, "a UUID"))
    }

    /// `payload`, if present: not a string, bad hex or too large is `invalid_payload`.
    fn opt_payload(&self, limits: &Limits) -> Result<Option<HexPayload>, ProtocolError> {
        let Some(raw) = self.env.payload else {
            return Ok(None);
        };
        let s = raw_str(raw, self.env.plain).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::InvalidPayload,
                "field `payload` must be a hex string",
            )
        })?;
        HexPayload::from_hex(&s, limits.max_payload_bytes)
            .map(Some)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidPayload, e.to_string()))
    }

    fn payload(&self, limits: &Limits) -> Result<HexPayload, ProtocolError> {
        self.opt_payload(limits)?
            .ok_or_else(|| self.missing("payload"))
    }

    fn device_error(&self, raw: &'a str) -> Result<DeviceErrorCode, ProtocolError> {
        let s = raw_str(raw, self.env.plain).ok_or_else(|| self.wrong_type("error", "a string"))?;
        DeviceErrorCode::new(&s).map_err(|e| self.invalid(&e))
    }

    /// The `stage` of a `ble_progress`: one a bridge may report.
    fn reported_stage(&self) -> Result<Stage, ProtocolError> {
        const EXPECTED: &str = "`received`, `connected` or `written`";
        let s = self.req_str(self.env.stage, "stage")?;
        Stage::from_wire(&s)
            .filter(|stage| stage.is_reported_by_bridge())
            .ok_or_else(|| self.wrong_type("stage", EXPECTED))
    }

    /// `stage` and `progress` of an answer (1.1); both absent is [`Hops::NONE`].
    fn hops(&self) -> Result<Hops, ProtocolError> {
        let stage = self
            .opt_str(self.env.stage, "stage")?
            .map(|s| Stage::from_wire(&s).ok_or_else(|| self.wrong_type("stage", "a known stage")))
            .transpose()?;
        let progress = match self.env.progress {
            None => Progress::NONE,
            // serde would also read a struct from an array: only an object is accepted.
            Some(raw) => Some(raw)
                .filter(|raw| raw.starts_with('{'))
                .and_then(|raw| serde_json::from_str::<Progress>(raw).ok())
                .ok_or_else(|| {
                    self.wrong_type(
                        "progress",
                        "an object of `receivedMs`, `connectedMs` and `writtenMs` milliseconds",
                    )
                })?,
        };
        Ok(Hops { stage, progress })
    }
}

/// The `type` of a text frame, read as the decoders read it (one JSON object, no key twice,
/// `type` a string), or `None` when the frame has none. For frames no decoder knows, such
/// as an application's own frame types.
pub fn frame_type(text: &str) -> Option<Cow<'_, str>> {
    let env = parse_envelope(text, ErrorCode::InvalidMessage).ok()?;
    raw_str(env.ty?, env.plain)
}

/// The `requestId` of a text frame, if it has a valid one (1 to 64 characters, no control
/// characters), read as the decoders read it.
pub fn frame_request_id(text: &str) -> Option<RequestId> {
    parse_envelope(text, ErrorCode::InvalidMessage)
        .ok()
        .and_then(|env| readable_request_id(&env))
}

/// The frame's `requestId`, if it has a valid one.
fn readable_request_id(env: &Envelope<'_>) -> Option<RequestId> {
    env.request_id
        .and_then(|raw| raw_str(raw, env.plain))
        .and_then(|s| RequestId::new(&s).ok())
}

/// Reads the envelope and its `type`, then hands both to `decode_body`; every error leaving
/// this function carries the frame's `requestId` when one could be read.
fn decode_frame<T>(
    text: &str,
    decode_body: impl FnOnce(&str, &Reader<'_, '_>) -> Result<T, ProtocolError>,
) -> Result<T, ProtocolError> {
    let mut env = Envelope::default();
    parse_envelope_into(text, ErrorCode::InvalidMessage, &mut env)?;
    let reader = Reader {
        env: &env,
        code: ErrorCode::InvalidMessage,
    };
    let result = match env.ty {
        None => Err(ProtocolError::invalid_message("field `type` is required")),
        Some(raw) => match raw_str(raw, env.plain) {
            None => Err(ProtocolError::invalid_message(
                "field `type` must be a string",
            )),
            Some(ty) => decode_body(&ty, &reader),
        },
    };
    // The `requestId` is read only for an error: an accepted frame has read it already.
    result.map_err(|e| e.with_request_id(readable_request_id(&env)))
}

fn unknown_type(ty: &str, role: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownType,
        format!("a {role} may not send frames of type `{ty:.64}`"),
    )
}

impl BridgeToServer {
    /// Decodes a text frame a bridge sent.
    pub fn decode(text: &str, limits: &Limits) -> Result<Self, ProtocolError> {
        if let Some(answer) = written_ble_response(text, limits, None) {
            return Ok(Self::BleResponse(answer));
        }
        decode_frame(text, |ty, r| bridge_body(ty, r, limits))
    }

    /// [`decode`](Self::decode) for a connection that keeps `last`: the same frame or the
    /// same error for every text, but an answer naming the device the connection's
    /// previous answer named shares that answer's id instead of allocating another.
    ///
    /// A connection's answers almost always name a device it holds, most often the one
    /// its previous answer named (a phone of one device, always): resolved here in one
    /// comparison, without the per-thread cache of recent ids, which many connections of
    /// one device each would keep evicting from one another.
    pub fn decode_on_connection(
        text: &str,
        limits: &Limits,
        last: &mut LastDeviceId,
    ) -> Result<Self, ProtocolError> {
        if let Some(answer) = written_ble_response(text, limits, Some(last)) {
            return Ok(Self::BleResponse(answer));
        }
        decode_frame(text, |ty, r| bridge_body(ty, r, limits))
    }
}

/// The device id one connection's last answer named (see
/// [`BridgeToServer::decode_on_connection`]): one shared reference, so that the next
/// answer naming the same device shares it.
///
/// It only ever holds a valid id that a frame named, so an answer resolved through it is
/// exactly what [`DeviceId::new`] would make of the same text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastDeviceId(Option<DeviceId>);

impl LastDeviceId {
    /// The id of `s`: the one kept if it is the same text, otherwise
    /// [`DeviceId::new`]'s (through the per-thread cache), which is kept from now on.
    fn resolve(&mut self, s: &str) -> Result<DeviceId, crate::ValueError> {
        if let Some(id) = &self.0
            && id.as_str() == s
        {
            return Ok(id.clone());
        }
        let id = recent_device_id(s)?;
        self.0 = Some(id.clone());
        Ok(id)
    }

    /// The id kept, if any.
    pub fn get(&self) -> Option<&DeviceId> {
        self.0.as_ref()
    }
}

/// The valid `ble_response` exactly as [`BleResponse::write_frame_json`] writes it when no
/// string needs an escape (a phone's answer, one per command), read in one pass without
/// the envelope; `None` for any other text, which the general reader then reads.
///
/// Such text is one JSON object of four string fields, none of them twice, whose values
/// hold no escape: the general reader reads the same fields from it, with the same checks
/// in the same order, so an answer accepted here is the one it would return. Anything
/// refused (a bad id, bad hex, a payload over the limit) is left to it as well, so every
/// error keeps its code and message. The property tests
/// `written_answers_read_as_the_general_reader_reads_them` and
/// `mutated_answers_read_as_the_general_reader_reads_them` hold it to that.
///
/// The device id is resolved through `last` (see [`LastDeviceId`]) when there is one, which
/// keeps it; otherwise through the per-thread cache of recent ids.
fn written_ble_response(
    text: &str,
    limits: &Limits,
    last: Option<&mut LastDeviceId>,
) -> Option<BleResponse> {
    let mut fields = Fields::new(text);
    fields.literal(br#"{"type":"ble_response","requestId":""#)?;
    let request_id = RequestId::new(fields.string()?).ok()?;
    fields.literal(br#"","deviceId":""#)?;
    let device_id = fields.string()?;
    let device_id = match last {
        Some(last) => last.resolve(device_id),
        None => recent_device_id(device_id),
    }
    .ok()?;
    let outcome = if fields.literal(br#"","payload":""#).is_some() {
        BleOutcome::Payload(HexPayload::from_hex(fields.string()?, limits.max_payload_bytes).ok()?)
    } else {
        fields.literal(br#"","error":""#)?;
        BleOutcome::Error(DeviceErrorCode::new(fields.string()?).ok()?)
    };
    fields.literal(br#""}"#)?;
    fields.at_end().then_some(BleResponse {
        request_id,
        device_id,
        outcome,
    })
}

/// The body of a frame a bridge sent, by its `type`.
fn bridge_body(
    ty: &str,
    r: &Reader<'_, '_>,
    limits: &Limits,
) -> Result<BridgeToServer, ProtocolError> {
    match ty {
        "ble_response" => {
            let request_id = r.request_id()?;
            let device_id = r.device_id()?;
            let outcome = match (r.env.payload, r.env.error) {
                (Some(_), None) => BleOutcome::Payload(r.payload(limits)?),
                (None, Some(err)) => BleOutcome::Error(r.device_error(err)?),
                (Some(_), Some(_)) => {
                    return Err(ProtocolError::invalid_message(
                        "exactly one of `payload` and `error` must be present, not both",
                    ));
                }
                (None, None) => {
                    return Err(ProtocolError::invalid_message(
                        "exactly one of `payload` and `error` must be present",
                    ));
                }
            };
            Ok(BridgeToServer::BleResponse(BleResponse {
                request_id,
                device_id,
                outcome,
            }))
        }
        "ble_status" => {
            let device_id = r.device_id()?;
            let connected = r.req_bool(r.env.connected, "connected")?;
            let rssi = match r.env.rssi {
                None => None,
                Some(raw) => Some(
                    raw.parse::<i8>()
                        .map_err(|_| r.wrong_type("rssi", "an integer from -128 to 127"))?,
                ),
            };
            Ok(BridgeToServer::BleStatus(BleStatus {
                device_id,
                connected,
                rssi,
            }))
        }
        "ble_progress" => Ok(BridgeToServer::BleProgress(BleProgress {
            request_id: r.request_id()?,
            device_id: r.device_id()?,
            stage: r.reported_stage()?,
        })),
        "release" => Ok(BridgeToServer::Release(Release {
            device_id: r.device_id()?,
        })),
        "ping" => Ok(BridgeToServer::Ping),
        other => Err(unknown_type(other, "bridge")),
    }
}

impl UserToServer {
    /// Decodes a text frame a user sent.
    pub fn decode(text: &str, limits: &Limits) -> Result<Self, ProtocolError> {
        decode_frame(text, |ty, r| match ty {
            "subscribe" | "unsubscribe" => {
                let change = SubscriptionChange {
                    request_id: r.request_id()?,
                    device_id: r.device_id()?,
                };
                Ok(if ty == "subscribe" {
                    Self::Subscribe(change)
                } else {
                    Self::Unsubscribe(change)
                })
            }
            "command" => {
                let request_id = r.request_id()?;
                let device_id = r.device_id()?;
                let body = Reader {
                    env: r.env,
                    code: ErrorCode::InvalidRequest,
                };
                Ok(Self::Command(CommandFrame {
                    request_id,
                    device_id,
                    command: command_fields(&body, limits)?,
                }))
            }
            "ping" => Ok(Self::Ping),
            other => Err(unknown_type(other, "user")),
        })
    }
}

fn error_frame(r: &Reader<'_, '_>) -> Result<ErrorFrame, ProtocolError> {
    let code_text = r.req_str(r.env.code, "code")?;
    let code =
        serde_json::from_value::<ErrorCode>(serde_json::Value::String(code_text.into_owned()))
            .map_err(|_| r.wrong_type("code", "a known error code"))?;
    let message = r.opt_str(r.env.message, "message")?.unwrap_or_default();
    Ok(ErrorFrame {
        code,
        message: message.into_owned(),
        request_id: readable_request_id(r.env),
    })
}

impl ServerToBridge {
    /// Decodes a text frame the server sent to a bridge (the bridge side's entry point).
    ///
    /// The server chooses payload sizes, so no payload limit is applied here.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        decode_frame(text, to_bridge_body)
    }
}

/// The server chooses payload sizes, so decoders of its frames apply no payload limit.
const UNLIMITED: Limits = Limits {
    max_payload_bytes: usize::MAX,
};

/// The body of a frame the server sent to a bridge, by its `type`.
fn to_bridge_body(ty: &str, r: &Reader<'_, '_>) -> Result<ServerToBridge, ProtocolError> {
    match ty {
        "ble_write" => {
            let timeout = r.req_u64(r.env.timeout_ms, "timeoutMs")?;
            Ok(ServerToBridge::BleWrite(BleWrite {
                request_id: r.request_id()?,
                device_id: r.device_id()?,
                device_type: r.device_type()?,
                service_uuid: r.uuid(r.env.service_uuid, "serviceUuid")?,
                write_uuid: r.uuid(r.env.write_uuid, "writeUuid")?,
                listen_uuid: r.uuid(r.env.listen_uuid, "listenUuid")?,
                payload: r.payload(&UNLIMITED)?,
                timeout_ms: TimeoutMs::new(timeout).map_err(|e| r.invalid(&e))?,
            }))
        }
        "error" => Ok(ServerToBridge::Error(error_frame(r)?)),
        "pong" => Ok(ServerToBridge::Pong),
        other => Err(unknown_type(other, "server")),
    }
}

impl ServerToUser {
    /// Decodes a text frame the server sent to a user (the user side's entry point). A
    /// `type` the protocol does not define is an application event.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        decode_frame(text, to_user_body)
    }
}

/// The body of a frame the server sent to a user, by its `type`.
fn to_user_body(ty: &str, r: &Reader<'_, '_>) -> Result<ServerToUser, ProtocolError> {
    match ty {
        "device_status" => Ok(ServerToUser::DeviceStatus(DeviceStatus {
            device_id: r.device_id()?,
            online: r.req_bool(r.env.online, "online")?,
            ble_connected: r.opt_bool(r.env.ble_connected, "bleConnected")?,
        })),
        "command_result" => {
            let status_text = r.req_str(r.env.status, "status")?;
            let status = ResultStatus::from_wire(&status_text)
                .ok_or_else(|| r.wrong_type("status", "a known command status"))?;
            let request_id = r.env.request_id.map(|_| r.request_id()).transpose()?;
            let command_id = r
                .opt_str(r.env.command_id, "commandId")?
                .map(|s| CommandId::new(&s).map_err(|e| r.invalid(&e)))
                .transpose()?;
            let error = r.env.error.map(|raw| r.device_error(raw)).transpose()?;
            Ok(ServerToUser::CommandResult(CommandResult {
                request_id,
                command_id,
                device_id: r.device_id()?,
                status,
                payload: r.opt_payload(&UNLIMITED)?,
                error,
                hops: r.hops()?,
            }))
        }
        "ack" => Ok(ServerToUser::Ack(Ack {
            request_id: r.request_id()?,
        })),
        "error" => Ok(ServerToUser::Error(error_frame(r)?)),
        "pong" => Ok(ServerToUser::Pong),
        other if crate::frames::RESERVED_TYPES.contains(&other) => {
            Err(unknown_type(other, "server"))
        }
        other => Ok(ServerToUser::Event(AppEvent {
            event_type: EventType::new(other).map_err(|e| r.invalid(&e))?,
            device_id: r.device_id()?,
            data: event_data(r)?,
        })),
    }
}

impl StreamEvent {
    /// Decodes the `data:` object of a stream event (the stream client's entry point).
    pub fn decode(data: &str) -> Result<Self, ProtocolError> {
        decode_frame(data, |ty, r| {
            if ty == "overflow" {
                return Ok(Self::Overflow);
            }
            match to_user_body(ty, r)? {
                ServerToUser::DeviceStatus(f) => Ok(Self::DeviceStatus(f)),
                ServerToUser::Event(f) => Ok(Self::Event(f)),
                ServerToUser::CommandResult(f) => Ok(Self::CommandResult(f)),
                ServerToUser::Ack(_) | ServerToUser::Error(_) | ServerToUser::Pong => {
                    Err(unknown_type(ty, "stream"))
                }
            }
        })
    }
}

impl MqttBridgeFrame {
    /// Decodes a message a bridge published on its `up` topic: `hello`, `bye`, or any frame
    /// [`BridgeToServer::decode`] reads.
    pub fn decode(text: &str, limits: &Limits) -> Result<Self, ProtocolError> {
        if let Some(answer) = written_ble_response(text, limits, None) {
            return Ok(Self::Frame(BridgeToServer::BleResponse(answer)));
        }
        decode_frame(text, |ty, r| match ty {
            "hello" => Ok(Self::Hello(hello(r)?)),
            "bye" => Ok(Self::Bye),
            other => bridge_body(other, r, limits).map(Self::Frame),
        })
    }
}

impl MqttServerFrame {
    /// Decodes a message the server published on a bridge's `down` topic (the bridge side's
    /// entry point): `welcome`, or any frame [`ServerToBridge::decode`] reads.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        decode_frame(text, |ty, r| match ty {
            "welcome" => Ok(Self::Welcome),
            other => to_bridge_body(other, r).map(Self::Frame),
        })
    }
}

fn hello(r: &Reader<'_, '_>) -> Result<Hello, ProtocolError> {
    let token = r.opt_str(r.env.token, "token")?;
    let user_id = r.opt_str(r.env.user_id, "userId")?;
    let credentials = match (token, user_id) {
        (Some(_), Some(_)) => {
            return Err(ProtocolError::invalid_message(
                "a `hello` carries `token` or `userId`, not both",
            ));
        }
        (Some(token), None) => Token::new(token.into_owned()).map(Credentials::Token),
        (None, Some(user)) => Some(Credentials::UserId(
            UserId::new(&user).map_err(|e| r.invalid(&e))?,
        )),
        (None, None) => None,
    };
    let credentials = credentials.ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unauthorized,
            "a `hello` needs a `token` (or, in development mode, a `userId`)",
        )
    })?;
    let mut device_ids: Vec<DeviceId> = Vec::new();
    if let Some(raw) = r.env.device_ids {
        let items = serde_json::from_str::<Vec<Cow<'_, str>>>(raw)
            .map_err(|_| r.wrong_type("deviceIds", "an array of strings"))?;
        for item in items {
            let id = DeviceId::new(&item).map_err(|e| r.invalid(&e))?;
            if !device_ids.contains(&id) {
                device_ids.push(id);
            }
        }
    }
    Ok(Hello {
        credentials,
        device_ids,
    })
}

fn event_data(r: &Reader<'_, '_>) -> Result<Option<serde_json::Value>, ProtocolError> {
    r.env
        .data
        .map(|raw| {
            serde_json::from_str(raw)
                .map_err(|e| ProtocolError::new(r.code, format!("field `data`: {e}")))
        })
        .transpose()
}

/// The fields a command body and a `command` frame share (PROTOCOL.md 4.1).
fn command_fields(r: &Reader<'_, '_>, limits: &Limits) -> Result<CommandRequest, ProtocolError> {
    let device_type = r.env.device_type.map(|_| r.device_type()).transpose()?;
    let timeout_ms = match r.opt_u64(r.env.timeout_ms, "timeoutMs")? {
        Some(v) => TimeoutMs::new(v).map_err(|e| r.invalid(&e))?,
        None => TimeoutMs::DEFAULT,
    };
    let if_offline = match r.opt_str(r.env.if_offline, "ifOffline")?.as_deref() {
        None | Some("fail") => IfOffline::Fail,
        Some("queue") => IfOffline::Queue,
        Some(_) => return Err(r.wrong_type("ifOffline", "`fail` or `queue`")),
    };
    let command_type = r
        .opt_str(r.env.command_type, "commandType")?
        .map(|s| CommandType::new(&s).map_err(|e| r.invalid(&e)))
        .transpose()?;
    let ttl_seconds = match r.opt_u64(r.env.ttl_seconds, "ttlSeconds")? {
        Some(v) => TtlSeconds::new(v).map_err(|e| r.invalid(&e))?,
        None => TtlSeconds::DEFAULT,
    };
    let requires_confirmation = r
        .opt_bool(r.env.requires_confirmation, "requiresConfirmation")?
        .unwrap_or(false);
    if command_type.is_none() && (requires_confirmation || if_offline == IfOffline::Queue) {
        return Err(ProtocolError::new(
            r.code,
            "field `commandType` is required when `ifOffline` is `queue` or `requiresConfirmation` is true",
        ));
    }
    let payload = r.payload(limits)?;
    Ok(CommandRequest {
        device_type,
        payload,
        timeout_ms,
        if_offline,
        command_type,
        ttl_seconds,
        requires_confirmation,
    })
}

pub(crate) fn decode_command_body(
    body: &str,
    limits: &Limits,
) -> Result<CommandRequest, ProtocolError> {
    let mut env = Envelope::default();
    parse_envelope_into(body, ErrorCode::InvalidRequest, &mut env)?;
    command_fields(
        &Reader {
            env: &env,
            code: ErrorCode::InvalidRequest,
        },
        limits,
    )
}

pub(crate) fn decode_event_body(body: &str) -> Result<EventRequest, ProtocolError> {
    let env = parse_envelope(body, ErrorCode::InvalidRequest)?;
    let r = Reader {
        env: &env,
        code: ErrorCode::InvalidRequest,
    };
    let ty = r.req_str(env.ty, "type")?;
    Ok(EventRequest {
        event_type: EventType::new(&ty).map_err(|e| r.invalid(&e))?,
        data: event_data(&r)?,
    })
}

impl ProtocolError {
    /// The error for a binary WebSocket frame: `invalid_message`.
    pub fn binary_frame() -> Self {
        Self::invalid_message("binary frames are not accepted; send JSON in a text frame")
    }
}

/// Device ids this thread decoded lately, by a hash of their text: a frame naming a device
/// that a frame decoded on this thread named before shares its id instead of allocating one
/// (a phone answers every `ble_write` with a `ble_response` naming the device again).
const RECENT_DEVICE_IDS: usize = 32;

thread_local! {
    static RECENT: std::cell::RefCell<[Option<DeviceId>; RECENT_DEVICE_IDS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_DEVICE_IDS]) };
}

/// [`DeviceId::new`], sharing the id a recent call on this thread made for the same text:
/// the same result for every input, since equal text validates equally and only valid ids
/// are kept.
pub(crate) fn recent_device_id(s: &str) -> Result<DeviceId, crate::ValueError> {
    // The length and the last eight bytes (where ids such as `lock-17` differ), mixed.
    let bytes = s.as_bytes();
    let mut tail = [0u8; 8];
    let take = bytes.len().min(8);
    tail[..take].copy_from_slice(&bytes[bytes.len() - take..]);
    let mixed =
        (u64::from_le_bytes(tail) ^ (bytes.len() as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The top bits of the product, reduced to a slot index: the cast keeps what fits.
    #[allow(clippy::cast_possible_truncation)]
    let slot = (mixed >> 58) as usize % RECENT_DEVICE_IDS;
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some(id) = &recent[slot]
            && id.as_str() == s
        {
            return Ok(id.clone());
        }
        let id = DeviceId::new(s)?;
        recent[slot] = Some(id.clone());
        Ok(id)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Envelope, LastDeviceId, fast_envelope, raw_str, serde_envelope};
    use crate::{
        BleOutcome, BleResponse, BridgeToServer, DeviceId, ErrorCode, HexPayload, Limits,
        MqttBridgeFrame, ProtocolError, RequestId,
    };

    /// What serde reads, or `None` when it refuses the text.
    fn serde_reading(text: &str) -> Option<Envelope<'_>> {
        serde_envelope(text, ErrorCode::InvalidMessage).ok()
    }

    /// What the fast reader reads, with every string read as `raw_str` reads it when told
    /// the text is plain and when not (they must agree), and `plain` reset to compare with
    /// serde's reading.
    fn fast_reading(text: &str) -> Option<Envelope<'_>> {
        let mut env = fast_envelope(text)?;
        assert!(env.plain);
        for value in [
            env.ty,
            env.request_id,
            env.device_id,
            env.payload,
            env.error,
            env.timeout_ms,
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(raw_str(value, true), raw_str(value, false), "{text}");
        }
        env.plain = false;
        Some(env)
    }

    #[test]
    fn hot_shapes_take_the_fast_path() {
        for text in [
            r#"{"type":"ble_response","requestId":"0123456789abcdef0123456789abcdef","deviceId":"lock-1","payload":"0a0B"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","error":"gatt_write_failed"}"#,
            r#" { "payload" : "03" , "timeoutMs" : 5000, "ifOffline": null, "x": -12 } "#,
            r#"{"type":"ble_status","deviceId":"d","connected":true,"rssi":-60}"#,
            "{}",
        ] {
            let fast = fast_reading(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, serde_reading(text), "{text}");
        }
    }

    #[test]
    fn unusual_input_is_left_to_serde() {
        for text in [
            r#"{"type":"a","type":"b"}"#,
            r#"{"type":null,"type":"b"}"#,
            r#"{"requestId":"a\"b"}"#,
            r#"{"type\u0020":"x"}"#,
            r#"{"progress":{"receivedMs":1}}"#,
            r#"{"payload":"03",}"#,
            r#"{"timeoutMs":1.5}"#,
            r#"{"timeoutMs":01}"#,
            r#"{"timeoutMs":1e3}"#,
            "[1]",
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1} x"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
        ] {
            assert_eq!(fast_envelope(text), None, "{text}");
        }
        // A key the envelope does not know may repeat, as serde ignores it.
        let text = r#"{"x":1,"x":"y","payload":"03"}"#;
        assert!(fast_envelope(text).is_some());
        assert_eq!(fast_reading(text), serde_reading(text));
    }

    /// Pieces of JSON-like text, valid and not, around the envelope's keys.
    fn piece() -> impl Strategy<Value = String> {
        let keys = prop::sample::select(vec![
            r#""type""#,
            r#""requestId""#,
            r#""deviceId""#,
            r#""payload""#,
            r#""error""#,
            r#""timeoutMs""#,
            r#""connected""#,
            r#""rssi""#,
            r#""progress""#,
            r#""ifOffline""#,
            r#""requiresConfirmation""#,
            r#""other""#,
            r#""""#,
            r#""Type""#,
            r#""type ""#,
            r#""request\u0049d""#,
            r#""a\"b""#,
        ])
        .prop_map(str::to_owned);
        let values = prop::sample::select(vec![
            r#""ble_response""#,
            r#""abc""#,
            r#""""#,
            r#""é ü""#,
            r#""a\"b""#,
            r#""a\\b""#,
            r#""\u0041""#,
            "\"\u{1}\"",
            "\"\u{7f}\"",
            r#""unterminated"#,
            "true",
            "false",
            "null",
            "nul",
            "tru",
            "0",
            "-0",
            "-",
            "01",
            "-1",
            "123",
            "1.5",
            "1e5",
            "-1E-5",
            "18446744073709551616",
            "123456789012345678901234567890",
            "{}",
            r#"{"a":1}"#,
            "[]",
            "[1,2]",
            "NaN",
        ])
        .prop_map(str::to_owned);
        let ws = prop::sample::select(vec!["", " ", "\t", "\n", "\r", "  ", "\u{a0}"])
            .prop_map(str::to_owned);
        let punct = prop::sample::select(vec!["{", "}", ":", ",", "\"", "[", "]", "x", "\\"])
            .prop_map(str::to_owned);
        prop_oneof![
            4 => keys,
            4 => values,
            3 => ws,
            2 => punct,
            1 => "[ -~]{0,6}",
        ]
    }

    /// A value that is mostly well-formed, sometimes not.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z0-9_-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_owned),
            2 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => "-?[0-9]{1,3}(\\.[0-9])?([eE][+-]?[0-9])?",
            1 => "[0-9]{18,24}",
            3 => piece(),
        ]
    }

    /// Objects of key/value entries with whitespace, sometimes corrupted by a stray piece;
    /// few keys, so that keys repeat.
    fn object() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            6 => prop::sample::select(vec![
                "type", "requestId", "deviceId", "payload", "timeoutMs", "other", "Type",
            ])
            .prop_map(|k| format!("\"{k}\"")),
            1 => piece(),
        ];
        let ws = || prop::sample::select(vec!["", "", " ", "\t", "\n", "\r"]);
        let entry = (
            ws(),
            key,
            ws(),
            value(),
            ws(),
            prop::option::weighted(0.1, piece()),
        )
            .prop_map(|(ws1, key, ws2, value, ws3, stray)| {
                let stray = stray.unwrap_or_default();
                format!("{ws1}{key}{ws2}:{ws3}{value}{stray}{ws1}")
            });
        (
            proptest::collection::vec(entry, 0..6),
            ws(),
            prop::option::weighted(0.1, piece()),
        )
            .prop_map(|(entries, ws, tail)| {
                format!(
                    "{ws}{{{}}}{ws}{}",
                    entries.join(","),
                    tail.unwrap_or_default()
                )
            })
    }

    proptest! {
        /// The recent-id cache answers exactly what `DeviceId::new` answers, for any text
        /// (valid or not, long, with control characters), in any order and repeated, and a
        /// hit shares the earlier id.
        #[test]
        fn recent_device_ids_are_exactly_what_device_id_new_makes(
            texts in proptest::collection::vec(
                prop_oneof![
                    "lock-[0-9]{1,3}",
                    "[a-z0-9]{0,3}",
                    "\\PC{0,140}",
                    ".{0,10}",
                    "[\\x00-\\x1f\\x7f]{0,3}[a-z]{0,3}",
                ],
                1..60,
            ),
            repeat in 1usize..3,
        ) {
            for _ in 0..repeat {
                for text in &texts {
                    let cached = super::recent_device_id(text);
                    prop_assert_eq!(&cached, &crate::DeviceId::new(text));
                    if let Ok(id) = cached {
                        prop_assert_eq!(id.as_str(), text.as_str());
                    }
                }
            }
        }
    }

    /// The general reader of bridge frames, without the phone's-answer fast path.
    fn general_bridge_reading(
        text: &str,
        limits: &Limits,
    ) -> Result<BridgeToServer, ProtocolError> {
        super::decode_frame(text, |ty, r| super::bridge_body(ty, r, limits))
    }

    /// What `BridgeToServer::decode` and `MqttBridgeFrame::decode` answer for `text` is what
    /// the general reader answers, value or error (message and `requestId` included); and
    /// when the fast path takes the text, it reads the general reader's answer.
    fn assert_reads_as_general_reader(text: &str, limits: &Limits) -> Result<(), TestCaseError> {
        let general = general_bridge_reading(text, limits);
        prop_assert_eq!(&BridgeToServer::decode(text, limits), &general, "{}", text);
        let mqtt = MqttBridgeFrame::decode(text, limits).map(|frame| match frame {
            MqttBridgeFrame::Frame(frame) => Some(frame),
            _ => None,
        });
        // `hello` and `bye` are MQTT's own, and `unknown_type` for the WebSocket reader.
        let mqtt_only = matches!(&general, Err(e) if e.code == ErrorCode::UnknownType);
        if !mqtt_only {
            prop_assert_eq!(mqtt, general.clone().map(Some), "{}", text);
        }
        // A connection's reader answers the same, whatever id its previous answer named.
        for before in ["lock-1", "lock-17", "d"] {
            let mut last = LastDeviceId(crate::DeviceId::new(before).ok());
            prop_assert_eq!(
                &BridgeToServer::decode_on_connection(text, limits, &mut last),
                &general,
                "{}",
                text
            );
        }
        if let Some(fast) = super::written_ble_response(text, limits, None) {
            prop_assert_eq!(Ok(BridgeToServer::BleResponse(fast)), general, "{}", text);
        }
        Ok(())
    }

    proptest! {
        /// Frames read one after another on one connection (answers naming a few devices,
        /// valid or not, escaped or not, other frames, garbage) read exactly as `decode`
        /// reads each; the id kept is the last accepted answer's (their payloads are all
        /// valid), and an answer naming the kept device shares its id.
        #[test]
        fn a_connections_frames_read_as_decode_reads_them(
            frames in proptest::collection::vec(
                prop_oneof![
                    6 => prop::sample::select(vec!["lock-1", "lock-2", "lock-17", "", "lock\\u0007", "lock\\1", "lock\u{7}"])
                        .prop_map(|device| format!(
                            r#"{{"type":"ble_response","requestId":"r1","deviceId":"{device}","payload":"03"}}"#
                        )),
                    1 => prop::sample::select(vec!["lock-1", "lock-3"]).prop_map(|device| format!(
                        r#"{{"type":"ble_status","deviceId":"{device}","connected":true}}"#
                    )),
                    1 => "\\PC{0,20}",
                ],
                1..40,
            ),
        ) {
            let limits = Limits::default();
            let mut last = LastDeviceId::default();
            for text in &frames {
                let kept = last.clone();
                let read = BridgeToServer::decode_on_connection(text, &limits, &mut last);
                prop_assert_eq!(&read, &BridgeToServer::decode(text, &limits), "{}", text);
                if let Ok(BridgeToServer::BleResponse(answer)) = &read {
                    prop_assert_eq!(last.get(), Some(&answer.device_id));
                    if let Some(kept) = kept.get().filter(|id| **id == answer.device_id) {
                        prop_assert!(std::ptr::eq(kept.as_str(), answer.device_id.as_str()));
                    }
                } else {
                    prop_assert_eq!(&last, &kept);
                }
            }
        }
    }

    /// A phone's answer as it writes it, with typical ids: the one frame per command.
    fn written_answer(payload: &[u8]) -> (BleResponse, String) {
        let answer = BleResponse {
            request_id: RequestId::from_u128_hex(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            device_id: DeviceId::new("lock-17").unwrap(),
            outcome: BleOutcome::Payload(HexPayload::from_bytes(payload.to_vec())),
        };
        let mut buf = Vec::new();
        answer.write_frame_json(&mut buf);
        (answer, String::from_utf8(buf).unwrap())
    }

    #[test]
    fn the_answers_a_phone_writes_take_the_fast_path() {
        let limits = Limits::default();
        let (answer, text) = written_answer(&[0x03, 0xab]);
        assert_eq!(
            super::written_ble_response(&text, &limits, None),
            Some(answer.clone())
        );
        assert_eq!(
            BridgeToServer::decode(&text, &limits),
            Ok(BridgeToServer::BleResponse(answer))
        );
        let error = r#"{"type":"ble_response","requestId":"r1","deviceId":"d","error":"gatt_write_failed"}"#;
        assert!(super::written_ble_response(error, &limits, None).is_some());
        assert_eq!(
            BridgeToServer::decode(error, &limits),
            general_bridge_reading(error, &limits)
        );
    }

    #[test]
    fn answers_in_another_shape_or_refused_are_left_to_the_general_reader() {
        let limits = Limits {
            max_payload_bytes: 1,
        };
        for text in [
            // Other order, whitespace, escapes, trailing data, another field, `null`.
            r#"{"requestId":"r1","type":"ble_response","deviceId":"d","payload":"03"}"#,
            r#"{"type":"ble_response", "requestId":"r1","deviceId":"d","payload":"03"}"#,
            r#"{"type":"ble_response","requestId":"r\u0031","deviceId":"d","payload":"03"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"03"} "#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"03","x":1}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","error":null}"#,
            // Both outcomes, a key twice.
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"03","error":"e"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"03","payload":"04"}"#,
            // Values the rules refuse: the general reader words the error.
            r#"{"type":"ble_response","requestId":"","deviceId":"d","payload":"03"}"#,
            r#"{"type":"ble_response","requestId":"é","deviceId":"d","payload":"03"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"","payload":"03"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"0"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"0g"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","payload":"0304"}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d","error":""}"#,
            r#"{"type":"ble_response","requestId":"r1","deviceId":"d"}"#,
        ] {
            assert_eq!(
                super::written_ble_response(text, &limits, None),
                None,
                "{text}"
            );
            assert_reads_as_general_reader(text, &limits).unwrap();
        }
    }

    #[test]
    fn a_connections_answers_share_the_id_of_its_previous_answer() {
        let limits = Limits::default();
        let (answer, text) = written_answer(&[0x03]);
        let mut last = LastDeviceId::default();
        let ids: Vec<DeviceId> = (0..2)
            .map(
                |_| match BridgeToServer::decode_on_connection(&text, &limits, &mut last) {
                    Ok(BridgeToServer::BleResponse(read)) => {
                        assert_eq!(read, answer);
                        read.device_id
                    }
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert!(std::ptr::eq(ids[0].as_str(), ids[1].as_str()));
        assert!(std::ptr::eq(last.get().unwrap().as_str(), ids[0].as_str()));
        // Another device replaces the one kept; a refused id keeps it.
        let other = text.replace("lock-17", "lock-18");
        BridgeToServer::decode_on_connection(&other, &limits, &mut last).unwrap();
        assert_eq!(last.get().map(DeviceId::as_str), Some("lock-18"));
        let refused = text.replace("lock-17", "");
        assert!(BridgeToServer::decode_on_connection(&refused, &limits, &mut last).is_err());
        assert_eq!(last.get().map(DeviceId::as_str), Some("lock-18"));
    }

    #[test]
    fn a_recent_device_id_is_shared_not_allocated_again() {
        let first = super::recent_device_id("lock-1").unwrap();
        let again = super::recent_device_id("lock-1").unwrap();
        assert!(std::ptr::eq(first.as_str(), again.as_str()));
        assert!(super::recent_device_id("").is_err());
        assert!(super::recent_device_id("lock\u{7}").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whenever the fast reader accepts a text, serde accepts it too and reads the same
        /// fields with the same raw values; otherwise the decoders use serde's reading.
        #[test]
        fn fast_envelope_reads_as_serde_does(text in object()) {
            if let Some(fast) = fast_reading(&text) {
                prop_assert_eq!(Some(fast), serde_reading(&text), "{}", text);
            }
        }

        /// Strings of every length with quotes, backslashes, control and non-ASCII
        /// characters anywhere (the eight-byte scan's edges included).
        #[test]
        fn fast_envelope_reads_strings_as_serde_does(
            chars in proptest::collection::vec(
                prop_oneof![
                    8 => "[a-z0-9]",
                    1 => prop::sample::select(vec!["\"", "\\", "\u{1}", "\u{1f}", "\u{7f}", "é", "€", " "])
                        .prop_map(str::to_owned),
                ],
                0..40,
            ),
            key in prop::sample::select(vec!["requestId", "x"]),
        ) {
            let text = format!("{{\"{key}\":\"{}\",\"type\":\"t\"}}", chars.concat());
            if let Some(fast) = fast_reading(&text) {
                prop_assert_eq!(Some(fast), serde_reading(&text), "{}", text);
            }
        }

        /// Answers in the shape a phone writes, with any text where the ids, the payload
        /// and the error go (valid or not, quotes, escapes, control characters, odd or
        /// upper-case hex, over the limit): read as the general reader reads them.
        #[test]
        fn written_answers_read_as_the_general_reader_reads_them(
            request_id in prop_oneof![
                4 => "[0-9a-f]{32}",
                2 => "[ -~]{0,66}",
                1 => "\\PC{0,8}",
                1 => prop::sample::select(vec!["a\\\"b", "a\\u0041", "\u{1}", "\u{7f}", "é"])
                    .prop_map(str::to_owned),
            ],
            device_id in prop_oneof![
                4 => "lock-[0-9]{1,3}",
                2 => "\\PC{0,130}",
                1 => "[\\x00-\\x1f\\x7f\"\\\\]{0,2}[a-z]{0,2}",
            ],
            outcome in prop_oneof![
                4 => "([0-9a-fA-F]{2}){0,24}".prop_map(|hex| format!(",\"payload\":\"{hex}\"")),
                1 => "[0-9a-gA-G\"\\\\ ]{0,9}".prop_map(|hex| format!(",\"payload\":\"{hex}\"")),
                1 => "[a-z_]{0,70}".prop_map(|code| format!(",\"error\":\"{code}\"")),
                1 => "\\PC{0,8}".prop_map(|code| format!(",\"error\":\"{code}\"")),
            ],
            max_payload_bytes in prop_oneof![3 => Just(512usize), 1 => 0usize..30],
        ) {
            let text = format!(
                "{{\"type\":\"ble_response\",\"requestId\":\"{request_id}\",\"deviceId\":\"{device_id}\"{outcome}}}"
            );
            assert_reads_as_general_reader(&text, &Limits { max_payload_bytes })?;
        }

        /// A written answer with a piece of text cut out, put in or put instead, anywhere:
        /// read as the general reader reads it.
        #[test]
        fn mutated_answers_read_as_the_general_reader_reads_them(
            payload in proptest::collection::vec(any::<u8>(), 0..30),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0usize..4, prop_oneof![
                    3 => piece(),
                    1 => prop::sample::select(vec![
                        "", "}", "\"", ",", " ", "\\", "\"}", "0", "g", "é",
                        r#","payload":"03""#, r#","error":"e""#, r#""requestId""#, "null",
                    ]).prop_map(str::to_owned),
                ]),
                1..3,
            ),
            max_payload_bytes in prop_oneof![3 => Just(512usize), 1 => 0usize..30],
        ) {
            let (_, mut text) = written_answer(&payload);
            for (at, cut, put) in edits {
                let chars: Vec<char> = text.chars().collect();
                let start = at.index(chars.len() + 1);
                let end = (start + cut).min(chars.len());
                text = chars[..start].iter().collect::<String>()
                    + &put
                    + &chars[end..].iter().collect::<String>();
            }
            assert_reads_as_general_reader(&text, &Limits { max_payload_bytes })?;
        }

        #[test]
        fn fast_envelope_reads_as_serde_does_on_any_text(
            text in proptest::collection::vec(piece(), 0..24).prop_map(|p| p.concat())
        ) {
            if let Some(fast) = fast_reading(&text) {
                prop_assert_eq!(Some(fast), serde_reading(&text), "{}", text);
            }
        }
    }
}

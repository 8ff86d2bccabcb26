//! Validated values: payloads, timeouts, TTLs and timestamps.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value was refused. The message is written for the developer of the peer that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// An empty string where at least one character is required.
    #[error("{what} must not be empty")]
    Empty {
        /// The field's wire name.
        what: &'static str,
    },
    /// A string longer than its limit.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// The field's wire name.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} may contain only {allowed}")]
    ForbiddenChar {
        /// The field's wire name.
        what: &'static str,
        /// The allowed set, in words.
        allowed: &'static str,
    },
    /// A payload that is not an even-length hex string.
    #[error("payload must be an even-length hex string")]
    NotHex,
    /// A payload over the configured size limit.
    #[error("payload of {len} bytes is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// The decoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A number outside its documented range.
    #[error("{what} must be between {min} and {max}")]
    OutOfRange {
        /// The field's wire name.
        what: &'static str,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A timestamp that is not RFC 3339.
    #[error("not an RFC 3339 timestamp")]
    NotTimestamp,
}

/// Size limits that the decoders enforce. Defaults are those of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted payload, in decoded bytes (default 512).
    pub max_payload_bytes: usize,
}

impl Limits {
    /// The default payload limit of PROTOCOL.md section 3: 512 decoded bytes.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 512;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Bytes to write to, or read from, a BLE device.
///
/// On the wire a hex string: case-insensitive on input, lower-case on output, even length.
/// Held as bytes, so it is decoded once at the edge and never re-parsed. A payload decoded
/// from hex of up to [`HexPayload::INLINE_BYTES`] bytes (a typical BLE command or reply) is
/// held inline, without a heap allocation; equality and hashing are those of the bytes,
/// however they are held.
#[derive(Clone, Default)]
pub struct HexPayload(Repr);

/// Where a payload's bytes live.
#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; HexPayload::INLINE_BYTES],
    },
    /// On the heap.
    Heap(Vec<u8>),
}

impl Default for Repr {
    fn default() -> Self {
        Self::Inline {
            len: 0,
            bytes: [0; HexPayload::INLINE_BYTES],
        }
    }
}

impl PartialEq for HexPayload {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HexPayload {}

impl std::hash::Hash for HexPayload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl HexPayload {
    /// The longest payload [`HexPayload::from_hex`] holds without a heap allocation.
    pub const INLINE_BYTES: usize = 22;

    /// Wraps bytes the server produced itself. Size limits apply to input, not to this.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Repr::Heap(bytes.into()))
    }

    /// Decodes a hex string of at most `max_bytes` decoded bytes.
    pub fn from_hex(hex: &str, max_bytes: usize) -> Result<Self, ValueError> {
        let raw = hex.as_bytes();
        if !raw.len().is_multiple_of(2) {
            return Err(ValueError::NotHex);
        }
        let len = raw.len() / 2;
        if len > max_bytes {
            return Err(ValueError::PayloadTooLarge {
                len,
                max: max_bytes,
            });
        }
        if len <= Self::INLINE_BYTES {
            let mut bytes = [0u8; Self::INLINE_BYTES];
            decode_hex_pairs(raw, &mut bytes[..len])?;
            return Ok(Self(Repr::Inline {
                // `len <= INLINE_BYTES` (22): the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                len: len as u8,
                bytes,
            }));
        }
        let mut out = vec![0u8; len];
        decode_hex_pairs(raw, &mut out)?;
        Ok(Self(Repr::Heap(out)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// Takes the bytes out.
    pub fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Repr::Inline { .. } => self.as_bytes().to_vec(),
            Repr::Heap(bytes) => bytes,
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The lower-case hex form used on the wire.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

/// The value of each byte as a hex digit (either case), or [`NOT_A_DIGIT`] for a byte that
/// is not one.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut i: u8 = 0;
    while i < 10 {
        table[(b'0' + i) as usize] = i;
        i += 1;
    }
    let mut i: u8 = 0;
    while i < 6 {
        table[(b'a' + i) as usize] = 10 + i;
        table[(b'A' + i) as usize] = 10 + i;
        i += 1;
    }
    table
};

/// What [`HEX_DIGITS`] holds for a byte that is not a hex digit: its high bits are never
/// set by a digit (0 to 15).
const NOT_A_DIGIT: u8 = 0xF0;

/// Decodes the pairs of hex digits of `raw` into `out` (one byte per pair, `raw` twice as
/// long). Any byte that is not a hex digit makes it `NotHex`: the digits are looked up in
/// one pass without a branch per digit, and checked once at the end.
fn decode_hex_pairs(raw: &[u8], out: &mut [u8]) -> Result<(), ValueError> {
    let mut seen = 0u8;
    for (byte, pair) in out.iter_mut().zip(raw.chunks_exact(2)) {
        let hi = HEX_DIGITS[usize::from(pair[0])];
        let lo = HEX_DIGITS[usize::from(pair[1])];
        seen |= hi | lo;
        *byte = (hi << 4) | lo;
    }
    if seen & NOT_A_DIGIT == 0 {
        Ok(())
    } else {
        Err(ValueError::NotHex)
    }
}

impl fmt::Display for HexPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 128];
        for chunk in self.as_bytes().chunks(buf.len() / 2) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = DIGITS[usize::from(b >> 4)];
                buf[2 * i + 1] = DIGITS[usize::from(b & 0xF)];
            }
            // Only ASCII hex digits were written.
            f.write_str(std::str::from_utf8(&buf[..chunk.len() * 2]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for HexPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexPayload({self})")
    }
}

impl From<Vec<u8>> for HexPayload {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Repr::Heap(bytes))
    }
}

impl Serialize for HexPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserializes any even-length hex string, with no size limit: this is for reading what a
/// trusted peer wrote (a server's answer, a stored command). Input from clients goes through
/// the decoders of [`crate::decode`], which apply the configured [`Limits`].
impl<'de> Deserialize<'de> for HexPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&s, usize::MAX).map_err(serde::de::Error::custom)
    }
}

macro_rules! bounded_number {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:expr, $max:expr, $default:expr, $unit:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $name {
            /// Smallest accepted value.
            pub const MIN: u32 = $min;
            /// Largest accepted value.
            pub const MAX: u32 = $max;
            /// The documented default.
            pub const DEFAULT: Self = Self($default);

            /// Validates `value`.
            pub fn new(value: u64) -> Result<Self, ValueError> {
                if (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&value) {
                    // In range, so it fits in u32.
                    Ok(Self(u32::try_from(value).unwrap_or(Self::MAX)))
                } else {
                    Err(ValueError::OutOfRange {
                        what: $what,
                        min: u64::from(Self::MIN),
                        max: u64::from(Self::MAX),
                    })
                }
            }

            /// The raw number.
            pub fn get(self) -> u32 {
                self.0
            }

            /// As a duration.
            pub fn as_duration(self) -> Duration {
                Duration::$unit(u64::from(self.0))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::DEFAULT
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u32(self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Self::new(u64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

bounded_number!(
    /// How long to wait for a device's reply, in milliseconds: 1 to 120000, default 10000.
    TimeoutMs,
    "timeoutMs",
    1,
    120_000,
    10_000,
    from_millis
);
bounded_number!(
    /// How long a queued command stays deliverable, in seconds: 1 to 604800 (a week),
    /// default 3600.
    TtlSeconds,
    "ttlSeconds",
    1,
    604_800,
    3_600,
    from_secs
);

impl TimeoutMs {
    /// The timeout for a remaining wait, rounded up to whole milliseconds and clamped to the
    /// accepted range. Used for the `timeoutMs` of a `ble_write`.
    pub fn saturating_from_duration(remaining: Duration) -> Self {
        let ms = remaining.as_nanos().div_ceil(1_000_000);
        let ms = u32::try_from(ms).unwrap_or(Self::MAX);
        Self(ms.clamp(Self::MIN, Self::MAX))
    }
}

/// A point in time, in milliseconds since the Unix epoch, written as an RFC 3339 string in UTC
/// on the wire (`2026-11-23T06:37:11.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// This time plus `d` (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Parses an RFC 3339 timestamp (`Z` or a numeric offset; fractional seconds to
    /// millisecond precision).
    pub fn parse_rfc3339(s: &str) -> Result<Self, ValueError> {
        parse_rfc3339(s).ok_or(ValueError::NotTimestamp)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Self(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

// Howard Hinnant's civil-date algorithms (public domain).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - u32::try_from(frac.len()).ok()?);
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(Timestamp(secs * 1_000 + millis))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000);
        let millis = self.0.rem_euclid(1_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3_600,
            (rem % 3_600) / 60,
            rem % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_case_insensitive_in_and_lower_case_out() {
        let p = HexPayload::from_hex("AaBbCcDd", 512).unwrap();
        assert_eq!(p.as_bytes(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(p.to_hex(), "aabbccdd");
    }

    #[test]
    fn hex_rejects_odd_length_non_hex_and_oversize() {
        assert_eq!(HexPayload::from_hex("abc", 512), Err(ValueError::NotHex));
        assert_eq!(HexPayload::from_hex("zz", 512), Err(ValueError::NotHex));
        assert_eq!(HexPayload::from_hex("+1", 512), Err(ValueError::NotHex));
        assert_eq!(
            HexPayload::from_hex(&"00".repeat(513), 512),
            Err(ValueError::PayloadTooLarge { len: 513, max: 512 })
        );
        assert_eq!(
            HexPayload::from_hex(&"00".repeat(512), 512).unwrap().len(),
            512
        );
    }

    /// The digit-by-digit reading `from_hex` did before its table: the reference it is
    /// held to.
    fn from_hex_digit_by_digit(hex: &str, max_bytes: usize) -> Result<Vec<u8>, ValueError> {
        let digit = |b: u8| match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(ValueError::NotHex),
        };
        let raw = hex.as_bytes();
        if !raw.len().is_multiple_of(2) {
            return Err(ValueError::NotHex);
        }
        let len = raw.len() / 2;
        if len > max_bytes {
            return Err(ValueError::PayloadTooLarge {
                len,
                max: max_bytes,
            });
        }
        raw.chunks_exact(2)
            .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect()
    }

    proptest::proptest! {
        /// Any text (hex digits of either case, the bytes next to them in ASCII, anything
        /// else), inline or on the heap, under or over the limit: the same bytes or the
        /// same error as the digit-by-digit reading.
        #[test]
        fn hex_reads_as_digit_by_digit(
            hex in proptest::prop_oneof![
                4 => "[0-9a-fA-F]{0,60}",
                2 => "[0-9a-fA-F/:@G`g]{0,60}",
                1 => "\\PC{0,30}",
            ],
            max_bytes in proptest::prop_oneof![3 => proptest::strategy::Just(512usize), 1 => 0usize..40],
        ) {
            let table = HexPayload::from_hex(&hex, max_bytes).map(HexPayload::into_bytes);
            proptest::prop_assert_eq!(table, from_hex_digit_by_digit(&hex, max_bytes), "{}", hex);
        }
    }

    #[test]
    fn empty_payload_is_valid() {
        assert!(HexPayload::from_hex("", 512).unwrap().is_empty());
    }

    #[test]
    fn long_payload_displays_across_buffer_chunks() {
        let bytes: Vec<u8> = (0..=255).collect();
        let p = HexPayload::from_bytes(bytes.clone());
        let hex = p.to_hex();
        assert_eq!(hex.len(), 512);
        assert_eq!(
            HexPayload::from_hex(&hex, 512).unwrap().as_bytes(),
            &bytes[..]
        );
    }

    #[test]
    fn timeouts_follow_documented_bounds() {
        assert!(TimeoutMs::new(0).is_err());
        assert_eq!(TimeoutMs::new(1).unwrap().get(), 1);
        assert_eq!(TimeoutMs::new(120_000).unwrap().get(), 120_000);
        assert!(TimeoutMs::new(120_001).is_err());
        assert_eq!(TimeoutMs::default().get(), 10_000);
        assert!(TtlSeconds::new(604_801).is_err());
        assert_eq!(TtlSeconds::default().get(), 3_600);
        assert_eq!(
            TimeoutMs::saturating_from_duration(Duration::from_micros(1_500)).get(),
            2
        );
        assert_eq!(TimeoutMs::saturating_from_duration(Duration::ZERO).get(), 1);
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp::from_unix_millis(1_795_415_831_123);
        let s = t.to_string();
        assert_eq!(s, "2026-11-23T06:37:11.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), t);
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-23T07:37:11.123+01:00").unwrap(),
            t
        );
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            Timestamp::from_unix_millis(0)
        );
        assert!(Timestamp::parse_rfc3339("2026-13-01T00:00:00Z").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}

//! Validated identifiers and short strings of the wire protocol.
//!
//! Every identifier a peer sends is checked once, at the edge, and then travels as a type
//! that cannot hold an invalid value. Constructors return [`ValueError`], which says what
//! was wrong in words a client developer can act on.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ValueError;

/// Longest accepted request id, in bytes (PROTOCOL.md 3.1 and 3.5).
pub const MAX_REQUEST_ID_LEN: usize = 64;
/// Longest accepted device id, in characters (Unicode scalar values).
pub const MAX_DEVICE_ID_CHARS: usize = 128;
/// Longest accepted short name (device type, command type, command id, BLE error code, event type).
pub const MAX_NAME_CHARS: usize = 64;

/// The id that correlates a request with its answer.
///
/// An opaque ASCII string of 1 to [`MAX_REQUEST_ID_LEN`] printable characters (`0x20..=0x7E`),
/// echoed byte for byte by the peer. Stored inline (no heap allocation), so creating,
/// copying, hashing and comparing one is cheap on the command hot path.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID_LEN],
}

impl RequestId {
    /// Validates `s` as a request id.
    pub fn new(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "requestId";
        if s.is_empty() {
            return Err(ValueError::Empty { what: WHAT });
        }
        if s.len() > MAX_REQUEST_ID_LEN {
            return Err(ValueError::TooLong {
                what: WHAT,
                max: MAX_REQUEST_ID_LEN,
            });
        }
        if !is_printable_ascii(s.as_bytes()) {
            return Err(ValueError::ForbiddenChar {
                what: WHAT,
                allowed: "printable ASCII",
            });
        }
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self {
            // `s.len() <= 64` was checked above, so this cannot truncate.
            len: u8::try_from(s.len()).unwrap_or(u8::MAX),
            bytes,
        })
    }

    /// Builds a request id from a `u128` rendered as 32 lower-case hex digits.
    ///
    /// Infallible and allocation-free: meant for generators of server-chosen ids. The digits
    /// are made eight at a time with word arithmetic (this runs once per command).
    pub fn from_u128_hex(value: u128) -> Self {
        let mut bytes = [0u8; MAX_REQUEST_ID_LEN];
        for (i, chunk) in bytes[..32].chunks_exact_mut(8).enumerate() {
            // The i-th group of eight digits, most significant first.
            let shift = 96 - 32 * i;
            #[allow(clippy::cast_possible_truncation)] // masked to 32 bits
            let word = ((value >> shift) & 0xFFFF_FFFF) as u32;
            chunk.copy_from_slice(&hex8(word));
        }
        Self { len: 32, bytes }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored, which is valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for RequestId {}
impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}
impl PartialOrd for RequestId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RequestId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl Borrow<str> for RequestId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl FromStr for RequestId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}
impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The eight lower-case hex digits of `word`, most significant first, computed all at
/// once on a `u64` (one digit per byte).
pub(crate) fn hex8(word: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Spread the eight nibbles into the eight bytes, the first digit in the top byte.
    let x = u64::from(word);
    let x = ((x << 16) | x) & 0x0000_FFFF_0000_FFFF;
    let x = ((x << 8) | x) & 0x00FF_00FF_00FF_00FF;
    let x = ((x << 4) | x) & 0x0F0F_0F0F_0F0F_0F0F;
    // A nibble of 10 or more sets bit 4 once 6 is added (no byte carries into the next):
    // those become `a`-`f` ('a' - '0' - 10 = 39 more), the others `0`-`9`.
    let letters = ((x + ONES * 6) >> 4) & ONES;
    (x + ONES * u64::from(b'0') + letters * 39).to_be_bytes()
}

/// Whether every byte is printable ASCII (`0x20..=0x7E`): one pass without early exit,
/// which the compiler can vectorize (ids are short and almost always valid).
fn is_printable_ascii(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(0u8, |acc, &b| acc | u8::from(!(0x20..=0x7E).contains(&b)))
        == 0
}

/// Whether `s` holds a control character (`char::is_control`: U+0000–U+001F, U+007F and
/// U+0080–U+009F). ASCII text, the common case, is checked byte by byte without decoding
/// characters.
fn has_control_char(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes()
            .fold(0u8, |acc, b| acc | u8::from(b < 0x20 || b == 0x7F))
            != 0
    } else {
        s.chars().any(char::is_control)
    }
}

/// Checks the rule shared by device ids and short names: 1 to `max` characters, none of them
/// a control character.
fn check_name(s: &str, what: &'static str, max: usize) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty { what });
    }
    // Cheap byte-length pre-check: a string of at most `max` bytes has at most `max` chars.
    if s.len() > max && s.chars().count() > max {
        return Err(ValueError::TooLong { what, max });
    }
    if has_control_char(s) {
        return Err(ValueError::ForbiddenChar {
            what,
            allowed: "printable characters (no control characters)",
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        ///
        /// Cloning is cheap (a reference count), so the value can be shared across maps and tasks.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The protocol's name for this value, used in error messages.
            pub const WHAT: &'static str = $what;
            /// The most characters a value may have.
            pub const MAX_CHARS: usize = $max;

            /// Validates `s`.
            pub fn new(s: &str) -> Result<Self, ValueError> {
                check_name(s, $what, $max)?;
                Ok(Self(Arc::from(s)))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $name {
            type Error = ValueError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_name(&s, $what, $max)?;
                Ok(Self(Arc::from(s)))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The id of a BLE device: 1 to 128 characters, no control characters.
    DeviceId,
    "deviceId",
    MAX_DEVICE_ID_CHARS
);
name_type!(
    /// The id of a user (`userId` of development mode, a token's `sub`): 1 to 128
    /// characters, no control characters.
    UserId,
    "userId",
    MAX_DEVICE_ID_CHARS
);
name_type!(
    /// The name of a device type in the [`ConfigRegistry`](crate::ConfigRegistry):
    /// 1 to 64 characters, no control characters.
    DeviceType,
    "deviceType",
    MAX_NAME_CHARS
);
name_type!(
    /// The dedup key of a queued command (PROTOCOL.md 4.2): 1 to 64 characters, no control
    /// characters.
    CommandType,
    "commandType",
    MAX_NAME_CHARS
);
name_type!(
    /// The id a queue store gives a queued command: 1 to 64 characters, no control characters.
    CommandId,
    "commandId",
    MAX_NAME_CHARS
);
name_type!(
    /// The short error code a bridge reports for a failed BLE operation, such as
    /// `gatt_write_failed`: 1 to 64 characters, no control characters.
    DeviceErrorCode,
    "error",
    MAX_NAME_CHARS
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The byte checks say what the character-by-character rules say, for any text
        /// (ASCII, control characters, C1 controls, other non-ASCII).
        #[test]
        fn character_checks_agree_with_their_definitions(
            s in "(\\PC|\\p{Cc}|[\\x00-\\x7f]){0,40}"
        ) {
            prop_assert_eq!(
                super::is_printable_ascii(s.as_bytes()),
                s.bytes().all(|b| (0x20..=0x7E).contains(&b))
            );
            prop_assert_eq!(super::has_control_char(&s), s.chars().any(char::is_control));
        }
    }

    #[test]
    fn request_id_accepts_printable_ascii_up_to_64_bytes() {
        let max = "a".repeat(64);
        assert_eq!(RequestId::new(&max).unwrap().as_str(), max);
        assert_eq!(RequestId::new("c-1 x~").unwrap().as_str(), "c-1 x~");
    }

    #[test]
    fn request_id_rejects_empty_long_and_non_ascii() {
        assert_eq!(
            RequestId::new(""),
            Err(ValueError::Empty { what: "requestId" })
        );
        assert!(matches!(
            RequestId::new(&"a".repeat(65)),
            Err(ValueError::TooLong { max: 64, .. })
        ));
        assert!(matches!(
            RequestId::new("é"),
            Err(ValueError::ForbiddenChar { .. })
        ));
        assert!(matches!(
            RequestId::new("a\nb"),
            Err(ValueError::ForbiddenChar { .. })
        ));
    }

    #[test]
    fn request_id_from_u128_is_32_hex_digits() {
        let id = RequestId::from_u128_hex(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.as_str(), "0123456789abcdef0011223344556677");
        assert_eq!(id, RequestId::new(id.as_str()).unwrap());
    }

    #[test]
    fn request_id_from_u128_renders_every_digit_like_format() {
        let mut value: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for _ in 0..10_000 {
            // A cheap generator that reaches every nibble value in every position.
            value = value
                .wrapping_mul(0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645)
                .wrapping_add(0x5851_F42D_4C95_7F2D_1405_7B7E_F767_814F);
            assert_eq!(
                RequestId::from_u128_hex(value).as_str(),
                format!("{value:032x}")
            );
        }
        for value in [0, u128::MAX, 0xa, 0xaaaa_aaaa << 64, 0x9999_9999] {
            assert_eq!(
                RequestId::from_u128_hex(value).as_str(),
                format!("{value:032x}")
            );
        }
    }

    #[test]
    fn request_ids_compare_by_content() {
        use std::collections::HashSet;
        let a = RequestId::new("abc").unwrap();
        let b = RequestId::new("abc").unwrap();
        let mut set = HashSet::new();
        set.insert(a);
        assert!(set.contains(&b));
        assert!(set.contains("abc"));
    }

    #[test]
    fn device_id_counts_characters_not_bytes() {
        let ok = "é".repeat(128);
        assert!(DeviceId::new(&ok).is_ok());
        assert!(matches!(
            DeviceId::new(&"é".repeat(129)),
            Err(ValueError::TooLong { max: 128, .. })
        ));
        assert!(matches!(
            DeviceId::new("lock\u{7}"),
            Err(ValueError::ForbiddenChar { .. })
        ));
        assert!(matches!(DeviceId::new(""), Err(ValueError::Empty { .. })));
    }

    #[test]
    fn names_deserialize_with_validation() {
        let t: DeviceType = serde_json::from_str("\"smart-lock\"").unwrap();
        assert_eq!(t.as_str(), "smart-lock");
        assert!(serde_json::from_str::<CommandType>("\"\"").is_err());
    }
}

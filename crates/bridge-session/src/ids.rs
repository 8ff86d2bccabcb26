//! Request ids: how they are made and read back.
//!
//! An id is 128 bits rendered as 32 lower-case hex digits with
//! [`RequestId::from_u128_hex`]: the high 64 bits are a per-process random prefix (so that
//! ids stay unique across server nodes), the low 64 bits a sequence number. A shard hands out
//! sequence numbers that say where the command is stored (see `slots`), so the command of
//! an answer is found by parsing 16 hex digits, without hashing the 32-character string.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use bridge_protocol::RequestId;

/// Length in bytes of every id this crate generates.
const ID_LEN: usize = 32;

/// A fresh per-process random prefix for request ids.
///
/// Mixes the standard library's per-process random hash keys (seeded from the operating
/// system's random source) with the wall clock and the process id, so two nodes, or two
/// runs of one node, practically never share a prefix.
pub(crate) fn random_prefix() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Renders `prefix` and `sequence` as a request id, without allocating.
pub(crate) fn encode(prefix: u64, sequence: u64) -> RequestId {
    RequestId::from_u128_hex((u128::from(prefix) << 64) | u128::from(sequence))
}

/// Parses 8 lower-case hex digits, given as a big-endian `u64` (first digit in the top
/// byte), all eight at once with word arithmetic (SWAR). `None` unless every byte is `0-9`
/// or `a-f`.
fn parse_hex8(chunk: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if chunk & HIGH != 0 {
        return None;
    }
    // For bytes below 0x80, `b + (0x80 - lo)` has bit 7 set iff `b >= lo`, and
    // `b + (0x7F - hi)` has it set iff `b > hi`; no sum carries into the next byte.
    let in_range = |lo: u8, hi: u8| {
        (chunk + ONES * u64::from(0x80 - lo)) & !(chunk + ONES * u64::from(0x7F - hi)) & HIGH
    };
    if in_range(b'0', b'9') | in_range(b'a', b'f') != HIGH {
        return None;
    }
    // '0'..'9' are 0x30..0x39 and 'a'..'f' are 0x61..0x66: the low nibble, plus 9 for
    // letters (bit 6 set).
    let nibbles = (chunk & (ONES * 0x0F)) + 9 * ((chunk >> 6) & ONES);
    // Squeeze the eight nibbles together: pairs into bytes, bytes into halves, halves.
    let bytes = (nibbles | (nibbles >> 4)) & 0x00FF_00FF_00FF_00FF;
    let halves = (bytes | (bytes >> 8)) & 0x0000_FFFF_0000_FFFF;
    u32::try_from((halves | (halves >> 16)) & 0xFFFF_FFFF).ok()
}

/// Reads back the sequence number of an id made by [`encode`] with `prefix_hex` (the
/// prefix as 16 hex digits). `None` for any id this process did not make.
pub(crate) fn decode(prefix_hex: &[u8; 16], id: &RequestId) -> Option<u64> {
    let bytes: &[u8; ID_LEN] = id.as_bytes().try_into().ok()?;
    let (prefix, sequence) = bytes.split_at(16);
    if prefix != prefix_hex {
        return None;
    }
    let (high, low) = sequence.split_at(8);
    let high = parse_hex8(u64::from_be_bytes(high.try_into().ok()?))?;
    let low = parse_hex8(u64::from_be_bytes(low.try_into().ok()?))?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// The prefix as the 16 hex digits that lead every id made with it.
pub(crate) fn prefix_hex(prefix: u64) -> [u8; 16] {
    let id = encode(prefix, 0);
    let mut out = [0_u8; 16];
    out.copy_from_slice(&id.as_bytes()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_hex_form() {
        let prefix = 0x0123_4567_89ab_cdef;
        let hex = prefix_hex(prefix);
        for sequence in [0, 1, 0xF, 0xdead_beef, u64::MAX] {
            let id = encode(prefix, sequence);
            assert_eq!(id.as_str().len(), 32);
            assert!(id.as_str().starts_with("0123456789abcdef"));
            assert_eq!(decode(&hex, &id), Some(sequence));
        }
    }

    #[test]
    fn ids_of_another_prefix_or_shape_are_not_ours() {
        let hex = prefix_hex(1);
        let foreign = encode(2, 7);
        assert_eq!(decode(&hex, &foreign), None);
        let upper = RequestId::new("0000000000000001000000000000000A").unwrap();
        assert_eq!(decode(&hex, &upper), None);
        let short = RequestId::new("00000000000000010000000000000a").unwrap();
        assert_eq!(decode(&hex, &short), None);
        let junk = RequestId::new("000000000000000100000000000000g0").unwrap();
        assert_eq!(decode(&hex, &junk), None);
    }

    /// The obvious digit-by-digit parser, as the reference for the word-at-a-time one.
    fn reference(digits: &[u8]) -> Option<u64> {
        digits.iter().try_fold(0_u64, |value, &b| {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some((value << 4) | u64::from(digit))
        })
    }

    #[test]
    fn every_printable_byte_in_every_position_parses_as_the_reference_says() {
        let prefix = 0x0123_4567_89ab_cdef;
        let hex = prefix_hex(prefix);
        for base in [0xfedc_ba98_7654_3210, 0, u64::MAX, 0x0a0a_f9f9_a0a0_9f9f] {
            let base = encode(prefix, base);
            for position in 16..32 {
                for byte in 0x20_u8..=0x7E {
                    let mut text = base.as_bytes().to_vec();
                    text[position] = byte;
                    let id = RequestId::new(std::str::from_utf8(&text).unwrap()).unwrap();
                    assert_eq!(
                        decode(&hex, &id),
                        reference(&text[16..]),
                        "byte {byte:#x} at {position}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_sequence_numbers_round_trip() {
        let hex = prefix_hex(7);
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(decode(&hex, &encode(7, x)), Some(x));
        }
    }

    #[test]
    fn random_prefixes_differ() {
        assert_ne!(random_prefix(), random_prefix());
    }
}

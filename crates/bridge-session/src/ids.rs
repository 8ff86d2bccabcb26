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

/// Lookup table from an ASCII byte to its lower-case hex digit value, `0xFF` for anything else.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFF_u8; 256];
    let mut digit = 0_u8;
    while digit < 16 {
        let ascii = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        table[ascii as usize] = digit;
        digit += 1;
    }
    table
};

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

/// Parses 16 lower-case hex digits.
fn parse_hex_u64(digits: &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    let mut invalid = 0_u8;
    for &b in digits {
        let digit = HEX_VALUE[usize::from(b)];
        invalid |= digit;
        value = (value << 4) | u64::from(digit & 0x0F);
    }
    // Valid digits are 0..=15, so bit 4 and above are set only by an invalid byte.
    (invalid & 0xF0 == 0).then_some(value)
}

/// Reads back the sequence number of an id made by [`encode`] with `prefix_hex` (the
/// prefix as 16 hex digits). `None` for any id this process did not make.
pub(crate) fn decode(prefix_hex: &[u8; 16], id: &RequestId) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != ID_LEN || bytes[..16] != prefix_hex[..] {
        return None;
    }
    parse_hex_u64(&bytes[16..])
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

    #[test]
    fn random_prefixes_differ() {
        assert_ne!(random_prefix(), random_prefix());
    }
}

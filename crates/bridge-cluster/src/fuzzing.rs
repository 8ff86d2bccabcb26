//! Pure entry points into the decoders of the messages nodes exchange over NATS, for the
//! fuzz targets (`crates/bridge-fuzz`, `cargo xtask fuzz`): a node reads whatever anyone
//! with access to the NATS server publishes on the cluster's subjects. Behind the
//! `fuzzing` feature; not a stable API.
//!
//! Each decoder is checked against its encoder: what decodes is encoded again and must
//! decode to the same value. A panic (the fuzzer's finding) is a bug.

use crate::wire;

/// Reads `payload` as a heartbeat (`P.cluster.heartbeat`); `Some(leaving)` if it is one.
/// Panics if a heartbeat that decodes does not survive an encode/decode round trip.
pub fn heartbeat(payload: &[u8]) -> Option<bool> {
    let (who, leaving) = wire::parse_heartbeat(payload)?;
    let again = wire::parse_heartbeat(&wire::heartbeat(&who, leaving));
    assert_eq!(
        again,
        Some((who, leaving)),
        "a heartbeat survives a round trip"
    );
    Some(leaving)
}

/// Reads `payload` as a presence report (`P.cluster.presence`); `Some(devices)` with the
/// number of devices it reports if it is one. Panics if a report that decodes does not
/// survive an encode/decode round trip.
pub fn presence(payload: &[u8]) -> Option<usize> {
    let report = wire::parse_presence(payload)?;
    let again = wire::parse_presence(&wire::presence(&report));
    assert_eq!(
        again.as_ref(),
        Some(&report),
        "a presence report survives a round trip"
    );
    Some(report.devices.len())
}

/// Reads `payload` as the frame of a `write` message (`P.cluster.node.*`): `Some` with the
/// `requestId` the node would key the forwarded command by.
pub fn write(payload: &[u8]) -> Option<String> {
    wire::parse_write(payload).map(|(_, request_id)| request_id.as_str().to_owned())
}

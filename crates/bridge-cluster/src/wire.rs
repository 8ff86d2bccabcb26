//! The JSON messages nodes exchange over NATS. They are internal to the cluster (all nodes
//! run the same build), written and read with `serde_json::Value`, not derived types: wire
//! types of the public protocol live in `bridge-protocol` only.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::membership::Incarnation;

/// A heartbeat (or, with `leaving`, a goodbye) of `me`.
pub(crate) fn heartbeat(me: &Incarnation, leaving: bool) -> Bytes {
    let mut body = json!({ "node": me.node, "epoch": me.epoch });
    if leaving {
        body["leaving"] = Value::Bool(true);
    }
    Bytes::from(body.to_string())
}

/// A heartbeat's sender, and whether it is a goodbye; `None` if malformed.
pub(crate) fn parse_heartbeat(payload: &[u8]) -> Option<(Incarnation, bool)> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let node = value.get("node")?.as_str()?.to_owned();
    let epoch = value.get("epoch")?.as_u64()?;
    let leaving = value
        .get("leaving")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Some((Incarnation { node, epoch }, leaving))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_garbage_is_refused() {
        let me = Incarnation {
            node: "a".into(),
            epoch: u64::MAX,
        };
        assert_eq!(
            parse_heartbeat(&heartbeat(&me, false)),
            Some((me.clone(), false))
        );
        assert_eq!(parse_heartbeat(&heartbeat(&me, true)), Some((me, true)));
        assert_eq!(parse_heartbeat(b"{\"node\":1,\"epoch\":2}"), None);
        assert_eq!(parse_heartbeat(b"not json"), None);
    }
}

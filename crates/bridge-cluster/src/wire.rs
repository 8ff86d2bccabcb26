//! The JSON messages nodes exchange over NATS. They are internal to the cluster (all nodes
//! run the same build), written and read with `serde_json::Value`, not derived types: wire
//! types of the public protocol live in `bridge-protocol` only.

use bridge_hub::RemotePresence;
use bridge_protocol::{DeviceId, RequestId};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::membership::Incarnation;

/// A node's presence report: a snapshot of everything it holds (`full`), or one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceReport {
    pub(crate) from: Incarnation,
    pub(crate) full: bool,
    pub(crate) devices: Vec<(DeviceId, RemotePresence)>,
}

pub(crate) fn presence(report: &PresenceReport) -> Bytes {
    let devices: Vec<Value> = report
        .devices
        .iter()
        .map(|(device, p)| {
            json!({
                "d": device.as_str(),
                "b": p.bridges,
                "c": p.ble_connected,
                "r": p.rssi,
            })
        })
        .collect();
    Bytes::from(
        json!({
            "node": report.from.node,
            "epoch": report.from.epoch,
            "full": report.full,
            "devices": devices,
        })
        .to_string(),
    )
}

pub(crate) fn parse_presence(payload: &[u8]) -> Option<PresenceReport> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let node = value.get("node")?.as_str()?.to_owned();
    let epoch = value.get("epoch")?.as_u64()?;
    let full = value.get("full")?.as_bool()?;
    let devices = value
        .get("devices")?
        .as_array()?
        .iter()
        .map(|entry| {
            let device = DeviceId::new(entry.get("d")?.as_str()?).ok()?;
            let bridges = usize::try_from(entry.get("b")?.as_u64()?).ok()?;
            let connected = match entry.get("c")? {
                Value::Null => None,
                other => Some(other.as_bool()?),
            };
            let rssi = match entry.get("r")? {
                Value::Null => None,
                other => Some(i8::try_from(other.as_i64()?).ok()?),
            };
            Some((device, RemotePresence::new(bridges, connected, rssi)))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(PresenceReport {
        from: Incarnation { node, epoch },
        full,
        devices,
    })
}

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

/// The `ble_write` frame of a `write` message (another node asks this one to send it
/// through its best holder) and the frame's `requestId`; `None` if the payload is not UTF-8
/// JSON with a valid `requestId`.
pub(crate) fn parse_write(payload: &[u8]) -> Option<(&str, RequestId)> {
    let text = std::str::from_utf8(payload).ok()?;
    let frame = serde_json::from_str::<Value>(text).ok()?;
    let request_id = RequestId::new(frame.get("requestId")?.as_str()?).ok()?;
    Some((text, request_id))
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

    #[test]
    fn presence_reports_round_trip() {
        let report = PresenceReport {
            from: Incarnation {
                node: "b".into(),
                epoch: 3,
            },
            full: true,
            devices: vec![
                (
                    DeviceId::new("lock-1").unwrap(),
                    RemotePresence::new(2, Some(true), Some(-128)),
                ),
                (
                    DeviceId::new("lock-2").unwrap(),
                    RemotePresence::new(0, None, None),
                ),
            ],
        };
        assert_eq!(parse_presence(&presence(&report)), Some(report));
        assert_eq!(
            parse_presence(br#"{"node":"b","epoch":1,"full":false,"devices":[{"d":"x","b":1,"c":null,"r":300}]}"#),
            None,
            "an rssi out of range"
        );
    }
}

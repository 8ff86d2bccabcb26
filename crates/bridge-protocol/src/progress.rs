//! How far a command got on its way to the device (PROTOCOL.md 3.2 `ble_progress` and the
//! `stage`/`progress` fields of 4.1, version 1.1).
//!
//! [`Stage`] names the hops in order; [`Progress`] holds, for each hop the bridge reported,
//! the milliseconds since the command left the server; [`Hops`] is the pair an answer
//! carries. All three are `Copy` and allocation-free.

use serde::{Deserialize, Serialize};

/// A hop of a command on its way to the device, in the order PROTOCOL.md gives them.
///
/// `Sent` is the server's own hop (the `ble_write` left it); the others are what a bridge
/// reports in `ble_progress`. The derived order is the protocol's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// The `ble_write` left the server.
    Sent,
    /// The bridge has the `ble_write` and handed it to its BLE stack.
    Received,
    /// The BLE link to the device came up for it.
    Connected,
    /// The GATT write completed; the bridge waits for the device's reply.
    Written,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Self; 4] = [Self::Sent, Self::Received, Self::Connected, Self::Written];

    /// The stage as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Received => "received",
            Self::Connected => "connected",
            Self::Written => "written",
        }
    }

    /// Parses a wire name (any stage, `sent` included).
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "sent" => Self::Sent,
            "received" => Self::Received,
            "connected" => Self::Connected,
            "written" => Self::Written,
            _ => return None,
        })
    }

    /// Whether a bridge may report this stage in `ble_progress` (every stage but `sent`).
    pub const fn is_reported_by_bridge(self) -> bool {
        match self {
            Self::Sent => false,
            Self::Received | Self::Connected | Self::Written => true,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For each stage the bridge reported, the milliseconds from the command leaving the server
/// to the report: `{"receivedMs":3,"writtenMs":41}`.
///
/// Milliseconds are `u32`: a command waits at most 120 000 ms, so every real value fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Each field `default` rather than the container: the same on the wire (the derived
// `Default` is each field's), and the OpenAPI schema then carries no object-valued
// `default`, which client generators refuse.
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// When the bridge reported `received`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ms: Option<u32>,
    /// When the bridge reported `connected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_ms: Option<u32>,
    /// When the bridge reported `written`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_ms: Option<u32>,
}

impl Progress {
    /// No stage reported.
    pub const NONE: Self = Self {
        received_ms: None,
        connected_ms: None,
        written_ms: None,
    };

    /// True when the bridge reported no stage (the field is then left out of answers).
    pub const fn is_empty(&self) -> bool {
        self.received_ms.is_none() && self.connected_ms.is_none() && self.written_ms.is_none()
    }

    /// The time of `stage`, if the bridge reported it. `Sent` has none: it is time zero.
    pub const fn get(&self, stage: Stage) -> Option<u32> {
        match stage {
            Stage::Sent => None,
            Stage::Received => self.received_ms,
            Stage::Connected => self.connected_ms,
            Stage::Written => self.written_ms,
        }
    }

    /// Records that the bridge reported `stage` after `ms` milliseconds. `Sent` is not
    /// reported by bridges and records nothing.
    pub const fn set(&mut self, stage: Stage, ms: u32) {
        match stage {
            Stage::Sent => {}
            Stage::Received => self.received_ms = Some(ms),
            Stage::Connected => self.connected_ms = Some(ms),
            Stage::Written => self.written_ms = Some(ms),
        }
    }
}

/// How far a command got: the last stage reached and the times of the stages the bridge
/// reported.
///
/// Flattened into the answers of PROTOCOL.md 4.1 (200, 502, 503 `bridge_lost`, 504), into
/// `command_result` frames and into `GET /v1/commands/{commandId}`: `stage` is left out when
/// the command was never sent, `progress` when the bridge reported no stage.
/// With neither field (`Hops::NONE`) an answer has its 1.0 shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Each field `default`, as `Progress`.
#[serde(rename_all = "camelCase")]
pub struct Hops {
    /// The last stage reached; absent when the command was never sent (or the answer came
    /// from a 1.0 server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The times of the stages the bridge reported.
    #[serde(default, skip_serializing_if = "Progress::is_empty")]
    pub progress: Progress,
}

impl Hops {
    /// Neither field: a command never sent, or a 1.0 answer.
    pub const NONE: Self = Self {
        stage: None,
        progress: Progress::NONE,
    };

    /// A command that left the server and of which the bridge reported nothing yet.
    pub const SENT: Self = Self {
        stage: Some(Stage::Sent),
        progress: Progress::NONE,
    };

    /// True when neither field is present.
    pub const fn is_empty(&self) -> bool {
        self.stage.is_none() && self.progress.is_empty()
    }

    /// Applies a report of `stage` after `ms` milliseconds, as PROTOCOL.md 3.2 says: a stage
    /// not later than the one already reached is ignored. Returns whether it was applied.
    pub fn advance(&mut self, stage: Stage, ms: u32) -> bool {
        if self.stage.is_some_and(|reached| stage <= reached) {
            return false;
        }
        self.stage = Some(stage);
        self.progress.set(stage, ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_ordered_as_the_protocol_lists_them() {
        assert!(Stage::Sent < Stage::Received);
        assert!(Stage::Received < Stage::Connected);
        assert!(Stage::Connected < Stage::Written);
        let mut sorted = Stage::ALL;
        sorted.sort();
        assert_eq!(sorted, Stage::ALL);
    }

    #[test]
    fn every_stage_round_trips_through_its_wire_name() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_wire(stage.as_str()), Some(stage));
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{stage}\""));
            assert_eq!(serde_json::from_str::<Stage>(&json).unwrap(), stage);
        }
        assert_eq!(Stage::from_wire("delivered"), None);
        assert_eq!(Stage::from_wire("Written"), None);
    }

    #[test]
    fn only_sent_is_not_reported_by_bridges() {
        let reported: Vec<Stage> = Stage::ALL
            .into_iter()
            .filter(|s| s.is_reported_by_bridge())
            .collect();
        assert_eq!(
            reported,
            [Stage::Received, Stage::Connected, Stage::Written]
        );
    }

    #[test]
    fn progress_keeps_one_time_per_reported_stage() {
        let mut progress = Progress::NONE;
        assert!(progress.is_empty());
        progress.set(Stage::Sent, 1);
        assert!(progress.is_empty(), "sent is time zero, never recorded");
        progress.set(Stage::Received, 3);
        progress.set(Stage::Written, 41);
        assert_eq!(progress.get(Stage::Received), Some(3));
        assert_eq!(progress.get(Stage::Connected), None);
        assert_eq!(progress.get(Stage::Written), Some(41));
        assert_eq!(
            serde_json::to_string(&progress).unwrap(),
            r#"{"receivedMs":3,"writtenMs":41}"#
        );
    }

    #[test]
    fn hops_leave_out_what_did_not_happen() {
        assert_eq!(serde_json::to_string(&Hops::NONE).unwrap(), "{}");
        assert_eq!(
            serde_json::to_string(&Hops::SENT).unwrap(),
            r#"{"stage":"sent"}"#
        );
        assert_eq!(serde_json::from_str::<Hops>("{}").unwrap(), Hops::NONE);
    }

    #[test]
    fn a_stage_not_later_than_the_last_one_is_ignored() {
        let mut hops = Hops::SENT;
        assert!(hops.advance(Stage::Connected, 10));
        assert!(!hops.advance(Stage::Received, 12), "earlier stage");
        assert!(!hops.advance(Stage::Connected, 14), "same stage again");
        assert!(hops.advance(Stage::Written, 41));
        assert_eq!(hops.stage, Some(Stage::Written));
        assert_eq!(
            hops.progress,
            Progress {
                received_ms: None,
                connected_ms: Some(10),
                written_ms: Some(41),
            }
        );
    }
}

//! The stages a bridge reported for one pending command (`ble_progress`, PROTOCOL.md 3.2,
//! version 1.1), kept as instants until the command ends.

use std::time::{Duration, Instant};

use bridge_protocol::{ConnectionId, Hops, Stage};

/// When the bridge reported each stage of one command, and the last stage reached.
///
/// The correlator keeps one, boxed, only for a command whose bridge sent a `ble_progress`:
/// a command that never gets one costs a null pointer and allocates nothing.
/// [`hops`](Self::hops) turns it into the `stage`/`progress` an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimes {
    /// The connection the reports came on.
    pub(crate) reported_on: ConnectionId,
    last: Option<Stage>,
    received: Option<Instant>,
    connected: Option<Instant>,
    written: Option<Instant>,
}

impl StageTimes {
    /// Nothing reported yet, by the bridge on `connection`.
    pub const fn reported_on(connection: ConnectionId) -> Self {
        Self {
            reported_on: connection,
            last: None,
            received: None,
            connected: None,
            written: None,
        }
    }

    /// The last stage the bridge reported, if any.
    pub const fn last(&self) -> Option<Stage> {
        self.last
    }

    /// When the bridge reported `stage`, if it did (`Sent` is never reported by a bridge).
    pub const fn at(&self, stage: Stage) -> Option<Instant> {
        match stage {
            Stage::Received => self.received,
            Stage::Connected => self.connected,
            Stage::Written => self.written,
            _ => None,
        }
    }

    /// Whether a report of `stage` would be recorded: a stage a bridge reports, later than
    /// any reported so far (PROTOCOL.md 3.2 ignores the others).
    pub fn is_news(&self, stage: Stage) -> bool {
        stage.is_reported_by_bridge() && self.last.is_none_or(|last| stage > last)
    }

    /// Records that the bridge reported `stage` at `at`; returns whether it was recorded
    /// (see [`is_news`](Self::is_news)).
    pub fn record(&mut self, stage: Stage, at: Instant) -> bool {
        if !self.is_news(stage) {
            return false;
        }
        self.last = Some(stage);
        match stage {
            Stage::Received => self.received = Some(at),
            Stage::Connected => self.connected = Some(at),
            Stage::Written => self.written = Some(at),
            _ => {}
        }
        true
    }

    /// The `stage`/`progress` of a command that left the server at `sent_at` with these
    /// reports: `stage` is the last one reported (`sent` when none was), each reported
    /// stage's time is counted in whole milliseconds from `sent_at`.
    #[inline]
    pub fn hops(reported: Option<&Self>, sent_at: Instant) -> Hops {
        // The common case (a bridge that reports no stage) is a constant, inlined at the
        // caller; the rest stays out of line.
        match reported {
            None => Hops::SENT,
            Some(times) => times.hops_since(sent_at),
        }
    }

    #[inline(never)]
    fn hops_since(&self, sent_at: Instant) -> Hops {
        let mut hops = Hops::SENT;
        for stage in [Stage::Received, Stage::Connected, Stage::Written] {
            if let Some(at) = self.at(stage) {
                hops.advance(stage, millis(at.saturating_duration_since(sent_at)));
            }
        }
        hops
    }
}

/// Whole milliseconds, saturating (a command waits at most 120 s, so nothing real
/// saturates).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_later_stages_are_recorded() {
        let t0 = Instant::now();
        let mut times = StageTimes::reported_on(ConnectionId::new(1));
        assert!(
            !times.record(Stage::Sent, t0),
            "sent is the server's own stage"
        );
        assert!(times.record(Stage::Connected, t0 + Duration::from_millis(10)));
        assert!(!times.record(Stage::Received, t0 + Duration::from_millis(11)));
        assert!(!times.record(Stage::Connected, t0 + Duration::from_millis(12)));
        assert!(times.record(Stage::Written, t0 + Duration::from_millis(41)));
        let hops = StageTimes::hops(Some(&times), t0);
        assert_eq!(hops.stage, Some(Stage::Written));
        assert_eq!(hops.progress.received_ms, None);
        assert_eq!(hops.progress.connected_ms, Some(10));
        assert_eq!(hops.progress.written_ms, Some(41));
    }

    #[test]
    fn a_command_with_no_report_was_only_sent() {
        assert_eq!(StageTimes::hops(None, Instant::now()), Hops::SENT);
    }
}

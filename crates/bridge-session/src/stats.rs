//! Counters for metrics.

use std::ops::AddAssign;

/// A snapshot of the session counters, for metrics.
///
/// Every counter only grows, except `pending`, which is the number of commands pending at
/// the time of the snapshot. Each command that was registered ends in exactly one of
/// `succeeded`, `device_errors`, `timeouts`, `bridge_lost`, `offline`, `cancelled` and
/// `shutdown`, or is still `pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// `ble_write`s that a transport sent (through some connection).
    pub sent: u64,
    /// Commands answered with the device's reply.
    pub succeeded: u64,
    /// Commands answered with a BLE failure code.
    pub device_errors: u64,
    /// Commands that got no answer in time.
    pub timeouts: u64,
    /// Commands failed because their connection closed or released the device.
    pub bridge_lost: u64,
    /// Commands refused because no bridge held the device.
    pub offline: u64,
    /// Commands whose caller dropped the future (or whose task was aborted).
    pub cancelled: u64,
    /// Commands ended by shutdown.
    pub shutdown: u64,
    /// Answers for no pending command (never issued, already ended, or not ours).
    pub unknown_responses: u64,
    /// Answers that came after their command's deadline.
    pub late_responses: u64,
    /// Answers refused because they came on another connection than the `ble_write`.
    pub rejected_wrong_connection: u64,
    /// Answers refused because they named another device than the `ble_write`.
    pub rejected_wrong_device: u64,
    /// `ble_progress` stages recorded for a pending command (1.1).
    pub progress_recorded: u64,
    /// `ble_progress` frames accepted but ignored: a stage not later than one already
    /// reported for the command.
    pub progress_ignored: u64,
    /// `ble_progress` frames refused (unknown or finished request, late, another
    /// connection, another device).
    pub progress_rejected: u64,
    /// Commands pending now.
    pub pending: u64,
}

impl AddAssign for SessionStats {
    fn add_assign(&mut self, other: Self) {
        self.sent += other.sent;
        self.succeeded += other.succeeded;
        self.device_errors += other.device_errors;
        self.timeouts += other.timeouts;
        self.bridge_lost += other.bridge_lost;
        self.offline += other.offline;
        self.cancelled += other.cancelled;
        self.shutdown += other.shutdown;
        self.unknown_responses += other.unknown_responses;
        self.late_responses += other.late_responses;
        self.rejected_wrong_connection += other.rejected_wrong_connection;
        self.rejected_wrong_device += other.rejected_wrong_device;
        self.progress_recorded += other.progress_recorded;
        self.progress_ignored += other.progress_ignored;
        self.progress_rejected += other.progress_rejected;
        self.pending += other.pending;
    }
}

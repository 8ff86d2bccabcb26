//! The delivery engine of the offline queue (PROTOCOL.md 4.2).
//!
//! A *pass* over a device leases its oldest deliverable command, sends it through the
//! session manager, records the outcome, and goes on with the next one, one at a time,
//! while the device stays online. A pass starts when the device comes online, when a holder
//! reports `ble_status` with `connected: true`, when a command for an online device is
//! confirmed or queued, and on every retry tick for the devices the store says are due. At
//! most one pass runs per device; a trigger during a pass makes it run once more.
//!
//! The device's answer completes the command (`succeeded`, or `failed` with the bridge's
//! error). A cut-off delivery is released back to `pending` (or `failed` after the last
//! attempt, `expired` past its TTL): after `bridge_lost` the pass goes on at once through
//! another holder if the device is still online; after a timeout it ends, and the command
//! waits for the next pass. Final outcomes go to the device's subscribers as
//! `command_result` with the `commandId`; so do expiries, which a pass asks the store for
//! before anything else (`Store::expire`) and each retry tick takes from its sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bridge_hub::Frame;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, DeviceType, ServerToUser, Timestamp};
use bridge_queue::{QueuedCommand, StoreError};
use bridge_session::CommandError;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use crate::server::Core;

/// How the offline queue is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryConfig {
    /// Time between retry ticks (default 30 s): each tick sweeps the store (expiry, lapsed
    /// leases), announces commands found expired, and starts a pass for every online device
    /// with something to deliver.
    pub retry_interval: Duration,
    /// How much longer than the command's timeout a lease lasts (default 2 s). A lease the
    /// server could not end (it crashed) lapses after that, and the command is delivered
    /// again.
    pub lease_grace: Duration,
    /// Most due devices looked at per retry tick (default 10 000).
    pub max_due_devices: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(30),
            lease_grace: Duration::from_secs(2),
            max_due_devices: 10_000,
        }
    }
}

impl DeliveryConfig {
    /// The same configuration with another retry interval.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The same configuration with another lease grace.
    pub fn lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace = grace;
        self
    }
}

/// A queued command this process watches for its expiry announcement. What it is delivered
/// with (device type, timeout) is kept by the store.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub(crate) device: DeviceId,
    pub(crate) expires_at: Timestamp,
}

/// The engine's state.
pub(crate) struct Delivery {
    config: DeliveryConfig,
    /// Devices with a pass running, and whether it must run once more.
    running: Mutex<HashMap<DeviceId, bool>>,
    /// Open queued commands this process knows of.
    watched: Mutex<HashMap<CommandId, Watched>>,
    stopped: AtomicBool,
}

impl Delivery {
    pub(crate) fn new(config: DeliveryConfig) -> Self {
        Self {
            config,
            running: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Remembers a queued command (or its update in place).
    pub(crate) fn watch(&self, id: CommandId, watched: Watched) {
        self.watched.lock().insert(id, watched);
    }

    fn forget(&self, id: &CommandId) {
        self.watched.lock().remove(id);
    }

    /// Stops starting passes; passes running end after their current command.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Waits until no pass runs (each ends after recording its current delivery), at most
    /// `grace`. Returns whether all ended.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            if self.running.lock().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Devices with queued commands this process knows of.
    pub(crate) fn watched_devices(&self) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = self
            .watched
            .lock()
            .values()
            .map(|w| w.device.clone())
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }
}

/// Starts a pass over `device`, or makes the running one go again.
pub(crate) fn kick(core: &Arc<Core>, device: &DeviceId) {
    if core.delivery.is_stopped() {
        return;
    }
    {
        let mut running = core.delivery.running.lock();
        if let Some(again) = running.get_mut(device) {
            *again = true;
            return;
        }
        running.insert(device.clone(), false);
    }
    let core = Arc::clone(core);
    let device = device.clone();
    let span = tracing::info_span!("delivery", device = %device);
    tokio::spawn(
        async move {
            loop {
                pass(&core, &device).await;
                let mut running = core.delivery.running.lock();
                match running.get_mut(&device) {
                    Some(again) if *again && !core.delivery.is_stopped() => *again = false,
                    _ => {
                        running.remove(&device);
                        break;
                    }
                }
            }
        }
        .instrument(span),
    );
}

/// Whether a pass goes on after a delivery.
enum Next {
    Continue,
    Stop,
}

async fn pass(core: &Arc<Core>, device: &DeviceId) {
    if core.delivery.is_stopped() || !core.hub.device_presence(device).await.online {
        return;
    }
    // Commands that expired while nobody looked (no server ran, or this one had not queued
    // them) are announced now, at the latest when the device comes online.
    match core.store.expire(device).await {
        Ok(expired) => {
            for command in &expired {
                announce(core, command).await;
            }
        }
        Err(error) => tracing::warn!(%error, "cannot expire the queue; retrying at the next pass"),
    }
    loop {
        if core.delivery.is_stopped() || !core.hub.device_presence(device).await.online {
            return;
        }
        let open = match core.store.list_open(device).await {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "cannot list the queue; retrying at the next tick");
                return;
            }
        };
        announce_closed(core, device, &open).await;
        let Some(first) = next_in_order(&open) else {
            return;
        };
        let lease_for = first.timeout.as_duration() + core.delivery.config.lease_grace;
        let leased = match core.store.lease(device, 1, lease_for).await {
            Ok(leased) => leased,
            Err(error) => {
                tracing::warn!(%error, "cannot lease; retrying at the next tick");
                return;
            }
        };
        let Some(command) = leased.into_iter().next() else {
            return;
        };
        let id = command.id.clone();
        let next = deliver(core, command)
            .instrument(tracing::info_span!("queued_command", command_id = %id))
            .await;
        if matches!(next, Next::Stop) {
            return;
        }
    }
}

/// The command a pass should deliver next, if one may go now.
///
/// In the device's order, skipping commands awaiting confirmation and the ones handed out
/// for good by `drain_pending` (no lease deadline): a `pending` command goes; so does a
/// `delivering` one whose lease has lapsed (its server crashed; the lease recovers it and
/// hands it out again, before the ones behind it). A `delivering` command whose lease is
/// still running holds the device's order: nothing goes until it lapses (a retry tick then
/// finds the device due) or its delivery ends.
fn next_in_order(open: &[QueuedCommand]) -> Option<&QueuedCommand> {
    let now = Timestamp::now();
    let first = open.iter().find(|c| match c.status {
        CommandStatus::Pending => true,
        CommandStatus::Delivering => c.lease_deadline.is_some(),
        _ => false,
    })?;
    match (first.status, first.lease_deadline) {
        (CommandStatus::Delivering, Some(deadline)) if deadline > now => None,
        _ => Some(first),
    }
}

async fn deliver(core: &Arc<Core>, command: QueuedCommand) -> Next {
    let start = Instant::now();
    tracing::info!(attempt = command.attempts, "delivering");
    let result = core
        .session
        .send_command(
            command.device.clone(),
            command.device_type.as_ref().map(DeviceType::as_str),
            command.payload.clone(),
            command.timeout.as_duration(),
        )
        .await;
    let (outcome, next) = match result {
        Ok(reply) => (Ok(CommandOutcome::Payload(reply.payload)), Next::Continue),
        Err(CommandError::DeviceError(error)) => (Ok(CommandOutcome::Error(error)), Next::Continue),
        Err(CommandError::BridgeLost) => (Err(CommandError::BridgeLost), Next::Continue),
        Err(error) => (Err(error), Next::Stop),
    };
    let label = match &outcome {
        Ok(CommandOutcome::Payload(_)) => "succeeded",
        Ok(CommandOutcome::Error(_)) => "device_error",
        Err(CommandError::BridgeLost) => "bridge_lost",
        Err(CommandError::Timeout) => "timeout",
        Err(CommandError::Offline) => "offline",
        Err(_) => "unavailable",
    };
    core.metrics.command(label);
    if !matches!(outcome, Err(CommandError::Offline)) {
        core.metrics.command_duration(start.elapsed());
    }
    let stored = match outcome {
        Ok(outcome) => core.store.complete(&command.id, outcome).await,
        Err(error) => {
            tracing::info!(%error, "delivery cut off; back to the queue");
            core.store.release(&command.id).await
        }
    };
    match stored {
        Ok(updated) => {
            tracing::info!(status = updated.status.as_str(), "delivery ended");
            if updated.status.is_final() {
                announce(core, &updated).await;
            }
            next
        }
        Err(error) => {
            log_store_error(&error);
            Next::Stop
        }
    }
}

fn log_store_error(error: &StoreError) {
    tracing::warn!(%error, "cannot record a delivery; the lease will lapse and the command be delivered again");
}

/// Sends a final command's outcome to its device's subscribers and forgets it.
pub(crate) async fn announce(core: &Core, command: &QueuedCommand) {
    core.delivery.forget(&command.id);
    let Some(result) = command.to_view().result_frame() else {
        return;
    };
    let status = result.status;
    let frame = Frame::from(ServerToUser::CommandResult(result));
    let delivered = core.hub.broadcast(&command.device, &frame).await;
    tracing::debug!(command_id = %command.id, status = status.as_str(), delivered, "outcome announced");
}

/// Announces the watched commands of `device` that are no longer open and ended on their
/// own (expired); forgets the ones that ended otherwise (already announced). Remembers open
/// commands this process did not know of (queued before a restart).
async fn announce_closed(core: &Core, device: &DeviceId, open: &[QueuedCommand]) {
    let gone: Vec<CommandId> = {
        let mut watched = core.delivery.watched.lock();
        for command in open {
            watched
                .entry(command.id.clone())
                .or_insert_with(|| Watched {
                    device: command.device.clone(),
                    expires_at: command.expires_at,
                });
        }
        watched
            .iter()
            .filter(|(id, w)| &w.device == device && !open.iter().any(|c| &c.id == *id))
            .map(|(id, _)| id.clone())
            .collect()
    };
    check_ended(core, gone).await;
}

/// Looks up commands that may have ended on their own: announces the expired ones, forgets
/// every final one.
async fn check_ended(core: &Core, ids: Vec<CommandId>) {
    for id in ids {
        match core.store.get(&id).await {
            Ok(command) if command.status == CommandStatus::Expired => {
                announce(core, &command).await;
            }
            Ok(command) if command.status.is_final() => core.delivery.forget(&id),
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => core.delivery.forget(&id),
            Err(error) => tracing::warn!(%error, "cannot read a queued command"),
        }
    }
}

/// The retry tick: runs until the server is gone or stopped.
pub(crate) async fn run_timer(core: Weak<Core>) {
    let interval = match core.upgrade() {
        Some(core) => core.delivery.config.retry_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.delivery.is_stopped() {
            return;
        }
        tick(&core).await;
    }
}

async fn tick(core: &Arc<Core>) {
    match core.store.sweep().await {
        Ok(report) => {
            if report != bridge_queue::SweepReport::default() {
                tracing::info!(
                    expired = report.expired,
                    recovered = report.recovered,
                    failed = report.failed,
                    "queue swept"
                );
            }
            for command in &report.expired_commands {
                announce(core, command).await;
            }
        }
        Err(error) => tracing::warn!(%error, "queue sweep failed"),
    }
    let now = Timestamp::now();
    let due: Vec<CommandId> = core
        .delivery
        .watched
        .lock()
        .iter()
        .filter(|(_, w)| w.expires_at <= now)
        .map(|(id, _)| id.clone())
        .collect();
    check_ended(core, due).await;
    match core
        .store
        .due_devices(core.delivery.config.max_due_devices)
        .await
    {
        Ok(devices) => {
            for device in devices {
                if core.hub.device_presence(&device).await.online {
                    kick(core, &device);
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot list the devices due for delivery"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bridge_protocol::{CommandType, HexPayload, TimeoutMs};

    use super::*;

    fn command(n: u8, status: CommandStatus, lease_deadline: Option<Timestamp>) -> QueuedCommand {
        let now = Timestamp::now();
        QueuedCommand {
            id: CommandId::new(&format!("c{n}")).unwrap(),
            device: DeviceId::new("lock-1").unwrap(),
            command_type: CommandType::new("unlock").unwrap(),
            payload: HexPayload::from_bytes(vec![n]),
            status,
            requires_confirmation: false,
            device_type: None,
            timeout: TimeoutMs::DEFAULT,
            attempts: 0,
            created_at: now,
            expires_at: now.saturating_add(Duration::from_hours(1)),
            lease_deadline,
            outcome: None,
        }
    }

    fn next(open: &[QueuedCommand]) -> Option<String> {
        next_in_order(open).map(|c| c.id.as_str().to_owned())
    }

    #[test]
    fn the_oldest_pending_command_goes_next_past_those_awaiting_confirmation() {
        let open = [
            command(1, CommandStatus::AwaitingConfirmation, None),
            command(2, CommandStatus::Pending, None),
            command(3, CommandStatus::Pending, None),
        ];
        assert_eq!(next(&open).as_deref(), Some("c2"));
        assert_eq!(next(&open[..1]), None);
        assert_eq!(next(&[]), None);
    }

    #[test]
    fn a_running_lease_holds_the_order_and_a_lapsed_one_goes_first() {
        let later = Timestamp::now().saturating_add(Duration::from_mins(1));
        let earlier = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 60_000);
        let running = [
            command(1, CommandStatus::Delivering, Some(later)),
            command(2, CommandStatus::Pending, None),
        ];
        assert_eq!(next(&running), None);
        let lapsed = [
            command(1, CommandStatus::Delivering, Some(earlier)),
            command(2, CommandStatus::Pending, None),
        ];
        assert_eq!(next(&lapsed).as_deref(), Some("c1"));
    }

    #[test]
    fn commands_drained_for_good_do_not_block_the_queue() {
        let open = [
            command(1, CommandStatus::Delivering, None),
            command(2, CommandStatus::Pending, None),
        ];
        assert_eq!(next(&open).as_deref(), Some("c2"));
    }
}

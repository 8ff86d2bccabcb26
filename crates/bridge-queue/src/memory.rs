//! An in-process store: for tests and development. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, Timestamp};
use parking_lot::Mutex;

use crate::error::StoreError;
use crate::model::{
    NewCommand, QueuedCommand, StoreConfig, SweepReport, check_lease, expiry, new_command_id,
    status_after_delivery_cut, status_of_outcome,
};
use crate::store::Store;

/// A [`Store`] in memory, behind one lock.
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    commands: HashMap<CommandId, Entry>,
    /// Each device's non-final commands by ordering key.
    open: HashMap<DeviceId, BTreeMap<u64, CommandId>>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    command: QueuedCommand,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

impl State {
    /// Ends expired commands and recovers lapsed leases of one device.
    fn housekeep(&mut self, device: &DeviceId, now: Timestamp, max_attempts: u32) -> SweepReport {
        let mut report = SweepReport::default();
        let Some(open) = self.open.get_mut(device) else {
            return report;
        };
        let mut closed = Vec::new();
        for (&seq, id) in open.iter() {
            let Some(entry) = self.commands.get_mut(id) else {
                continue;
            };
            let c = &mut entry.command;
            match c.status {
                CommandStatus::Pending | CommandStatus::AwaitingConfirmation
                    if c.expires_at <= now =>
                {
                    c.status = CommandStatus::Expired;
                    report.expired += 1;
                    report.expired_commands.push(c.clone());
                }
                CommandStatus::Delivering if c.lease_deadline.is_some_and(|d| d <= now) => {
                    c.lease_deadline = None;
                    c.status =
                        status_after_delivery_cut(c.attempts, max_attempts, c.expires_at, now);
                    match c.status {
                        CommandStatus::Pending => report.recovered += 1,
                        CommandStatus::Expired => {
                            report.expired += 1;
                            report.expired_commands.push(c.clone());
                        }
                        _ => report.failed += 1,
                    }
                }
                _ => {}
            }
            if c.status.is_final() {
                closed.push(seq);
            }
        }
        for seq in closed {
            open.remove(&seq);
        }
        if open.is_empty() {
            self.open.remove(device);
        }
        report
    }

    fn housekeep_command(&mut self, id: &CommandId, now: Timestamp, max_attempts: u32) {
        if let Some(device) = self.commands.get(id).map(|e| e.command.device.clone()) {
            self.housekeep(&device, now, max_attempts);
        }
    }

    fn close(&mut self, device: &DeviceId, seq: u64) {
        if let Some(open) = self.open.get_mut(device) {
            open.remove(&seq);
            if open.is_empty() {
                self.open.remove(device);
            }
        }
    }

    /// Applies `change` to a command in one of `allowed` states, or answers the error.
    fn transition(
        &mut self,
        id: &CommandId,
        action: &'static str,
        allowed: &[CommandStatus],
        change: impl FnOnce(&mut QueuedCommand),
    ) -> Result<QueuedCommand, StoreError> {
        let entry = self
            .commands
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound { id: id.clone() })?;
        if !allowed.contains(&entry.command.status) {
            return Err(StoreError::Conflict {
                id: id.clone(),
                action,
                status: entry.command.status,
            });
        }
        change(&mut entry.command);
        let command = entry.command.clone();
        if command.status.is_final() {
            let seq = entry.seq;
            self.close(&command.device, seq);
        }
        Ok(command)
    }

    fn hand_out(
        &mut self,
        device: &DeviceId,
        max: usize,
        deadline: Option<Timestamp>,
        now: Timestamp,
    ) -> Vec<QueuedCommand> {
        let Some(open) = self.open.get(device) else {
            return Vec::new();
        };
        let mut leased = Vec::new();
        for id in open.values() {
            if leased.len() >= max {
                break;
            }
            let Some(entry) = self.commands.get_mut(id) else {
                continue;
            };
            let c = &mut entry.command;
            if c.status == CommandStatus::Pending && now < c.expires_at {
                c.status = CommandStatus::Delivering;
                c.attempts = c.attempts.saturating_add(1);
                c.lease_deadline = deadline;
                leased.push(c.clone());
            }
        }
        leased
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        self.config.check_payload(&command.payload)?;
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(&command.device, now, self.config.max_attempts);
        let status = command.initial_status();
        let expires_at = expiry(now, command.ttl);
        let open_ids: Vec<CommandId> = state
            .open
            .get(&command.device)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default();
        for id in &open_ids {
            if let Some(entry) = state.commands.get_mut(id) {
                let c = &mut entry.command;
                if c.command_type == command.command_type
                    && matches!(
                        c.status,
                        CommandStatus::Pending | CommandStatus::AwaitingConfirmation
                    )
                {
                    c.payload = command.payload;
                    c.expires_at = expires_at;
                    c.requires_confirmation = command.requires_confirmation;
                    c.device_type = command.device_type;
                    c.timeout = command.timeout;
                    c.status = status;
                    return Ok(c.id.clone());
                }
            }
        }
        let max = self.config.max_open_per_device;
        if open_ids.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(StoreError::QueueFull {
                device: command.device,
                max,
            });
        }
        let id = new_command_id()?;
        let seq = state.next_seq;
        state.next_seq += 1;
        state
            .open
            .entry(command.device.clone())
            .or_default()
            .insert(seq, id.clone());
        state.commands.insert(
            id.clone(),
            Entry {
                seq,
                command: QueuedCommand {
                    id: id.clone(),
                    device: command.device,
                    command_type: command.command_type,
                    payload: command.payload,
                    status,
                    requires_confirmation: command.requires_confirmation,
                    device_type: command.device_type,
                    timeout: command.timeout,
                    attempts: 0,
                    created_at: now,
                    expires_at,
                    lease_deadline: None,
                    outcome: None,
                },
            },
        );
        Ok(id)
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep_command(id, now, self.config.max_attempts);
        state.transition(id, "confirm", &[CommandStatus::AwaitingConfirmation], |c| {
            c.status = CommandStatus::Pending;
        })
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep_command(id, now, self.config.max_attempts);
        state.transition(
            id,
            "cancel",
            &[CommandStatus::Pending, CommandStatus::AwaitingConfirmation],
            |c| c.status = CommandStatus::Cancelled,
        )
    }

    async fn lease(
        &self,
        device: &DeviceId,
        max: usize,
        lease_for: Duration,
    ) -> Result<Vec<QueuedCommand>, StoreError> {
        check_lease(max, lease_for)?;
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        Ok(state.hand_out(device, max, Some(now.saturating_add(lease_for)), now))
    }

    async fn complete(
        &self,
        id: &CommandId,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let mut state = self.state.lock();
        state.transition(id, "complete", &[CommandStatus::Delivering], |c| {
            c.status = status_of_outcome(&outcome);
            c.outcome = Some(outcome);
            c.lease_deadline = None;
        })
    }

    async fn release(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let max_attempts = self.config.max_attempts;
        let mut state = self.state.lock();
        state.transition(id, "release", &[CommandStatus::Delivering], |c| {
            c.status = status_after_delivery_cut(c.attempts, max_attempts, c.expires_at, now);
            c.lease_deadline = None;
        })
    }

    async fn drain_pending(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        Ok(state.hand_out(device, usize::MAX, None, now))
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep_command(id, now, self.config.max_attempts);
        state
            .commands
            .get(id)
            .map(|e| e.command.clone())
            .ok_or_else(|| StoreError::NotFound { id: id.clone() })
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        let Some(open) = state.open.get(device) else {
            return Ok(Vec::new());
        };
        Ok(open
            .values()
            .filter_map(|id| state.commands.get(id).map(|e| e.command.clone()))
            .collect())
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        Ok(state
            .open
            .get(device)
            .map_or(0, |o| u32::try_from(o.len()).unwrap_or(u32::MAX)))
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        let now = self.config.clock.now();
        let state = self.state.lock();
        let mut due: Vec<DeviceId> = state
            .open
            .iter()
            .filter(|(_, open)| {
                open.values().any(|id| {
                    state.commands.get(id).is_some_and(|e| {
                        let c = &e.command;
                        (c.status == CommandStatus::Pending && now < c.expires_at)
                            || (c.status == CommandStatus::Delivering
                                && c.lease_deadline.is_some_and(|d| d <= now))
                    })
                })
            })
            .map(|(device, _)| device.clone())
            .collect();
        due.sort();
        due.truncate(limit);
        Ok(due)
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        let devices: Vec<DeviceId> = state.open.keys().cloned().collect();
        let mut total = SweepReport::default();
        for device in devices {
            let r = state.housekeep(&device, now, self.config.max_attempts);
            total.merge(r);
        }
        Ok(total)
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        Ok(state
            .housekeep(device, now, self.config.max_attempts)
            .expired_commands)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

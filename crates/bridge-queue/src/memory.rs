//! An in-process store: for tests and development. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, Hops, Timestamp};
use parking_lot::Mutex;

use crate::error::StoreError;
use crate::model::{
    Cut, Lease, LeaseToken, Leased, NewCommand, NodeId, OpenCounts, QueuedCommand, StoreConfig,
    SweepReport, expiry, grace_millis, new_command_id, status_after_delivery_cut,
    status_of_outcome,
};
use crate::store::Store;

/// A [`Store`] in memory, behind one lock.
///
/// [`share`](Self::share) opens a second store on the same commands, as a second process
/// sharing a durable store would see them.
#[derive(Debug)]
pub struct MemoryStore {
    config: StoreConfig,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    commands: HashMap<CommandId, Entry>,
    /// Each device's non-final commands by ordering key.
    open: HashMap<DeviceId, BTreeMap<u64, CommandId>>,
    /// The final commands by `expires_at` (unix ms) and ordering key, for `purge`.
    ended: BTreeMap<(i64, u64), CommandId>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// How many times the command was leased: the token of its latest lease.
    leases: u64,
    command: QueuedCommand,
}

impl Entry {
    /// Whether `lease` is the command's live lease: it is `delivering` under that very
    /// lease (a lapsed one not yet recovered included).
    fn is_live(&self, lease: &Lease) -> bool {
        self.command.status == CommandStatus::Delivering
            && self.leases == lease.token.as_u64()
            && self.command.lease_owner.as_ref() == Some(&lease.owner)
    }

    /// Leases the command to `owner` until `deadline` (`None`: handed out for good).
    fn lease_to(&mut self, owner: &NodeId, deadline: Option<Timestamp>) -> Leased {
        self.leases = self.leases.saturating_add(1);
        let c = &mut self.command;
        c.status = CommandStatus::Delivering;
        c.lease_deadline = deadline;
        c.lease_owner = Some(owner.clone());
        Leased {
            command: c.clone(),
            lease: Lease {
                id: c.id.clone(),
                token: LeaseToken::from_u64(self.leases),
                owner: owner.clone(),
            },
        }
    }
}

/// Ends a delivery without an answer (released, lapsed, reclaimed): one attempt counted if
/// the write left (or may have), then back to `pending`, or `failed`, or `expired`.
fn cut_delivery(c: &mut QueuedCommand, counted: bool, max_attempts: u32, now: Timestamp) {
    if counted {
        c.attempts = c.attempts.saturating_add(1);
    }
    c.lease_deadline = None;
    c.lease_owner = None;
    c.status = status_after_delivery_cut(c.attempts, max_attempts, c.expires_at, now);
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Another store on the same commands, read against `config` (its clock and limits):
    /// what a second process sharing a durable store sees. Both take the same lock, so a
    /// device's lease is as exclusive across them as within one.
    pub fn share(&self, config: StoreConfig) -> Self {
        Self {
            config,
            state: Arc::clone(&self.state),
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
        let mut ended = Vec::new();
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
                    cut_delivery(c, true, max_attempts, now);
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
                ended.push(((c.expires_at.unix_millis(), seq), c.id.clone()));
            }
        }
        for seq in closed {
            open.remove(&seq);
        }
        self.ended.extend(ended);
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

    /// Takes a command that just became final out of its device's open commands.
    fn close(&mut self, command: &QueuedCommand, seq: u64) {
        self.ended
            .insert((command.expires_at.unix_millis(), seq), command.id.clone());
        let device = &command.device;
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
            self.close(&command, seq);
        }
        Ok(command)
    }

    /// Ends the live lease `lease` with `change`, or answers why not.
    fn end_lease(
        &mut self,
        lease: &Lease,
        change: impl FnOnce(&mut QueuedCommand),
    ) -> Result<QueuedCommand, StoreError> {
        let entry = self
            .commands
            .get_mut(&lease.id)
            .ok_or_else(|| StoreError::NotFound {
                id: lease.id.clone(),
            })?;
        if !entry.is_live(lease) {
            return Err(StoreError::StaleLease {
                id: lease.id.clone(),
            });
        }
        change(&mut entry.command);
        let command = entry.command.clone();
        if command.status.is_final() {
            let seq = entry.seq;
            self.close(&command, seq);
        }
        Ok(command)
    }

    /// The device's open commands, in queue order.
    fn open_ids(&self, device: &DeviceId) -> Vec<CommandId> {
        self.open
            .get(device)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Leases the device's oldest deliverable command to `owner` until `now` plus its
    /// timeout plus `grace_ms`, unless one of its commands is under a live lease. Lapsed
    /// leases must have been recovered first.
    fn lease_next(
        &mut self,
        device: &DeviceId,
        owner: &NodeId,
        grace_ms: i64,
        now: Timestamp,
    ) -> Option<Leased> {
        let open = self.open_ids(device);
        let held = open.iter().any(|id| {
            self.commands.get(id).is_some_and(|e| {
                e.command.status == CommandStatus::Delivering && e.command.lease_deadline.is_some()
            })
        });
        if held {
            return None;
        }
        let next = open.iter().find(|id| {
            self.commands.get(*id).is_some_and(|e| {
                e.command.status == CommandStatus::Pending && now < e.command.expires_at
            })
        })?;
        let entry = self.commands.get_mut(next)?;
        let deadline = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_add(i64::from(entry.command.timeout.get()))
                .saturating_add(grace_ms),
        );
        Some(entry.lease_to(owner, Some(deadline)))
    }

    /// Hands all the device's deliverable commands out to `owner` for good.
    fn drain(&mut self, device: &DeviceId, owner: &NodeId, now: Timestamp) -> Vec<Leased> {
        let mut drained = Vec::new();
        for id in self.open_ids(device) {
            if let Some(entry) = self.commands.get_mut(&id)
                && entry.command.status == CommandStatus::Pending
                && now < entry.command.expires_at
            {
                drained.push(entry.lease_to(owner, None));
            }
        }
        drained
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
                    && c.queued_by == command.queued_by
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
                leases: 0,
                command: QueuedCommand {
                    id: id.clone(),
                    device: command.device,
                    command_type: command.command_type,
                    payload: command.payload,
                    status,
                    requires_confirmation: command.requires_confirmation,
                    device_type: command.device_type,
                    timeout: command.timeout,
                    queued_by: command.queued_by,
                    attempts: 0,
                    created_at: now,
                    expires_at,
                    lease_deadline: None,
                    lease_owner: None,
                    outcome: None,
                    hops: Hops::NONE,
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

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let grace_ms = grace_millis(grace)?;
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        Ok(state.lease_next(device, owner, grace_ms, now))
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let mut state = self.state.lock();
        state.end_lease(lease, |c| {
            c.attempts = c.attempts.saturating_add(1);
            c.status = status_of_outcome(&outcome);
            c.outcome = Some(outcome);
            c.lease_deadline = None;
            c.lease_owner = None;
        })
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let max_attempts = self.config.max_attempts;
        let mut state = self.state.lock();
        state.end_lease(lease, |c| {
            cut_delivery(c, cut == Cut::Sent, max_attempts, now);
        })
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let entry = state
            .commands
            .get_mut(&lease.id)
            .ok_or_else(|| StoreError::NotFound {
                id: lease.id.clone(),
            })?;
        if !entry.is_live(lease) {
            return Err(StoreError::StaleLease {
                id: lease.id.clone(),
            });
        }
        entry.command.hops = hops;
        Ok(())
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let now = self.config.clock.now();
        let max_attempts = self.config.max_attempts;
        let mut state = self.state.lock();
        let held: Vec<(u64, CommandId)> = state
            .open
            .values()
            .flat_map(|open| open.iter().map(|(&seq, id)| (seq, id.clone())))
            .collect();
        let mut reclaimed = Vec::new();
        for (seq, id) in held {
            let Some(entry) = state.commands.get_mut(&id) else {
                continue;
            };
            let c = &mut entry.command;
            if c.status == CommandStatus::Delivering
                && c.lease_deadline.is_some()
                && c.lease_owner.as_ref() == Some(owner)
            {
                cut_delivery(c, true, max_attempts, now);
                let command = c.clone();
                if command.status.is_final() {
                    state.close(&command, seq);
                }
                reclaimed.push(command);
            }
        }
        Ok(reclaimed)
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        let now = self.config.clock.now();
        let mut state = self.state.lock();
        state.housekeep(device, now, self.config.max_attempts);
        Ok(state.drain(device, owner, now))
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let now = self.config.clock.now();
        let state = self.state.lock();
        state
            .commands
            .get(id)
            .map(|e| e.command.clone())
            .filter(|c| self.config.retains(c, now))
            .ok_or_else(|| StoreError::NotFound { id: id.clone() })
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        let state = self.state.lock();
        let Some(open) = state.open.get(device) else {
            return Ok(Vec::new());
        };
        Ok(open
            .values()
            .filter_map(|id| state.commands.get(id).map(|e| e.command.clone()))
            .collect())
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        let state = self.state.lock();
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
                let commands = || {
                    open.values()
                        .filter_map(|id| state.commands.get(id).map(|e| &e.command))
                };
                // Nothing is handed out under a live lease.
                let held = commands().any(|c| {
                    c.status == CommandStatus::Delivering
                        && c.lease_deadline.is_some_and(|d| d > now)
                });
                !held
                    && commands().any(|c| {
                        (c.status == CommandStatus::Pending && now < c.expires_at)
                            || (c.status == CommandStatus::Delivering
                                && c.lease_deadline.is_some_and(|d| d <= now))
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

    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        let cutoff = self
            .config
            .retention_cutoff(self.config.clock.now())
            .unix_millis();
        let mut state = self.state.lock();
        let mut deleted = 0;
        while deleted < limit {
            let Some(entry) = state.ended.first_entry() else {
                break;
            };
            if entry.key().0 > cutoff {
                break;
            }
            let id = entry.remove();
            state.commands.remove(&id);
            deleted += 1;
        }
        Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        let state = self.state.lock();
        let mut counts = OpenCounts::default();
        for id in state.open.values().flat_map(BTreeMap::values) {
            if let Some(entry) = state.commands.get(id) {
                match entry.command.status {
                    CommandStatus::AwaitingConfirmation => counts.awaiting_confirmation += 1,
                    CommandStatus::Pending => counts.pending += 1,
                    CommandStatus::Delivering => counts.delivering += 1,
                    _ => {}
                }
            }
        }
        Ok(counts)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

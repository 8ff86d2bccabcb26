//! The sans-IO delivery engine (see [`Engine`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bridge_protocol::DeviceId;
use bridge_protocol::http::CommandOutcome;
use bridge_queue::{Cut, Lease, Leased, NodeId, QueuedCommand, StoreError, SweepReport};

/// How the offline queue is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Time between retry ticks (default 30 s, PROTOCOL.md 4.2's retry interval): each tick
    /// sweeps the store (expiry, lapsed leases), announces the commands found expired, and
    /// starts a pass for every online device with something to deliver.
    pub retry_interval: Duration,
    /// How much longer than the command's own timeout a lease lasts (default 2 s). A lease
    /// its node could not end (it crashed) lapses after that, and the command is delivered
    /// again through another node.
    pub lease_grace: Duration,
    /// Most due devices looked at per retry tick (default 10 000).
    pub max_due_devices: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(30),
            lease_grace: Duration::from_secs(2),
            max_due_devices: 10_000,
        }
    }
}

impl EngineConfig {
    /// The same configuration with another retry interval (at least 1 ms).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The same configuration with another lease grace.
    pub fn lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace = grace;
        self
    }

    /// The same configuration with another bound on due devices per tick (at least 1).
    pub fn max_due_devices(mut self, max: usize) -> Self {
        self.max_due_devices = max.max(1);
        self
    }
}

/// What the engine asks its driver to do. Each action that has an answer is answered
/// through the `handle_*` method named on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `Store::reclaim(owner)`; answer with [`Engine::handle_reclaimed`].
    Reclaim {
        /// This node.
        owner: NodeId,
    },
    /// `Store::expire(device)`; answer with [`Engine::handle_expired`].
    Expire {
        /// The device.
        device: DeviceId,
    },
    /// `Store::lease_next(device, owner, grace)`; answer with [`Engine::handle_leased`].
    Lease {
        /// The device.
        device: DeviceId,
        /// This node.
        owner: NodeId,
        /// The lease lasts the command's timeout plus this.
        grace: Duration,
    },
    /// Send the leased command's `ble_write` (through the session manager) and wait for its
    /// end; answer with [`Engine::handle_sent`].
    Send {
        /// The command and its lease.
        leased: Box<Leased>,
    },
    /// `Store::complete(lease, outcome)`; answer with [`Engine::handle_ended`].
    Complete {
        /// The device.
        device: DeviceId,
        /// The lease.
        lease: Lease,
        /// The device's reply or error.
        outcome: CommandOutcome,
    },
    /// `Store::release(lease, cut)`; answer with [`Engine::handle_ended`].
    Release {
        /// The device.
        device: DeviceId,
        /// The lease.
        lease: Lease,
        /// Whether the write had left.
        cut: Cut,
    },
    /// Tell the device's subscribers that a queued command ended (`command_result` with its
    /// `commandId`). No answer.
    Announce {
        /// The command, in its final state.
        command: Box<QueuedCommand>,
    },
    /// `Store::sweep()`; answer with [`Engine::handle_swept`].
    Sweep,
    /// `Store::due_devices(limit)`; answer with [`Engine::handle_due`].
    ListDue {
        /// Most devices.
        limit: usize,
    },
}

/// How a [`Action::Send`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sent {
    /// The device answered, with its reply or its error.
    Answered(CommandOutcome),
    /// The bridge went away before answering; another holder may take the command at once.
    BridgeLost,
    /// No answer within the command's timeout.
    TimedOut,
    /// The `ble_write` never left: no bridge holds the device any more.
    Offline,
    /// The `ble_write` never left for another reason (the server is overloaded or shutting
    /// down, the command's device type is no longer known).
    NotSent,
}

impl Sent {
    /// The `outcome` label of `bridge_commands_total` for a queued delivery.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Self::Answered(CommandOutcome::Payload(_)) => "succeeded",
            Self::Answered(CommandOutcome::Error(_)) => "device_error",
            Self::BridgeLost => "bridge_lost",
            Self::TimedOut => "timeout",
            Self::Offline => "offline",
            Self::NotSent => "unavailable",
        }
    }

    /// Whether the `ble_write` left for a bridge.
    pub fn left(&self) -> bool {
        match self {
            Self::Answered(_) | Self::BridgeLost | Self::TimedOut => true,
            Self::Offline | Self::NotSent => false,
        }
    }
}

/// Where a device's pass is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Waiting for `expire`.
    Expiring,
    /// Waiting for `lease_next`.
    Leasing,
    /// A `ble_write` is out under this lease.
    Sending(Lease),
    /// Waiting for `complete`/`release`; then go on with the pass or end it.
    Ending { go_on: bool },
}

#[derive(Debug)]
struct Pass {
    step: Step,
    /// A trigger came during the pass: run once more when it ends.
    again: bool,
}

/// The delivery engine of one node: a state machine with inputs `handle_*`, outputs pulled
/// with [`Engine::poll`] and [`Engine::poll_timeout`], and time passed in.
///
/// It decides what happens to a device's queued commands; it does no IO and reads no clock.
/// The [driver](crate::Dispatcher) carries each [`Action`] out (a store call, a send, an
/// announcement) and feeds the answer back through the matching `handle_*` method.
///
/// # A delivery pass
///
/// A *pass* over a device runs while the device is online:
///
/// 1. [`Action::Expire`]: the store ends the device's commands whose TTL passed; each is
///    announced (PROTOCOL.md 4.2: "at the latest when the device next comes online").
/// 2. [`Action::Lease`]: the store leases the device's next command to this node — only if
///    no delivery of that device holds a live lease anywhere (the store's atomic
///    `lease_next`). Nothing to lease ends the pass.
/// 3. [`Action::Send`]: the `ble_write` goes out and the driver waits for its end.
/// 4. [`Action::Complete`] (the device answered) or [`Action::Release`] (cut off, or never
///    left); a command that reached a final state is announced ([`Action::Announce`]).
/// 5. After an answer, or `bridge_lost` (another holder may take it at once), the pass goes
///    on at step 2; after a timeout, an offline device or a failure it ends, and the command
///    waits for the next pass.
///
/// At most one pass runs per device in this engine; a trigger during a pass makes it run
/// once more when it ends. Passes start on [`Engine::handle_online`],
/// [`Engine::handle_link_up`], [`Engine::handle_queued`] (a command was queued or confirmed),
/// for every online device the store lists as due on each retry tick
/// ([`Engine::handle_timeout`] → [`Action::Sweep`] → [`Action::ListDue`]), and for the devices
/// whose leases a restart reclaimed ([`Action::Reclaim`], the first action of every engine).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    owner: NodeId,
    online: HashSet<DeviceId>,
    passes: HashMap<DeviceId, Pass>,
    actions: VecDeque<Action>,
    next_tick: Instant,
    /// A sweep (and the due-device listing after it) is running.
    ticking: bool,
    /// The start-up reclaim has not been answered yet.
    reclaiming: bool,
    stopped: bool,
}

impl Engine {
    /// An engine for node `owner`, started at `now`. Its first action takes back the leases
    /// a former life of this node held ([`Action::Reclaim`]); its first retry tick is one
    /// interval after `now`.
    pub fn new(config: EngineConfig, owner: NodeId, now: Instant) -> Self {
        let next_tick = now + config.retry_interval;
        let mut actions = VecDeque::new();
        actions.push_back(Action::Reclaim {
            owner: owner.clone(),
        });
        Self {
            config,
            owner,
            online: HashSet::new(),
            passes: HashMap::new(),
            actions,
            next_tick,
            ticking: false,
            reclaiming: true,
            stopped: false,
        }
    }

    /// This node's id.
    pub fn owner(&self) -> &NodeId {
        &self.owner
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The next action for the driver, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (the retry tick); `None`
    /// once stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.stopped).then_some(self.next_tick)
    }

    /// Whether the device is online as far as this engine was told.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.online.contains(device)
    }

    /// Whether no pass runs.
    pub fn is_idle(&self) -> bool {
        self.passes.is_empty()
    }

    /// How many passes run.
    pub fn passes(&self) -> usize {
        self.passes.len()
    }

    /// Stops starting passes and ticks; each running pass ends once its current delivery is
    /// recorded (see [`is_idle`](Self::is_idle)).
    pub fn stop(&mut self) {
        self.stopped = true;
        for pass in self.passes.values_mut() {
            pass.again = false;
        }
        // What the driver has not taken yet is not started now: a pass waiting to expire or
        // lease ends, a lease about to be sent goes back unsent, a tick is dropped. Records
        // of deliveries that happened and announcements still go out.
        let queued = std::mem::take(&mut self.actions);
        for action in queued {
            match action {
                Action::Expire { device } | Action::Lease { device, .. } => {
                    self.passes.remove(&device);
                }
                Action::Send { leased } => {
                    let device = leased.command.device.clone();
                    if let Some(pass) = self.passes.get_mut(&device) {
                        pass.step = Step::Ending { go_on: false };
                    }
                    self.actions.push_back(Action::Release {
                        device,
                        lease: leased.lease,
                        cut: Cut::NotSent,
                    });
                }
                Action::Sweep | Action::ListDue { .. } => self.ticking = false,
                Action::Reclaim { .. } => {}
                kept @ (Action::Complete { .. }
                | Action::Release { .. }
                | Action::Announce { .. }) => self.actions.push_back(kept),
            }
        }
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    // ----- presence ---------------------------------------------------------------------

    /// The device came online (a first bridge holds it): start a pass.
    pub fn handle_online(&mut self, device: &DeviceId) {
        self.online.insert(device.clone());
        self.trigger(device);
    }

    /// The last bridge holding the device let go of it. A running pass ends at its next
    /// step (its send finds the device offline).
    pub fn handle_offline(&mut self, device: &DeviceId) {
        self.online.remove(device);
    }

    /// A holder reported `ble_status` with `connected: true`: a delivery cut off while the
    /// device stayed online is tried again now (PROTOCOL.md 4.2).
    pub fn handle_link_up(&mut self, device: &DeviceId) {
        self.online.insert(device.clone());
        self.trigger(device);
    }

    /// A command was queued (or confirmed) for the device: deliver it now if the device is
    /// online.
    pub fn handle_queued(&mut self, device: &DeviceId) {
        if self.online.contains(device) {
            self.trigger(device);
        }
    }

    fn trigger(&mut self, device: &DeviceId) {
        if self.stopped || self.reclaiming {
            // After the reclaim, every online device gets a pass anyway.
            return;
        }
        if let Some(pass) = self.passes.get_mut(device) {
            pass.again = true;
            return;
        }
        self.passes.insert(
            device.clone(),
            Pass {
                step: Step::Expiring,
                again: false,
            },
        );
        self.actions.push_back(Action::Expire {
            device: device.clone(),
        });
    }

    /// Ends a device's pass, or starts it again if a trigger came meanwhile.
    fn end_pass(&mut self, device: &DeviceId) {
        let again = self.passes.remove(device).is_some_and(|pass| pass.again);
        if again && self.online.contains(device) {
            self.trigger(device);
        }
    }

    fn lease(&mut self, device: &DeviceId) {
        if self.stopped || !self.online.contains(device) {
            self.end_pass(device);
            return;
        }
        if let Some(pass) = self.passes.get_mut(device) {
            pass.step = Step::Leasing;
            self.actions.push_back(Action::Lease {
                device: device.clone(),
                owner: self.owner.clone(),
                grace: self.config.lease_grace,
            });
        }
    }

    fn step_of(&self, device: &DeviceId) -> Option<&Step> {
        self.passes.get(device).map(|pass| &pass.step)
    }

    fn announce_final(&mut self, command: QueuedCommand) {
        if command.status.is_final() {
            self.actions.push_back(Action::Announce {
                command: Box::new(command),
            });
        }
    }

    // ----- store answers ----------------------------------------------------------------

    /// The answer to [`Action::Reclaim`]: announces the commands that ended, then starts a
    /// pass for every online device (the reclaimed ones included).
    pub fn handle_reclaimed(&mut self, result: Result<Vec<QueuedCommand>, StoreError>) {
        if !self.reclaiming {
            return;
        }
        self.reclaiming = false;
        match result {
            Ok(commands) => {
                if !commands.is_empty() {
                    tracing::info!(
                        reclaimed = commands.len(),
                        "took back the leases of this node's former life"
                    );
                }
                for command in commands {
                    self.announce_final(command);
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot take back this node's former leases; they lapse on their own"
            ),
        }
        let mut online: Vec<DeviceId> = self.online.iter().cloned().collect();
        online.sort();
        for device in &online {
            self.trigger(device);
        }
    }

    /// The answer to [`Action::Expire`]: announces what expired, then leases.
    pub fn handle_expired(
        &mut self,
        device: &DeviceId,
        result: Result<Vec<QueuedCommand>, StoreError>,
    ) {
        if self.step_of(device) != Some(&Step::Expiring) {
            return;
        }
        match result {
            Ok(expired) => {
                for command in expired {
                    self.announce_final(command);
                }
            }
            Err(error) => {
                tracing::warn!(%error, %device, "cannot expire the queue; trying the lease anyway");
            }
        }
        self.lease(device);
    }

    /// The answer to [`Action::Lease`]: sends the command, or ends the pass when nothing is
    /// deliverable (or a live lease elsewhere holds the device).
    pub fn handle_leased(&mut self, device: &DeviceId, result: Result<Option<Leased>, StoreError>) {
        if self.step_of(device) != Some(&Step::Leasing) {
            // Not asked for: put a lease back that no pass will use.
            if let Ok(Some(leased)) = result {
                self.actions.push_back(Action::Release {
                    device: device.clone(),
                    lease: leased.lease,
                    cut: Cut::NotSent,
                });
            }
            return;
        }
        match result {
            Ok(Some(leased)) if self.stopped => {
                // Stopped while the lease was being taken: give it back unsent.
                if let Some(pass) = self.passes.get_mut(device) {
                    pass.step = Step::Ending { go_on: false };
                }
                self.actions.push_back(Action::Release {
                    device: device.clone(),
                    lease: leased.lease,
                    cut: Cut::NotSent,
                });
            }
            Ok(Some(leased)) => {
                if let Some(pass) = self.passes.get_mut(device) {
                    pass.step = Step::Sending(leased.lease.clone());
                }
                self.actions.push_back(Action::Send {
                    leased: Box::new(leased),
                });
            }
            Ok(None) => self.end_pass(device),
            Err(error) => {
                tracing::warn!(%error, %device, "cannot lease; retrying at the next pass");
                self.end_pass(device);
            }
        }
    }

    /// The end of an [`Action::Send`]: records it in the store.
    pub fn handle_sent(&mut self, lease: &Lease, sent: Sent, device: &DeviceId) {
        let Some(pass) = self.passes.get_mut(device) else {
            return;
        };
        if pass.step != Step::Sending(lease.clone()) {
            return;
        }
        let (action, go_on) = match sent {
            Sent::Answered(outcome) => (
                Action::Complete {
                    device: device.clone(),
                    lease: lease.clone(),
                    outcome,
                },
                true,
            ),
            Sent::BridgeLost => (
                Action::Release {
                    device: device.clone(),
                    lease: lease.clone(),
                    cut: Cut::Sent,
                },
                true,
            ),
            Sent::TimedOut => (
                Action::Release {
                    device: device.clone(),
                    lease: lease.clone(),
                    cut: Cut::Sent,
                },
                false,
            ),
            Sent::Offline | Sent::NotSent => (
                Action::Release {
                    device: device.clone(),
                    lease: lease.clone(),
                    cut: Cut::NotSent,
                },
                false,
            ),
        };
        pass.step = Step::Ending { go_on };
        self.actions.push_back(action);
    }

    /// The answer to [`Action::Complete`] or [`Action::Release`]: announces a final state,
    /// then goes on with the pass or ends it.
    pub fn handle_ended(&mut self, device: &DeviceId, result: Result<QueuedCommand, StoreError>) {
        let Some(Step::Ending { go_on }) = self.step_of(device).cloned() else {
            // A release of a lease no pass used (see `handle_leased`).
            if let Ok(command) = result {
                self.announce_final(command);
            }
            return;
        };
        match result {
            Ok(command) => {
                tracing::info!(
                    command_id = %command.id,
                    status = command.status.as_str(),
                    attempts = command.attempts,
                    "delivery recorded"
                );
                self.announce_final(command);
                if go_on {
                    self.lease(device);
                } else {
                    self.end_pass(device);
                }
            }
            Err(StoreError::StaleLease { id }) => {
                tracing::warn!(
                    command_id = %id,
                    "the lease lapsed and another delivery took the command over; leaving it to that one"
                );
                self.end_pass(device);
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot record a delivery; the lease will lapse and the command be delivered again"
                );
                self.end_pass(device);
            }
        }
    }

    // ----- the retry tick ---------------------------------------------------------------

    /// Time passed: on the retry tick, sweeps the store.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped || now < self.next_tick {
            return;
        }
        // Ticks missed while the driver was late are not made up.
        let interval = self.config.retry_interval;
        while self.next_tick <= now {
            self.next_tick += interval;
        }
        if !self.ticking && !self.reclaiming {
            self.ticking = true;
            self.actions.push_back(Action::Sweep);
        }
    }

    /// The answer to [`Action::Sweep`]: announces what it expired, then lists due devices.
    pub fn handle_swept(&mut self, result: Result<SweepReport, StoreError>) {
        if !self.ticking {
            return;
        }
        match result {
            Ok(report) => {
                if report.expired + report.recovered + report.failed > 0 {
                    tracing::info!(
                        expired = report.expired,
                        recovered = report.recovered,
                        failed = report.failed,
                        "queue swept"
                    );
                }
                for command in report.expired_commands {
                    self.announce_final(command);
                }
            }
            Err(error) => tracing::warn!(%error, "queue sweep failed"),
        }
        if self.stopped {
            self.ticking = false;
            return;
        }
        self.actions.push_back(Action::ListDue {
            limit: self.config.max_due_devices,
        });
    }

    /// The answer to [`Action::ListDue`]: starts a pass for each due device that is online.
    pub fn handle_due(&mut self, result: Result<Vec<DeviceId>, StoreError>) {
        if !self.ticking {
            return;
        }
        self.ticking = false;
        match result {
            Ok(devices) => {
                for device in devices {
                    if self.online.contains(&device) {
                        self.trigger(&device);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list the devices due for delivery"),
        }
    }
}

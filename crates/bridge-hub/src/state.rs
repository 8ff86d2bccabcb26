//! Who is connected, who holds which device, who watches which device. Pure bookkeeping
//! under the hub's lock: no IO, no waiting; frames are only queued.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bridge_protocol::{ConnectionId, DeviceId, DeviceStatus, Role, ServerToUser};

use crate::outbox::{Outbox, Pushed};
use crate::{
    DevicePresence, Frame, HolderPresence, HubCounts, HubEvent, InFlight, PresenceOverlay,
    ReleaseReason, UserId,
};

/// `(online, bleConnected)` as PROTOCOL.md 2 defines them.
type Presence = (bool, Option<bool>);

#[derive(Debug)]
struct ConnEntry {
    outbox: Arc<Outbox>,
    role: Role,
    user_id: UserId,
    /// Devices this bridge holds. A handful at most, so a vector.
    held: Vec<DeviceId>,
    /// Devices this user connection watches. Allocated on the first subscription.
    subscriptions: HashSet<DeviceId>,
}

#[derive(Debug)]
struct Holder {
    outbox: Arc<Outbox>,
    /// The last `ble_status`'s `connected`; `None` before any.
    link: Option<bool>,
    /// The last reported `rssi`; `None` if never reported.
    rssi: Option<i8>,
    /// Increasing claim sequence number: higher is more recent.
    claim: u64,
}

/// The first two keys of the routing order of PROTOCOL.md 2 (link, then rssi), as a sortable
/// key: greater is better. `None < Some(_)`: a holder that never reported rssi ranks below
/// every one that did.
pub(crate) fn link_rank(link: Option<bool>, rssi: Option<i8>) -> (u8, Option<i8>) {
    let link = match link {
        Some(true) => 2,
        None => 1,
        Some(false) => 0,
    };
    (link, rssi)
}

impl Holder {
    /// The routing order of PROTOCOL.md 2 as a sortable key: greater is better.
    fn rank(&self) -> (u8, Option<i8>, Reverse<u32>, u64) {
        let (link, rssi) = link_rank(self.link, self.rssi);
        (link, rssi, Reverse(self.outbox.in_flight()), self.claim)
    }
}

#[derive(Debug, Default)]
struct DeviceEntry {
    holders: Vec<Holder>,
    subscribers: HashMap<ConnectionId, Arc<Outbox>>,
}

impl DeviceEntry {
    fn best(&self) -> Option<&Holder> {
        self.holders.iter().max_by_key(|h| h.rank())
    }

    fn presence(&self) -> Presence {
        (!self.holders.is_empty(), self.best().and_then(|h| h.link))
    }

    fn is_unused(&self) -> bool {
        self.holders.is_empty() && self.subscribers.is_empty()
    }
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimRefused {
    TooManyDevices,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterRefused {
    /// The hub is shutting down.
    NotAccepting,
    /// The user has [`HubConfig::max_connections_per_user`](crate::HubConfig) open already.
    TooManyConnections,
}

/// One user's user connections and its count of running `command` frames.
#[derive(Debug, Default)]
struct UserEntry {
    /// Its open user connections.
    connections: Vec<Arc<Outbox>>,
    /// `command` frames running for the user over all its connections: every outbox of the
    /// user shares this counter, and every ticket made on one counts here too. An entry
    /// without connections is kept while this is not zero (its commands still run, and a
    /// reconnecting user must find them counted); [`State::unregister`] sweeps such
    /// entries once they are idle.
    commands: Arc<AtomicU32>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeRefused {
    TooManySubscriptions,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) accepting: bool,
    connections: HashMap<ConnectionId, ConnEntry>,
    devices: HashMap<DeviceId, DeviceEntry>,
    /// Each user's open user connections and running commands (see [`UserEntry`]).
    users: HashMap<UserId, UserEntry>,
    /// Users with at least one open user connection (entries of `users` may have none).
    connected_users: usize,
    next_claim: u64,
    user_connections: usize,
    bridge_connections: usize,
    devices_online: usize,
    /// Connections cut off for not reading fast enough; counted under the read lock too.
    slow_consumers: AtomicU64,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            accepting: true,
            connections: HashMap::new(),
            devices: HashMap::new(),
            users: HashMap::new(),
            connected_users: 0,
            next_claim: 0,
            user_connections: 0,
            bridge_connections: 0,
            devices_online: 0,
            slow_consumers: AtomicU64::new(0),
        }
    }

    /// Queues `frame` on `outbox`, counting a slow consumer if this overflowed it.
    pub(crate) fn deliver(&self, outbox: &Outbox, frame: Frame) -> bool {
        self.deliver_or_return(outbox, frame).is_ok()
    }

    /// [`deliver`](Self::deliver), which gives a frame `outbox` did not take back.
    fn deliver_or_return(&self, outbox: &Outbox, frame: Frame) -> Result<(), Frame> {
        outbox.push_or_return(frame).map_err(|(refused, frame)| {
            if refused == Pushed::Overflowed {
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(connection = %outbox.id, "slow consumer disconnected");
            }
            frame
        })
    }

    /// Queues the `device_status` of `device` on `outbox` (coalesced; never overflows).
    fn deliver_status(outbox: &Outbox, device: &DeviceId) {
        outbox.push_status(device);
    }

    /// The `device_status` frame of `device` now, for the pump to write when a status
    /// marker leaves the queue: this hub's holders merged with what `overlay` (other
    /// processes) knows.
    pub(crate) fn status_frame(
        &self,
        device: &DeviceId,
        overlay: Option<&dyn PresenceOverlay>,
    ) -> Frame {
        let local = self.presence(device);
        let merged = match overlay.and_then(|o| o.remote(device)) {
            Some(remote) => remote.merged_with(&local),
            None => local,
        };
        status_frame(device, (merged.online, merged.ble_connected))
    }

    /// Queues a `device_status` marker for every subscriber of `device` here.
    pub(crate) fn refresh_status(&self, device: &DeviceId) {
        if let Some(entry) = self.devices.get(device) {
            for outbox in entry.subscribers.values() {
                Self::deliver_status(outbox, device);
            }
        }
    }

    fn presence_of(&self, device: &DeviceId) -> Presence {
        self.devices
            .get(device)
            .map_or((false, None), DeviceEntry::presence)
    }

    /// After a holder change: online/offline events, a `device_status` broadcast if the
    /// presence changed, and forgetting devices nobody holds or watches.
    fn after_change(&mut self, device: &DeviceId, before: Presence, events: &mut Vec<HubEvent>) {
        let after = self.presence_of(device);
        if before.0 != after.0 {
            if after.0 {
                self.devices_online += 1;
                events.push(HubEvent::DeviceOnline {
                    device_id: device.clone(),
                });
            } else {
                self.devices_online = self.devices_online.saturating_sub(1);
                events.push(HubEvent::DeviceOffline {
                    device_id: device.clone(),
                });
            }
        }
        if let Some(entry) = self.devices.get(device) {
            if before != after {
                for outbox in entry.subscribers.values() {
                    Self::deliver_status(outbox, device);
                }
            }
            if entry.is_unused() {
                self.devices.remove(device);
            }
        }
    }

    /// Registers a connection and claims the devices a bridge named at connect. The
    /// connection's outbox is made by `make_outbox`, given the user's shared count of
    /// running commands for a user connection (`None` for a bridge).
    #[allow(clippy::too_many_arguments)] // one call site, each argument a separate limit
    pub(crate) fn register(
        &mut self,
        make_outbox: impl FnOnce(Option<Arc<AtomicU32>>) -> Arc<Outbox>,
        role: Role,
        user_id: &UserId,
        devices: &[DeviceId],
        max_held: usize,
        max_connections_per_user: usize,
        events: &mut Vec<HubEvent>,
    ) -> Result<Arc<Outbox>, RegisterRefused> {
        if !self.accepting {
            return Err(RegisterRefused::NotAccepting);
        }
        let outbox = if role == Role::Bridge {
            make_outbox(None)
        } else {
            let user = self.users.entry(user_id.clone()).or_default();
            if user.connections.len() >= max_connections_per_user {
                if user.connections.is_empty() && user.commands.load(Ordering::Relaxed) == 0 {
                    // `max_connections_per_user` is 0: nothing to keep.
                    self.users.remove(user_id);
                }
                return Err(RegisterRefused::TooManyConnections);
            }
            let outbox = make_outbox(Some(Arc::clone(&user.commands)));
            user.connections.push(Arc::clone(&outbox));
            outbox
        };
        let id = outbox.id;
        self.connections.insert(
            id,
            ConnEntry {
                outbox: Arc::clone(&outbox),
                role,
                user_id: user_id.clone(),
                held: Vec::new(),
                subscriptions: HashSet::new(),
            },
        );
        events.push(HubEvent::ConnectionOpened {
            connection: id,
            role,
            user_id: user_id.clone(),
        });
        if role == Role::Bridge {
            self.bridge_connections += 1;
            for device in devices {
                if self.claim(id, device, max_held, None, events).is_err() {
                    tracing::warn!(connection = %id, "more devices named at connect than a bridge may hold");
                    break;
                }
            }
        } else {
            self.user_connections += 1;
            if self
                .users
                .get(user_id)
                .is_some_and(|user| user.connections.len() == 1)
            {
                self.connected_users += 1;
                events.push(HubEvent::UserFirstConnected {
                    user_id: user_id.clone(),
                });
            }
        }
        Ok(outbox)
    }

    /// A user's open user connections (0 for a user without any).
    pub(crate) fn user_connections(&self, user_id: &UserId) -> usize {
        self.users.get(user_id).map_or(0, |u| u.connections.len())
    }

    /// Forgets a connection: releases its devices, drops its subscriptions.
    pub(crate) fn unregister(
        &mut self,
        id: ConnectionId,
        reason: crate::CloseReason,
        events: &mut Vec<HubEvent>,
    ) {
        let Some(entry) = self.connections.remove(&id) else {
            return;
        };
        for device in &entry.held {
            self.drop_holder(id, device, ReleaseReason::ConnectionClosed, events);
        }
        for device in &entry.subscriptions {
            if let Some(dev) = self.devices.get_mut(device) {
                dev.subscribers.remove(&id);
                if dev.is_unused() {
                    self.devices.remove(device);
                }
            }
        }
        events.push(HubEvent::ConnectionClosed {
            connection: id,
            role: entry.role,
            user_id: entry.user_id.clone(),
            reason,
        });
        if entry.role == Role::Bridge {
            self.bridge_connections = self.bridge_connections.saturating_sub(1);
        } else {
            self.user_connections = self.user_connections.saturating_sub(1);
            if let Some(user) = self.users.get_mut(&entry.user_id) {
                user.connections.retain(|o| o.id != id);
                if user.connections.is_empty() {
                    // Its commands may still run: then the count stays, for the user's
                    // next connection to find.
                    if user.commands.load(Ordering::Relaxed) == 0 {
                        self.users.remove(&entry.user_id);
                    }
                    self.connected_users = self.connected_users.saturating_sub(1);
                    events.push(HubEvent::UserLastDisconnected {
                        user_id: entry.user_id,
                    });
                    self.sweep_idle_users();
                }
            }
        }
    }

    /// Forgets users without connections whose commands have all ended, once such entries
    /// outnumber the connected users (plus a margin): amortized O(1) per disconnection, and
    /// the map stays within a constant factor of the connected users and the users with
    /// commands running.
    fn sweep_idle_users(&mut self) {
        if self.users.len() > 2 * self.connected_users + 64 {
            self.users.retain(|_, user| {
                !user.connections.is_empty() || user.commands.load(Ordering::Relaxed) > 0
            });
        }
    }

    /// Makes connection `id` a holder of `device`. `Ok(false)` if it already was one.
    pub(crate) fn claim(
        &mut self,
        id: ConnectionId,
        device: &DeviceId,
        max_held: usize,
        link: Option<(bool, Option<i8>)>,
        events: &mut Vec<HubEvent>,
    ) -> Result<bool, ClaimRefused> {
        let Some(entry) = self.connections.get_mut(&id) else {
            return Ok(false);
        };
        if entry.held.contains(device) {
            return Ok(false);
        }
        if entry.held.len() >= max_held {
            return Err(ClaimRefused::TooManyDevices);
        }
        entry.held.push(device.clone());
        let outbox = Arc::clone(&entry.outbox);
        let before = self.presence_of(device);
        self.next_claim += 1;
        self.devices
            .entry(device.clone())
            .or_default()
            .holders
            .push(Holder {
                outbox,
                link: link.map(|(connected, _)| connected),
                rssi: link.and_then(|(_, rssi)| rssi),
                claim: self.next_claim,
            });
        events.push(HubEvent::DeviceClaimed {
            device_id: device.clone(),
            connection: id,
        });
        if let Some((connected, rssi)) = link {
            events.push(HubEvent::BleStatusReported {
                device_id: device.clone(),
                connection: id,
                connected,
                was_connected: None,
                rssi,
            });
        }
        self.after_change(device, before, events);
        Ok(true)
    }

    /// Records a holder's `ble_status`. `false` if `id` does not hold `device`.
    pub(crate) fn report_link(
        &mut self,
        id: ConnectionId,
        device: &DeviceId,
        connected: bool,
        rssi: Option<i8>,
        events: &mut Vec<HubEvent>,
    ) -> bool {
        let before = self.presence_of(device);
        let Some(holder) = self
            .devices
            .get_mut(device)
            .and_then(|d| d.holders.iter_mut().find(|h| h.outbox.id == id))
        else {
            return false;
        };
        let was_connected = holder.link.replace(connected);
        if rssi.is_some() {
            holder.rssi = rssi;
        }
        events.push(HubEvent::BleStatusReported {
            device_id: device.clone(),
            connection: id,
            connected,
            was_connected,
            rssi,
        });
        self.after_change(device, before, events);
        true
    }

    /// A `release` frame. Releasing a device not held is not an error.
    pub(crate) fn release(
        &mut self,
        id: ConnectionId,
        device: &DeviceId,
        events: &mut Vec<HubEvent>,
    ) {
        let Some(entry) = self.connections.get_mut(&id) else {
            return;
        };
        let Some(pos) = entry.held.iter().position(|d| d == device) else {
            return;
        };
        entry.held.swap_remove(pos);
        self.drop_holder(id, device, ReleaseReason::Released, events);
    }

    fn drop_holder(
        &mut self,
        id: ConnectionId,
        device: &DeviceId,
        reason: ReleaseReason,
        events: &mut Vec<HubEvent>,
    ) {
        let before = self.presence_of(device);
        if let Some(dev) = self.devices.get_mut(device) {
            dev.holders.retain(|h| h.outbox.id != id);
        }
        events.push(HubEvent::DeviceReleased {
            device_id: device.clone(),
            connection: id,
            reason,
        });
        self.after_change(device, before, events);
    }

    /// Subscribes a user connection, then queues `ack` (if any) and the device's snapshot.
    pub(crate) fn subscribe(
        &mut self,
        id: ConnectionId,
        device: &DeviceId,
        ack: Option<Frame>,
        max_subscriptions: usize,
    ) -> Result<(), SubscribeRefused> {
        let Some(entry) = self.connections.get_mut(&id) else {
            return Ok(());
        };
        let outbox = Arc::clone(&entry.outbox);
        if !entry.subscriptions.contains(device) {
            if entry.subscriptions.len() >= max_subscriptions {
                return Err(SubscribeRefused::TooManySubscriptions);
            }
            entry.subscriptions.insert(device.clone());
            self.devices
                .entry(device.clone())
                .or_default()
                .subscribers
                .insert(id, Arc::clone(&outbox));
        }
        if let Some(ack) = ack {
            self.deliver(&outbox, ack);
        }
        Self::deliver_status(&outbox, device);
        Ok(())
    }

    /// Unsubscribes a user connection (no error if it was not subscribed).
    pub(crate) fn unsubscribe(&mut self, id: ConnectionId, device: &DeviceId) {
        let Some(entry) = self.connections.get_mut(&id) else {
            return;
        };
        if entry.subscriptions.remove(device) {
            if entry.subscriptions.is_empty() {
                entry.subscriptions = HashSet::new();
            }
            if let Some(dev) = self.devices.get_mut(device) {
                dev.subscribers.remove(&id);
                if dev.is_unused() {
                    self.devices.remove(device);
                }
            }
        }
    }

    /// The device's holders, best route first.
    pub(crate) fn routes(&self, device: &DeviceId) -> Vec<Arc<Outbox>> {
        let Some(dev) = self.devices.get(device) else {
            return Vec::new();
        };
        let mut ranked: Vec<_> = dev.holders.iter().map(|h| (h.rank(), h)).collect();
        ranked.sort_by_key(|(rank, _)| Reverse(*rank));
        ranked
            .into_iter()
            .map(|(_, h)| Arc::clone(&h.outbox))
            .collect()
    }

    /// Queues `frame` on the first route that takes it; returns the ticket of the command
    /// now in flight on that connection.
    ///
    /// The frame itself is queued, never a copy: a route that refuses it hands it back for
    /// the next. (A frame's text that no one else shares then never needs a shared
    /// reference count: see [`Frame::ble_write`].)
    pub(crate) fn send_to_device(&self, device: &DeviceId, frame: Frame) -> Option<InFlight> {
        // The best route first, found without ranking into a list (claims are unique, so
        // it is the list's first); the others only if it does not take the frame.
        let best = self.devices.get(device)?.best()?;
        let mut frame = match self.deliver_or_return(&best.outbox, frame) {
            Ok(()) => return Some(InFlight::begin(&best.outbox)),
            Err(frame) => frame,
        };
        let tried = Arc::clone(&best.outbox);
        for outbox in self.routes(device) {
            if Arc::ptr_eq(&outbox, &tried) {
                continue;
            }
            match self.deliver_or_return(&outbox, frame) {
                Ok(()) => return Some(InFlight::begin(&outbox)),
                Err(refused) => frame = refused,
            }
        }
        None
    }

    pub(crate) fn broadcast(&self, device: &DeviceId, frame: &Frame) -> usize {
        self.devices.get(device).map_or(0, |dev| {
            dev.subscribers
                .values()
                .filter(|outbox| self.deliver(outbox, frame.clone()))
                .count()
        })
    }

    pub(crate) fn send_to_user(&self, user_id: &UserId, frame: &Frame) -> usize {
        self.users.get(user_id).map_or(0, |user| {
            user.connections
                .iter()
                .filter(|outbox| self.deliver(outbox, frame.clone()))
                .count()
        })
    }

    pub(crate) fn outbox(&self, id: ConnectionId) -> Option<&Arc<Outbox>> {
        self.connections.get(&id).map(|c| &c.outbox)
    }

    pub(crate) fn send_to_connection(&self, id: ConnectionId, frame: Frame) -> Option<bool> {
        self.outbox(id).map(|outbox| self.deliver(outbox, frame))
    }

    pub(crate) fn presence(&self, device: &DeviceId) -> DevicePresence {
        let entry = self.devices.get(device);
        let (online, ble_connected) = entry.map_or((false, None), DeviceEntry::presence);
        DevicePresence {
            device_id: device.clone(),
            online,
            ble_connected,
            bridges: entry.map_or(0, |d| d.holders.len()),
            rssi: entry.and_then(DeviceEntry::best).and_then(|h| h.rssi),
        }
    }

    /// This hub's holders of `device`, best route first (PROTOCOL.md 2's order).
    pub(crate) fn holders(&self, device: &DeviceId) -> Vec<HolderPresence> {
        let Some(dev) = self.devices.get(device) else {
            return Vec::new();
        };
        let mut ranked: Vec<_> = dev.holders.iter().map(|h| (h.rank(), h)).collect();
        ranked.sort_by_key(|(rank, _)| Reverse(*rank));
        ranked
            .into_iter()
            .filter_map(|(_, h)| {
                let entry = self.connections.get(&h.outbox.id)?;
                Some(HolderPresence {
                    connection: h.outbox.id,
                    user_id: entry.user_id.clone(),
                    ble_connected: h.link,
                    rssi: h.rssi,
                    commands_in_flight: h.outbox.in_flight(),
                })
            })
            .collect()
    }

    pub(crate) fn online_devices(&self) -> Vec<DevicePresence> {
        let mut online: Vec<_> = self
            .devices
            .iter()
            .filter(|(_, d)| !d.holders.is_empty())
            .map(|(id, d)| {
                let (online, ble_connected) = d.presence();
                DevicePresence {
                    device_id: id.clone(),
                    online,
                    ble_connected,
                    bridges: d.holders.len(),
                    rssi: d.best().and_then(|h| h.rssi),
                }
            })
            .collect();
        online.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        online
    }

    pub(crate) fn counts(&self) -> HubCounts {
        HubCounts {
            user_connections: self.user_connections,
            bridge_connections: self.bridge_connections,
            users: self.connected_users,
            devices_online: self.devices_online,
            slow_consumers_disconnected: self.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// Every connection's outbox (for shutdown).
    pub(crate) fn all_outboxes(&self) -> Vec<Arc<Outbox>> {
        self.connections
            .values()
            .map(|c| Arc::clone(&c.outbox))
            .collect()
    }
}

fn status_frame(device: &DeviceId, (online, ble_connected): Presence) -> Frame {
    Frame::from(ServerToUser::DeviceStatus(DeviceStatus {
        device_id: device.clone(),
        online,
        ble_connected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    struct Fixture {
        state: State,
        events: Vec<HubEvent>,
        next: u64,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                state: State::new(),
                events: Vec::new(),
                next: 0,
            }
        }

        fn bridge(&mut self, devices: &[&str]) -> Arc<Outbox> {
            self.next += 1;
            let id = ConnectionId::new(self.next);
            let devices: Vec<_> = devices.iter().map(|d| device(d)).collect();
            self.state
                .register(
                    |_| Arc::new(Outbox::new(id, 64, None)),
                    Role::Bridge,
                    &UserId::new("u"),
                    &devices,
                    16,
                    4,
                    &mut self.events,
                )
                .expect("registered")
        }

        fn route(&self, d: &str) -> ConnectionId {
            self.state.routes(&device(d))[0].id
        }

        fn status(&mut self, conn: &Outbox, d: &str, connected: bool, rssi: Option<i8>) {
            assert!(
                self.state
                    .report_link(conn.id, &device(d), connected, rssi, &mut self.events)
            );
        }
    }

    #[test]
    fn a_connected_holder_beats_one_that_never_reported_which_beats_a_disconnected_one() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock"]);
        let b = f.bridge(&["lock"]);
        let c = f.bridge(&["lock"]);
        f.status(&a, "lock", true, Some(-90));
        f.status(&c, "lock", false, Some(-30));
        assert_eq!(f.route("lock"), a.id);
        f.status(&a, "lock", false, None);
        // a and c both disconnected; b has not reported and beats both.
        assert_eq!(f.route("lock"), b.id);
    }

    #[test]
    fn stronger_rssi_wins_and_a_status_without_rssi_keeps_the_last_value() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock"]);
        let b = f.bridge(&["lock"]);
        f.status(&a, "lock", true, Some(-50));
        f.status(&b, "lock", true, Some(-70));
        assert_eq!(f.route("lock"), a.id);
        f.status(&a, "lock", true, None);
        assert_eq!(f.route("lock"), a.id, "-50 is kept");
        f.status(&b, "lock", true, Some(-40));
        assert_eq!(f.route("lock"), b.id);
    }

    #[test]
    fn a_holder_that_never_reported_rssi_ranks_below_any_that_did() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock"]);
        let b = f.bridge(&["lock"]);
        f.status(&a, "lock", true, Some(-127));
        f.status(&b, "lock", true, None);
        assert_eq!(f.route("lock"), a.id);
    }

    #[test]
    fn fewer_commands_in_flight_wins_counting_all_devices_of_the_connection() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock", "other"]);
        let b = f.bridge(&["lock"]);
        // Equal link and rssi: most recent claim (b) wins.
        assert_eq!(f.route("lock"), b.id);
        let on_b = InFlight::begin(&b);
        assert_eq!(f.route("lock"), a.id);
        // A command through `a` for another device counts too.
        let on_a = [InFlight::begin(&a), InFlight::begin(&a)];
        assert_eq!(f.route("lock"), b.id);
        // The count is the tickets: dropping them ends it.
        drop(on_a);
        assert_eq!(f.route("lock"), a.id);
        drop(on_b);
        assert_eq!(f.route("lock"), b.id);
    }

    #[test]
    fn the_most_recent_claim_breaks_remaining_ties() {
        let mut f = Fixture::new();
        let a = f.bridge(&[]);
        let b = f.bridge(&[]);
        let mut events = Vec::new();
        f.state
            .claim(b.id, &device("lock"), 16, None, &mut events)
            .unwrap();
        f.state
            .claim(a.id, &device("lock"), 16, None, &mut events)
            .unwrap();
        assert_eq!(f.route("lock"), a.id);
    }

    #[test]
    fn a_device_stays_online_until_its_last_holder_is_gone() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock"]);
        let b = f.bridge(&["lock"]);
        f.status(&a, "lock", true, None);
        f.status(&b, "lock", false, None);
        assert_eq!(f.state.presence(&device("lock")).bridges, 2);
        assert_eq!(f.state.presence(&device("lock")).ble_connected, Some(true));
        f.events.clear();
        f.state.release(a.id, &device("lock"), &mut f.events);
        let presence = f.state.presence(&device("lock"));
        assert!(presence.online);
        assert_eq!(presence.ble_connected, Some(false), "b is the route now");
        assert!(
            !f.events
                .iter()
                .any(|e| matches!(e, HubEvent::DeviceOffline { .. }))
        );
        f.state
            .unregister(b.id, crate::CloseReason::ClientClosed, &mut f.events);
        let presence = f.state.presence(&device("lock"));
        assert!(!presence.online);
        assert_eq!(presence.ble_connected, None);
        assert!(f.events.contains(&HubEvent::DeviceOffline {
            device_id: device("lock")
        }));
        assert_eq!(f.state.counts().devices_online, 0);
        assert!(
            f.state.devices.is_empty(),
            "nothing is kept for a forgotten device"
        );
    }

    /// The frame queued on `outbox`, if its first entry is one.
    fn first_frame(outbox: &Outbox) -> Option<Frame> {
        match outbox.pop() {
            (Some(crate::outbox::Entry::Frame(frame)), _) => Some(frame),
            _ => None,
        }
    }

    #[test]
    fn a_frame_the_best_route_refuses_goes_to_the_next_and_an_overflow_counts_as_slow() {
        let mut f = Fixture::new();
        let a = f.bridge(&["lock"]);
        let b = f.bridge(&["lock"]);
        let c = f.bridge(&["lock"]);
        assert_eq!(f.route("lock"), c.id, "the most recent claim");
        let frame = Frame::from_json_text(r#"{"type":"ble_write"}"#);

        // c is closing: the frame goes to b, whole.
        c.request_close(crate::outbox::CloseRequest {
            reason: crate::CloseReason::ClosedByServer,
            code: None,
            text: "",
        });
        let ticket = f.state.send_to_device(&device("lock"), frame.clone());
        assert_eq!(ticket.as_ref().map(InFlight::connection), Some(b.id));
        assert_eq!(first_frame(&b), Some(frame.clone()));
        assert_eq!(first_frame(&a), None);
        drop(ticket);

        // b overflows (a slow consumer, counted), c is closing: a takes it.
        for _ in 0..64 {
            assert!(f.state.deliver(&b, Frame::from_static("{}")));
        }
        let ticket = f.state.send_to_device(&device("lock"), frame.clone());
        assert_eq!(ticket.as_ref().map(InFlight::connection), Some(a.id));
        assert_eq!(first_frame(&a), Some(frame.clone()));
        assert_eq!(f.state.slow_consumers.load(Ordering::Relaxed), 1);

        // No route takes it: no ticket.
        a.request_close(crate::outbox::CloseRequest {
            reason: crate::CloseReason::ClosedByServer,
            code: None,
            text: "",
        });
        drop(ticket);
        assert!(f.state.send_to_device(&device("lock"), frame).is_none());
        assert!(
            f.state
                .send_to_device(&device("other"), Frame::from_static("{}"))
                .is_none()
        );
    }

    #[test]
    fn a_bridge_may_hold_a_bounded_number_of_devices() {
        let mut f = Fixture::new();
        let a = f.bridge(&[]);
        let mut events = Vec::new();
        for i in 0..16 {
            f.state
                .claim(a.id, &device(&format!("d{i}")), 16, None, &mut events)
                .unwrap();
        }
        assert_eq!(
            f.state
                .claim(a.id, &device("one-more"), 16, None, &mut events),
            Err(ClaimRefused::TooManyDevices)
        );
    }
}

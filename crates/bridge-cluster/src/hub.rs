//! [`ClusterHub`]: a [`LocalHub`] joined to the other nodes over NATS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Subscriber};
use async_trait::async_trait;
use bridge_hub::{
    DevicePresence, Frame, Hub, HubError, HubEvent, HubHealth, InFlight, Intercepted, LocalHub,
    PresenceOverlay, ReleaseReason, RemotePresence, ResponseInterceptor, ResponseRefused, UserId,
};
use bridge_protocol::{
    BleProgress, BleResponse, BridgeToServer, ConnectionId, DeviceId, ErrorCode, RequestId,
};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ClusterConfig;
use crate::membership::{Change, Incarnation, Membership};
use crate::presence::PresenceTable;
use crate::routing::{self, Route};
use crate::subjects::Subjects;
use crate::wire::{self, PresenceReport};

/// Header naming the node a fan-out message comes from.
const ORIGIN: &str = "Bridge-Origin";
/// Header naming the device of a broadcast.
const DEVICE: &str = "Bridge-Device";
/// Header naming the user of a frame for a user's connections.
const USER: &str = "Bridge-User";
/// Header of a message for one node: `write`, `answer`, `done` or `lost`.
const KIND: &str = "Bridge-Kind";
/// Header naming a forwarded command by the stand-in connection id its sender gave it.
const PROXY: &str = "Bridge-Proxy";

/// A command another node sent through one of this node's bridges.
struct Forward {
    origin: String,
    proxy: u64,
    device: DeviceId,
    /// This node's in-flight ticket on the bridge (routing here counts it).
    _ticket: InFlight,
}

/// The commands other nodes sent through this node's bridges, by the connection and request
/// id their answer will come with, and by their sender's stand-in id.
#[derive(Default)]
struct ForwardTable {
    by_answer: HashMap<(ConnectionId, RequestId), Forward>,
    by_origin: HashMap<(String, u64), (ConnectionId, RequestId)>,
}

impl ForwardTable {
    fn remove(&mut self, key: &(ConnectionId, RequestId)) -> Option<Forward> {
        let forward = self.by_answer.remove(key)?;
        self.by_origin
            .remove(&(forward.origin.clone(), forward.proxy));
        Some(forward)
    }

    /// Removes the commands matching `which`.
    fn remove_where(
        &mut self,
        which: impl Fn(&(ConnectionId, RequestId), &Forward) -> bool,
    ) -> Vec<Forward> {
        let keys: Vec<_> = self
            .by_answer
            .iter()
            .filter(|(k, f)| which(k, f))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }
}

/// What the publisher task sends.
#[derive(Debug)]
enum Outgoing {
    /// This node's presence of one device changed (read again when it is sent).
    Device(DeviceId),
    /// Everything this node holds.
    Snapshot,
    /// A message for one node (an answer, a loss, the end of a forwarded command).
    Node {
        node: String,
        headers: HeaderMap,
        payload: Bytes,
    },
}

/// What the background tasks and the hub share.
pub(crate) struct Shared {
    config: ClusterConfig,
    me: Incarnation,
    subjects: Subjects,
    local: LocalHub,
    state: Mutex<ClusterState>,
    presence: Mutex<PresenceTable>,
    client: OnceLock<Client>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// A presence report could not be published: send a snapshot at the next tick.
    resync: AtomicBool,
    /// Commands this node sent through other nodes' bridges: stand-in id → (node, device).
    outbound: Mutex<HashMap<ConnectionId, (String, DeviceId)>>,
    /// Commands other nodes sent through this node's bridges.
    forwarded: Mutex<ForwardTable>,
}

struct ClusterState {
    membership: Membership,
    /// Whether the NATS client is connected (its last event).
    connected: bool,
}

impl Shared {
    /// Applies membership changes: drops what dead nodes held, and sends this node's
    /// snapshot to a node that joined.
    fn changed(&self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Joined(who) if who == self.me => {
                    tracing::info!(node = %who.node, "joined the cluster");
                    self.send(Outgoing::Snapshot);
                }
                Change::Joined(who) => {
                    tracing::info!(node = %who.node, epoch = who.epoch, "a node joined");
                    self.send(Outgoing::Snapshot);
                }
                Change::Restarted { old, new } => {
                    tracing::warn!(
                        node = %new.node,
                        old_epoch = old.epoch,
                        new_epoch = new.epoch,
                        "a node restarted: what its former life held is gone"
                    );
                    self.forget(&old.node);
                    self.node_gone(&old.node);
                    self.send(Outgoing::Snapshot);
                }
                Change::Left(who) if who == self.me => {
                    tracing::warn!(
                        "left the cluster: this node's own heartbeats do not come back from \
                         NATS; serving this node's connections only"
                    );
                }
                Change::Left(who) => {
                    tracing::warn!(node = %who.node, epoch = who.epoch, "a node left or died");
                    self.forget(&who.node);
                    self.node_gone(&who.node);
                }
            }
        }
    }

    /// `node` is gone (or lost to this one): the commands sent through its bridges end with
    /// `bridge_lost`, and those it sent through this node's bridges are dropped.
    fn node_gone(&self, node: &str) {
        let lost: Vec<(ConnectionId, DeviceId)> = self
            .outbound
            .lock()
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(proxy, (_, device))| (*proxy, device.clone()))
            .collect();
        if !lost.is_empty() {
            tracing::warn!(
                node,
                commands = lost.len(),
                "commands through a lost node end with bridge_lost"
            );
        }
        // Outside the lock: the session drops the commands' tickets, whose ends take it.
        for (proxy, device) in lost {
            self.local.release_remote(proxy, &device);
        }
        let dropped = self
            .forwarded
            .lock()
            .remove_where(|_, forward| forward.origin == node);
        drop(dropped);
    }

    /// A message for `node`, in order with this node's other publications.
    fn to_node(
        &self,
        node: &str,
        kind: &'static str,
        proxy: u64,
        payload: Bytes,
        device: Option<&DeviceId>,
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(KIND, kind);
        headers.insert(ORIGIN, self.me.node.as_str());
        headers.insert(PROXY, proxy.to_string().as_str());
        if let Some(device) = device {
            headers.insert(DEVICE, device.as_str());
        }
        self.send(Outgoing::Node {
            node: node.to_owned(),
            headers,
            payload,
        });
    }

    /// Sends `frame` through the best holder of `device` on `node`, and returns the
    /// command's ticket: a stand-in connection id here, whose end tells `node`.
    async fn forward(
        self: &Arc<Self>,
        node: &str,
        device: &DeviceId,
        frame: &Frame,
    ) -> Result<InFlight, HubError> {
        let client = self
            .client
            .get()
            .ok_or_else(|| HubError::DeviceOffline(device.clone()))?;
        let proxy = self.local.reserve_connection_id();
        self.outbound
            .lock()
            .insert(proxy, (node.to_owned(), device.clone()));
        let ticket = InFlight::remote(
            proxy,
            RemoteEnd {
                shared: Arc::downgrade(self),
                proxy,
            },
        );
        let mut headers = HeaderMap::new();
        headers.insert(KIND, "write");
        headers.insert(ORIGIN, self.me.node.as_str());
        headers.insert(PROXY, proxy.get().to_string().as_str());
        headers.insert(DEVICE, device.as_str());
        let payload = Bytes::copy_from_slice(frame.as_str().as_bytes());
        let request = client.request_with_headers(self.subjects.node(node), headers, payload);
        match tokio::time::timeout(self.config.gather_timeout, request).await {
            Ok(Ok(reply)) if &reply.payload[..] == b"ok" => Ok(ticket),
            Ok(Ok(_)) => Err(HubError::DeviceOffline(device.clone())),
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                // Nobody listens on that node's subject: nothing was sent.
                Err(HubError::DeviceOffline(device.clone()))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, node, "a forwarded command was not taken");
                Err(HubError::NoRouteAvailable(device.clone()))
            }
            Err(_) => {
                tracing::debug!(node, "a forwarded command was not answered in time");
                Err(HubError::NoRouteAvailable(device.clone()))
            }
        }
    }

    fn forget(&self, node: &str) {
        let devices = self.presence.lock().forget(node);
        self.refresh(&devices);
    }

    /// Tells this node's subscribers of `devices` their new cluster-wide status.
    fn refresh(&self, devices: &[DeviceId]) {
        for device in devices {
            self.local.refresh_status(device);
        }
    }

    fn send(&self, outgoing: Outgoing) {
        // Fails only once the publisher is gone (the hub is being dropped).
        let _ = self.outgoing.send(outgoing);
    }

    /// The membership table's and the presence table's expiry at `now`.
    fn expire(&self, now: Instant) {
        let changes = self.state.lock().membership.expire(now);
        self.changed(changes);
        let stale = {
            let state = self.state.lock();
            self.presence
                .lock()
                .forget_stale(now, self.config.dead_after, |who| {
                    state.membership.is_alive(who)
                })
        };
        self.refresh(&stale);
    }

    fn heard(&self, who: &Incarnation, now: Instant) {
        let change = self.state.lock().membership.heartbeat(who, now);
        self.changed(change.into_iter().collect());
    }

    fn goodbye(&self, who: &Incarnation) {
        let change = self.state.lock().membership.leave(who);
        self.changed(change.into_iter().collect());
    }

    /// Whether this node is joined: connected, and its own heartbeat comes back.
    fn joined(&self) -> bool {
        let state = self.state.lock();
        state.connected && state.membership.is_alive(&self.me)
    }

    /// How many other nodes are alive.
    fn others(&self) -> usize {
        let state = self.state.lock();
        state
            .membership
            .nodes()
            .filter(|n| n.node != self.me.node)
            .count()
    }

    fn health(&self) -> HubHealth {
        let state = self.state.lock();
        let nodes = state.membership.len();
        let reason = if !state.connected {
            Some(format!(
                "not connected to the cluster's NATS server at {}",
                self.config.url
            ))
        } else if !state.membership.is_alive(&self.me) {
            Some("not joined to the cluster yet: this node's heartbeat has not come back".into())
        } else {
            None
        };
        HubHealth::cluster(nodes, reason)
    }

    /// This node's presence of `device`, as reported to the others.
    fn local_presence(&self, device: &DeviceId) -> RemotePresence {
        let p = self.local.device_presence(device);
        RemotePresence::new(p.bridges, p.ble_connected, p.rssi)
    }

    /// Sends `payload` with `headers` to every other node on `subject` and adds up their
    /// answers (each a count), waiting at most [`ClusterConfig::gather_timeout`]. 0 without
    /// other nodes or while not joined.
    async fn gather(&self, subject: String, headers: HeaderMap, payload: Bytes) -> usize {
        let expected = self.others();
        let Some(client) = self.client.get() else {
            return 0;
        };
        if expected == 0 || !self.joined() {
            return 0;
        }
        let inbox = client.new_inbox();
        let deadline = tokio::time::Instant::now() + self.config.gather_timeout;
        let gathered = async {
            let mut replies = client.subscribe(inbox.clone()).await.ok()?;
            client
                .publish_with_reply_and_headers(subject, inbox, headers, payload)
                .await
                .ok()?;
            let mut total = 0;
            let mut answered = 0;
            while answered < expected {
                let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await
                else {
                    break;
                };
                answered += 1;
                total += std::str::from_utf8(&reply.payload)
                    .ok()
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
            }
            if answered < expected {
                tracing::debug!(expected, answered, "not every node answered in time");
            }
            Some(total)
        };
        tokio::time::timeout_at(deadline, gathered)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The end of a command this node sent through another node's bridge: dropped with the
/// command's ticket, it tells that node to let go of its own.
struct RemoteEnd {
    shared: Weak<Shared>,
    proxy: ConnectionId,
}

impl Drop for RemoteEnd {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let entry = shared.outbound.lock().remove(&self.proxy);
        if let Some((node, _)) = entry {
            shared.to_node(&node, "done", self.proxy.get(), Bytes::new(), None);
        }
    }
}

/// Takes the answers of commands other nodes sent through this node's bridges, and sends
/// them back to their node.
struct Interceptor(Weak<Shared>);

impl ResponseInterceptor for Interceptor {
    fn intercept(&self, connection: ConnectionId, response: BleResponse) -> Intercepted {
        let Some(shared) = self.0.upgrade() else {
            return Intercepted::Passed(response);
        };
        let key = (connection, response.request_id);
        let forward = {
            let mut table = shared.forwarded.lock();
            match table.by_answer.get(&key) {
                None => return Intercepted::Passed(response),
                // Only the device it was sent to may answer (PROTOCOL.md 3.2); the command
                // stays pending.
                Some(f) if f.device != response.device_id => {
                    return Intercepted::Taken(Err(ResponseRefused::new(
                        response.request_id,
                        ErrorCode::Forbidden,
                    )));
                }
                Some(_) => table.remove(&key),
            }
        };
        if let Some(forward) = forward {
            let text = BridgeToServer::BleResponse(response).to_json();
            shared.to_node(
                &forward.origin,
                "answer",
                forward.proxy,
                Bytes::from(text),
                None,
            );
        }
        Intercepted::Taken(Ok(()))
    }

    fn intercept_progress(
        &self,
        connection: ConnectionId,
        progress: &BleProgress,
    ) -> Option<Result<(), ResponseRefused>> {
        let shared = self.0.upgrade()?;
        let key = (connection, progress.request_id);
        let (origin, proxy) = {
            let table = shared.forwarded.lock();
            let forward = table.by_answer.get(&key)?;
            // Checked like its answer: only the device it was sent to reports on it.
            if forward.device != progress.device_id {
                return Some(Err(ResponseRefused::new(
                    progress.request_id,
                    ErrorCode::Forbidden,
                )));
            }
            (forward.origin.clone(), forward.proxy)
        };
        // The command's session is on its origin node, which records the stage.
        let text = BridgeToServer::BleProgress(progress.clone()).to_json();
        shared.to_node(&origin, "progress", proxy, Bytes::from(text), None);
        Some(Ok(()))
    }
}

/// The [`PresenceOverlay`] of the local hub: the other nodes' holders. Weak, because the
/// local hub holds it and the shared state holds the local hub.
struct Overlay(Weak<Shared>);

impl PresenceOverlay for Overlay {
    fn remote(&self, device: &DeviceId) -> Option<RemotePresence> {
        self.0.upgrade()?.presence.lock().remote(device)
    }
}

/// A [`Hub`] over a [`LocalHub`] that joins the other nodes meeting on one NATS server
/// (PROTOCOL.md 5).
///
/// Install it with the server's `ServerBuilder::wrap_hub`:
/// `builder.wrap_hub(move |local| ClusterHub::start(config, local))`. The local hub still
/// owns this process's sockets; the methods it overrides are distributed over NATS, the
/// others delegate to the local hub. The embedding server must pass every event of the local
/// hub to [`Hub::observe`] (`bridge-server` does). Start it inside a Tokio runtime: it
/// connects in the background (a node starts without NATS and serves its own connections
/// meanwhile) and reconnects by itself.
///
/// * Presence ([`Hub::device_presence`], [`Hub::online_devices`], and the `device_status`
///   frames of the local hub, through a [`PresenceOverlay`]) is cluster-wide.
/// * [`Hub::broadcast`] and [`Hub::send_to_user`] reach every node and count every node's
///   connections.
/// * [`Hub::counts`] stays this node's (`/metrics` is per node).
pub struct ClusterHub {
    local: LocalHub,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHub")
            .field("node", &self.shared.me.node)
            .field("health", &self.shared.health())
            .finish_non_exhaustive()
    }
}

impl ClusterHub {
    /// Joins the cluster of `config` around `local`, and returns the hub to install.
    ///
    /// Must be called inside a Tokio runtime. Installs the cluster's view of presence in
    /// `local` ([`LocalHub::set_presence_overlay`]); if `local` had one already, that one
    /// stays, and this node's subscribers see only its own presence.
    pub fn start(config: ClusterConfig, local: LocalHub) -> Arc<Self> {
        let me = Incarnation {
            node: config.node_id.clone(),
            epoch: fastrand::u64(1..),
        };
        let subjects = Subjects::new(&config.prefix);
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            me,
            subjects,
            local: local.clone(),
            state: Mutex::new(ClusterState {
                membership: Membership::new(config.dead_after),
                connected: false,
            }),
            presence: Mutex::new(PresenceTable::new()),
            client: OnceLock::new(),
            outgoing,
            resync: AtomicBool::new(false),
            outbound: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(ForwardTable::default()),
            config,
        });
        if !local.set_response_interceptor(Arc::new(Interceptor(Arc::downgrade(&shared)))) {
            tracing::warn!(
                "the local hub has a response interceptor already: commands from other nodes cannot be answered here"
            );
        }
        if !local.set_presence_overlay(Arc::new(Overlay(Arc::downgrade(&shared)))) {
            tracing::warn!(
                "the local hub has a presence overlay already: device_status frames stay this node's"
            );
        }
        let tasks = vec![tokio::spawn(run(Arc::clone(&shared), outgoing_rx))];
        Arc::new(Self {
            local,
            shared,
            tasks,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.me.node
    }

    /// The nodes this node sees alive (itself included once it has joined), ordered by id.
    pub fn nodes(&self) -> Vec<String> {
        self.shared
            .state
            .lock()
            .membership
            .nodes()
            .map(|n| n.node)
            .collect()
    }

    /// Tells the other nodes this one is leaving, so that they drop what it held at once
    /// instead of after the heartbeat silence. Call it when shutting down.
    pub async fn leave(&self) {
        if let Some(client) = self.shared.client.get() {
            let bye = wire::heartbeat(&self.shared.me, true);
            let _ = tokio::time::timeout(self.shared.config.heartbeat, async {
                let _ = client.publish(self.shared.subjects.heartbeat(), bye).await;
                let _ = client.flush().await;
            })
            .await;
        }
    }
}

impl Drop for ClusterHub {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[async_trait]
impl Hub for ClusterHub {
    fn local(&self) -> &LocalHub {
        &self.local
    }

    async fn send_to_device(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Result<InFlight, HubError> {
        let holders = self.shared.presence.lock().holders(device_id);
        // The local path, as fast as a single server's, when no other node holds the device.
        if holders.is_empty() {
            return self.local.send_to_device(device_id, frame);
        }
        let local = self.local.device_presence(device_id);
        let here = local.online.then_some((local.ble_connected, local.rssi));
        match routing::choose(here, &holders) {
            Some(Route::Remote(node)) => match self.shared.forward(&node, device_id, frame).await {
                Ok(ticket) => Ok(ticket),
                // Only a node that said it sent nothing is passed over: after a timeout the
                // write may have gone out, and a second one could act twice on the device.
                Err(error @ HubError::DeviceOffline(_)) if local.online => {
                    tracing::debug!(%error, node, "sending through this node's holder instead");
                    self.local.send_to_device(device_id, frame)
                }
                Err(error) => Err(error),
            },
            _ => self.local.send_to_device(device_id, frame),
        }
    }

    async fn broadcast(&self, device_id: &DeviceId, frame: &Frame) -> usize {
        let here = self.local.broadcast(device_id, frame);
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, self.shared.me.node.as_str());
        headers.insert(DEVICE, device_id.as_str());
        let payload = Bytes::copy_from_slice(frame.as_str().as_bytes());
        here + self
            .shared
            .gather(self.shared.subjects.broadcast(), headers, payload)
            .await
    }

    async fn send_to_user(&self, user_id: &UserId, frame: &Frame) -> usize {
        let here = self.local.send_to_user(user_id, frame);
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, self.shared.me.node.as_str());
        headers.insert(USER, user_id.as_str());
        let payload = Bytes::copy_from_slice(frame.as_str().as_bytes());
        here + self
            .shared
            .gather(self.shared.subjects.user(), headers, payload)
            .await
    }

    async fn device_presence(&self, device_id: &DeviceId) -> DevicePresence {
        let local = self.local.device_presence(device_id);
        match self.shared.presence.lock().remote(device_id) {
            Some(remote) => remote.merged_with(&local),
            None => local,
        }
    }

    async fn online_devices(&self) -> Vec<DevicePresence> {
        let mut devices: HashMap<DeviceId, DevicePresence> = self
            .local
            .online_devices()
            .into_iter()
            .map(|p| (p.device_id.clone(), p))
            .collect();
        let remote_devices = self.shared.presence.lock().devices();
        for device in remote_devices {
            if let std::collections::hash_map::Entry::Vacant(entry) = devices.entry(device) {
                let local = self.local.device_presence(entry.key());
                entry.insert(local);
            }
        }
        let presence = self.shared.presence.lock();
        let mut merged: Vec<DevicePresence> = devices
            .into_values()
            .map(|local| match presence.remote(&local.device_id) {
                Some(remote) => remote.merged_with(&local),
                None => local,
            })
            .filter(|p| p.online)
            .collect();
        merged.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        merged
    }

    fn health(&self) -> HubHealth {
        self.shared.health()
    }

    fn queued(&self, device_id: &DeviceId) {
        if self.local.device_presence(device_id).online {
            return;
        }
        let holders = self.shared.presence.lock().holders(device_id);
        for (node, _) in holders {
            self.shared
                .to_node(&node, "queued", 0, Bytes::new(), Some(device_id));
        }
    }

    fn observe(&self, event: &HubEvent) {
        if let HubEvent::DeviceReleased {
            device_id,
            connection,
            reason,
        } = event
            && *reason != ReleaseReason::Remote
        {
            // Commands other nodes sent through this bridge for this device are lost.
            let lost = self
                .shared
                .forwarded
                .lock()
                .remove_where(|(c, _), f| c == connection && f.device == *device_id);
            for forward in lost {
                self.shared.to_node(
                    &forward.origin,
                    "lost",
                    forward.proxy,
                    Bytes::new(),
                    Some(device_id),
                );
            }
        }
        match event {
            HubEvent::DeviceClaimed { device_id, .. }
            | HubEvent::DeviceReleased { device_id, .. }
            | HubEvent::BleStatusReported { device_id, .. }
            | HubEvent::DeviceOffline { device_id } => {
                self.shared.send(Outgoing::Device(device_id.clone()));
            }
            _ => {}
        }
    }
}

/// Connects, then keeps the node's heartbeat, its view of the others and its answers to them
/// until aborted.
async fn run(shared: Arc<Shared>, outgoing: mpsc::UnboundedReceiver<Outgoing>) {
    let events = Arc::clone(&shared);
    let options = async_nats::ConnectOptions::new()
        .name(format!("bridge-server {}", shared.me.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(shared.config.heartbeat.max(Duration::from_millis(100)))
        .connection_timeout(shared.config.dead_after)
        .reconnect_delay_callback(|attempts| {
            // Quick first retries, then at most 2 s between them: a cluster heals within
            // seconds of NATS coming back.
            Duration::from_millis(100 * u64::try_from(attempts.min(20)).unwrap_or(20))
        })
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move { on_event(&shared, &event) }
        });
    let client = match options.connect(shared.config.url.as_str()).await {
        Ok(client) => client,
        Err(error) => {
            // Only an unusable address gets here (retry_on_initial_connect retries the rest).
            tracing::error!(%error, url = %shared.config.url, "cannot use the cluster's NATS server; serving this node's connections only");
            return;
        }
    };
    let _ = shared.client.set(client.clone());
    let subjects = &shared.subjects;
    let subscriptions = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(subjects.heartbeat()).await?,
            client.subscribe(subjects.presence()).await?,
            client.subscribe(subjects.broadcast()).await?,
            client.subscribe(subjects.user()).await?,
            client.subscribe(subjects.node(&shared.me.node)).await?,
        ))
    };
    let (heartbeats, presence, broadcasts, users, mine) = match subscriptions.await {
        Ok(subscribers) => subscribers,
        Err(error) => {
            tracing::error!(%error, "cannot subscribe to the cluster's subjects");
            return;
        }
    };
    let _tasks = [
        tokio::spawn(listen_heartbeats(Arc::clone(&shared), heartbeats)),
        tokio::spawn(listen_presence(Arc::clone(&shared), presence)),
        tokio::spawn(answer_fan_out(
            Arc::clone(&shared),
            client.clone(),
            broadcasts,
        )),
        tokio::spawn(answer_fan_out(Arc::clone(&shared), client.clone(), users)),
        tokio::spawn(listen_node(Arc::clone(&shared), client.clone(), mine)),
        tokio::spawn(publish_presence(
            Arc::clone(&shared),
            client.clone(),
            outgoing,
        )),
    ]
    .map(AbortOnDrop);
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat = wire::heartbeat(&shared.me, false);
    loop {
        tick.tick().await;
        shared.expire(now());
        if shared.resync.swap(false, Ordering::AcqRel) {
            shared.send(Outgoing::Snapshot);
        }
        // While NATS is away the client buffers publications; a beat that cannot even be
        // buffered in time is skipped (the next one will do).
        let publish = client.publish(shared.subjects.heartbeat(), beat.clone());
        if tokio::time::timeout(shared.config.heartbeat, publish)
            .await
            .is_err()
        {
            tracing::debug!("heartbeat not published in time");
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn on_event(shared: &Shared, event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!(url = %shared.config.url, "connected to the cluster's NATS server");
            shared.state.lock().connected = true;
            // Whatever was said while away may be lost: say everything again.
            shared.send(Outgoing::Snapshot);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!(
                url = %shared.config.url,
                "lost the cluster's NATS server; serving this node's connections only until it is back"
            );
            shared.state.lock().connected = false;
        }
        other => tracing::debug!(event = %other, "NATS client event"),
    }
}

async fn listen_heartbeats(shared: Arc<Shared>, mut heartbeats: Subscriber) {
    while let Some(message) = heartbeats.next().await {
        match wire::parse_heartbeat(&message.payload) {
            Some((who, false)) => shared.heard(&who, now()),
            Some((who, true)) => shared.goodbye(&who),
            None => tracing::debug!("ignored a malformed heartbeat"),
        }
    }
}

async fn listen_presence(shared: Arc<Shared>, mut reports: Subscriber) {
    while let Some(message) = reports.next().await {
        let Some(report) = wire::parse_presence(&message.payload) else {
            tracing::debug!("ignored a malformed presence report");
            continue;
        };
        if report.from.node == shared.me.node {
            continue;
        }
        let changed = {
            let mut table = shared.presence.lock();
            if report.full {
                table.replace(&report.from, report.devices, now())
            } else {
                report
                    .devices
                    .into_iter()
                    .flat_map(|(device, p)| table.update(&report.from, device, p, now()))
                    .collect()
            }
        };
        shared.refresh(&changed);
    }
}

/// Answers the other nodes' broadcasts and frames for users: queues the frame for this
/// node's connections and replies how many.
async fn answer_fan_out(shared: Arc<Shared>, client: Client, mut requests: Subscriber) {
    while let Some(message) = requests.next().await {
        let Some(headers) = &message.headers else {
            continue;
        };
        if headers.get(ORIGIN).map(async_nats::HeaderValue::as_str) == Some(shared.me.node.as_str())
        {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&message.payload) else {
            continue;
        };
        let frame = Frame::from_json_text(text);
        let delivered = if let Some(device) = headers.get(DEVICE) {
            match DeviceId::new(device.as_str()) {
                Ok(device) => shared.local.broadcast(&device, &frame),
                Err(_) => continue,
            }
        } else if let Some(user) = headers.get(USER) {
            shared
                .local
                .send_to_user(&UserId::new(user.as_str()), &frame)
        } else {
            continue;
        };
        if let Some(reply) = message.reply {
            let _ = client
                .publish(reply, Bytes::from(delivered.to_string()))
                .await;
        }
    }
}

/// Publishes this node's presence changes, in order, each read from the local hub when it
/// is sent; a device whose summary did not change since it was last published is skipped.
async fn publish_presence(
    shared: Arc<Shared>,
    client: Client,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut published: HashMap<DeviceId, RemotePresence> = HashMap::new();
    while let Some(next) = outgoing.recv().await {
        let report = match next {
            Outgoing::Node {
                node,
                headers,
                payload,
            } => {
                let publish =
                    client.publish_with_headers(shared.subjects.node(&node), headers, payload);
                if tokio::time::timeout(shared.config.heartbeat, publish)
                    .await
                    .is_err()
                {
                    tracing::debug!(node, "a message for a node was not published in time");
                }
                continue;
            }
            Outgoing::Device(device) => {
                let now = shared.local_presence(&device);
                let before = published.get(&device).copied().unwrap_or_default();
                if now == before {
                    continue;
                }
                if now.bridges == 0 {
                    published.remove(&device);
                } else {
                    published.insert(device.clone(), now);
                }
                PresenceReport {
                    from: shared.me.clone(),
                    full: false,
                    devices: vec![(device, now)],
                }
            }
            Outgoing::Snapshot => {
                // Whatever is queued is covered by the snapshot, read after it (a burst of
                // snapshot requests when several nodes join at once is one snapshot).
                while outgoing.try_recv().is_ok() {}
                published = shared
                    .local
                    .online_devices()
                    .into_iter()
                    .map(|p| {
                        let summary = RemotePresence::new(p.bridges, p.ble_connected, p.rssi);
                        (p.device_id, summary)
                    })
                    .collect();
                PresenceReport {
                    from: shared.me.clone(),
                    full: true,
                    devices: published.iter().map(|(d, p)| (d.clone(), *p)).collect(),
                }
            }
        };
        let publish = client.publish(shared.subjects.presence(), wire::presence(&report));
        if !matches!(
            tokio::time::timeout(shared.config.heartbeat, publish).await,
            Ok(Ok(()))
        ) {
            tracing::debug!("a presence report was not published: a snapshot follows");
            shared.resync.store(true, Ordering::Release);
        }
    }
}

/// Handles the messages for this node: commands to send through its bridges and their ends;
/// answers and losses of the commands it sent through other nodes' bridges.
async fn listen_node(shared: Arc<Shared>, client: Client, mut messages: Subscriber) {
    while let Some(message) = messages.next().await {
        let Some(headers) = &message.headers else {
            continue;
        };
        let header = |name: &str| headers.get(name).map(async_nats::HeaderValue::as_str);
        let (Some(kind), Some(origin), Some(proxy)) = (
            header(KIND),
            header(ORIGIN),
            header(PROXY).and_then(|p| p.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let device = header(DEVICE).and_then(|d| DeviceId::new(d).ok());
        match kind {
            "write" => {
                let taken = device.is_some_and(|device| {
                    take_write(&shared, origin, proxy, &device, &message.payload)
                });
                if let Some(reply) = message.reply {
                    let answer = if taken { "ok" } else { "offline" };
                    let _ = client
                        .publish(reply, Bytes::from_static(answer.as_bytes()))
                        .await;
                }
            }
            "done" => {
                let mut table = shared.forwarded.lock();
                if let Some(key) = table.by_origin.get(&(origin.to_owned(), proxy)).copied() {
                    drop(table.remove(&key));
                }
            }
            "answer" | "progress" => {
                let proxy = ConnectionId::new(proxy);
                if !sent_through(&shared, proxy, origin) {
                    continue;
                }
                let Ok(text) = std::str::from_utf8(&message.payload) else {
                    continue;
                };
                let limits = shared.local.config().protocol_limits;
                let offered = match BridgeToServer::decode(text, &limits) {
                    Ok(BridgeToServer::BleResponse(response)) => {
                        shared.local.offer_response(proxy, response)
                    }
                    Ok(BridgeToServer::BleProgress(progress)) => {
                        shared.local.offer_progress(proxy, &progress)
                    }
                    _ => continue,
                };
                if let Err(refused) = offered {
                    tracing::debug!(?refused, kind, "a report from another node was refused");
                }
            }
            "queued" => {
                if let Some(device) = device {
                    shared.local.request_delivery(&device);
                }
            }
            "lost" => {
                let proxy = ConnectionId::new(proxy);
                if let (true, Some(device)) = (sent_through(&shared, proxy, origin), device) {
                    shared.local.release_remote(proxy, &device);
                }
            }
            _ => {}
        }
    }
}

/// Sends a command another node forwarded through this node's best holder of `device`.
/// `false` if no bridge here can take it.
fn take_write(
    shared: &Shared,
    origin: &str,
    proxy: u64,
    device: &DeviceId,
    payload: &[u8],
) -> bool {
    let Some((text, request_id)) = wire::parse_write(payload) else {
        return false;
    };
    // The table is locked while the write is queued, so that an answer, which the bridge
    // cannot send before it has the write, finds the command.
    let mut table = shared.forwarded.lock();
    let Ok(ticket) = shared
        .local
        .send_to_device(device, &Frame::from_json_text(text))
    else {
        return false;
    };
    let key = (ticket.connection(), request_id);
    table.by_origin.insert((origin.to_owned(), proxy), key);
    table.by_answer.insert(
        key,
        Forward {
            origin: origin.to_owned(),
            proxy,
            device: device.clone(),
            _ticket: ticket,
        },
    );
    true
}

/// Whether `proxy` stands for a command this node sent through a bridge of `origin`: only
/// that node may answer it, report its progress or say it is lost.
fn sent_through(shared: &Shared, proxy: ConnectionId, origin: &str) -> bool {
    shared
        .outbound
        .lock()
        .get(&proxy)
        .is_some_and(|(node, _)| node == origin)
}

//! Lifecycle hooks: the application hears about users, devices, bridges and commands
//! without being on the server's path.
//!
//! Install one [`Hooks`] implementation with [`ServerBuilder::hooks`](crate::ServerBuilder::hooks).
//! Every method has a default that does nothing, so an implementation overrides only what
//! it needs.
//!
//! # How hooks run
//!
//! * **Off the hot path.** The server never calls a hook where it happens. It puts a small
//!   record of the event on a bounded queue ([`ServerBuilder::hook_queue_capacity`](crate::ServerBuilder::hook_queue_capacity),
//!   default [`DEFAULT_HOOK_QUEUE`]) with a non-blocking `try_send` and goes on; one task
//!   takes the events off the queue and awaits the hook for each. A slow hook slows only
//!   the hooks after it.
//! * **When the queue is full** (the hooks are slower than the events), the new event is
//!   dropped, counted in `bridge_hook_events_dropped_total`, and logged at `warn` level (the
//!   first drop, then every 1,000th). The server never waits for a hook: connections,
//!   presence and commands go on exactly as without hooks.
//! * **A hook that panics** is caught: the panic is logged at `error` level and counted in
//!   `bridge_task_panics_total{task="hook"}`, the event is lost, and the next event is
//!   delivered as usual. It takes neither the hook task nor the server down.
//! * **One at a time, in order.** Hooks run sequentially on one task, in the order the
//!   server observed the events (the hub reports presence in the order it changed, hub-wide;
//!   see below). Each event is delivered at most once (exactly once unless the queue was
//!   full or the server was dropped first).
//! * **At shutdown** the hook task ends when the server is dropped; events still queued
//!   then are delivered first, unless the runtime itself stops.
//!
//! # Order
//!
//! For one connection, one user or one device, the hooks come in the order the changes
//! happened:
//!
//! * [`Hooks::user_connected`] when a user's first user connection opens;
//!   [`Hooks::user_disconnected`] when its last one closes. Between them no other
//!   `user_connected` for that user: a second connection opening, or one of two closing,
//!   is no event.
//! * [`Hooks::bridge_connected`] when a bridge connection is registered, *before* the
//!   [`Hooks::device_online`] of the devices it names at connect;
//!   [`Hooks::bridge_disconnected`] when it is gone, *after* the [`Hooks::device_offline`]
//!   of the devices only it held.
//! * [`Hooks::device_online`] when a device gets its first holder (named at connect, or
//!   claimed with `ble_status`); [`Hooks::device_offline`] when it loses its last (a
//!   `release`, or the holder's connection closing). They alternate per device, starting
//!   with `device_online`; a second holder coming or going is no event.
//! * [`Hooks::command_ended`] once for every answer of the command path (HTTP `POST
//!   /v1/devices/{id}/commands` and a user's `command` frame, whatever the answer, `queued`
//!   and refusals included) and once for every delivery attempt of a queued command — the
//!   same events `bridge_commands_total{outcome}` counts.
//!
//! Events of different connections and devices are ordered as the server saw them, which
//! is not necessarily the order their clients sent them in.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bridge_hub::{CloseReason, HubEvent, UserId};
use bridge_protocol::{ConnectionId, DeviceId, Role};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Default of [`ServerBuilder::hook_queue_capacity`](crate::ServerBuilder::hook_queue_capacity):
/// events that may wait for the hooks before new ones are dropped.
pub const DEFAULT_HOOK_QUEUE: usize = 4096;

/// What the application hears from the server. Every method does nothing by default.
///
/// The methods are awaited one at a time, in order, on the server's hook task — never on
/// a connection's task or in a request (see the [module docs](self) for the queue, the
/// order and what happens to a panic).
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// A user's first user connection opened.
    async fn user_connected(&self, user: &UserId) {
        let _ = user;
    }

    /// A user's last user connection closed.
    async fn user_disconnected(&self, user: &UserId) {
        let _ = user;
    }

    /// A device got its first holder.
    async fn device_online(&self, device: &DeviceId) {
        let _ = device;
    }

    /// A device lost its last holder.
    async fn device_offline(&self, device: &DeviceId) {
        let _ = device;
    }

    /// A bridge connection was registered, before any device it names is claimed.
    async fn bridge_connected(&self, bridge: &BridgeConnection) {
        let _ = bridge;
    }

    /// A bridge connection is gone, after its devices were released; `reason` says why.
    async fn bridge_disconnected(&self, bridge: &BridgeConnection, reason: CloseReason) {
        let _ = (bridge, reason);
    }

    /// A command ended: an answer of the command path or a delivery attempt of a queued
    /// command.
    async fn command_ended(&self, ended: &CommandEnded) {
        let _ = ended;
    }
}

/// No hooks: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}

/// A bridge connection, as the hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeConnection {
    /// The connection (unique in this process while the server runs).
    pub connection: ConnectionId,
    /// Whose bridge it is (the token's `sub`, or `userId` in development mode).
    pub user: UserId,
}

/// How a command ended, as the hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandEnded {
    /// The device it was for.
    pub device: DeviceId,
    /// The `outcome` label of `bridge_commands_total`: the status word of PROTOCOL.md 4.1
    /// (`succeeded`, `queued`, `awaiting_confirmation`, `device_error`, `offline`,
    /// `bridge_lost`, `timeout`), or the error code of a refusal (`queue_full`, …).
    pub outcome: &'static str,
    /// How long it was out at a bridge, if it went out.
    pub sent_for: Option<Duration>,
}

/// One event waiting for the hooks.
#[derive(Debug)]
enum HookEvent {
    UserConnected(UserId),
    UserDisconnected(UserId),
    DeviceOnline(DeviceId),
    DeviceOffline(DeviceId),
    BridgeConnected(BridgeConnection),
    BridgeDisconnected(BridgeConnection, CloseReason),
    CommandEnded(CommandEnded),
}

/// The server's end of the hook queue. Without hooks installed it holds nothing and every
/// call is a no-op.
pub(crate) struct HookQueue {
    sender: Option<mpsc::Sender<HookEvent>>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl HookQueue {
    /// A queue of `capacity` events and the task that runs `hooks` for them, spawned on the
    /// current runtime. `None` hooks: no queue, no task.
    pub(crate) fn start(
        hooks: Option<Arc<dyn Hooks>>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sender = hooks.map(|hooks| {
            let (sender, receiver) = mpsc::channel(capacity.max(1));
            tokio::spawn(run(hooks, receiver, Arc::clone(&metrics)));
            sender
        });
        Self {
            sender,
            dropped: AtomicU64::new(0),
            metrics,
        }
    }

    /// Queues what `event` means to the hooks, if anything. Never waits.
    pub(crate) fn observe(&self, event: &HubEvent) {
        if self.sender.is_none() {
            return;
        }
        let hook = match event {
            HubEvent::UserFirstConnected { user_id } => HookEvent::UserConnected(user_id.clone()),
            HubEvent::UserLastDisconnected { user_id } => {
                HookEvent::UserDisconnected(user_id.clone())
            }
            HubEvent::DeviceOnline { device_id } => HookEvent::DeviceOnline(device_id.clone()),
            HubEvent::DeviceOffline { device_id } => HookEvent::DeviceOffline(device_id.clone()),
            HubEvent::ConnectionOpened {
                connection,
                role: Role::Bridge,
                user_id,
            } => HookEvent::BridgeConnected(BridgeConnection {
                connection: *connection,
                user: user_id.clone(),
            }),
            HubEvent::ConnectionClosed {
                connection,
                role: Role::Bridge,
                user_id,
                reason,
            } => HookEvent::BridgeDisconnected(
                BridgeConnection {
                    connection: *connection,
                    user: user_id.clone(),
                },
                *reason,
            ),
            _ => return,
        };
        self.push(hook);
    }

    /// Queues a command's end. Never waits.
    pub(crate) fn command_ended(
        &self,
        device: &DeviceId,
        outcome: &'static str,
        sent_for: Option<Duration>,
    ) {
        if self.sender.is_some() {
            self.push(HookEvent::CommandEnded(CommandEnded {
                device: device.clone(),
                outcome,
                sent_for,
            }));
        }
    }

    fn push(&self, event: HookEvent) {
        let Some(sender) = &self.sender else {
            return;
        };
        if sender.try_send(event).is_err() {
            // Full (or the task is gone with the runtime): dropped, never waited for.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.hook_event_dropped();
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    dropped = dropped + 1,
                    "the hook queue is full: an event was dropped (the hooks are slower than the events)"
                );
            }
        }
    }
}

/// The hook task: one event at a time, a panic caught, logged and counted.
async fn run(hooks: Arc<dyn Hooks>, mut events: mpsc::Receiver<HookEvent>, metrics: Arc<Metrics>) {
    while let Some(event) = events.recv().await {
        let hooks = &*hooks;
        let call = async {
            match &event {
                HookEvent::UserConnected(user) => hooks.user_connected(user).await,
                HookEvent::UserDisconnected(user) => hooks.user_disconnected(user).await,
                HookEvent::DeviceOnline(device) => hooks.device_online(device).await,
                HookEvent::DeviceOffline(device) => hooks.device_offline(device).await,
                HookEvent::BridgeConnected(bridge) => hooks.bridge_connected(bridge).await,
                HookEvent::BridgeDisconnected(bridge, reason) => {
                    hooks.bridge_disconnected(bridge, *reason).await;
                }
                HookEvent::CommandEnded(ended) => hooks.command_ended(ended).await,
            }
        };
        if let Err(panic) = AssertUnwindSafe(call).catch_unwind().await {
            let message = panic_message(panic.as_ref());
            tracing::error!(?event, panic = %message, "a hook panicked; the event is lost");
            metrics.task_panicked("hook");
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

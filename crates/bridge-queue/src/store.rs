//! The [`Store`] trait.

use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{CommandId, CommandType, DeviceId, HexPayload, Hops, TtlSeconds};

use crate::error::StoreError;
use crate::model::{
    Cut, Lease, Leased, NewCommand, NodeId, OpenCounts, QueuedCommand, SweepReport,
};

/// The offline command queue of PROTOCOL.md 4.2.
///
/// # Lifecycle
///
/// `awaiting_confirmation` →(`confirm`)→ `pending` →(`lease_next`)→ `delivering`
/// →(`complete`)→ `succeeded` | `failed`; `delivering` →(`release`, a lapsed lease, or
/// `reclaim` by its owner)→ `pending` again, or `failed` once
/// [`max_attempts`](crate::StoreConfig::max_attempts) deliveries were made, or `expired`
/// past its TTL; `pending` and `awaiting_confirmation` →(`cancel`)→ `cancelled`, and
/// →(TTL passed)→ `expired`. A command whose TTL has passed is never handed out.
///
/// Time alone changes nothing that is stored: a command whose TTL passed, or whose lease
/// lapsed, keeps its stored status until a call that writes ends it — [`expire`](Self::expire)
/// or [`sweep`](Self::sweep) (which return the commands they ended as `expired`, so that
/// each expiry is announced exactly once), or a write of its device (`enqueue`, `confirm`,
/// `cancel`, `lease_next`, `drain_pending`, which end it silently first).
///
/// # Reads change nothing
///
/// [`get`](Self::get), [`list_open`](Self::list_open), [`pending_count`](Self::pending_count),
/// [`due_devices`](Self::due_devices) and [`open_counts`](Self::open_counts) report the
/// stored state and write nothing: they neither end expired commands nor recover lapsed
/// leases. So `get` may show a command past its TTL as `pending`, and `list_open` and
/// `pending_count` still count it, until one of the writes above ends it; a server that
/// wants current figures calls `expire` for the device first (and announces what it
/// returns).
///
/// # Delivery: one lease per device, across processes
///
/// A delivering process (a *node*, named by a [`NodeId`]) asks for a device's next command
/// with [`lease_next`](Self::lease_next). The store hands it out **only when no command of
/// that device is under a live lease**, whoever holds it, in one atomic step (one
/// transaction, one Lua script, one lock): two processes sharing the store can never both
/// win, so a device never has two deliveries at once, and its commands go out in queue
/// order. The holder sends the command, then ends the lease with
/// [`complete`](Self::complete) (the device answered, with its reply or its error) or
/// [`release`](Self::release) (the delivery was cut off, or never left).
///
/// Leases are **fenced**: each carries a [`LeaseToken`](crate::LeaseToken) that changes
/// every time the command is leased, and `complete` and `release` act only for the live holder. A holder whose
/// lease lapsed and was recovered (or handed to another node) is refused with
/// [`StoreError::StaleLease`] and must not retry: the command is, or was, delivered again.
/// A holder whose lease lapsed but was not yet recovered still ends it (its `complete`
/// records the device's real answer).
///
/// A lease neither completed nor released before its deadline — the node crashed — lapses,
/// and the command is handed out again (at least once). A node that restarts under the same
/// id calls [`reclaim`](Self::reclaim) to take back its former leases at once instead of
/// waiting for them to lapse.
///
/// `attempts` counts the times the command's `ble_write` left for a bridge: `complete`
/// counts one, `release` counts one unless the delivery [never left](Cut::NotSent), and a
/// lapsed or reclaimed lease counts one (whether it left is unknown, so it is assumed).
/// Taking a lease counts nothing.
///
/// [`due_devices`](Self::due_devices) tells which devices have something to deliver;
/// [`sweep`](Self::sweep) ends expired commands and recovers lapsed leases of every device
/// (the device-scoped writes do this for their device on their own, silently; reads never
/// do); [`expire`](Self::expire) and `sweep` return the commands they ended as `expired`,
/// so that the server can announce them.
///
/// # Order
///
/// A device's commands are handed out in the order they were queued, whoever queued them;
/// a command updated in place keeps its place, and a released or recovered command is handed out before the ones
/// behind it. Commands awaiting confirmation are passed over (they do not hold the order),
/// and so are commands handed out for good by [`drain_pending`](Self::drain_pending).
/// [`list_open`](Self::list_open) lists a device's commands in this order, as stored (a
/// command past its TTL not yet ended included).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues a command, or updates in place the `pending` or `awaiting_confirmation`
    /// command of the same device and command type **queued by the same party**
    /// ([`NewCommand::queued_by`]; same id, same place; new payload, TTL, confirmation flag,
    /// device type and timeout, and so status). The dedup key is (device, command type,
    /// [`Party`](crate::Party)), PROTOCOL.md 4.2: a user's command never overwrites the
    /// backend's (nor skips its confirmation), nor another user's, nor the backend's a
    /// user's; it queues after it as a command of its own. A `delivering` command of that
    /// type is left alone and the new one queues after it. Answers
    /// [`QueueFull`](StoreError::QueueFull) when the device already holds the configured
    /// number of non-final commands and nothing is updated in place.
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError>;

    /// Queues a command of the backend that needs no confirmation
    /// ([`enqueue`](Self::enqueue)).
    async fn enqueue_or_update(
        &self,
        device: &DeviceId,
        command_type: &CommandType,
        payload: HexPayload,
        ttl: TtlSeconds,
    ) -> Result<CommandId, StoreError> {
        self.enqueue(NewCommand::new(device.clone(), command_type.clone(), payload).with_ttl(ttl))
            .await
    }

    /// Queues a command of the backend in `awaiting_confirmation`
    /// ([`enqueue`](Self::enqueue)).
    async fn enqueue_with_confirmation(
        &self,
        device: &DeviceId,
        command_type: &CommandType,
        payload: HexPayload,
        ttl: TtlSeconds,
    ) -> Result<CommandId, StoreError> {
        self.enqueue(
            NewCommand::new(device.clone(), command_type.clone(), payload)
                .with_ttl(ttl)
                .requiring_confirmation(),
        )
        .await
    }

    /// `awaiting_confirmation` → `pending`. [`Conflict`](StoreError::Conflict) in any other
    /// state (an expired one included), [`NotFound`](StoreError::NotFound) for an unknown id.
    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError>;

    /// `pending` or `awaiting_confirmation` → `cancelled`. [`Conflict`](StoreError::Conflict)
    /// once `delivering` or final, [`NotFound`](StoreError::NotFound) for an unknown id.
    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError>;

    /// Leases the device's next deliverable command to `owner`, atomically: first recovers
    /// the device's lapsed leases and ends its expired commands (as every device-scoped
    /// write does), then, **unless a command of the device is under a live lease** (held by
    /// anyone, `owner` included), marks the oldest `pending` command `delivering` with a
    /// fresh [`LeaseToken`](crate::LeaseToken), `owner` and the deadline
    /// `now + its timeout + grace`, and returns it. `None` when a live lease holds the device or nothing is deliverable.
    /// Does not count an attempt.
    ///
    /// The lease lasts the command's own [`timeout`](QueuedCommand::timeout) (which the
    /// caller cannot know before the command is picked) plus `grace`, for the round trips
    /// around the wait (PROTOCOL.md 5: "the command's timeout plus a grace of a few
    /// seconds"); the deadline is computed in the same atomic step that picks the command,
    /// from the timeout stored with it. `grace` counts in whole milliseconds (rounded
    /// down); a zero grace is allowed, the lease then lasts exactly the timeout, which is at
    /// least 1 ms. [`InvalidInput`](StoreError::InvalidInput)
    /// ([`LeaseGraceTooLong`](crate::InvalidInput::LeaseGraceTooLong)) for a grace over
    /// [`Leased::MAX_GRACE`].
    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError>;

    /// Ends a delivery the device answered: `succeeded` with its reply, or `failed` with its
    /// error; counts one attempt. [`StaleLease`](StoreError::StaleLease) unless `lease` is
    /// the command's live lease (same token; a lapsed lease not yet recovered still counts as
    /// live), [`NotFound`](StoreError::NotFound) for an unknown id.
    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError>;

    /// Ends a delivery that was cut off (bridge lost, timeout, shutdown) or never left
    /// ([`Cut::NotSent`]: the device went offline first). The command goes back to `pending`
    /// (its place kept), or `failed` once its attempts reached the maximum, or `expired` if
    /// its TTL passed. Counts one attempt for [`Cut::Sent`], none for [`Cut::NotSent`].
    /// [`StaleLease`](StoreError::StaleLease) and [`NotFound`](StoreError::NotFound) as for
    /// [`complete`](Self::complete).
    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError>;

    /// Records how far the delivery under `lease` got (PROTOCOL.md 4.1, version 1.1:
    /// `stage`/`progress`), for [`QueuedCommand::hops`] and so `GET /v1/commands/{id}`
    /// (which shows the latest attempt's). Called once the attempt's `ble_write` has come
    /// back (answered, timed out, cut off) and before [`complete`](Self::complete) or
    /// [`release`](Self::release) ends the lease, so the command they return, and announce,
    /// carries it. Fenced like them: [`StaleLease`](StoreError::StaleLease) unless `lease` is
    /// live, [`NotFound`](StoreError::NotFound) for an unknown id.
    ///
    /// The default keeps nothing and answers `Ok` (a store written before version 1.1: its
    /// commands show no stage); every backend of this crate overrides it.
    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        let _ = (lease, hops);
        Ok(())
    }

    /// Takes back every live or lapsed lease held by `owner` (a node restarted under the same
    /// id; its former deliveries are over): each such command is ended as by a lapsed lease
    /// (one attempt counted; back to `pending`, or `failed` after the last attempt, or
    /// `expired` past its TTL), so that it can be delivered again at once. Returns the
    /// commands it changed, in no particular order.
    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// The original toolkit's call, kept for compatibility: hands out **all** the device's
    /// deliverable commands to `owner`, oldest first, **at most once**. They are marked
    /// `delivering` with no lease deadline, so they are never handed out again, even if the
    /// caller crashes before sending them (and [`reclaim`](Self::reclaim) leaves them
    /// alone); the caller may still record the answer with [`complete`](Self::complete)
    /// using the returned leases. New code uses [`lease_next`](Self::lease_next).
    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError>;

    /// The command with this id, final or not, as stored: changes nothing, so a command
    /// whose TTL passed keeps its stored status until a write ends it (see
    /// [Reads change nothing](Self#reads-change-nothing)). [`NotFound`](StoreError::NotFound)
    /// if unknown, or final and past its [retention](crate::StoreConfig::retention) (deleted
    /// or not yet).
    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError>;

    /// The device's commands that are not final as stored, in delivery order; changes
    /// nothing (a command past its TTL is listed until a write ends it).
    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// How many of the device's commands are not final as stored (`pendingCommands` of
    /// PROTOCOL.md 4.3); changes nothing (a command past its TTL counts until a write ends
    /// it: call [`expire`](Self::expire) first for a current figure).
    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError>;

    /// Up to `limit` devices that have a command to hand out now (`pending` within its TTL,
    /// or `delivering` under a lapsed lease). The server intersects them with the devices
    /// online and leases for each.
    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError>;

    /// Ends every command whose TTL passed as `expired` and recovers every lapsed lease,
    /// across all devices, and returns what changed, with the commands it ended as `expired`
    /// (bounded, see [`SweepReport::expired_commands`]). Meant for a periodic task;
    /// correctness does not depend on it.
    async fn sweep(&self) -> Result<SweepReport, StoreError>;

    /// Ends the device's commands whose TTL passed as `expired` (and recovers its lapsed
    /// leases, as every device-scoped write does), and returns the commands **this call**
    /// ended as `expired`, in queue order. A command that expired while no one looked (no
    /// server ran, or only reads came) is returned by the first `expire` or
    /// [`sweep`](Self::sweep) that ends it, so that its end can be announced (PROTOCOL.md
    /// 4.2: "at the latest when the device next comes online"); the other writes of its
    /// device end it silently, and reads never end it.
    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// Deletes up to `limit` final commands whose [retention](crate::StoreConfig::retention)
    /// is over (their `expires_at` at or before now less the retention), and returns how
    /// many it deleted. Open commands are never deleted, however old. Meant for a periodic
    /// task off the request path, which calls it again while it deletes `limit` (each call
    /// is one bounded step, so a large backlog never holds the backend for long);
    /// [`get`](Self::get) already answers [`NotFound`](StoreError::NotFound) for such a
    /// command before it is deleted, so the deletion only reclaims space.
    async fn purge(&self, limit: usize) -> Result<u64, StoreError>;

    /// How many commands that are not final the store holds, per status, across every
    /// device (`bridge_queue_commands{status}`), without reading them one by one. A
    /// `delivering` command counts as `delivering` even when its lease has lapsed.
    async fn open_counts(&self) -> Result<OpenCounts, StoreError>;

    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

//! The [`Store`] trait.

use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::CommandOutcome;
use bridge_protocol::{CommandId, CommandType, DeviceId, HexPayload, TtlSeconds};

use crate::error::StoreError;
use crate::model::{NewCommand, QueuedCommand, SweepReport};

/// The offline command queue of PROTOCOL.md 4.2.
///
/// # Lifecycle
///
/// `awaiting_confirmation` →(`confirm`)→ `pending` →(`lease`)→ `delivering`
/// →(`complete`)→ `succeeded` | `failed`; `delivering` →(`release`, or a lapsed lease)→
/// `pending` again, or `failed` once [`max_attempts`](crate::StoreConfig::max_attempts)
/// deliveries were made; `pending` and `awaiting_confirmation` →(`cancel`)→ `cancelled`, and
/// →(TTL passed)→ `expired`. A command whose TTL has passed is never handed out.
///
/// # Delivery (at least once)
///
/// The server, when a device is online (or on its retry timer), calls
/// [`lease`](Self::lease) for that device, sends the commands one at a time in the order
/// given, and ends each lease with [`complete`](Self::complete) (the device answered, with
/// its reply or its error) or [`release`](Self::release) (the delivery was cut off: bridge
/// lost, timeout, shutdown). A lease neither completed nor released before its deadline —
/// the server crashed — lapses, and the command is handed out again. Every lease counts one
/// attempt. [`due_devices`](Self::due_devices) tells which devices have something to
/// deliver; [`sweep`](Self::sweep) ends expired commands and recovers lapsed leases of every
/// device (the device-scoped calls do this for their device on their own, silently);
/// [`expire`](Self::expire) and `sweep` return the commands they ended as `expired`, so
/// that the server can announce them.
///
/// `complete` and `release` are not fenced by lease: they act on whoever holds the command
/// now. Pick `lease_for` well above the longest delivery (the `ble_write` timeout plus a
/// margin), so that a live holder never outlives its lease; a holder that was paused past
/// its [`lease_deadline`](crate::QueuedCommand::lease_deadline) should not `release` (the
/// lapsed lease already made the command deliverable again), while its late `complete`
/// still records the device's real answer.
///
/// # Order
///
/// A device's commands are handed out in the order they were queued; a command updated in
/// place keeps its place, and a released command is handed out before the ones behind it.
/// Stores never hand the same command to two leases at once; sending one at a time is the
/// caller's part.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues a command, or updates in place the `pending` or `awaiting_confirmation`
    /// command of the same device and command type (same id, same place; new payload, TTL,
    /// confirmation flag, device type and timeout, and so status). A `delivering` command of that type is left
    /// alone and the new one queues after it. Answers
    /// [`QueueFull`](StoreError::QueueFull) when the device already holds the configured
    /// number of non-final commands and nothing is updated in place.
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError>;

    /// Queues a command that needs no confirmation ([`enqueue`](Self::enqueue)).
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

    /// Queues a command in `awaiting_confirmation` ([`enqueue`](Self::enqueue)).
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

    /// Hands out up to `max` of the device's deliverable commands, oldest first, marked
    /// `delivering` until `lease_for` from now, each with one more attempt. No command is
    /// in two live leases.
    async fn lease(
        &self,
        device: &DeviceId,
        max: usize,
        lease_for: Duration,
    ) -> Result<Vec<QueuedCommand>, StoreError>;

    /// Records the device's answer to a `delivering` command: `succeeded` with its reply, or
    /// `failed` with its error. [`Conflict`](StoreError::Conflict) if it is not `delivering`.
    async fn complete(
        &self,
        id: &CommandId,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError>;

    /// Ends a cut-off delivery: the command goes back to `pending` (its place kept), or
    /// `failed` once its attempts reached the maximum, or `expired` if its TTL passed.
    /// [`Conflict`](StoreError::Conflict) if it is not `delivering`.
    async fn release(&self, id: &CommandId) -> Result<QueuedCommand, StoreError>;

    /// The original toolkit's call, kept for compatibility: hands out **all** the device's
    /// deliverable commands, oldest first, **at most once**. They are marked `delivering`
    /// with no lease deadline, so they are never handed out again, even if the caller
    /// crashes before sending them; the caller may still record the answer with
    /// [`complete`](Self::complete). New code uses [`lease`](Self::lease).
    async fn drain_pending(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// The command with this id, final or not. [`NotFound`](StoreError::NotFound) if unknown.
    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError>;

    /// The device's commands that are not final, in delivery order.
    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// How many of the device's commands are not final (`pendingCommands` of PROTOCOL.md
    /// 4.3).
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
    /// leases, as every device-scoped call does), and returns the commands **this call**
    /// ended as `expired`, in queue order. A command that expired while no one looked (no
    /// server ran) is returned by the first `expire` or [`sweep`](Self::sweep) that notices
    /// it, so that its end can be announced (PROTOCOL.md 4.2: "at the latest when the device
    /// next comes online"); other device-scoped calls end it silently.
    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError>;

    /// Checks that the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

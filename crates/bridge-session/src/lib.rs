//! Request-id correlation between commands and device answers: the hot path of every
//! command the bridge server sends to a BLE device.
//!
//! ```text
//! application ──send_command──► SessionManager ──ble_write──► Transport (hub) ──► phone ──► device
//!     ▲                              │    ▲                                          │
//!     └──── reply or CommandError ◄──┘    └──────── handle_response(connection) ◄────┘
//! ```
//!
//! Two layers, in the style of `quinn-proto` and `quinn`:
//!
//! * [`Correlator`] is a plain state machine with no IO, no runtime and no clock: register a
//!   command, record which connection carried it, offer it answers, tell it the time. It
//!   returns what ended and why ([`Finished`]), and says when it next needs the time
//!   ([`Correlator::poll_timeout`]). Every rule below is implemented, and tested, there.
//! * [`SessionManager`] drives a set of correlators (shards) from Tokio. It resolves device
//!   types through the [`ConfigRegistry`](bridge_protocol::ConfigRegistry), builds the
//!   `ble_write`, sends it through a [`Transport`] (the server implements it over its hub),
//!   and wakes a waiting caller through a one-shot channel, made only once the command
//!   actually waits. **One** timer task serves every pending command of a manager; there
//!   is no timer or task per command.
//!
//! # Invariants
//!
//! * **Correlation (PROTOCOL.md 3.2).** An answer resolves a command only if its request id
//!   is pending, it arrived on the connection the `ble_write` went out on, and it names the
//!   same device. Otherwise it is refused with the failed check ([`RejectReason`]), which
//!   maps to the error frame the hub sends back ([`RejectReason::error_code`]:
//!   `unknown_request` or `forbidden`), and the pending command is left exactly as it was: a
//!   spoofed, duplicate or late answer never resolves or disturbs anything.
//! * **Answers that beat the send.** The transport may deliver the answer before its
//!   `send_ble_write` has returned the connection (an in-memory bridge does). Such an answer
//!   is held in the entry and checked against the connection when the send returns; from
//!   another connection it is discarded and the command keeps waiting.
//! * **Exactly one ending.** Every registered command ends exactly once: answered
//!   (reply or [`CommandError::DeviceError`]), [`CommandError::Timeout`],
//!   [`CommandError::BridgeLost`] (its connection closed, or released its device — also when
//!   that happened while the write was still being sent), [`CommandError::Offline`],
//!   cancelled (the caller dropped the future or its task was aborted),
//!   [`CommandError::Shutdown`]. Its entry is removed on that ending, whatever the path, so
//!   [`SessionManager::pending`] counts exactly the commands still waiting; there is no
//!   background sweep and no entry outlives its command.
//! * **One owner of "in flight".** A successful [`Transport::send_ble_write`] returns the
//!   connection and an in-flight ticket ([`Transport::InFlight`], an RAII guard a hub makes
//!   over the connection's in-flight counter). The command's pending entry owns the ticket;
//!   removing the entry, however the command ends, drops it. So the hub's count of commands
//!   in flight per connection (its routing tie-breaker, PROTOCOL.md 2) is the number of
//!   live tickets — there is no second count to keep equal, and no callback that must come
//!   exactly once.
//!
//!   The other counts here are of different things and stay separate: the slab of pending
//!   entries (`slots.rs`) *is* the store the tickets live in, and its length is
//!   [`SessionManager::pending`] (commands registered, including those still routing,
//!   which hold no ticket yet); the per-device slots of
//!   [`SessionConfig::with_per_device_limit`] are counted per *device* (held slots and a
//!   first-come-first-served queue of waiters, forgotten once idle), taken before any
//!   connection is chosen (a command may wait for one without being in flight anywhere),
//!   so they cannot be the per-connection count; the slot is held by the `send_command`
//!   future, which returns as soon as the command ends, and handed straight to the next
//!   waiter. A free slot costs two map lookups and no allocation; a command that waits
//!   keeps its waker and deadline in its device's queue (`device_slots.rs`: no channel, no
//!   timer of its own — the session's timer task also ends waits whose deadline passed).
//!   [`SessionManager::shutdown`] ends every wait with [`CommandError::Shutdown`].
//! * **Timeouts.** A command's timeout starts when `send_command` is called and covers any
//!   wait for a device slot ([`SessionConfig::with_per_device_limit`]); the `timeoutMs` of
//!   the `ble_write` is what is left of it. The timer ends a command at its deadline (to the
//!   timer's resolution); an answer counts until then.
//! * **Request ids** are 32 hex digits: a 64-bit per-process random prefix (unique across
//!   server nodes) and a 64-bit sequence number naming the shard, the storage place and its
//!   generation. An id is never issued twice while pending, and comes back at all only
//!   after its storage place was reused 2^32 times. Making one allocates nothing; finding
//!   the command of an answer parses the sequence number back and indexes the slab, so no
//!   string is hashed on the hot path. Ids of other processes are recognised as unknown
//!   without touching any shard.
//! * **Limits.** At most [`SessionConfig::max_pending`] commands are pending at once (one
//!   more fails with [`CommandError::TooManyPending`]); at most
//!   [`SessionConfig::per_device_limit`] per device (16 by default; a command over it waits
//!   for a place within its timeout, holding no pending place meanwhile).
//! * **Cancel safety.** Dropping a `send_command` future at any await point removes its
//!   entry (and drops its in-flight ticket if the write had gone out).
//!
//! # Performance
//!
//! The pending set is split into shards, each behind its own lock on its own cache lines; a
//! thread registers in "its" shard, so workers rarely meet on a lock. Within a shard,
//! commands live in a slab addressed by their id (no map, no hashing), and freed places are
//! reused last-in first-out, so the hot path stays in cache however many commands wait. The pending limit is
//! enforced with tokens that shards take from a shared pool in batches, so a command costs
//! no shared atomic; likewise each thread clones device types from its own copy, so no
//! reference count is shared by all workers. Deadlines are kept in a few sorted FIFO queues (one per timeout class,
//! in effect) rather than a heap, so registering is O(1), and the entry of a command that is
//! answered at once is dropped at once. See `BENCHMARKS.md` for figures.
//!
//! # Example
//!
//! A transport whose "bridge" answers every write at once with the payload reversed:
//!
//! ```
//! use std::sync::{Arc, OnceLock};
//! use std::time::Duration;
//!
//! use bridge_protocol::{
//!     BleOutcome, BleResponse, BleWrite, ConfigRegistry, ConnectionId, DeviceId, HexPayload,
//! };
//! use bridge_session::{
//!     CommandError, SessionConfig, SessionManager, Transport, TransportError,
//! };
//!
//! struct LoopbackBridge(OnceLock<SessionManager<LoopbackBridge>>);
//!
//! #[async_trait::async_trait]
//! impl Transport for LoopbackBridge {
//!     // This bridge counts nothing in flight.
//!     type InFlight = ();
//!
//!     async fn send_ble_write(
//!         &self,
//!         write: BleWrite,
//!     ) -> Result<(ConnectionId, ()), TransportError> {
//!         if write.device_id.as_str() != "lock-1" {
//!             return Err(TransportError::Offline);
//!         }
//!         let connection = ConnectionId::new(1);
//!         let mut reply = write.payload.into_bytes();
//!         reply.reverse();
//!         let answer = BleResponse {
//!             request_id: write.request_id,
//!             device_id: write.device_id,
//!             outcome: BleOutcome::Payload(reply.into()),
//!         };
//!         if let Some(manager) = self.0.get() {
//!             manager.handle_response(connection, answer).expect("a correct answer");
//!         }
//!         Ok((connection, ()))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! runtime.block_on(async {
//!     let bridge = Arc::new(LoopbackBridge(OnceLock::new()));
//!     let manager = SessionManager::new(
//!         Arc::clone(&bridge),
//!         Arc::new(ConfigRegistry::example()),
//!         &SessionConfig::default(),
//!     );
//!     let _ = bridge.0.set(manager.clone());
//!
//!     let lock = DeviceId::new("lock-1")?;
//!     let payload = HexPayload::from_bytes(vec![0xaa, 0xbb]);
//!     let reply = manager.send_command(lock, None, payload, Duration::from_secs(5)).await?;
//!     assert_eq!(reply.payload.as_bytes(), &[0xbb, 0xaa]);
//!
//!     let gone = DeviceId::new("lock-2")?;
//!     let err = manager
//!         .send_command(gone, Some("smart-lock"), HexPayload::default(), Duration::from_secs(5))
//!         .await;
//!     assert_eq!(err, Err(CommandError::Offline));
//!
//!     assert_eq!(manager.pending(), 0);
//!     assert_eq!(manager.stats().succeeded, 1);
//!     manager.shutdown();
//!     Ok(())
//! })
//! # }
//! ```

mod config;
mod correlator;
mod deadlines;
mod device_slots;
mod error;
mod ids;
mod manager;
mod slots;
mod stages;
mod stats;
mod transport;

pub use config::SessionConfig;
pub use correlator::{Correlator, Finished, MarkSent, ProgressAccepted, Removed, ResponseAccepted};
pub use error::{CommandError, RejectReason, ResponseRejected, TransportError};
pub use manager::{CommandFailure, CommandReply, SessionManager};
pub use stages::StageTimes;
pub use stats::SessionStats;
pub use transport::{SendNow, SendResult, Transport};

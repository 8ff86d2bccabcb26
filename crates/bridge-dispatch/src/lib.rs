//! What happens to a command: sent now, queued, held for confirmation; and the delivery of
//! queued commands, one at a time per device, in order, across every process that shares
//! the store.
//!
//! Two layers, shaped like quinn-proto and quinn:
//!
//! * [`Engine`] — a sans-IO state machine. Inputs are `handle_*` calls (a device came
//!   online, its BLE link came up, a command was queued, a store answered, a send ended,
//!   time passed); outputs are [`Action`]s pulled with [`Engine::poll`] and the next retry
//!   tick from [`Engine::poll_timeout`]. It reads no clock: time is passed in, so its tests
//!   run with no runtime and no sleeps.
//! * [`Dispatcher`] — a thin tokio driver that runs the engine against a
//!   [`Store`](bridge_queue::Store), a [`CommandSender`] (the session manager implements
//!   it) and an [`Outlet`] the embedding server implements over its hub and metrics. It also
//!   runs the online command path ([`Dispatcher::execute`]) and the queue operations that
//!   start deliveries (confirm, cancel, reads that notice expiries).
//!
//! # Invariants
//!
//! * **One delivery per device, across processes.** A pass asks the store for the device's
//!   next command with the atomic, fenced `Store::lease_next`; the store refuses while any
//!   delivery of that device — on any node — holds a live lease. Within one engine at most
//!   one pass runs per device.
//! * **One clock: the store's.** TTLs and lease deadlines are read by the store against its
//!   clock. The engine's only time is the retry tick, passed in.
//! * **Nothing is lost.** A cut-off delivery is released back to `pending` (one attempt
//!   counted if the write had left); a lease whose node died lapses after the command's
//!   timeout plus [`EngineConfig::lease_grace`]; a node restarted under the same
//!   [`NodeId`](bridge_queue::NodeId) takes its former leases back at once.
//! * **Every end is announced once.** Final states reached by a delivery, a cancel, a sweep
//!   or an expiry noticed by a pass or a read go to the device's subscribers as
//!   `command_result`.
//!
//! # Example: a pass on virtual time
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use bridge_dispatch::{Action, Engine, EngineConfig, Sent};
//! use bridge_protocol::http::CommandOutcome;
//! use bridge_protocol::{DeviceId, HexPayload};
//! use bridge_queue::NodeId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let start = Instant::now();
//! let mut engine = Engine::new(EngineConfig::default(), NodeId::new("node-a")?, start);
//! // First it takes back what a former life of this node held.
//! assert!(matches!(engine.poll(), Some(Action::Reclaim { .. })));
//! engine.handle_reclaimed(Ok(Vec::new()));
//!
//! // The lock comes online: expire what ran out, then lease its next command.
//! let lock = DeviceId::new("lock-1")?;
//! engine.handle_online(&lock);
//! assert_eq!(engine.poll(), Some(Action::Expire { device: lock.clone() }));
//! engine.handle_expired(&lock, Ok(Vec::new()));
//! assert!(matches!(engine.poll(), Some(Action::Lease { .. })));
//! engine.handle_leased(&lock, Ok(None)); // nothing queued: the pass ends
//! assert!(engine.is_idle());
//!
//! // The retry tick is due 30 s later, on the clock the caller passes in.
//! assert_eq!(engine.poll_timeout(), Some(start + Duration::from_secs(30)));
//! engine.handle_timeout(start + Duration::from_secs(30));
//! assert_eq!(engine.poll(), Some(Action::Sweep));
//! # let _ = (Sent::Answered(CommandOutcome::Payload(HexPayload::from_bytes(vec![1]))),);
//! # Ok(())
//! # }
//! ```

mod commands;
mod driver;
mod engine;

/// Who queued a command, as [`Dispatcher::execute`] takes it (the queue's own type).
pub use bridge_queue::Party;
pub use commands::{Refusal, store_error_code};
pub use driver::{CommandSender, Dispatcher, Outlet};
pub use engine::{Action, Engine, EngineConfig, Sent};

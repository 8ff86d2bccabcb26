//! The conformance suite every [`Store`] runs, usable by a third party's store too.
//!
//! Each case is a generic async function that takes a [`Harness`], which opens the store
//! under test on isolated data (its own schema, key prefix, file) and removes that data
//! afterwards. [`conformance_tests!`](crate::conformance_tests) stamps every case out as a
//! `#[tokio::test]` inside a module named after the backend, so a run reads
//! `sqlite::dedup_updates_in_place`, `postgres::dedup_updates_in_place`, and so on. The
//! calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
//!
//! Time in the cases is virtual: each opens its store with a [`ManualClock`] and moves it
//! forward instead of sleeping.
//!
//! ```text
//! struct MyHarness { /* a connection, a namespace */ }
//! #[async_trait::async_trait]
//! impl bridge_queue::testkit::Harness for MyHarness {
//!     type Store = MyStore;
//!     async fn open(&self, config: StoreConfig) -> Result<MyStore, StoreError> { /* … */ }
//!     async fn cleanup(&self) { /* drop the namespace */ }
//! }
//! async fn my_harness() -> MyHarness { /* … */ }
//! bridge_queue::conformance_tests!(my_store, my_harness(), durable);
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, HexPayload, TimeoutMs,
    Timestamp, TtlSeconds,
};

#[doc(hidden)]
pub use futures_util::FutureExt as __FutureExt;

use crate::{InvalidInput, ManualClock, NewCommand, QueuedCommand, Store, StoreConfig, StoreError};

/// Opens the store under test on data of its own.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: Store;

    /// Opens the store. Every call opens the same data: a second call after dropping the
    /// first store is how durability is checked.
    async fn open(&self, config: StoreConfig) -> Result<Self::Store, StoreError>;

    /// Removes everything the harness created.
    async fn cleanup(&self);
}

/// Stamps out the conformance suite as `#[tokio::test]`s in a module named `$backend`.
///
/// `$harness` is an expression evaluating to a future of a [`Harness`], evaluated once per
/// test. Add `durable` for stores whose data survives reopening, which adds the
/// `survives_reopening` case.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::conformance_tests!(@module $backend, $harness, []);
    };
    ($backend:ident, $harness:expr, durable) => {
        $crate::conformance_tests!(@module $backend, $harness, [survives_reopening]);
    };
    (@module $backend:ident, $harness:expr, [$($extra:ident),*]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@cases $harness;
                dedup_updates_in_place,
                delivery_settings_are_kept_and_updated_in_place,
                dedup_leaves_delivering_alone_and_queues_after,
                dedup_ignores_final_commands,
                leases_hand_out_in_queue_order,
                lease_respects_max,
                expired_commands_are_never_handed_out,
                confirmation_gates_delivery,
                confirm_and_cancel_conflicts,
                unknown_ids_are_not_found,
                complete_records_the_outcome,
                release_keeps_the_place_in_order,
                release_fails_after_max_attempts,
                lapsed_lease_is_handed_out_again,
                late_answer_to_a_lapsed_lease_is_recorded,
                sweep_expires_and_recovers,
                expire_returns_the_commands_it_ended_once,
                concurrent_leases_never_share_a_command,
                queue_full_at_the_cap,
                bad_input_is_refused_with_typed_errors,
                drain_pending_is_at_most_once,
                due_devices_lists_devices_with_deliverable_commands,
                view_has_the_http_shape
                $(, $extra)*
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                use $crate::testkit::{Harness as _, __FutureExt as _};
                let harness = $harness.await;
                let result = ::std::panic::AssertUnwindSafe($crate::testkit::$case(&harness))
                    .catch_unwind()
                    .await;
                harness.cleanup().await;
                if let Err(panic) = result {
                    ::std::panic::resume_unwind(panic);
                }
            }
        )*
    };
}

const LEASE: Duration = Duration::from_secs(30);

struct Fixture<S> {
    store: Arc<S>,
    clock: ManualClock,
}

async fn open<H: Harness>(harness: &H, config: StoreConfig) -> Fixture<H::Store> {
    let clock = ManualClock::starting_now();
    let store = harness
        .open(config.with_clock(Arc::new(clock.clone())))
        .await
        .expect("the store under test opens");
    Fixture {
        store: Arc::new(store),
        clock,
    }
}

async fn open_default<H: Harness>(harness: &H) -> Fixture<H::Store> {
    open(harness, StoreConfig::default()).await
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

fn kind(name: &str) -> CommandType {
    CommandType::new(name).expect("valid command type")
}

fn bytes(b: &[u8]) -> HexPayload {
    HexPayload::from_bytes(b.to_vec())
}

fn device_type(name: &str) -> DeviceType {
    DeviceType::new(name).expect("valid device type")
}

fn timeout_ms(ms: u64) -> TimeoutMs {
    TimeoutMs::new(ms).expect("valid timeout")
}

fn ttl(secs: u64) -> TtlSeconds {
    TtlSeconds::new(secs).expect("valid ttl")
}

async fn enqueue<S: Store>(store: &S, dev: &DeviceId, ty: &str, payload: &[u8]) -> CommandId {
    store
        .enqueue_or_update(dev, &kind(ty), bytes(payload), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue")
}

async fn open_ids<S: Store>(store: &S, dev: &DeviceId) -> Vec<CommandId> {
    store
        .list_open(dev)
        .await
        .expect("list_open")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

fn ids(commands: &[QueuedCommand]) -> Vec<CommandId> {
    commands.iter().map(|c| c.id.clone()).collect()
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    want_action: &str,
    want_status: CommandStatus,
) {
    match result {
        Err(StoreError::Conflict { action, status, .. }) => {
            assert_eq!(action, want_action);
            assert_eq!(status, want_status);
        }
        other => panic!("expected a {want_action} conflict in {want_status:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: &Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "expected NotFound, got {result:?}"
    );
}

/// A command keeps the device type and reply timeout it was queued with, in every answer
/// (`get`, `list_open`, `lease`); one queued without them reads as the registry's default
/// type (`None`) and the default timeout; an update in place replaces both, back to the
/// defaults included.
pub async fn delivery_settings_are_kept_and_updated_in_place<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let typed = store
        .enqueue(
            NewCommand::new(dev.clone(), kind("a"), bytes(&[1]))
                .with_device_type(device_type("thermo"))
                .with_timeout(timeout_ms(2_500)),
        )
        .await
        .expect("enqueue");
    let plain = enqueue(&*store, &dev, "b", &[2]).await;
    let settings = |c: &QueuedCommand| (c.id.clone(), c.device_type.clone(), c.timeout);
    let want = vec![
        (
            typed.clone(),
            Some(device_type("thermo")),
            timeout_ms(2_500),
        ),
        (plain.clone(), None, TimeoutMs::DEFAULT),
    ];
    let listed = store.list_open(&dev).await.expect("list_open");
    assert_eq!(listed.iter().map(settings).collect::<Vec<_>>(), want);
    assert_eq!(settings(&store.get(&typed).await.expect("get")), want[0]);
    assert_eq!(settings(&store.get(&plain).await.expect("get")), want[1]);

    // Updates in place: the typed one back to the defaults, the plain one to a type.
    let again = store
        .enqueue(NewCommand::new(dev.clone(), kind("a"), bytes(&[3])))
        .await
        .expect("update in place");
    assert_eq!(again, typed);
    let again = store
        .enqueue(
            NewCommand::new(dev.clone(), kind("b"), bytes(&[4]))
                .with_device_type(device_type("kettle"))
                .with_timeout(timeout_ms(120_000)),
        )
        .await
        .expect("update in place");
    assert_eq!(again, plain);
    let leased = store.lease(&dev, 2, LEASE).await.expect("lease");
    assert_eq!(
        leased.iter().map(settings).collect::<Vec<_>>(),
        vec![
            (typed, None, TimeoutMs::DEFAULT),
            (plain, Some(device_type("kettle")), timeout_ms(120_000)),
        ]
    );
    assert_eq!(leased[1].payload, bytes(&[4]));
}

/// A `pending` or `awaiting_confirmation` command of the same type is updated in place:
/// same id, same place, new payload, TTL and confirmation flag.
pub async fn dedup_updates_in_place<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let unlock = enqueue(&*store, &dev, "unlock", &[1]).await;
    let beep = enqueue(&*store, &dev, "beep", &[2]).await;
    let before = store.get(&unlock).await.expect("get");

    clock.advance(Duration::from_secs(5));
    let again = store
        .enqueue_with_confirmation(&dev, &kind("unlock"), bytes(&[9, 9]), ttl(60))
        .await
        .expect("enqueue");
    assert_eq!(again, unlock, "same command type updates in place");
    assert_eq!(
        open_ids(&*store, &dev).await,
        vec![unlock.clone(), beep.clone()]
    );
    let after = store.get(&unlock).await.expect("get");
    assert_eq!(after.payload, bytes(&[9, 9]));
    assert_eq!(after.status, CommandStatus::AwaitingConfirmation);
    assert!(after.requires_confirmation);
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(
        after.expires_at,
        clock.now_ts().saturating_add(Duration::from_mins(1))
    );

    // And back: an awaiting command updated without confirmation becomes pending.
    let third = enqueue(&*store, &dev, "unlock", &[3]).await;
    assert_eq!(third, unlock);
    let after = store.get(&unlock).await.expect("get");
    assert_eq!(after.status, CommandStatus::Pending);
    assert!(!after.requires_confirmation);
    assert_eq!(store.pending_count(&dev).await.expect("count"), 2);
}

/// A `delivering` command is not touched; the new one queues after it.
pub async fn dedup_leaves_delivering_alone_and_queues_after<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "unlock", &[1]).await;
    let leased = store.lease(&dev, 1, LEASE).await.expect("lease");
    assert_eq!(ids(&leased), vec![first.clone()]);

    let second = enqueue(&*store, &dev, "unlock", &[2]).await;
    assert_ne!(second, first);
    let delivering = store.get(&first).await.expect("get");
    assert_eq!(delivering.status, CommandStatus::Delivering);
    assert_eq!(delivering.payload, bytes(&[1]));
    assert_eq!(open_ids(&*store, &dev).await, vec![first, second.clone()]);
    // A third of that type now updates the second in place.
    assert_eq!(enqueue(&*store, &dev, "unlock", &[3]).await, second);
}

/// Final commands are history, not dedup targets.
pub async fn dedup_ignores_final_commands<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "unlock", &[1]).await;
    store.cancel(&first).await.expect("cancel");
    let second = enqueue(&*store, &dev, "unlock", &[2]).await;
    assert_ne!(second, first);
    assert_eq!(
        store.get(&first).await.expect("get").status,
        CommandStatus::Cancelled
    );
    assert_eq!(open_ids(&*store, &dev).await, vec![second]);
}

/// Commands are handed out oldest first, marked `delivering` with one attempt and a
/// deadline; other devices' commands are not mixed in.
pub async fn leases_hand_out_in_queue_order<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let other = device("lock-2");
    let mut queued = Vec::new();
    for (i, ty) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        queued.push(enqueue(&*store, &dev, ty, &[u8::try_from(i).unwrap_or(0)]).await);
        enqueue(&*store, &other, ty, &[0xff]).await;
    }
    let leased = store.lease(&dev, 10, LEASE).await.expect("lease");
    assert_eq!(ids(&leased), queued);
    let deadline = clock.now_ts().saturating_add(LEASE);
    for c in &leased {
        assert_eq!(c.device, dev);
        assert_eq!(c.status, CommandStatus::Delivering);
        assert_eq!(c.attempts, 1);
        assert_eq!(c.lease_deadline, Some(deadline));
        assert_eq!(store.get(&c.id).await.expect("get"), *c);
    }
    assert!(
        store
            .lease(&dev, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    assert_eq!(
        store.lease(&other, 10, LEASE).await.expect("lease").len(),
        5
    );
}

/// `lease` hands out at most `max`, and the next lease continues where it stopped.
pub async fn lease_respects_max<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let mut queued = Vec::new();
    for ty in ["a", "b", "c", "d", "e"] {
        queued.push(enqueue(&*store, &dev, ty, &[1]).await);
    }
    let first = store.lease(&dev, 2, LEASE).await.expect("lease");
    let second = store.lease(&dev, 2, LEASE).await.expect("lease");
    let third = store.lease(&dev, 2, LEASE).await.expect("lease");
    assert_eq!(ids(&first), queued[0..2]);
    assert_eq!(ids(&second), queued[2..4]);
    assert_eq!(ids(&third), queued[4..5]);
}

/// A command whose TTL passed is never handed out and ends `expired`, whether it was
/// pending or awaiting confirmation.
pub async fn expired_commands_are_never_handed_out<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let short = store
        .enqueue_or_update(&dev, &kind("unlock"), bytes(&[1]), ttl(10))
        .await
        .expect("enqueue");
    let awaiting = store
        .enqueue_with_confirmation(&dev, &kind("open"), bytes(&[2]), ttl(10))
        .await
        .expect("enqueue");
    let long = store
        .enqueue_or_update(&dev, &kind("beep"), bytes(&[3]), ttl(100))
        .await
        .expect("enqueue");

    clock.advance(Duration::from_millis(9_999));
    assert_eq!(store.pending_count(&dev).await.expect("count"), 3);
    clock.advance(Duration::from_millis(1));
    let leased = store.lease(&dev, 10, LEASE).await.expect("lease");
    assert_eq!(ids(&leased), vec![long.clone()]);
    assert_eq!(
        store.get(&short).await.expect("get").status,
        CommandStatus::Expired
    );
    assert_eq!(
        store.get(&awaiting).await.expect("get").status,
        CommandStatus::Expired
    );
    assert_conflict(
        store.confirm(&awaiting).await,
        "confirm",
        CommandStatus::Expired,
    );
    assert_eq!(open_ids(&*store, &dev).await, vec![long]);
    assert_eq!(store.pending_count(&dev).await.expect("count"), 1);

    // An expired command is not a dedup target: the same type queues anew.
    let fresh = enqueue(&*store, &dev, "unlock", &[4]).await;
    assert_ne!(fresh, short);

    // drain_pending does not hand out expired commands either.
    clock.advance(Duration::from_hours(1));
    assert!(store.drain_pending(&dev).await.expect("drain").is_empty());
    assert_eq!(
        store.get(&fresh).await.expect("get").status,
        CommandStatus::Expired
    );
}

/// A command that needs confirmation is not handed out until confirmed.
pub async fn confirmation_gates_delivery<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let id = store
        .enqueue_with_confirmation(&dev, &kind("unlock"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    assert_eq!(
        store.get(&id).await.expect("get").status,
        CommandStatus::AwaitingConfirmation
    );
    assert!(
        store
            .lease(&dev, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    assert!(store.drain_pending(&dev).await.expect("drain").is_empty());
    assert_eq!(store.pending_count(&dev).await.expect("count"), 1);

    let confirmed = store.confirm(&id).await.expect("confirm");
    assert_eq!(confirmed.status, CommandStatus::Pending);
    assert_eq!(confirmed.id, id);
    assert_eq!(
        ids(&store.lease(&dev, 10, LEASE).await.expect("lease")),
        vec![id]
    );
}

/// `confirm` only from `awaiting_confirmation`; `cancel` only before delivery.
pub async fn confirm_and_cancel_conflicts<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let pending = enqueue(&*store, &dev, "unlock", &[1]).await;
    assert_conflict(
        store.confirm(&pending).await,
        "confirm",
        CommandStatus::Pending,
    );

    let awaiting = store
        .enqueue_with_confirmation(&dev, &kind("open"), bytes(&[2]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let cancelled = store.cancel(&awaiting).await.expect("cancel awaiting");
    assert_eq!(cancelled.status, CommandStatus::Cancelled);
    assert_conflict(
        store.cancel(&awaiting).await,
        "cancel",
        CommandStatus::Cancelled,
    );
    assert_conflict(
        store.confirm(&awaiting).await,
        "confirm",
        CommandStatus::Cancelled,
    );

    store.lease(&dev, 1, LEASE).await.expect("lease");
    assert_conflict(
        store.cancel(&pending).await,
        "cancel",
        CommandStatus::Delivering,
    );
    store
        .complete(&pending, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");
    assert_conflict(
        store.cancel(&pending).await,
        "cancel",
        CommandStatus::Succeeded,
    );

    let later = enqueue(&*store, &dev, "beep", &[3]).await;
    assert_eq!(
        store.cancel(&later).await.expect("cancel pending").status,
        CommandStatus::Cancelled
    );
    assert!(
        store
            .lease(&dev, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);
}

/// Every call that takes an id answers `NotFound` for one the store never gave out.
pub async fn unknown_ids_are_not_found<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let unknown = CommandId::new("no-such-command").expect("valid id");
    assert_not_found(&store.get(&unknown).await);
    assert_not_found(&store.confirm(&unknown).await);
    assert_not_found(&store.cancel(&unknown).await);
    assert_not_found(&store.release(&unknown).await);
    assert_not_found(
        &store
            .complete(&unknown, CommandOutcome::Payload(bytes(&[1])))
            .await,
    );
}

/// `complete` records the reply (`succeeded`) or the error (`failed`), only once, and only
/// for a `delivering` command.
pub async fn complete_records_the_outcome<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let ok = enqueue(&*store, &dev, "unlock", &[1]).await;
    let bad = enqueue(&*store, &dev, "open", &[2]).await;
    let waiting = enqueue(&*store, &dev, "beep", &[3]).await;
    store.lease(&dev, 2, LEASE).await.expect("lease");

    let reply = CommandOutcome::Payload(bytes(&[0xaa, 0x01]));
    let done = store.complete(&ok, reply.clone()).await.expect("complete");
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.outcome, Some(reply.clone()));
    assert_eq!(done.lease_deadline, None);
    assert_eq!(store.get(&ok).await.expect("get"), done);

    let error = CommandOutcome::Error(DeviceErrorCode::new("gatt_write_failed").expect("valid"));
    let failed = store.complete(&bad, error.clone()).await.expect("complete");
    assert_eq!(failed.status, CommandStatus::Failed);
    assert_eq!(store.get(&bad).await.expect("get").outcome, Some(error));

    assert_conflict(
        store.complete(&ok, reply.clone()).await,
        "complete",
        CommandStatus::Succeeded,
    );
    assert_conflict(
        store.complete(&waiting, reply).await,
        "complete",
        CommandStatus::Pending,
    );
    assert_conflict(
        store.release(&ok).await,
        "release",
        CommandStatus::Succeeded,
    );
    assert_eq!(open_ids(&*store, &dev).await, vec![waiting]);
}

/// A released command goes back to `pending` in its place and is handed out first again.
pub async fn release_keeps_the_place_in_order<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "a", &[1]).await;
    let second = enqueue(&*store, &dev, "b", &[2]).await;
    store.lease(&dev, 1, LEASE).await.expect("lease");
    let released = store.release(&first).await.expect("release");
    assert_eq!(released.status, CommandStatus::Pending);
    assert_eq!(released.attempts, 1);
    assert_eq!(released.lease_deadline, None);
    assert_conflict(
        store.release(&first).await,
        "release",
        CommandStatus::Pending,
    );

    let again = store.lease(&dev, 1, LEASE).await.expect("lease");
    assert_eq!(ids(&again), vec![first.clone()]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(open_ids(&*store, &dev).await, vec![first, second]);
}

/// After `max_attempts` deliveries a released command ends `failed`.
pub async fn release_fails_after_max_attempts<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 3,
        ..StoreConfig::default()
    };
    let Fixture { store, .. } = open(harness, config).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    for attempt in 1..=2 {
        let leased = store.lease(&dev, 1, LEASE).await.expect("lease");
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].attempts, attempt);
        let released = store.release(&id).await.expect("release");
        assert_eq!(released.status, CommandStatus::Pending);
    }
    store.lease(&dev, 1, LEASE).await.expect("lease");
    let last = store.release(&id).await.expect("release");
    assert_eq!(last.status, CommandStatus::Failed);
    assert_eq!(last.attempts, 3);
    assert!(store.lease(&dev, 1, LEASE).await.expect("lease").is_empty());
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);
}

/// A lease neither completed nor released by its deadline (a crashed server) becomes
/// deliverable again; once attempts are used up it ends `failed`.
pub async fn lapsed_lease_is_handed_out_again<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    };
    let Fixture { store, clock } = open(harness, config).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    store.lease(&dev, 1, LEASE).await.expect("lease");

    clock.advance(LEASE.saturating_sub(Duration::from_millis(1)));
    assert!(store.lease(&dev, 1, LEASE).await.expect("lease").is_empty());
    assert!(store.due_devices(10).await.expect("due").is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.due_devices(10).await.expect("due"), vec![dev.clone()]);
    let again = store.lease(&dev, 1, LEASE).await.expect("lease");
    assert_eq!(ids(&again), vec![id.clone()]);
    assert_eq!(again[0].attempts, 2);

    clock.advance(LEASE);
    assert!(store.lease(&dev, 1, LEASE).await.expect("lease").is_empty());
    let failed = store.get(&id).await.expect("get");
    assert_eq!(failed.status, CommandStatus::Failed);
    assert_eq!(failed.attempts, 2);
}

/// A late answer under a lapsed lease is still recorded while no one has leased the
/// command again (a slow device is better recorded than asked twice).
pub async fn late_answer_to_a_lapsed_lease_is_recorded<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    store.lease(&dev, 1, LEASE).await.expect("lease");
    clock.advance(LEASE + LEASE);
    let done = store
        .complete(&id, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("a late answer is recorded");
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert!(store.lease(&dev, 1, LEASE).await.expect("lease").is_empty());
}

/// `sweep` ends expired commands and recovers lapsed leases across devices.
pub async fn sweep_expires_and_recovers<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 1,
        ..StoreConfig::default()
    };
    let Fixture { store, clock } = open(harness, config).await;
    let a = device("lock-a");
    let b = device("lock-b");
    let expiring = store
        .enqueue_or_update(&a, &kind("unlock"), bytes(&[1]), ttl(10))
        .await
        .expect("enqueue");
    let used_up = enqueue(&*store, &b, "unlock", &[2]).await;
    store.lease(&b, 1, LEASE).await.expect("lease");
    clock.advance(LEASE);

    let report = store.sweep().await.expect("sweep");
    assert_eq!((report.expired, report.recovered, report.failed), (1, 0, 1));
    assert_eq!(ids(&report.expired_commands), vec![expiring.clone()]);
    assert_eq!(report.expired_commands[0].status, CommandStatus::Expired);
    assert_eq!(
        store.get(&expiring).await.expect("get").status,
        CommandStatus::Expired
    );
    assert_eq!(
        store.get(&used_up).await.expect("get").status,
        CommandStatus::Failed
    );
    assert_eq!(
        store.sweep().await.expect("sweep"),
        crate::SweepReport::default()
    );

    let config = StoreConfig::default();
    drop(store);
    let Fixture { store, clock } = open(harness, config).await;
    let c = device("lock-c");
    let recovering = enqueue(&*store, &c, "open", &[3]).await;
    store.lease(&c, 1, LEASE).await.expect("lease");
    clock.advance(LEASE);
    let report = store.sweep().await.expect("sweep");
    assert_eq!(report.recovered, 1);
    let back = store.get(&recovering).await.expect("get");
    assert_eq!(back.status, CommandStatus::Pending);
    assert_eq!(back.lease_deadline, None);
}

/// `expire` ends the device's commands whose TTL passed (waiting, awaiting confirmation, or
/// under a lapsed lease) and returns exactly those, in queue order, once: the next call, or
/// a sweep, finds nothing more to announce. Other devices are left to their own call.
pub async fn expire_returns_the_commands_it_ended_once<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let a = device("lock-a");
    let b = device("lock-b");
    let leased = store
        .enqueue_or_update(&a, &kind("unlock"), bytes(&[1]), ttl(10))
        .await
        .expect("enqueue");
    store.lease(&a, 1, LEASE).await.expect("lease");
    let waiting = store
        .enqueue_with_confirmation(&a, &kind("reset"), bytes(&[2]), ttl(10))
        .await
        .expect("enqueue");
    let lasting = enqueue(&*store, &a, "status", &[3]).await;
    let other = store
        .enqueue_or_update(&b, &kind("unlock"), bytes(&[4]), ttl(10))
        .await
        .expect("enqueue");
    assert_eq!(store.expire(&a).await.expect("expire"), Vec::new());

    clock.advance(LEASE);
    let expired = store.expire(&a).await.expect("expire");
    assert_eq!(ids(&expired), vec![leased, waiting]);
    assert!(
        expired
            .iter()
            .all(|c| c.status == CommandStatus::Expired && c.device == a)
    );
    assert_eq!(store.expire(&a).await.expect("expire"), Vec::new());
    assert_eq!(open_ids(&*store, &a).await, vec![lasting]);
    let report = store.sweep().await.expect("sweep");
    assert_eq!(ids(&report.expired_commands), vec![other.clone()]);
    assert_eq!(store.expire(&b).await.expect("expire"), Vec::new());
}

/// Many tasks leasing the same device at once never get the same command twice, and
/// together get every command.
pub async fn concurrent_leases_never_share_a_command<H: Harness>(harness: &H) {
    const COMMANDS: usize = 24;
    const TASKS: usize = 6;
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let mut queued = HashSet::new();
    for i in 0..COMMANDS {
        queued.insert(enqueue(&*store, &dev, &format!("type-{i}"), &[1]).await);
    }
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        let dev = dev.clone();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            loop {
                let leased = store.lease(&dev, 1 + task % 3, LEASE).await.expect("lease");
                if leased.is_empty() {
                    return got;
                }
                for c in leased {
                    got.push(c.id.clone());
                    store
                        .complete(&c.id, CommandOutcome::Payload(bytes(&[0])))
                        .await
                        .expect("the lease holder completes its own command");
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(seen.insert(id.clone()), "command {id} was leased twice");
        }
    }
    assert_eq!(seen, queued);
}

/// A device holds at most `max_open_per_device` non-final commands; an update in place and
/// other devices are not affected, and a final command frees its slot.
pub async fn queue_full_at_the_cap<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_open_per_device: 3,
        ..StoreConfig::default()
    };
    let Fixture { store, .. } = open(harness, config).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "a", &[1]).await;
    enqueue(&*store, &dev, "b", &[1]).await;
    enqueue(&*store, &dev, "c", &[1]).await;
    let full = store
        .enqueue_or_update(&dev, &kind("d"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await;
    match full {
        Err(StoreError::QueueFull { device, max }) => {
            assert_eq!(device, dev);
            assert_eq!(max, 3);
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(store.pending_count(&dev).await.expect("count"), 3);
    assert_eq!(enqueue(&*store, &dev, "a", &[2]).await, first);
    enqueue(&*store, &device("lock-2"), "d", &[1]).await;

    // A delivering command still counts; a final one does not.
    store.lease(&dev, 1, LEASE).await.expect("lease");
    assert!(matches!(
        store
            .enqueue_or_update(&dev, &kind("d"), bytes(&[1]), TtlSeconds::DEFAULT)
            .await,
        Err(StoreError::QueueFull { .. })
    ));
    store
        .complete(&first, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");
    enqueue(&*store, &dev, "d", &[1]).await;
    assert_eq!(store.pending_count(&dev).await.expect("count"), 3);
}

/// Bad input is refused with typed errors before anything is stored.
pub async fn bad_input_is_refused_with_typed_errors<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let max = StoreConfig::default().max_payload_bytes;
    let too_big = store
        .enqueue_or_update(
            &dev,
            &kind("a"),
            bytes(&vec![7; max + 1]),
            TtlSeconds::DEFAULT,
        )
        .await;
    assert!(
        matches!(
            too_big,
            Err(StoreError::InvalidInput(InvalidInput::PayloadTooLarge { len, max: m })) if len == max + 1 && m == max
        ),
        "got {too_big:?}"
    );
    let empty = store
        .enqueue_or_update(&dev, &kind("a"), bytes(&[]), TtlSeconds::DEFAULT)
        .await;
    assert!(
        matches!(
            empty,
            Err(StoreError::InvalidInput(InvalidInput::EmptyPayload))
        ),
        "got {empty:?}"
    );
    assert!(matches!(
        store.lease(&dev, 0, LEASE).await,
        Err(StoreError::InvalidInput(InvalidInput::ZeroLeaseSize))
    ));
    assert!(matches!(
        store.lease(&dev, 1, Duration::ZERO).await,
        Err(StoreError::InvalidInput(InvalidInput::ZeroLeaseDuration))
    ));
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);

    // Exactly the limit is fine.
    let id = store
        .enqueue_or_update(&dev, &kind("a"), bytes(&vec![7; max]), TtlSeconds::DEFAULT)
        .await
        .expect("a payload at the limit is accepted");
    assert_eq!(store.get(&id).await.expect("get").payload.len(), max);

    // Empty or malformed ids never reach a store: the typed ids refuse them, and the
    // refusal converts to the store's typed error.
    let empty_id: Result<CommandId, StoreError> = CommandId::new("").map_err(StoreError::from);
    assert!(matches!(
        empty_id,
        Err(StoreError::InvalidInput(InvalidInput::Value(_)))
    ));
}

/// `drain_pending` hands every deliverable command out once and never again, even when no
/// answer is recorded; an answer may still be recorded.
pub async fn drain_pending_is_at_most_once<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let a = enqueue(&*store, &dev, "a", &[1]).await;
    let b = enqueue(&*store, &dev, "b", &[2]).await;
    store
        .enqueue_with_confirmation(&dev, &kind("c"), bytes(&[3]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let drained = store.drain_pending(&dev).await.expect("drain");
    assert_eq!(ids(&drained), vec![a.clone(), b]);
    for c in &drained {
        assert_eq!(c.status, CommandStatus::Delivering);
        assert_eq!(c.lease_deadline, None);
        assert_eq!(c.attempts, 1);
    }
    clock.advance(Duration::from_mins(10));
    assert!(store.drain_pending(&dev).await.expect("drain").is_empty());
    assert!(
        store
            .lease(&dev, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    assert_eq!(store.sweep().await.expect("sweep").recovered, 0);
    store
        .complete(&a, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");
}

/// `due_devices` lists devices with a command to hand out now, and no others.
pub async fn due_devices_lists_devices_with_deliverable_commands<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let pending = device("dev-pending");
    let awaiting = device("dev-awaiting");
    let leased = device("dev-leased");
    let expiring = device("dev-expiring");
    enqueue(&*store, &pending, "a", &[1]).await;
    store
        .enqueue_with_confirmation(&awaiting, &kind("a"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    enqueue(&*store, &leased, "a", &[1]).await;
    store.lease(&leased, 1, LEASE).await.expect("lease");
    store
        .enqueue_or_update(&expiring, &kind("a"), bytes(&[1]), ttl(5))
        .await
        .expect("enqueue");
    let mut due = store.due_devices(10).await.expect("due");
    due.sort();
    assert_eq!(due, vec![expiring.clone(), pending.clone()]);
    assert_eq!(store.due_devices(1).await.expect("due").len(), 1);
    clock.advance(Duration::from_secs(5));
    assert_eq!(store.due_devices(10).await.expect("due"), vec![pending]);
}

/// The conversion to the HTTP shape of `GET /v1/commands/{commandId}`.
pub async fn view_has_the_http_shape<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let created = clock.now_ts();
    let id = store
        .enqueue_or_update(&dev, &kind("unlock"), bytes(&[1]), ttl(60))
        .await
        .expect("enqueue");
    store.lease(&dev, 1, LEASE).await.expect("lease");
    let done = store
        .complete(&id, CommandOutcome::Payload(bytes(&[0x01])))
        .await
        .expect("complete");
    let view = done.to_view();
    assert_eq!(view.command_id, id);
    assert_eq!(view.device_id, dev);
    assert_eq!(view.command_type, kind("unlock"));
    assert_eq!(view.status, CommandStatus::Succeeded);
    assert_eq!(view.attempts, 1);
    assert_eq!(view.created_at, created);
    assert_eq!(
        view.expires_at,
        created.saturating_add(Duration::from_mins(1))
    );
    assert_eq!(view.result, Some(CommandOutcome::Payload(bytes(&[0x01]))));
}

/// What was stored survives closing and reopening the store: commands, their order, their
/// states, outcomes and delivery settings (device type, timeout).
pub async fn survives_reopening<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let a = enqueue(&*store, &dev, "a", &[1]).await;
    let b = store
        .enqueue_with_confirmation(&dev, &kind("b"), bytes(&[2]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let c = store
        .enqueue(
            NewCommand::new(dev.clone(), kind("c"), bytes(&[3]))
                .with_device_type(device_type("thermo"))
                .with_timeout(timeout_ms(30_000)),
        )
        .await
        .expect("enqueue");
    store.lease(&dev, 1, LEASE).await.expect("lease");
    store
        .complete(&a, CommandOutcome::Payload(bytes(&[0xaa])))
        .await
        .expect("complete");
    store.lease(&dev, 1, LEASE).await.expect("lease");
    let mut snapshot = Vec::new();
    for id in [&a, &b, &c] {
        snapshot.push(store.get(id).await.expect("get"));
    }
    drop(store);

    let config = StoreConfig::default().with_clock(Arc::new(clock.clone()));
    let reopened = harness.open(config).await.expect("reopen");
    for before in &snapshot {
        assert_eq!(&reopened.get(&before.id).await.expect("get"), before);
    }
    assert_eq!(open_ids(&reopened, &dev).await, vec![b.clone(), c.clone()]);
    reopened.confirm(&b).await.expect("confirm");
    // The reopened store continues the order after the old commands.
    let d = enqueue(&reopened, &dev, "d", &[4]).await;
    assert_eq!(open_ids(&reopened, &dev).await, vec![b, c, d]);

    // A command whose TTL passes while the store is closed is returned by the first
    // `expire` after reopening.
    let other = device("lock-2");
    let short = reopened
        .enqueue_or_update(&other, &kind("unlock"), bytes(&[5]), ttl(10))
        .await
        .expect("enqueue");
    drop(reopened);
    clock.advance(Duration::from_secs(11));
    let config = StoreConfig::default().with_clock(Arc::new(clock.clone()));
    let reopened = harness.open(config).await.expect("reopen");
    let expired = reopened.expire(&other).await.expect("expire");
    assert_eq!(ids(&expired), vec![short]);
    assert_eq!(expired[0].status, CommandStatus::Expired);
}

trait NowTs {
    fn now_ts(&self) -> Timestamp;
}

impl NowTs for ManualClock {
    fn now_ts(&self) -> Timestamp {
        crate::Clock::now(self)
    }
}

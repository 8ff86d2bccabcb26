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
//! Some cases open the store **twice** on the same data, as two processes sharing it would,
//! and race them: the harness's [`open`](Harness::open) must give a second store that sees
//! (and locks) the same commands as the first.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, DeviceType, HexPayload, Hops, Stage,
    TimeoutMs, Timestamp, TtlSeconds, UserId,
};

#[doc(hidden)]
pub use futures_util::FutureExt as __FutureExt;

use crate::{
    Cut, InvalidInput, Lease, LeaseToken, Leased, ManualClock, NewCommand, NodeId, OpenCounts,
    Party, QueuedCommand, Store, StoreConfig, StoreError,
};

/// Opens the store under test on data of its own.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: Store;

    /// Opens the store. Every call opens the same data: a second call while the first store
    /// is open is a second process sharing it, and a second call after dropping the first
    /// store is how durability is checked.
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
                dedup_is_per_party,
                delivery_settings_are_kept_and_updated_in_place,
                dedup_leaves_delivering_alone_and_queues_after,
                dedup_ignores_final_commands,
                lease_next_hands_out_one_command_at_a_time_in_queue_order,
                a_lease_lasts_the_commands_timeout_plus_the_grace,
                a_live_lease_holds_the_device_whoever_asks,
                awaiting_and_drained_commands_do_not_block_lease_next,
                expired_commands_are_never_handed_out,
                reads_change_nothing,
                confirmation_gates_delivery,
                confirm_and_cancel_conflicts,
                unknown_ids_are_not_found,
                complete_records_the_outcome,
                release_keeps_the_place_in_order,
                release_fails_after_max_attempts,
                attempts_count_deliveries_not_leases,
                lapsed_lease_is_handed_out_again,
                late_answer_to_a_lapsed_lease_is_recorded,
                stale_leases_are_refused_and_change_nothing,
                hops_of_the_latest_attempt_are_kept,
                reclaim_takes_back_only_the_owners_leases,
                sweep_expires_and_recovers,
                expire_returns_the_commands_it_ended_once,
                final_commands_are_gone_after_their_retention,
                two_stores_racing_lease_next_have_one_winner_per_round,
                concurrent_lease_next_across_two_stores_drains_in_order,
                queue_full_at_the_cap,
                bad_input_is_refused_with_typed_errors,
                drain_pending_is_at_most_once,
                due_devices_lists_devices_with_deliverable_commands,
                open_counts_count_open_commands_per_status,
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

/// The grace every case leases with: a lease lasts the command's own timeout plus this.
const GRACE: Duration = Duration::from_secs(5);

/// How long a lease of `command` lasts: its own timeout plus [`GRACE`].
fn lease_span(command: &QueuedCommand) -> Duration {
    command.timeout.as_duration() + GRACE
}

/// How long a lease of a command queued with the default timeout lasts.
fn default_lease() -> Duration {
    TimeoutMs::DEFAULT.as_duration() + GRACE
}

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

/// A second store on the same data and the same clock: a second process.
async fn open_second<H: Harness>(harness: &H, clock: &ManualClock) -> Arc<H::Store> {
    Arc::new(
        harness
            .open(StoreConfig::default().with_clock(Arc::new(clock.clone())))
            .await
            .expect("a second store opens on the same data"),
    )
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node id")
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
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

fn ok_reply() -> CommandOutcome {
    CommandOutcome::Payload(bytes(&[0]))
}

async fn enqueue<S: Store>(store: &S, dev: &DeviceId, ty: &str, payload: &[u8]) -> CommandId {
    store
        .enqueue_or_update(dev, &kind(ty), bytes(payload), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue")
}

/// `lease_next` for `owner`, with [`GRACE`].
async fn try_lease<S: Store>(store: &S, dev: &DeviceId, owner: &NodeId) -> Option<Leased> {
    store
        .lease_next(dev, owner, GRACE)
        .await
        .expect("lease_next")
}

/// `lease_next` for the node `node-a`, which must hand a command out.
async fn lease<S: Store>(store: &S, dev: &DeviceId) -> Leased {
    try_lease(store, dev, &node("node-a"))
        .await
        .expect("a command is handed out")
}

/// `lease_next` for `owner` hands nothing out.
async fn assert_no_lease<S: Store>(store: &S, dev: &DeviceId, owner: &NodeId) {
    let leased = try_lease(store, dev, owner).await;
    assert!(
        leased.is_none(),
        "expected nothing handed out, got {leased:?}"
    );
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

fn leased_ids(leased: &[Leased]) -> Vec<CommandId> {
    leased.iter().map(|l| l.command.id.clone()).collect()
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

#[track_caller]
fn assert_stale<T: std::fmt::Debug>(result: &Result<T, StoreError>, want_id: &CommandId) {
    match result {
        Err(StoreError::StaleLease { id }) => assert_eq!(id, want_id),
        other => panic!("expected StaleLease for {want_id}, got {other:?}"),
    }
}

/// A command keeps the device type and reply timeout it was queued with, in every answer
/// (`get`, `list_open`, `lease_next`); one queued without them reads as the registry's
/// default type (`None`) and the default timeout; an update in place replaces both, back to
/// the defaults included.
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
    let first = lease(&*store, &dev).await;
    assert_eq!(settings(&first.command), (typed, None, TimeoutMs::DEFAULT));
    store
        .complete(&first.lease, ok_reply())
        .await
        .expect("complete");
    let second = lease(&*store, &dev).await;
    assert_eq!(
        settings(&second.command),
        (plain, Some(device_type("kettle")), timeout_ms(120_000))
    );
    assert_eq!(second.command.payload, bytes(&[4]));
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

/// Dedup is per party (PROTOCOL.md 4.2, "queued by the same party"): a user's command of
/// the same type as the backend's queues after it as a command of its own (and does not
/// touch its payload nor skip its confirmation), two users do not overwrite each other's,
/// and each party's next command of that type updates its own in place. Every command
/// reads back the party that queued it.
pub async fn dedup_is_per_party<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let alice = Party::User(user("alice"));
    let bob = Party::User(user("bob"));
    let queue = |party: &Party, payload: &[u8], confirm: bool| {
        let command =
            NewCommand::new(dev.clone(), kind("unlock"), bytes(payload)).queued_by(party.clone());
        let command = if confirm {
            command.requiring_confirmation()
        } else {
            command
        };
        let store = Arc::clone(&store);
        async move { store.enqueue(command).await.expect("enqueue") }
    };
    let backend = queue(&Party::Backend, &[1], true).await;
    let by_alice = queue(&alice, &[2], false).await;
    let by_bob = queue(&bob, &[3], false).await;
    assert_ne!(
        by_alice, backend,
        "a user does not overwrite the backend's command"
    );
    assert_ne!(
        by_bob, by_alice,
        "a user does not overwrite another user's command"
    );
    assert_ne!(by_bob, backend);
    let queued = vec![backend.clone(), by_alice.clone(), by_bob.clone()];
    assert_eq!(open_ids(&*store, &dev).await, queued);

    let backends = store.get(&backend).await.expect("get");
    assert_eq!(backends.status, CommandStatus::AwaitingConfirmation);
    assert_eq!(backends.payload, bytes(&[1]));
    assert_eq!(backends.queued_by, Party::Backend);
    let parties: Vec<Party> = store
        .list_open(&dev)
        .await
        .expect("list_open")
        .into_iter()
        .map(|c| c.queued_by)
        .collect();
    assert_eq!(parties, vec![Party::Backend, alice.clone(), bob.clone()]);

    // The same party again updates its own command in place, and only that one.
    assert_eq!(queue(&alice, &[4], false).await, by_alice);
    assert_eq!(queue(&Party::Backend, &[5], false).await, backend);
    assert_eq!(queue(&bob, &[6], true).await, by_bob);
    assert_eq!(open_ids(&*store, &dev).await, queued);
    let now: Vec<(Vec<u8>, CommandStatus, Party)> = store
        .list_open(&dev)
        .await
        .expect("list_open")
        .into_iter()
        .map(|c| (c.payload.as_bytes().to_vec(), c.status, c.queued_by))
        .collect();
    assert_eq!(
        now,
        vec![
            (vec![5], CommandStatus::Pending, Party::Backend),
            (vec![4], CommandStatus::Pending, alice),
            (vec![6], CommandStatus::AwaitingConfirmation, bob),
        ]
    );
    // Delivered in queue order, the user's after the backend's.
    let first = lease(&*store, &dev).await;
    assert_eq!(first.command.id, backend);
    assert_eq!(first.command.queued_by, Party::Backend);
}

/// A `delivering` command is not touched; the new one queues after it.
pub async fn dedup_leaves_delivering_alone_and_queues_after<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "unlock", &[1]).await;
    let leased = lease(&*store, &dev).await;
    assert_eq!(leased.command.id, first);

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

/// `lease_next` hands a device's commands out one at a time, oldest first: each `delivering`
/// under its owner, with the deadline `now + its timeout + grace`, a fresh token and no attempt
/// counted; the next one only once the previous lease ended. Other devices are neither
/// mixed in nor held up.
pub async fn lease_next_hands_out_one_command_at_a_time_in_queue_order<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let other = device("lock-2");
    let owner = node("node-a");
    let mut queued = Vec::new();
    for (i, ty) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        queued.push(enqueue(&*store, &dev, ty, &[u8::try_from(i).unwrap_or(0)]).await);
        enqueue(&*store, &other, ty, &[0xff]).await;
    }
    for want in &queued {
        let leased = try_lease(&*store, &dev, &owner)
            .await
            .expect("the next command is handed out");
        let c = &leased.command;
        assert_eq!(&c.id, want);
        assert_eq!(c.device, dev);
        assert_eq!(c.status, CommandStatus::Delivering);
        assert_eq!(c.attempts, 0, "taking a lease counts no attempt");
        assert_eq!(
            c.lease_deadline,
            Some(clock.now_ts().saturating_add(lease_span(c)))
        );
        assert_eq!(c.lease_owner, Some(owner.clone()));
        assert_eq!(leased.lease.id, c.id);
        assert_eq!(leased.lease.owner, owner);
        assert_eq!(&store.get(&c.id).await.expect("get"), c);
        assert_no_lease(&*store, &dev, &owner).await;
        // Another device is not held up.
        let theirs = try_lease(&*store, &other, &owner)
            .await
            .expect("another device's command is handed out");
        store
            .complete(&theirs.lease, ok_reply())
            .await
            .expect("complete");
        clock.advance(Duration::from_secs(1));
        store
            .complete(&leased.lease, ok_reply())
            .await
            .expect("complete");
    }
    assert_no_lease(&*store, &dev, &owner).await;
    assert_no_lease(&*store, &other, &owner).await;
}

/// A lease lasts the command's own timeout plus the grace `lease_next` was given, computed
/// when the command is picked: two commands with different timeouts leased at the same
/// moment get different deadlines, and each lapses at its own. A zero grace is allowed (the
/// lease lasts exactly the timeout), and a grace counts in whole milliseconds.
pub async fn a_lease_lasts_the_commands_timeout_plus_the_grace<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let (quick, slow) = (device("lock-quick"), device("lock-slow"));
    let (a, b) = (node("node-a"), node("node-b"));
    let with_timeout = |dev: &DeviceId, ty: &str, ms| {
        NewCommand::new(dev.clone(), kind(ty), bytes(&[1])).with_timeout(timeout_ms(ms))
    };
    let quick_id = store
        .enqueue(with_timeout(&quick, "unlock", 1_000))
        .await
        .expect("enqueue");
    let slow_id = store
        .enqueue(with_timeout(&slow, "unlock", 60_000))
        .await
        .expect("enqueue");
    let leased_at = clock.now_ts();
    let q = try_lease(&*store, &quick, &a).await.expect("leased");
    let s = try_lease(&*store, &slow, &a).await.expect("leased");
    assert_eq!((&q.command.id, &s.command.id), (&quick_id, &slow_id));
    let quick_deadline = leased_at.saturating_add(Duration::from_secs(1) + GRACE);
    let slow_deadline = leased_at.saturating_add(Duration::from_mins(1) + GRACE);
    assert_eq!(q.command.lease_deadline, Some(quick_deadline));
    assert_eq!(s.command.lease_deadline, Some(slow_deadline));
    assert_eq!(store.get(&quick_id).await.expect("get"), q.command);
    assert_eq!(store.get(&slow_id).await.expect("get"), s.command);

    // Each lapses at its own deadline, not at the other's.
    clock.advance(Duration::from_secs(1) + GRACE);
    let again = try_lease(&*store, &quick, &b)
        .await
        .expect("the quick command's lease lapsed");
    assert_eq!((again.command.id, again.command.attempts), (quick_id, 1));
    assert_no_lease(&*store, &slow, &b).await;
    clock.advance(Duration::from_secs(59).saturating_sub(Duration::from_millis(1)));
    assert_no_lease(&*store, &slow, &b).await;
    clock.advance(Duration::from_millis(1));
    let again = try_lease(&*store, &slow, &b)
        .await
        .expect("the slow command's lease lapsed");
    assert_eq!(again.command.id, slow_id);

    // Zero grace: the lease lasts exactly the timeout. Under a millisecond counts as none.
    let other = device("lock-other");
    for ty in ["unlock", "beep"] {
        store
            .enqueue(with_timeout(&other, ty, 250))
            .await
            .expect("enqueue");
    }
    let now = clock.now_ts();
    let zero = store
        .lease_next(&other, &a, Duration::ZERO)
        .await
        .expect("a zero grace is allowed")
        .expect("leased");
    assert_eq!(
        zero.command.lease_deadline,
        Some(now.saturating_add(Duration::from_millis(250)))
    );
    store
        .complete(&zero.lease, ok_reply())
        .await
        .expect("complete");
    let rounded = store
        .lease_next(&other, &a, Duration::from_micros(1_999))
        .await
        .expect("lease_next")
        .expect("leased");
    assert_eq!(
        rounded.command.lease_deadline,
        Some(now.saturating_add(Duration::from_millis(251)))
    );
}

/// While a command of the device is under a live lease, `lease_next` hands out nothing:
/// not to its owner, not to another node, and not from a second store on the same data;
/// the device is free again as soon as the lease is completed, released or lapses.
pub async fn a_live_lease_holds_the_device_whoever_asks<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let second = open_second(harness, &clock).await;
    let dev = device("lock-1");
    let (a, b) = (node("node-a"), node("node-b"));
    let first = enqueue(&*store, &dev, "a", &[1]).await;
    let then = enqueue(&*store, &dev, "b", &[2]).await;
    let last = enqueue(&*store, &dev, "c", &[3]).await;

    let held = try_lease(&*store, &dev, &a).await.expect("leased");
    assert_eq!(held.command.id, first);
    assert_no_lease(&*store, &dev, &a).await;
    assert_no_lease(&*store, &dev, &b).await;
    assert_no_lease(&*second, &dev, &b).await;
    clock.advance(default_lease().saturating_sub(Duration::from_millis(1)));
    assert_no_lease(&*second, &dev, &b).await;
    store
        .complete(&held.lease, ok_reply())
        .await
        .expect("complete");

    // Completed: the next one goes to whoever asks first, here node b on the second store.
    let held = try_lease(&*second, &dev, &b).await.expect("leased");
    assert_eq!(held.command.id, then);
    assert_no_lease(&*store, &dev, &a).await;
    store
        .release(&held.lease, Cut::NotSent)
        .await
        .expect("release");

    // Released: it goes out again, before the one behind it.
    let held = try_lease(&*store, &dev, &a).await.expect("leased");
    assert_eq!(held.command.id, then);
    assert_no_lease(&*second, &dev, &b).await;

    // Lapsed: the lease is recovered and the command handed out again.
    clock.advance(default_lease());
    let again = try_lease(&*second, &dev, &b).await.expect("leased");
    assert_eq!(again.command.id, then);
    assert_eq!(again.command.lease_owner, Some(b.clone()));
    store
        .complete(&again.lease, ok_reply())
        .await
        .expect("the live holder completes, whichever store it goes through");
    assert_eq!(
        try_lease(&*store, &dev, &a)
            .await
            .expect("leased")
            .command
            .id,
        last
    );
}

/// Commands awaiting confirmation and commands handed out for good by `drain_pending` are
/// passed over by `lease_next`: they neither hold the device nor the order.
pub async fn awaiting_and_drained_commands_do_not_block_lease_next<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let owner = node("node-a");
    let awaiting = store
        .enqueue_with_confirmation(&dev, &kind("a"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let drained = enqueue(&*store, &dev, "b", &[2]).await;
    assert_eq!(
        leased_ids(&store.drain_pending(&dev, &owner).await.expect("drain")),
        vec![drained]
    );
    let fresh = enqueue(&*store, &dev, "c", &[3]).await;

    let leased = try_lease(&*store, &dev, &owner).await.expect("leased");
    assert_eq!(leased.command.id, fresh);
    store
        .complete(&leased.lease, ok_reply())
        .await
        .expect("complete");
    store.confirm(&awaiting).await.expect("confirm");
    let leased = try_lease(&*store, &dev, &owner).await.expect("leased");
    assert_eq!(leased.command.id, awaiting);
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
    let leased = lease(&*store, &dev).await;
    assert_eq!(leased.command.id, long);
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

    // Neither lease_next nor drain_pending hands out expired commands.
    clock.advance(Duration::from_hours(1));
    assert_no_lease(&*store, &dev, &node("node-a")).await;
    assert!(
        store
            .drain_pending(&dev, &node("node-a"))
            .await
            .expect("drain")
            .is_empty()
    );
    assert_eq!(
        store.get(&fresh).await.expect("get").status,
        CommandStatus::Expired
    );
}

/// Reads change nothing: once a command's TTL passed (and a lease lapsed), `get`,
/// `list_open`, `pending_count` and `open_counts` still show what is stored, as often as
/// they are asked; the first `expire` ends the command and returns it, once, as `expired`
/// (and recovers the lapsed lease), and only then do reads show it expired and no longer
/// open.
pub async fn reads_change_nothing<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let held = enqueue(&*store, &dev, "status", &[1]).await;
    lease(&*store, &dev).await;
    let short = store
        .enqueue_or_update(&dev, &kind("unlock"), bytes(&[2]), ttl(10))
        .await
        .expect("enqueue");
    let stored = store.list_open(&dev).await.expect("list_open");
    assert_eq!(ids(&stored), vec![held.clone(), short.clone()]);
    let counts = store.open_counts().await.expect("counts");

    // The TTL of `short` passed, and the lease on `held` lapsed.
    clock.advance(default_lease());
    for _ in 0..2 {
        assert_eq!(store.list_open(&dev).await.expect("list_open"), stored);
        assert_eq!(store.get(&held).await.expect("get"), stored[0]);
        assert_eq!(store.get(&short).await.expect("get"), stored[1]);
        assert_eq!(store.pending_count(&dev).await.expect("count"), 2);
        assert_eq!(store.open_counts().await.expect("counts"), counts);
    }
    assert_eq!(stored[1].status, CommandStatus::Pending);

    let expired = store.expire(&dev).await.expect("expire");
    assert_eq!(ids(&expired), vec![short.clone()]);
    assert_eq!(expired[0].status, CommandStatus::Expired);
    assert_eq!(store.expire(&dev).await.expect("expire"), Vec::new());
    assert_eq!(store.get(&short).await.expect("get"), expired[0]);
    let open = store.list_open(&dev).await.expect("list_open");
    assert_eq!(ids(&open), vec![held]);
    assert_eq!(
        (open[0].status, open[0].attempts),
        (CommandStatus::Pending, 1),
        "the lapsed lease was recovered by expire, not by a read"
    );
    assert_eq!(store.pending_count(&dev).await.expect("count"), 1);
}

/// A command that needs confirmation is not handed out until confirmed.
pub async fn confirmation_gates_delivery<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let owner = node("node-a");
    let id = store
        .enqueue_with_confirmation(&dev, &kind("unlock"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    assert_eq!(
        store.get(&id).await.expect("get").status,
        CommandStatus::AwaitingConfirmation
    );
    assert_no_lease(&*store, &dev, &owner).await;
    assert!(
        store
            .drain_pending(&dev, &owner)
            .await
            .expect("drain")
            .is_empty()
    );
    assert_eq!(store.pending_count(&dev).await.expect("count"), 1);

    let confirmed = store.confirm(&id).await.expect("confirm");
    assert_eq!(confirmed.status, CommandStatus::Pending);
    assert_eq!(confirmed.id, id);
    assert_eq!(lease(&*store, &dev).await.command.id, id);
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

    let leased = lease(&*store, &dev).await;
    assert_eq!(leased.command.id, pending);
    assert_conflict(
        store.cancel(&pending).await,
        "cancel",
        CommandStatus::Delivering,
    );
    store
        .complete(&leased.lease, ok_reply())
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
    assert_no_lease(&*store, &dev, &node("node-a")).await;
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);
}

/// Every call that takes an id answers `NotFound` for one the store never gave out.
pub async fn unknown_ids_are_not_found<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let unknown = CommandId::new("no-such-command").expect("valid id");
    let lease = Lease {
        id: unknown.clone(),
        token: LeaseToken::from_u64(1),
        owner: node("node-a"),
    };
    assert_not_found(&store.get(&unknown).await);
    assert_not_found(&store.confirm(&unknown).await);
    assert_not_found(&store.cancel(&unknown).await);
    assert_not_found(&store.release(&lease, Cut::Sent).await);
    assert_not_found(&store.release(&lease, Cut::NotSent).await);
    assert_not_found(&store.complete(&lease, ok_reply()).await);
}

/// `complete` records the reply (`succeeded`) or the error (`failed`), once: the lease it
/// ended is no longer live, so a second `complete` or a `release` with it is refused as
/// stale, and so is a lease of one command used for another.
pub async fn complete_records_the_outcome<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let ok = enqueue(&*store, &dev, "unlock", &[1]).await;
    let bad = enqueue(&*store, &dev, "open", &[2]).await;
    let waiting = enqueue(&*store, &dev, "beep", &[3]).await;

    let first = lease(&*store, &dev).await;
    assert_eq!(first.command.id, ok);
    let reply = CommandOutcome::Payload(bytes(&[0xaa, 0x01]));
    let done = store
        .complete(&first.lease, reply.clone())
        .await
        .expect("complete");
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.outcome, Some(reply.clone()));
    assert_eq!(done.attempts, 1);
    assert_eq!(done.lease_deadline, None);
    assert_eq!(done.lease_owner, None);
    assert_eq!(store.get(&ok).await.expect("get"), done);

    let second = lease(&*store, &dev).await;
    assert_eq!(second.command.id, bad);
    let error = CommandOutcome::Error(DeviceErrorCode::new("gatt_write_failed").expect("valid"));
    let failed = store
        .complete(&second.lease, error.clone())
        .await
        .expect("complete");
    assert_eq!(failed.status, CommandStatus::Failed);
    assert_eq!(failed.attempts, 1);
    assert_eq!(store.get(&bad).await.expect("get").outcome, Some(error));

    assert_stale(&store.complete(&first.lease, reply.clone()).await, &ok);
    assert_stale(&store.release(&first.lease, Cut::Sent).await, &ok);
    let borrowed = Lease {
        id: waiting.clone(),
        ..first.lease.clone()
    };
    assert_stale(&store.complete(&borrowed, reply).await, &waiting);
    assert_eq!(store.get(&ok).await.expect("get"), done);
    let untouched = store.get(&waiting).await.expect("get");
    assert_eq!(untouched.status, CommandStatus::Pending);
    assert_eq!(untouched.attempts, 0);
    assert_eq!(open_ids(&*store, &dev).await, vec![waiting]);
}

/// A released command goes back to `pending` in its place and is handed out first again,
/// under a new token.
pub async fn release_keeps_the_place_in_order<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let first = enqueue(&*store, &dev, "a", &[1]).await;
    let second = enqueue(&*store, &dev, "b", &[2]).await;
    let leased = lease(&*store, &dev).await;
    let released = store
        .release(&leased.lease, Cut::Sent)
        .await
        .expect("release");
    assert_eq!(released.id, first);
    assert_eq!(released.status, CommandStatus::Pending);
    assert_eq!(released.attempts, 1);
    assert_eq!(released.lease_deadline, None);
    assert_eq!(released.lease_owner, None);
    assert_stale(&store.release(&leased.lease, Cut::Sent).await, &first);

    let again = lease(&*store, &dev).await;
    assert_eq!(again.command.id, first);
    assert_eq!(again.command.attempts, 1);
    assert_ne!(again.lease.token, leased.lease.token);
    assert_eq!(open_ids(&*store, &dev).await, vec![first, second]);
}

/// After `max_attempts` deliveries that left, a released command ends `failed`.
pub async fn release_fails_after_max_attempts<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 3,
        ..StoreConfig::default()
    };
    let Fixture { store, .. } = open(harness, config).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    for attempt in 1..=2 {
        let leased = lease(&*store, &dev).await;
        assert_eq!(leased.command.attempts, attempt - 1);
        let released = store
            .release(&leased.lease, Cut::Sent)
            .await
            .expect("release");
        assert_eq!(released.status, CommandStatus::Pending);
        assert_eq!(released.attempts, attempt);
    }
    // Deliveries that never left do not use attempts up.
    for _ in 0..5 {
        let leased = lease(&*store, &dev).await;
        let released = store
            .release(&leased.lease, Cut::NotSent)
            .await
            .expect("release");
        assert_eq!(released.status, CommandStatus::Pending);
        assert_eq!(released.attempts, 2);
    }
    let leased = lease(&*store, &dev).await;
    let last = store
        .release(&leased.lease, Cut::Sent)
        .await
        .expect("release");
    assert_eq!(last.id, id);
    assert_eq!(last.status, CommandStatus::Failed);
    assert_eq!(last.attempts, 3);
    assert_no_lease(&*store, &dev, &node("node-a")).await;
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);
}

/// `attempts` counts the writes that left (or may have): taking a lease counts none,
/// `complete` one, `release` one when [`Cut::Sent`] and none when [`Cut::NotSent`], a
/// lapsed lease one, and a reclaimed lease one.
pub async fn attempts_count_deliveries_not_leases<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 10,
        ..StoreConfig::default()
    };
    let Fixture { store, clock } = open(harness, config).await;
    let dev = device("lock-1");
    let owner = node("node-a");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    let attempts = |c: QueuedCommand| (c.status, c.attempts);

    let leased = lease(&*store, &dev).await;
    assert_eq!(leased.command.attempts, 0, "lease: none");
    let r = store.release(&leased.lease, Cut::NotSent).await;
    assert_eq!(r.map(attempts).ok(), Some((CommandStatus::Pending, 0)));

    let leased = lease(&*store, &dev).await;
    let r = store.release(&leased.lease, Cut::Sent).await;
    assert_eq!(r.map(attempts).ok(), Some((CommandStatus::Pending, 1)));

    lease(&*store, &dev).await;
    clock.advance(default_lease());
    let after_lapse = lease(&*store, &dev).await;
    assert_eq!(
        (&after_lapse.command.id, after_lapse.command.attempts),
        (&id, 2),
        "lapsed: one"
    );

    let reclaimed = store.reclaim(&owner).await.expect("reclaim");
    assert_eq!(
        reclaimed.into_iter().map(attempts).collect::<Vec<_>>(),
        vec![(CommandStatus::Pending, 3)],
        "reclaimed: one"
    );

    let leased = lease(&*store, &dev).await;
    assert_eq!(leased.command.attempts, 3);
    let r = store.complete(&leased.lease, ok_reply()).await;
    assert_eq!(r.map(attempts).ok(), Some((CommandStatus::Succeeded, 4)));
}

/// A lease neither completed nor released by its deadline (a crashed node) becomes
/// deliverable again, one attempt counted; once attempts are used up it ends `failed`.
pub async fn lapsed_lease_is_handed_out_again<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    };
    let Fixture { store, clock } = open(harness, config).await;
    let dev = device("lock-1");
    let (a, b) = (node("node-a"), node("node-b"));
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    try_lease(&*store, &dev, &a).await.expect("leased");

    clock.advance(default_lease().saturating_sub(Duration::from_millis(1)));
    assert_no_lease(&*store, &dev, &b).await;
    assert!(store.due_devices(10).await.expect("due").is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.due_devices(10).await.expect("due"), vec![dev.clone()]);
    let again = try_lease(&*store, &dev, &b)
        .await
        .expect("handed out again");
    assert_eq!(again.command.id, id);
    assert_eq!(again.command.attempts, 1);
    assert_eq!(again.command.lease_owner, Some(b.clone()));

    clock.advance(default_lease());
    assert_no_lease(&*store, &dev, &b).await;
    let failed = store.get(&id).await.expect("get");
    assert_eq!(failed.status, CommandStatus::Failed);
    assert_eq!(failed.attempts, 2);
    assert_eq!(failed.lease_owner, None);
}

/// A late answer under a lapsed lease is still recorded while the lease was not recovered
/// (a slow device is better recorded than asked twice); a late release is accepted too.
pub async fn late_answer_to_a_lapsed_lease_is_recorded<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    let leased = lease(&*store, &dev).await;
    clock.advance(default_lease() * 2);
    let done = store
        .complete(&leased.lease, ok_reply())
        .await
        .expect("a late answer is recorded");
    assert_eq!(done.id, id);
    assert_eq!(done.status, CommandStatus::Succeeded);
    assert_eq!(done.attempts, 1, "the lapse was not counted on top");
    assert_no_lease(&*store, &dev, &node("node-a")).await;

    let other = enqueue(&*store, &dev, "beep", &[2]).await;
    let leased = lease(&*store, &dev).await;
    clock.advance(default_lease());
    let released = store
        .release(&leased.lease, Cut::NotSent)
        .await
        .expect("a late release is accepted");
    assert_eq!(released.id, other);
    assert_eq!(
        (released.status, released.attempts),
        (CommandStatus::Pending, 0)
    );
}

/// How far an attempt got ([`Store::record_hops`], PROTOCOL.md 4.1, 1.1) is kept with the
/// command, fenced like the end of its lease; the next attempt's replaces it, and the
/// command's view shows it.
pub async fn hops_of_the_latest_attempt_are_kept<H: Harness>(harness: &H) {
    let Fixture { store, .. } = open_default(harness).await;
    let dev = device("lock-1");
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;
    assert_eq!(store.get(&id).await.expect("get").hops, Hops::NONE);

    let first = lease(&*store, &dev).await;
    let mut written = Hops::SENT;
    written.advance(Stage::Received, 3);
    written.advance(Stage::Written, 41);
    store
        .record_hops(&first.lease, written)
        .await
        .expect("record_hops");
    let released = store
        .release(&first.lease, Cut::Sent)
        .await
        .expect("release");
    assert_eq!(released.hops, written);
    assert_eq!(store.get(&id).await.expect("get").hops, written);
    // The ended lease is stale now: nothing changes.
    assert_stale(&store.record_hops(&first.lease, Hops::SENT).await, &id);
    assert_eq!(store.get(&id).await.expect("get").hops, written);
    let unknown = Lease {
        id: CommandId::try_from("no-such-command".to_owned()).expect("id"),
        ..first.lease.clone()
    };
    assert_not_found(&store.record_hops(&unknown, Hops::SENT).await);

    // The second attempt only got as far as `sent`, and ends the command.
    let second = lease(&*store, &dev).await;
    assert_eq!(
        second.command.hops, written,
        "the latest ended attempt's until then"
    );
    store
        .record_hops(&second.lease, Hops::SENT)
        .await
        .expect("record_hops");
    let done = store
        .complete(&second.lease, ok_reply())
        .await
        .expect("complete");
    assert_eq!(done.hops, Hops::SENT);
    let view = store.get(&id).await.expect("get").to_view();
    assert_eq!(view.hops, Hops::SENT);
}

/// A lease that lapsed and was recovered, or was handed to another node since, or was
/// reclaimed, is stale: `complete` and `release` with it answer `StaleLease` and change
/// nothing, while the live holder still ends its own lease.
pub async fn stale_leases_are_refused_and_change_nothing<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let (a, b) = (node("node-a"), node("node-b"));
    let id = enqueue(&*store, &dev, "unlock", &[1]).await;

    // Lapsed and recovered (by a sweep): back to pending, nobody holds it.
    let old = try_lease(&*store, &dev, &a).await.expect("leased");
    clock.advance(default_lease());
    assert_eq!(store.sweep().await.expect("sweep").recovered, 1);
    let recovered = store.get(&id).await.expect("get");
    assert_stale(&store.complete(&old.lease, ok_reply()).await, &id);
    assert_stale(&store.release(&old.lease, Cut::Sent).await, &id);
    assert_stale(&store.release(&old.lease, Cut::NotSent).await, &id);
    assert_eq!(store.get(&id).await.expect("get"), recovered);
    assert_eq!(
        (recovered.status, recovered.attempts),
        (CommandStatus::Pending, 1)
    );

    // Handed to another node: its lease is live, the old ones are not.
    let theirs = try_lease(&*store, &dev, &b).await.expect("leased");
    assert_ne!(theirs.lease.token, old.lease.token);
    let held = store.get(&id).await.expect("get");
    assert_stale(&store.complete(&old.lease, ok_reply()).await, &id);
    assert_stale(&store.release(&old.lease, Cut::Sent).await, &id);
    // The same node asking again after the lapse is no exception.
    let reused = Lease {
        owner: b.clone(),
        ..old.lease.clone()
    };
    assert_stale(&store.complete(&reused, ok_reply()).await, &id);
    assert_eq!(store.get(&id).await.expect("get"), held);

    // Lapsed and recovered by the next lease_next, here to the old owner again.
    clock.advance(default_lease());
    let mine = try_lease(&*store, &dev, &a).await.expect("leased");
    assert_eq!(mine.command.attempts, 2);
    assert_stale(&store.complete(&theirs.lease, ok_reply()).await, &id);
    assert_stale(&store.complete(&old.lease, ok_reply()).await, &id);

    // Reclaimed: stale as well.
    store.reclaim(&a).await.expect("reclaim");
    let reclaimed = store.get(&id).await.expect("get");
    assert_stale(&store.complete(&mine.lease, ok_reply()).await, &id);
    assert_stale(&store.release(&mine.lease, Cut::Sent).await, &id);
    assert_eq!(store.get(&id).await.expect("get"), reclaimed);
    assert_eq!(
        (reclaimed.status, reclaimed.attempts),
        (CommandStatus::Pending, 3)
    );

    // The live holder still ends its lease.
    let live = try_lease(&*store, &dev, &b).await.expect("leased");
    let done = store
        .complete(&live.lease, ok_reply())
        .await
        .expect("complete");
    assert_eq!((done.status, done.attempts), (CommandStatus::Succeeded, 4));
}

/// `reclaim` ends the owner's live and lapsed leases as lapsed ones (one attempt counted;
/// `pending`, or `failed` after the last attempt) so that they go out again at once, and
/// returns them; other nodes' leases and drained commands are left alone.
pub async fn reclaim_takes_back_only_the_owners_leases<H: Harness>(harness: &H) {
    let config = StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    };
    let Fixture { store, clock } = open(harness, config).await;
    let (a, b) = (node("node-a"), node("node-b"));
    let (live, lapsed, worn, theirs, drained) = (
        device("dev-live"),
        device("dev-lapsed"),
        device("dev-worn"),
        device("dev-theirs"),
        device("dev-drained"),
    );
    let live_id = enqueue(&*store, &live, "a", &[1]).await;
    // A command with a short timeout: its lease lapses long before the others'.
    let lapsed_id = store
        .enqueue(
            NewCommand::new(lapsed.clone(), kind("a"), bytes(&[2])).with_timeout(timeout_ms(1_000)),
        )
        .await
        .expect("enqueue");
    let worn_id = enqueue(&*store, &worn, "a", &[3]).await;
    let theirs_id = enqueue(&*store, &theirs, "a", &[4]).await;
    let drained_id = enqueue(&*store, &drained, "a", &[5]).await;

    // `worn` has one attempt left.
    let first = try_lease(&*store, &worn, &a).await.expect("leased");
    store
        .release(&first.lease, Cut::Sent)
        .await
        .expect("release");
    try_lease(&*store, &worn, &a).await.expect("leased");
    try_lease(&*store, &live, &a).await.expect("leased");
    try_lease(&*store, &lapsed, &a).await.expect("leased");
    try_lease(&*store, &theirs, &b).await.expect("leased");
    store.drain_pending(&drained, &a).await.expect("drain");
    clock.advance(Duration::from_secs(1) + GRACE);

    let mut back = store.reclaim(&a).await.expect("reclaim");
    back.sort_by(|x, y| x.device.cmp(&y.device));
    let got: Vec<_> = back
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                c.status,
                c.attempts,
                c.lease_owner.clone(),
                c.lease_deadline,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (lapsed_id.clone(), CommandStatus::Pending, 1, None, None),
            (live_id.clone(), CommandStatus::Pending, 1, None, None),
            (worn_id, CommandStatus::Failed, 2, None, None),
        ]
    );
    for c in &back {
        assert_eq!(store.get(&c.id).await.expect("get"), *c);
    }
    let held = store.get(&theirs_id).await.expect("get");
    assert_eq!(
        (held.status, held.lease_owner),
        (CommandStatus::Delivering, Some(b.clone()))
    );
    let kept = store.get(&drained_id).await.expect("get");
    assert_eq!(
        (kept.status, kept.lease_owner, kept.lease_deadline),
        (CommandStatus::Delivering, Some(a.clone()), None)
    );

    // Deliverable at once, without waiting for any deadline.
    let again = try_lease(&*store, &live, &a).await.expect("leased");
    assert_eq!(again.command.id, live_id);
    assert_eq!(
        try_lease(&*store, &lapsed, &b)
            .await
            .expect("leased")
            .command
            .id,
        lapsed_id
    );
    assert_no_lease(&*store, &theirs, &a).await;
    // Only what `a` holds now is taken back by a second reclaim.
    assert_eq!(
        ids(&store.reclaim(&a).await.expect("reclaim")),
        vec![live_id]
    );
    assert!(
        store
            .reclaim(&node("node-c"))
            .await
            .expect("reclaim")
            .is_empty()
    );
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
    lease(&*store, &b).await;
    clock.advance(default_lease());

    let report = store.sweep().await.expect("sweep");
    assert_eq!((report.expired, report.recovered, report.failed), (1, 0, 1));
    assert_eq!(ids(&report.expired_commands), vec![expiring.clone()]);
    assert_eq!(report.expired_commands[0].status, CommandStatus::Expired);
    assert_eq!(
        store.get(&expiring).await.expect("get").status,
        CommandStatus::Expired
    );
    let failed = store.get(&used_up).await.expect("get");
    assert_eq!((failed.status, failed.attempts), (CommandStatus::Failed, 1));
    assert_eq!(
        store.sweep().await.expect("sweep"),
        crate::SweepReport::default()
    );

    let config = StoreConfig::default();
    drop(store);
    let Fixture { store, clock } = open(harness, config).await;
    let c = device("lock-c");
    let recovering = enqueue(&*store, &c, "open", &[3]).await;
    lease(&*store, &c).await;
    clock.advance(default_lease());
    let report = store.sweep().await.expect("sweep");
    assert_eq!(report.recovered, 1);
    let back = store.get(&recovering).await.expect("get");
    assert_eq!(back.status, CommandStatus::Pending);
    assert_eq!(back.attempts, 1);
    assert_eq!(back.lease_deadline, None);
    assert_eq!(back.lease_owner, None);
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
    lease(&*store, &a).await;
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

    clock.advance(default_lease());
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

/// A final command stays readable by id for the retention after its TTL ended, then `get`
/// answers `NotFound` (before it is deleted, too); `purge` deletes such commands, at most
/// as many as asked per call, oldest TTL first, and never an open command, however old.
pub async fn final_commands_are_gone_after_their_retention<H: Harness>(harness: &H) {
    let retention = Duration::from_hours(1);
    let config = StoreConfig::default().with_retention(retention);
    let Fixture { store, clock } = open(harness, config).await;
    let dev = device("lock-1");
    let short = |ty: &str, secs: u64| {
        NewCommand::new(dev.clone(), kind(ty), bytes(&[1])).with_ttl(ttl(secs))
    };
    // Succeeded, TTL 60 s.
    let done = store.enqueue(short("unlock", 60)).await.expect("enqueue");
    let leased = lease(&*store, &dev).await;
    store
        .complete(&leased.lease, ok_reply())
        .await
        .expect("complete");
    // Cancelled, TTL 120 s.
    let cancelled = store.enqueue(short("reset", 120)).await.expect("enqueue");
    store.cancel(&cancelled).await.expect("cancel");
    // Awaiting confirmation, TTL 60 s: open, and stays so until a write of its device.
    let waiting = store
        .enqueue(short("status", 60).requiring_confirmation())
        .await
        .expect("enqueue");

    // Just before the first retention ends: everything is there, nothing to purge.
    clock.advance(Duration::from_secs(59) + retention);
    assert_eq!(store.purge(100).await.expect("purge"), 0);
    for id in [&done, &cancelled, &waiting] {
        store.get(id).await.expect("kept within the retention");
    }

    // Past both retentions: the final ones read as gone before any purge; the open one,
    // past its TTL but not ended by a write yet, is still there.
    clock.advance(Duration::from_secs(62));
    for id in [&done, &cancelled] {
        assert!(
            matches!(store.get(id).await, Err(StoreError::NotFound { .. })),
            "a final command past its retention is not found"
        );
    }
    assert_eq!(
        store
            .get(&waiting)
            .await
            .expect("open commands are kept")
            .status,
        CommandStatus::AwaitingConfirmation
    );
    // Bounded: one per call here, the oldest TTL first.
    assert_eq!(store.purge(1).await.expect("purge"), 1);
    assert_eq!(store.purge(10).await.expect("purge"), 1);
    assert_eq!(store.purge(10).await.expect("purge"), 0);
    assert_eq!(open_ids(&*store, &dev).await, vec![waiting.clone()]);

    // Once a write ends it (expired at its TTL, an hour ago), it is past its retention too.
    let ended = store.expire(&dev).await.expect("expire");
    assert_eq!(ids(&ended), vec![waiting.clone()]);
    assert!(matches!(
        store.get(&waiting).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.purge(10).await.expect("purge"), 1);
    // Deleted for good: an unknown id to every call.
    assert!(matches!(
        store.confirm(&waiting).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.cancel(&done).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Two stores on the same data (two processes), many tasks on each, each task a node of its
/// own, call `lease_next` for the same device at the same moment, round after round; the
/// winner holds its lease until every task has asked. Every round has exactly one winner,
/// and the winners' commands are the device's commands, each once, in queue order.
pub async fn two_stores_racing_lease_next_have_one_winner_per_round<H: Harness>(harness: &H) {
    const COMMANDS: usize = 8;
    const TASKS: usize = 6;
    let Fixture { store, clock } = open_default(harness).await;
    let second = open_second(harness, &clock).await;
    let dev = device("lock-1");
    let mut queued = Vec::new();
    for i in 0..COMMANDS {
        queued.push(enqueue(&*store, &dev, &format!("type-{i}"), &[1]).await);
    }
    let asked = Arc::new(tokio::sync::Barrier::new(TASKS));
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = if task % 2 == 0 {
            Arc::clone(&store)
        } else {
            Arc::clone(&second)
        };
        let dev = dev.clone();
        let (start, asked) = (Arc::clone(&start), Arc::clone(&asked));
        tasks.push(tokio::spawn(async move {
            let owner = node(&format!("node-{task}"));
            let mut won = Vec::new();
            // One more round than commands: the last finds nothing.
            for round in 0..=COMMANDS {
                start.wait().await;
                let leased = try_lease(&*store, &dev, &owner).await;
                asked.wait().await;
                if let Some(leased) = leased {
                    assert_eq!(leased.lease.owner, owner);
                    let done = store
                        .complete(&leased.lease, ok_reply())
                        .await
                        .expect("the winner completes its lease");
                    assert_eq!(done.attempts, 1);
                    won.push((round, leased.command.id));
                }
            }
            won
        }));
    }
    let mut wins = Vec::new();
    for task in tasks {
        wins.extend(task.await.expect("task"));
    }
    wins.sort_by_key(|(round, _)| *round);
    let rounds: Vec<usize> = wins.iter().map(|(round, _)| *round).collect();
    assert_eq!(
        rounds,
        (0..COMMANDS).collect::<Vec<_>>(),
        "exactly one winner per round, none once drained"
    );
    let order: Vec<CommandId> = wins.into_iter().map(|(_, id)| id).collect();
    assert_eq!(order, queued);
}

/// Many tasks on two stores sharing the data drain one device as fast as they can: there is
/// never more than one live lease, and every command is leased exactly once, in queue order.
pub async fn concurrent_lease_next_across_two_stores_drains_in_order<H: Harness>(harness: &H) {
    const COMMANDS: usize = 24;
    const TASKS: usize = 6;
    let Fixture { store, clock } = open_default(harness).await;
    let second = open_second(harness, &clock).await;
    let dev = device("lock-1");
    let mut queued = Vec::new();
    for i in 0..COMMANDS {
        queued.push(enqueue(&*store, &dev, &format!("type-{i}"), &[1]).await);
    }
    let live = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = if task % 2 == 0 {
            Arc::clone(&store)
        } else {
            Arc::clone(&second)
        };
        let dev = dev.clone();
        let (live, order, start) = (Arc::clone(&live), Arc::clone(&order), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            let owner = node(&format!("node-{task}"));
            start.wait().await;
            let mut misses = 0_usize;
            // Every command is done once every task found nothing twice in a row after the
            // others finished; a bounded number of misses keeps a broken store from hanging.
            while misses < 10_000 {
                let Some(leased) = try_lease(&*store, &dev, &owner).await else {
                    if order.lock().len() == COMMANDS {
                        return;
                    }
                    misses += 1;
                    tokio::task::yield_now().await;
                    continue;
                };
                let others = live.fetch_add(1, Ordering::SeqCst);
                assert_eq!(others, 0, "two live leases on one device at once");
                order.lock().push(leased.command.id.clone());
                live.fetch_sub(1, Ordering::SeqCst);
                store
                    .complete(&leased.lease, ok_reply())
                    .await
                    .expect("the lease holder completes its own command");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(*order.lock(), queued);
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
    let leased = lease(&*store, &dev).await;
    assert!(matches!(
        store
            .enqueue_or_update(&dev, &kind("d"), bytes(&[1]), TtlSeconds::DEFAULT)
            .await,
        Err(StoreError::QueueFull { .. })
    ));
    store
        .complete(&leased.lease, ok_reply())
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
    assert_eq!(store.pending_count(&dev).await.expect("count"), 0);

    // A grace over the limit is refused, and leases nothing.
    let queued = enqueue(&*store, &dev, "b", &[1]).await;
    let too_long = Leased::MAX_GRACE + Duration::from_millis(1);
    let refused = store.lease_next(&dev, &node("node-a"), too_long).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::InvalidInput(InvalidInput::LeaseGraceTooLong { max }))
                if max == Leased::MAX_GRACE
        ),
        "got {refused:?}"
    );
    assert_eq!(
        store.get(&queued).await.expect("get").status,
        CommandStatus::Pending
    );

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
    assert!(matches!(NodeId::new(""), Err(InvalidInput::NodeId { .. })));
}

/// `drain_pending` hands every deliverable command out once and never again, even when no
/// answer is recorded: no deadline, no attempt counted, not recovered by a sweep nor taken
/// back by `reclaim`; an answer may still be recorded with the lease it returned.
pub async fn drain_pending_is_at_most_once<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let dev = device("lock-1");
    let owner = node("node-a");
    let a = enqueue(&*store, &dev, "a", &[1]).await;
    let b = enqueue(&*store, &dev, "b", &[2]).await;
    store
        .enqueue_with_confirmation(&dev, &kind("c"), bytes(&[3]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let drained = store.drain_pending(&dev, &owner).await.expect("drain");
    assert_eq!(leased_ids(&drained), vec![a.clone(), b]);
    for leased in &drained {
        let c = &leased.command;
        assert_eq!(c.status, CommandStatus::Delivering);
        assert_eq!(c.lease_deadline, None);
        assert_eq!(c.lease_owner, Some(owner.clone()));
        assert_eq!(c.attempts, 0);
        assert_eq!(leased.lease.id, c.id);
        assert_eq!(leased.lease.owner, owner);
    }
    clock.advance(Duration::from_mins(10));
    assert!(
        store
            .drain_pending(&dev, &owner)
            .await
            .expect("drain")
            .is_empty()
    );
    assert_no_lease(&*store, &dev, &owner).await;
    assert_eq!(store.sweep().await.expect("sweep").recovered, 0);
    assert!(store.reclaim(&owner).await.expect("reclaim").is_empty());
    let done = store
        .complete(&drained[0].lease, ok_reply())
        .await
        .expect("complete");
    assert_eq!(
        (done.id, done.status, done.attempts),
        (a, CommandStatus::Succeeded, 1)
    );
}

/// `due_devices` lists devices with a command to hand out now, and no others: not one whose
/// commands wait behind a live lease, until the lease lapses.
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
    lease(&*store, &leased).await;
    // Queued behind the live lease: nothing is handed out for that device until the lease
    // ends, so it is not due (`lease_next` would answer `None`).
    enqueue(&*store, &leased, "b", &[2]).await;
    store
        .enqueue_or_update(&expiring, &kind("a"), bytes(&[1]), ttl(5))
        .await
        .expect("enqueue");
    let mut due = store.due_devices(10).await.expect("due");
    due.sort();
    assert_eq!(due, vec![expiring.clone(), pending.clone()]);
    assert_eq!(store.due_devices(1).await.expect("due").len(), 1);
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        store.due_devices(10).await.expect("due"),
        vec![pending.clone()]
    );
    // Once the lease lapses, the device is due again.
    clock.advance(default_lease());
    let mut due = store.due_devices(10).await.expect("due");
    due.sort();
    assert_eq!(due, vec![leased, pending]);
}

/// `open_counts` counts the commands that are not final, per status, across every device; a
/// lapsed lease still counts as `delivering`, final commands not at all.
pub async fn open_counts_count_open_commands_per_status<H: Harness>(harness: &H) {
    let Fixture { store, clock } = open_default(harness).await;
    let owner = node("node-a");
    assert_eq!(
        store.open_counts().await.expect("counts"),
        OpenCounts::default()
    );
    let (x, y, z) = (device("dev-x"), device("dev-y"), device("dev-z"));
    for dev in [&x, &y] {
        store
            .enqueue_with_confirmation(dev, &kind("confirm"), bytes(&[1]), TtlSeconds::DEFAULT)
            .await
            .expect("enqueue");
    }
    for dev in [&x, &y, &z] {
        enqueue(&*store, dev, "a", &[1]).await;
        enqueue(&*store, dev, "b", &[1]).await;
    }
    let done = lease(&*store, &x).await;
    store
        .complete(&done.lease, ok_reply())
        .await
        .expect("complete");
    let cancelled = enqueue(&*store, &z, "c", &[1]).await;
    store.cancel(&cancelled).await.expect("cancel");
    try_lease(&*store, &y, &owner).await.expect("leased");
    store.drain_pending(&z, &owner).await.expect("drain");

    let want = |awaiting_confirmation, pending, delivering| OpenCounts {
        awaiting_confirmation,
        pending,
        delivering,
    };
    let counts = store.open_counts().await.expect("counts");
    assert_eq!(counts, want(2, 2, 3));
    assert_eq!(counts.of(CommandStatus::Pending), 2);
    assert_eq!(counts.of(CommandStatus::Succeeded), 0);
    assert_eq!(counts.total(), 7);
    clock.advance(default_lease());
    assert_eq!(store.open_counts().await.expect("counts"), want(2, 2, 3));
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
    let leased = lease(&*store, &dev).await;
    let done = store
        .complete(&leased.lease, CommandOutcome::Payload(bytes(&[0x01])))
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
/// states, leases (a lease taken before still ends after), outcomes and delivery settings
/// (device type, timeout).
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
    let first = lease(&*store, &dev).await;
    store
        .complete(&first.lease, CommandOutcome::Payload(bytes(&[0xaa])))
        .await
        .expect("complete");
    let held = lease(&*store, &dev).await;
    assert_eq!(held.command.id, c);
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
    // The lease survived: it still holds the device, and still ends.
    assert_no_lease(&reopened, &dev, &node("node-b")).await;
    let done = reopened
        .complete(&held.lease, ok_reply())
        .await
        .expect("the lease taken before reopening ends");
    assert_eq!((done.status, done.attempts), (CommandStatus::Succeeded, 1));
    reopened.confirm(&b).await.expect("confirm");
    // The reopened store continues the order after the old commands.
    let d = enqueue(&reopened, &dev, "d", &[4]).await;
    assert_eq!(open_ids(&reopened, &dev).await, vec![b, d]);

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

//! The delivery engine on virtual time: no runtime, no sleeps. Each test plays the driver:
//! it takes the engine's actions and answers them as a store and a session would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bridge_dispatch::{Action, Engine, EngineConfig, Sent};
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{
    CommandId, CommandType, DeviceErrorCode, DeviceId, HexPayload, TimeoutMs, Timestamp,
};
use bridge_queue::{
    Cut, Lease, LeaseToken, Leased, NodeId, Party, QueuedCommand, StoreError, SweepReport,
};

fn node() -> NodeId {
    NodeId::new("node-a").unwrap()
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn command(id: &str, device_name: &str, status: CommandStatus) -> QueuedCommand {
    let now = Timestamp::from_unix_millis(1_000_000);
    QueuedCommand {
        id: CommandId::new(id).unwrap(),
        device: device(device_name),
        command_type: CommandType::new("unlock").unwrap(),
        payload: HexPayload::from_bytes(vec![0xaa]),
        status,
        requires_confirmation: false,
        device_type: None,
        timeout: TimeoutMs::DEFAULT,
        queued_by: Party::Backend,
        attempts: 0,
        created_at: now,
        expires_at: now.saturating_add(Duration::from_hours(1)),
        lease_deadline: None,
        lease_owner: None,
        outcome: None,
        hops: bridge_protocol::Hops::NONE,
    }
}

fn leased(id: &str, device_name: &str, token: u64) -> Leased {
    let mut command = command(id, device_name, CommandStatus::Delivering);
    command.lease_owner = Some(node());
    Leased {
        lease: Lease {
            id: command.id.clone(),
            token: LeaseToken::from_u64(token),
            owner: node(),
        },
        command,
    }
}

fn ended(id: &str, device_name: &str, status: CommandStatus, attempts: u32) -> QueuedCommand {
    let mut command = command(id, device_name, status);
    command.attempts = attempts;
    command
}

/// An engine past its start-up reclaim, with `lock-1` online and its pass at the lease.
struct Harness {
    engine: Engine,
    start: Instant,
}

impl Harness {
    fn new() -> Self {
        let start = Instant::now();
        let mut engine = Engine::new(EngineConfig::default(), node(), start);
        assert_eq!(engine.poll(), Some(Action::Reclaim { owner: node() }));
        engine.handle_reclaimed(Ok(Vec::new()));
        assert_eq!(engine.poll(), None);
        Self { engine, start }
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.engine.poll()).collect()
    }

    /// Brings `name` online and answers its expiry with nothing: the pass asks for a lease.
    fn online_until_lease(&mut self, name: &str) {
        let lock = device(name);
        self.engine.handle_online(&lock);
        assert_eq!(
            self.drain(),
            vec![Action::Expire {
                device: lock.clone()
            }]
        );
        self.engine.handle_expired(&lock, Ok(Vec::new()));
        assert_eq!(self.drain(), vec![lease_action(name)]);
    }
}

impl Harness {
    /// Brings `lock-1` online and its pass to sending command `id` under lease `token`.
    fn sending(&mut self, id: &str, token: u64) -> Leased {
        self.online_until_lease("lock-1");
        let out = leased(id, "lock-1", token);
        self.engine
            .handle_leased(&device("lock-1"), Ok(Some(out.clone())));
        assert_eq!(self.drain(), vec![send_action(&out)]);
        out
    }
}

fn lease_action(name: &str) -> Action {
    Action::Lease {
        device: device(name),
        owner: node(),
        grace: EngineConfig::default().lease_grace,
    }
}

fn send_action(leased: &Leased) -> Action {
    Action::Send {
        leased: Box::new(leased.clone()),
    }
}

fn announce(command: QueuedCommand) -> Action {
    Action::Announce {
        command: Box::new(command),
    }
}

#[test]
fn a_device_coming_online_gets_its_queued_commands_one_at_a_time_in_order() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.online_until_lease("lock-1");

    for (n, id) in ["c1", "c2"].into_iter().enumerate() {
        let token = u64::try_from(n).unwrap();
        let out = leased(id, "lock-1", token);
        h.engine.handle_leased(&lock, Ok(Some(out.clone())));
        assert_eq!(h.drain(), vec![send_action(&out)], "one send, nothing else");
        let reply = CommandOutcome::Payload(HexPayload::from_bytes(vec![1]));
        h.engine
            .handle_sent(&out.lease, Sent::Answered(reply.clone()), &lock);
        assert_eq!(
            h.drain(),
            vec![Action::Complete {
                device: lock.clone(),
                lease: out.lease.clone(),
                outcome: reply,
            }]
        );
        let done = ended(id, "lock-1", CommandStatus::Succeeded, 1);
        h.engine.handle_ended(&lock, Ok(done.clone()));
        assert_eq!(
            h.drain(),
            vec![announce(done), lease_action("lock-1")],
            "the end is announced and the next command leased"
        );
    }
    h.engine.handle_leased(&lock, Ok(None));
    assert_eq!(h.drain(), vec![]);
    assert!(h.engine.is_idle(), "nothing left: the pass ends");
}

#[test]
fn a_trigger_during_a_pass_runs_it_once_more_instead_of_a_second_pass() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.online_until_lease("lock-1");
    // Two more triggers while the lease is being taken: no second lease at once.
    h.engine.handle_link_up(&lock);
    h.engine.handle_queued(&lock);
    assert_eq!(h.drain(), vec![]);
    assert_eq!(h.engine.passes(), 1);
    h.engine.handle_leased(&lock, Ok(None));
    assert_eq!(
        h.drain(),
        vec![Action::Expire {
            device: lock.clone()
        }],
        "the pass runs once more"
    );
    h.engine.handle_expired(&lock, Ok(Vec::new()));
    assert_eq!(h.drain(), vec![lease_action("lock-1")]);
    h.engine.handle_leased(&lock, Ok(None));
    assert!(h.engine.is_idle());
}

#[test]
fn a_command_queued_for_an_offline_device_waits_for_it() {
    let mut h = Harness::new();
    h.engine.handle_queued(&device("lock-1"));
    assert_eq!(h.drain(), vec![]);
    assert!(h.engine.is_idle());
}

#[test]
fn bridge_lost_releases_as_sent_and_goes_on_at_once_through_another_holder() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 7);
    h.engine.handle_sent(&out.lease, Sent::BridgeLost, &lock);
    assert_eq!(
        h.drain(),
        vec![Action::Release {
            device: lock.clone(),
            lease: out.lease.clone(),
            cut: Cut::Sent,
        }]
    );
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 1)));
    assert_eq!(
        h.drain(),
        vec![lease_action("lock-1")],
        "back to pending is not announced; the pass leases again"
    );
}

#[test]
fn a_timeout_releases_as_sent_and_ends_the_pass_until_the_next_trigger() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 1);
    h.engine.handle_sent(&out.lease, Sent::TimedOut, &lock);
    assert_eq!(
        h.drain(),
        vec![Action::Release {
            device: lock.clone(),
            lease: out.lease,
            cut: Cut::Sent,
        }]
    );
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 1)));
    assert_eq!(h.drain(), vec![]);
    assert!(h.engine.is_idle());
}

#[test]
fn a_write_that_never_left_is_released_without_counting_an_attempt() {
    for sent in [Sent::Offline, Sent::NotSent] {
        let mut h = Harness::new();
        let lock = device("lock-1");
        let out = h.sending("c1", 1);
        assert!(!sent.left());
        h.engine.handle_sent(&out.lease, sent, &lock);
        assert_eq!(
            h.drain(),
            vec![Action::Release {
                device: lock.clone(),
                lease: out.lease,
                cut: Cut::NotSent,
            }]
        );
        h.engine
            .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 0)));
        assert!(h.engine.is_idle());
    }
}

#[test]
fn a_device_error_completes_the_command_failed_and_announces_it() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 1);
    let error = CommandOutcome::Error(DeviceErrorCode::new("gatt_write_failed").unwrap());
    h.engine
        .handle_sent(&out.lease, Sent::Answered(error.clone()), &lock);
    assert!(matches!(&h.drain()[..], [Action::Complete { outcome, .. }] if *outcome == error));
    let mut failed = ended("c1", "lock-1", CommandStatus::Failed, 1);
    failed.outcome = Some(error);
    h.engine.handle_ended(&lock, Ok(failed.clone()));
    assert_eq!(h.drain(), vec![announce(failed), lease_action("lock-1")]);
}

#[test]
fn the_last_attempt_cut_off_ends_failed_and_is_announced() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 1);
    h.engine.handle_sent(&out.lease, Sent::TimedOut, &lock);
    h.drain();
    let failed = ended("c1", "lock-1", CommandStatus::Failed, 5);
    h.engine.handle_ended(&lock, Ok(failed.clone()));
    assert_eq!(h.drain(), vec![announce(failed)]);
}

#[test]
fn a_stale_lease_ends_the_pass_and_leaves_the_command_to_its_new_holder() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 1);
    h.engine.handle_sent(
        &out.lease,
        Sent::Answered(CommandOutcome::Payload(HexPayload::from_bytes(vec![1]))),
        &lock,
    );
    h.drain();
    h.engine.handle_ended(
        &lock,
        Err(StoreError::StaleLease {
            id: out.lease.id.clone(),
        }),
    );
    assert_eq!(h.drain(), vec![], "nothing announced, nothing retried");
    assert!(h.engine.is_idle());
}

#[test]
fn expiries_found_when_a_device_comes_online_are_announced_before_delivery() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.engine.handle_online(&lock);
    assert_eq!(
        h.drain(),
        vec![Action::Expire {
            device: lock.clone()
        }]
    );
    let expired = ended("c0", "lock-1", CommandStatus::Expired, 0);
    h.engine.handle_expired(&lock, Ok(vec![expired.clone()]));
    assert_eq!(h.drain(), vec![announce(expired), lease_action("lock-1")]);
}

#[test]
fn store_failures_end_the_pass_and_the_retry_tick_tries_again() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.online_until_lease("lock-1");
    h.engine.handle_leased(
        &lock,
        Err(StoreError::Unavailable {
            backend: "test",
            source: "connection refused".into(),
        }),
    );
    assert!(h.engine.is_idle());

    // The tick: sweep, then list due devices; lock-1 is online and due, lock-2 is not online.
    let tick = h.start + EngineConfig::default().retry_interval;
    assert_eq!(h.engine.poll_timeout(), Some(tick));
    h.engine
        .handle_timeout(tick.checked_sub(Duration::from_millis(1)).unwrap());
    assert_eq!(h.drain(), vec![], "not due yet");
    h.engine.handle_timeout(tick);
    assert_eq!(h.drain(), vec![Action::Sweep]);
    assert_eq!(
        h.engine.poll_timeout(),
        Some(tick + EngineConfig::default().retry_interval)
    );
    let expired = ended("c9", "lock-2", CommandStatus::Expired, 0);
    let mut report = SweepReport::default();
    report.expired = 1;
    report.expired_commands = vec![expired.clone()];
    h.engine.handle_swept(Ok(report));
    assert_eq!(
        h.drain(),
        vec![
            announce(expired),
            Action::ListDue {
                limit: EngineConfig::default().max_due_devices
            }
        ]
    );
    h.engine
        .handle_due(Ok(vec![device("lock-2"), lock.clone()]));
    assert_eq!(h.drain(), vec![Action::Expire { device: lock }]);
}

#[test]
fn ticks_missed_while_the_driver_was_late_are_not_made_up_and_never_overlap() {
    let mut h = Harness::new();
    let interval = EngineConfig::default().retry_interval;
    h.engine.handle_timeout(h.start + interval * 5);
    assert_eq!(h.drain(), vec![Action::Sweep]);
    assert_eq!(h.engine.poll_timeout(), Some(h.start + interval * 6));
    // The sweep is slow: the next tick starts no second one.
    h.engine.handle_timeout(h.start + interval * 6);
    assert_eq!(h.drain(), vec![]);
}

#[test]
fn a_restarted_node_takes_back_its_leases_first_and_then_serves_every_online_device() {
    let start = Instant::now();
    let mut engine = Engine::new(EngineConfig::default(), node(), start);
    // Presence arrives before the reclaim's answer: no pass may start before it.
    engine.handle_online(&device("lock-1"));
    assert_eq!(engine.poll(), Some(Action::Reclaim { owner: node() }));
    assert_eq!(engine.poll(), None);
    engine.handle_timeout(start + EngineConfig::default().retry_interval);
    assert_eq!(
        engine.poll(),
        None,
        "no tick before the reclaim is answered"
    );

    let back = ended("c1", "lock-1", CommandStatus::Pending, 1);
    let failed = ended("c2", "lock-9", CommandStatus::Failed, 5);
    engine.handle_reclaimed(Ok(vec![back, failed.clone()]));
    let actions: Vec<Action> = std::iter::from_fn(|| engine.poll()).collect();
    assert_eq!(
        actions,
        vec![
            announce(failed),
            Action::Expire {
                device: device("lock-1")
            }
        ]
    );
}

#[test]
fn stopping_sends_nothing_new_and_gives_back_a_lease_taken_meanwhile() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.online_until_lease("lock-1");
    h.engine.stop();
    assert_eq!(h.engine.poll_timeout(), None);
    let out = leased("c1", "lock-1", 3);
    h.engine.handle_leased(&lock, Ok(Some(out.clone())));
    assert_eq!(
        h.drain(),
        vec![Action::Release {
            device: lock.clone(),
            lease: out.lease,
            cut: Cut::NotSent,
        }]
    );
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 0)));
    assert!(h.engine.is_idle());
    h.engine.handle_online(&device("lock-2"));
    assert_eq!(h.drain(), vec![], "no pass starts once stopped");
}

#[test]
fn stopping_with_a_send_not_yet_taken_by_the_driver_releases_it_unsent() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.online_until_lease("lock-1");
    let out = leased("c1", "lock-1", 3);
    h.engine.handle_leased(&lock, Ok(Some(out.clone())));
    h.engine.stop();
    assert_eq!(
        h.drain(),
        vec![Action::Release {
            device: lock.clone(),
            lease: out.lease,
            cut: Cut::NotSent,
        }]
    );
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 0)));
    assert!(h.engine.is_idle());
}

#[test]
fn a_running_delivery_finishes_and_is_recorded_after_a_stop() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 3);
    h.engine.stop();
    assert!(!h.engine.is_idle());
    h.engine.handle_sent(&out.lease, Sent::BridgeLost, &lock);
    assert!(matches!(
        &h.drain()[..],
        [Action::Release { cut: Cut::Sent, .. }]
    ));
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 1)));
    assert_eq!(h.drain(), vec![], "no next lease once stopped");
    assert!(h.engine.is_idle());
}

#[test]
fn answers_nobody_asked_for_change_nothing_and_a_stray_lease_is_given_back() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    h.engine.handle_expired(&lock, Ok(Vec::new()));
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 0)));
    h.engine.handle_swept(Ok(SweepReport::default()));
    h.engine.handle_due(Ok(vec![lock.clone()]));
    assert_eq!(h.drain(), vec![]);
    let stray = leased("c1", "lock-1", 1);
    h.engine.handle_leased(&lock, Ok(Some(stray.clone())));
    assert_eq!(
        h.drain(),
        vec![Action::Release {
            device: lock.clone(),
            lease: stray.lease.clone(),
            cut: Cut::NotSent,
        }]
    );
    // A send's end for a lease the pass does not hold is ignored.
    h.online_until_lease("lock-1");
    h.engine.handle_sent(&stray.lease, Sent::TimedOut, &lock);
    assert_eq!(h.drain(), vec![]);
    assert_eq!(h.engine.passes(), 1);
}

#[test]
fn a_device_that_went_offline_mid_pass_gets_no_further_lease() {
    let mut h = Harness::new();
    let lock = device("lock-1");
    let out = h.sending("c1", 1);
    h.engine.handle_offline(&lock);
    h.engine.handle_sent(&out.lease, Sent::BridgeLost, &lock);
    h.drain();
    h.engine
        .handle_ended(&lock, Ok(ended("c1", "lock-1", CommandStatus::Pending, 1)));
    assert_eq!(h.drain(), vec![]);
    assert!(h.engine.is_idle());
}

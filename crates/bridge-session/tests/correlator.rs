//! The correlation state machine, driven directly with made-up time.

// Helpers outside `#[test]` functions unwrap test fixtures too.
#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bridge_protocol::{
    BleOutcome, BleProgress, BleResponse, ConnectionId, DeviceErrorCode, DeviceId, ErrorCode,
    HexPayload, Hops, RequestId, Stage,
};
use bridge_session::{
    CommandError, Correlator, Finished, MarkSent, ProgressAccepted, RejectReason, ResponseAccepted,
    StageTimes,
};

const BRIDGE: ConnectionId = ConnectionId::new(1);
const OTHER_BRIDGE: ConnectionId = ConnectionId::new(2);
const TIMEOUT: Duration = Duration::from_secs(10);

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn reply(id: RequestId, device_name: &str, bytes: &[u8]) -> BleResponse {
    BleResponse {
        request_id: id,
        device_id: device(device_name),
        outcome: BleOutcome::Payload(HexPayload::from_bytes(bytes.to_vec())),
    }
}

/// A correlator with one command for `lock-1` sent through `BRIDGE` at `t0`.
fn one_sent(t0: Instant) -> (Correlator<&'static str>, RequestId) {
    let mut c = Correlator::new(0xabcd);
    let id = c
        .register(device("lock-1"), t0 + TIMEOUT, "caller")
        .unwrap();
    assert!(matches!(c.mark_sent(&id, BRIDGE), MarkSent::Waiting));
    (c, id)
}

fn resolved<W>(
    accepted: Result<ResponseAccepted<W>, bridge_session::ResponseRejected>,
) -> Finished<W> {
    match accepted {
        Ok(ResponseAccepted::Resolved(finished)) => finished,
        other => panic!("expected a resolved command, got {:?}", other.map(|_| ())),
    }
}

fn rejection<W>(
    accepted: Result<ResponseAccepted<W>, bridge_session::ResponseRejected>,
) -> RejectReason {
    match accepted {
        Err(rejected) => rejected.reason,
        Ok(_) => panic!("expected a rejection"),
    }
}

#[test]
fn an_answer_on_the_same_connection_for_the_same_device_resolves_the_command() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1, 2]), t0));
    assert_eq!(done.request_id, id);
    assert_eq!(done.connection, Some(BRIDGE));
    assert_eq!(done.waiter, "caller");
    assert_eq!(done.result, Ok(HexPayload::from_bytes(vec![1, 2])));
    assert!(c.is_empty());
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.stats().succeeded, 1);
}

#[test]
fn a_device_error_ends_the_command_with_its_code() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let code = DeviceErrorCode::new("gatt_write_failed").unwrap();
    let answer = BleResponse {
        request_id: id,
        device_id: device("lock-1"),
        outcome: BleOutcome::Error(code.clone()),
    };
    let done = resolved(c.handle_response(BRIDGE, answer, t0));
    assert_eq!(done.result, Err(CommandError::DeviceError(code)));
    assert_eq!(c.len(), 0);
    assert_eq!(c.stats().device_errors, 1);
}

#[test]
fn an_answer_from_another_connection_is_forbidden_and_leaves_the_command_pending() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let reason = rejection(c.handle_response(OTHER_BRIDGE, reply(id, "lock-1", &[6]), t0));
    assert_eq!(reason, RejectReason::WrongConnection);
    assert_eq!(reason.error_code(), ErrorCode::Forbidden);
    assert_eq!(c.len(), 1);
    // The real bridge can still answer.
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(done.result, Ok(HexPayload::from_bytes(vec![1])));
    assert_eq!(c.stats().rejected_wrong_connection, 1);
}

#[test]
fn an_answer_naming_another_device_is_forbidden_and_leaves_the_command_pending() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let reason = rejection(c.handle_response(BRIDGE, reply(id, "lock-2", &[6]), t0));
    assert_eq!(reason, RejectReason::WrongDevice);
    assert_eq!(reason.error_code(), ErrorCode::Forbidden);
    assert_eq!(c.len(), 1);
    resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(c.stats().rejected_wrong_device, 1);
}

#[test]
fn unknown_foreign_and_already_answered_ids_are_unknown_requests() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let never_issued = RequestId::new("c-1").unwrap();
    let reason = rejection(c.handle_response(BRIDGE, reply(never_issued, "lock-1", &[]), t0));
    assert_eq!(reason, RejectReason::UnknownRequest);
    assert_eq!(reason.error_code(), ErrorCode::UnknownRequest);
    // Another node's id (another prefix) with the same sequence number.
    let foreign = RequestId::new(&format!("{:016x}{}", 0xbeef, &id.as_str()[16..])).unwrap();
    let reason = rejection(c.handle_response(BRIDGE, reply(foreign, "lock-1", &[]), t0));
    assert_eq!(reason, RejectReason::UnknownRequest);
    assert_eq!(c.len(), 1);

    resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    let reason = rejection(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(reason, RejectReason::UnknownRequest);
    assert_eq!(c.stats().unknown_responses, 3);
}

#[test]
fn an_answer_after_the_deadline_is_late_and_the_command_times_out() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let reason = rejection(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0 + TIMEOUT));
    assert_eq!(reason, RejectReason::Late);
    assert_eq!(reason.error_code(), ErrorCode::UnknownRequest);
    let mut out = Vec::new();
    c.handle_timeout(t0 + TIMEOUT, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].result, Err(CommandError::Timeout));
    assert_eq!(out[0].connection, Some(BRIDGE));
    assert!(c.is_empty());
    assert_eq!(c.stats().late_responses, 1);
    assert_eq!(c.stats().timeouts, 1);
}

#[test]
fn handle_timeout_ends_exactly_the_commands_that_are_due() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let long = c
        .register(device("a"), t0 + Duration::from_secs(30), 30)
        .unwrap();
    let short = c
        .register(device("b"), t0 + Duration::from_secs(1), 1)
        .unwrap();
    let mid = c
        .register(device("c"), t0 + Duration::from_secs(5), 5)
        .unwrap();
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(1)));

    let mut out = Vec::new();
    c.handle_timeout(t0 + Duration::from_millis(999), &mut out);
    assert!(out.is_empty());
    c.handle_timeout(t0 + Duration::from_secs(5), &mut out);
    let ended: HashSet<_> = out.iter().map(|f| f.request_id).collect();
    assert_eq!(ended, HashSet::from([short, mid]));
    assert!(out.iter().all(|f| f.result == Err(CommandError::Timeout)));
    // Routing commands have no connection to report.
    assert!(out.iter().all(|f| f.connection.is_none()));
    assert_eq!(c.len(), 1);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(30)));

    // An answered command's deadline no longer counts.
    assert!(matches!(c.mark_sent(&long, BRIDGE), MarkSent::Waiting));
    resolved(c.handle_response(BRIDGE, reply(long, "a", &[]), t0));
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn connection_lost_fails_every_command_sent_through_it_and_nothing_else() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let mut ids = Vec::new();
    for (name, conn) in [("a", BRIDGE), ("b", BRIDGE), ("c", OTHER_BRIDGE)] {
        let id = c.register(device(name), t0 + TIMEOUT, name).unwrap();
        c.mark_sent(&id, conn);
        ids.push(id);
    }
    let mut out = Vec::new();
    c.connection_lost(BRIDGE, &mut out);
    let lost: HashSet<_> = out.iter().map(|f| f.waiter).collect();
    assert_eq!(lost, HashSet::from(["a", "b"]));
    assert!(
        out.iter()
            .all(|f| f.result == Err(CommandError::BridgeLost))
    );
    assert_eq!(c.len(), 1);
    resolved(c.handle_response(OTHER_BRIDGE, reply(ids[2], "c", &[]), t0));
    assert!(c.is_empty());
    assert_eq!(c.stats().bridge_lost, 2);
}

#[test]
fn device_released_fails_only_that_device_on_that_connection() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    for (waiter, name, conn) in [
        (1, "a", BRIDGE),
        (2, "a", BRIDGE),
        (3, "b", BRIDGE),
        (4, "a", OTHER_BRIDGE),
    ] {
        let id = c.register(device(name), t0 + TIMEOUT, waiter).unwrap();
        c.mark_sent(&id, conn);
    }
    let mut out = Vec::new();
    c.device_released(BRIDGE, &device("a"), &mut out);
    let lost: HashSet<_> = out.iter().map(|f| f.waiter).collect();
    assert_eq!(lost, HashSet::from([1, 2]));
    assert_eq!(c.len(), 2);
}

#[test]
fn an_answer_that_beats_the_send_resolves_the_command_when_the_send_returns() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let id = c.register(device("lock-1"), t0 + TIMEOUT, ()).unwrap();
    assert!(matches!(
        c.handle_response(BRIDGE, reply(id, "lock-1", &[9]), t0),
        Ok(ResponseAccepted::HeldUntilSent)
    ));
    assert_eq!(c.len(), 1);
    let MarkSent::Finished(done) = c.mark_sent(&id, BRIDGE) else {
        panic!("the held answer came on the connection the write went out on");
    };
    assert_eq!(done.result, Ok(HexPayload::from_bytes(vec![9])));
    assert!(c.is_empty());
}

#[test]
fn an_early_answer_from_the_wrong_connection_is_discarded_when_the_send_returns() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let id = c.register(device("lock-1"), t0 + TIMEOUT, ()).unwrap();
    assert!(matches!(
        c.handle_response(OTHER_BRIDGE, reply(id, "lock-1", &[6]), t0),
        Ok(ResponseAccepted::HeldUntilSent)
    ));
    // A second early answer from yet another connection is refused outright.
    let reason = rejection(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(reason, RejectReason::WrongConnection);
    assert!(matches!(c.mark_sent(&id, BRIDGE), MarkSent::Waiting));
    assert_eq!(c.len(), 1);
    // The spoofed bytes never reached anyone; the real answer still counts.
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(done.result, Ok(HexPayload::from_bytes(vec![1])));
    assert_eq!(c.stats().rejected_wrong_connection, 2);
}

#[test]
fn a_connection_lost_while_the_write_was_routing_fails_the_command_once_sent() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let through_lost = c.register(device("a"), t0 + TIMEOUT, 1).unwrap();
    let through_other = c.register(device("b"), t0 + TIMEOUT, 2).unwrap();
    let mut out = Vec::new();
    c.connection_lost(BRIDGE, &mut out);
    assert!(out.is_empty());
    let MarkSent::Finished(done) = c.mark_sent(&through_lost, BRIDGE) else {
        panic!("sent through a connection that is already gone");
    };
    assert_eq!(done.result, Err(CommandError::BridgeLost));
    assert!(matches!(
        c.mark_sent(&through_other, OTHER_BRIDGE),
        MarkSent::Waiting
    ));
    assert_eq!(c.len(), 1);
}

#[test]
fn a_command_that_ended_while_routing_is_gone_when_the_send_returns() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let id = c.register(device("a"), t0 + TIMEOUT, ()).unwrap();
    let mut out = Vec::new();
    c.handle_timeout(t0 + TIMEOUT, &mut out);
    assert_eq!(out.len(), 1);
    assert!(matches!(
        c.mark_sent(&id, BRIDGE),
        MarkSent::Gone(CommandError::Timeout)
    ));
    assert!(c.is_empty());
    // Reported once.
    assert!(matches!(c.mark_sent(&id, BRIDGE), MarkSent::Unknown));
}

#[test]
fn a_command_shut_down_while_routing_reports_it_when_the_send_returns_or_fails() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let sent = c.register(device("a"), t0 + TIMEOUT, ()).unwrap();
    let unsent = c.register(device("b"), t0 + TIMEOUT, ()).unwrap();
    let timed_out = c.register(device("c"), t0, ()).unwrap();
    let mut out = Vec::new();
    c.handle_timeout(t0, &mut out);
    c.close(&mut out);
    assert_eq!(out.len(), 3);
    assert!(matches!(
        c.mark_sent(&sent, BRIDGE),
        MarkSent::Gone(CommandError::Shutdown)
    ));
    assert_eq!(c.mark_offline(&unsent).unwrap_err(), CommandError::Shutdown);
    assert_eq!(
        c.mark_offline(&timed_out).unwrap_err(),
        CommandError::Timeout
    );
    assert_eq!(
        c.mark_offline(&RequestId::new("x").unwrap()).unwrap_err(),
        CommandError::Offline
    );
}

#[test]
fn cancel_and_offline_remove_the_command() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let sent = c.register(device("a"), t0 + TIMEOUT, 1).unwrap();
    c.mark_sent(&sent, BRIDGE);
    let unsent = c.register(device("b"), t0 + TIMEOUT, 2).unwrap();
    let removed = c.cancel(&sent).unwrap();
    assert_eq!((removed.waiter, removed.connection), (1, Some(BRIDGE)));
    let removed = c.mark_offline(&unsent).unwrap();
    assert_eq!((removed.waiter, removed.connection), (2, None));
    assert!(c.is_empty());
    assert!(c.cancel(&sent).is_none());
    assert_eq!(c.poll_timeout(), None);
    let stats = c.stats();
    assert_eq!((stats.cancelled, stats.offline, stats.sent), (1, 1, 1));
}

#[test]
fn close_ends_everything_with_shutdown_and_refuses_new_commands() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let sent = c.register(device("a"), t0 + TIMEOUT, 1).unwrap();
    c.mark_sent(&sent, BRIDGE);
    c.register(device("b"), t0 + TIMEOUT, 2).unwrap();
    let mut out = Vec::new();
    c.close(&mut out);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|f| f.result == Err(CommandError::Shutdown)));
    assert!(c.is_empty());
    assert!(c.is_closed());
    assert_eq!(
        c.register(device("c"), t0 + TIMEOUT, 3),
        Err(CommandError::Shutdown)
    );
    assert_eq!(c.stats().shutdown, 2);
}

#[test]
fn request_ids_are_unique_and_carry_the_prefix() {
    let t0 = Instant::now();
    let mut c = Correlator::new(0x0123_4567_89ab_cdef);
    let mut seen = HashSet::new();
    for i in 0..10_000 {
        let id = c.register(device("a"), t0 + TIMEOUT, i).unwrap();
        assert!(id.as_str().starts_with("0123456789abcdef"));
        assert_eq!(id.as_str().len(), 32);
        assert!(seen.insert(id), "duplicate id {id}");
    }
    assert_eq!(c.len(), 10_000);
}

#[test]
fn many_answered_commands_leave_no_deadlines_behind() {
    // A long-lived command plus a stream of answered ones, in the order real traffic comes:
    // the stored deadlines must not grow with the stream.
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let background = c
        .register(device("idle"), t0 + Duration::from_hours(1), 0)
        .unwrap();
    c.mark_sent(&background, BRIDGE);
    for i in 0..50_000_u64 {
        let now = t0 + Duration::from_micros(i);
        let id = c.register(device("a"), now + TIMEOUT, 1).unwrap();
        c.mark_sent(&id, BRIDGE);
        resolved(c.handle_response(BRIDGE, reply(id, "a", &[]), now));
    }
    assert_eq!(c.len(), 1);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_hours(1)));
}

#[test]
fn a_device_released_while_the_write_was_routing_fails_the_command_once_sent() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let released = c.register(device("a"), t0 + TIMEOUT, 1).unwrap();
    let kept = c.register(device("b"), t0 + TIMEOUT, 2).unwrap();
    let mut out = Vec::new();
    c.device_released(BRIDGE, &device("a"), &mut out);
    assert!(out.is_empty());
    let MarkSent::Finished(done) = c.mark_sent(&released, BRIDGE) else {
        panic!("sent through a connection that released the device");
    };
    assert_eq!(done.result, Err(CommandError::BridgeLost));
    assert!(matches!(c.mark_sent(&kept, BRIDGE), MarkSent::Waiting));
    assert_eq!(c.len(), 1);
}

#[test]
fn every_registered_command_is_counted_in_exactly_one_ending() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let mut out = Vec::new();
    let register = |c: &mut Correlator<()>, name: &str| {
        let id = c.register(device(name), t0 + TIMEOUT, ()).unwrap();
        c.mark_sent(&id, BRIDGE);
        id
    };
    let ok = register(&mut c, "a");
    resolved(c.handle_response(BRIDGE, reply(ok, "a", &[]), t0));
    let failed = register(&mut c, "a");
    let code = DeviceErrorCode::new("gatt_write_failed").unwrap();
    resolved(c.handle_response(
        BRIDGE,
        BleResponse {
            request_id: failed,
            device_id: device("a"),
            outcome: BleOutcome::Error(code),
        },
        t0,
    ));
    let cancelled = register(&mut c, "a");
    c.cancel(&cancelled).unwrap();
    register(&mut c, "b");
    c.device_released(BRIDGE, &device("b"), &mut out);
    register(&mut c, "a");
    c.handle_timeout(t0 + TIMEOUT, &mut out);
    let offline = c.register(device("a"), t0 + TIMEOUT, ()).unwrap();
    c.mark_offline(&offline).unwrap();
    register(&mut c, "a");
    register(&mut c, "a");
    c.close(&mut out);

    let s = c.stats();
    let ended = s.succeeded
        + s.device_errors
        + s.cancelled
        + s.bridge_lost
        + s.timeouts
        + s.offline
        + s.shutdown;
    assert_eq!(
        (
            s.succeeded,
            s.device_errors,
            s.cancelled,
            s.bridge_lost,
            s.timeouts,
            s.offline,
            s.shutdown
        ),
        (1, 1, 1, 1, 1, 1, 2)
    );
    assert_eq!(ended, 8);
    assert_eq!(s.sent, 7);
    assert_eq!(s.pending, 0);
}

#[test]
fn a_loss_only_concerns_commands_that_were_routing_when_it_happened() {
    let t0 = Instant::now();
    let mut c = Correlator::new(1);
    let mut out = Vec::new();
    c.connection_lost(BRIDGE, &mut out);
    c.device_released(OTHER_BRIDGE, &device("a"), &mut out);
    let later = c.register(device("a"), t0 + TIMEOUT, ()).unwrap();
    assert!(matches!(
        c.mark_sent(&later, OTHER_BRIDGE),
        MarkSent::Waiting
    ));
    assert_eq!(c.len(), 1);
    assert!(out.is_empty());
}

// ---- ble_progress (PROTOCOL.md 3.2, version 1.1) ----

fn progress(id: RequestId, device_name: &str, stage: bridge_protocol::Stage) -> BleProgress {
    BleProgress {
        request_id: id,
        device_id: device(device_name),
        stage,
    }
}

fn progress_rejection(
    accepted: Result<ProgressAccepted, bridge_session::ResponseRejected>,
) -> RejectReason {
    match accepted {
        Err(rejected) => rejected.reason,
        Ok(outcome) => panic!("expected a rejection, got {outcome:?}"),
    }
}

#[test]
fn reported_stages_travel_with_the_answer_and_count_from_the_send() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let ms = Duration::from_millis;
    assert_eq!(
        c.handle_progress(BRIDGE, &progress(id, "lock-1", Stage::Received), t0 + ms(3)),
        Ok(ProgressAccepted::Recorded)
    );
    assert_eq!(
        c.handle_progress(BRIDGE, &progress(id, "lock-1", Stage::Written), t0 + ms(41)),
        Ok(ProgressAccepted::Recorded)
    );
    assert_eq!(
        c.stages(&id).and_then(StageTimes::last),
        Some(Stage::Written)
    );
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0 + ms(50)));
    let hops = StageTimes::hops(done.stages.as_deref(), t0);
    assert_eq!(hops.stage, Some(Stage::Written));
    assert_eq!(hops.progress.received_ms, Some(3));
    assert_eq!(hops.progress.connected_ms, None);
    assert_eq!(hops.progress.written_ms, Some(41));
    assert_eq!(c.stats().progress_recorded, 2);
}

#[test]
fn a_command_whose_bridge_reports_nothing_carries_no_stage_times() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    assert!(c.stages(&id).is_none());
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert!(done.stages.is_none(), "nothing was allocated for it");
    assert_eq!(StageTimes::hops(done.stages.as_deref(), t0), Hops::SENT);
}

#[test]
fn progress_for_nothing_pending_is_an_unknown_request() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    // An id this correlator never issued.
    let foreign = RequestId::new("not-ours").unwrap();
    let reason = progress_rejection(c.handle_progress(
        BRIDGE,
        &progress(foreign, "lock-1", Stage::Received),
        t0,
    ));
    assert_eq!(reason, RejectReason::UnknownRequest);
    assert_eq!(reason.error_code(), ErrorCode::UnknownRequest);
    // An id that already ended.
    resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    let reason =
        progress_rejection(c.handle_progress(BRIDGE, &progress(id, "lock-1", Stage::Written), t0));
    assert_eq!(reason, RejectReason::UnknownRequest);
    assert_eq!(c.stats().progress_rejected, 2);
}

#[test]
fn progress_from_another_connection_or_for_another_device_is_forbidden_and_changes_nothing() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let reason = progress_rejection(c.handle_progress(
        OTHER_BRIDGE,
        &progress(id, "lock-1", Stage::Received),
        t0,
    ));
    assert_eq!(reason, RejectReason::WrongConnection);
    assert_eq!(reason.error_code(), ErrorCode::Forbidden);
    let reason =
        progress_rejection(c.handle_progress(BRIDGE, &progress(id, "lock-2", Stage::Received), t0));
    assert_eq!(reason, RejectReason::WrongDevice);
    assert_eq!(reason.error_code(), ErrorCode::Forbidden);
    assert!(c.stages(&id).is_none(), "nothing recorded");
    assert_eq!(c.len(), 1, "the command still waits");
    let done = resolved(c.handle_response(BRIDGE, reply(id, "lock-1", &[1]), t0));
    assert_eq!(StageTimes::hops(done.stages.as_deref(), t0), Hops::SENT);
}

#[test]
fn a_stage_not_later_than_one_reported_is_ignored() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    let ms = Duration::from_millis;
    let report = |c: &mut Correlator<&str>, stage, at| {
        c.handle_progress(BRIDGE, &progress(id, "lock-1", stage), t0 + ms(at))
    };
    assert_eq!(
        report(&mut c, Stage::Connected, 10),
        Ok(ProgressAccepted::Recorded)
    );
    assert_eq!(
        report(&mut c, Stage::Received, 11),
        Ok(ProgressAccepted::Ignored)
    );
    assert_eq!(
        report(&mut c, Stage::Connected, 12),
        Ok(ProgressAccepted::Ignored)
    );
    // `sent` is the server's own stage; the decoder refuses it, the correlator ignores it.
    assert_eq!(
        report(&mut c, Stage::Sent, 13),
        Ok(ProgressAccepted::Ignored)
    );
    let times = c.stages(&id).copied().unwrap();
    assert_eq!(times.last(), Some(Stage::Connected));
    assert_eq!(times.at(Stage::Connected), Some(t0 + ms(10)));
    assert_eq!(times.at(Stage::Received), None);
    assert_eq!(c.stats().progress_ignored, 3);
}

#[test]
fn progress_never_resolves_a_command_nor_moves_its_deadline() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    for stage in [Stage::Received, Stage::Connected, Stage::Written] {
        assert_eq!(
            c.handle_progress(BRIDGE, &progress(id, "lock-1", stage), t0 + TIMEOUT / 2),
            Ok(ProgressAccepted::Recorded)
        );
    }
    assert_eq!(c.len(), 1);
    assert_eq!(c.poll_timeout(), Some(t0 + TIMEOUT));
    let mut out = Vec::new();
    c.handle_timeout(t0 + TIMEOUT, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].result, Err(CommandError::Timeout));
    let hops = StageTimes::hops(out[0].stages.as_deref(), t0);
    assert_eq!(
        hops.stage,
        Some(Stage::Written),
        "the timeout says where it stopped"
    );
    // After the deadline, progress is too late: unknown, like a late answer.
    let (mut c, id) = one_sent(t0);
    let reason = progress_rejection(c.handle_progress(
        BRIDGE,
        &progress(id, "lock-1", Stage::Received),
        t0 + TIMEOUT,
    ));
    assert_eq!(reason, RejectReason::Late);
    assert_eq!(reason.error_code(), ErrorCode::UnknownRequest);
}

#[test]
fn a_lost_bridge_reports_the_stage_it_reached() {
    let t0 = Instant::now();
    let (mut c, id) = one_sent(t0);
    c.handle_progress(BRIDGE, &progress(id, "lock-1", Stage::Connected), t0)
        .unwrap();
    let mut out = Vec::new();
    c.connection_lost(BRIDGE, &mut out);
    assert_eq!(out[0].result, Err(CommandError::BridgeLost));
    assert_eq!(
        out[0].stages.as_deref().and_then(StageTimes::last),
        Some(Stage::Connected)
    );
}

#[test]
fn progress_while_routing_is_kept_only_if_the_write_went_through_its_connection() {
    let t0 = Instant::now();
    let mut c = Correlator::new(0xabcd);
    let id = c
        .register(device("lock-1"), t0 + TIMEOUT, "caller")
        .unwrap();
    assert_eq!(
        c.handle_progress(OTHER_BRIDGE, &progress(id, "lock-1", Stage::Received), t0),
        Ok(ProgressAccepted::Recorded)
    );
    // A second report from yet another connection while routing: forbidden.
    let reason = progress_rejection(c.handle_progress(
        BRIDGE,
        &progress(id, "lock-1", Stage::Connected),
        t0,
    ));
    assert_eq!(reason, RejectReason::WrongConnection);
    assert!(matches!(c.mark_sent(&id, BRIDGE), MarkSent::Waiting));
    assert!(
        c.stages(&id).is_none(),
        "the other connection's report is dropped"
    );

    let id = c
        .register(device("lock-1"), t0 + TIMEOUT, "caller")
        .unwrap();
    c.handle_progress(BRIDGE, &progress(id, "lock-1", Stage::Received), t0)
        .unwrap();
    assert!(matches!(c.mark_sent(&id, BRIDGE), MarkSent::Waiting));
    assert_eq!(
        c.stages(&id).and_then(StageTimes::last),
        Some(Stage::Received)
    );
}

//! Two `bridge-server` processes sharing one queue (PostgreSQL, then Redis): one delivery of a
//! device at a time across both, in queue order, nothing lost, and the survivor of a
//! kill -9 delivers the rest, the cut-off command first.

#![cfg(any(feature = "postgres", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::process::{Process, service_url};
use crate::support::*;

/// Commands queued while the device is offline.
const COMMANDS: usize = 200;
/// The command whose delivery is cut off by killing the node that carries it.
const CUT_AT: usize = 120;
/// The commands' `timeoutMs`: the cut-off command's lease lapses after it plus the grace.
const TIMEOUT_MS: u64 = 2_000;

fn payload_of(i: usize) -> String {
    format!("{i:04x}")
}

/// What both phones saw, as one timeline.
#[derive(Default)]
struct Timeline {
    /// `ble_write`s out and not yet answered, across both phones.
    outstanding: usize,
    /// The most that were ever out at once.
    most_outstanding: usize,
    /// Payloads in the order the writes arrived, with the phone that got each.
    writes: Vec<(usize, String)>,
    /// The phone told to hold the write of this payload instead of answering it.
    hold: Option<String>,
    /// Which phone held it.
    held_by: Option<usize>,
}

/// A simulated phone: answers every `ble_write` (after a short pause, so that a second write
/// would have the time to overlap) unless the timeline says to hold it. Right after each
/// answer it nudges the other phone, which reports its BLE link down and up again
/// (`ble_status` `connected: false`, then `true`): the other node then starts a delivery
/// pass at the moment this one
/// goes on to the next command, so the two nodes race for every lease.
fn phone(
    index: usize,
    mut bridge: Bridge,
    device: String,
    timeline: Arc<Mutex<Timeline>>,
    mut nudged: mpsc::UnboundedReceiver<()>,
    nudge_other: mpsc::UnboundedSender<()>,
) -> mpsc::Receiver<usize> {
    let (held_tx, held_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                message = bridge.ws.socket.next() => message,
                Some(()) = nudged.recv() => {
                    // A link that drops and comes back: a repeated `true` alone would be
                    // no news, and start no pass.
                    bridge.status(&device, false, None).await;
                    bridge.status(&device, true, None).await;
                    continue;
                }
            };
            let Some(Ok(message)) = message else {
                return; // its server is gone
            };
            let Message::Text(text) = message else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] != "ble_write" {
                continue;
            }
            let payload = frame["payload"].as_str().unwrap().to_owned();
            let hold = {
                let mut t = timeline.lock();
                t.outstanding += 1;
                t.most_outstanding = t.most_outstanding.max(t.outstanding);
                t.writes.push((index, payload.clone()));
                let hold = t.hold.as_deref() == Some(payload.as_str()) && t.held_by.is_none();
                if hold {
                    t.held_by = Some(index);
                }
                hold
            };
            if hold {
                let _ = held_tx.send(index).await;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            timeline.lock().outstanding -= 1;
            bridge.answer(&frame, "80").await;
            let _ = nudge_other.send(());
        }
    });
    held_rx
}

async fn two_nodes_share_one_queue(queue: &str) {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let device = format!("lock-{}", uuid::Uuid::new_v4().simple());
    // A fast retry tick, room for every command, and rate limits the nudges never reach.
    let fast_retry = [
        "--retry-interval-secs",
        "1",
        "--max-queued-per-device",
        "1000",
        "--rate-per-second",
        "100000",
        "--rate-burst",
        "100000",
    ];
    let a = Process::start_with_queue(
        dir_a.path(),
        queue,
        &[&fast_retry[..], &["--node-id", "node-a"]].concat(),
    )
    .await;
    let b = Process::start_with_queue(
        dir_b.path(),
        queue,
        &[&fast_retry[..], &["--node-id", "node-b"]].concat(),
    )
    .await;

    // Queued while the device is offline, half through each node.
    let mut ids = Vec::new();
    for i in 0..COMMANDS {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, body) = node
            .client
            .command(
                &device,
                json!({"payload":payload_of(i),"ifOffline":"queue","commandType":format!("c{i}"),
                       "timeoutMs":TIMEOUT_MS}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["commandId"].as_str().unwrap().to_owned());
    }

    // Both phones arrive; one of them will be told to hold the write of command CUT_AT.
    let timeline = Arc::new(Mutex::new(Timeline {
        hold: Some(payload_of(CUT_AT)),
        ..Timeline::default()
    }));
    let (nudge_a, nudged_a) = mpsc::unbounded_channel();
    let (nudge_b, nudged_b) = mpsc::unbounded_channel();
    let (mut held_a, mut held_b) = (
        phone(
            0,
            Bridge::connect(&a.client, "phone-a", &[device.as_str()]).await,
            device.clone(),
            Arc::clone(&timeline),
            nudged_a,
            nudge_b,
        ),
        phone(
            1,
            Bridge::connect(&b.client, "phone-b", &[device.as_str()]).await,
            device.clone(),
            Arc::clone(&timeline),
            nudged_b,
            nudge_a,
        ),
    );

    // Every command before the cut is delivered once, in order, never two at a time.
    let held_by = tokio::select! {
        Some(i) = held_a.recv() => i,
        Some(i) = held_b.recv() => i,
        () = tokio::time::sleep(PATIENCE * 3) => panic!("command {CUT_AT} never went out"),
    };
    {
        let t = timeline.lock();
        let payloads: Vec<&str> = t.writes.iter().map(|(_, p)| p.as_str()).collect();
        let expected: Vec<String> = (0..=CUT_AT).map(payload_of).collect();
        assert_eq!(payloads, expected, "delivered exactly in queue order");
        assert_eq!(t.most_outstanding, 1, "never two writes out at once");
        let by_a = t.writes.iter().filter(|(phone, _)| *phone == 0).count();
        let by_b = t.writes.len() - by_a;
        eprintln!("before the cut: {by_a} writes through node-a's phone, {by_b} through node-b's");
        assert!(by_a > 0 && by_b > 0, "both nodes raced for the leases");
    }
    let (survivor, victim) = if held_by == 0 { (b, a) } else { (a, b) };
    victim.kill().await;
    // The held write died with its node.
    timeline.lock().outstanding -= 1;

    // The survivor delivers the rest once the lease lapses: the cut-off command first.
    for id in &ids[CUT_AT..] {
        survivor.client.wait_command_status(id, "succeeded").await;
    }
    {
        let t = timeline.lock();
        let after: Vec<&str> = t.writes[CUT_AT + 1..]
            .iter()
            .map(|(phone, p)| {
                assert_ne!(*phone, held_by, "only the survivor's phone is left");
                p.as_str()
            })
            .collect();
        let expected: Vec<String> = (CUT_AT..COMMANDS).map(payload_of).collect();
        assert_eq!(
            after, expected,
            "the cut-off command first, then the rest in order"
        );
        assert_eq!(t.most_outstanding, 1, "never two writes out at once");
    }

    for (i, id) in ids.iter().enumerate() {
        let (_, view) = survivor.client.get(&format!("/v1/commands/{id}")).await;
        assert_eq!(view["status"], "succeeded", "{view}");
        let attempts = if i == CUT_AT { 2 } else { 1 };
        assert_eq!(view["attempts"], attempts, "command {i}: {view}");
    }
    let (_, open) = survivor
        .client
        .get(&format!("/v1/devices/{device}/commands"))
        .await;
    assert_eq!(open["commands"], json!([]), "nothing left behind");
    survivor.kill().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_queue_deliver_one_at_a_time_in_order_and_survive_kill_9() {
    two_nodes_share_one_queue(&service_url(
        "BRIDGE_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    ))
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_queue_deliver_one_at_a_time_in_order_and_survive_kill_9() {
    two_nodes_share_one_queue(&service_url(
        "BRIDGE_TEST_REDIS_URL",
        "redis://127.0.0.1:6379",
    ))
    .await;
}

//! The application's hooks: each fires once, in the documented order, off the hot path; a
//! panicking hook and a full hook queue leave the server untouched.

use std::sync::Arc;

use async_trait::async_trait;
use bridge_hub::{CloseReason, UserId};
use bridge_protocol::DeviceId;
use bridge_server::{BridgeConnection, CommandEnded, Hooks, ServerConfig};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use crate::support::{Bridge, PATIENCE, TestServer, user};

/// Every hook call as a line of text, sent to the test.
struct Recorder(mpsc::UnboundedSender<String>);

#[async_trait]
impl Hooks for Recorder {
    async fn user_connected(&self, user: &UserId) {
        let _ = self.0.send(format!("user_connected {user}"));
    }
    async fn user_disconnected(&self, user: &UserId) {
        let _ = self.0.send(format!("user_disconnected {user}"));
    }
    async fn device_online(&self, device: &DeviceId) {
        let _ = self.0.send(format!("device_online {device}"));
    }
    async fn device_offline(&self, device: &DeviceId) {
        let _ = self.0.send(format!("device_offline {device}"));
    }
    async fn bridge_connected(&self, bridge: &BridgeConnection) {
        let _ = self.0.send(format!("bridge_connected {}", bridge.user));
    }
    async fn bridge_disconnected(&self, bridge: &BridgeConnection, reason: CloseReason) {
        let _ = self
            .0
            .send(format!("bridge_disconnected {} {reason:?}", bridge.user));
    }
    async fn command_ended(&self, ended: &CommandEnded) {
        let _ = self
            .0
            .send(format!("command_ended {} {}", ended.device, ended.outcome));
    }
}

/// Receives hook lines until `last` (inclusive) and returns them all.
async fn until(events: &mut mpsc::UnboundedReceiver<String>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{last}` in time; saw {seen:?}"))
            .expect("the hook task is running");
        let done = line == last;
        seen.push(line);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn each_hook_fires_once_in_the_documented_order_under_churn() {
    let (sender, mut events) = mpsc::unbounded_channel();
    let server =
        TestServer::start_with(ServerConfig::default(), |b| b.hooks(Recorder(sender))).await;

    // A bridge naming a device at connect: the bridge first, then its device.
    let mut b1 = Bridge::connect(&server, "phone-1", &["lock-1"]).await;
    assert_eq!(
        until(&mut events, "device_online lock-1").await,
        ["bridge_connected phone-1", "device_online lock-1"]
    );

    // A second bridge (naming a device of its own, as a bridge must, then releasing it);
    // as a second holder of lock-1 it makes no presence event.
    let mut b2 = Bridge::connect(&server, "phone-2", &["lock-2"]).await;
    b2.ws
        .send(json!({"type":"release","deviceId":"lock-2"}))
        .await;
    b2.status("lock-1", true, None).await;
    b2.sync().await;
    // Release by the first holder: still online through the second.
    b1.ws
        .send(json!({"type":"release","deviceId":"lock-1"}))
        .await;
    b1.sync().await;
    // The second releases: offline. Then claims again: online.
    b2.ws
        .send(json!({"type":"release","deviceId":"lock-1"}))
        .await;
    b2.sync().await;
    b2.status("lock-1", true, None).await;
    b2.sync().await;
    assert_eq!(
        until(&mut events, "device_online lock-1").await,
        [
            "bridge_connected phone-2",
            "device_online lock-2",
            "device_offline lock-2",
            "device_offline lock-1",
            "device_online lock-1"
        ]
    );

    // A command through HTTP: one `command_ended` with its outcome.
    let command = server.command("lock-1", json!({"payload":"01"}));
    let answer = async {
        let write = b2.next_write().await;
        b2.answer(&write, "01").await;
    };
    let ((status, _), ()) = tokio::join!(command, answer);
    assert_eq!(status, 200);
    // One for a device nobody holds.
    let (status, _) = server.command("lock-9", json!({"payload":"01"})).await;
    assert_eq!(status, 503);
    assert_eq!(
        until(&mut events, "command_ended lock-9 offline").await,
        [
            "command_ended lock-1 succeeded",
            "command_ended lock-9 offline"
        ]
    );

    // Two connections of one user: one connected, one disconnected.
    let u1 = user(&server, "alice").await;
    let u2 = user(&server, "alice").await;
    u1.close().await;
    u2.close().await;
    assert_eq!(
        until(&mut events, "user_disconnected alice").await,
        ["user_connected alice", "user_disconnected alice"]
    );

    // The first bridge leaves holding nothing; the second leaves holding the device: its
    // device goes offline before it is reported gone.
    b1.ws.close().await;
    assert_eq!(
        until(&mut events, "bridge_disconnected phone-1 ClientClosed").await,
        ["bridge_disconnected phone-1 ClientClosed"]
    );
    b2.ws.close().await;
    assert_eq!(
        until(&mut events, "bridge_disconnected phone-2 ClientClosed").await,
        [
            "device_offline lock-1",
            "bridge_disconnected phone-2 ClientClosed"
        ]
    );
    // Nothing more came.
    server.stop().await;
    if let Ok(line) = events.try_recv() {
        panic!("an unexpected hook call: {line}");
    }
}

/// Panics on every `device_online`; records the rest.
struct Panicky(mpsc::UnboundedSender<String>);

#[async_trait]
impl Hooks for Panicky {
    async fn device_online(&self, _device: &DeviceId) {
        panic!("a hook that panics");
    }
    async fn device_offline(&self, device: &DeviceId) {
        let _ = self.0.send(format!("device_offline {device}"));
    }
}

#[tokio::test]
async fn a_panicking_hook_is_counted_and_the_server_and_the_next_hooks_go_on() {
    let (sender, mut events) = mpsc::unbounded_channel();
    let server =
        TestServer::start_with(ServerConfig::default(), |b| b.hooks(Panicky(sender))).await;
    let bridge = Bridge::connect(&server, "phone-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    bridge.ws.close().await;
    assert_eq!(
        until(&mut events, "device_offline lock-1").await,
        ["device_offline lock-1"]
    );
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"bridge_task_panics_total{task="hook"} 1"#),
        "{metrics}"
    );
    // The server still serves.
    let _again = Bridge::connect(&server, "phone-1", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    server.stop().await;
}

/// Blocks in its first hook until told to go on.
struct Stuck {
    go_on: Arc<Notify>,
    seen: mpsc::UnboundedSender<String>,
}

#[async_trait]
impl Hooks for Stuck {
    async fn user_connected(&self, user: &UserId) {
        let _ = self.seen.send(format!("user_connected {user}"));
        self.go_on.notified().await;
    }
}

#[tokio::test]
async fn a_full_hook_queue_drops_and_counts_events_and_never_blocks_the_server() {
    let go_on = Arc::new(Notify::new());
    let (seen, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start_with(ServerConfig::default(), |b| {
        b.hook_queue_capacity(1).hooks(Stuck {
            go_on: Arc::clone(&go_on),
            seen,
        })
    })
    .await;
    // The first event is taken by the hook task, which then blocks; the next one waits in
    // the queue, which is then full.
    let first = user(&server, "u0").await;
    assert_eq!(until(&mut events, "user_connected u0").await.len(), 1);
    first.close().await;
    // Four more users come and go (eight events) while the hook is stuck: all dropped;
    // connecting is not slowed down.
    for n in 1..=4 {
        let mut ws = user(&server, &format!("u{n}")).await;
        ws.send(json!({"type":"ping"})).await;
        assert_eq!(ws.recv().await["type"], "pong");
        ws.close().await;
    }
    let metrics = crate::support::eventually(|| async {
        let (_, metrics) = server.get_text("/metrics").await;
        metrics
            .contains("bridge_hook_events_dropped_total 8")
            .then_some(metrics)
    })
    .await;
    assert!(metrics.contains("bridge_hook_events_dropped_total 8"));
    // Let the hook go, and a new event is delivered again.
    go_on.notify_one();
    let last = user(&server, "u5").await;
    assert_eq!(
        until(&mut events, "user_connected u5").await,
        ["user_connected u5"]
    );
    go_on.notify_one();
    last.close().await;
    server.stop().await;
}

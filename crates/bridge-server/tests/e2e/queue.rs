//! PROTOCOL.md 4.2: the queued-command lifecycle, delivered by the server.

use std::sync::Arc;
use std::time::Duration;

use bridge_queue::{ManualClock, MemoryStore, StoreConfig};
use bridge_server::{DeliveryConfig, ServerConfig};
use serde_json::{Value, json};

use crate::support::*;

async fn queue(server: &TestServer, device: &str, kind: &str, payload: &str) -> String {
    let (status, body) = server
        .command(
            device,
            json!({"payload":payload,"ifOffline":"queue","commandType":kind}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    body["commandId"].as_str().unwrap().to_owned()
}

async fn queue_for_confirmation(server: &TestServer, device: &str, kind: &str) -> String {
    let (status, body) = server
        .command(
            device,
            json!({"payload":"0c","requiresConfirmation":true,"commandType":kind}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "awaiting_confirmation");
    body["commandId"].as_str().unwrap().to_owned()
}

/// Sends a direct command through `bridge` and answers it: the first write the bridge sees
/// must be this one, which proves no queued command was written to it before.
async fn direct_command_is_the_first_write(server: &TestServer, bridge: &mut Bridge) {
    let call = server.command("lock-1", json!({"payload":"d1"}));
    let answer = async {
        let write = assert_first_write(bridge, "d1").await;
        bridge.answer(&write, "01").await;
    };
    let ((status, _), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_are_delivered_in_order_one_at_a_time_when_the_device_comes_online() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let first = queue(&server, "lock-1", "unlock", "01").await;
    let second = queue(&server, "lock-1", "status", "03").await;
    let (_, list) = server.get("/v1/devices/lock-1/commands").await;
    let ids: Vec<&Value> = list["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["commandId"])
        .collect();
    assert_eq!(ids, [&json!(first), &json!(second)]);
    assert_eq!(list["commands"][0]["status"], "pending");
    assert_eq!(list["commands"][0]["attempts"], 0);
    assert_eq!(list["commands"][0]["result"], Value::Null);

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let write = assert_first_write(&mut bridge, "01").await;
    // One at a time: nothing else is written until this one is answered.
    bridge.sync().await;
    let view = server.wait_command_status(&first, "delivering").await;
    assert_eq!(view["attempts"], 1);
    bridge.answer(&write, "81").await;
    let write = assert_first_write(&mut bridge, "03").await;
    bridge.fail(&write, "gatt_write_failed").await;

    let view = server.wait_command_status(&first, "succeeded").await;
    assert_eq!(view["result"], json!({"payload":"81"}));
    let view = server.wait_command_status(&second, "failed").await;
    assert_eq!(view["result"], json!({"error":"gatt_write_failed"}));
    assert_eq!(view["attempts"], 1);

    let mut results = Vec::new();
    while results.len() < 2 {
        let frame = alice.recv().await;
        if frame["type"] == "command_result" {
            results.push(frame);
        }
    }
    assert_eq!(
        results,
        [
            json!({"type":"command_result","commandId":first,"deviceId":"lock-1","status":"succeeded","payload":"81","stage":"sent"}),
            json!({"type":"command_result","commandId":second,"deviceId":"lock-1","status":"failed","error":"gatt_write_failed","stage":"sent"}),
        ]
    );
    let (_, list) = server.get("/v1/devices/lock-1/commands").await;
    assert_eq!(list, json!({"commands":[]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_online_device_is_sent_at_once_whatever_if_offline_says() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let call = server.command(
        "lock-1",
        json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}),
    );
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "81").await;
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "succeeded");
    let (_, view) = server.get("/v1/devices/lock-1").await;
    assert_eq!(view["pendingCommands"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_the_same_command_type_again_updates_it_in_place() {
    let server = TestServer::start().await;
    let unlock = queue(&server, "lock-1", "unlock", "01").await;
    let status = queue(&server, "lock-1", "status", "03").await;
    let again = queue(&server, "lock-1", "unlock", "02").await;
    assert_eq!(unlock, again, "same commandId");
    let (_, list) = server.get("/v1/devices/lock-1/commands").await;
    assert_eq!(list["commands"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["commands"][0]["commandId"],
        unlock.as_str(),
        "same place"
    );

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let write = assert_first_write(&mut bridge, "02").await;
    bridge.answer(&write, "82").await;
    let write = assert_first_write(&mut bridge, "03").await;
    bridge.answer(&write, "83").await;
    server.wait_command_status(&status, "succeeded").await;
}

/// PROTOCOL.md 4.2 (1.1): dedup updates in place only a command queued by the same party.
/// A user's `unlock` over WebSocket does not overwrite the backend's `unlock` awaiting
/// confirmation (its payload kept, its confirmation not skipped): it queues after it as the
/// user's own command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_command_does_not_overwrite_the_backends_queued_command_of_the_same_type() {
    let server = TestServer::start().await;
    let backends = queue_for_confirmation(&server, "lock-1", "unlock").await;
    let mut alice = user(&server, "alice").await;
    alice
        .send(
            json!({"type":"command","requestId":"u-1","deviceId":"lock-1","payload":"99",
                     "ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    let result = alice.recv_type("command_result").await;
    assert_eq!(result["requestId"], "u-1", "{result}");
    assert_eq!(result["status"], "queued", "{result}");
    let users = result["commandId"].as_str().unwrap().to_owned();
    assert_ne!(
        users, backends,
        "the user's command is a command of its own"
    );

    let (_, view) = server.get(&format!("/v1/commands/{backends}")).await;
    assert_eq!(view["status"], "awaiting_confirmation", "{view}");
    let store = server.store();
    let stored = store
        .get(&backends.as_str().try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(
        stored.payload.to_string(),
        "0c",
        "the backend's payload is kept"
    );
    let (_, list) = server.get("/v1/devices/lock-1/commands").await;
    let ids: Vec<&str> = list["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["commandId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![backends.as_str(), users.as_str()]);
    let (_, view) = server.get(&format!("/v1/commands/{users}")).await;
    assert_eq!(view["status"], "pending", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_needing_confirmation_is_delivered_only_after_confirm() {
    let server = TestServer::start().await;
    let id = queue_for_confirmation(&server, "lock-1", "unlock").await;
    let (_, view) = server.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(view["status"], "awaiting_confirmation");
    assert_eq!(view["commandType"], "unlock");
    assert_eq!(view["deviceId"], "lock-1");
    assert!(view["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(view["expiresAt"].as_str().unwrap().ends_with('Z'));

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    bridge.status("lock-1", true, None).await;
    direct_command_is_the_first_write(&server, &mut bridge).await;

    let (status, view) = server
        .post(&format!("/v1/commands/{id}/confirm"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["commandId"], id.as_str());
    // Confirmed for an online device: delivered at once.
    let write = assert_first_write(&mut bridge, "0c").await;
    bridge.answer(&write, "01").await;
    server.wait_command_status(&id, "succeeded").await;

    let (status, body) = server
        .post(&format!("/v1/commands/{id}/confirm"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_command_is_announced_and_never_delivered() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let id = queue(&server, "lock-1", "unlock", "01").await;
    let (status, view) = server
        .post(&format!("/v1/commands/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "cancelled");
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"cancelled"})
    );
    let (status, body) = server
        .post(&format!("/v1/commands/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    direct_command_is_the_first_write(&server, &mut bridge).await;
    let (_, view) = server.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["attempts"], 0);

    // Once it is being delivered, a command can no longer be cancelled.
    let delivering = queue(&server, "lock-2", "lock", "01").await;
    let mut bridge = Bridge::connect(&server, "phone-2", &["lock-2"]).await;
    let write = bridge.next_write().await;
    server.wait_command_status(&delivering, "delivering").await;
    let (status, body) = server
        .post(&format!("/v1/commands/{delivering}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");
    bridge.answer(&write, "81").await;
    server.wait_command_status(&delivering, "succeeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_404_not_found() {
    let server = TestServer::start().await;
    for (method, path) in [
        ("GET", "/v1/commands/0123456789abcdef0123456789abcdef"),
        (
            "POST",
            "/v1/commands/0123456789abcdef0123456789abcdef/confirm",
        ),
        (
            "POST",
            "/v1/commands/0123456789abcdef0123456789abcdef/cancel",
        ),
        ("GET", "/v1/commands/%20bad%20"),
    ] {
        let (status, body) = if method == "GET" {
            server.get(path).await
        } else {
            server.post(path, &json!({})).await
        };
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_command_is_announced_when_the_device_comes_online_and_not_delivered() {
    let clock = ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    ));
    let server = TestServer::start_with(ServerConfig::default(), |b| b.store(store)).await;
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","ttlSeconds":1}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["commandId"].as_str().unwrap().to_owned();
    clock.advance(Duration::from_secs(2));

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"expired"})
    );
    let (_, view) = server.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(view["status"], "expired");
    assert_eq!(view["attempts"], 0);
    direct_command_is_the_first_write(&server, &mut bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_expired_while_no_server_ran_is_announced_when_the_device_comes_online() {
    let clock = ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    ));
    let first = TestServer::start_with(ServerConfig::default(), |b| b.store(store.clone())).await;
    let (status, body) = first
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","ttlSeconds":10}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["commandId"].as_str().unwrap().to_owned();
    first.stop().await;
    // The TTL passes with no server running; the next one has never heard of the command.
    clock.advance(Duration::from_secs(11));

    let second = TestServer::start_with(ServerConfig::default(), |b| b.store(store)).await;
    let mut alice = user(&second, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let mut bridge = Bridge::connect(&second, "phone", &["lock-1"]).await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"expired"})
    );
    let (_, view) = second.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(view["status"], "expired");
    assert_eq!(view["attempts"], 0);
    direct_command_is_the_first_write(&second, &mut bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_tick_announces_a_command_that_expired_while_no_server_ran() {
    let clock = ManualClock::starting_now();
    let store = Arc::new(MemoryStore::new(
        StoreConfig::default().with_clock(Arc::new(clock.clone())),
    ));
    let first = TestServer::start_with(ServerConfig::default(), |b| b.store(store.clone())).await;
    let (_, body) = first
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","ttlSeconds":10}),
        )
        .await;
    let id = body["commandId"].as_str().unwrap().to_owned();
    first.stop().await;
    clock.advance(Duration::from_secs(11));

    // The device stays offline: the sweep of a retry tick finds the expiry and announces it.
    let second = TestServer::start_with(ServerConfig::default(), |b| {
        b.store(store)
            .delivery(DeliveryConfig::default().retry_interval(Duration::from_secs(1)))
    })
    .await;
    let mut alice = user(&second, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"expired"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_a_lost_bridge_is_delivered_again_at_least_once() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let id = queue(&server, "lock-1", "unlock", "01").await;

    let mut first = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    let lost = first.next_write().await;
    server.wait_command_status(&id, "delivering").await;
    first.ws.close().await;
    let view = server.wait_command_status(&id, "pending").await;
    assert_eq!(view["attempts"], 1);

    let mut second = Bridge::connect(&server, "phone-b", &["lock-1"]).await;
    let write = second.next_write().await;
    assert_eq!(write["payload"], "01");
    assert_ne!(
        write["requestId"], lost["requestId"],
        "a new request id per attempt"
    );
    second.answer(&write, "81").await;
    let view = server.wait_command_status(&id, "succeeded").await;
    assert_eq!(view["attempts"], 2);
    let result = alice.recv_type("command_result").await;
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["commandId"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bridge_hands_the_delivery_to_another_holder_at_once() {
    let server = TestServer::start().await;
    let id = queue(&server, "lock-1", "unlock", "01").await;
    let mut first = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    first.next_write().await;
    let mut second = Bridge::connect(&server, "phone-b", &["lock-1"]).await;
    server.wait_online("lock-1", 2).await;
    first.ws.close().await;
    let write = second.next_write().await;
    second.answer(&write, "81").await;
    let view = server.wait_command_status(&id, "succeeded").await;
    assert_eq!(view["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_delivery_is_retried_when_a_holder_reports_a_live_link() {
    let server = TestServer::start().await;
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","timeoutMs":200}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["commandId"].as_str().unwrap().to_owned();
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    bridge.next_write().await;
    let view = server.wait_command_status(&id, "pending").await;
    assert_eq!(view["attempts"], 1);

    bridge.status("lock-1", true, Some(-50)).await;
    let write = bridge.next_write().await;
    bridge.answer(&write, "81").await;
    let view = server.wait_command_status(&id, "succeeded").await;
    assert_eq!(view["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_delivery_is_retried_after_the_retry_interval_and_fails_after_the_last_attempt()
{
    let store = Arc::new(MemoryStore::new(StoreConfig {
        max_attempts: 2,
        ..StoreConfig::default()
    }));
    let server = TestServer::start_with(ServerConfig::default(), |b| {
        b.store(store)
            .delivery(DeliveryConfig::default().retry_interval(Duration::from_millis(300)))
    })
    .await;
    let mut alice = user(&server, "alice").await;
    subscribe(&mut alice, "lock-1").await;
    let (_, body) = server
        .command(
            "lock-1",
            json!({"payload":"01","ifOffline":"queue","commandType":"unlock","timeoutMs":100}),
        )
        .await;
    let id = body["commandId"].as_str().unwrap().to_owned();
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let first = bridge.next_write().await;
    let second = bridge.next_write().await;
    assert_eq!(first["payload"], second["payload"]);
    let view = server.wait_command_status(&id, "failed").await;
    assert_eq!(view["attempts"], 2);
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","commandId":id,"deviceId":"lock-1","status":"failed","stage":"sent"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_puts_a_delivery_in_progress_back_to_pending() {
    let server = TestServer::start().await;
    let store = server.store();
    let id = queue(&server, "lock-1", "unlock", "01").await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    bridge.next_write().await;
    server.wait_command_status(&id, "delivering").await;
    server.stop().await;
    let command = store
        .get(&bridge_protocol::CommandId::new(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(command.status.as_str(), "pending");
    assert_eq!(command.attempts, 1);
}

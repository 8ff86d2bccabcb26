//! PROTOCOL.md 2 and 3 over real WebSocket connections.

use bridge_server::ServerConfig;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_frames_are_answered_with_pong() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    alice.send(json!({"type":"ping"})).await;
    assert_eq!(alice.recv().await, json!({"type":"pong"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_in_the_same_write_as_the_upgrade_request_is_not_lost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The handshake and a masked text frame (`{"type":"ping"}`) in one write: the server
    // reads both at once, before it knows the connection will be a WebSocket.
    let mut sent = b"GET /ws?userId=alice HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let payload = br#"{"type":"ping"}"#;
    let mask = [1u8, 2, 3, 4];
    sent.extend_from_slice(&[0x81, 0x80 | u8::try_from(payload.len()).unwrap()]);
    sent.extend_from_slice(&mask);
    sent.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&sent).await.unwrap();
    let mut received = Vec::new();
    let pong = br#"{"type":"pong"}"#;
    let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !received.windows(pong.len()).any(|w| w == pong) {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(found.is_ok(), "{}", String::from_utf8_lossy(&received));
    assert!(received.starts_with(b"HTTP/1.1 101"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_row_of_3_5_is_answered_with_its_error_frame() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let mut alice = user(&server, "alice").await;
    let long_id = "r".repeat(65);

    let bridge_cases = [
        ("not json".to_owned(), "invalid_message", None),
        ("[1]".to_owned(), "invalid_message", None),
        (json!({"deviceId":"lock-1"}).to_string(), "invalid_message", None),
        (json!({"type":7}).to_string(), "invalid_message", None),
        (
            json!({"type":"ble_response","requestId":"r-1","deviceId":"lock-1"}).to_string(),
            "invalid_message",
            Some("r-1"),
        ),
        (
            json!({"type":"ble_response","requestId":"r-2","deviceId":"lock-1","payload":"01","error":"x"}).to_string(),
            "invalid_message",
            Some("r-2"),
        ),
        (
            json!({"type":"ble_response","requestId":long_id,"deviceId":"lock-1","payload":"01"}).to_string(),
            "invalid_message",
            None,
        ),
        (
            json!({"type":"ble_response","requestId":"r-3","deviceId":"lock-1","payload":"abc"}).to_string(),
            "invalid_payload",
            Some("r-3"),
        ),
        (
            json!({"type":"ble_response","requestId":"r-4","deviceId":"lock-1","payload":"01"}).to_string(),
            "unknown_request",
            Some("r-4"),
        ),
        (
            json!({"type":"subscribe","requestId":"r-5","deviceId":"lock-1"}).to_string(),
            "unknown_type",
            Some("r-5"),
        ),
    ];
    for (frame, code, request_id) in bridge_cases {
        bridge.ws.send_text(&frame).await;
        let error = bridge.ws.recv().await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["code"], code, "{frame} -> {error}");
        assert!(error["message"].is_string());
        match request_id {
            Some(id) => assert_eq!(error["requestId"], id, "{frame} -> {error}"),
            None => assert!(error.get("requestId").is_none(), "{frame} -> {error}"),
        }
    }
    bridge
        .ws
        .send_message(Message::Binary(vec![1, 2, 3].into()))
        .await;
    assert_eq!(bridge.ws.recv().await["code"], "invalid_message");

    let user_cases = [
        (
            json!({"type":"ble_response","requestId":"u-1","deviceId":"lock-1","payload":"01"})
                .to_string(),
            "unknown_type",
        ),
        (
            json!({"type":"command","requestId":"u-2","deviceId":"lock-1","payload":"0g"})
                .to_string(),
            "invalid_payload",
        ),
        (
            // A command frame carries the HTTP body's fields; refused as HTTP refuses them
            // (PROTOCOL.md 3.4).
            json!({"type":"command","requestId":"u-3","deviceId":"lock-1"}).to_string(),
            "invalid_request",
        ),
    ];
    for (frame, code) in user_cases {
        alice.send_text(&frame).await;
        let error = alice.recv().await;
        assert_eq!(error["code"], code, "{frame} -> {error}");
    }
    // An error frame never closes the connection by itself.
    bridge.sync().await;
    alice.send(json!({"type":"ping"})).await;
    assert_eq!(alice.recv().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_rate_limit_are_refused_with_rate_limited() {
    let mut config = ServerConfig::default();
    config.rate_per_second = 1;
    config.rate_burst = 3;
    let server = TestServer::start_with(config, |b| b).await;
    let mut alice = user(&server, "alice").await;
    for _ in 0..6 {
        alice.send(json!({"type":"ping"})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..6 {
        let frame = alice.recv().await;
        codes.push(frame.get("code").cloned().unwrap_or(frame["type"].clone()));
    }
    assert!(codes.contains(&json!("rate_limited")), "{codes:?}");
    assert!(codes.contains(&json!("pong")), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let mut config = ServerConfig::default();
    config.max_frame_bytes = 1024;
    let server = TestServer::start_with(config, |b| b).await;
    let mut alice = user(&server, "alice").await;
    let big = json!({"type":"ping","pad":"x".repeat(4096)}).to_string();
    // The server may close before the whole frame is written.
    let _ = alice.socket.send(Message::Text(big.into())).await;
    let close = alice.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_spoofed_from_another_connection_is_forbidden_and_the_real_one_still_counts() {
    let server = TestServer::start().await;
    let mut real = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    real.status("lock-1", true, Some(-30)).await;
    real.sync().await;
    let mut spoofer = Bridge::connect(&server, "phone-b", &["lock-2"]).await;
    server.wait_online("lock-2", 1).await;

    let call = server.command("lock-1", json!({"payload":"01","timeoutMs":60000}));
    let play = async {
        let write = real.next_write().await;
        // Another connection answers the request: refused, nothing resolved.
        spoofer.answer(&write, "ff").await;
        let error = spoofer.ws.recv().await;
        assert_eq!(error["code"], "forbidden");
        assert_eq!(error["requestId"], write["requestId"]);
        // The right connection names the wrong device: refused too.
        real.ws
            .send(json!({"type":"ble_response","requestId":write["requestId"],
                         "deviceId":"lock-2","payload":"ee"}))
            .await;
        let error = real.ws.recv().await;
        assert_eq!(error["code"], "forbidden");
        // The real answer still resolves the command.
        real.answer(&write, "01").await;
    };
    let ((status, body), ()) = tokio::join!(call, play);
    assert_eq!(status, 200);
    assert_eq!(body["payload"], "01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_best_holder_and_fall_back_when_it_leaves() {
    let server = TestServer::start().await;
    let mut weak = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    let mut strong = Bridge::connect(&server, "phone-b", &["lock-1"]).await;
    let mut unlinked = Bridge::connect(&server, "phone-c", &["lock-1"]).await;
    weak.status("lock-1", true, Some(-90)).await;
    strong.status("lock-1", true, Some(-40)).await;
    unlinked.status("lock-1", false, Some(-10)).await;
    weak.sync().await;
    strong.sync().await;
    unlinked.sync().await;
    server.wait_online("lock-1", 3).await;

    let call = server.command("lock-1", json!({"payload":"01"}));
    let answer = async {
        let write = strong.next_write().await;
        strong.answer(&write, "0b").await;
    };
    let ((_, body), ()) = tokio::join!(call, answer);
    assert_eq!(body["payload"], "0b");

    // The strongest holder leaves: the next command goes through the next best one.
    strong.ws.close().await;
    server.wait_online("lock-1", 2).await;
    let call = server.command("lock-1", json!({"payload":"02"}));
    let answer = async {
        let write = weak.next_write().await;
        weak.answer(&write, "0a").await;
    };
    let ((_, body), ()) = tokio::join!(call, answer);
    assert_eq!(body["payload"], "0a");

    // A command pending through a holder that leaves fails at once; the device stays online.
    let call = server.command("lock-1", json!({"payload":"03","timeoutMs":60000}));
    let leave = async move {
        weak.next_write().await;
        weak.ws.close().await;
    };
    let ((status, body), ()) = tokio::join!(call, leave);
    assert_eq!(
        (status, body),
        (503, json!({"status":"bridge_lost","stage":"sent"}))
    );
    server.wait_online("lock-1", 1).await;
    let call = server.command("lock-1", json!({"payload":"04"}));
    let answer = async {
        let write = unlinked.next_write().await;
        unlinked.answer(&write, "0c").await;
    };
    let ((_, body), ()) = tokio::join!(call, answer);
    assert_eq!(body["payload"], "0c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_command_frame_gets_the_same_answers_as_http() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;

    alice
        .send(json!({"type":"command","requestId":"c-1","deviceId":"lock-1","payload":"01"}))
        .await;
    let write = bridge.next_write().await;
    bridge.answer(&write, "82").await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","requestId":"c-1","deviceId":"lock-1",
               "status":"succeeded","payload":"82","stage":"sent"})
    );

    alice
        .send(json!({"type":"command","requestId":"c-2","deviceId":"lock-1","payload":"01"}))
        .await;
    let write = bridge.next_write().await;
    bridge.fail(&write, "gatt_write_failed").await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","requestId":"c-2","deviceId":"lock-1",
               "status":"device_error","error":"gatt_write_failed","stage":"sent"})
    );

    alice
        .send(json!({"type":"command","requestId":"c-3","deviceId":"lock-9","payload":"01"}))
        .await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","requestId":"c-3","deviceId":"lock-9","status":"offline"})
    );

    alice
        .send(
            json!({"type":"command","requestId":"c-4","deviceId":"lock-9","payload":"01",
                     "ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    let queued = alice.recv_type("command_result").await;
    assert_eq!(queued["requestId"], "c-4");
    assert_eq!(queued["status"], "queued");
    assert!(queued["commandId"].is_string());

    alice
        .send(
            json!({"type":"command","requestId":"c-5","deviceId":"lock-9","payload":"01",
                     "requiresConfirmation":true,"commandType":"lock"}),
        )
        .await;
    let awaiting = alice.recv_type("command_result").await;
    assert_eq!(awaiting["status"], "awaiting_confirmation");

    alice
        .send(
            json!({"type":"command","requestId":"c-6","deviceId":"lock-1","payload":"01",
                     "deviceType":"toaster"}),
        )
        .await;
    let error = alice.recv_type("error").await;
    assert_eq!(error["code"], "unknown_device_type");
    assert_eq!(error["requestId"], "c-6");

    alice
        .send(json!({"type":"command","requestId":"c-7","deviceId":"lock-1","payload":"01","timeoutMs":60000}))
        .await;
    bridge.next_write().await;
    bridge.ws.close().await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","requestId":"c-7","deviceId":"lock-1","status":"bridge_lost","stage":"sent"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_command_timing_out_answers_timeout() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    alice
        .send(json!({"type":"command","requestId":"c-1","deviceId":"lock-1","payload":"01","timeoutMs":150}))
        .await;
    bridge.next_write().await;
    assert_eq!(
        alice.recv_type("command_result").await,
        json!({"type":"command_result","requestId":"c-1","deviceId":"lock-1","status":"timeout","stage":"sent"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_presence_and_link_changes() {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    let snapshot = subscribe(&mut alice, "lock-1").await;
    assert_eq!(
        snapshot,
        json!({"type":"device_status","deviceId":"lock-1","online":false,"bleConnected":null})
    );
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"device_status","deviceId":"lock-1","online":true,"bleConnected":null})
    );
    bridge.status("lock-1", true, None).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"device_status","deviceId":"lock-1","online":true,"bleConnected":true})
    );
    bridge.ws.close().await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"device_status","deviceId":"lock-1","online":false,"bleConnected":null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_connection_cannot_run_more_than_its_share_of_commands() {
    let server = TestServer::start_with(ServerConfig::default(), |b| {
        b.max_commands_per_connection(2)
    })
    .await;
    let mut alice = user(&server, "alice").await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    for id in ["c-1", "c-2"] {
        alice
            .send(json!({"type":"command","requestId":id,"deviceId":"lock-1","payload":"01","timeoutMs":60000}))
            .await;
        bridge.next_write().await;
    }
    alice
        .send(json!({"type":"command","requestId":"c-3","deviceId":"lock-1","payload":"01"}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["requestId"], "c-3");

    // Once they end, the connection may send more.
    bridge.ws.close().await;
    for _ in 0..2 {
        assert_eq!(
            alice.recv_type("command_result").await["status"],
            "bridge_lost"
        );
    }
    alice
        .send(json!({"type":"command","requestId":"c-4","deviceId":"lock-1","payload":"01"}))
        .await;
    assert_eq!(alice.recv_type("command_result").await["status"], "offline");
}

/// The routing order of PROTOCOL.md 2 ends on "fewest commands in flight per connection":
/// a command counts on its bridge exactly while it is in flight, and however it ends —
/// answered, a device error, a timeout — the bridge is first in line again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_counts_on_its_bridge_until_it_ends_however_it_ends() {
    let server = TestServer::start().await;
    // The upgrade's 101 comes before the hub registers the connection and its claims: the
    // older phone is synced (its read loop answered, so it is registered) before the newer
    // one connects, or the two claims could land in either order.
    let mut older = Bridge::connect(&server, "phone-a", &["lock-1"]).await;
    older.sync().await;
    let mut newer = Bridge::connect(&server, "phone-b", &["lock-1"]).await;
    for bridge in [&mut older, &mut newer] {
        bridge.status("lock-1", true, Some(-60)).await;
        bridge.sync().await;
    }
    server.wait_online("lock-1", 2).await;

    // Equal link and signal: the most recent claim goes first; while its command is in
    // flight, the next one goes to the other holder.
    let first = server.command("lock-1", json!({"payload":"01","timeoutMs":60000}));
    let second = async {
        let write = newer.next_write().await;
        let call = server.command("lock-1", json!({"payload":"02","timeoutMs":60000}));
        let answer = async {
            let other = older.next_write().await;
            older.answer(&other, "a2").await;
        };
        let ((_, body), ()) = tokio::join!(call, answer);
        assert_eq!(body["payload"], "a2");
        newer.answer(&write, "b1").await;
    };
    let ((_, body), ()) = tokio::join!(first, second);
    assert_eq!(body["payload"], "b1");

    // A device error, then a timeout: each time the newer holder is free again, so the next
    // command goes to it.
    let call = server.command("lock-1", json!({"payload":"03"}));
    let fail = async {
        let write = newer.next_write().await;
        newer.fail(&write, "gatt_error").await;
    };
    let ((_, body), ()) = tokio::join!(call, fail);
    assert_eq!(body["status"], "device_error");

    // Long enough for the write to leave on a loaded machine before the timeout fires.
    let call = server.command("lock-1", json!({"payload":"04","timeoutMs":1000}));
    let ignore = async {
        newer.next_write().await;
    };
    let ((_, body), ()) = tokio::join!(call, ignore);
    assert_eq!(body["status"], "timeout");

    let call = server.command("lock-1", json!({"payload":"05"}));
    let answer = async {
        let write = newer.next_write().await;
        newer.answer(&write, "b5").await;
    };
    let ((_, body), ()) = tokio::join!(call, answer);
    assert_eq!(
        body["payload"], "b5",
        "the timed-out command no longer counts"
    );
}

#[tokio::test]
async fn a_users_connection_over_its_cap_is_refused_with_429_before_the_upgrade() {
    let mut config = ServerConfig::default();
    config.max_connections_per_user = 2;
    let server = TestServer::start_with(config, |b| b).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut alice = user(&server, "alice").await;
        // Answered: the hub has registered it.
        alice.send(json!({"type":"ping"})).await;
        assert_eq!(alice.recv().await, json!({"type":"pong"}));
        open.push(alice);
    }
    let (status, body) = refused_upgrade(&server.ws_url("userId=alice"), None).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another user is not counted against alice.
    let mut bob = user(&server, "bob").await;
    bob.send(json!({"type":"ping"})).await;
    assert_eq!(bob.recv().await, json!({"type":"pong"}));
}

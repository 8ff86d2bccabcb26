//! Hostile and broken clients over real loopback WebSocket connections: bad input, oversize
//! frames, rate limits, slow consumers, keepalive, token expiry and shutdown.

mod support;

use std::time::Duration;

use bridge_hub::{CloseReason, Frame, HubEvent};
use bridge_protocol::{
    BridgeToServer, ErrorCode, Limits, ProtocolError, ServerToBridge, ServerToUser, UserToServer,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::{Setup, device};
use tokio_tungstenite::tungstenite::Message;

/// The error frame PROTOCOL.md 3.5 prescribes, as the protocol crate words it.
fn expected_for_bridge(text: &str) -> String {
    let error = BridgeToServer::decode(text, &Limits::default()).expect_err("a bad frame");
    ServerToBridge::Error(error.to_error_frame()).to_json()
}

fn expected_for_user(text: &str) -> String {
    let error = UserToServer::decode(text, &Limits::default()).expect_err("a bad frame");
    ServerToUser::Error(error.to_error_frame()).to_json()
}

#[tokio::test]
async fn every_bad_bridge_frame_gets_its_exact_error_frame_and_the_connection_stays_open() {
    let mut server = Setup::default().start().await;
    let mut bridge = server.bridge("phone", &["lock"]).await;
    let long_id = "r".repeat(65);
    let too_big = format!(
        r#"{{"type":"ble_response","requestId":"r-3","deviceId":"lock","payload":"{}"}}"#,
        "ab".repeat(513)
    );
    let rows: Vec<(String, ErrorCode)> = vec![
        ("not json".into(), ErrorCode::InvalidMessage),
        ("[1,2]".into(), ErrorCode::InvalidMessage),
        (r#"{"deviceId":"lock"}"#.into(), ErrorCode::InvalidMessage),
        (r#"{"type":7}"#.into(), ErrorCode::InvalidMessage),
        (r#"{"type":"ble_status","deviceId":"lock"}"#.into(), ErrorCode::InvalidMessage),
        (
            r#"{"type":"ble_status","deviceId":"lock","connected":"yes"}"#.into(),
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock"}"#.into(),
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock","payload":"01","error":"x"}"#
                .into(),
            ErrorCode::InvalidMessage,
        ),
        (
            format!(r#"{{"type":"ble_response","requestId":"{long_id}","deviceId":"lock","payload":"01"}}"#),
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"subscribe","requestId":"c-1","deviceId":"lock"}"#.into(),
            ErrorCode::UnknownType,
        ),
        (r#"{"type":"device_status"}"#.into(), ErrorCode::UnknownType),
        (
            r#"{"type":"ble_response","requestId":"r-2","deviceId":"lock","payload":"abc"}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (
            r#"{"type":"ble_response","requestId":"r-2","deviceId":"lock","payload":12}"#.into(),
            ErrorCode::InvalidPayload,
        ),
        (too_big, ErrorCode::InvalidPayload),
    ];
    for (text, code) in &rows {
        bridge.send(text).await;
        let answer = bridge.recv().await;
        assert_eq!(answer, expected_for_bridge(text), "answer to {text}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["code"], code.as_str(), "code for {text}");
    }
    // The requestId is echoed whenever one could be read.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&expected_for_bridge(&rows[11].0)).unwrap()["requestId"],
        "r-2"
    );

    // A binary frame.
    bridge.send_binary(b"\x01\x02").await;
    assert_eq!(
        bridge.recv().await,
        ServerToBridge::Error(ProtocolError::binary_frame().to_error_frame()).to_json()
    );

    // Claiming a device the connection may not bridge.
    let mut limited = server.connect("role=bridge&user=u&access=lock").await;
    limited
        .send(r#"{"type":"ble_status","deviceId":"safe","connected":true}"#)
        .await;
    assert_eq!(
        limited.recv_json().await,
        json!({"type":"error","code":"forbidden","message":"this connection may not bridge device `safe`"})
    );

    // Still open, still answering, still holding its device.
    assert!(bridge.sync().await.is_empty());
    assert!(limited.sync().await.is_empty());
    assert!(server.hub.device_presence(&device("lock")).online);
    let rejected = server
        .drain_events()
        .into_iter()
        .filter(|e| matches!(e, HubEvent::FrameRejected { .. }))
        .count();
    assert_eq!(rejected, rows.len() + 2);
}

#[tokio::test]
async fn every_bad_user_frame_gets_its_exact_error_frame_and_the_connection_stays_open() {
    let server = Setup::default().start().await;
    let mut user = server.connect("user=alice&access=lock").await;
    let rows: Vec<(&str, ErrorCode)> = vec![
        ("{", ErrorCode::InvalidMessage),
        (r#""a string""#, ErrorCode::InvalidMessage),
        (
            r#"{"type":"subscribe","deviceId":"lock"}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"subscribe","requestId":"c-1","deviceId":""}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"subscribe","requestId":"c-1","deviceId":5}"#,
            ErrorCode::InvalidMessage,
        ),
        (
            r#"{"type":"ble_status","deviceId":"lock","connected":true}"#,
            ErrorCode::UnknownType,
        ),
        (
            r#"{"type":"ble_response","requestId":"r-1","deviceId":"lock","payload":"01"}"#,
            ErrorCode::UnknownType,
        ),
        (
            r#"{"type":"nope","requestId":"c-9"}"#,
            ErrorCode::UnknownType,
        ),
        (
            r#"{"type":"command","requestId":"c-2","deviceId":"lock","payload":"zz"}"#,
            ErrorCode::InvalidPayload,
        ),
    ];
    for (text, code) in &rows {
        user.send(text).await;
        let answer = user.recv().await;
        assert_eq!(answer, expected_for_user(text), "answer to {text}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["code"], code.as_str(), "code for {text}");
    }
    // A command and a subscription for a device the user may not see: forbidden, with the
    // requestId.
    user.send(r#"{"type":"command","requestId":"c-3","deviceId":"safe","payload":"aa"}"#)
        .await;
    assert_eq!(
        user.recv_json().await,
        json!({"type":"error","code":"forbidden","message":"this connection may not command device `safe`","requestId":"c-3"})
    );
    user.send(r#"{"type":"subscribe","requestId":"c-4","deviceId":"safe"}"#)
        .await;
    assert_eq!(
        user.recv_json().await,
        json!({"type":"error","code":"forbidden","message":"this connection may not watch device `safe`","requestId":"c-4"})
    );
    user.send_binary(b"{}").await;
    assert_eq!(
        user.recv().await,
        ServerToUser::Error(ProtocolError::binary_frame().to_error_frame()).to_json()
    );
    assert!(user.sync().await.is_empty(), "the connection is still open");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_connection_with_1009() {
    let mut server = Setup::default().start().await;
    let mut bridge = server.bridge("phone", &["lock"]).await;
    let mut bystander = server.bridge("other-phone", &["door"]).await;
    // Exactly the limit is fine (and refused as JSON, which it is not).
    bridge.send(&"x".repeat(64 * 1024)).await;
    assert_eq!(bridge.recv_json().await["code"], "invalid_message");
    bridge.send(&"x".repeat(64 * 1024 + 1)).await;
    assert_eq!(bridge.expect_close().await, 1009);
    let reason = server
        .wait_for(|e| match e {
            HubEvent::ConnectionClosed { reason, .. } => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, CloseReason::FrameTooLarge);
    assert!(!server.hub.device_presence(&device("lock")).online);
    assert!(bystander.sync().await.is_empty());
}

#[tokio::test]
async fn the_hub_enforces_its_frame_limit_even_when_the_websocket_layer_does_not() {
    let server = Setup::default()
        .config(|c| c.max_frame_bytes = 1000)
        .plain_websocket()
        .start()
        .await;
    let mut user = server.user("alice").await;
    user.send_binary(&[0; 1001]).await;
    assert_eq!(user.expect_close().await, 1009);
}

#[tokio::test]
async fn a_connection_over_its_rate_gets_rate_limited_frames_then_is_closed_with_1008() {
    // No refill worth speaking of during the test: the burst is all it gets.
    let mut server = Setup::default()
        .config(|c| {
            c.rate_limit.burst = 5;
            c.rate_limit.per_second = 0.001;
            c.rate_limit.max_refused = 3;
        })
        .start()
        .await;
    let mut bridge = server.connect("role=bridge&user=u&device=lock").await;
    for _ in 0..9 {
        bridge
            .ws
            .feed(Message::text(r#"{"type":"ping"}"#))
            .await
            .unwrap();
    }
    bridge.ws.flush().await.unwrap();
    for _ in 0..5 {
        assert_eq!(bridge.recv_json().await, json!({"type":"pong"}));
    }
    for _ in 0..3 {
        assert_eq!(
            bridge.recv_json().await,
            json!({"type":"error","code":"rate_limited","message":"too many frames; this one was dropped"})
        );
    }
    assert_eq!(bridge.expect_close().await, 1008);
    let reason = server
        .wait_for(|e| match e {
            HubEvent::ConnectionClosed { reason, .. } => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, CloseReason::RateLimited);
}

#[tokio::test]
async fn a_rate_limited_frame_is_dropped_and_its_error_carries_its_request_id() {
    let server = Setup::default()
        .config(|c| {
            c.rate_limit.burst = 1;
            c.rate_limit.per_second = 0.001;
        })
        .start()
        .await;
    let mut user = server.connect("user=alice").await;
    user.send(r#"{"type":"subscribe","requestId":"s-1","deviceId":"lock"}"#)
        .await;
    user.send(r#"{"type":"subscribe","requestId":"s-2","deviceId":"door"}"#)
        .await;
    assert_eq!(
        user.recv_json().await,
        json!({"type":"ack","requestId":"s-1"})
    );
    assert_eq!(user.recv_json().await["type"], "device_status");
    assert_eq!(
        user.recv_json().await,
        json!({"type":"error","code":"rate_limited","message":"too many frames; this one was dropped","requestId":"s-2"})
    );
    let event = Frame::from_json_text(r#"{"type":"x","deviceId":"door"}"#);
    assert_eq!(
        server.hub.broadcast(&device("door"), &event),
        0,
        "the refused subscribe was not served"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_the_others_keep_receiving() {
    let mut server = Setup::default()
        .subscriptions(&["lock"])
        .config(|c| c.outbound_queue_frames = 8)
        .start()
        .await;
    let mut slow = server.connect_with_small_buffer("user=slow").await;
    let mut fast = server.user("fast").await;
    slow.sync().await;
    assert_eq!(fast.recv_json().await["type"], "device_status");
    let slow_connection = server
        .wait_for(|e| match e {
            HubEvent::ConnectionOpened {
                connection,
                user_id,
                ..
            } if user_id.as_str() == "slow" => Some(*connection),
            _ => None,
        })
        .await;

    // `slow` stops reading. Events of 16 KiB fill its socket buffers, then its queue.
    let data = "x".repeat(16 * 1024);
    let mut sent = 0;
    while server.hub.counts().slow_consumers_disconnected == 0 {
        assert!(sent < 5_000, "the slow consumer was never cut off");
        let event = Frame::from_json_text(format!(
            r#"{{"type":"big","deviceId":"lock","seq":{sent},"data":"{data}"}}"#
        ));
        server.hub.broadcast(&device("lock"), &event);
        // The fast one reads every event before the next is sent.
        let received = fast.recv_json().await;
        assert_eq!(received["seq"], sent);
        sent += 1;
    }
    let reason = server
        .wait_for(|e| match e {
            HubEvent::ConnectionClosed {
                connection, reason, ..
            } if *connection == slow_connection => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, CloseReason::SlowConsumer);
    let after = Frame::from_json_text(r#"{"type":"after","deviceId":"lock"}"#);
    assert_eq!(server.hub.broadcast(&device("lock"), &after), 1);
    assert_eq!(fast.recv().await, after.as_str());
    assert_eq!(server.hub.counts().user_connections, 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_answers_pings_is_closed_after_the_pong_timeout() {
    let mut server = Setup::default().start().await;
    let mut silent = server.connect("role=bridge&user=u&device=lock").await;
    let opened_at = server
        .wait_for_within(Duration::from_mins(10), |e| {
            matches!(e, HubEvent::ConnectionOpened { .. }).then(tokio::time::Instant::now)
        })
        .await;
    // The client reads nothing, so it answers no ping. Pings go out at 20 s and 40 s.
    tokio::time::sleep_until(opened_at + Duration::from_secs(44)).await;
    assert_eq!(server.hub.counts().bridge_connections, 1, "alive at 44 s");
    let (reason, closed_at) = server
        .wait_for_within(Duration::from_mins(10), |e| match e {
            HubEvent::ConnectionClosed { reason, .. } => {
                Some((*reason, tokio::time::Instant::now()))
            }
            _ => None,
        })
        .await;
    assert_eq!(reason, CloseReason::KeepaliveTimeout);
    let decided = closed_at - opened_at;
    // 45 s, plus at most the close timeout waiting for a close handshake it never answers.
    assert!(
        decided >= Duration::from_secs(45) && decided <= Duration::from_secs(48),
        "closed after {decided:?}"
    );
    // The client finds the pings (which it answers too late) and the server's close.
    let mut seen_ping = false;
    while let Some(Ok(message)) = silent.ws.next().await {
        seen_ping |= matches!(message, Message::Ping(_));
    }
    assert!(seen_ping);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_answers_pings_stays_open() {
    let mut server = Setup::default().start().await;
    let mut client = server.connect("role=bridge&user=u&device=lock").await;
    // Reading makes the WebSocket client answer pings.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = client.ws.next().await {} });
    tokio::time::sleep(Duration::from_mins(5)).await;
    assert_eq!(server.hub.counts().bridge_connections, 1);
    assert!(
        !server
            .drain_events()
            .iter()
            .any(|e| matches!(e, HubEvent::ConnectionClosed { .. }))
    );
    reader.abort();
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_token_expired_is_closed_with_1008_at_the_next_keepalive_tick() {
    let server = Setup::default().start().await;
    let mut user = server.connect("user=alice&expired=1").await;
    assert_eq!(
        user.expect_close_within(Duration::from_mins(10)).await,
        1008
    );
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001_and_refuses_new_ones() {
    let server = Setup::default().start().await;
    let mut clients = vec![
        server.user("alice").await,
        server.user("bob").await,
        server.bridge("phone", &["lock"]).await,
    ];
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::from_secs(10)).await });
    for client in &mut clients {
        assert_eq!(client.expect_close().await, 1001);
    }
    let report = shutdown.await.unwrap();
    assert_eq!((report.closed, report.still_running), (3, 0));
    assert!(!server.hub.is_accepting());
    assert_eq!(server.hub.counts().user_connections, 0);
    assert!(!server.hub.device_presence(&device("lock")).online);

    let mut late = server.connect("user=carol").await;
    assert_eq!(late.expect_close().await, 1001);
}

#[tokio::test]
async fn shutdown_waits_only_a_bounded_time_for_clients_that_do_not_answer() {
    let server = Setup::default()
        .config(|c| c.close_timeout = Duration::from_millis(200))
        .start()
        .await;
    // Never reads, so it never answers the close frame.
    let _deaf = server.user("deaf").await;
    let started = std::time::Instant::now();
    let report = server.hub.shutdown(Duration::from_secs(15)).await;
    assert_eq!(report.still_running, 0);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn app_level_ping_is_answered_with_pong() {
    let server = Setup::default().start().await;
    let mut user = server.connect("user=alice").await;
    user.send(r#"{"type":"ping"}"#).await;
    assert_eq!(user.recv().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn a_user_connection_may_run_a_bounded_number_of_commands_and_one_more_is_rate_limited() {
    let mut server = Setup::default()
        .config(|c| c.max_commands_per_connection = 2)
        .start()
        .await;
    let mut user = server.user("alice").await;
    let command = |id: &str| {
        format!(r#"{{"type":"command","requestId":"{id}","deviceId":"lock","payload":"01"}}"#)
    };
    let mut running = Vec::new();
    for id in ["c-1", "c-2"] {
        user.send(&command(id)).await;
        running.push(
            server
                .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
                .await,
        );
    }
    let Some(HubEvent::UserCommand { connection, .. }) = running.first() else {
        unreachable!("picked user commands");
    };
    let connection = *connection;
    assert_eq!(server.hub.commands_in_flight(connection), 2);

    // A third while two run: answered by the hub, never handed over.
    user.send(&command("c-3")).await;
    let refusal = user.recv_json().await;
    assert_eq!(
        (&refusal["type"], &refusal["code"], &refusal["requestId"]),
        (&json!("error"), &json!("rate_limited"), &json!("c-3"))
    );
    let code = server
        .wait_for(|e| match e {
            HubEvent::FrameRejected { code, .. } => Some(*code),
            HubEvent::UserCommand { .. } => panic!("a command over the cap was handed over"),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::RateLimited);
    assert_eq!(
        server.hub.commands_in_flight(connection),
        2,
        "a refused command counts nothing"
    );

    // One ends (its ticket is dropped): the next one is handed over again.
    running.pop();
    assert_eq!(server.hub.commands_in_flight(connection), 1);
    user.send(&command("c-4")).await;
    let fourth = server
        .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
        .await;
    assert!(matches!(
        &fourth,
        HubEvent::UserCommand { command, .. } if command.request_id.as_str() == "c-4"
    ));
    drop((fourth, running));
    assert_eq!(server.hub.commands_in_flight(connection), 0);
}

#[tokio::test]
async fn a_user_over_its_command_cap_across_its_connections_is_rate_limited_with_the_request_id() {
    let mut server = Setup::default()
        .config(|c| {
            c.max_commands_per_connection = 2;
            c.max_commands_per_user = 3;
        })
        .start()
        .await;
    let command = |id: &str| {
        format!(r#"{{"type":"command","requestId":"{id}","deviceId":"lock","payload":"01"}}"#)
    };
    let mut first = server.user("alice").await;
    let mut second = server.user("alice").await;
    let mut running = Vec::new();
    for (on_second, id) in [(false, "c-1"), (false, "c-2"), (true, "c-3")] {
        let client = if on_second { &mut second } else { &mut first };
        client.send(&command(id)).await;
        running.push(
            server
                .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
                .await,
        );
    }

    // `second` runs one of its two, but alice runs three of her three.
    second.send(&command("c-4")).await;
    let refusal = second.recv_json().await;
    assert_eq!(
        (&refusal["type"], &refusal["code"], &refusal["requestId"]),
        (&json!("error"), &json!("rate_limited"), &json!("c-4"))
    );
    let code = server
        .wait_for(|e| match e {
            HubEvent::FrameRejected { code, .. } => Some(*code),
            HubEvent::UserCommand { .. } => panic!("a command over the user's cap was handed over"),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::RateLimited);

    // Closing a connection does not end its commands: a new connection finds them counted.
    first.close().await;
    server
        .wait_for(|e| matches!(e, HubEvent::ConnectionClosed { .. }).then_some(()))
        .await;
    let mut third = server.user("alice").await;
    third.send(&command("c-5")).await;
    let refusal = third.recv_json().await;
    assert_eq!(
        (&refusal["code"], &refusal["requestId"]),
        (&json!("rate_limited"), &json!("c-5"))
    );

    // Another user is not affected, and alice's next command goes once one of hers ends.
    let mut bob = server.user("bob").await;
    bob.send(&command("b-1")).await;
    let bobs = server
        .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
        .await;
    assert!(matches!(&bobs, HubEvent::UserCommand { user_id, .. } if user_id.as_str() == "bob"));
    running.pop();
    third.send(&command("c-6")).await;
    let sixth = server
        .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
        .await;
    assert!(matches!(
        &sixth,
        HubEvent::UserCommand { command, .. } if command.request_id.as_str() == "c-6"
    ));
}

#[tokio::test]
async fn a_users_connection_over_its_cap_is_closed_with_1008_and_never_served() {
    let mut server = Setup::default()
        .config(|c| c.max_connections_per_user = 2)
        .start()
        .await;
    let first = server.user("alice").await;
    let _second = server.user("alice").await;
    assert_eq!(
        server
            .hub
            .user_connections(&bridge_hub::UserId::new("alice")),
        2
    );

    let mut third = server.connect("user=alice").await;
    assert_eq!(third.expect_close().await, 1008);
    assert_eq!(server.hub.counts().user_connections, 2);
    let registered = server
        .drain_events()
        .iter()
        .filter(|e| matches!(e, HubEvent::ConnectionOpened { .. }))
        .count();
    assert_eq!(registered, 2, "the refused connection was never registered");

    // Other users and bridges are not counted against alice; a freed place is taken again.
    let _bob = server.user("bob").await;
    let _phone = server.bridge("alice", &["lock"]).await;
    first.close().await;
    server
        .wait_for(|e| matches!(e, HubEvent::ConnectionClosed { .. }).then_some(()))
        .await;
    assert_eq!(
        server
            .hub
            .user_connections(&bridge_hub::UserId::new("alice")),
        1
    );
    let mut again = server.user("alice").await;
    again.send(r#"{"type":"ping"}"#).await;
    assert_eq!(again.recv().await, r#"{"type":"pong"}"#);
}

/// `d-0` … `d-1023`, for a user watching 1,024 devices.
fn many_devices() -> Vec<&'static str> {
    (0..1_024)
        .map(|i| &*Box::leak(format!("d-{i}").into_boxed_str()))
        .collect()
}

/// Reads `n` `device_status` frames and returns them by device.
async fn read_statuses(
    user: &mut support::Client,
    n: usize,
) -> std::collections::HashMap<String, serde_json::Value> {
    let mut statuses = std::collections::HashMap::new();
    while statuses.len() < n {
        let frame = user.recv_json().await;
        assert_eq!(frame["type"], "device_status", "{frame}");
        let device = frame["deviceId"].as_str().expect("a device id").to_owned();
        statuses.insert(device, frame);
    }
    statuses
}

#[tokio::test]
async fn a_user_watching_1024_devices_gets_its_whole_snapshot_and_is_not_a_slow_consumer() {
    let devices = many_devices();
    let server = Setup::default().subscriptions(&devices).start().await;
    assert_eq!(server.hub.config().outbound_queue_frames, 128);
    let mut user = server.connect("user=alice").await;
    let snapshot = read_statuses(&mut user, devices.len()).await;
    assert!(devices.iter().all(|d| snapshot[*d]["online"] == false));
    // Still connected, and nothing else is waiting.
    assert!(user.sync().await.is_empty());
    assert_eq!(server.hub.counts().slow_consumers_disconnected, 0);
    assert_eq!(server.hub.counts().user_connections, 1);
}

#[tokio::test]
async fn a_bridge_bringing_1024_watched_devices_does_not_cut_off_their_watcher() {
    let devices = many_devices();
    let mut server = Setup::default()
        .subscriptions(&devices)
        .config(|c| c.max_held_devices = 1_024)
        .start()
        .await;
    let mut user = server.connect("user=alice").await;
    read_statuses(&mut user, devices.len()).await;

    // All 1,024 claimed at connect, under one lock: 1,024 presence changes at once.
    let mut query = String::from("role=bridge&user=phone");
    for d in &devices {
        query.push_str("&device=");
        query.push_str(d);
    }
    let mut bridge = server.connect(&query).await;
    bridge.sync().await;
    let online = read_statuses(&mut user, devices.len()).await;
    assert!(
        devices.iter().all(|d| online[*d]["online"] == true),
        "every device_status arrived, online"
    );

    // And all 1,024 gone at once when it closes.
    bridge.close().await;
    server
        .wait_for(|e| {
            matches!(e, HubEvent::ConnectionClosed { role, .. } if *role == bridge_protocol::Role::Bridge)
                .then_some(())
        })
        .await;
    let offline = read_statuses(&mut user, devices.len()).await;
    assert!(devices.iter().all(|d| offline[*d]["online"] == false));
    assert!(user.sync().await.is_empty());
    assert_eq!(server.hub.counts().slow_consumers_disconnected, 0);
    assert_eq!(server.hub.counts().user_connections, 1);
}

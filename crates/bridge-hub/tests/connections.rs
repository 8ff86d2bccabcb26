//! The hub over real loopback WebSocket connections: presence, routing, hooks,
//! subscriptions and broadcast.

mod support;

use async_trait::async_trait;
use bridge_hub::{
    AccessPolicy, CloseReason, ConnectionInfo, Frame, HubError, HubEvent, ReleaseReason,
    ResponseRefused, UserId,
};
use bridge_protocol::{BleResponse, ConnectionId, DeviceId, ErrorCode, Role};
use serde_json::json;
use support::{Setup, device};

fn ble_write(request_id: &str, device_id: &str) -> Frame {
    Frame::from_json_text(format!(
        r#"{{"type":"ble_write","requestId":"{request_id}","deviceId":"{device_id}"}}"#
    ))
}

fn status(device_id: &str, online: bool, ble: Option<bool>) -> serde_json::Value {
    json!({"type":"device_status","deviceId":device_id,"online":online,"bleConnected":ble})
}

#[tokio::test]
async fn several_bridges_hold_a_device_and_commands_take_the_best_route() {
    let mut server = Setup::default().subscriptions(&["lock"]).start().await;
    let mut watcher = server.user("alice").await;
    let mut a = server.bridge("phone-a", &["lock"]).await;
    let mut b = server.bridge("phone-b", &["lock"]).await;
    let presence = server.hub.device_presence(&device("lock"));
    assert!(presence.online);
    assert_eq!(presence.bridges, 2);
    assert_eq!(presence.ble_connected, None, "nobody reported yet");

    // Both connected: the stronger signal wins.
    a.send(r#"{"type":"ble_status","deviceId":"lock","connected":true,"rssi":-70}"#)
        .await;
    b.send(r#"{"type":"ble_status","deviceId":"lock","connected":true,"rssi":-50}"#)
        .await;
    a.sync().await;
    b.sync().await;
    let r1 = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r1", "lock"))
        .unwrap();
    assert_eq!(b.recv_json().await["requestId"], "r1");
    let via = r1.connection();
    assert_eq!(server.hub.commands_in_flight(via), 1);
    drop(r1);
    assert_eq!(
        server.hub.commands_in_flight(via),
        0,
        "dropping the ticket ends the command's count"
    );

    // b loses its BLE link: a connected holder beats a disconnected one, whatever the rssi.
    b.send(r#"{"type":"ble_status","deviceId":"lock","connected":false}"#)
        .await;
    b.sync().await;
    let _r2 = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r2", "lock"))
        .unwrap();
    assert_eq!(a.recv_json().await["requestId"], "r2");
    assert_eq!(
        server.hub.device_presence(&device("lock")).ble_connected,
        Some(true)
    );

    // a goes away: the device stays online through b, and pending commands through a fail.
    a.close().await;
    let released = server
        .wait_for(|e| match e {
            HubEvent::DeviceReleased { reason, .. } => Some(*reason),
            _ => None,
        })
        .await;
    assert_eq!(released, ReleaseReason::ConnectionClosed);
    let presence = server.hub.device_presence(&device("lock"));
    assert!(presence.online);
    assert_eq!((presence.bridges, presence.ble_connected), (1, Some(false)));
    let _r3 = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r3", "lock"))
        .unwrap();
    assert_eq!(b.recv_json().await["requestId"], "r3");

    // b releases it: offline, and commands are refused.
    b.send(r#"{"type":"release","deviceId":"lock"}"#).await;
    b.sync().await;
    assert!(!server.hub.device_presence(&device("lock")).online);
    assert_eq!(
        server
            .hub
            .send_to_device(&device("lock"), &ble_write("r4", "lock")),
        Err(HubError::DeviceOffline(device("lock")))
    );
    assert!(server.hub.online_devices().is_empty());

    // The watcher saw every presence change, starting with its snapshot.
    let seen = watcher.sync().await;
    assert_eq!(
        seen,
        vec![
            status("lock", false, None),
            status("lock", true, None),
            status("lock", true, Some(true)),
            status("lock", true, Some(false)),
            status("lock", false, None),
        ]
    );
}

#[tokio::test]
async fn device_holders_lists_each_bridge_with_its_link_rssi_and_commands_best_route_first() {
    let mut server = Setup::default().start().await;
    assert!(server.hub.device_holders(&device("lock")).is_empty());
    let mut a = server.bridge("phone-a", &["lock"]).await;
    let mut b = server.bridge("phone-b", &["lock"]).await;
    a.send(r#"{"type":"ble_status","deviceId":"lock","connected":true,"rssi":-70}"#)
        .await;
    b.send(r#"{"type":"ble_status","deviceId":"lock","connected":false}"#)
        .await;
    a.sync().await;
    b.sync().await;
    let ticket = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r1", "lock"))
        .unwrap();
    let holders = server.hub.device_holders(&device("lock"));
    let seen: Vec<_> = holders
        .iter()
        .map(|h| {
            (
                h.user_id.as_str(),
                h.ble_connected,
                h.rssi,
                h.commands_in_flight,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("phone-a", Some(true), Some(-70), 1),
            ("phone-b", Some(false), None, 0)
        ],
        "the routed-to holder first, with the command it carries"
    );
    assert_eq!(holders[0].connection, ticket.connection());
    drop(ticket);
    assert_eq!(
        server.hub.device_holders(&device("lock"))[0].commands_in_flight,
        0
    );
    b.close().await;
    server
        .wait_for(|e| matches!(e, HubEvent::DeviceReleased { .. }).then_some(()))
        .await;
    assert_eq!(server.hub.device_holders(&device("lock")).len(), 1);
}

#[tokio::test]
async fn with_equal_link_and_rssi_the_connection_with_fewer_commands_in_flight_wins() {
    let server = Setup::default().start().await;
    let mut a = server.bridge("phone-a", &["lock"]).await;
    let mut b = server.bridge("phone-b", &["lock"]).await;
    for bridge in [&mut a, &mut b] {
        bridge
            .send(r#"{"type":"ble_status","deviceId":"lock","connected":true,"rssi":-60}"#)
            .await;
        bridge.sync().await;
    }
    // Most recent claim first, then alternating as commands pile up.
    let first = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r1", "lock"))
        .unwrap();
    let second = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r2", "lock"))
        .unwrap();
    assert_ne!(first.connection(), second.connection());
    assert_eq!(b.recv_json().await["requestId"], "r1");
    assert_eq!(a.recv_json().await["requestId"], "r2");
    // b's command ends (its ticket is dropped): b has fewer in flight again.
    let on_b = first.connection();
    drop(first);
    let third = server
        .hub
        .send_to_device(&device("lock"), &ble_write("r3", "lock"))
        .unwrap();
    assert_eq!(third.connection(), on_b);
    assert_eq!(b.recv_json().await["requestId"], "r3");
    assert_eq!(
        (
            server.hub.commands_in_flight(on_b),
            server.hub.commands_in_flight(second.connection())
        ),
        (1, 1)
    );
    let on_a = second.connection();
    drop((second, third));
    assert_eq!(
        (
            server.hub.commands_in_flight(on_b),
            server.hub.commands_in_flight(on_a)
        ),
        (0, 0)
    );
}

#[tokio::test]
async fn a_bridge_claims_with_ble_status_only_devices_it_may_bridge() {
    let mut server = Setup::default().start().await;
    let mut bridge = server.connect("role=bridge&user=u&access=lock").await;
    bridge
        .send(r#"{"type":"ble_status","deviceId":"safe","connected":true}"#)
        .await;
    assert_eq!(
        bridge.recv_json().await,
        json!({"type":"error","code":"forbidden","message":"this connection may not bridge device `safe`"})
    );
    bridge
        .send(r#"{"type":"ble_status","deviceId":"lock","connected":true,"rssi":-40}"#)
        .await;
    bridge.sync().await;
    let presence = server.hub.device_presence(&device("lock"));
    assert_eq!(
        (presence.online, presence.ble_connected),
        (true, Some(true))
    );
    let claimed = server
        .wait_for(|e| match e {
            HubEvent::DeviceClaimed { device_id, .. } => Some(device_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(claimed, device("lock"));
    // Releasing a device it does not hold is not an error.
    bridge
        .send(r#"{"type":"release","deviceId":"other"}"#)
        .await;
    assert!(bridge.sync().await.is_empty());
}

#[tokio::test]
async fn hooks_fire_on_a_users_first_connect_and_last_disconnect_only() {
    let mut server = Setup::default().start().await;
    let tab1 = server.user("alice").await;
    let tab2 = server.user("alice").await;
    let first: Vec<_> = server
        .drain_events()
        .into_iter()
        .filter(|e| matches!(e, HubEvent::UserFirstConnected { .. }))
        .collect();
    assert_eq!(
        first,
        vec![HubEvent::UserFirstConnected {
            user_id: UserId::new("alice")
        }]
    );
    assert_eq!(server.hub.counts().user_connections, 2);
    assert_eq!(server.hub.counts().users, 1);

    tab1.close().await;
    server
        .wait_for(|e| matches!(e, HubEvent::ConnectionClosed { .. }).then_some(()))
        .await;
    assert!(
        !server
            .drain_events()
            .iter()
            .any(|e| matches!(e, HubEvent::UserLastDisconnected { .. })),
        "alice still has a tab open"
    );
    tab2.close().await;
    let last = server
        .wait_for(|e| match e {
            HubEvent::UserLastDisconnected { user_id } => Some(user_id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(last, UserId::new("alice"));
    assert_eq!(server.hub.counts().users, 0);
}

#[tokio::test]
async fn a_broadcast_reaches_exactly_the_subscribers_of_the_device() {
    let server = Setup::default().subscriptions(&["lock"]).start().await;
    let mut initial = server.user("alice").await; // lock, from the subscription source
    let mut later = server.user("bob").await; // lock, subscribes below, then unsubscribes
    let mut other = server.user("carol").await; // unsubscribes from lock, watches door
    assert_eq!(initial.sync().await, vec![status("lock", false, None)]);

    later
        .send(r#"{"type":"subscribe","requestId":"s-1","deviceId":"lock"}"#)
        .await;
    // Already subscribed through the source: still acknowledged, with a fresh snapshot.
    assert_eq!(
        later.sync().await,
        vec![
            status("lock", false, None),
            json!({"type":"ack","requestId":"s-1"}),
            status("lock", false, None),
        ]
    );
    other
        .send(r#"{"type":"unsubscribe","requestId":"u-1","deviceId":"lock"}"#)
        .await;
    other
        .send(r#"{"type":"subscribe","requestId":"s-2","deviceId":"door"}"#)
        .await;
    other.sync().await;

    let event = Frame::from_json_text(
        r#"{"type":"state_changed","deviceId":"lock","data":{"locked":false}}"#,
    );
    assert_eq!(server.hub.broadcast(&device("lock"), &event), 2);
    assert_eq!(initial.recv().await, event.as_str());
    assert_eq!(later.recv().await, event.as_str());
    assert!(
        other.sync().await.is_empty(),
        "carol does not watch the lock"
    );

    later
        .send(r#"{"type":"unsubscribe","requestId":"u-2","deviceId":"lock"}"#)
        .await;
    assert_eq!(
        later.sync().await,
        vec![json!({"type":"ack","requestId":"u-2"})]
    );
    assert_eq!(server.hub.broadcast(&device("lock"), &event), 1);
    assert_eq!(server.hub.broadcast(&device("nobody-watches"), &event), 0);
    assert_eq!(initial.recv().await, event.as_str());
    assert!(later.sync().await.is_empty());

    // To a user: every connection of that user.
    let note = Frame::from_json_text(r#"{"type":"note","deviceId":"lock"}"#);
    assert_eq!(server.hub.send_to_user(&UserId::new("carol"), &note), 1);
    assert_eq!(other.recv().await, note.as_str());
}

#[tokio::test]
async fn subscribe_is_checked_by_the_access_policy() {
    struct PublicOnly;
    #[async_trait]
    impl AccessPolicy for PublicOnly {
        async fn may_subscribe(&self, _: &ConnectionInfo, device: &DeviceId) -> bool {
            device.as_str().starts_with("pub-")
        }
    }
    let server = Setup::default().access_policy(PublicOnly).start().await;
    let mut user = server.user("alice").await;
    user.send(r#"{"type":"subscribe","requestId":"c-1","deviceId":"secret"}"#)
        .await;
    assert_eq!(
        user.recv_json().await,
        json!({"type":"error","code":"forbidden","message":"this connection may not watch device `secret`","requestId":"c-1"})
    );
    user.send(r#"{"type":"subscribe","requestId":"c-2","deviceId":"pub-1"}"#)
        .await;
    assert_eq!(
        user.sync().await,
        vec![
            json!({"type":"ack","requestId":"c-2"}),
            status("pub-1", false, None)
        ]
    );
    let event = Frame::from_json_text(r#"{"type":"x","deviceId":"secret"}"#);
    assert_eq!(server.hub.broadcast(&device("secret"), &event), 0);
}

#[tokio::test]
async fn the_default_policy_grants_what_the_connection_credentials_grant() {
    let server = Setup::default().start().await;
    let mut user = server.connect("user=alice&access=lock").await;
    user.send(r#"{"type":"subscribe","requestId":"c-1","deviceId":"safe"}"#)
        .await;
    assert_eq!(user.recv_json().await["code"], "forbidden");
    user.send(r#"{"type":"subscribe","requestId":"c-2","deviceId":"lock"}"#)
        .await;
    assert_eq!(
        user.recv_json().await,
        json!({"type":"ack","requestId":"c-2"})
    );
}

#[tokio::test]
async fn subscriptions_per_connection_are_bounded() {
    let server = Setup::default()
        .config(|c| c.max_subscriptions = 2)
        .start()
        .await;
    let mut user = server.user("alice").await;
    for (i, d) in ["a", "b", "c"].iter().enumerate() {
        user.send(&format!(
            r#"{{"type":"subscribe","requestId":"s-{i}","deviceId":"{d}"}}"#
        ))
        .await;
    }
    let frames = user.sync().await;
    assert_eq!(
        frames.len(),
        5,
        "two acks with snapshots, one refusal: {frames:?}"
    );
    assert_eq!(frames[4]["code"], "forbidden");
    assert_eq!(frames[4]["requestId"], "s-2");
}

#[tokio::test]
async fn frames_the_hub_cannot_answer_are_reported_and_answered_through_the_hub() {
    let mut server = Setup::default().start().await;
    let mut user = server.user("alice").await;
    let mut bridge = server.bridge("phone", &["lock"]).await;

    user.send(r#"{"type":"command","requestId":"c-2","deviceId":"lock","payload":"aabb"}"#)
        .await;
    let event = server
        .take_event(|e| matches!(e, HubEvent::UserCommand { .. }))
        .await;
    let HubEvent::UserCommand {
        connection,
        user_id,
        command,
        in_flight,
    } = event
    else {
        unreachable!("picked a user command");
    };
    assert_eq!(
        (user_id.as_str(), command.request_id.as_str()),
        ("alice", "c-2")
    );
    assert_eq!(in_flight.connection(), connection);
    assert_eq!(server.hub.commands_in_flight(connection), 1);
    let result = Frame::from_json_text(
        r#"{"type":"command_result","requestId":"c-2","deviceId":"lock","status":"offline"}"#,
    );
    server.hub.send_to_connection(connection, &result).unwrap();
    drop(in_flight);
    assert_eq!(user.recv().await, result.as_str());
    assert_eq!(server.hub.commands_in_flight(connection), 0);

    // Without a response handler nothing can be pending: the hub answers unknown_request.
    bridge
        .send(r#"{"type":"ble_response","requestId":"nope","deviceId":"lock","payload":"01"}"#)
        .await;
    let frame = bridge.recv_json().await;
    assert_eq!(
        (&frame["type"], &frame["code"], &frame["requestId"]),
        (&json!("error"), &json!("unknown_request"), &json!("nope"))
    );
    let unknown = Frame::from_json_text(r#"{"type":"pong"}"#);
    assert_eq!(
        server
            .hub
            .send_to_connection(ConnectionId::new(9999), &unknown),
        Err(HubError::ConnectionGone(ConnectionId::new(9999)))
    );
}

#[tokio::test]
async fn connection_events_come_in_order() {
    let mut server = Setup::default().start().await;
    let bridge = server.bridge("phone", &["lock"]).await;
    bridge.close().await;
    let mut events = server
        .events_until(|e| matches!(e, HubEvent::ConnectionClosed { .. }))
        .await;
    assert!(matches!(
        events.pop(),
        Some(HubEvent::ConnectionClosed {
            reason: CloseReason::ClientClosed,
            ..
        })
    ));
    let user_id = UserId::new("phone");
    let lock = device("lock");
    let connection = match events.first() {
        Some(HubEvent::ConnectionOpened { connection, .. }) => *connection,
        other => panic!("expected ConnectionOpened first, got {other:?}"),
    };
    assert_eq!(
        events,
        vec![
            HubEvent::ConnectionOpened {
                connection,
                role: Role::Bridge,
                user_id: user_id.clone()
            },
            HubEvent::DeviceClaimed {
                device_id: lock.clone(),
                connection
            },
            HubEvent::DeviceOnline {
                device_id: lock.clone()
            },
            HubEvent::DeviceReleased {
                device_id: lock.clone(),
                connection,
                reason: ReleaseReason::ConnectionClosed
            },
            HubEvent::DeviceOffline { device_id: lock },
        ]
    );
}

#[tokio::test]
async fn an_event_handler_may_call_back_into_the_hub() {
    // What the queue does when a device comes online: deliver what waited for it, from the
    // event handler itself.
    let hub_cell = std::sync::Arc::new(std::sync::OnceLock::<bridge_hub::LocalHub>::new());
    let cell = std::sync::Arc::clone(&hub_cell);
    let server = Setup::default()
        .on_event(move |event| {
            if let (HubEvent::DeviceOnline { device_id }, Some(hub)) = (event, cell.get()) {
                let presence = hub.device_presence(device_id);
                assert_eq!((presence.online, presence.bridges), (true, 1));
                let _in_flight = hub
                    .send_to_device(device_id, &ble_write("queued-1", device_id.as_str()))
                    .unwrap();
            }
        })
        .start()
        .await;
    hub_cell.set(server.hub.clone()).unwrap();
    let mut bridge = server.bridge("phone", &["lock"]).await;
    assert_eq!(bridge.recv_json().await["requestId"], "queued-1");
}

#[tokio::test]
async fn a_ble_response_is_offered_to_the_response_handler_on_its_connection_and_refusals_are_answered()
 {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let mut server = Setup::default()
        .responses(move |connection, response: BleResponse| {
            let id = response.request_id;
            record.lock().push((connection, id));
            match id.as_str() {
                "mine" => Ok(()),
                "theirs" => Err(ResponseRefused::new(id, ErrorCode::Forbidden)),
                _ => Err(ResponseRefused::new(id, ErrorCode::UnknownRequest)),
            }
        })
        .start()
        .await;
    let mut bridge = server.bridge("phone", &["lock"]).await;
    for id in ["mine", "theirs", "gone"] {
        bridge
            .send(&format!(
                r#"{{"type":"ble_response","requestId":"{id}","deviceId":"lock","payload":"01"}}"#
            ))
            .await;
    }
    let frames = bridge.sync().await;
    let answered: Vec<_> = frames
        .iter()
        .map(|f| (f["code"].clone(), f["requestId"].clone()))
        .collect();
    assert_eq!(
        answered,
        vec![
            (json!("forbidden"), json!("theirs")),
            (json!("unknown_request"), json!("gone")),
        ],
        "an accepted answer gets no frame; each refusal its error frame"
    );
    let connection = server
        .wait_for(|e| match e {
            HubEvent::ConnectionOpened { connection, .. } => Some(*connection),
            _ => None,
        })
        .await;
    let ids: Vec<_> = seen
        .lock()
        .iter()
        .map(|(c, id)| (*c, id.as_str().to_owned()))
        .collect();
    assert_eq!(
        ids,
        vec![
            (connection, "mine".to_owned()),
            (connection, "theirs".to_owned()),
            (connection, "gone".to_owned()),
        ]
    );
    let rejected: Vec<_> = server
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::FrameRejected { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        vec![ErrorCode::Forbidden, ErrorCode::UnknownRequest]
    );
}

/// A hub of its own that routes through the local hub but overrides only the boxed send.
struct CountingHub {
    local: bridge_hub::LocalHub,
    sends: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl bridge_hub::Hub for CountingHub {
    fn local(&self) -> &bridge_hub::LocalHub {
        &self.local
    }

    async fn send_to_device(
        &self,
        device_id: &DeviceId,
        frame: &Frame,
    ) -> Result<bridge_hub::InFlight, HubError> {
        self.sends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.local.send_to_device(device_id, frame)
    }
}

#[tokio::test]
async fn send_to_device_now_answers_what_send_to_device_answers_and_defers_to_an_override() {
    use bridge_hub::Hub;

    let server = Setup::default().start().await;
    let mut phone = server.bridge("phone-a", &["lock"]).await;
    let hub: &dyn Hub = &server.hub;

    // The local hub answers at once, with the same ticket and route as its boxed send.
    let now = hub
        .send_to_device_now(&device("lock"), &ble_write("r1", "lock"))
        .expect("the local hub sends at once")
        .expect("the lock is online");
    assert_eq!(phone.recv_json().await["requestId"], "r1");
    assert_eq!(server.hub.commands_in_flight(now.connection()), 1);
    let boxed = hub
        .send_to_device(&device("lock"), &ble_write("r2", "lock"))
        .await
        .expect("the lock is online");
    assert_eq!(phone.recv_json().await["requestId"], "r2");
    assert_eq!(now.connection(), boxed.connection());
    assert_eq!(server.hub.commands_in_flight(now.connection()), 2);
    drop((now, boxed));
    assert_eq!(server.hub.commands_in_flight(phone_connection(&server)), 0);
    for unknown in ["never-seen", "other"] {
        assert_eq!(
            hub.send_to_device_now(&device(unknown), &ble_write("r3", unknown)),
            Some(
                hub.send_to_device(&device(unknown), &ble_write("r3", unknown))
                    .await
            ),
        );
        assert_eq!(
            hub.send_to_device_now(&device(unknown), &ble_write("r3", unknown)),
            Some(Err(HubError::DeviceOffline(device(unknown)))),
        );
    }

    // A hub that overrides only `send_to_device` is not bypassed: the default says "await
    // send_to_device".
    let counting = CountingHub {
        local: server.hub.clone(),
        sends: std::sync::atomic::AtomicUsize::new(0),
    };
    assert!(
        counting
            .send_to_device_now(&device("lock"), &ble_write("r4", "lock"))
            .is_none()
    );
    assert_eq!(counting.sends.load(std::sync::atomic::Ordering::SeqCst), 0);
    let ticket = counting
        .send_to_device(&device("lock"), &ble_write("r5", "lock"))
        .await
        .expect("the lock is online");
    assert_eq!(phone.recv_json().await["requestId"], "r5");
    assert_eq!(counting.sends.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(ticket);

    // The same for a frame handed over: the local hub queues it at once (the phone gets
    // it), the overriding hub gives it back untouched for `send_to_device`.
    let handed = hub
        .send_frame_to_device_now(&device("lock"), ble_write("r6", "lock"))
        .expect("the local hub sends at once")
        .expect("the lock is online");
    assert_eq!(phone.recv_json().await["requestId"], "r6");
    assert_eq!(server.hub.commands_in_flight(handed.connection()), 1);
    drop(handed);
    assert_eq!(
        hub.send_frame_to_device_now(&device("other"), ble_write("r7", "other")),
        Ok(Err(HubError::DeviceOffline(device("other")))),
    );
    assert_eq!(
        counting.send_frame_to_device_now(&device("lock"), ble_write("r8", "lock")),
        Err(ble_write("r8", "lock")),
    );
    assert_eq!(counting.sends.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The connection of the one bridge of `server`.
fn phone_connection(server: &support::TestServer) -> ConnectionId {
    server
        .hub
        .device_holders(&device("lock"))
        .first()
        .map(|holder| holder.connection)
        .expect("the phone holds the lock")
}

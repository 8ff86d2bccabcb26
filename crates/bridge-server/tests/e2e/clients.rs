//! The Rust client library against the real server: a simulated phone with smart locks,
//! and end users, in development and JWT mode.

use std::sync::Arc;

use bridge_client::lock::{LockBehaviour, STATUS, SimulatedLocks, UNLOCK};
use bridge_client::{Backoff, BridgeClient, BridgeConfig, Credentials, UserClient, UserConfig};
use bridge_protocol::http::{CommandRequest, IfOffline};
use bridge_protocol::{CommandType, HexPayload, ResultStatus, ServerToUser};
use bridge_server::ServerConfig;
use serde_json::json;

use crate::support::*;

fn base_url(server: &TestServer) -> String {
    format!("ws://{}/ws", server.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_unlocks_a_simulated_lock_through_a_simulated_phone() {
    let server = TestServer::start().await;
    let lock = device("lock-1");
    let locks = Arc::new(SimulatedLocks::new(
        [lock.clone()],
        LockBehaviour::default(),
    ));
    let phone = BridgeClient::start(
        BridgeConfig::new(
            base_url(&server),
            Credentials::Development {
                user_id: "phone".into(),
            },
            vec![lock.clone()],
        ),
        locks.clone(),
    );
    phone.wait_connected(1).await.unwrap();
    phone.report_status(lock.clone(), true, Some(-60)).unwrap();

    let (alice, mut events) = UserClient::connect(UserConfig::new(
        base_url(&server),
        Credentials::Development {
            user_id: "alice".into(),
        },
    ))
    .await
    .unwrap();
    alice.subscribe(lock.clone()).await.unwrap();
    server
        .wait_device("lock-1", |v| v["bleConnected"] == true)
        .await;

    let result = alice
        .command(
            lock.clone(),
            CommandRequest::new(HexPayload::from_bytes(vec![UNLOCK])),
        )
        .await
        .unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded);
    assert_eq!(
        result.payload,
        Some(HexPayload::from_bytes(vec![0x82, 0x00]))
    );
    assert!(!locks.state(&lock).unwrap().locked);

    // The backend asks the same lock over HTTP.
    let (status, body) = server.command("lock-1", json!({"payload":"03"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["payload"], "830064");

    // A command queued for a lock the phone does not hold yet is delivered once it does,
    // and its outcome reaches the subscriber.
    let lock2 = device("lock-2");
    alice.subscribe(lock2.clone()).await.unwrap();
    let mut queued = CommandRequest::new(HexPayload::from_bytes(vec![STATUS]));
    queued.if_offline = IfOffline::Queue;
    queued.command_type = Some(CommandType::new("status").unwrap());
    let result = alice.command(lock2.clone(), queued).await.unwrap();
    assert_eq!(result.status, ResultStatus::Queued);
    let command_id = result.command_id.unwrap();

    let locks2 = Arc::new(SimulatedLocks::new(
        [lock2.clone()],
        LockBehaviour::default(),
    ));
    let phone2 = BridgeClient::start(
        BridgeConfig::new(
            base_url(&server),
            Credentials::Development {
                user_id: "phone-2".into(),
            },
            vec![lock2.clone()],
        ),
        locks2,
    );
    phone2.wait_connected(1).await.unwrap();
    let outcome = loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ServerToUser::CommandResult(result) = event {
            break result;
        }
    };
    assert_eq!(outcome.command_id, Some(command_id));
    assert_eq!(outcome.status, ResultStatus::Succeeded);
    assert_eq!(
        outcome.payload,
        Some(HexPayload::from_bytes(vec![0x83, 0x01, 100]))
    );
    phone.shutdown().await;
    phone2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_work_with_tokens_and_a_bridge_reconnects_after_its_connection_drops() {
    let server = TestServer::start_authenticated().await;
    let lock = device("lock-1");
    let locks = Arc::new(SimulatedLocks::new(
        [lock.clone()],
        LockBehaviour::default(),
    ));
    let phone = BridgeClient::start(
        BridgeConfig::new(
            base_url(&server),
            Credentials::Token(token("phone", "bridge", Some(&["lock-1"]), 3600)),
            vec![lock.clone()],
        ),
        locks,
    );
    phone.wait_connected(1).await.unwrap();
    // The client is connected once its handshake is answered; the hub registers the
    // connection (its id, the device's presence) a moment later. Wait for that, so that the
    // phone's is connection 1 and lock-1 is online before alice connects and commands it.
    server.wait_online("lock-1", 1).await;
    let (alice, _events) = UserClient::connect(UserConfig::new(
        base_url(&server),
        Credentials::Token(token("alice", "user", Some(&["lock-1"]), 3600)),
    ))
    .await
    .unwrap();
    let unlock = || CommandRequest::new(HexPayload::from_bytes(vec![UNLOCK]));
    let result = alice.command(lock.clone(), unlock()).await.unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded);

    // The server drops the phone's connection (the hub's first: the phone connected before
    // anyone else); the phone reconnects and holds the lock again.
    let local = server.server.as_ref().unwrap().hub().local().clone();
    assert!(local.close_connection(bridge_protocol::ConnectionId::new(1), 1011));
    phone.wait_connected(2).await.unwrap();
    server.wait_online("lock-1", 1).await;
    let result = alice.command(lock.clone(), unlock()).await.unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded);
    phone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_comes_back_by_itself_after_the_server_restarts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = TestServer::start_on(listener, ServerConfig::default(), |b| b);
    let lock = device("lock-1");
    let locks = Arc::new(SimulatedLocks::new(
        [lock.clone()],
        LockBehaviour::default(),
    ));
    let mut config = BridgeConfig::new(
        format!("ws://{addr}/ws"),
        Credentials::Development {
            user_id: "phone".into(),
        },
        vec![lock.clone()],
    );
    config.backoff = Backoff {
        initial: std::time::Duration::from_millis(20),
        max: std::time::Duration::from_millis(200),
        ..Backoff::default()
    };
    let phone = BridgeClient::start(config, locks);
    phone.wait_connected(1).await.unwrap();
    first.wait_online("lock-1", 1).await;
    let (status, _) = first.command("lock-1", json!({"payload": "03"})).await;
    assert_eq!(status, 200);

    // The server goes away (closing every connection with 1001) and a new one starts on the
    // same address: the phone reconnects by itself and serves commands again.
    first.stop().await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let second = TestServer::start_on(listener, ServerConfig::default(), |b| b);
    phone.wait_connected(2).await.unwrap();
    second.wait_online("lock-1", 1).await;
    let (status, answer) = second.command("lock-1", json!({"payload": "02"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["payload"], "8200");
    phone.shutdown().await;
}

/// The simulated phone reports its stages (`ble_progress`), and, stuck after each stage in
/// turn, the backend's timeout says where the command stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_phone_reports_its_stages_and_a_timeout_says_where_it_stopped() {
    use bridge_protocol::Stage;

    let server = TestServer::start().await;
    let cases = [
        (None, "written"),
        (Some(Stage::Sent), "sent"),
        (Some(Stage::Received), "received"),
        (Some(Stage::Connected), "connected"),
        (Some(Stage::Written), "written"),
    ];
    for (i, (stuck_after, stage)) in cases.into_iter().enumerate() {
        let lock = device(&format!("stuck-{i}"));
        let locks = Arc::new(SimulatedLocks::new(
            [lock.clone()],
            LockBehaviour {
                stuck_after,
                ..LockBehaviour::default()
            },
        ));
        let phone = BridgeClient::start(
            BridgeConfig::new(
                base_url(&server),
                Credentials::Development {
                    user_id: format!("phone-{i}"),
                },
                vec![lock.clone()],
            ),
            locks,
        );
        phone.wait_connected(1).await.unwrap();
        server.wait_online(lock.as_str(), 1).await;
        let (status, body) = server
            .command(lock.as_str(), json!({"payload":"03","timeoutMs":300}))
            .await;
        match stuck_after {
            None => {
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["payload"], "830164");
            }
            Some(_) => assert_eq!((status, body["status"].clone()), (504, json!("timeout"))),
        }
        assert_eq!(body["stage"], stage, "{body}");
        let reported: Vec<&str> = ["received", "connected", "written"]
            .into_iter()
            .filter(|s| body["progress"].get(format!("{s}Ms")).is_some())
            .collect();
        let expected: &[&str] = match stage {
            "sent" => &[],
            "received" => &["received"],
            "connected" => &["received", "connected"],
            _ => &["received", "connected", "written"],
        };
        assert_eq!(reported, expected, "{body}");
        phone.shutdown().await;
    }
}

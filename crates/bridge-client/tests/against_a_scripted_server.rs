//! The clients against a scripted WebSocket server over loopback: it plays the server's
//! side of PROTOCOL.md frame by frame, so each test states exactly what the client must do.
//! (The clients are also tested against the real server in `bridge-server`'s end-to-end
//! tests.)
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_client::lock::{LockBehaviour, STATUS, SimulatedLocks, UNLOCK};
use bridge_client::{
    Backoff, BridgeClient, BridgeConfig, ClientError, Credentials, UserClient, UserConfig,
};
use bridge_protocol::http::CommandRequest;
use bridge_protocol::{
    BleOutcome, BleResponse, BleWrite, BridgeToServer, DeviceConfig, DeviceErrorCode, DeviceId,
    DeviceType, ErrorCode, HexPayload, Limits, RequestId, ResultStatus, ServerToBridge,
    ServerToUser, Stage, TimeoutMs, UserToServer,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Server = WebSocketStream<TcpStream>;

/// Accepts one connection and returns it with the request's URI and Authorization header.
async fn accept(listener: &TcpListener) -> (Server, String, Option<String>) {
    let (tcp, _) = listener.accept().await.unwrap();
    let seen = Arc::new(Mutex::new((String::new(), None)));
    let seen2 = Arc::clone(&seen);
    let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        *seen2.lock().unwrap() = (req.uri().to_string(), auth);
        Ok(resp)
    })
    .await
    .unwrap();
    let (uri, auth) = seen.lock().unwrap().clone();
    (ws, uri, auth)
}

async fn next_text(ws: &mut Server) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn next_bridge_frame(ws: &mut Server) -> BridgeToServer {
    BridgeToServer::decode(&next_text(ws).await, &Limits::default()).unwrap()
}

/// The stages the bridge reported for `request_id` (`ble_progress`, in the order sent),
/// then its answer.
async fn progress_then_answer(ws: &mut Server, request_id: &str) -> (Vec<Stage>, BleResponse) {
    let mut stages = Vec::new();
    loop {
        match next_bridge_frame(ws).await {
            BridgeToServer::BleProgress(progress) => {
                assert_eq!(progress.request_id.as_str(), request_id);
                stages.push(progress.stage);
            }
            BridgeToServer::BleResponse(answer) => return (stages, answer),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn lock(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

fn ble_write(request_id: &str, device: &str, payload: &[u8]) -> ServerToBridge {
    let config = DeviceConfig::SMART_LOCK;
    ServerToBridge::BleWrite(BleWrite {
        request_id: RequestId::new(request_id).unwrap(),
        device_id: lock(device),
        device_type: DeviceType::new("smart-lock").unwrap(),
        service_uuid: config.service_uuid,
        write_uuid: config.write_uuid,
        listen_uuid: config.listen_uuid,
        payload: HexPayload::from_bytes(payload.to_vec()),
        timeout_ms: TimeoutMs::DEFAULT,
    })
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..Backoff::default()
    }
}

#[tokio::test]
async fn a_bridge_names_its_devices_and_answers_each_write_with_the_same_request_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let locks = Arc::new(SimulatedLocks::new(
        [lock("lock-1")],
        LockBehaviour::default(),
    ));
    let client = BridgeClient::start(
        BridgeConfig::new(
            url,
            Credentials::Development {
                user_id: "phone".into(),
            },
            vec![lock("lock-1")],
        ),
        locks.clone(),
    );
    let (mut ws, uri, _) = accept(&listener).await;
    assert_eq!(uri, "/ws?userId=phone&deviceId=lock-1");
    client.wait_connected(1).await.unwrap();

    ws.send(Message::text(
        ble_write("r-1", "lock-1", &[UNLOCK]).to_json(),
    ))
    .await
    .unwrap();
    let (stages, answer) = progress_then_answer(&mut ws, "r-1").await;
    assert_eq!(
        stages,
        [Stage::Received, Stage::Connected, Stage::Written],
        "the simulated phone reports every stage, in order"
    );
    assert_eq!(answer.request_id.as_str(), "r-1");
    assert_eq!(answer.device_id, lock("lock-1"));
    assert_eq!(
        answer.outcome,
        BleOutcome::Payload(HexPayload::from_bytes(vec![0x82, 0x00]))
    );
    assert!(!locks.state(&lock("lock-1")).unwrap().locked);

    // A device the phone does not have is answered with an error, not silence.
    ws.send(Message::text(
        ble_write("r-2", "lock-9", &[STATUS]).to_json(),
    ))
    .await
    .unwrap();
    let (stages, answer) = progress_then_answer(&mut ws, "r-2").await;
    assert_eq!(
        stages,
        [Stage::Received],
        "no link to a lock it does not have"
    );
    assert!(matches!(answer.outcome, BleOutcome::Error(e) if e.as_str() == "device_not_found"));
    client.shutdown().await;
}

#[tokio::test]
async fn a_bridge_reconnects_and_re_announces_its_devices_and_their_links() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let locks = Arc::new(SimulatedLocks::new(
        [lock("a"), lock("b")],
        LockBehaviour::default(),
    ));
    let mut config = BridgeConfig::new(url, Credentials::Token("jwt-1".into()), vec![lock("a")]);
    config.backoff = fast_backoff();
    let client = BridgeClient::start(config, locks);

    let (mut first, uri, auth) = accept(&listener).await;
    assert_eq!(uri, "/ws?deviceId=a");
    assert_eq!(auth.as_deref(), Some("Bearer jwt-1"));
    client.wait_connected(1).await.unwrap();
    // Claim `b` with a status report.
    client.report_status(lock("b"), true, Some(-50)).unwrap();
    let BridgeToServer::BleStatus(status) = next_bridge_frame(&mut first).await else {
        panic!()
    };
    assert_eq!(
        (status.device_id.as_str(), status.connected, status.rssi),
        ("b", true, Some(-50))
    );

    // The server goes away; the bridge comes back holding both devices.
    drop(first);
    let (mut second, uri, _) = accept(&listener).await;
    assert_eq!(uri, "/ws?deviceId=a&deviceId=b");
    client.wait_connected(2).await.unwrap();
    let BridgeToServer::BleStatus(status) = next_bridge_frame(&mut second).await else {
        panic!()
    };
    assert_eq!(status.device_id.as_str(), "b");

    // Released devices are not re-announced.
    client.release(lock("b")).unwrap();
    let BridgeToServer::Release(release) = next_bridge_frame(&mut second).await else {
        panic!()
    };
    assert_eq!(release.device_id.as_str(), "b");
    drop(second);
    let (_third, uri, _) = accept(&listener).await;
    assert_eq!(uri, "/ws?deviceId=a");
    client.shutdown().await;
}

#[tokio::test]
async fn a_bridge_keeps_retrying_while_the_server_is_down() {
    // Reserve a port, then close it: connects are refused until a server listens again.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut config = BridgeConfig::new(
        format!("ws://{addr}/ws"),
        Credentials::Development {
            user_id: "p".into(),
        },
        vec![lock("a")],
    );
    config.backoff = fast_backoff();
    let client = BridgeClient::start(
        config,
        Arc::new(SimulatedLocks::new([], LockBehaviour::default())),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_ws, uri, _) = accept(&listener).await;
    assert_eq!(uri, "/ws?userId=p&deviceId=a");
    client.wait_connected(1).await.unwrap();
    client.shutdown().await;
}

#[tokio::test]
async fn a_user_gets_acks_results_and_events_matched_by_request_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, uri, _) = accept(&listener).await;
        assert_eq!(uri, "/ws?userId=u1");
        // subscribe → an unsolicited device_status first, then the ack.
        let UserToServer::Subscribe(sub) =
            UserToServer::decode(&next_text(&mut ws).await, &Limits::default()).unwrap()
        else {
            panic!()
        };
        let status = format!(
            r#"{{"type":"device_status","deviceId":"{}","online":true,"bleConnected":null}}"#,
            sub.device_id
        );
        ws.send(Message::text(status)).await.unwrap();
        let ack = format!(r#"{{"type":"ack","requestId":"{}"}}"#, sub.request_id);
        ws.send(Message::text(ack)).await.unwrap();
        // command → result with the same request id.
        let UserToServer::Command(cmd) =
            UserToServer::decode(&next_text(&mut ws).await, &Limits::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(cmd.command.payload.as_bytes(), &[UNLOCK]);
        let result = format!(
            r#"{{"type":"command_result","requestId":"{}","deviceId":"{}","status":"succeeded","payload":"8200"}}"#,
            cmd.request_id, cmd.device_id
        );
        ws.send(Message::text(result)).await.unwrap();
        // subscribe to a forbidden device → error frame with the request id.
        let UserToServer::Subscribe(sub) =
            UserToServer::decode(&next_text(&mut ws).await, &Limits::default()).unwrap()
        else {
            panic!()
        };
        let err = format!(
            r#"{{"type":"error","code":"forbidden","message":"no","requestId":"{}"}}"#,
            sub.request_id
        );
        ws.send(Message::text(err)).await.unwrap();
        ws.send(Message::text(
            r#"{"type":"state_changed","deviceId":"lock-1","data":{"locked":false}}"#,
        ))
        .await
        .unwrap();
        // Keep the connection until the client is done.
        let _ = ws.next().await;
    });

    let (client, mut events) = UserClient::connect(UserConfig::new(
        url,
        Credentials::Development {
            user_id: "u1".into(),
        },
    ))
    .await
    .unwrap();
    client.subscribe(lock("lock-1")).await.unwrap();
    let Some(ServerToUser::DeviceStatus(status)) = events.recv().await else {
        panic!()
    };
    assert!(status.online);
    let result = client
        .command(
            lock("lock-1"),
            CommandRequest::new(HexPayload::from_bytes(vec![UNLOCK])),
        )
        .await
        .unwrap();
    assert_eq!(result.status, ResultStatus::Succeeded);
    assert_eq!(result.payload.unwrap().as_bytes(), &[0x82, 0x00]);
    let refused = client.subscribe(lock("lock-2")).await.unwrap_err();
    assert!(matches!(refused, ClientError::Refused(f) if f.code == ErrorCode::Forbidden));
    let Some(ServerToUser::Event(event)) = events.recv().await else {
        panic!()
    };
    assert_eq!(event.event_type.as_str(), "state_changed");
    client.close();
    server.abort();
}

#[tokio::test]
async fn a_user_request_fails_with_closed_when_the_connection_drops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, _, _) = accept(&listener).await;
        let _ = next_text(&mut ws).await;
        // Drop without answering.
    });
    let (client, _events) = UserClient::connect(UserConfig::new(
        url,
        Credentials::Development {
            user_id: "u".into(),
        },
    ))
    .await
    .unwrap();
    let err = client.subscribe(lock("x")).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_bridge_goes_on_to_the_next_node_when_its_node_goes() {
    let node_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = BridgeConfig::new(
        format!("ws://{}/ws", node_a.local_addr().unwrap()),
        Credentials::Development {
            user_id: "p".into(),
        },
        vec![lock("a")],
    )
    .with_fallback_urls([format!("ws://{}/ws", node_b.local_addr().unwrap())]);
    // A backoff far longer than the test: going on to the next node does not wait for it.
    config.backoff = Backoff {
        initial: Duration::from_hours(1),
        max: Duration::from_hours(1),
        multiplier: 1.0,
        jitter: 0.0,
    };
    let client = BridgeClient::start(
        config,
        Arc::new(SimulatedLocks::new([], LockBehaviour::default())),
    );
    let (ws, uri, _) = accept(&node_a).await;
    assert_eq!(uri, "/ws?userId=p&deviceId=a");
    client.wait_connected(1).await.unwrap();
    // Node A dies.
    drop(ws);
    drop(node_a);
    let (_ws, uri, _) = accept(&node_b).await;
    assert_eq!(
        uri, "/ws?userId=p&deviceId=a",
        "the same devices, at the next node"
    );
    client.wait_connected(2).await.unwrap();
}

/// A handler written for protocol 1.0 (only `write`) that answers every write with its
/// payload.
struct Echo;

#[async_trait::async_trait]
impl bridge_client::BleHandler for Echo {
    async fn write(&self, request: &BleWrite) -> Result<HexPayload, DeviceErrorCode> {
        Ok(request.payload.clone())
    }
}

/// A development-mode bridge holding `lock-1` with [`Echo`] as its handler, connecting to
/// `url`.
fn echo_client_holding_lock_1(url: String) -> BridgeClient {
    BridgeClient::start(
        BridgeConfig::new(
            url,
            Credentials::Development {
                user_id: "phone".into(),
            },
            vec![lock("lock-1")],
        ),
        Arc::new(Echo),
    )
}

/// A development-mode bridge holding `lock-1` with [`Echo`] as its handler, connected to a
/// scripted server: the client and the server's side of its WebSocket.
async fn echo_bridge_holding_lock_1() -> (BridgeClient, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let client = echo_client_holding_lock_1(url);
    let (ws, _, _) = accept(&listener).await;
    client.wait_connected(1).await.unwrap();
    (client, ws)
}

/// A handler written for protocol 1.0 (only `write`): it reports no stage, and its answers
/// are unchanged.
#[tokio::test]
async fn a_handler_that_reports_nothing_sends_only_its_answer() {
    let (client, mut ws) = echo_bridge_holding_lock_1().await;
    ws.send(Message::text(ble_write("r-1", "lock-1", &[7]).to_json()))
        .await
        .unwrap();
    let (stages, answer) = progress_then_answer(&mut ws, "r-1").await;
    assert!(stages.is_empty(), "{stages:?}");
    assert_eq!(
        answer.outcome,
        BleOutcome::Payload(HexPayload::from_bytes(vec![7]))
    );
    client.shutdown().await;
}

/// The client reads at most 4 KiB per system call; a frame larger than that (here ~6 KiB,
/// several frames of it back to back) is still read whole, and answered.
#[tokio::test]
async fn frames_larger_than_the_read_buffer_are_read_whole() {
    let (client, mut ws) = echo_bridge_holding_lock_1().await;
    let payloads: Vec<Vec<u8>> = (0..3u8)
        .map(|i| (0..3000u32).map(|b| (b % 251) as u8 ^ i).collect())
        .collect();
    for (i, payload) in payloads.iter().enumerate() {
        ws.feed(Message::text(
            ble_write(&format!("r-{i}"), "lock-1", payload).to_json(),
        ))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
    let limits = Limits {
        max_payload_bytes: 4096,
    };
    for (i, payload) in payloads.iter().enumerate() {
        let BridgeToServer::BleResponse(answer) =
            BridgeToServer::decode(&next_text(&mut ws).await, &limits).unwrap()
        else {
            panic!("not an answer");
        };
        assert_eq!(answer.request_id.as_str(), format!("r-{i}"));
        assert_eq!(
            answer.outcome,
            BleOutcome::Payload(HexPayload::from_bytes(payload.clone()))
        );
    }
    client.shutdown().await;
}

#[tokio::test]
async fn a_user_connects_to_the_next_node_when_the_first_is_down() {
    // A port nobody listens on any more: the first node is down.
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_url = format!("ws://{}/ws", down.local_addr().unwrap());
    drop(down);
    let node_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_b_url = format!("ws://{}/ws", node_b.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut ws, uri, _) = accept(&node_b).await;
        // Keep the connection until the client is done.
        let _ = ws.next().await;
        uri
    });
    let config = UserConfig::new(
        down_url.clone(),
        Credentials::Development {
            user_id: "u1".into(),
        },
    );
    // Alone, the down node is an error that says so.
    assert!(matches!(
        UserClient::connect(config.clone()).await,
        Err(ClientError::Connect(_))
    ));
    let (client, _events) = UserClient::connect(config.with_fallback_urls([node_b_url]))
        .await
        .expect("connected to the next node");
    drop(client);
    assert_eq!(server.await.unwrap(), "/ws?userId=u1");
}

/// A server that sends its first frames in the same packet as the handshake's answer: the
/// client reads them together, and the frames behind the answer are not lost.
#[tokio::test]
async fn frames_sent_right_behind_the_handshake_are_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let client = echo_client_holding_lock_1(url);
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        request.push(byte[0]);
    }
    let request = String::from_utf8(request).unwrap();
    let key = request
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    let mut packet = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    // Two `ble_write` frames (unmasked, server to client), the second cut in the middle.
    let mut frames = Vec::new();
    for id in ["r-1", "r-2"] {
        let text = ble_write(id, "lock-1", &[7]).to_json();
        frames.push(0x81);
        frames.push(126);
        frames.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(text.as_bytes());
    }
    let cut = frames.len() - 10;
    packet.extend_from_slice(&frames[..cut]);
    tcp.write_all(&packet).await.unwrap();
    client.wait_connected(1).await.unwrap();
    tcp.write_all(&frames[cut..]).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
    for id in ["r-1", "r-2"] {
        let (_, answer) = progress_then_answer(&mut ws, id).await;
        assert_eq!(
            answer.outcome,
            BleOutcome::Payload(HexPayload::from_bytes(vec![7]))
        );
    }
    client.shutdown().await;
}

//! The HTTP API over HTTP/2 with prior knowledge (h2c), beside HTTP/1.1 on the same port:
//! what a backend with one multiplexed connection gets.

use std::time::Duration;

use bridge_server::ServerConfig;
use serde_json::{Value, json};

use crate::support::*;

/// A client that speaks HTTP/2 from its first byte, over one connection.
fn http2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// POSTs a command to `device` over `client`; its status, HTTP version and JSON body.
async fn command_over(
    client: &reqwest::Client,
    server: &TestServer,
    device: &str,
    body: Value,
) -> (u16, reqwest::Version, Value) {
    let response = client
        .post(server.url(&format!("/v1/devices/{device}/commands")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let version = response.version();
    (status, version, response.json().await.unwrap())
}

/// `count` commands to `lock-1` sent at once over `client`, the `i`-th with payload `i` (two
/// hex digits); their statuses, versions and bodies in that order.
async fn commands_at_once(
    client: &reqwest::Client,
    server: &TestServer,
    count: u8,
) -> Vec<(u16, reqwest::Version, Value)> {
    futures_util::future::join_all((0..count).map(|i| {
        command_over(
            client,
            server,
            "lock-1",
            json!({"payload": format!("{i:02x}"), "timeoutMs": 30000}),
        )
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_flight_at_once_on_one_http2_connection_each_get_their_own_answer() {
    let server = TestServer::start().await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let client = http2_client();
    // More than the device's 16 places: the rest wait for one, on the same connection.
    let calls = commands_at_once(&client, &server, 40);
    let answers = async {
        // Each write is answered with its own payload twice over.
        for _ in 0..40 {
            let write = bridge.next_write().await;
            let payload = write["payload"].as_str().unwrap().repeat(2);
            bridge.answer(&write, &payload).await;
        }
    };
    let (results, ()) = tokio::join!(calls, answers);
    for (i, (status, version, body)) in results.into_iter().enumerate() {
        assert_eq!(status, 200, "{body}");
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert_eq!(body["status"], "succeeded");
        assert_eq!(body["payload"], format!("{i:02x}").repeat(2));
    }
    // HTTP/1.1 on the same port as before.
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_http2_stream_is_cancelled_while_it_waits_for_a_place_is_never_sent() {
    let mut config = ServerConfig::default();
    config.max_pending_per_device = 1;
    let server = TestServer::start_with(config, |b| b).await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let client = http2_client();
    // The first command takes the device's one place and is not answered yet.
    let first = tokio::spawn({
        let client = client.clone();
        let url = server.url("/v1/devices/lock-1/commands");
        async move {
            let response = client
                .post(url)
                .json(&json!({"payload":"01","timeoutMs":30000}))
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    });
    let write = bridge.next_write().await;
    assert_eq!(write["payload"], "01");
    // The second waits for the place; its caller gives up (its stream is reset).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        command_over(&client, &server, "lock-1", json!({"payload":"02"})),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the second command was answered: {gave_up:?}"
    );
    // The reset travels on the connection ahead of a later request: once that request is
    // answered, the server has read the reset (a command whose cancellation has not yet
    // reached the server when its place comes free is sent, as over HTTP/1.1).
    let barrier = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(barrier.status(), 200);
    bridge.answer(&write, "aa").await;
    assert_eq!(first.await.unwrap(), 200);
    // The next write the device gets is the third command's: the second was never sent.
    let third = command_over(&client, &server, "lock-1", json!({"payload":"03"}));
    let answer = async {
        let write = bridge.next_write().await;
        assert_eq!(write["payload"], "03", "the abandoned command was sent");
        bridge.answer(&write, "bb").await;
    };
    let ((status, _, body), ()) = tokio::join!(third, answer);
    assert_eq!((status, body["payload"].clone()), (200, json!("bb")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_cannot_be_opened_over_http2_and_is_told_to_use_http1() {
    let server = TestServer::start().await;
    let response = http2_client()
        .get(server.url("/ws?userId=u"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 505);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP/1.1"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_takes_no_more_streams_at_once_than_its_limit() {
    let mut config = ServerConfig::default();
    config.http2_max_streams = 2;
    let server = TestServer::start_with(config, |b| b).await;
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    let client = http2_client();
    let calls = commands_at_once(&client, &server, 6);
    let answers = async {
        for _ in 0..3 {
            // Two writes reach the device, and no third until one of them is answered.
            let a = bridge.next_write().await;
            let b = bridge.next_write().await;
            let third = tokio::time::timeout(Duration::from_millis(200), bridge.ws.recv()).await;
            assert!(third.is_err(), "a third stream was taken: {third:?}");
            bridge.answer(&a, "01").await;
            bridge.answer(&b, "01").await;
        }
    };
    let (results, ()) = tokio::join!(calls, answers);
    assert!(
        results.iter().all(|(status, _, _)| *status == 200),
        "{results:?}"
    );
}

//! Development mode serves loopback clients only (PROTOCOL.md 1.2): a foreign `Host` (DNS
//! rebinding) or `Origin` (a web page) is refused with 403 before anything happens.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::*;

/// Sends `request` (a whole HTTP/1.1 request) as raw bytes, so that its `Host` is exactly
/// what the test says; answers the status and the body (none after a 101).
async fn raw(server: &TestServer, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no status line in {head:?}"));
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if status == 101 || body.len() >= length {
                    return (status, body.to_owned());
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the connection closed before a whole answer: {text:?}"
            );
            answer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer in time")
}

/// A GET of `path` with `host` and, when given, `origin`.
fn get(path: &str, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n")
}

/// A WebSocket upgrade of `path` with `host` and, when given, `origin`.
fn upgrade(path: &str, host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A POST of a command that would be queued, with `host` and `origin`.
fn post_command(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let body = json!({"payload":"01","ifOffline":"queue","commandType":"unlock"}).to_string();
    format!(
        "POST /v1/devices/lock-1/commands HTTP/1.1\r\nHost: {host}\r\n{origin}\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn assert_forbidden(answer: &(u16, String), what: &str) {
    assert_eq!(answer.0, 403, "{what}: {answer:?}");
    let body: Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_refuses_a_non_loopback_host_on_every_route_and_the_ws_upgrade() {
    let server = TestServer::start().await;
    let host = format!("rebound.evil.example:{}", server.addr.port());
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/devices",
        "/no-such-path",
    ] {
        assert_forbidden(&raw(&server, &get(path, &host, None)).await, path);
    }
    assert_forbidden(
        &raw(&server, &upgrade("/ws?userId=mallory", &host, None)).await,
        "/ws",
    );
    assert_forbidden(
        &raw(
            &server,
            &upgrade("/ws?userId=m&deviceId=lock-1", &host, None),
        )
        .await,
        "/ws as a bridge",
    );
    assert_forbidden(
        &raw(&server, &post_command(&host, None)).await,
        "POST command",
    );
    // Refused before anything happened: nothing was queued, no bridge came online.
    let (status, list) = server.get("/v1/devices/lock-1/commands").await;
    assert_eq!((status, list), (200, json!({"commands":[]})));
    let (_, view) = server.get("/v1/devices/lock-1").await;
    assert_eq!(view["bridges"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_refuses_a_foreign_origin_even_with_a_loopback_host() {
    let server = TestServer::start().await;
    let host = server.addr.to_string();
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        assert_forbidden(
            &raw(&server, &post_command(&host, Some(origin))).await,
            origin,
        );
        assert_forbidden(
            &raw(&server, &get("/healthz", &host, Some(origin))).await,
            origin,
        );
    }
    // A page's WebSocket, through a real client.
    let mut request = server
        .ws_url("userId=mallory")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("https://evil.example"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
    let (status, list) = server.get("/v1/devices/lock-1/commands").await;
    assert_eq!((status, list), (200, json!({"commands":[]})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_still_serves_loopback_hosts_and_origins() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let answer = raw(&server, &get("/healthz", &host, None)).await;
        assert_eq!(answer.0, 200, "{host}: {answer:?}");
    }
    let host = format!("localhost:{port}");
    let answer = raw(&server, &post_command(&host, Some("http://localhost:5173"))).await;
    assert_eq!(answer.0, 202, "{answer:?}");
    let answer = raw(
        &server,
        &upgrade("/ws?userId=dev", &host, Some("http://127.0.0.1:3000")),
    )
    .await;
    assert_eq!(answer.0, 101, "{answer:?}");
    // The test clients' own requests (Host 127.0.0.1:port, no Origin); not lock-1, whose
    // queued command would be written before the pong.
    let mut bridge = Bridge::connect(&server, "phone", &["lock-9"]).await;
    bridge.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_mode_does_not_check_host_or_origin() {
    let server = TestServer::start_authenticated().await;
    let host = "bridge.example.com";
    let origin = Some("https://app.example.com");
    let answer = raw(&server, &get("/healthz", host, origin)).await;
    assert_eq!(answer.0, 200, "{answer:?}");
    // Still a 401 without a token, not a 403.
    let answer = raw(&server, &post_command(host, origin)).await;
    assert_eq!(answer.0, 401, "{answer:?}");
    let user = token("alice", "user", None, 3600);
    let answer = raw(
        &server,
        &upgrade(&format!("/ws?token={user}"), host, origin),
    )
    .await;
    assert_eq!(answer.0, 101, "{answer:?}");
}

/// Sends one keep-alive `GET /healthz` and reads until its whole answer has come.
async fn healthz(stream: &mut tokio::net::TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_unserved_until_one_ends() {
    let mut config = bridge_server::ServerConfig::default();
    config.max_connections = 2;
    let server = TestServer::start_with(config, |b| b).await;
    let mut first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Both served, and kept alive: they hold the two places.
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));

    // A third is left in the listen backlog: its request gets no answer while both stay.
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(500), healthz(&mut third));
    assert!(
        waiting.await.is_err(),
        "a third connection was served over the cap of 2"
    );

    // One ends: the third takes its place and its request (already sent) is answered.
    drop(first);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = third.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("served once a place is free");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));
}

/// A connection upgraded to a WebSocket keeps its place under `max_connections` for as long
/// as the WebSocket lives (the HTTP connection that carried the upgrade has ended by then),
/// and gives it back when the WebSocket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_keeps_its_connections_place_until_it_closes() {
    let mut config = bridge_server::ServerConfig::default();
    config.max_connections = 1;
    let server = TestServer::start_with(config, |b| b).await;
    // Answered 101: the upgrade's handler has handed the place to the WebSocket's task.
    let ws = Ws::connect(&server.ws_url("userId=phone-1&deviceId=lock-1")).await;

    // The cap is 1 and the WebSocket holds it: a new connection is not served.
    let mut waiting = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let served = tokio::time::timeout(std::time::Duration::from_millis(500), healthz(&mut waiting));
    assert!(
        served.await.is_err(),
        "a connection was served while a WebSocket held the only place"
    );

    // The WebSocket closes: the waiting connection takes the place.
    ws.close().await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = waiting.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("served once the WebSocket closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

/// The header-read timeout (1 s here): a connection that sends half a request head and
/// stops is closed after it, unanswered; one whose answer lasts longer (a live stream) is
/// not cut, however long the answer lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_read_timeout_closes_half_sent_heads_but_not_long_answers() {
    let mut config = bridge_server::ServerConfig::default();
    config.header_read_timeout_secs = 1;
    let server = TestServer::start_with(config, |b| b).await;

    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match half.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("a half-sent head is closed");
    let took = start.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900),
        "closed after {took:?}"
    );
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the stream's head")
            .unwrap();
        assert!(n > 0, "closed before the stream's head");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    // Well past the timeout, the stream is still open (nothing comes: no device, and the
    // first comment line is 15 s away).
    let after = tokio::time::timeout(std::time::Duration::from_millis(2500), async {
        stream.read(&mut chunk).await
    })
    .await;
    assert!(
        after.is_err(),
        "the stream ended or sent something within 2.5 s: {after:?}"
    );
}

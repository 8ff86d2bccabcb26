//! The command route's answers as a client reads them off the connection (`Server::serve`,
//! hyper, the route's fast path): status line, headers in order and body bytes. Each is the
//! router's answer to the same request (in process, `Server::router`) followed by hyper's
//! `date`, for every kind of bad input; a device's answer is serde's text byte for byte;
//! and the usual ones are written out here.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::Request;
use bridge_protocol::http::CommandResponse;
use bridge_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::support::*;

/// The body limit of the test server: small, so that 413 is easy to reach.
const LIMIT: usize = 64;

/// An answer as read off the connection.
#[derive(Debug, PartialEq, Eq)]
struct WireAnswer {
    /// `HTTP/1.1 200 OK`.
    status_line: String,
    /// Names lower-case, in the order they came.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// One `POST` to `target` as raw HTTP/1.1.
fn raw_post(target: &str, authorization: Option<&str>, content_type: &str, body: &[u8]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = format!("POST {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    if let Some(authorization) = authorization {
        let _ = write!(head, "authorization: {authorization}\r\n");
    }
    let _ = write!(
        head,
        "content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Sends `request` on a new connection and reads its answer (whose length is its
/// `content-length`), failing if it has not come within [`PATIENCE`].
async fn exchange(addr: SocketAddr, request: &[u8]) -> WireAnswer {
    tokio::time::timeout(PATIENCE, exchange_unbounded(addr, request))
        .await
        .expect("an answer within PATIENCE")
}

async fn exchange_unbounded(addr: SocketAddr, request: &[u8]) -> WireAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the answer's head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.parse().unwrap())
        .unwrap();
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the answer's body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "no more than its content-length");
    WireAnswer {
        status_line,
        headers,
        body,
    }
}

/// The answer without its `date` (checked to come last, as hyper adds it), for comparing.
fn without_date(mut answer: WireAnswer) -> WireAnswer {
    let (name, value) = answer.headers.pop().unwrap();
    assert_eq!(name, "date");
    assert!(value.ends_with(" GMT"), "{value}");
    answer
}

/// The router's answer to the same request, as it would go over the wire (without `date`).
async fn routed(
    server: &TestServer,
    target: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> WireAnswer {
    let mut request = Request::post(target).header("content-type", content_type);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let request = request.body(Body::from(body.to_vec())).unwrap();
    let router = server.server.as_ref().unwrap().router();
    let Ok(response) = router.oneshot(request).await;
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
        .collect();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec();
    WireAnswer {
        status_line: format!(
            "HTTP/1.1 {} {}",
            status.as_str(),
            status.canonical_reason().unwrap()
        ),
        headers,
        body,
    }
}

async fn authenticated_server() -> TestServer {
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    config.max_body_bytes = LIMIT;
    let mut server = TestServer::start_with(config, |b| b).await;
    server.service_token = Some(token("backend", "service", None, 3600));
    server
}

fn json_headers(length: usize) -> Vec<(String, String)> {
    vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("content-length".to_owned(), length.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_answered_on_the_wire_as_the_router_answers_them() {
    let server = authenticated_server().await;
    let service = format!("Bearer {}", server.service_token.as_deref().unwrap());
    let expired = format!("Bearer {}", token("backend", "service", None, -60));
    let user = format!("Bearer {}", token("alice", "user", Some(&["lock-1"]), 3600));
    let long_device = format!("/v1/devices/{}/commands", "d".repeat(300));
    let plain = "/v1/devices/lock-1/commands";
    let oversize = format!(r#"{{"payload":"{}"}}"#, "ab".repeat(LIMIT));
    let cases: Vec<(&str, Option<&str>, &str, &[u8])> = vec![
        // Tokens: missing, not a JWT, expired, not bearer, a user's.
        (plain, None, "application/json", br#"{"payload":"03"}"#),
        (
            plain,
            Some("Bearer not-a-jwt"),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
        (
            plain,
            Some(&expired),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
        (
            plain,
            Some("Basic YTpi"),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
        (
            plain,
            Some(&user),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
        // A device id that cannot be one.
        (
            &long_device,
            Some(&service),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
        // Bodies: over the limit, not UTF-8, not JSON, empty, no payload, a bad payload,
        // an unknown device type.
        (
            plain,
            Some(&service),
            "application/json",
            oversize.as_bytes(),
        ),
        (
            plain,
            Some(&service),
            "application/json",
            &[0xff, 0xfe, b'{', b'}'],
        ),
        (plain, Some(&service), "application/json", b"not json"),
        (plain, Some(&service), "application/json", b""),
        (plain, Some(&service), "application/json", b"{}"),
        (
            plain,
            Some(&service),
            "application/json",
            br#"{"payload":"zz"}"#,
        ),
        (
            plain,
            Some(&service),
            "application/json",
            br#"{"payload":"03","deviceType":"nope"}"#,
        ),
        // Any content type is read as JSON; the device is offline.
        (plain, Some(&service), "text/plain", br#"{"payload":"03"}"#),
        (
            plain,
            Some(&service),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
    ];
    for (target, authorization, content_type, body) in cases {
        let wire = exchange(
            server.addr,
            &raw_post(target, authorization, content_type, body),
        )
        .await;
        let wire = without_date(wire);
        let expected = routed(&server, target, authorization, content_type, body).await;
        assert_eq!(wire, expected, "{target} {authorization:?} {content_type}");
        assert_eq!(wire.headers, json_headers(wire.body.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usual_command_answers_byte_for_byte() {
    let server = authenticated_server().await;
    let service = format!("Bearer {}", server.service_token.as_deref().unwrap());
    let plain = "/v1/devices/lock-1/commands";
    let answer = |status_line: &str, body: &[u8]| WireAnswer {
        status_line: status_line.to_owned(),
        headers: json_headers(body.len()),
        body: body.to_vec(),
    };
    let offline = exchange(
        server.addr,
        &raw_post(
            plain,
            Some(&service),
            "application/json",
            br#"{"payload":"03"}"#,
        ),
    )
    .await;
    assert_eq!(
        without_date(offline),
        answer(
            "HTTP/1.1 503 Service Unavailable",
            br#"{"status":"offline"}"#
        )
    );
    let missing = exchange(
        server.addr,
        &raw_post(plain, None, "application/json", br#"{"payload":"03"}"#),
    )
    .await;
    assert_eq!(
        without_date(missing),
        answer(
            "HTTP/1.1 401 Unauthorized",
            br#"{"error":{"code":"unauthorized","message":"missing credentials: a bearer token"}}"#
        )
    );
    let oversize = format!(r#"{{"payload":"{}"}}"#, "ab".repeat(LIMIT));
    let too_large = exchange(
        server.addr,
        &raw_post(
            plain,
            Some(&service),
            "application/json",
            oversize.as_bytes(),
        ),
    )
    .await;
    assert_eq!(
        without_date(too_large),
        answer(
            "HTTP/1.1 413 Payload Too Large",
            br#"{"error":{"code":"invalid_request","message":"the body is over the limit of 64 bytes"}}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_s_answer_goes_over_the_wire_as_serde_s_text_with_its_length() {
    let server = authenticated_server().await;
    let service = format!("Bearer {}", server.service_token.as_deref().unwrap());
    let bridge_token = token("phone", "bridge", Some(&["lock-1"]), 3600);
    let mut bridge = Bridge {
        ws: Ws::connect_with(&server.ws_url("deviceId=lock-1"), Some(&bridge_token)).await,
    };
    server.wait_online("lock-1", 1).await;
    let request = raw_post(
        "/v1/devices/lock-1/commands",
        Some(&service),
        "application/json",
        br#"{"payload":"03","timeoutMs":30000}"#,
    );
    let call = exchange(server.addr, &request);
    let reply = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "01").await;
        write
    };
    let (wire, write) = tokio::join!(call, reply);
    let wire = without_date(wire);
    assert_eq!(wire.status_line, "HTTP/1.1 200 OK");
    assert_eq!(wire.headers, json_headers(wire.body.len()));
    let parsed: CommandResponse = serde_json::from_slice(&wire.body).unwrap();
    assert_eq!(serde_json::to_vec(&parsed).unwrap(), wire.body);
    let value: serde_json::Value = serde_json::from_slice(&wire.body).unwrap();
    assert_eq!(value["status"], "succeeded");
    assert_eq!(value["payload"], "01");
    assert_eq!(value["requestId"], write["requestId"]);
}

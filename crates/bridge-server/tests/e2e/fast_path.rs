//! `Server::service` (the command route recognised in front of the router) answers every
//! request exactly as `Server::router` does: status, headers and body, for any method,
//! path, token and body, the paths its fast path must leave to the router included
//! (percent-encoded or empty segments, a trailing `/`, other methods).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use bridge_server::{Server, ServerConfig};
use proptest::prelude::*;
use tower::ServiceExt;

use crate::support::{SECRET, token};

/// The body limit of the test server: small, so that 413 is easy to reach.
const LIMIT: usize = 64;

/// One request, built twice (a body can be sent once).
#[derive(Debug, Clone)]
struct Spec {
    method: &'static str,
    target: String,
    authorization: Option<String>,
    body: Vec<u8>,
    /// Sent in two chunks (split at this byte), or in one.
    split: Option<usize>,
}

impl Spec {
    fn request(&self) -> Option<Request<Body>> {
        let body = match self.split {
            Some(at) if at < self.body.len() => {
                let (a, b) = self.body.split_at(at);
                let chunks: Vec<Result<Bytes, Infallible>> =
                    vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
                Body::from_stream(futures_util::stream::iter(chunks))
            }
            _ => Body::from(self.body.clone()),
        };
        let mut builder = Request::builder()
            .method(self.method)
            .uri(self.target.as_str())
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            builder = builder.header("authorization", authorization.as_str());
        }
        builder.body(body).ok()
    }
}

/// An answer as a client sees it: status, headers (in order) and body.
type Answer = (u16, Vec<(String, Vec<u8>)>, Bytes);

async fn answer(response: Response<Body>) -> Answer {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, body)
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: Server,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(async {
            let mut config = ServerConfig::default();
            config.jwt_secret = Some(SECRET.into());
            config.max_body_bytes = LIMIT;
            Server::builder(config).build().unwrap()
        });
        Self { runtime, server }
    }

    /// The answers of the service and of the router to `spec` (`None`: not a request
    /// `http` can build).
    fn both(&self, spec: &Spec) -> Option<(Answer, Answer)> {
        let (a, b) = (spec.request()?, spec.request()?);
        self.runtime.block_on(async {
            let Ok(fast) = self.server.service().oneshot(a).await;
            let Ok(routed) = self.server.router().oneshot(b).await;
            Some((answer(fast).await, answer(routed).await))
        })
    }
}

fn service_token() -> String {
    format!("Bearer {}", token("backend", "service", None, 3600))
}

fn tokens() -> Vec<Option<String>> {
    vec![
        None,
        Some(service_token()),
        Some(format!(
            "Bearer {}",
            token("alice", "user", Some(&["lock-1"]), 3600)
        )),
        Some("Bearer not-a-jwt".into()),
        Some(token("backend", "service", None, 3600)),
    ]
}

fn bodies() -> Vec<Vec<u8>> {
    vec![
        br#"{"payload":"03"}"#.to_vec(),
        br#"{"payload":"03","timeoutMs":1}"#.to_vec(),
        br#"{"payload":"zz"}"#.to_vec(),
        b"{}".to_vec(),
        b"".to_vec(),
        b"not json".to_vec(),
        vec![0xff, 0xfe, b'{', b'}'],
        format!(r#"{{"payload":"{}"}}"#, "ab".repeat(LIMIT)).into_bytes(),
        br#"{"payload":"03","ifOffline":"fail","deviceType":"nope"}"#.to_vec(),
    ]
}

const METHODS: &[&str] = &["POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Edge cases written out: each is answered by the service as by the router, and the
/// fast path does take the plain command route (an offline device: 503 `offline`).
#[test]
fn the_service_answers_edge_cases_as_the_router_does() {
    let fixture = Fixture::new();
    let targets = [
        "/v1/devices/lock-1/commands",
        "/v1/devices/lock-1/commands?x=1",
        "/v1/devices/lock-1/commands/",
        "/v1/devices//commands",
        "/v1/devices/a%2Fb/commands",
        "/v1/devices/%6Cock-1/commands",
        "/v1/devices/%zz/commands",
        "/v1/devices/%FF/commands",
        "/v1/devices/lock%201/commands",
        "/v1/devices/a/b/commands",
        "/v1/devices/commands",
        "/v1/devices/lock-1/Commands",
        "/V1/devices/lock-1/commands",
        "/v1//devices/lock-1/commands",
        "//v1/devices/lock-1/commands",
        "/v1/devices/lock-1/commandsx",
        "/v1/devices/lock-1/events",
        "/v1/devices/{device_id}/commands",
        "/v1/devices/*/commands",
        "/v1/devices/-/commands",
        "/v1/devices/\u{e9}/commands",
        "/v1/devices/%C3%A9/commands",
        "http://127.0.0.1/v1/devices/lock-1/commands",
    ];
    let mut compared = 0;
    for target in targets {
        for method in METHODS {
            for authorization in tokens() {
                for (i, body) in bodies().into_iter().enumerate() {
                    let spec = Spec {
                        method,
                        target: target.into(),
                        authorization: authorization.clone(),
                        body,
                        split: (i % 2 == 0).then_some(3),
                    };
                    let Some((fast, routed)) = fixture.both(&spec) else {
                        continue;
                    };
                    assert_eq!(fast, routed, "{spec:?}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 5000, "{compared} requests compared");
    // The fast path's own answers are the command route's.
    let spec = Spec {
        method: "POST",
        target: "/v1/devices/lock-1/commands".into(),
        authorization: Some(service_token()),
        body: br#"{"payload":"03"}"#.to_vec(),
        split: None,
    };
    let (fast, _) = fixture.both(&spec).unwrap();
    assert_eq!(fast.0, 503);
    assert_eq!(&fast.2[..], br#"{"status":"offline"}"#);
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => "[a-zA-Z0-9._~-]{1,12}",
        // Percent signs, slashes, reserved and odd characters, anywhere.
        3 => proptest::collection::vec(
            prop_oneof![
                Just("%".to_owned()),
                Just("/".to_owned()),
                Just("%2F".to_owned()),
                Just("%2f".to_owned()),
                Just("%6C".to_owned()),
                Just("%FF".to_owned()),
                Just("%C3%A9".to_owned()),
                Just("+".to_owned()),
                Just(":".to_owned()),
                Just("{".to_owned()),
                Just("*".to_owned()),
                Just("\u{e9}".to_owned()),
                "[a-z0-9-]{1,4}",
            ],
            1..5
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            6 => Just("/v1/devices/"),
            1 => Just("/v1/devices"),
            1 => Just("/v1/commands/"),
            1 => Just("/v1//devices/"),
        ],
        segment(),
        prop_oneof![
            6 => Just("/commands"),
            1 => Just("/commands/"),
            1 => Just(""),
            1 => Just("/events"),
            1 => Just("/commands/x"),
            1 => Just("/Commands"),
        ],
        prop_oneof![Just(""), Just("?"), Just("?a=b"), Just("#f")],
    )
        .prop_map(|(prefix, segment, suffix, query)| format!("{prefix}{segment}{suffix}{query}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Over generated paths, methods, tokens and bodies (one chunk or two): the service
    /// answers exactly what the router answers.
    #[test]
    fn the_service_answers_generated_requests_as_the_router_does(
        method in prop_oneof![3 => Just("POST"), 2 => proptest::sample::select(METHODS)],
        target in target(),
        authorization in proptest::sample::select(tokens()),
        body in proptest::sample::select(bodies()),
        split in proptest::option::of(0usize..20),
    ) {
        thread_local! {
            static FIXTURE: Fixture = Fixture::new();
        }
        let spec = Spec { method, target, authorization, body, split };
        let both = FIXTURE.with(|fixture| fixture.both(&spec));
        if let Some((fast, routed)) = both {
            prop_assert_eq!(fast, routed, "{:?}", spec);
        }
    }
}

//! PROTOCOL.md 1: JWT roles and device claims, refusals before the upgrade.

use std::time::Duration;

use bridge_hub::HubConfig;
use bridge_server::ServerConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refusals_come_before_the_upgrade_with_401_or_403() {
    let server = TestServer::start_authenticated().await;
    let url = server.ws_url("");

    let (status, body) = refused_upgrade(&url, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, _) = refused_upgrade(&url, Some("not-a-jwt")).await;
    assert_eq!(status, 401);

    let expired = token("alice", "user", None, -60);
    let (status, body) = refused_upgrade(&url, Some(&expired)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");

    let mut forged = token("alice", "user", None, 3600);
    forged.push('x');
    let (status, _) = refused_upgrade(&url, Some(&forged)).await;
    assert_eq!(status, 401);

    let service = token("backend", "service", None, 3600);
    let (status, body) = refused_upgrade(&url, Some(&service)).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");

    let bridge = token("phone", "bridge", Some(&["lock-1"]), 3600);
    let (status, body) = refused_upgrade(&server.ws_url("deviceId=lock-2"), Some(&bridge)).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");

    // Development-mode parameters give nothing in authenticated mode.
    let (status, _) = refused_upgrade(&server.ws_url("userId=alice&deviceId=lock-1"), None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_a_service_token() {
    let server = TestServer::start_authenticated().await;
    let plain = reqwest::Client::new();
    let url = server.url("/v1/devices/lock-1");

    let response = plain.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let user = token("alice", "user", Some(&["lock-1"]), 3600);
    let response = plain.get(&url).bearer_auth(user).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, _) = server.get("/v1/devices/lock-1").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_configured_to_need_a_service_token() {
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    config.metrics_require_token = true;
    let server = TestServer::start_with(config, |b| b).await;
    let plain = reqwest::Client::new();
    let response = plain.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = plain
        .get(server.url("/metrics"))
        .bearer_auth(token("backend", "service", None, 60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_token_watches_and_commands_only_its_devices() {
    let server = TestServer::start_authenticated().await;
    let user_token = token("alice", "user", Some(&["lock-1"]), 3600);
    // The token's devices are the initial subscriptions; a `deviceId` parameter on a user
    // token does not make it a bridge.
    let mut alice = Ws::connect_with(&server.ws_url("deviceId=lock-2"), Some(&user_token)).await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"device_status","deviceId":"lock-1","online":false,"bleConnected":null})
    );
    let (_, view) = server.get("/v1/devices/lock-2").await;
    assert_eq!(view["bridges"], 0);

    alice
        .send(json!({"type":"subscribe","requestId":"s-1","deviceId":"lock-2"}))
        .await;
    let error = alice.recv().await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["requestId"], "s-1");

    alice
        .send(json!({"type":"command","requestId":"c-1","deviceId":"lock-2","payload":"01"}))
        .await;
    let error = alice.recv().await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["requestId"], "c-1");

    alice
        .send(json!({"type":"command","requestId":"c-2","deviceId":"lock-1","payload":"01"}))
        .await;
    assert_eq!(alice.recv().await["status"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_token_bridges_only_its_devices_and_works_as_a_query_parameter() {
    let server = TestServer::start_authenticated().await;
    let bridge_token = token("phone", "bridge", Some(&["lock-1", "lock-2"]), 3600);
    let url = server.ws_url(&format!("token={bridge_token}&deviceId=lock-1"));
    let mut bridge = Bridge {
        ws: Ws::connect(&url).await,
    };
    server.wait_online("lock-1", 1).await;

    // Claiming a granted device with ble_status works; any other is forbidden.
    bridge.status("lock-2", true, None).await;
    bridge.status("lock-3", true, None).await;
    let error = bridge.ws.recv().await;
    assert_eq!(error["code"], "forbidden");
    server.wait_online("lock-2", 1).await;
    let (_, view) = server.get("/v1/devices/lock-3").await;
    assert_eq!(view["online"], false);

    let call = server.command("lock-2", json!({"payload":"01"}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "01").await;
    };
    let ((status, _), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_while_connected_is_closed_with_1008() {
    let mut config = ServerConfig::default();
    config.jwt_secret = Some(SECRET.into());
    let mut hub = HubConfig::default();
    hub.ping_interval = Duration::from_millis(200);
    let server = TestServer::start_with(config, |b| b.hub_config(hub)).await;
    let short = token("alice", "user", None, 2);
    let mut alice = Ws::connect_with(&server.ws_url(""), Some(&short)).await;
    let close = alice.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_exp_near_u64_max_or_a_bad_sub_is_401_and_the_server_keeps_serving() {
    let server = TestServer::start_authenticated().await;
    let claims = |sub: &str, exp: u64| bridge_server::auth::Claims {
        sub: sub.into(),
        role: serde_json::from_value(json!("user")).unwrap(),
        devices: None,
        exp,
    };
    let far = claims("alice", u64::MAX - 1)
        .encode(SECRET.as_bytes())
        .unwrap();
    let (status, body) = refused_upgrade(&server.ws_url(""), Some(&far)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let far_service = bridge_server::auth::Claims {
        role: serde_json::from_value(json!("service")).unwrap(),
        ..claims("backend", u64::MAX)
    }
    .encode(SECRET.as_bytes())
    .unwrap();
    let response = reqwest::Client::new()
        .get(server.url("/v1/devices"))
        .bearer_auth(far_service)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let long = "u".repeat(129);
    for sub in ["", long.as_str(), "ali\u{0}ce"] {
        let bad = claims(sub, bridge_server::auth::unix_now() + 3600)
            .encode(SECRET.as_bytes())
            .unwrap();
        let (status, _) = refused_upgrade(&server.ws_url(""), Some(&bad)).await;
        assert_eq!(status, 401, "sub {sub:?}");
    }
    // Still serving.
    let alice = token("alice", "user", None, 3600);
    Ws::connect_with(&server.ws_url(""), Some(&alice)).await;
}

/// Which requests need the `service` token, and what each answers without one, with a user
/// token and with a service token: every `/v1` route (a method it does not serve included)
/// is 401/403 before anything else, `/v1/openapi.json` and the operational routes are open,
/// and a path no route serves, under `/v1` or not, is 404 `not_found` whatever the token.
/// (The table was read from the server when `/v1` was a nested router; the routes are now
/// registered with their full paths and must answer exactly the same.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn which_routes_need_the_service_token_and_what_they_answer() {
    let server = TestServer::start_authenticated().await;
    let plain = reqwest::Client::new();
    let service = server.service_token.clone().unwrap();
    let user = token("alice", "user", Some(&["lock-1"]), 3600);
    // (method, path, [without a token, user token, service token]) -> (status, error code
    // or "" when the body is not an error body).
    type Answers = [(u16, &'static str); 3];
    let cases: &[(&str, &str, Answers)] = &[
        (
            "GET",
            "/v1/devices",
            [(401, "unauthorized"), (403, "forbidden"), (200, "")],
        ),
        (
            "POST",
            "/v1/devices",
            [(401, "unauthorized"), (403, "forbidden"), (405, "")],
        ),
        (
            "GET",
            "/v1/devices/lock-1",
            [(401, "unauthorized"), (403, "forbidden"), (200, "")],
        ),
        (
            "GET",
            "/v1/devices/lock-1/commands",
            [(401, "unauthorized"), (403, "forbidden"), (200, "")],
        ),
        (
            "DELETE",
            "/v1/devices/lock-1/commands",
            [(401, "unauthorized"), (403, "forbidden"), (405, "")],
        ),
        (
            "POST",
            "/v1/devices/lock-1/commands",
            [
                (401, "unauthorized"),
                (403, "forbidden"),
                (400, "invalid_request"),
            ],
        ),
        (
            "GET",
            "/v1/commands/nope/confirm",
            [(401, "unauthorized"), (403, "forbidden"), (405, "")],
        ),
        (
            "POST",
            "/v1/commands/nope/cancel",
            [
                (401, "unauthorized"),
                (403, "forbidden"),
                (404, "not_found"),
            ],
        ),
        (
            "GET",
            "/v1/device-types",
            [(401, "unauthorized"), (403, "forbidden"), (200, "")],
        ),
        (
            "GET",
            "/v1/commands/nope",
            [
                (401, "unauthorized"),
                (403, "forbidden"),
                (404, "not_found"),
            ],
        ),
        (
            "POST",
            "/v1/devices/lock-1/events",
            [
                (401, "unauthorized"),
                (403, "forbidden"),
                (400, "invalid_request"),
            ],
        ),
        (
            "GET",
            "/v1/stream?deviceId=",
            [
                (401, "unauthorized"),
                (403, "forbidden"),
                (400, "invalid_request"),
            ],
        ),
        ("GET", "/v1/openapi.json", [(200, ""), (200, ""), (200, "")]),
        (
            "POST",
            "/v1/openapi.json",
            [(405, ""), (405, ""), (405, "")],
        ),
        (
            "GET",
            "/v1/nothing-here",
            [(404, "not_found"), (404, "not_found"), (404, "not_found")],
        ),
        (
            "GET",
            "/v1/devices/",
            [(404, "not_found"), (404, "not_found"), (404, "not_found")],
        ),
        (
            "GET",
            "/v1",
            [(404, "not_found"), (404, "not_found"), (404, "not_found")],
        ),
        (
            "GET",
            "/v1/",
            [(404, "not_found"), (404, "not_found"), (404, "not_found")],
        ),
        (
            "GET",
            "/v2/devices",
            [(404, "not_found"), (404, "not_found"), (404, "not_found")],
        ),
        ("GET", "/healthz", [(200, ""), (200, ""), (200, "")]),
        ("DELETE", "/healthz", [(405, ""), (405, ""), (405, "")]),
    ];
    let mut mismatches = Vec::new();
    for (method, path, expected) in cases {
        for (i, bearer) in [None, Some(&user), Some(&service)].into_iter().enumerate() {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = plain.request(method.clone(), server.url(path));
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if (status, code.as_str()) != expected[i] {
                mismatches.push(format!(
                    "{method} {path} with {}: {status} {code:?}, expected {:?}",
                    ["no token", "a user token", "a service token"][i],
                    expected[i]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // A method a route does not serve: whatever the answer (401, 403, 405), it names the
    // route's methods in `Allow`.
    let wrong_methods = [
        ("POST", "/v1/devices", "GET,HEAD"),
        ("DELETE", "/v1/devices/lock-1/commands", "POST,GET,HEAD"),
        ("GET", "/v1/commands/nope/confirm", "POST"),
        ("PUT", "/v1/stream", "GET,HEAD"),
    ];
    for (method, path, allow) in wrong_methods {
        for bearer in [None, Some(&user), Some(&service)] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = plain.request(method.clone(), server.url(path));
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let got = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(got.as_deref(), Some(allow), "{method} {path} ({status})");
        }
    }
}

/// The `service` token is checked by an extractor that each `/v1` handler names (not by a
/// layer around the routes), so a route added without it would be open. This walks the API's
/// own description instead of a hand-made list: every operation `/v1/openapi.json` documents
/// as needing the bearer token (and not as optionally so, like `/metrics`) answers 401
/// without a token and 403 with a `user` token, whatever its body would have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_documented_as_needing_the_service_token_refuses_a_request_without_it() {
    let server = TestServer::start_authenticated().await;
    let plain = reqwest::Client::new();
    let user = token("alice", "user", Some(&["lock-1"]), 3600);
    let document: serde_json::Value = plain
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = document["paths"]
        .as_object()
        .expect("the document lists paths");
    let mut refused = 0;
    let mut mismatches = Vec::new();
    for (template, item) in paths {
        let path = template
            .replace("{deviceId}", "lock-1")
            .replace("{commandId}", "9b2e4c1a-57f0-4f0e-9d5c-2f1b8f0c6a31");
        assert!(
            !path.contains('{'),
            "a path parameter this test does not fill: {template}"
        );
        for (method, operation) in item.as_object().expect("a path item is an object") {
            let Ok(method) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            let requirements = operation["security"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let needs_token = !requirements.is_empty()
                && requirements
                    .iter()
                    .all(|r| r.as_object().is_some_and(|r| !r.is_empty()));
            if !needs_token {
                continue;
            }
            for (bearer, expected) in [(None, 401), (Some(&user), 403)] {
                let mut request = plain.request(method.clone(), server.url(&path));
                if let Some(bearer) = bearer {
                    request = request.bearer_auth(bearer);
                }
                let status = request.send().await.unwrap().status().as_u16();
                if status != expected {
                    mismatches.push(format!(
                        "{method} {path}: {status} with {}, expected {expected}",
                        if bearer.is_some() {
                            "a user token"
                        } else {
                            "no token"
                        }
                    ));
                }
            }
            refused += 1;
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // Every operation of PROTOCOL.md 4 but the description itself (the drift test in
    // `openapi.rs` ties the document to the contract).
    assert!(refused >= 10, "only {refused} operations checked");
}

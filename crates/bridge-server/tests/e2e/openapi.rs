//! `GET /v1/openapi.json` (issue 15): the OpenAPI 3.1 document against PROTOCOL.md section 4
//! (every endpoint and status it lists), against the official OpenAPI 3.1 JSON Schema, and
//! against the server's real answers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::support::*;

/// An endpoint: method (upper case) and path, as PROTOCOL.md writes it.
type Endpoint = (String, String);

/// What PROTOCOL.md section 4 lists.
#[derive(Debug)]
struct Contract {
    /// Every endpoint, with the statuses written in its own heading, bullet or paragraph.
    endpoints: BTreeMap<Endpoint, BTreeSet<u16>>,
    /// The statuses section 4's introduction gives every endpoint of role `service`
    /// (`unauthorized` (401), `forbidden` (403)).
    service_statuses: BTreeSet<u16>,
}

/// Endpoints the document may have although PROTOCOL.md section 4 does not list them, each
/// with the reason.
const ALLOWED_EXTRA: &[(&str, &str, &str)] = &[(
    "GET",
    "/v1/openapi.json",
    "the document itself (issue 15), not part of the wire contract",
)];

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap()
}

/// The `METHOD /path` written in backquotes in `text`, in order.
fn endpoints_in(text: &str) -> Vec<Endpoint> {
    let mut found = Vec::new();
    for piece in text.split('`').skip(1).step_by(2) {
        let mut words = piece.split(' ');
        if let (Some(method), Some(path), None) = (words.next(), words.next(), words.next())
            && ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method)
            && path.starts_with('/')
        {
            found.push((method.to_owned(), path.to_owned()));
        }
    }
    found
}

/// The HTTP statuses (three digits, 100 to 599, as a word of their own) in `text`, except
/// one said not to happen ("…, not 404").
fn statuses_in(text: &str) -> BTreeSet<u16> {
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let word_before = start > 0 && (bytes[start - 1].is_ascii_alphanumeric());
        let decimal = (start > 0 && bytes[start - 1] == b'.')
            || (i < bytes.len()
                && bytes[i] == b'.'
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        let word_after = i < bytes.len() && bytes[i].is_ascii_alphabetic();
        if i - start != 3 || word_before || decimal || word_after {
            continue;
        }
        let negated = text[..start].trim_end().ends_with(" not");
        let code: u16 = text[start..i].parse().unwrap();
        if (100..600).contains(&code) && !negated {
            found.insert(code);
        }
    }
    found
}

/// Reads PROTOCOL.md section 4.
///
/// A heading that names an endpoint (`### 4.1 \`POST …\``) owns everything up to the next
/// heading; under other headings each bullet and each paragraph is a unit of its own, owned
/// by the first endpoint it names (`* \`GET /v1/commands/{commandId}\` → …`,
/// `\`GET /v1/stream\` (role …`). The statuses of a unit are its owner's. Every endpoint named
/// anywhere in the section is an endpoint of the contract.
fn parse_contract(markdown: &str) -> Contract {
    let start = markdown
        .find("\n## 4.")
        .expect("PROTOCOL.md has a section 4");
    let end = markdown[start + 1..]
        .find("\n## ")
        .map_or(markdown.len(), |e| start + 1 + e);
    let section = &markdown[start..end];

    // Units: (text, owned by a heading that names an endpoint).
    let mut units: Vec<String> = Vec::new();
    let mut intro = String::new();
    let mut current = String::new();
    let mut in_heading_unit = false;
    let mut seen_heading = false;
    let flush = |current: &mut String, units: &mut Vec<String>| {
        if !current.trim().is_empty() {
            units.push(std::mem::take(current));
        }
        current.clear();
    };
    for line in section.lines() {
        if line.starts_with("### ") {
            flush(&mut current, &mut units);
            seen_heading = true;
            in_heading_unit = !endpoints_in(line).is_empty();
            current.push_str(line);
            current.push('\n');
            if !in_heading_unit {
                flush(&mut current, &mut units);
            }
            continue;
        }
        if !seen_heading {
            intro.push_str(line);
            intro.push('\n');
            continue;
        }
        if !in_heading_unit && (line.trim().is_empty() || line.starts_with("* ")) {
            flush(&mut current, &mut units);
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, &mut units);

    let mut endpoints: BTreeMap<Endpoint, BTreeSet<u16>> = BTreeMap::new();
    for endpoint in endpoints_in(section) {
        endpoints.entry(endpoint).or_default();
    }
    for unit in &units {
        if let Some(owner) = endpoints_in(unit).into_iter().next() {
            endpoints
                .entry(owner)
                .or_default()
                .extend(statuses_in(unit));
        }
    }
    // The introduction's statuses in parentheses: `unauthorized` (401), `forbidden` (403).
    let service_statuses = intro
        .split('(')
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .filter_map(|s| s.parse::<u16>().ok())
        .collect();
    Contract {
        endpoints,
        service_statuses,
    }
}

/// Every operation of an OpenAPI document with its response statuses.
fn document_endpoints(doc: &Value) -> BTreeMap<Endpoint, BTreeSet<u16>> {
    let mut found = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse::<u16>().unwrap())
                .collect();
            found.insert((method.to_uppercase(), path.clone()), statuses);
        }
    }
    found
}

/// What the document misses of the contract, and what it has that the contract does not
/// list (beyond [`ALLOWED_EXTRA`]). Empty when they agree.
fn drift(contract: &Contract, doc: &Value) -> Vec<String> {
    let documented = document_endpoints(doc);
    let mut problems = Vec::new();
    for ((method, path), statuses) in &contract.endpoints {
        let Some(have) = documented.get(&(method.clone(), path.clone())) else {
            problems.push(format!(
                "{method} {path}: in PROTOCOL.md 4, not in the document"
            ));
            continue;
        };
        let mut wanted = statuses.clone();
        if path.starts_with("/v1/") {
            wanted.extend(&contract.service_statuses);
        }
        for status in wanted.difference(have) {
            problems.push(format!(
                "{method} {path}: status {status} is in PROTOCOL.md 4, not in the document"
            ));
        }
    }
    for (method, path) in documented.keys() {
        let listed = contract
            .endpoints
            .contains_key(&(method.clone(), path.clone()));
        let allowed = ALLOWED_EXTRA
            .iter()
            .any(|(m, p, _)| m == method && p == path);
        if !listed && !allowed {
            problems.push(format!(
                "{method} {path}: in the document, not in PROTOCOL.md 4"
            ));
        }
    }
    problems
}

/// The document as an authenticated server serves it to a client without a token.
async fn served_document() -> Value {
    let server = TestServer::start_authenticated().await;
    let response = reqwest::get(server.url("/v1/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "served as JSON"
    );
    response.json().await.unwrap()
}

#[test]
fn the_contract_reader_finds_every_endpoint_and_status_of_protocol_section_4() {
    let contract = parse_contract(&protocol_md());
    let statuses = |method: &str, path: &str| -> Vec<u16> {
        contract.endpoints[&(method.to_owned(), path.to_owned())]
            .iter()
            .copied()
            .collect()
    };
    assert_eq!(contract.endpoints.len(), 13, "{contract:#?}");
    assert_eq!(
        statuses("POST", "/v1/devices/{deviceId}/commands"),
        [200, 202, 400, 404, 429, 502, 503, 504]
    );
    assert_eq!(
        statuses("POST", "/v1/commands/{commandId}/confirm"),
        [200, 409]
    );
    assert_eq!(
        statuses("POST", "/v1/commands/{commandId}/cancel"),
        [200, 409]
    );
    assert_eq!(
        statuses("POST", "/v1/devices/{deviceId}/events"),
        [202, 400]
    );
    // "… not 404": a device never seen is answered 200.
    assert!(statuses("GET", "/v1/devices/{deviceId}").is_empty());
    assert_eq!(statuses("GET", "/healthz"), [200]);
    assert_eq!(statuses("GET", "/readyz"), [200, 503]);
    for endpoint in [
        ("GET", "/v1/commands/{commandId}"),
        ("GET", "/v1/devices/{deviceId}/commands"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/device-types"),
        ("GET", "/metrics"),
        ("GET", "/v1/stream"),
    ] {
        assert!(
            contract
                .endpoints
                .contains_key(&(endpoint.0.to_owned(), endpoint.1.to_owned())),
            "{endpoint:?}"
        );
    }
    assert_eq!(
        contract
            .service_statuses
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [401, 403]
    );
}

#[test]
fn statuses_are_read_as_words_and_a_status_said_not_to_happen_is_not_one() {
    let found = |text| statuses_in(text).into_iter().collect::<Vec<_>>();
    assert_eq!(found("→ 200 with the command; 409 `conflict`"), [200, 409]);
    assert_eq!(found("| 400 / 404 | error body |"), [400, 404]);
    assert_eq!(found("is `{\"online\":false}`, not 404"), Vec::<u16>::new());
    assert_eq!(
        found("timeoutMs 10000, 1 to 120000, 3600 s, 4xx, 4.1, 512 bytes"),
        [512]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_and_status_of_protocol_section_4_is_in_the_served_document() {
    let contract = parse_contract(&protocol_md());
    let doc = served_document().await;
    let problems = drift(&contract, &doc);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_check_fails_when_an_endpoint_or_a_status_is_dropped_or_one_is_added() {
    let contract = parse_contract(&protocol_md());
    let doc = served_document().await;

    let mut dropped_status = doc.clone();
    dropped_status["paths"]["/v1/commands/{commandId}/confirm"]["post"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("409");
    assert_eq!(
        drift(&contract, &dropped_status),
        [
            "POST /v1/commands/{commandId}/confirm: status 409 is in PROTOCOL.md 4, not in the document"
        ]
    );

    let mut dropped_auth = doc.clone();
    dropped_auth["paths"]["/v1/devices"]["get"]["responses"]
        .as_object_mut()
        .unwrap()
        .remove("401");
    assert_eq!(
        drift(&contract, &dropped_auth),
        ["GET /v1/devices: status 401 is in PROTOCOL.md 4, not in the document"]
    );

    let mut dropped_endpoint = doc.clone();
    dropped_endpoint["paths"]
        .as_object_mut()
        .unwrap()
        .remove("/v1/stream");
    assert_eq!(
        drift(&contract, &dropped_endpoint),
        ["GET /v1/stream: in PROTOCOL.md 4, not in the document"]
    );

    let mut added = doc.clone();
    added["paths"]["/v1/devices"]["delete"] = doc["paths"]["/v1/devices"]["get"].clone();
    assert_eq!(
        drift(&contract, &added),
        ["DELETE /v1/devices: in the document, not in PROTOCOL.md 4"]
    );
}

/// The official OpenAPI 3.1 JSON Schema (`schema/2022-10-07`), vendored: see
/// `tests/data/README.md`.
fn openapi_3_1_validator() -> jsonschema::Validator {
    let text = include_str!("../data/openapi-3.1-schema.json");
    let schema: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        schema["$id"],
        "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
    );
    jsonschema::draft202012::new(&schema).unwrap()
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_valid_against_the_openapi_3_1_schema() {
    let doc = served_document().await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let validator = openapi_3_1_validator();
    let errors = schema_errors(&validator, &doc);
    assert!(errors.is_empty(), "{errors:#?}");
    // Every schema of the document is a valid JSON Schema (2020-12, OpenAPI 3.1's dialect).
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::draft202012::meta::is_valid(schema),
            "components/schemas/{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_3_1_schema_refuses_a_broken_document() {
    let doc = served_document().await;
    let validator = openapi_3_1_validator();
    let broken = |change: &dyn Fn(&mut Value)| {
        let mut copy = doc.clone();
        change(&mut copy);
        schema_errors(&validator, &copy)
    };
    // Each of these alone makes the document invalid.
    let cases: [(&str, &Change); 5] = [
        ("no info", &|d| {
            d.as_object_mut().unwrap().remove("info");
        }),
        ("an OpenAPI 3.0 version", &|d| d["openapi"] = json!("3.0.3")),
        ("a path that does not start with /", &|d| {
            let item = d["paths"]["/healthz"].clone();
            d["paths"]["healthz"] = item;
        }),
        ("a status that is not one", &|d| {
            let ok = d["paths"]["/healthz"]["get"]["responses"]["200"].clone();
            d["paths"]["/healthz"]["get"]["responses"]["2000"] = ok;
        }),
        ("a response without a description", &|d| {
            d["paths"]["/healthz"]["get"]["responses"]["200"]
                .as_object_mut()
                .unwrap()
                .remove("description");
        }),
    ];
    for (what, change) in cases {
        assert!(!broken(change).is_empty(), "{what} was accepted");
    }
}

/// Every example of a media type in `content` (a request body's or a response's), with
/// where it is.
fn media_examples(content: &Value, at: &str) -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    for (media, object) in content.as_object().into_iter().flatten() {
        let schema = object["schema"].clone();
        if let Some(example) = object.get("example") {
            found.push((format!("{at} {media}"), schema.clone(), example.clone()));
        }
        for (name, example) in object["examples"].as_object().into_iter().flatten() {
            found.push((
                format!("{at} {media} {name}"),
                schema.clone(),
                example["value"].clone(),
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_the_document_matches_its_schema() {
    let doc = served_document().await;
    let mut examples = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            examples.extend(media_examples(
                &operation["requestBody"]["content"],
                &format!("{at} request"),
            ));
            for (status, response) in operation["responses"].as_object().unwrap() {
                let response = resolve(&doc, response);
                examples.extend(media_examples(
                    &response["content"],
                    &format!("{at} {status}"),
                ));
            }
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for example in schema["examples"].as_array().into_iter().flatten() {
            examples.push((format!("schema {name}"), schema.clone(), example.clone()));
        }
    }
    // The examples of PROTOCOL.md 4.1 and the error bodies are among them.
    assert!(examples.len() >= 20, "{}", examples.len());
    for (at, schema, example) in examples {
        let root = json!({
            "$ref": "#/$defs/example",
            "$defs": {"example": schema},
            "components": doc["components"],
        });
        let validator = jsonschema::draft202012::new(&root).unwrap();
        let errors = schema_errors(&validator, &example);
        assert!(errors.is_empty(), "{at}: {example} {errors:#?}");
    }
}

/// A change to a document.
type Change = dyn Fn(&mut Value);

/// Follows a local `$ref` (`#/components/...`) in the document.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap();
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} is not in the document"))
        }
        None => value,
    }
}

/// Checks a real answer against the document: its status is one the operation documents,
/// and its JSON body is valid against that response's schema.
fn check_answer(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let errors = answer_errors(doc, method, path, status, body);
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {body} does not match the document: {errors:#?}"
    );
}

/// Why `body` is not a documented answer `status` of `method path`.
fn answer_errors(doc: &Value, method: &str, path: &str, status: u16, body: &Value) -> Vec<String> {
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let response = operation["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path} answered {status}, which is not documented"));
    let response = resolve(doc, response);
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} documents no JSON body"
    );
    // The schema, with the document's components beside it so that its `$ref`s resolve.
    let root = json!({
        "$ref": "#/$defs/answer",
        "$defs": {"answer": schema},
        "components": doc["components"],
    });
    let validator = jsonschema::draft202012::new(&root).unwrap();
    schema_errors(&validator, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_check_refuses_bodies_the_document_does_not_describe() {
    let doc = served_document().await;
    let device = "/v1/devices/{deviceId}";
    let good = json!({"deviceId":"lock-1","online":false,"bleConnected":null,"bridges":0,"pendingCommands":0});
    assert!(answer_errors(&doc, "get", device, 200, &good).is_empty());
    for bad in [
        json!({"deviceId":"lock-1","online":false,"bridges":0,"pendingCommands":0}),
        json!({"deviceId":"","online":false,"bleConnected":null,"bridges":0,"pendingCommands":0}),
        json!({"deviceId":"lock-1","online":"no","bleConnected":null,"bridges":0,"pendingCommands":0}),
        json!({"error":{"code":"not_found","message":"no such device"}}),
    ] {
        assert!(
            !answer_errors(&doc, "get", device, 200, &bad).is_empty(),
            "{bad} was accepted"
        );
    }
    let commands = "/v1/devices/{deviceId}/commands";
    for bad in [
        json!({"status":"succeeded","requestId":"r-1","latencyMs":12}),
        json!({"status":"succeeded","requestId":"r-1","payload":"0","latencyMs":12}),
        json!({"status":"queued"}),
        json!({"status":"timeout","stage":"landed"}),
    ] {
        let status = if bad["status"] == "queued" { 202 } else { 200 };
        assert!(
            !answer_errors(&doc, "post", commands, status, &bad).is_empty(),
            "{bad} was accepted"
        );
    }
    let error = json!({"error":{"code":"no_such_code","message":"x"}});
    assert!(!answer_errors(&doc, "get", "/v1/commands/{commandId}", 404, &error).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_have_documented_statuses_and_match_their_schemas() {
    let doc = served_document().await;
    let server = TestServer::start().await;

    // Operations.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = server.get(path).await;
        check_answer(&doc, "get", path, status, &body);
    }
    let (status, _) = server.get_text("/metrics").await;
    assert!(doc["paths"]["/metrics"]["get"]["responses"][status.to_string()].is_object());

    // Devices, before and after a bridge holds one.
    let (status, body) = server.get("/v1/devices/lock-1").await;
    check_answer(&doc, "get", "/v1/devices/{deviceId}", status, &body);
    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    server.wait_online("lock-1", 1).await;
    for (path, template) in [
        ("/v1/devices/lock-1", "/v1/devices/{deviceId}"),
        ("/v1/devices", "/v1/devices"),
        ("/v1/device-types", "/v1/device-types"),
        (
            "/v1/devices/lock-1/commands",
            "/v1/devices/{deviceId}/commands",
        ),
    ] {
        let (status, body) = server.get(path).await;
        check_answer(&doc, "get", template, status, &body);
    }
    let (status, body) = server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"state_changed","data":{"locked":false}}),
        )
        .await;
    check_answer(&doc, "post", "/v1/devices/{deviceId}/events", status, &body);
    let (status, body) = server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"device_status"}),
        )
        .await;
    assert_eq!(status, 400);
    check_answer(&doc, "post", "/v1/devices/{deviceId}/events", status, &body);

    // Commands: answered, timed out, offline, queued, confirmed, cancelled, refused.
    let commands = "/v1/devices/{deviceId}/commands";
    let call = server.command("lock-1", json!({"payload":"aabb","timeoutMs":30000}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "01").await;
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200);
    check_answer(&doc, "post", commands, status, &body);
    let (status, body) = server
        .command("lock-1", json!({"payload":"aabb","timeoutMs":1}))
        .await;
    assert_eq!(status, 504, "{body}");
    check_answer(&doc, "post", commands, status, &body);
    drop(bridge);
    server.wait_device("lock-1", |v| v["online"] == false).await;
    let (status, body) = server.command("lock-1", json!({"payload":"aabb"})).await;
    assert_eq!(status, 503);
    check_answer(&doc, "post", commands, status, &body);
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"aabb","ifOffline":"queue","commandType":"unlock"}),
        )
        .await;
    assert_eq!(status, 202);
    check_answer(&doc, "post", commands, status, &body);
    let queued = body["commandId"].as_str().unwrap().to_owned();
    let (status, body) = server
        .command(
            "lock-1",
            json!({"payload":"aabb","requiresConfirmation":true,"commandType":"open"}),
        )
        .await;
    assert_eq!(status, 202);
    check_answer(&doc, "post", commands, status, &body);
    let awaiting = body["commandId"].as_str().unwrap().to_owned();
    let (status, body) = server.get("/v1/devices/lock-1/commands").await;
    assert_eq!(body["commands"].as_array().unwrap().len(), 2);
    check_answer(&doc, "get", commands, status, &body);
    let (status, body) = server.get(&format!("/v1/commands/{queued}")).await;
    check_answer(&doc, "get", "/v1/commands/{commandId}", status, &body);
    let (status, body) = server
        .post(&format!("/v1/commands/{queued}/confirm"), &json!({}))
        .await;
    assert_eq!(status, 409);
    check_answer(
        &doc,
        "post",
        "/v1/commands/{commandId}/confirm",
        status,
        &body,
    );
    let (status, body) = server
        .post(&format!("/v1/commands/{awaiting}/confirm"), &json!({}))
        .await;
    assert_eq!(status, 200);
    check_answer(
        &doc,
        "post",
        "/v1/commands/{commandId}/confirm",
        status,
        &body,
    );
    let (status, body) = server
        .post(&format!("/v1/commands/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    check_answer(
        &doc,
        "post",
        "/v1/commands/{commandId}/cancel",
        status,
        &body,
    );
    let (status, body) = server
        .post(&format!("/v1/commands/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409);
    check_answer(
        &doc,
        "post",
        "/v1/commands/{commandId}/cancel",
        status,
        &body,
    );
    let (status, body) = server.get("/v1/commands/no-such-command").await;
    assert_eq!(status, 404);
    check_answer(&doc, "get", "/v1/commands/{commandId}", status, &body);
    for (body, code) in [
        (json!({"payload":"abc"}), 400),
        (json!({"payload":"aa","timeoutMs":0}), 400),
        (json!({"payload":"aa","deviceType":"smart-bulb"}), 404),
    ] {
        let (status, answer) = server.command("lock-1", body.clone()).await;
        assert_eq!(status, code, "{body}: {answer}");
        check_answer(&doc, "post", commands, status, &answer);
    }

    // The stream answers Server-Sent Events.
    let response = reqwest::get(server.url("/v1/stream")).await.unwrap();
    assert!(doc["paths"]["/v1/stream"]["get"]["responses"][response.status().as_str()]
        ["content"]["text/event-stream"]
        .is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_answered_as_documented() {
    let doc = served_document().await;
    let server = TestServer::start_authenticated().await;
    let plain = reqwest::Client::new();
    let user = token("someone", "user", Some(&["lock-1"]), 3600);
    for (token, expected) in [(None, 401), (Some(user.as_str()), 403)] {
        let mut request = plain.get(server.url("/v1/devices"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(status, expected);
        let body: Value = response.json().await.unwrap();
        check_answer(&doc, "get", "/v1/devices", status, &body);
    }
}

/// The next Server-Sent Event of a streaming response (skipping comments): its name and data.
async fn next_sse(response: &mut reqwest::Response, buffer: &mut String) -> (String, Value) {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    name = Some(rest.to_owned());
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(rest).unwrap());
                }
            }
            if let (Some(name), Some(data)) = (name, data) {
                return (name, data);
            }
        }
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("a stream event in time")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_match_the_documented_stream_event_schema() {
    let doc = served_document().await;
    let root = json!({
        "$ref": "#/components/schemas/StreamEvent",
        "components": doc["components"],
    });
    let validator = jsonschema::draft202012::new(&root).unwrap();
    let server = TestServer::start().await;
    let mut stream = reqwest::get(server.url("/v1/stream?deviceId=lock-1"))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();

    let mut bridge = Bridge::connect(&server, "phone", &["lock-1"]).await;
    let device_status = next_sse(&mut stream, &mut buffer).await;
    server
        .post(
            "/v1/devices/lock-1/events",
            &json!({"type":"state_changed","data":{"locked":false}}),
        )
        .await;
    let event = next_sse(&mut stream, &mut buffer).await;
    let call = server.command("lock-1", json!({"payload":"aabb","timeoutMs":30000}));
    let answer = async {
        let write = bridge.next_write().await;
        bridge.answer(&write, "01").await;
    };
    let ((status, _), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200);
    let result = next_sse(&mut stream, &mut buffer).await;

    for (name, data) in [device_status, event, result] {
        assert_eq!(
            data["type"],
            name.as_str(),
            "the event is named by its type"
        );
        let errors = schema_errors(&validator, &data);
        assert!(errors.is_empty(), "{name}: {data} {errors:#?}");
    }
    // A data object the document does not describe is refused. (One with a protocol `type`
    // and wrong fields but a `deviceId` would pass as an application event: the schema
    // cannot exclude the protocol's names from an application event's `type`.)
    for unknown in [
        json!({"type":"device_status","online":true,"bleConnected":null}),
        json!({"type":"overflow?"}),
        json!({"deviceId":"lock-1","online":true,"bleConnected":null}),
    ] {
        assert!(!schema_errors(&validator, &unknown).is_empty(), "{unknown}");
    }
}

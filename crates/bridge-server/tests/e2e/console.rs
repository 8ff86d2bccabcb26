//! The operator console (`/console`) in a real browser: headless Chromium driven over
//! WebDriver (chromedriver, `fantoccini`), against the real `bridge-server` binary and
//! real `bridge-sim` phones.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them when missing;
//! `BRIDGE_CHROMIUM` and `BRIDGE_CHROMEDRIVER` name other binaries). A missing browser
//! fails these tests, it never skips them. `bridge-sim` is the one cargo builds beside the
//! server for a workspace test run (`cargo nextest run --workspace --all-features`); for a
//! run of this crate alone, build it first (`cargo build -p bridge-client --features sim
//! --bin bridge-sim`) or name it with `BRIDGE_SIM_BIN`.
//!
//! Every wait is a bounded poll of a DOM condition ([`PATIENCE`]), never a fixed sleep.
//! With `BRIDGE_CONSOLE_SCREENSHOT=path.png` (relative to the workspace root) the command
//! test writes its screenshot there (the README's `docs/console.png` comes from such a run).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::process::Process;
use crate::support::*;

/// A program: the environment variable's path if set, else the first candidate that exists.
fn program(env_var: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "none of {candidates:?} exists: install Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`; .ci/run does it) or set {env_var}"
            )
        })
}

/// The `bridge-sim` binary built beside the server's.
fn sim_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BRIDGE_SIM_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_BIN_EXE_bridge-server")).with_file_name("bridge-sim");
    assert!(
        path.exists(),
        "{} is missing: a workspace test run builds it; alone, run \
         `cargo build -p bridge-client --features sim --bin bridge-sim` (or set BRIDGE_SIM_BIN)",
        path.display()
    );
    path
}

/// A tag unique to this test run, for device and phone ids.
fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A chromedriver on a free loopback port and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    /// chromedriver's process group, which the browser it starts joins.
    group: u32,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends chromedriver and every browser process it started, also when a test panics
    /// before [`Browser::close`] (killing chromedriver alone would leave Chromium running).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Browser {
    async fn start() -> Self {
        let chromium = program(
            "BRIDGE_CHROMIUM",
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
        );
        let chromedriver = program(
            "BRIDGE_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let started = Instant::now();
        loop {
            // A free port, then chromedriver on it; if another process took the port in
            // between, chromedriver exits and another port is tried.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut driver = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, with the browser it starts: see `Drop`.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            let group = driver.id().expect("a running chromedriver has an id");
            let url = format!("http://127.0.0.1:{port}");
            // chromedriver takes a moment to listen: retry the session until it does.
            loop {
                match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => {
                        return Self {
                            client,
                            driver,
                            group,
                            _profile: profile,
                        };
                    }
                    Err(error) => {
                        assert!(
                            started.elapsed() < PATIENCE,
                            "no WebDriver session from {}: {error}",
                            chromedriver.display()
                        );
                        if driver.try_wait().unwrap().is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn open(&self, server: &Process) {
        self.client
            .goto(&server.client.url("/console"))
            .await
            .unwrap();
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) until it returns something
    /// truthy, and returns that; panics with `what` after [`PATIENCE`].
    async fn wait_for(&self, what: &str, script: &str, args: &[Value]) -> Value {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < PATIENCE {
            match self.client.execute(script, args.to_vec()).await {
                Ok(value) if truthy(&value) => return value,
                Ok(value) => last = value,
                Err(error) => last = json!(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .unwrap_or_default();
        panic!("the console did not show {what} in time (last: {last}); the page read:\n{text}")
    }

    async fn js(&self, script: &str, args: &[Value]) -> Value {
        self.client.execute(script, args.to_vec()).await.unwrap()
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "type into", |field| async move {
            field.clear().await?;
            field.send_keys(text).await
        })
        .await;
    }

    async fn click(&self, css: &str) {
        self.on_element(css, "click", |element| async move { element.click().await })
            .await;
    }

    /// Finds the element and acts on it. The page re-renders parts of itself on live
    /// updates, so an element found a moment ago can be replaced before the action reaches
    /// it (WebDriver's "stale element reference"): then it is found again, within PATIENCE.
    async fn on_element<F, Fut>(&self, css: &str, what: &str, action: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let started = Instant::now();
        loop {
            let element = self.client.find(Locator::Css(css)).await.unwrap();
            match action(element).await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(error))
                    if error.error == fantoccini::error::ErrorStatus::StaleElementReference
                        && started.elapsed() < PATIENCE =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot {what} {css}: {error}"),
            }
        }
    }

    /// Makes the browser refuse requests to URLs matching these patterns (Chrome DevTools'
    /// `Network.setBlockedURLs`, through chromedriver), as a proxy that cuts a path would.
    async fn block_urls(&self, patterns: &[&str]) {
        self.dev_tools("Network.enable", json!({})).await;
        self.dev_tools("Network.setBlockedURLs", json!({ "urls": patterns }))
            .await;
    }

    /// Sends one Chrome DevTools command to the page.
    async fn dev_tools(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(DevTools {
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// Ends the WebDriver session (Chromium quits), then chromedriver (on drop).
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A Chrome DevTools command sent through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct DevTools {
    body: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url_error::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}

/// `url::ParseError`, named through reqwest (which re-exports the `url` crate's `Url` only).
mod url_error {
    pub(super) type ParseError = <reqwest::Url as std::str::FromStr>::Err;
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A `bridge-sim` phone holding `devices` until killed.
async fn phone(server: &Process, user: &str, devices: &[&str], token: Option<&str>) -> Child {
    phone_with(server, user, devices, token, &[]).await
}

/// [`phone`] with more `bridge-sim` arguments.
async fn phone_with(
    server: &Process,
    user: &str,
    devices: &[&str],
    token: Option<&str>,
    extra: &[&str],
) -> Child {
    let mut command = Command::new(sim_binary());
    command
        .args(["--url", &format!("ws://{}/ws", server.client.addr)])
        .args(["--user-id", user, "--latency-ms", "5"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for device in devices {
        command.args(["--device", device]);
    }
    if let Some(token) = token {
        command.env("BRIDGE_SIM_TOKEN", token);
    }
    let child = command.spawn().unwrap();
    for device in devices {
        server
            .client
            .wait_device(device, |v| v["bleConnected"] == true)
            .await;
    }
    child
}

/// The server in development mode on a memory queue.
async fn development_server(dir: &Path) -> Process {
    Process::start_with_queue(dir, "memory://", &[]).await
}

/// A row of the devices table with this device, whose bridge `user` reports its link up.
const DEVICE_ROW_WITH_BRIDGE: &str = r"
    const row = document.querySelector(`#devices tr[data-device-id='${arguments[0]}']`);
    if (!row) return null;
    const bridge = row.querySelector(`li[data-bridge='${arguments[1]}']`);
    return bridge && bridge.textContent;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_without_a_token_in_development_mode_and_shows_devices_come_and_go_live()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = development_server(dir.path()).await;
    let browser = Browser::start().await;
    browser.open(&server).await;
    let mode = browser
        .wait_for(
            "development mode",
            "return !document.getElementById('app').hidden && document.getElementById('mode').textContent",
            &[],
        )
        .await;
    assert_eq!(mode, "development mode: no token needed");
    let source = browser
        .wait_for(
            "the live stream as its source",
            "const s = document.getElementById('source'); return s.dataset.source === 'stream' && s.textContent",
            &[],
        )
        .await;
    assert_eq!(source, "Live: reading /v1/stream");
    // Marks this document: a reload would lose the mark.
    browser.js("window.sameDocument = true", &[]).await;

    let t = tag();
    let (device, user) = (format!("lock-{t}"), format!("phone-{t}"));
    let mut sim = phone(&server, &user, &[&device], None).await;
    let bridge = browser
        .wait_for(
            "the device online with its bridge",
            DEVICE_ROW_WITH_BRIDGE,
            &[json!(device), json!(user)],
        )
        .await;
    let bridge = bridge.as_str().unwrap();
    assert!(
        bridge.contains("link up") && bridge.contains("-55 dBm") && bridge.contains("0 in flight"),
        "{bridge}"
    );
    browser
        .wait_for(
            "the headline metrics",
            "return document.getElementById('m-devices').textContent === '1' \
             && document.getElementById('m-connections').textContent.startsWith('1 bridge')",
            &[],
        )
        .await;

    // An application event reaches the feed too.
    let (status, _) = server
        .client
        .post(
            &format!("/v1/devices/{device}/events"),
            &json!({"type":"state_changed","data":{"locked":false}}),
        )
        .await;
    assert_eq!(status, 202);
    let event = browser
        .wait_for(
            "the application event in the feed",
            "const li = document.querySelector('#feed li[data-type=state_changed]'); \
             return li && li.dataset.deviceId === arguments[0] && li.textContent",
            &[json!(device)],
        )
        .await;
    assert!(
        event.as_str().unwrap().ends_with(r#"{"locked":false}"#),
        "{event}"
    );

    // The phone goes away: the row goes without a reload, and the feed says so.
    sim.kill().await.unwrap();
    browser
        .wait_for(
            "the device gone from the devices online",
            "return !document.querySelector(`#devices tr[data-device-id='${arguments[0]}']`)",
            &[json!(device)],
        )
        .await;
    let feed = browser
        .wait_for(
            "the device going offline in the feed",
            "return [...document.querySelectorAll('#feed li[data-type=device_status]')] \
               .filter(li => li.dataset.deviceId === arguments[0]).map(li => li.textContent)",
            &[json!(device)],
        )
        .await;
    let feed: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(feed[0].ends_with("offline"), "newest first: {feed:?}");
    assert!(
        feed.iter()
            .any(|line| line.ends_with("online, BLE link up")),
        "{feed:?}"
    );
    assert_eq!(
        browser.js("return window.sameDocument === true", &[]).await,
        true,
        "the page was not reloaded"
    );
    assert_eq!(
        browser
            .js(
                "return document.getElementById('source').dataset.source",
                &[]
            )
            .await,
        "stream"
    );
    browser.close().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_stream_cannot_be_read_the_console_polls_says_so_and_goes_live_when_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let server = development_server(dir.path()).await;
    let browser = Browser::start().await;
    browser.block_urls(&["*/v1/stream*"]).await;
    browser.open(&server).await;
    let source = browser
        .wait_for(
            "polling as its source",
            "const s = document.getElementById('source'); return s.dataset.source === 'polling' \
               && s.textContent.includes('stream unavailable') && s.textContent",
            &[],
        )
        .await;
    assert!(
        source.as_str().unwrap().starts_with("Polling every 3 s ("),
        "{source}"
    );

    // Polling still shows a device come and go.
    let t = tag();
    let (device, user) = (format!("lock-{t}"), format!("phone-{t}"));
    let mut sim = phone(&server, &user, &[&device], None).await;
    browser
        .wait_for(
            "the device online, by polling",
            DEVICE_ROW_WITH_BRIDGE,
            &[json!(device), json!(user)],
        )
        .await;
    sim.kill().await.unwrap();
    browser
        .wait_for(
            "the device gone, by polling",
            "return !document.querySelector(`#devices tr[data-device-id='${arguments[0]}']`)",
            &[json!(device)],
        )
        .await;

    // The stream is back: the console reads it again, by itself.
    browser.block_urls(&[]).await;
    browser
        .wait_for(
            "the live stream as its source again",
            "return document.getElementById('source').dataset.source === 'stream'",
            &[],
        )
        .await;
    browser.close().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_sends_a_command_from_a_device_page_and_shows_its_answer_and_stages() {
    let dir = tempfile::tempdir().unwrap();
    let server = development_server(dir.path()).await;
    let t = tag();
    let (device, other, user) = (
        format!("lock-{t}"),
        format!("lock-{t}-b"),
        format!("phone-{t}"),
    );
    // Something waiting in the queue too (a command that needs a person's go-ahead).
    let (status, _) = server
        .client
        .command(
            &device,
            json!({"payload":"0c","commandType":"reset","requiresConfirmation":true}),
        )
        .await;
    assert_eq!(status, 202);

    let browser = Browser::start().await;
    browser.open(&server).await;
    browser
        .wait_for(
            "the live stream as its source",
            "return document.getElementById('source').dataset.source === 'stream'",
            &[],
        )
        .await;
    let _sim = phone(&server, &user, &[&device, &other], None).await;
    browser
        .wait_for(
            "the device online with its bridge",
            DEVICE_ROW_WITH_BRIDGE,
            &[json!(device), json!(user)],
        )
        .await;
    browser
        .click(&format!("#devices tr[data-device-id='{device}'] a"))
        .await;
    browser
        .wait_for(
            "the device's page with its bridge and queue",
            "return !document.getElementById('device').hidden \
               && document.getElementById('d-online').textContent === 'yes' \
               && document.querySelector(`#holders tr[data-bridge='${arguments[0]}']`) \
               && document.querySelector('#queue tr[data-status=awaiting_confirmation]')",
            &[json!(user)],
        )
        .await;

    browser.type_into("#send-payload", "03").await;
    browser.type_into("#send-type", "status").await;
    browser.click("#send-button").await;
    let status = browser
        .wait_for(
            "the command's answer",
            "const s = document.getElementById('send-status'); return s && s.textContent",
            &[],
        )
        .await;
    assert_eq!(status, "succeeded");
    let answer = browser
        .js(
            "return Object.fromEntries([...document.querySelectorAll('#send-result dl div')] \
               .map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]))",
            &[],
        )
        .await;
    // 0x83: the reply to status; then the lock's state.
    assert!(
        answer["Answer payload"]
            .as_str()
            .is_some_and(|p| p.starts_with("83")),
        "{answer}"
    );
    assert_eq!(answer["HTTP status"], "200");
    let stages = browser
        .js(
            "return [document.getElementById('send-stage').textContent, \
               ...[...document.querySelectorAll('#send-result .hops li.reached')].map(li => li.dataset.stage)]",
            &[],
        )
        .await;
    assert_eq!(
        stages,
        json!(["written", "sent", "received", "connected", "written"])
    );
    browser
        .wait_for(
            "the command's result in the feed",
            "return [...document.querySelectorAll('#feed li[data-type=command_result]')] \
               .some(li => li.dataset.deviceId === arguments[0] && li.textContent.includes('succeeded'))",
            &[json!(device)],
        )
        .await;
    browser
        .wait_for(
            "a command counted in the metrics",
            "return /succeeded [0-9.]+\\/s \\(1 in all\\)/.test(document.getElementById('m-outcomes').textContent)",
            &[],
        )
        .await;

    // The whole page in one picture.
    let height = browser
        .js("return document.documentElement.scrollHeight", &[])
        .await
        .as_u64()
        .unwrap();
    browser
        .dev_tools(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": height.clamp(800, 2000), "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    let png = browser.client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    if let Some(path) = std::env::var_os("BRIDGE_CONSOLE_SCREENSHOT") {
        // A relative path is from the workspace root (tests run in the crate's directory).
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path);
        std::fs::write(&path, &png).unwrap();
    }

    // A lock that takes the write and never answers: the timeout says how far it got.
    let stuck = format!("lock-{t}-stuck");
    let _stuck_phone = phone_with(
        &server,
        &format!("phone-{t}-stuck"),
        &[&stuck],
        None,
        &["--fail-at", "written"],
    )
    .await;
    browser.click("#device a[href='#/']").await;
    browser
        .wait_for(
            "the stuck lock online",
            "return document.querySelector(`#devices tr[data-device-id='${arguments[0]}'] a`)",
            &[json!(stuck)],
        )
        .await;
    browser
        .click(&format!("#devices tr[data-device-id='{stuck}'] a"))
        .await;
    browser
        .wait_for(
            "the stuck lock's page",
            "return document.getElementById('device-title').textContent === `Device ${arguments[0]}` \
               && document.getElementById('d-online').textContent === 'yes'",
            &[json!(stuck)],
        )
        .await;
    browser.type_into("#send-payload", "02").await;
    browser.type_into("#send-type", "").await;
    browser.type_into("#send-timeout", "1000").await;
    browser.click("#send-button").await;
    let status = browser
        .wait_for(
            "the command's timeout",
            "const s = document.getElementById('send-status'); return s && s.textContent",
            &[],
        )
        .await;
    assert_eq!(status, "timeout");
    let shown = browser
        .js(
            "return [document.getElementById('send-stage').textContent, \
               document.querySelector('#send-result dl dd').textContent, \
               document.querySelectorAll('#send-result .hops li.reached').length]",
            &[],
        )
        .await;
    assert_eq!(
        shown,
        json!(["written", "504", 4]),
        "the lock took the write"
    );
    browser.close().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_queues_confirms_and_cancels_commands_and_follows_their_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let server = development_server(dir.path()).await;
    let t = tag();
    let (device, user) = (format!("lock-{t}"), format!("phone-{t}"));
    let browser = Browser::start().await;
    browser.open(&server).await;
    browser
        .wait_for(
            "the console",
            "return !document.getElementById('app').hidden",
            &[],
        )
        .await;
    // An offline device is opened by its id.
    browser.type_into("#open-id", &device).await;
    browser.click("#open-form button").await;
    browser
        .wait_for(
            "the offline device's empty queue",
            "return !document.getElementById('device').hidden \
               && document.getElementById('d-online').textContent === 'no' \
               && document.getElementById('queue-caption').textContent === 'Nothing is queued for this device.'",
            &[],
        )
        .await;

    // Queued from the form: one to deliver when the phone comes, one that needs a go-ahead.
    for (payload, kind, option, expected) in [
        ("01", "lock", "#send-queue", "queued"),
        ("02", "unlock", "#send-confirm", "awaiting_confirmation"),
        ("03", "status", "#send-confirm", "awaiting_confirmation"),
    ] {
        browser.type_into("#send-payload", payload).await;
        browser.type_into("#send-type", kind).await;
        browser
            .js(
                "for (const id of ['send-queue', 'send-confirm']) \
                   document.getElementById(id).checked = false",
                &[],
            )
            .await;
        browser.click(option).await;
        browser.click("#send-button").await;
        let status = browser
            .wait_for(
                "the command's answer",
                "const s = document.getElementById('send-status'); \
                 return s && document.getElementById('send-result').dataset.status === s.textContent \
                   && document.querySelector('#send-result dl').textContent.includes(arguments[0]) \
                   && s.textContent",
                &[json!("Command id")],
            )
            .await;
        assert_eq!(status, expected, "{kind}");
        browser
            .js(
                "document.getElementById('send-result').replaceChildren()",
                &[],
            )
            .await;
    }
    let (_, list) = server
        .client
        .get(&format!("/v1/devices/{device}/commands"))
        .await;
    let ids: Vec<String> = list["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["commandId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    let rows = browser
        .wait_for(
            "the queue in delivery order",
            "const rows = [...document.querySelectorAll('#queue tbody tr')]; \
             return rows.length === 3 && rows.map(r => [r.dataset.commandId, r.dataset.status, \
               r.cells[2].textContent, r.cells[4].textContent])",
            &[],
        )
        .await;
    assert_eq!(
        rows,
        json!([
            [ids[0], "pending", "lock", "0"],
            [ids[1], "awaiting_confirmation", "unlock", "0"],
            [ids[2], "awaiting_confirmation", "status", "0"],
        ])
    );

    // Cancel the unlock, confirm the status read.
    browser
        .click(&format!(
            "#queue tr[data-command-id='{}'] button[data-action=cancel]",
            ids[1]
        ))
        .await;
    browser
        .wait_for(
            "the cancelled command gone from the queue",
            "return !document.querySelector(`#queue tr[data-command-id='${arguments[0]}']`) \
               && document.getElementById('queue-message').textContent.includes('now cancelled')",
            &[json!(ids[1])],
        )
        .await;
    server
        .client
        .wait_command_status(&ids[1], "cancelled")
        .await;
    browser
        .click(&format!(
            "#queue tr[data-command-id='{}'] button[data-action=confirm]",
            ids[2]
        ))
        .await;
    browser
        .wait_for(
            "the confirmed command pending",
            "const row = document.querySelector(`#queue tr[data-command-id='${arguments[0]}']`); \
             return row && row.dataset.status === 'pending' \
               && !row.querySelector('button[data-action=confirm]')",
            &[json!(ids[2])],
        )
        .await;
    let (_, view) = server.client.get(&format!("/v1/commands/{}", ids[2])).await;
    assert_eq!(view["status"], "pending");

    // The phone comes: both are delivered, in order, and the page follows without a reload.
    let _sim = phone(&server, &user, &[&device], None).await;
    browser
        .wait_for(
            "the queue emptied by the delivery",
            "return document.getElementById('d-online').textContent === 'yes' \
               && document.querySelectorAll('#queue tbody tr').length === 0",
            &[],
        )
        .await;
    for id in [&ids[0], &ids[2]] {
        server.client.wait_command_status(id, "succeeded").await;
    }
    // The feed has each command's end, oldest last: the cancellation, then both deliveries.
    let results = browser
        .wait_for(
            "the three ends in the feed",
            "const r = [...document.querySelectorAll('#feed li[data-type=command_result]')] \
               .filter(li => li.dataset.deviceId === arguments[0]) \
               .map(li => li.textContent.replace(/^.*command_result \\S+ /, '')); \
             return r.length === 3 && r.reverse()",
            &[json!(device)],
        )
        .await;
    let short = |id: &str| id[..8].to_owned();
    let results: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(results[0], format!("cancelled ({}…)", short(&ids[1])));
    assert!(
        results[1].starts_with("succeeded, payload 81") && results[1].contains(&short(&ids[0])),
        "the lock first: {results:?}"
    );
    assert!(
        results[2].starts_with("succeeded, payload 83") && results[2].contains(&short(&ids[2])),
        "then the confirmed status read: {results:?}"
    );
    browser.close().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_refused_token_as_an_error_and_signs_in_with_a_service_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        Process::start_with_queue(dir.path(), "memory://", &["--jwt-secret", SECRET]).await;
    let service = token("operator", "service", None, 3600);
    server.client.service_token = Some(service.clone());
    let browser = Browser::start().await;
    browser.open(&server).await;
    browser
        .wait_for(
            "the sign-in form",
            "return !document.getElementById('signin').hidden && document.getElementById('app').hidden",
            &[],
        )
        .await;
    assert_eq!(
        browser
            .js(
                "return document.getElementById('signin-error').textContent",
                &[]
            )
            .await,
        "",
        "no error before anything was tried"
    );

    for (tried, expected) in [
        ("not-a-token".to_owned(), "Token refused: 401 unauthorized"),
        (
            token("alice", "user", Some(&["lock-1"]), 3600),
            "Token refused: 403 forbidden",
        ),
    ] {
        browser.type_into("#token", &tried).await;
        browser.click("#signin-form button").await;
        let error = browser
            .wait_for(
                "the refusal",
                "const e = document.getElementById('signin-error').textContent; \
                 return e.startsWith(arguments[0]) && e",
                &[json!(expected)],
            )
            .await;
        assert!(
            browser
                .js("return document.getElementById('app').hidden", &[])
                .await
                == true,
            "{error}"
        );
        assert_eq!(browser.js("return sessionStorage.length", &[]).await, 0);
    }

    browser.type_into("#token", &service).await;
    browser.click("#signin-form button").await;
    browser
        .wait_for(
            "the console, reading the stream with the token",
            "return !document.getElementById('app').hidden \
               && document.getElementById('mode').textContent === 'signed in with a service token' \
               && document.getElementById('source').dataset.source === 'stream'",
            &[],
        )
        .await;
    let stored = browser
        .js(
            "return [sessionStorage.getItem('bridge.console.token'), location.href]",
            &[],
        )
        .await;
    assert_eq!(
        stored[0],
        service.as_str(),
        "kept in the tab's session storage"
    );
    assert!(
        !stored[1].as_str().unwrap().contains(&service),
        "never in a URL"
    );

    let t = tag();
    let (device, user) = (format!("lock-{t}"), format!("phone-{t}"));
    let bridge_token = token(&user, "bridge", Some(&[&device]), 3600);
    let _sim = phone(&server, &user, &[&device], Some(&bridge_token)).await;
    browser
        .wait_for(
            "the device online with its bridge",
            DEVICE_ROW_WITH_BRIDGE,
            &[json!(device), json!(user)],
        )
        .await;

    // A reload of the tab keeps the session (session storage); signing out ends it and
    // leaves nothing of it in the page.
    browser.client.refresh().await.unwrap();
    browser
        .wait_for(
            "the console after a reload, still signed in",
            "return !document.getElementById('app').hidden \
               && document.getElementById('mode').textContent === 'signed in with a service token' \
               && document.querySelector(`#devices tr[data-device-id='${arguments[0]}']`)",
            &[json!(device)],
        )
        .await;
    browser.click("#sign-out").await;
    browser
        .wait_for(
            "the sign-in form again",
            "return !document.getElementById('signin').hidden && sessionStorage.length === 0 \
               && document.getElementById('signin-error').textContent === 'Signed out.' \
               && document.querySelectorAll('#devices tbody tr, #feed li').length === 0",
            &[],
        )
        .await;
    browser.close().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assets_are_served_with_their_types_a_strict_policy_and_revalidation() {
    let server = TestServer::start_authenticated().await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        // No token: the page and its assets hold nothing secret.
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let etag = headers["etag"].clone();
        let again = http
            .get(server.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let response = http.get(server.url("/console/")).send().await.unwrap();
    assert_eq!(response.status(), 200, "/console/ leads to /console");
    assert_eq!(response.url().path(), "/console");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_development_mode_the_console_is_served_to_loopback_hosts_only() {
    let server = TestServer::start().await;
    let response = server
        .http
        .get(server.url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = server
        .http
        .get(server.url("/console"))
        .header("host", "console.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

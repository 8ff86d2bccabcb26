//! `cargo xtask demo`: the toolkit's story in one command.
//!
//! Starts the server on its embedded defaults (development mode, SQLite queue — in a temporary
//! directory and on a free loopback port, so it never disturbs a server you run yourself),
//! starts `bridge-sim` with two smart locks, and walks through what a backend does over HTTP:
//! an online round trip, a device error, an offline command queued and delivered when its
//! lock's phone shows up, a confirmation-gated unlock, and two timeouts that say where they
//! stopped (a lock that took the write and never answered, a link that never came up: the
//! `stage` of PROTOCOL.md 4.1), and a phone over MQTT (PROTOCOL.md 6, through the local
//! Mosquitto). All along it reads the live stream `GET /v1/stream` and
//! shows what it carried at the end. Every child process is stopped at the end, on success
//! or failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Child processes that are stopped (SIGTERM, then SIGKILL) when this is dropped.
pub(crate) struct Children {
    pub(crate) running: Vec<(&'static str, Child)>,
}

impl Children {
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        command: &mut Command,
    ) -> Result<(), String> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.running.push((name, child));
        Ok(())
    }

    /// Kills the child `name` with SIGKILL (nothing flushed, nothing closed) and forgets it.
    pub(crate) fn kill(&mut self, name: &str) {
        if let Some(i) = self.running.iter().position(|(n, _)| *n == name) {
            let (_, mut child) = self.running.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn stop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for (name, child) in &mut self.running {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("    {name} did not stop on SIGTERM; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.running.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
pub(crate) fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{method} {path}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: no HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the JSON body.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let (status, body) = http_text(addr, method, path, body)?;
    let json = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body)
            .map_err(|e| format!("{method} {path}: body is not JSON: {e}"))?
    };
    Ok((status, json))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The events read from the live stream so far: name and data.
type StreamLog = Arc<Mutex<Vec<(String, String)>>>;

/// Reads `GET /v1/stream` on a thread of its own until the server closes it, keeping each
/// event as its name and data. The body is chunked; each event is one chunk, so the
/// `event:` and `data:` lines are read as they come and the chunk sizes are skipped.
fn read_stream(addr: SocketAddr) -> Result<StreamLog, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("GET /v1/stream: {e}"))?;
    let request = format!("GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET /v1/stream: {e}"))?;
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    std::thread::spawn(move || {
        let mut name = None;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let line = line.trim_end_matches('\r');
            if let Some(event) = line.strip_prefix("event: ") {
                name = Some(event.to_owned());
            } else if let (Some(data), Some(event)) = (line.strip_prefix("data: "), name.take())
                && let Ok(mut seen) = seen.lock()
            {
                seen.push((event, data.to_owned()));
            }
        }
    });
    Ok(events)
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
pub(crate) fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

pub(crate) fn show(method: &str, path: &str, body: Option<&Value>, status: u16, answer: &Value) {
    match body {
        Some(b) => println!("   {method} {path} {b}"),
        None => println!("   {method} {path}"),
    }
    println!("   -> {status} {answer}");
}

pub(crate) fn expect_status(status: u16, expected: u16, answer: &Value) -> Result<(), String> {
    if status == expected {
        Ok(())
    } else {
        Err(format!("expected HTTP {expected}, got {status}: {answer}"))
    }
}

pub(crate) fn string_field<'a>(value: &'a Value, field: &str) -> Result<&'a str, String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("answer has no `{field}`: {value}"))
}

/// Polls a queued command until it reaches `status`.
pub(crate) fn wait_command(addr: SocketAddr, id: &str, status: &str) -> Result<Value, String> {
    let path = format!("/v1/commands/{id}");
    wait_for(
        &format!("command {id} to be {status}"),
        Duration::from_secs(30),
        || {
            http(addr, "GET", &path, None)
                .ok()
                .filter(|(_, v)| v.get("status").and_then(Value::as_str) == Some(status))
                .map(|(_, v)| v)
        },
    )
}

/// The local Mosquitto (`cargo xtask services` starts it).
const MQTT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// Step 8: a phone that reaches the server through the MQTT broker (PROTOCOL.md 6).
fn mqtt_phone(
    sim_bin: &Path,
    addr: SocketAddr,
    prefix: &str,
    children: &mut Children,
    log: &dyn Fn(&str) -> Result<Stdio, String>,
) -> Result<(), String> {
    step(
        8,
        "A phone on a mobile network connects through the MQTT broker instead of a WebSocket \
         (bridge-sim --mqtt): it says `hello` on its topic, the server answers `welcome`.",
    );
    children.spawn(
        "bridge-sim (phone E, over MQTT)",
        Command::new(sim_bin)
            .args(["--mqtt", MQTT_BROKER, "--mqtt-prefix", prefix])
            .args(["--bridge-id", "phone-e", "--user-id", "phone-e"])
            .args(["--device", "lock-6", "--latency-ms", "20"])
            .env("RUST_LOG", "warn")
            .stdout(log("phone-e")?)
            .stderr(log("phone-e-err")?),
    )?;
    let online = wait_for(
        "lock-6 to be online through the broker (is Mosquitto running? `cargo xtask services`)",
        Duration::from_mins(1),
        || {
            http(addr, "GET", "/v1/devices/lock-6", None)
                .ok()
                .filter(|(_, v)| v.get("bleConnected") == Some(&Value::Bool(true)))
                .map(|(_, v)| v)
        },
    )?;
    show("GET", "/v1/devices/lock-6", None, 200, &online);
    let body = json!({"payload": "03"});
    let (status, answer) = http(addr, "POST", "/v1/devices/lock-6/commands", Some(&body))?;
    show(
        "POST",
        "/v1/devices/lock-6/commands",
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 200, &answer)?;
    println!(
        "   over MQTT, the same command path: the lock says {}",
        explain(string_field(&answer, "payload")?)
    );
    let (_, metrics) = http_text(addr, "GET", "/metrics", None)?;
    if let Some(line) = metrics
        .lines()
        .find(|l| l.starts_with("bridge_connections{role=\"bridge\"}"))
    {
        println!("   /metrics counts the phones of both transports: {line}");
    }
    Ok(())
}

/// A lock's reply in words (the smart-lock byte protocol of `bridge_client::lock`).
pub(crate) fn explain(payload: &str) -> &'static str {
    match payload {
        "8101" => "lock acknowledged: now locked",
        "8200" => "unlock acknowledged: now unlocked",
        p if p.starts_with("8301") => "status: locked",
        p if p.starts_with("8300") => "status: unlocked",
        _ => "a reply the demo does not know",
    }
}

/// Builds the server and the phone simulator in debug, with `features` (cargo's
/// `--features` list), and returns the paths of the two binaries.
pub(crate) fn build_binaries(
    root: &Path,
    cargo: &str,
    features: &str,
) -> Result<(PathBuf, PathBuf), String> {
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "bridge-server",
            "-p",
            "bridge-client",
            "--features",
            features,
            "--bins",
        ])
        .current_dir(root)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("build failed".into());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok((
        target.join("debug/bridge-server"),
        target.join("debug/bridge-sim"),
    ))
}

pub(crate) fn demo(root: &Path, cargo: &str) -> Result<(), String> {
    println!("==> building the server and the phone simulator");
    let (server_bin, sim_bin) = build_binaries(root, cargo, "bridge-client/sim")?;

    let work = std::env::temp_dir().join(format!("bridge-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = run_story(&server_bin, &sim_bin, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_story(server_bin: &Path, sim_bin: &Path, work: &Path) -> Result<(), String> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ws_url = format!("ws://{addr}/ws");
    let log = |name: &str| -> Result<Stdio, String> {
        std::fs::File::create(work.join(format!("{name}.log")))
            .map(Stdio::from)
            .map_err(|e| e.to_string())
    };
    let mut children = Children {
        running: Vec::new(),
    };

    step(
        1,
        "Start the server: development mode on loopback, SQLite queue, and bridges over MQTT \
         too (the local Mosquitto).",
    );
    // Topics of this run's own, and a client id the broker forgets after a day.
    let mqtt_prefix = format!("bridge-demo-{}", std::process::id());
    children.spawn(
        "bridge-server",
        Command::new(server_bin)
            .args(["--listen", &addr.to_string()])
            .args(["--mqtt", MQTT_BROKER, "--mqtt-prefix", &mqtt_prefix])
            .args(["--node-id", "demo"])
            .arg("--queue")
            .arg(format!("sqlite://{}", work.join("queue.sqlite").display()))
            .env("RUST_LOG", "warn")
            .stdout(log("server")?)
            .stderr(log("server-err")?),
    )?;
    wait_for(
        "the server to answer /healthz",
        Duration::from_secs(30),
        || {
            http(addr, "GET", "/healthz", None)
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )?;
    println!("   the server answers on http://{addr}");
    let stream = read_stream(addr)?;
    println!("   a backend listens to GET /v1/stream (Server-Sent Events) from now on");

    step(
        2,
        "A phone near lock-1 and lock-2 connects (bridge-sim, 20 ms BLE latency).",
    );
    children.spawn(
        "bridge-sim (phone A)",
        Command::new(sim_bin)
            .args([
                "--url",
                &ws_url,
                "--user-id",
                "phone-a",
                "--latency-ms",
                "20",
            ])
            .args(["--device", "lock-1", "--device", "lock-2"])
            .env("RUST_LOG", "warn")
            .stdout(log("phone-a")?)
            .stderr(log("phone-a-err")?),
    )?;
    let devices = wait_for("both locks to be online", Duration::from_secs(30), || {
        let (_, v) = http(addr, "GET", "/v1/devices", None).ok()?;
        let n = v.get("devices")?.as_array()?.len();
        (n >= 2).then_some(v)
    })?;
    show("GET", "/v1/devices", None, 200, &devices);

    step(
        3,
        "Unlock lock-1: the command goes to the phone, the phone to the lock, the answer back.",
    );
    let body = json!({"payload": "02"});
    let (status, answer) = http(addr, "POST", "/v1/devices/lock-1/commands", Some(&body))?;
    show(
        "POST",
        "/v1/devices/lock-1/commands",
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 200, &answer)?;
    println!(
        "   the lock says: {}",
        explain(string_field(&answer, "payload")?)
    );

    step(
        4,
        "Send lock-2 a byte it does not understand: the device's error comes back as 502.",
    );
    let body = json!({"payload": "7f"});
    let (status, answer) = http(addr, "POST", "/v1/devices/lock-2/commands", Some(&body))?;
    show(
        "POST",
        "/v1/devices/lock-2/commands",
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 502, &answer)?;
    println!(
        "   the phone reported `{}`",
        string_field(&answer, "error")?
    );

    step(
        5,
        "Lock lock-3, whose phone is away: the command is queued, not lost.",
    );
    let body = json!({"payload": "01", "ifOffline": "queue", "commandType": "lock"});
    let (status, answer) = http(addr, "POST", "/v1/devices/lock-3/commands", Some(&body))?;
    show(
        "POST",
        "/v1/devices/lock-3/commands",
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 202, &answer)?;
    let queued = string_field(&answer, "commandId")?.to_owned();
    let (status, view) = http(addr, "GET", &format!("/v1/commands/{queued}"), None)?;
    show(
        "GET",
        &format!("/v1/commands/{queued}"),
        None,
        status,
        &view,
    );
    println!("   lock-3's phone arrives home:");
    children.spawn(
        "bridge-sim (phone B)",
        Command::new(sim_bin)
            .args([
                "--url",
                &ws_url,
                "--user-id",
                "phone-b",
                "--latency-ms",
                "20",
            ])
            .args(["--device", "lock-3"])
            .env("RUST_LOG", "warn")
            .stdout(log("phone-b")?)
            .stderr(log("phone-b-err")?),
    )?;
    let done = wait_command(addr, &queued, "succeeded")?;
    show("GET", &format!("/v1/commands/{queued}"), None, 200, &done);
    let reply = done
        .pointer("/result/payload")
        .and_then(Value::as_str)
        .unwrap_or_default();
    println!(
        "   delivered when lock-3 came online; the lock says: {}",
        explain(reply)
    );

    step(6, "Unlock lock-1 only after a person confirms it.");
    let body = json!({"payload": "02", "commandType": "unlock", "requiresConfirmation": true});
    let (status, answer) = http(addr, "POST", "/v1/devices/lock-1/commands", Some(&body))?;
    show(
        "POST",
        "/v1/devices/lock-1/commands",
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 202, &answer)?;
    let gated = string_field(&answer, "commandId")?.to_owned();
    println!("   it waits, although lock-1 is online; now the person confirms:");
    let path = format!("/v1/commands/{gated}/confirm");
    let (status, answer) = http(addr, "POST", &path, None)?;
    show("POST", &path, None, status, &answer);
    expect_status(status, 200, &answer)?;
    let done = wait_command(addr, &gated, "succeeded")?;
    show("GET", &format!("/v1/commands/{gated}"), None, 200, &done);
    println!("   delivered at once after confirmation.");

    step(
        7,
        "Two more phones: one whose lock takes the write and never answers, one whose BLE \
         link never comes up (bridge-sim --fail-at written / --fail-at received).",
    );
    for (phone, lock, stage) in [
        ("phone-c", "lock-4", "written"),
        ("phone-d", "lock-5", "received"),
    ] {
        children.spawn(
            "bridge-sim (a failing phone)",
            Command::new(sim_bin)
                .args(["--url", &ws_url, "--user-id", phone, "--fail-at", stage])
                .args(["--device", lock])
                .env("RUST_LOG", "warn")
                .stdout(log(phone)?)
                .stderr(log(&format!("{phone}-err"))?),
        )?;
    }
    for lock in ["lock-4", "lock-5"] {
        let path = format!("/v1/devices/{lock}");
        wait_for(
            &format!("{lock} to be online"),
            Duration::from_secs(30),
            || {
                http(addr, "GET", &path, None)
                    .ok()
                    .filter(|(_, v)| v.get("online") == Some(&Value::Bool(true)))
            },
        )?;
    }
    for (lock, meaning) in [
        (
            "lock-4",
            "the phone wrote to the lock, and the lock never answered",
        ),
        (
            "lock-5",
            "the phone got the command, and the BLE link to the lock never came up",
        ),
    ] {
        let body = json!({"payload": "02", "timeoutMs": 1500});
        let path = format!("/v1/devices/{lock}/commands");
        let (status, answer) = http(addr, "POST", &path, Some(&body))?;
        show("POST", &path, Some(&body), status, &answer);
        expect_status(status, 504, &answer)?;
        println!(
            "   timeout at stage `{}`: {meaning}",
            string_field(&answer, "stage")?
        );
    }

    mqtt_phone(sim_bin, addr, &mqtt_prefix, &mut children, &log)?;

    step(
        9,
        "What the live stream carried meanwhile (presence, results of every command that ended):",
    );
    // The last results may still be on their way.
    std::thread::sleep(Duration::from_millis(300));
    for (event, data) in stream.lock().map_err(|e| e.to_string())?.iter() {
        println!("   event: {event:<15} {data}");
    }

    step(10, "Stop the phones and the server.");
    children.stop();
    println!("   everything stopped; nothing is left running.");
    println!(
        "\nThe demo is over. Run it yourself: `cargo run --release -p bridge-server` (see README.md)."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }

    #[test]
    fn lock_replies_are_explained_in_words() {
        assert_eq!(explain("8200"), "unlock acknowledged: now unlocked");
        assert_eq!(explain("830164"), "status: locked");
    }
}

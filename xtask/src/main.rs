//! Project chores, run as `cargo xtask <task>` (see `cargo xtask` for the list).
//!
//! `std` and `serde_json` only: the tasks run cargo and talk to the local services with a few
//! bytes of their wire protocols, so that `cargo xtask ci` works on a fresh clone with nothing
//! installed beyond the Rust toolchain.

mod cluster_demo;
mod counts;
mod demo;
mod versus;

use std::env;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// A task: its name, one line of help, and what runs it.
struct Task {
    name: &'static str,
    help: &'static str,
    run: fn(&[String]) -> Result<(), String>,
}

const TASKS: &[Task] = &[
    Task {
        name: "ci",
        help: "everything CI runs, failing fast: fmt, clippy, services, tests, docs, benches compile, examples",
        run: ci,
    },
    Task {
        name: "services",
        help: "check that PostgreSQL, Redis, RabbitMQ, NATS and Mosquitto answer (start them if stopped)",
        run: services_task,
    },
    Task {
        name: "demo",
        help: "start the server and a simulated phone, and walk through commands over HTTP",
        run: |_| demo::demo(&workspace_root(), &cargo()),
    },
    Task {
        name: "cluster-demo",
        help: "three server nodes on the local NATS and PostgreSQL: phones and a backend on different nodes, one killed",
        run: |_| cluster_demo::cluster_demo(&workspace_root(), &cargo()),
    },
    Task {
        name: "fuzz",
        help: "[--seconds N] [TARGET]: every fuzz target (or one) for N seconds each (default 60); needs nightly and cargo-fuzz",
        run: fuzz,
    },
    Task {
        name: "counts",
        help: counts::HELP,
        run: |args| counts::counts(&workspace_root(), &cargo(), args),
    },
    Task {
        name: "versus",
        help: versus::HELP,
        run: |args| versus::versus(&workspace_root(), &cargo(), args),
    },
    Task {
        name: "test",
        help: "the test suite only (nextest if installed, else cargo test), all features",
        run: |_| {
            check_services()?;
            check_browser()?;
            run_tests()
        },
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(name) = args.first() else {
        print_tasks();
        return ExitCode::SUCCESS;
    };
    let Some(task) = TASKS.iter().find(|t| t.name == name) else {
        eprintln!("unknown task `{name}`\n");
        print_tasks();
        return ExitCode::from(2);
    };
    match (task.run)(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\nxtask {}: FAILED: {message}", task.name);
            ExitCode::FAILURE
        }
    }
}

fn print_tasks() {
    println!("usage: cargo xtask <task>\n\ntasks:");
    for task in TASKS {
        println!("  {:<10} {}", task.name, task.help);
    }
}

/// Runs a command from the workspace root, echoing it; an error names the failed step.
fn run(step: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    println!("\n==> {step}: {program} {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("{step}: cannot run {program}: {e}"))?;
    println!("<== {step}: {status} in {:.0?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

/// Builds `e2e_roundtrip` in release mode (`counts` and `versus` run it); its path.
fn build_e2e_roundtrip(cargo: &str) -> Result<std::path::PathBuf, String> {
    run(
        "build e2e_roundtrip",
        cargo,
        &[
            "build",
            "--release",
            "-p",
            "benches",
            "--bin",
            "e2e_roundtrip",
        ],
        &[],
    )?;
    Ok(workspace_root().join("target/release/e2e_roundtrip"))
}

fn workspace_root() -> std::path::PathBuf {
    let manifest = env!("CARGO_MANIFEST_DIR");
    std::path::Path::new(manifest)
        .parent()
        .map_or_else(|| manifest.into(), std::path::Path::to_path_buf)
}

fn ci(_args: &[String]) -> Result<(), String> {
    let cargo = cargo();
    check_protocol_copy(&workspace_root())?;
    run("format", &cargo, &["fmt", "--all", "--", "--check"], &[])?;
    run(
        "clippy",
        &cargo,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    check_dependency_rule(&cargo)?;
    check_feature_combinations(&cargo)?;
    check_services()?;
    check_browser()?;
    run_tests()?;
    run(
        "docs",
        &cargo,
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    run(
        "benches compile",
        &cargo,
        &["check", "--workspace", "--benches"],
        &[],
    )?;
    // Each example is one command and checks what it shows; custom_store's conformance
    // suite already ran with the tests.
    for example in EXAMPLES {
        run(
            &format!("example {example}"),
            &cargo,
            &["run", "--quiet", "-p", "examples", "--example", example],
            &[],
        )?;
    }
    println!("\nxtask ci: all steps passed");
    Ok(())
}

/// How long `cargo xtask fuzz` runs each target unless told (`--seconds N`).
const DEFAULT_FUZZ_SECONDS: u64 = 60;

/// `cargo xtask fuzz [--seconds N] [TARGET]`: runs each fuzz target of `fuzz/Cargo.toml` (or
/// the one named) with libFuzzer for a fixed time, on nightly, from the committed seeds
/// (`fuzz/seeds/T`) and the corpus of earlier runs (`fuzz/corpus/T`, not committed, where
/// new inputs go). Stops at the first target that crashes; the input is in
/// `fuzz/artifacts/T`.
fn fuzz(args: &[String]) -> Result<(), String> {
    let (seconds, only) = fuzz_args(args)?;
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml"))
        .map_err(|e| format!("cannot read fuzz/Cargo.toml: {e}"))?;
    let targets = fuzz_targets(&manifest);
    let chosen: Vec<&str> = match &only {
        Some(name) if targets.iter().any(|t| t == name) => vec![name.as_str()],
        Some(name) => {
            return Err(format!(
                "no fuzz target `{name}`; there are: {}",
                targets.join(", ")
            ));
        }
        None => targets.iter().map(String::as_str).collect(),
    };
    let nightly_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly_fuzz {
        return Err("needs a nightly toolchain and cargo-fuzz: `rustup toolchain install nightly` and `cargo install cargo-fuzz`".into());
    }
    let max_time = format!("-max_total_time={seconds}");
    for target in &chosen {
        let corpus = format!("fuzz/corpus/{target}");
        let seeds = format!("fuzz/seeds/{target}");
        std::fs::create_dir_all(root.join(&corpus)).map_err(|e| e.to_string())?;
        // `cargo` itself through rustup's proxy, not $CARGO (this stable cargo): cargo-fuzz
        // runs `$CARGO build`, and a stable cargo driving the nightly compiler rebuilds
        // everything a `cargo +nightly fuzz build` from a shell has built.
        let step = format!("fuzz {target} for {seconds} s");
        println!("\n==> {step}: cargo +nightly fuzz run {target} {corpus} {seeds} -- {max_time}");
        let started = Instant::now();
        let status = Command::new("cargo")
            .args([
                "+nightly", "fuzz", "run", target, &corpus, &seeds, "--", &max_time,
            ])
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .current_dir(&root)
            .status()
            .map_err(|e| format!("{step}: cannot run cargo: {e}"))?;
        println!("<== {step}: {status} in {:.0?}", started.elapsed());
        if !status.success() {
            return Err(format!(
                "{step} failed ({status}): the crashing input is in fuzz/artifacts/{target}/; once fixed, keep it in fuzz/regressions/{target}/"
            ));
        }
    }
    println!(
        "\nxtask fuzz: {} target(s), {seconds} s each, no crash",
        chosen.len()
    );
    Ok(())
}

/// `[--seconds N] [TARGET]`.
fn fuzz_args(args: &[String]) -> Result<(u64, Option<String>), String> {
    let mut seconds = DEFAULT_FUZZ_SECONDS;
    let mut target = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .ok_or("--seconds needs a whole number of seconds above 0")?;
        } else if arg.starts_with('-') || target.is_some() {
            return Err(format!(
                "unexpected `{arg}`; usage: cargo xtask fuzz [--seconds N] [TARGET]"
            ));
        } else {
            target = Some(arg.clone());
        }
    }
    Ok((seconds, target))
}

/// The `[[bin]]` names of the fuzz crate's manifest: its targets.
fn fuzz_targets(manifest: &str) -> Vec<String> {
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|name| name.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// The runnable examples in `examples/` (`cargo run -p examples --example NAME`).
const EXAMPLES: &[&str] = &["embedded", "session_alone", "custom_hub", "custom_store"];

/// The repository's `docs/PROTOCOL.md` is a byte-for-byte copy of the shared contract
/// `../shared/PROTOCOL.md`; when the shared one is present, a difference fails the build.
fn check_protocol_copy(root: &std::path::Path) -> Result<(), String> {
    let shared = root.join("../shared/PROTOCOL.md");
    let copy = root.join("docs/PROTOCOL.md");
    println!(
        "\n==> protocol document: {} against {}",
        copy.display(),
        shared.display()
    );
    let Ok(shared_text) = std::fs::read(&shared) else {
        println!("<== protocol document: no shared copy here; skipped");
        return Ok(());
    };
    let copy_text = std::fs::read(&copy).map_err(|e| {
        format!(
            "protocol document: cannot read {}: {e}; copy it with `cp {} {}`",
            copy.display(),
            shared.display(),
            copy.display()
        )
    })?;
    if copy_text != shared_text {
        return Err(format!(
            "protocol document: {} differs from the shared contract {}; copy it with `cp {} {}` \
             (and update the golden fixtures for any new example)",
            copy.display(),
            shared.display(),
            shared.display(),
            copy.display()
        ));
    }
    println!("<== protocol document: identical");
    Ok(())
}

/// The layering of ARCHITECTURE.md: the protocol crate has no async runtime, the
/// middle-layer crates depend on the protocol crate only, never on each other, and the
/// command layer (`bridge-dispatch`) on session, queue and protocol only.
/// The crates `package` depends on for normal builds (`cargo tree -e normal`), with every
/// feature or with none.
fn dependency_tree(cargo: &str, package: &str, all_features: bool) -> Result<Vec<String>, String> {
    let mut args = vec!["tree", "-p", package];
    if all_features {
        args.push("--all-features");
    }
    args.extend(["-e", "normal", "--prefix", "none"]);
    let output = Command::new(cargo)
        .args(&args)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("cargo tree -p {package} failed"));
    }
    Ok(crate_names(&output.stdout))
}

fn check_dependency_rule(cargo: &str) -> Result<(), String> {
    const MIDDLE: &[&str] = &[
        "bridge-session",
        "bridge-hub",
        "bridge-queue",
        "bridge-client",
    ];
    println!("\n==> dependency rule");
    let tree_with =
        |package: &str, all_features: bool| dependency_tree(cargo, package, all_features);
    let tree = |package: &str| tree_with(package, true);
    let protocol = tree("bridge-protocol")?;
    for forbidden in ["tokio", "async-std", "smol", "mio"] {
        if protocol.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-protocol depends on {forbidden}; it must do no IO"
            ));
        }
    }
    for package in MIDDLE {
        let deps = tree(package)?;
        for other in MIDDLE.iter().filter(|o| *o != package) {
            if deps.iter().any(|c| c == other) {
                return Err(format!(
                    "{package} depends on {other}; middle-layer crates depend on bridge-protocol only"
                ));
            }
        }
    }
    // The command layer sits on session, queue and protocol: never on the hub (it reaches
    // connections through its `Outlet`), the client or the server.
    let dispatch = tree("bridge-dispatch")?;
    for forbidden in ["bridge-hub", "bridge-client", "bridge-server"] {
        if dispatch.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-dispatch depends on {forbidden}; it may depend on bridge-session, bridge-queue and bridge-protocol only"
            ));
        }
    }
    // The cluster is a hub like a user's own: it plugs into the server through the hub's
    // public seams, and knows neither the server nor the layers under it.
    let cluster = tree("bridge-cluster")?;
    for forbidden in [
        "bridge-server",
        "bridge-session",
        "bridge-queue",
        "bridge-dispatch",
        "bridge-client",
    ] {
        if cluster.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-cluster depends on {forbidden}; it may depend on bridge-hub and bridge-protocol only"
            ));
        }
    }
    // Bridges over MQTT are a second transport built as a user's own would be: through the
    // hub's public seams (`LocalHub::serve`), with the server's authentication handed in as
    // a function; so the MQTT crate knows neither the server nor the layers under it.
    let mqtt = tree("bridge-mqtt")?;
    for forbidden in [
        "bridge-server",
        "bridge-session",
        "bridge-queue",
        "bridge-dispatch",
        "bridge-client",
        "bridge-cluster",
    ] {
        if mqtt.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-mqtt depends on {forbidden}; it may depend on bridge-hub and bridge-protocol only"
            ));
        }
    }
    // The client is a library first: the simulator's command line and log output come
    // with its `sim` feature only.
    check_client_library_dependencies(&tree_with("bridge-client", false)?)?;
    // The protocol crate's schemas for the server's OpenAPI document come with its
    // `openapi` feature only (checked with all features above: still no async runtime).
    check_protocol_library_dependencies(&tree_with("bridge-protocol", false)?)?;
    println!(
        "    bridge-protocol has no async runtime; {} depend on each other not at all; bridge-dispatch reaches no hub, client or server; bridge-cluster and bridge-mqtt sit on hub and protocol only; bridge-client without features has no clap or tracing-subscriber; bridge-protocol without features has no utoipa",
        MIDDLE.join(", ")
    );
    Ok(())
}

/// The crate names of `cargo tree --prefix none` output, one per line.
fn crate_names(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The crates that `cargo tree -p bridge-client -e normal` (no features) must not show:
/// they belong to the `bridge-sim` binary, behind the `sim` feature.
const SIM_ONLY: &[&str] = &["clap", "tracing-subscriber"];

/// `deps`: the crate names of `cargo tree -p bridge-client -e normal --prefix none`.
fn check_client_library_dependencies(deps: &[String]) -> Result<(), String> {
    for forbidden in SIM_ONLY {
        if deps.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-client without features depends on {forbidden}; it belongs to bridge-sim, behind the `sim` feature (`{forbidden} = {{ ..., optional = true }}`, `sim = [\"dep:{forbidden}\"]`)"
            ));
        }
    }
    Ok(())
}

/// The crates that `cargo tree -p bridge-protocol -e normal` (no features) must not show:
/// the OpenAPI schemas are for the server's `GET /v1/openapi.json`, behind the protocol
/// crate's `openapi` feature, so that a phone app or gateway speaking the protocol from Rust
/// compiles serde, serde_json, uuid, toml and thiserror only. (utoipa itself does no IO.)
const OPENAPI_ONLY: &[&str] = &["utoipa", "utoipa-gen"];

/// `deps`: the crate names of `cargo tree -p bridge-protocol -e normal --prefix none`.
fn check_protocol_library_dependencies(deps: &[String]) -> Result<(), String> {
    for forbidden in OPENAPI_ONLY {
        if deps.iter().any(|c| c == forbidden) {
            return Err(format!(
                "bridge-protocol without features depends on {forbidden}; it belongs to the server's OpenAPI document, behind the `openapi` feature (`{forbidden} = {{ ..., optional = true }}`, `openapi = [\"dep:{forbidden}\"]`)"
            ));
        }
    }
    Ok(())
}

/// Backend features must be additive: the queue crate builds with none, each alone, and all,
/// and its tests, benches and examples are clippy-clean in each of these builds (a helper
/// used by one backend's tests only is dead code, so an error, when that backend is off).
fn check_feature_combinations(cargo: &str) -> Result<(), String> {
    let manifest = workspace_root().join("crates/bridge-queue/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
    let features = cargo_features(&text);
    if features.is_empty() {
        return Ok(());
    }
    let clippy = |label: &str, features: &[&str]| {
        let mut args = vec![
            "clippy",
            "-p",
            "bridge-queue",
            "--all-targets",
            "--no-default-features",
        ];
        args.extend_from_slice(features);
        args.extend_from_slice(&["--", "-D", "warnings"]);
        run(label, cargo, &args, &[])
    };
    clippy("queue: no features", &[])?;
    for feature in features
        .iter()
        .filter(|f| *f != "default" && *f != "testkit")
    {
        clippy(
            &format!("queue: feature {feature} alone"),
            &["--features", feature],
        )?;
    }
    Ok(())
}

/// The names in a manifest's `[features]` table.
fn cargo_features(manifest: &str) -> Vec<String> {
    let mut in_features = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if !in_features {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_owned());
            }
        }
    }
    out
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn has_nextest() -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_tests() -> Result<(), String> {
    let cargo = cargo();
    if has_nextest() {
        // Doctests first (nextest does not run them), so that nextest's summary is the last
        // word of the test output.
        run(
            "doctests",
            &cargo,
            &["test", "--workspace", "--all-features", "--doc"],
            &[],
        )?;
        run(
            "tests (nextest)",
            &cargo,
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--profile",
                "ci",
            ],
            &[],
        )
    } else {
        run(
            "tests (cargo test)",
            &cargo,
            &["test", "--workspace", "--all-features"],
            &[],
        )
    }
}

/// The browser of the console's tests (`crates/bridge-server/tests/e2e/console.rs`): a
/// program named by `env_var`, else the first of `candidates` that exists.
fn browser_program(env_var: &str, candidates: &[&str]) -> Option<std::path::PathBuf> {
    if let Some(path) = env::var_os(env_var) {
        return Some(path.into());
    }
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// The major version in a `--version` line such as `Chromium 156.0.8078.114 built on …` or
/// `ChromeDriver 156.0.8078.114 (…)`.
fn major_version(version_line: &str) -> Option<u32> {
    version_line
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse().ok())
}

/// Headless Chromium and its chromedriver, of the same major version, for the console's
/// browser tests. Missing is an error (the tests would fail): `.ci/run` installs Debian's
/// `chromium` and `chromium-driver`.
fn check_browser() -> Result<(), String> {
    println!("\n==> browser (the console's tests)");
    let hint = "install Debian's chromium and chromium-driver \
                (`apt-get install -y chromium chromium-driver`; .ci/run does it), \
                or name them with BRIDGE_CHROMIUM and BRIDGE_CHROMEDRIVER";
    let version = |env_var: &str, candidates: &[&str]| -> Result<(String, u32), String> {
        let program = browser_program(env_var, candidates)
            .ok_or_else(|| format!("none of {candidates:?} exists: {hint}"))?;
        let output = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}; {hint}", program.display()))?;
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let major = major_version(&line)
            .ok_or_else(|| format!("{} --version said {line:?}", program.display()))?;
        Ok((line, major))
    };
    let (browser, browser_major) = version(
        "BRIDGE_CHROMIUM",
        &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
    )?;
    let (driver, driver_major) = version(
        "BRIDGE_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    )?;
    if browser_major != driver_major {
        return Err(format!(
            "{browser} and {driver} differ in major version: chromedriver drives its own version only"
        ));
    }
    println!("    {browser}; {driver}");
    Ok(())
}

/// A service the tests talk to.
struct Service {
    name: &'static str,
    env_var: &'static str,
    default_url: &'static str,
    /// Bytes that make the service answer, and a check of its first bytes back.
    probe: &'static [u8],
    answers: fn(&[u8]) -> bool,
    /// How to start it on this machine when it is local and stopped.
    start: &'static [&'static str],
    /// The backends whose tests need it.
    used_by: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        env_var: "BRIDGE_TEST_POSTGRES_URL",
        default_url: "postgres://postgres@127.0.0.1:5432/test",
        // SSLRequest: the server answers `S` or `N`.
        probe: &[0, 0, 0, 8, 4, 210, 22, 47],
        answers: |b| matches!(b.first(), Some(b'S' | b'N')),
        start: &[
            "sh",
            "-c",
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        ],
        used_by: "bridge-queue postgres",
    },
    Service {
        name: "Redis",
        env_var: "BRIDGE_TEST_REDIS_URL",
        default_url: "redis://127.0.0.1:6379",
        probe: b"PING\r\n",
        answers: |b| b.starts_with(b"+PONG"),
        start: &[
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        used_by: "bridge-queue redis",
    },
    Service {
        name: "RabbitMQ",
        env_var: "BRIDGE_TEST_AMQP_URL",
        default_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
        // AMQP 0-9-1 protocol header: the server answers with a Connection.Start method frame.
        probe: b"AMQP\x00\x00\x09\x01",
        answers: |b| b.first() == Some(&1),
        start: &["rabbitmq-server", "-detached"],
        used_by: "bridge-queue rabbitmq",
    },
    Service {
        name: "NATS",
        env_var: "BRIDGE_TEST_NATS_URL",
        default_url: "nats://127.0.0.1:4222",
        // A NATS server greets every connection with `INFO {...}` before anything else.
        probe: b"PING\r\n",
        answers: |b| b.starts_with(b"INFO"),
        start: &[
            "sh",
            "-c",
            "mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background \
             --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
             -l /var/log/nats-server.log",
        ],
        used_by: "bridge-cluster (the cluster tests of bridge-server)",
    },
    Service {
        name: "Mosquitto",
        env_var: "BRIDGE_TEST_MQTT_URL",
        default_url: "mqtt://127.0.0.1:1883",
        // An MQTT 3.1.1 CONNECT with an empty client id and a clean session: the broker
        // answers with a CONNACK (packet type 2).
        probe: &[
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
        ],
        answers: |b| b.first() == Some(&0x20),
        start: &["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"],
        used_by: "bridge-mqtt (the MQTT tests of bridge-server and bridge-client)",
    },
];

/// `host:port` of a URL such as `postgres://user@host:5432/db`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = host_port.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

fn probe(service: &Service, host: &str, port: u16) -> Result<(), String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream.write_all(service.probe).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
    if (service.answers)(&buf[..n]) {
        Ok(())
    } else {
        Err(format!("unexpected answer {:?}", &buf[..n]))
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

fn services_task(_args: &[String]) -> Result<(), String> {
    check_services()
}

/// Checks each service; starts a stopped local one. Under `CI=true` a service that does not
/// answer is an error; elsewhere it is a loud warning (its backend's tests will fail).
fn check_services() -> Result<(), String> {
    let in_ci = env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    println!("\n==> services (CI={in_ci})");
    let mut missing = Vec::new();
    for service in SERVICES {
        let url = env::var(service.env_var).unwrap_or_else(|_| service.default_url.into());
        let Some((host, port)) = host_port(&url) else {
            missing.push(format!(
                "{}: cannot read host:port from {url}",
                service.name
            ));
            continue;
        };
        let mut result = probe(service, &host, port);
        if result.is_err() && is_local(&host) {
            println!(
                "    {} at {host}:{port} does not answer; starting it",
                service.name
            );
            let _ = Command::new(service.start[0])
                .args(&service.start[1..])
                .status();
            let deadline = Instant::now() + Duration::from_mins(1);
            while Instant::now() < deadline {
                result = probe(service, &host, port);
                if result.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        match result {
            Ok(()) => println!(
                "    {:<10} {host}:{port} answers -> exercising {}",
                service.name, service.used_by
            ),
            Err(e) => missing.push(format!(
                "{} at {host}:{port} ({}) does not answer: {e}; the {} tests need it",
                service.name, service.env_var, service.used_by
            )),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    for m in &missing {
        eprintln!("    MISSING: {m}");
    }
    if in_ci {
        Err(format!(
            "{} service(s) missing under CI=true; backend tests may not skip",
            missing.len()
        ))
    } else {
        eprintln!("    (not CI: continuing; the tests that need these services will fail)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_copy_must_match_the_shared_document_when_there_is_one() {
        let base = env::temp_dir().join(format!("xtask-protocol-{}", std::process::id()));
        let root = base.join("repo");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(base.join("shared")).unwrap();
        std::fs::write(root.join("docs/PROTOCOL.md"), "# v1.1\n").unwrap();

        // No shared document: nothing to compare with.
        assert!(check_protocol_copy(&root).is_ok());

        std::fs::write(base.join("shared/PROTOCOL.md"), "# v1.1\n").unwrap();
        assert!(check_protocol_copy(&root).is_ok());

        std::fs::write(base.join("shared/PROTOCOL.md"), "# v1.2\n").unwrap();
        let error = check_protocol_copy(&root).unwrap_err();
        assert!(error.contains("copy it with `cp"), "{error}");

        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn fuzz_targets_are_the_bin_names_of_the_fuzz_manifest() {
        let manifest = "[package]\nname = \"x\"\n\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n\n[[bin]]\npath = \"b.rs\"\nname = \"b\"\n";
        assert_eq!(fuzz_targets(manifest), vec!["a", "b"]);
    }

    #[test]
    fn fuzz_arguments_are_seconds_and_one_target() {
        let args = |a: &[&str]| fuzz_args(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(args(&[]), Ok((DEFAULT_FUZZ_SECONDS, None)));
        assert_eq!(
            args(&["--seconds", "300", "token"]),
            Ok((300, Some("token".into())))
        );
        assert!(args(&["--seconds", "0"]).is_err());
        assert!(args(&["a", "b"]).is_err());
        assert!(args(&["--minutes", "3"]).is_err());
    }

    #[test]
    fn host_port_reads_every_service_url_form() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("amqp://guest:guest@localhost:5672/%2f"),
            Some(("localhost".into(), 5672))
        );
        assert_eq!(
            host_port("redis://127.0.0.1:6379"),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(
            host_port("redis://[::1]:6379/0"),
            Some(("::1".into(), 6379))
        );
        assert_eq!(host_port("no-scheme"), None);
    }

    #[test]
    fn the_client_library_must_not_pull_in_the_simulator_dependencies() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            check_client_library_dependencies(&names(&[
                "bridge-client",
                "bridge-protocol",
                "tokio",
                "tracing",
                "tracing-core",
            ]))
            .is_ok()
        );
        for forbidden in ["clap", "tracing-subscriber"] {
            let error =
                check_client_library_dependencies(&names(&["bridge-client", forbidden, "tokio"]))
                    .unwrap_err();
            assert!(error.contains(forbidden), "{error}");
            assert!(error.contains("`sim` feature"), "{error}");
        }
        // A crate whose name merely starts like one is not that crate.
        assert!(check_client_library_dependencies(&names(&["clap_lex", "tracing"])).is_ok());
    }

    /// The real manifest: `cargo tree` of bridge-client without features.
    #[test]
    fn the_client_library_without_features_has_no_simulator_dependencies() {
        let deps = dependency_tree(&cargo(), "bridge-client", false).unwrap();
        assert!(deps.iter().any(|c| c == "bridge-protocol"), "{deps:?}");
        check_client_library_dependencies(&deps).unwrap();
    }

    #[test]
    fn the_protocol_library_must_not_pull_in_the_openapi_schemas_without_its_feature() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            check_protocol_library_dependencies(&names(&[
                "bridge-protocol",
                "serde",
                "serde_json",
                "uuid",
            ]))
            .is_ok()
        );
        let error = check_protocol_library_dependencies(&names(&["bridge-protocol", "utoipa"]))
            .unwrap_err();
        assert!(error.contains("`openapi` feature"), "{error}");
    }

    /// The real manifest: `cargo tree` of bridge-protocol without features.
    #[test]
    fn the_protocol_library_without_features_has_no_openapi_dependencies() {
        let deps = dependency_tree(&cargo(), "bridge-protocol", false).unwrap();
        assert!(deps.iter().any(|c| c == "serde"), "{deps:?}");
        check_protocol_library_dependencies(&deps).unwrap();
    }

    #[test]
    fn the_major_version_is_read_from_browser_and_driver_version_lines() {
        assert_eq!(
            major_version("Chromium 156.0.8078.114 built on Debian GNU/Linux 12 (bookworm)"),
            Some(156)
        );
        assert_eq!(
            major_version(
                "ChromeDriver 156.0.8078.114 (ea19f9737303a76e07b53c6a1eec43355aca3b1d-refs/branch-heads/8078_108@{#5})"
            ),
            Some(156)
        );
        assert_eq!(major_version("no version here"), None);
    }

    #[test]
    fn features_are_read_from_the_features_table_only() {
        let manifest = "[package]\nname = \"x\"\n[features]\ndefault = [\"memory\"]\nmemory = []\nsqlite = [\"dep:sqlx\"]\n[dependencies]\nserde = \"1\"\n";
        assert_eq!(cargo_features(manifest), ["default", "memory", "sqlite"]);
    }
}

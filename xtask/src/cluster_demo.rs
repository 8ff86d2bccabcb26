//! `cargo xtask cluster-demo`: three server nodes as one cluster (PROTOCOL.md 5).
//!
//! Needs the local NATS server (127.0.0.1:4222) and PostgreSQL (127.0.0.1:5432, database
//! `test`; `BRIDGE_DEMO_POSTGRES_URL` and `BRIDGE_DEMO_NATS_URL` override them), as
//! `cargo xtask services` starts them. Starts three nodes on free loopback ports with their
//! own subject prefix (so it never meets another cluster on the same NATS server), a phone
//! on node A and a backend talking to node B; queues a command at B for a lock whose phone
//! then arrives at node C; kills node A with SIGKILL and watches its phone go on to node C.
//! Every child process is stopped at the end, on success or failure.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::demo::{
    Children, build_binaries, expect_status, explain, free_port, http, http_text, show, step,
    string_field, wait_command, wait_for,
};

pub(crate) fn cluster_demo(root: &Path, cargo: &str) -> Result<(), String> {
    println!("==> building the server (with PostgreSQL) and the phone simulator");
    let (server_bin, sim_bin) =
        build_binaries(root, cargo, "bridge-server/postgres,bridge-client/sim")?;
    let work = std::env::temp_dir().join(format!("bridge-cluster-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = run_story(&server_bin, &sim_bin, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The `bridge_cluster_nodes` gauge of the node at `addr`.
fn cluster_nodes(addr: SocketAddr) -> Option<u64> {
    let (_, text) = http_text(addr, "GET", "/metrics", None).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("bridge_cluster_nodes "))
        .and_then(|v| v.trim().parse().ok())
}

fn run_story(server_bin: &Path, sim_bin: &Path, work: &Path) -> Result<(), String> {
    let nats =
        std::env::var("BRIDGE_DEMO_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let postgres = std::env::var("BRIDGE_DEMO_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let run = std::process::id();
    let prefix = format!("demo-{run}");
    // Devices of this run only: the PostgreSQL queue outlives the demo.
    let lock = |n: u32| format!("demo{run}-lock-{n}");
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
        "Start three nodes, A, B and C: one NATS server, one PostgreSQL queue.",
    );
    let mut nodes = Vec::new();
    for (name, id) in [
        ("node A", "node-a"),
        ("node B", "node-b"),
        ("node C", "node-c"),
    ] {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        children.spawn(
            name,
            Command::new(server_bin)
                .args(["--listen", &addr.to_string(), "--queue", &postgres])
                .args(["--cluster", &nats, "--cluster-prefix", &prefix])
                .args(["--node-id", id, "--retry-interval-secs", "2"])
                .env("RUST_LOG", "warn")
                .stdout(log(id)?)
                .stderr(log(&format!("{id}-err"))?),
        )?;
        nodes.push(addr);
    }
    let [a, b, c] = [nodes[0], nodes[1], nodes[2]];
    for (name, addr) in [("A", a), ("B", b), ("C", c)] {
        wait_for(
            &format!("node {name} to join a cluster of three"),
            Duration::from_secs(30),
            || {
                let ready = http(addr, "GET", "/readyz", None).ok()?.0 == 200;
                (ready && cluster_nodes(addr) == Some(3)).then_some(())
            },
        )?;
        println!("   node {name} on http://{addr}: ready, bridge_cluster_nodes 3");
    }

    step(
        2,
        "A phone near lock-1 connects to node A (node C is its fallback).",
    );
    children.spawn(
        "phone 1",
        Command::new(sim_bin)
            .args(["--url", &format!("ws://{a}/ws")])
            .args(["--fallback-url", &format!("ws://{c}/ws")])
            .args(["--user-id", "phone-1", "--latency-ms", "20"])
            .args(["--device", &lock(1)])
            .env("RUST_LOG", "warn")
            .stdout(log("phone-1")?)
            .stderr(log("phone-1-err")?),
    )?;
    let path = format!("/v1/devices/{}", lock(1));
    let seen = wait_for(
        "node B to see lock-1 online",
        Duration::from_secs(30),
        || {
            let (_, v) = http(b, "GET", &path, None).ok()?;
            (v.get("online") == Some(&Value::Bool(true))).then_some(v)
        },
    )?;
    show("GET", &format!("(node B) {path}"), None, 200, &seen);

    step(
        3,
        "The backend, talking to node B, unlocks lock-1: B → A → phone → lock, and back.",
    );
    let commands = format!("/v1/devices/{}/commands", lock(1));
    let body = json!({"payload": "02"});
    let (status, answer) = http(b, "POST", &commands, Some(&body))?;
    show(
        "POST",
        &format!("(node B) {commands}"),
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
        "Node B queues a command for lock-2, whose phone is away; the phone arrives at node C.",
    );
    let body = json!({"payload": "01", "ifOffline": "queue", "commandType": "lock"});
    let path = format!("/v1/devices/{}/commands", lock(2));
    let (status, answer) = http(b, "POST", &path, Some(&body))?;
    show(
        "POST",
        &format!("(node B) {path}"),
        Some(&body),
        status,
        &answer,
    );
    expect_status(status, 202, &answer)?;
    let queued = string_field(&answer, "commandId")?.to_owned();
    children.spawn(
        "phone 2",
        Command::new(sim_bin)
            .args(["--url", &format!("ws://{c}/ws")])
            .args(["--user-id", "phone-2", "--latency-ms", "20"])
            .args(["--device", &lock(2)])
            .env("RUST_LOG", "warn")
            .stdout(log("phone-2")?)
            .stderr(log("phone-2-err")?),
    )?;
    let done = wait_command(b, &queued, "succeeded")?;
    show(
        "GET",
        &format!("(node B) /v1/commands/{queued}"),
        None,
        200,
        &done,
    );
    println!("   delivered by node C, where the phone is.");

    step(
        5,
        "Node A dies (SIGKILL). Its phone goes on to node C; the cluster sees two nodes.",
    );
    children.kill("node A");
    wait_for(
        "nodes B and C to see A gone",
        Duration::from_secs(30),
        || (cluster_nodes(b) == Some(2) && cluster_nodes(c) == Some(2)).then_some(()),
    )?;
    println!("   bridge_cluster_nodes is 2 on B and C");
    let (status, answer) = wait_for(
        "lock-1 to answer again, through node C",
        Duration::from_secs(30),
        || {
            let body = json!({"payload": "01"});
            let (status, answer) = http(b, "POST", &commands, Some(&body)).ok()?;
            (status == 200).then_some((status, answer))
        },
    )?;
    show(
        "POST",
        &format!("(node B) {commands}"),
        Some(&json!({"payload": "01"})),
        status,
        &answer,
    );

    step(6, "Stop the phones and the nodes.");
    children.stop();
    println!("   everything stopped; nothing is left running.");
    println!("\nThe cluster demo is over. README.md, \"Running a cluster\", says how to run one.");
    Ok(())
}

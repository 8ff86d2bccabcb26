//! The SQLite store survives `kill -9`: every command whose `enqueue` returned before the
//! writer process was killed is there after reopening, and the file opens cleanly.
//!
//! The test plays both parts: run normally, it starts its own test binary again on itself as
//! the writer (`BRIDGE_QUEUE_KILL_WRITER=<path>`), reads the ids the writer prints after each
//! acknowledged enqueue, kills it with SIGKILL mid-stream, reopens the file and checks every
//! acknowledged id.
#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use bridge_protocol::http::CommandStatus;
use bridge_protocol::{CommandId, CommandType, DeviceId, HexPayload, TtlSeconds};
use bridge_queue::{SqliteOptions, SqliteStore, Store, StoreConfig};

const WRITER_ENV: &str = "BRIDGE_QUEUE_KILL_WRITER";
const ACKED_BEFORE_KILL: usize = 40;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The writer: enqueues until killed, printing each id once `enqueue` has returned.
fn writer(path: &str) {
    runtime().block_on(async {
        let store = SqliteStore::open(&SqliteOptions::new(path), StoreConfig::default())
            .await
            .expect("writer opens the store");
        let ty = CommandType::new("unlock").expect("valid");
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            let device = DeviceId::new(&format!("lock-{i}")).expect("valid");
            let id = store
                .enqueue_or_update(
                    &device,
                    &ty,
                    HexPayload::from_bytes(vec![1, 2, 3]),
                    TtlSeconds::DEFAULT,
                )
                .await
                .expect("enqueue");
            writeln!(out, "ACK {id}").expect("stdout");
            out.flush().expect("stdout");
        }
    });
}

#[test]
fn survives_kill_9() {
    if let Ok(path) = std::env::var(WRITER_ENV) {
        writer(&path);
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "bridge-queue-kill-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("queue.db");

    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--exact",
            "survives_kill_9",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(WRITER_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the writer's output");
        let Some(id) = line.strip_prefix("ACK ") else {
            continue; // the test harness's own lines
        };
        acked.push(CommandId::new(id).expect("the writer prints command ids"));
        if acked.len() >= ACKED_BEFORE_KILL {
            break;
        }
    }
    child.kill().expect("SIGKILL the writer");
    let _ = child.wait();
    assert!(
        acked.len() >= ACKED_BEFORE_KILL,
        "the writer stopped after {} commands",
        acked.len()
    );

    runtime().block_on(async {
        let store = SqliteStore::open(&SqliteOptions::new(&path), StoreConfig::default())
            .await
            .expect("the killed writer's file opens");
        for id in &acked {
            let command = store
                .get(id)
                .await
                .unwrap_or_else(|e| panic!("acknowledged command {id} lost after kill -9: {e}"));
            assert_eq!(command.status, CommandStatus::Pending);
        }
        store.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

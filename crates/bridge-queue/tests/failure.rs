//! Failure behaviour: when the backend goes away, operations answer a typed `Unavailable`
//! within a bounded time; once it is back, the same store object works again and nothing
//! it had stored is lost.
//!
//! Each test starts a private server on a free port of its own (never the shared service),
//! kills it, and starts it again on the same data.

#![cfg(any(feature = "redis", feature = "postgres"))]

use std::net::TcpListener;
#[cfg(feature = "redis")]
use std::path::Path;
use std::path::PathBuf;
#[cfg(feature = "redis")]
use std::process::Child;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, CommandType, DeviceId, HexPayload, TtlSeconds};
use bridge_queue::{Cut, Lease, NodeId, Store, StoreError};

/// How long a store may take to answer `Unavailable`: its operation timeout plus slack.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
const ANSWER_BOUND: Duration = Duration::from_secs(3);
/// The grace of every lease: long enough that a lease taken before the crash (the command's
/// timeout plus this, on the real clock) still holds after the restart.
const GRACE: Duration = Duration::from_mins(5);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bridge-queue-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Runs one operation against a dead backend and checks it answers `Unavailable` in time.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = op.await;
    let took = started.elapsed();
    eprintln!("{what}: {:?} after {took:?}", result.as_ref().err());
    assert!(
        matches!(&result, Err(e @ StoreError::Unavailable { .. }) if e.is_retryable()),
        "{what}: expected Unavailable, got {result:?}"
    );
    assert!(
        took <= ANSWER_BOUND,
        "{what}: answered after {took:?}, over the bound of {ANSWER_BOUND:?}"
    );
}

/// Waits until `ready` says yes, for at most 20 s.
#[cfg(feature = "redis")]
async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready().await {
        assert!(Instant::now() < deadline, "{what} did not come up in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn device() -> DeviceId {
    DeviceId::new("lock-1").expect("valid")
}

fn node() -> NodeId {
    NodeId::new("node-a").expect("valid")
}

fn bytes(b: u8) -> HexPayload {
    HexPayload::from_bytes(vec![b])
}

/// What `fill` stored: the commands' ids, in queue order, and the live lease on the first.
struct Filled {
    ids: Vec<CommandId>,
    lease: Lease,
}

/// Stores three commands and leases the first.
async fn fill(store: &impl Store) -> Filled {
    let mut ids = Vec::new();
    for (i, ty) in ["a", "b", "c"].into_iter().enumerate() {
        let id = store
            .enqueue_or_update(
                &device(),
                &CommandType::new(ty).expect("valid"),
                bytes(u8::try_from(i).unwrap_or(0)),
                TtlSeconds::DEFAULT,
            )
            .await
            .expect("enqueue while the backend is up");
        ids.push(id);
    }
    let leased = store
        .lease_next(&device(), &node(), GRACE)
        .await
        .expect("lease")
        .expect("the first command is due");
    assert_eq!(leased.command.id, ids[0]);
    Filled {
        ids,
        lease: leased.lease,
    }
}

/// Every kind of call answers `Unavailable` in time while the backend is down.
async fn all_unavailable(store: &impl Store, filled: &Filled) {
    let ty = CommandType::new("d").expect("valid");
    assert_unavailable(
        "enqueue",
        store.enqueue_or_update(&device(), &ty, bytes(9), TtlSeconds::DEFAULT),
    )
    .await;
    assert_unavailable("get", store.get(&filled.ids[1])).await;
    assert_unavailable("lease_next", store.lease_next(&device(), &node(), GRACE)).await;
    assert_unavailable(
        "complete",
        store.complete(&filled.lease, CommandOutcome::Payload(bytes(0))),
    )
    .await;
    assert_unavailable("release", store.release(&filled.lease, Cut::Sent)).await;
    assert_unavailable("reclaim", store.reclaim(&node())).await;
    assert_unavailable("list_open", store.list_open(&device())).await;
    assert_unavailable("open_counts", store.open_counts()).await;
    assert_unavailable("ping", store.ping()).await;
}

/// After the restart: everything is there, in the same state (the lease still held, and
/// still the device's one), and the store goes on.
async fn all_back(store: &impl Store, filled: &Filled) {
    let open = store
        .list_open(&device())
        .await
        .expect("list_open after restart");
    assert_eq!(
        open.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        filled.ids,
        "nothing stored was lost"
    );
    assert_eq!(open[0].status, CommandStatus::Delivering);
    assert_eq!(open[0].lease_owner, Some(node()));
    assert_eq!(open[1].status, CommandStatus::Pending);
    assert!(
        store
            .lease_next(&device(), &node(), GRACE)
            .await
            .expect("lease_next after restart")
            .is_none(),
        "the lease taken before the crash still holds the device"
    );
    store
        .complete(&filled.lease, CommandOutcome::Payload(bytes(0)))
        .await
        .expect("complete after restart");
    let next = store
        .lease_next(&device(), &node(), GRACE)
        .await
        .expect("lease after restart")
        .expect("the next command is due");
    assert_eq!(next.command.id, filled.ids[1]);
}

#[cfg(feature = "redis")]
struct Killed(Option<Child>);

#[cfg(feature = "redis")]
impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(feature = "redis")]
mod redis {
    use bridge_queue::{RedisOptions, RedisStore, StoreConfig};
    use deadpool_redis::redis;

    use super::*;

    fn start(port: u16, dir: &Path) -> Killed {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        Killed(Some(child))
    }

    async fn answers(url: &str) -> bool {
        let Ok(client) = redis::Client::open(url) else {
            return false;
        };
        match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_is_unavailable_and_recovers_without_loss() {
        let port = free_port();
        let dir = temp_dir("redis");
        let url = format!("redis://127.0.0.1:{port}");
        let mut server = start(port, &dir);
        wait_until("private redis-server", || answers(&url)).await;

        let mut options = RedisOptions::new(url.clone());
        options.operation_timeout = OPERATION_TIMEOUT;
        let store = RedisStore::open(&options, StoreConfig::default())
            .await
            .expect("open");
        let filled = fill(&store).await;

        // kill -9: with appendfsync always, every answered write is on disk.
        drop(server);
        all_unavailable(&store, &filled).await;

        server = start(port, &dir);
        wait_until("restarted redis-server", || answers(&url)).await;
        all_back(&store, &filled).await;

        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use bridge_queue::{PostgresOptions, PostgresStore, StoreConfig};

    use super::*;

    /// A private PostgreSQL cluster in a temp dir, run as the `postgres` user when this
    /// process is root (initdb refuses root).
    struct Cluster {
        dir: PathBuf,
        port: u16,
        bin: PathBuf,
        as_root: bool,
    }

    fn bin_dir() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
            .pop()
            .expect("PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin")
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    }

    impl Cluster {
        fn run(&self, program: &str, args: &[&str]) {
            let program = self.bin.join(program);
            let mut command = if self.as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                Command::new(&program)
            };
            let output = command
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            assert!(
                output.status.success(),
                "{} {args:?} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        fn init() -> Self {
            let dir = temp_dir("postgres");
            let as_root = is_root();
            if as_root {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&dir)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown of the cluster dir failed");
            }
            let cluster = Self {
                dir,
                port: free_port(),
                bin: bin_dir(),
                as_root,
            };
            let data = cluster.data();
            cluster.run(
                "initdb",
                &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
            );
            cluster
        }

        fn data(&self) -> String {
            self.dir.join("data").display().to_string()
        }

        fn start(&self) {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
                self.port,
                self.dir.display()
            );
            let log = self.dir.join("log").display().to_string();
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &options,
                    "-l",
                    &log,
                    "-w",
                    "start",
                ],
            );
        }

        /// Stops the server the way a crash would: no checkpoint, no goodbye to clients.
        fn crash(&self) {
            self.run(
                "pg_ctl",
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            );
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let data = self.data();
            let program = self.bin.join("pg_ctl");
            let mut command = if self.as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                Command::new(&program)
            };
            let _ = command
                .args(["-D", &data, "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_down_is_unavailable_and_recovers_without_loss() {
        let cluster = tokio::task::spawn_blocking(|| {
            let cluster = Cluster::init();
            cluster.start();
            cluster
        })
        .await
        .expect("start a private PostgreSQL");

        let mut options = PostgresOptions::new(cluster.url()).with_schema("queue");
        options.operation_timeout = OPERATION_TIMEOUT;
        let store = PostgresStore::open(&options, StoreConfig::default())
            .await
            .expect("open");
        let filled = fill(&store).await;

        let cluster = tokio::task::spawn_blocking(move || {
            cluster.crash();
            cluster
        })
        .await
        .expect("crash the private PostgreSQL");
        all_unavailable(&store, &filled).await;

        let cluster = tokio::task::spawn_blocking(move || {
            cluster.start();
            cluster
        })
        .await
        .expect("restart the private PostgreSQL");
        all_back(&store, &filled).await;
        drop(cluster);
    }
}

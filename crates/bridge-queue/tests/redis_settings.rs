//! What `RedisStore::open` checks of the server's settings: a Redis that may evict keys
//! would drop queued commands silently, so the store refuses it unless told otherwise.
//!
//! Each test starts a private `redis-server` on a free port of its own with the settings
//! under test (never the shared service, whose settings are left alone).
#![cfg(feature = "redis")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bridge_queue::{RedisOptions, RedisStore, StoreConfig, StoreError};
use deadpool_redis::redis;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private redis-server, killed when dropped.
struct Private {
    child: Child,
    url: String,
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a private redis-server with `args` and waits until it answers.
async fn start(args: &[&str]) -> Private {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
    let server = Private {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = redis::Client::open(server.url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "private redis-server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_a_redis_that_may_evict_keys() {
    let server = start(&["--maxmemory-policy", "allkeys-lru"]).await;
    let result = RedisStore::open(&RedisOptions::new(&server.url), StoreConfig::default()).await;
    match result {
        Err(e @ StoreError::UnsafeServerSetting { .. }) => {
            let message = e.to_string();
            assert!(message.contains("maxmemory-policy"), "{message}");
            assert!(message.contains("allkeys-lru"), "{message}");
            assert!(message.contains("noeviction"), "{message}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected UnsafeServerSetting, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_accepts_an_evicting_redis_when_told_to() {
    let server = start(&["--maxmemory-policy", "allkeys-lru"]).await;
    let options = RedisOptions::new(&server.url).allow_eviction(true);
    let store = RedisStore::open(&options, StoreConfig::default())
        .await
        .expect("open with the opt-out");
    bridge_queue::Store::ping(&store).await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_goes_on_when_config_is_disabled() {
    // CONFIG renamed away, as some managed Redis services do: the settings cannot be
    // checked, which is a warning, not a refusal.
    let server = start(&["--rename-command", "CONFIG", ""]).await;
    RedisStore::open(&RedisOptions::new(&server.url), StoreConfig::default())
        .await
        .expect("open without CONFIG");
}

//! What `RedisStore::open` checks of the server's settings: a Redis that may evict keys
//! would drop queued commands silently, so the store refuses it unless told otherwise.
//!
//! Each test starts a private `redis-server` on a free port of its own with the settings
//! under test (never the shared service, whose settings are left alone).
#![cfg(feature = "redis")]

use bridge_queue::{RedisOptions, RedisStore, StoreConfig, StoreError};

mod private_redis;

use private_redis::start;

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

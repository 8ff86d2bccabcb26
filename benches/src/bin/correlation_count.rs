//! A fixed number of round trips of the correlation bench's `single` scenario
//! (`benches/benches/correlation.rs`), then exit: for counts that do not depend on the
//! machine's load — instructions under `valgrind --tool=callgrind`, heap blocks under
//! `valgrind --tool=dhat`.
//!
//! ```sh
//! cargo build --profile bench -p benches --bin correlation_count
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/c1 target/release/correlation_count single 10000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/c2 target/release/correlation_count single 110000
//! ```
//!
//! The difference of the two totals divided by the difference of the counts (100,000) is
//! the cost of one round trip, without the start-up. Modes:
//!
//! * `single`: the transport answers before its send returns (the bench's echo), one task,
//!   current-thread runtime — `correlation/bridge/single`.
//! * `deferred`: the answer comes from another task through a channel, so the caller waits
//!   for it — `correlation_deferred/bridge/single`.
//!
//! Same engine configuration as the bench: `SessionConfig::default()`, the example registry,
//! one device, a 10 s timeout, a 4-byte payload.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::{
    BleOutcome, BleResponse, BleWrite, ConfigRegistry, ConnectionId, DeviceId, HexPayload,
};
use bridge_session::{SessionConfig, SessionManager, Transport, TransportError};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION: ConnectionId = ConnectionId::new(1);

/// A bridge that answers every `ble_write` with its own payload: at once (before the send
/// returns), or through a channel to a task of its own when `deferred` is set.
struct Echo {
    manager: OnceLock<SessionManager<Echo>>,
    deferred: OnceLock<mpsc::UnboundedSender<BleResponse>>,
}

#[async_trait]
impl Transport for Echo {
    type InFlight = ();

    async fn send_ble_write(&self, write: BleWrite) -> Result<(ConnectionId, ()), TransportError> {
        let response = BleResponse {
            request_id: write.request_id,
            device_id: write.device_id,
            outcome: BleOutcome::Payload(write.payload),
        };
        if let Some(deferred) = self.deferred.get() {
            let _ = deferred.send(response);
        } else if let Some(manager) = self.manager.get() {
            let _ = manager.handle_response(CONNECTION, response);
        }
        Ok((CONNECTION, ()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: correlation_count single|deferred <round trips>";
    let deferred = match args.get(1).map(String::as_str) {
        Some("single") => false,
        Some("deferred") => true,
        _ => return Err(usage.into()),
    };
    let count: u64 = args.get(2).ok_or(usage)?.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let answered = runtime.block_on(async move {
        let echo = Arc::new(Echo {
            manager: OnceLock::new(),
            deferred: OnceLock::new(),
        });
        let manager = SessionManager::new(
            Arc::clone(&echo),
            Arc::new(ConfigRegistry::example()),
            &SessionConfig::default(),
        );
        let _ = echo.manager.set(manager.clone());
        if deferred {
            let (tx, mut rx) = mpsc::unbounded_channel::<BleResponse>();
            let _ = echo.deferred.set(tx);
            let responder = manager.clone();
            tokio::spawn(async move {
                while let Some(response) = rx.recv().await {
                    let _ = responder.handle_response(CONNECTION, response);
                }
            });
        }
        let lock = DeviceId::new("lock-1").expect("valid device id");
        let mut answered = 0u64;
        for _ in 0..count {
            let payload = HexPayload::from_bytes(vec![0xaa, 0xbb, 0xcc, 0xdd]);
            if manager
                .send_command(lock.clone(), None, payload, TIMEOUT)
                .await
                .is_ok()
            {
                answered += 1;
            }
        }
        manager.shutdown();
        answered
    });
    if answered != count {
        return Err(format!("{answered} of {count} round trips answered").into());
    }
    println!("{answered} round trips");
    Ok(())
}

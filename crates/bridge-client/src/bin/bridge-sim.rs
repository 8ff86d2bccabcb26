//! `bridge-sim`: a simulated phone with N simulated BLE smart locks.
//!
//! It connects to a bridge server as a bridge, holds `--locks` locks named
//! `<prefix>1 ... <prefix>N`, reports them connected, and answers `ble_write` frames with
//! the smart-lock byte protocol (see `bridge_client::lock`), with configurable latency,
//! failure rate and random disconnects. It runs until Ctrl-C (or `--run-for`).

use std::sync::Arc;
use std::time::Duration;

use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BridgeClient, BridgeConfig, Credentials};
use bridge_protocol::{BridgeId, DeviceId, Stage};
use clap::Parser;

/// A simulated phone with simulated BLE smart locks.
#[derive(Debug, Parser)]
#[command(name = "bridge-sim", version)]
struct Args {
    /// The server's WebSocket URL.
    #[arg(long, env = "BRIDGE_SIM_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Another node of the same cluster, tried when the connection to the current one is
    /// lost or cannot be made (repeat for several).
    #[arg(long = "fallback-url", value_name = "URL")]
    fallback_urls: Vec<String>,
    /// Connect through this MQTT 5 broker instead of the WebSocket (PROTOCOL.md 6), e.g.
    /// mqtt://127.0.0.1:1883; `--url` is then not used.
    #[arg(long, env = "BRIDGE_SIM_MQTT", value_name = "URL")]
    mqtt: Option<String>,
    /// The bridge id over MQTT (its topics' name) [default: the user id, each character
    /// outside A-Z a-z 0-9 _ - replaced by _].
    #[arg(long, value_name = "ID")]
    bridge_id: Option<String>,
    /// The MQTT topic prefix (the server's --mqtt-prefix).
    #[arg(long, default_value = "bridge", value_name = "PREFIX")]
    mqtt_prefix: String,
    /// A bridge JWT; without it, development mode with `--user-id`.
    #[arg(long, env = "BRIDGE_SIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The user id in development mode.
    #[arg(long, default_value = "sim-phone")]
    user_id: String,
    /// Number of locks.
    #[arg(long, default_value_t = 3)]
    locks: u32,
    /// Lock ids are this prefix followed by 1..=N.
    #[arg(long, default_value = "lock-")]
    prefix: String,
    /// Hold exactly these lock ids instead (repeatable); `--locks` and `--prefix` are then
    /// ignored.
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<String>,
    /// BLE round-trip latency in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Probability in [0, 1] that a write fails with `gatt_write_failed`.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Make every write stop after this stage and never be answered, to see where a
    /// timeout says it stopped: `sent` (the phone never acknowledges), `received` (the BLE
    /// link never comes up), `connected` (the GATT write never completes), `written` (the
    /// lock takes the write and never answers).
    #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
    fail_at: Option<Stage>,
    /// Mean seconds between random BLE link drops of a random lock (0: never).
    #[arg(long, default_value_t = 0.0)]
    disconnect_every_secs: f64,
    /// Exit after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    run_for_secs: u64,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::from_wire(s)
        .ok_or_else(|| format!("`{s}` is not a stage: sent, received, connected or written"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.failure_rate) {
        return Err("--failure-rate must be between 0 and 1".into());
    }
    let ids = if args.devices.is_empty() {
        (1..=args.locks)
            .map(|i| DeviceId::new(&format!("{}{i}", args.prefix)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        args.devices
            .iter()
            .map(|id| DeviceId::new(id))
            .collect::<Result<Vec<_>, _>>()?
    };
    let handler = Arc::new(SimulatedLocks::new(
        ids.clone(),
        LockBehaviour {
            latency: Duration::from_millis(args.latency_ms),
            failure_rate: args.failure_rate,
            stuck_after: args.fail_at,
        },
    ));
    let bridge_id = args.bridge_id.clone().unwrap_or_else(|| {
        args.user_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(bridge_protocol::MAX_BRIDGE_ID_CHARS)
            .collect()
    });
    let credentials = match args.token {
        Some(token) => Credentials::Token(token),
        None => Credentials::Development {
            user_id: args.user_id,
        },
    };
    let config = match args.mqtt {
        Some(broker) => {
            let bridge_id = BridgeId::new(&bridge_id).map_err(|e| format!("--bridge-id: {e}"))?;
            tracing::info!(%broker, %bridge_id, prefix = %args.mqtt_prefix, "connecting over MQTT");
            BridgeConfig::over_mqtt(broker, bridge_id, credentials, ids.clone())
                .with_mqtt_prefix(args.mqtt_prefix)
        }
        None => BridgeConfig::new(args.url, credentials, ids.clone())
            .with_fallback_urls(args.fallback_urls),
    };
    let client = BridgeClient::start(config, handler);
    client.wait_connected(1).await?;
    // A link that never comes up (`--fail-at received`) is reported down.
    let link_up = args.fail_at != Some(Stage::Received);
    for id in &ids {
        client.report_status(id.clone(), link_up, link_up.then_some(-55))?;
    }
    tracing::info!(locks = ids.len(), "bridge-sim is holding its locks");

    let disconnects = async {
        if args.disconnect_every_secs <= 0.0 || ids.is_empty() {
            return std::future::pending::<()>().await;
        }
        loop {
            // Exponentially distributed gaps: link drops at random, on average every N s.
            let gap = -args.disconnect_every_secs * (1.0 - fastrand::f64()).ln();
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            let id = ids[fastrand::usize(..ids.len())].clone();
            tracing::info!(device = %id, "simulated BLE link drop");
            let _ = client.report_status(id.clone(), false, None);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = client.report_status(id, true, Some(-55));
        }
    };
    let deadline = async {
        if args.run_for_secs == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_secs(args.run_for_secs)).await;
    };
    tokio::select! {
        () = disconnects => {}
        () = deadline => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    client.shutdown().await;
    Ok(())
}

//! `bridge-server`: serves PROTOCOL.md on its embedded defaults (127.0.0.1:8080,
//! development mode, a SQLite queue file in the working directory). `--help` lists every
//! setting.

use std::error::Error;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use bridge_cluster::{ClusterConfig, ClusterHub};
use bridge_protocol::ConfigRegistry;
use bridge_queue::StoreConfig;
use bridge_server::{Cli, Server, ServerConfig, open_store};
use clap::Parser;

/// Listens for SIGINT and SIGTERM from now on, and returns what completes on the first.
///
/// Called before the server says it listens: a handler installed only when the returned
/// future is first polled would leave a moment in which a SIGTERM sent by a supervisor (or a
/// test) that read the "listening" line kills the process with the default action, skipping
/// the orderly shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long the runtime may take to stop after the server has shut down.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(500);

fn main() -> ExitCode {
    let runtime = match bridge_server::runtime_builder().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bridge-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            bridge_server::flush_logs();
            eprintln!("bridge-server: {error}");
            ExitCode::FAILURE
        }
    };
    // `serve` returned within the shutdown deadline; work still running on the runtime (a
    // store call stuck in a blocking thread) must not hold the process past it.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    // The last lines (those of a worker still busy when the runtime was dropped).
    bridge_server::flush_logs();
    code
}

async fn run() -> Result<(), Box<dyn Error + Send + Sync>> {
    let config = ServerConfig::from_cli(Cli::parse())?;
    bridge_server::init_logs(config.log_format)?;

    let registry = match &config.device_types {
        Some(path) => ConfigRegistry::from_toml_file(path)?,
        None => ConfigRegistry::example(),
    };
    let store_config = StoreConfig {
        max_payload_bytes: config.max_payload_bytes,
        max_open_per_device: config.max_queued_per_device,
        retention: std::time::Duration::from_secs(config.retention_secs),
        ..StoreConfig::default()
    };
    let store = open_store(&config.queue, store_config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mode = if config.jwt_secret.is_some() {
        "jwt"
    } else {
        "development"
    };
    tracing::info!(%addr, mode, queue = ?config.queue, "listening");
    // Before the line that tells a supervisor the server is up (see `shutdown_signal`).
    let shutdown = shutdown_signal();
    // The one line on stdout: where to connect (tests and scripts read it).
    println!("bridge-server listening on http://{addr}");

    let mqtt = bridge_server::mqtt_config(&config);
    let cluster = config.cluster.clone().map(|url| {
        ClusterConfig::new(url, config.node_id().as_str()).prefix(config.cluster_prefix.clone())
    });
    // The binary's rule, said to the library: no secret is development mode (`validate`
    // already refused it on a non-loopback address without --allow-unauthenticated).
    let development = config.jwt_secret.is_none();
    let mut builder = Server::builder(config).store(store).registry(registry);
    if development {
        builder = builder.development_mode();
    }
    let joined: Arc<OnceLock<Arc<ClusterHub>>> = Arc::default();
    if let Some(cluster) = cluster {
        tracing::info!(url = %cluster.url, node_id = %cluster.node_id, prefix = %cluster.prefix, "joining the cluster");
        // The same public seam a user's own hub would use.
        let joined = Arc::clone(&joined);
        builder = builder.wrap_hub(move |local| {
            let hub = ClusterHub::start(cluster, local);
            let _ = joined.set(Arc::clone(&hub));
            hub
        });
    }
    let server = builder.build()?;
    let mqtt = match mqtt {
        Some(mqtt) => {
            tracing::info!(url = %bridge_server::mqtt_redacted(&mqtt.url), prefix = %mqtt.prefix, client_id = %mqtt.client_id, "serving bridges over MQTT");
            Some(bridge_server::serve_mqtt(&server, mqtt)?)
        }
        None => None,
    };
    server.serve(listener, shutdown).await?;
    if let Some(mqtt) = mqtt {
        mqtt.stop().await;
    }
    if let Some(hub) = joined.get() {
        // The others drop what this node held now, not after the heartbeat silence.
        hub.leave().await;
    }
    Ok(())
}

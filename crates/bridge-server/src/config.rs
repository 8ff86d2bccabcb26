//! Configuration: command line, `BRIDGE_*` environment variables, and an optional TOML file.
//!
//! Precedence, highest first: a command-line flag, its environment variable, the TOML file
//! (`--config`), the built-in default. Every default is documented in `--help` and in
//! [`ServerConfig::default`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bridge_queue::NodeId;
use clap::{Parser, ValueEnum};
use serde::Deserialize;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The command line of `bridge-server`. Every flag has a `BRIDGE_*` environment variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "bridge-server",
    version,
    about = "The bridge server: BLE devices over the phones near them."
)]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys, e.g. `listen`, `queue`).
    #[arg(long, env = "BRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BRIDGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Queue backend URL: memory://, sqlite://PATH, postgres://..., redis://..., amqp://...
    /// [default: sqlite://bridge-queue.sqlite, a file in the working directory].
    #[arg(long, env = "BRIDGE_QUEUE", value_name = "URL")]
    pub queue: Option<String>,
    /// HS256 secret for JWTs, at least 32 bytes; without it (or --jwt-secret-file) the
    /// server runs in development mode (loopback only). Prefer the environment variable or
    /// --jwt-secret-file: a command line is visible to every user of the machine in `ps`.
    #[arg(
        long,
        env = "BRIDGE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret for JWTs (at least 32 bytes; one trailing newline is
    /// ignored). Not together with --jwt-secret.
    #[arg(long, env = "BRIDGE_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// TOML device-type registry [default: the built-in `smart-lock` example type].
    #[arg(long, env = "BRIDGE_DEVICE_TYPES", value_name = "FILE")]
    pub device_types: Option<PathBuf>,
    /// Run without a JWT secret on a non-loopback address. Anyone who can reach the port
    /// can then command every device.
    #[arg(long, env = "BRIDGE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Log format [default: human].
    #[arg(long, env = "BRIDGE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest WebSocket frame, in bytes; larger frames close the connection with 1009
    /// [default: 65536].
    #[arg(long, env = "BRIDGE_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest command payload, in decoded bytes [default: 512].
    #[arg(long, env = "BRIDGE_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Largest HTTP request body, in bytes [default: 65536].
    #[arg(long, env = "BRIDGE_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Frames per second a connection may send on average [default: 100].
    #[arg(long, env = "BRIDGE_RATE_PER_SECOND", value_name = "N")]
    pub rate_per_second: Option<u32>,
    /// Frames a connection may send in a burst [default: 200].
    #[arg(long, env = "BRIDGE_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Subscriptions one user connection may hold [default: 1024].
    #[arg(long, env = "BRIDGE_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// `command` frames one user may have running at once over all its connections; one
    /// more is answered `rate_limited` [default: 256].
    #[arg(long, env = "BRIDGE_MAX_COMMANDS_PER_USER", value_name = "N")]
    pub max_commands_per_user: Option<usize>,
    /// WebSocket connections one user may have open at once; one more is refused with 429
    /// `rate_limited` before the upgrade [default: 32].
    #[arg(long, env = "BRIDGE_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    pub max_connections_per_user: Option<usize>,
    /// Commands one device may have in flight at once; more wait for a place within their
    /// timeout [default: 16].
    #[arg(long, env = "BRIDGE_MAX_PENDING_PER_DEVICE", value_name = "N")]
    pub max_pending_per_device: Option<usize>,
    /// Require a `service` token for GET /metrics.
    #[arg(long, env = "BRIDGE_METRICS_REQUIRE_TOKEN")]
    pub metrics_require_token: bool,
    /// Seconds between delivery passes over the offline queue: online devices with
    /// deliverable commands get them, and expired commands are noticed [default: 30].
    #[arg(long, env = "BRIDGE_RETRY_INTERVAL_SECS", value_name = "SECONDS")]
    pub retry_interval_secs: Option<u64>,
    /// Commands that are not final one device may hold in the queue; one more is refused
    /// with 429 `queue_full` [default: 100].
    #[arg(long, env = "BRIDGE_MAX_QUEUED_PER_DEVICE", value_name = "N")]
    pub max_queued_per_device: Option<u32>,
    /// Seconds a final command stays readable by id (`GET /v1/commands/{id}`) after its TTL
    /// ended; then it answers 404 and the command is deleted in the background
    /// [default: 604800, 7 days].
    #[arg(long, env = "BRIDGE_RETENTION_SECS", value_name = "SECONDS")]
    pub retention_secs: Option<u64>,
    /// This server's name among the processes sharing its queue (PROTOCOL.md 5): unique
    /// among them and the same across restarts, so that a restarted server takes back its
    /// deliveries at once [default: derived from the host name and the listen address].
    #[arg(long, env = "BRIDGE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Seconds an HTTP connection may take to send a request's headers, and may stay idle
    /// between requests; it is closed after that [default: 10].
    #[arg(long, env = "BRIDGE_HEADER_READ_TIMEOUT_SECS", value_name = "SECONDS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Connections (HTTP and WebSocket) served at once; beyond it, new connections wait in
    /// the listen backlog until one closes [default: 10000].
    #[arg(long, env = "BRIDGE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Requests one HTTP/2 connection may have open at once (its streams); HTTP/2 is
    /// served to clients that open with its preface (prior knowledge, h2c) [default: 256].
    #[arg(long, env = "BRIDGE_HTTP2_MAX_STREAMS", value_name = "N")]
    pub http2_max_streams: Option<u32>,
    /// Seconds from SIGTERM or SIGINT until the process exits, whatever its clients do: the
    /// connections still open then are dropped [default: 10].
    #[arg(long, env = "BRIDGE_SHUTDOWN_TIMEOUT_SECS", value_name = "SECONDS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Join the cluster that meets on this NATS server (PROTOCOL.md 5), e.g.
    /// nats://127.0.0.1:4222. Needs a shared queue (postgres:// or redis://) and a
    /// --node-id unique in the cluster.
    #[arg(long, env = "BRIDGE_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
    /// Prefix of every NATS subject the cluster uses, so that several clusters can share one
    /// NATS server [default: bridge].
    #[arg(long, env = "BRIDGE_CLUSTER_PREFIX", value_name = "PREFIX")]
    pub cluster_prefix: Option<String>,
    /// Also serve bridges through this MQTT 5 broker (PROTOCOL.md 6), e.g.
    /// mqtt://127.0.0.1:1883. Not together with --cluster.
    #[arg(long, env = "BRIDGE_MQTT", value_name = "URL")]
    pub mqtt: Option<String>,
    /// Prefix of every MQTT topic the bridges use (`P/b/{bridgeId}/up` and `/down`)
    /// [default: bridge].
    #[arg(long, env = "BRIDGE_MQTT_PREFIX", value_name = "PREFIX")]
    pub mqtt_prefix: Option<String>,
}

/// The TOML file: the same settings as the command line, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    queue: Option<String>,
    jwt_secret: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    device_types: Option<PathBuf>,
    allow_unauthenticated: Option<bool>,
    log_format: Option<LogFormat>,
    max_frame_bytes: Option<usize>,
    max_payload_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    rate_per_second: Option<u32>,
    rate_burst: Option<u32>,
    max_subscriptions: Option<usize>,
    max_commands_per_user: Option<usize>,
    max_connections_per_user: Option<usize>,
    max_pending_per_device: Option<usize>,
    metrics_require_token: Option<bool>,
    retry_interval_secs: Option<u64>,
    max_queued_per_device: Option<u32>,
    retention_secs: Option<u64>,
    node_id: Option<String>,
    header_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    http2_max_streams: Option<u32>,
    shutdown_timeout_secs: Option<u64>,
    cluster: Option<String>,
    cluster_prefix: Option<String>,
    mqtt: Option<String>,
    mqtt_prefix: Option<String>,
}

/// Which queue backend to open, parsed from its URL. Its `Debug` form (what the logs show)
/// hides a password in the URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueUrl {
    /// `memory://`: nothing survives a restart.
    Memory,
    /// `sqlite://PATH`: a file, created if missing.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(String),
    /// `redis://...` or `rediss://...`.
    Redis(String),
    /// `amqp://...` or `amqps://...`.
    Amqp(String),
}

impl std::fmt::Debug for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redacted(url)).finish(),
            Self::Redis(url) => f.debug_tuple("Redis").field(&redacted(url)).finish(),
            Self::Amqp(url) => f.debug_tuple("Amqp").field(&redacted(url)).finish(),
        }
    }
}

/// `url` with the password of its user information (`scheme://user:password@host`) replaced
/// by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

impl QueueUrl {
    /// Parses a queue URL.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| ConfigError::BadQueueUrl(url.into()))?;
        match scheme {
            "memory" => Ok(Self::Memory),
            "sqlite" if !rest.is_empty() => Ok(Self::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" => Ok(Self::Postgres(url.into())),
            "redis" | "rediss" => Ok(Self::Redis(url.into())),
            "amqp" | "amqps" => Ok(Self::Amqp(url.into())),
            _ => Err(ConfigError::BadQueueUrl(url.into())),
        }
    }
}

/// The server's settings, resolved. `Default` gives the embedded defaults. Its `Debug` form
/// hides the JWT secret and any password in the queue URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Queue backend: `sqlite://bridge-queue.sqlite`.
    pub queue: QueueUrl,
    /// JWT secret, at least [`ServerConfig::MIN_JWT_SECRET_BYTES`] bytes; `None` is
    /// development mode.
    pub jwt_secret: Option<String>,
    /// Device-type registry file; `None` is the built-in example type.
    pub device_types: Option<PathBuf>,
    /// Allow development mode on a non-loopback address: `false`.
    pub allow_unauthenticated: bool,
    /// Log format: human.
    pub log_format: LogFormat,
    /// Largest WebSocket frame: 64 KiB.
    pub max_frame_bytes: usize,
    /// Largest payload: 512 bytes.
    pub max_payload_bytes: usize,
    /// Largest HTTP body: 64 KiB.
    pub max_body_bytes: usize,
    /// Average frames per second per connection: 100.
    pub rate_per_second: u32,
    /// Burst of frames per connection: 200.
    pub rate_burst: u32,
    /// Subscriptions per user connection: 1024.
    pub max_subscriptions: usize,
    /// `command` frames one user may have running over all its connections: 256
    /// ([`HubConfig::max_commands_per_user`](bridge_hub::HubConfig::max_commands_per_user)).
    pub max_commands_per_user: usize,
    /// User connections one user may have open: 32; one more is refused with 429 before
    /// the upgrade ([`HubConfig::max_connections_per_user`](bridge_hub::HubConfig::max_connections_per_user)).
    pub max_connections_per_user: usize,
    /// Commands one device may have in flight: 16; more wait for a place within their
    /// timeout ([`SessionConfig::with_per_device_limit`](bridge_session::SessionConfig::with_per_device_limit)).
    pub max_pending_per_device: usize,
    /// Whether `/metrics` needs a service token: `false`.
    pub metrics_require_token: bool,
    /// Seconds between delivery passes over the offline queue (default 30).
    pub retry_interval_secs: u64,
    /// Commands that are not final one device may hold in the queue (default 100,
    /// PROTOCOL.md 4.2).
    pub max_queued_per_device: u32,
    /// Seconds a final command stays readable by id after its TTL ended (default 7 days):
    /// the queue's [`StoreConfig::retention`](bridge_queue::StoreConfig::retention).
    pub retention_secs: u64,
    /// This server's node id (`--node-id`); `None`: derived from the host name and the
    /// listen address ([`ServerConfig::node_id`]).
    pub node_id: Option<String>,
    /// Seconds an HTTP/1 connection may take to send a request's headers, counted from when
    /// the server starts waiting for them: also how long a kept-alive connection may stay
    /// idle between requests (default 10).
    pub header_read_timeout_secs: u64,
    /// Connections served at once, HTTP and WebSocket (default 10,000). Beyond it the server
    /// stops accepting: new connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Requests one HTTP/2 connection may have open at once, its concurrent streams
    /// (default 256): HTTP/2 is served to a client that opens with its preface (prior
    /// knowledge, "h2c"); one more stream is refused (`REFUSED_STREAM`, which clients
    /// retry). With [`ServerConfig::max_connections`] it bounds the requests in flight.
    pub http2_max_streams: u32,
    /// Seconds [`Server::serve`](crate::Server::serve) takes at most to shut down once told
    /// to (default 10, PROTOCOL.md 2): connections still open then are dropped.
    pub shutdown_timeout_secs: u64,
    /// The NATS server of the cluster to join (`--cluster`); `None`: a single server.
    pub cluster: Option<String>,
    /// Prefix of the cluster's NATS subjects (`--cluster-prefix`, default `bridge`).
    pub cluster_prefix: String,
    /// The MQTT 5 broker bridges may also connect through (`--mqtt`, PROTOCOL.md 6), as
    /// `mqtt://HOST:PORT`; `None`: WebSocket only. The `bridge-server` binary serves it
    /// with `bridge-mqtt`.
    pub mqtt: Option<String>,
    /// Prefix of the MQTT topics (`--mqtt-prefix`, default `bridge`).
    pub mqtt_prefix: String,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("queue", &self.queue)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("device_types", &self.device_types)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("log_format", &self.log_format)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate_per_second", &self.rate_per_second)
            .field("rate_burst", &self.rate_burst)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_commands_per_user", &self.max_commands_per_user)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("max_pending_per_device", &self.max_pending_per_device)
            .field("metrics_require_token", &self.metrics_require_token)
            .field("retry_interval_secs", &self.retry_interval_secs)
            .field("max_queued_per_device", &self.max_queued_per_device)
            .field("retention_secs", &self.retention_secs)
            .field("node_id", &self.node_id)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field("http2_max_streams", &self.http2_max_streams)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .field("cluster", &self.cluster.as_deref().map(redacted))
            .field("cluster_prefix", &self.cluster_prefix)
            .field("mqtt", &self.mqtt.as_deref().map(redacted))
            .field("mqtt_prefix", &self.mqtt_prefix)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            queue: QueueUrl::Sqlite(PathBuf::from("bridge-queue.sqlite")),
            jwt_secret: None,
            device_types: None,
            allow_unauthenticated: false,
            log_format: LogFormat::Human,
            max_frame_bytes: 64 * 1024,
            max_payload_bytes: bridge_protocol::Limits::DEFAULT_MAX_PAYLOAD_BYTES,
            max_body_bytes: 64 * 1024,
            rate_per_second: 100,
            rate_burst: 200,
            max_subscriptions: 1024,
            max_commands_per_user: 256,
            max_connections_per_user: 32,
            max_pending_per_device: 16,
            metrics_require_token: false,
            retry_interval_secs: 30,
            max_queued_per_device: 100,
            retention_secs: 7 * 24 * 60 * 60,
            node_id: None,
            header_read_timeout_secs: 10,
            max_connections: 10_000,
            http2_max_streams: 256,
            shutdown_timeout_secs: 10,
            cluster: None,
            cluster_prefix: "bridge".into(),
            mqtt: None,
            mqtt_prefix: "bridge".into(),
        }
    }
}

/// A configuration the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Development mode on an address other people can reach.
    #[error(
        "refusing to listen on {0} without a JWT secret: anyone who can reach it could command every device. \
         Set --jwt-secret (BRIDGE_JWT_SECRET), listen on a loopback address such as 127.0.0.1, \
         or pass --allow-unauthenticated if you really mean it"
    )]
    UnauthenticatedNonLoopback(SocketAddr),
    /// A queue URL with an unknown scheme.
    #[error(
        "unknown queue URL `{0}`: use memory://, sqlite://PATH, postgres://..., redis://... or amqp://..."
    )]
    BadQueueUrl(String),
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A JWT secret shorter than [`ServerConfig::MIN_JWT_SECRET_BYTES`]: an HS256 key that
    /// short can be guessed offline from any one token.
    #[error(
        "the JWT secret has {bytes} bytes; it must have at least {min} (for example the output of `openssl rand -base64 48`)",
        min = ServerConfig::MIN_JWT_SECRET_BYTES
    )]
    ShortJwtSecret {
        /// How many bytes it has.
        bytes: usize,
    },
    /// The JWT secret file could not be read.
    #[error("JWT secret file {path}: {reason}")]
    SecretFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// `--cluster` with a queue the nodes cannot share (PROTOCOL.md 5).
    #[error(
        "--cluster needs a queue every node shares: postgres://... or redis://..., not {0}. \
         Each node's {0} queue would be its own, so a device's queued commands could be \
         delivered twice, out of order, or by no node at all"
    )]
    ClusterNeedsSharedQueue(&'static str),
    /// `--mqtt` together with `--cluster` (PROTOCOL.md 6: refused at start in 1.1).
    #[error(
        "--mqtt cannot be used with --cluster in protocol 1.1: bridges over MQTT are served by \
         a single server. Run the MQTT server without --cluster, or connect the bridges over WebSocket"
    )]
    MqttWithCluster,
    /// A limit of zero or an empty secret.
    #[error("invalid setting `{name}`: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl ServerConfig {
    /// The shortest JWT secret the server starts with, in bytes (the size of an HS256 hash).
    pub const MIN_JWT_SECRET_BYTES: usize = 32;

    /// Resolves the command line (with its environment variables) over the TOML file over the
    /// defaults, and checks the result.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = Self::default();
        let queue = match cli.queue.or(file.queue) {
            Some(url) => QueueUrl::parse(&url)?,
            None => d.queue,
        };
        let config = Self {
            listen: cli.listen.or(file.listen).unwrap_or(d.listen),
            queue,
            jwt_secret: match jwt_secret(cli.jwt_secret, cli.jwt_secret_file)? {
                Some(secret) => Some(secret),
                None => jwt_secret(file.jwt_secret, file.jwt_secret_file)?,
            },
            device_types: cli.device_types.or(file.device_types),
            allow_unauthenticated: cli.allow_unauthenticated
                || file.allow_unauthenticated.unwrap_or(false),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            max_frame_bytes: cli
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(d.max_frame_bytes),
            max_payload_bytes: cli
                .max_payload_bytes
                .or(file.max_payload_bytes)
                .unwrap_or(d.max_payload_bytes),
            max_body_bytes: cli
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            rate_per_second: cli
                .rate_per_second
                .or(file.rate_per_second)
                .unwrap_or(d.rate_per_second),
            rate_burst: cli.rate_burst.or(file.rate_burst).unwrap_or(d.rate_burst),
            max_subscriptions: cli
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(d.max_subscriptions),
            max_commands_per_user: cli
                .max_commands_per_user
                .or(file.max_commands_per_user)
                .unwrap_or(d.max_commands_per_user),
            max_connections_per_user: cli
                .max_connections_per_user
                .or(file.max_connections_per_user)
                .unwrap_or(d.max_connections_per_user),
            max_pending_per_device: cli
                .max_pending_per_device
                .or(file.max_pending_per_device)
                .unwrap_or(d.max_pending_per_device),
            metrics_require_token: cli.metrics_require_token
                || file.metrics_require_token.unwrap_or(false),
            retry_interval_secs: cli
                .retry_interval_secs
                .or(file.retry_interval_secs)
                .unwrap_or(d.retry_interval_secs),
            max_queued_per_device: cli
                .max_queued_per_device
                .or(file.max_queued_per_device)
                .unwrap_or(d.max_queued_per_device),
            retention_secs: cli
                .retention_secs
                .or(file.retention_secs)
                .unwrap_or(d.retention_secs),
            node_id: cli.node_id.or(file.node_id),
            header_read_timeout_secs: cli
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .unwrap_or(d.header_read_timeout_secs),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            http2_max_streams: cli
                .http2_max_streams
                .or(file.http2_max_streams)
                .unwrap_or(d.http2_max_streams),
            shutdown_timeout_secs: cli
                .shutdown_timeout_secs
                .or(file.shutdown_timeout_secs)
                .unwrap_or(d.shutdown_timeout_secs),
            cluster: cli.cluster.or(file.cluster),
            cluster_prefix: cli
                .cluster_prefix
                .or(file.cluster_prefix)
                .unwrap_or(d.cluster_prefix),
            mqtt: cli.mqtt.or(file.mqtt),
            mqtt_prefix: cli
                .mqtt_prefix
                .or(file.mqtt_prefix)
                .unwrap_or(d.mqtt_prefix),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules the server will not start without (PROTOCOL.md 1.2: development mode
    /// only on loopback unless explicitly allowed; no zero limits; no empty secret, and none
    /// shorter than [`ServerConfig::MIN_JWT_SECRET_BYTES`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.jwt_secret.as_deref() {
            Some("") => {
                return Err(ConfigError::Invalid {
                    name: "jwt_secret",
                    reason: "must not be empty",
                });
            }
            Some(secret) if secret.len() < Self::MIN_JWT_SECRET_BYTES => {
                return Err(ConfigError::ShortJwtSecret {
                    bytes: secret.len(),
                });
            }
            _ => {}
        }
        if let Some(id) = &self.node_id {
            NodeId::new(id).map_err(|_| ConfigError::Invalid {
                name: "node_id",
                reason: "must have 1 to 128 characters and no control characters",
            })?;
        }
        if self.jwt_secret.is_none()
            && !self.listen.ip().is_loopback()
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::UnauthenticatedNonLoopback(self.listen));
        }
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("rate_per_second", self.rate_per_second as usize),
            ("rate_burst", self.rate_burst as usize),
            ("max_subscriptions", self.max_subscriptions),
            ("max_commands_per_user", self.max_commands_per_user),
            ("max_connections_per_user", self.max_connections_per_user),
            ("max_pending_per_device", self.max_pending_per_device),
            (
                "max_queued_per_device",
                usize::try_from(self.max_queued_per_device).unwrap_or(usize::MAX),
            ),
            (
                "retry_interval_secs",
                usize::try_from(self.retry_interval_secs).unwrap_or(usize::MAX),
            ),
            (
                "retention_secs",
                usize::try_from(self.retention_secs).unwrap_or(usize::MAX),
            ),
            (
                "header_read_timeout_secs",
                usize::try_from(self.header_read_timeout_secs).unwrap_or(usize::MAX),
            ),
            ("max_connections", self.max_connections),
            (
                "http2_max_streams",
                usize::try_from(self.http2_max_streams).unwrap_or(usize::MAX),
            ),
            (
                "shutdown_timeout_secs",
                usize::try_from(self.shutdown_timeout_secs).unwrap_or(usize::MAX),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid {
                name,
                reason: "must be at least 1",
            });
        }
        self.validate_cluster()?;
        self.validate_mqtt()
    }

    /// The rules of `--mqtt` (PROTOCOL.md 6): an `mqtt://HOST:PORT` URL, a prefix of plain
    /// topic levels, and not together with `--cluster` (refused at start in 1.1).
    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        let prefix_ok = !self.mqtt_prefix.is_empty()
            && self.mqtt_prefix.split('/').all(|level| {
                !level.is_empty()
                    && level
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !prefix_ok {
            return Err(ConfigError::Invalid {
                name: "mqtt_prefix",
                reason: "must be /-separated levels of A-Z a-z 0-9 _ - (an MQTT topic without wildcards)",
            });
        }
        let Some(url) = &self.mqtt else {
            return Ok(());
        };
        if !url.starts_with("mqtt://") {
            return Err(ConfigError::Invalid {
                name: "mqtt",
                reason: "must be an MQTT URL: mqtt://HOST:PORT",
            });
        }
        if self.cluster.is_some() {
            return Err(ConfigError::MqttWithCluster);
        }
        Ok(())
    }

    /// The rules of `--cluster` (PROTOCOL.md 5): a queue the nodes share, a NATS URL, a
    /// prefix that is a plain NATS subject.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let prefix_ok = !self.cluster_prefix.is_empty()
            && self.cluster_prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !prefix_ok {
            return Err(ConfigError::Invalid {
                name: "cluster_prefix",
                reason: "must be dot-separated words of A-Z a-z 0-9 _ - (a NATS subject without wildcards)",
            });
        }
        let Some(url) = &self.cluster else {
            return Ok(());
        };
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(ConfigError::Invalid {
                name: "cluster",
                reason: "must be a NATS URL: nats://HOST:PORT (or tls://HOST:PORT)",
            });
        }
        match self.queue {
            QueueUrl::Memory => Err(ConfigError::ClusterNeedsSharedQueue("memory://")),
            QueueUrl::Sqlite(_) => Err(ConfigError::ClusterNeedsSharedQueue("sqlite://")),
            QueueUrl::Amqp(_) => Err(ConfigError::ClusterNeedsSharedQueue(
                "amqp:// (its commands' state is a local SQLite file)",
            )),
            QueueUrl::Postgres(_) | QueueUrl::Redis(_) => Ok(()),
        }
    }
}

impl ServerConfig {
    /// The node id this server leases queued deliveries under: `--node-id` when given,
    /// otherwise `{host name}-{listen address}`, stable across restarts of the same
    /// deployment. Two servers sharing a queue must have different ids.
    pub fn node_id(&self) -> NodeId {
        if let Some(id) = self.node_id.as_deref().and_then(|id| NodeId::new(id).ok()) {
            return id;
        }
        let host = host_name();
        let derived: String = format!("{host}-{}", self.listen)
            .chars()
            .filter(|c| !c.is_control())
            .take(NodeId::MAX_CHARS)
            .collect();
        NodeId::new(&derived).unwrap_or_else(|_| {
            // Never empty: the listen address alone has characters.
            NodeId::new(&self.listen.to_string()).expect("a socket address is a valid node id")
        })
    }
}

/// The machine's host name, as the kernel reports it (`localhost` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The secret of one source of settings (the command line with its environment, or the
/// file): given inline or as a file, not both.
fn jwt_secret(
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            name: "jwt_secret_file",
            reason: "give the JWT secret or a file holding it, not both",
        }),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => read_secret_file(&path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a JWT secret file: its text, without the trailing line break an editor or `echo`
/// adds (`\n` or `\r\n`, once).
fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let mut secret = std::fs::read_to_string(path).map_err(|e| ConfigError::SecretFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if secret.ends_with('\n') {
        secret.pop();
        if secret.ends_with('\r') {
            secret.pop();
        }
    }
    Ok(secret)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_refuses_queues_the_nodes_cannot_share() {
        let cluster = |queue: &str| ServerConfig {
            queue: QueueUrl::parse(queue).unwrap(),
            cluster: Some("nats://127.0.0.1:4222".into()),
            ..ServerConfig::default()
        };
        for (queue, named) in [
            ("memory://", "memory://"),
            ("sqlite://q.sqlite", "sqlite://"),
            ("amqp://h", "amqp://"),
        ] {
            let error = cluster(queue).validate().unwrap_err();
            assert!(
                matches!(error, ConfigError::ClusterNeedsSharedQueue(n) if n.starts_with(named)),
                "{queue}: {error}"
            );
            assert!(error.to_string().contains("postgres://"), "{error}");
        }
        assert_eq!(cluster("postgres://h/db").validate(), Ok(()));
        assert_eq!(cluster("redis://h").validate(), Ok(()));
        let not_nats = ServerConfig {
            cluster: Some("http://h".into()),
            ..cluster("redis://h")
        };
        assert!(not_nats.validate().is_err());
        for prefix in ["", "a..b", "a.*", "a b", "x.>"] {
            let config = ServerConfig {
                cluster_prefix: prefix.into(),
                ..cluster("redis://h")
            };
            assert!(config.validate().is_err(), "{prefix:?}");
        }
        let config = ServerConfig {
            cluster_prefix: "test-1.c_2".into(),
            ..cluster("redis://h")
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn mqtt_is_refused_with_a_cluster_and_needs_an_mqtt_url_and_a_plain_prefix() {
        let mqtt = ServerConfig {
            mqtt: Some("mqtt://127.0.0.1:1883".into()),
            ..ServerConfig::default()
        };
        assert_eq!(mqtt.validate(), Ok(()));
        let with_cluster = ServerConfig {
            queue: QueueUrl::parse("redis://h").unwrap(),
            cluster: Some("nats://127.0.0.1:4222".into()),
            ..mqtt.clone()
        };
        let error = with_cluster.validate().unwrap_err();
        assert_eq!(error, ConfigError::MqttWithCluster);
        assert!(error.to_string().contains("--cluster"), "{error}");
        let not_mqtt = ServerConfig {
            mqtt: Some("nats://127.0.0.1:4222".into()),
            ..mqtt.clone()
        };
        assert!(not_mqtt.validate().is_err());
        for prefix in ["", "a//b", "a/+", "#", "a b", "/a"] {
            let config = ServerConfig {
                mqtt_prefix: prefix.into(),
                ..mqtt.clone()
            };
            assert!(config.validate().is_err(), "{prefix:?}");
        }
        let config = ServerConfig {
            mqtt_prefix: "site-1/bridges".into(),
            ..mqtt
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn cluster_flags_and_environment_are_read() {
        let cli = Cli::try_parse_from([
            "bridge-server",
            "--queue",
            "redis://127.0.0.1:6379",
            "--cluster",
            "nats://127.0.0.1:4222",
            "--cluster-prefix",
            "t1",
        ])
        .unwrap();
        let config = ServerConfig::from_cli(cli).unwrap();
        assert_eq!(config.cluster.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(config.cluster_prefix, "t1");
        let cli =
            Cli::try_parse_from(["bridge-server", "--cluster", "nats://127.0.0.1:4222"]).unwrap();
        assert!(matches!(
            ServerConfig::from_cli(cli),
            Err(ConfigError::ClusterNeedsSharedQueue("sqlite://"))
        ));
    }

    #[test]
    fn debug_output_hides_the_jwt_secret_and_queue_passwords() {
        let config = ServerConfig {
            jwt_secret: Some("a-secret-of-at-least-thirty-two-bytes!!".into()),
            queue: QueueUrl::parse("postgres://bridge:hunter2@db.internal:5432/bridge?ssl=1")
                .unwrap(),
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("thirty-two"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://bridge:***@db.internal:5432/bridge?ssl=1"),
            "{shown}"
        );
        assert_eq!(
            format!("{:?}", QueueUrl::parse("redis://127.0.0.1:6379").unwrap()),
            r#"Redis("redis://127.0.0.1:6379")"#
        );
        assert_eq!(
            format!(
                "{:?}",
                QueueUrl::parse("amqp://guest:guest@h:5672/%2f").unwrap()
            ),
            r#"Amqp("amqp://guest:***@h:5672/%2f")"#
        );
    }

    const LONG_SECRET: &str = "my-secret-of-thirty-two-bytes-ok";

    fn parse(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("bridge-server").chain(args.iter().copied()))
            .map_err(|e| ConfigError::File {
                path: "<args>".into(),
                reason: e.to_string(),
            })?;
        ServerConfig::from_cli(cli)
    }

    #[test]
    fn the_embedded_defaults_are_loopback_development_mode_with_sqlite() {
        let config = parse(&[]).unwrap();
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.queue, QueueUrl::Sqlite("bridge-queue.sqlite".into()));
        assert!(config.jwt_secret.is_none());
    }

    #[test]
    fn development_mode_refuses_a_public_address_unless_told() {
        let err = parse(&["--listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(matches!(err, ConfigError::UnauthenticatedNonLoopback(_)));
        assert!(err.to_string().contains("--allow-unauthenticated"));
        assert!(parse(&["--listen", "0.0.0.0:8080", "--allow-unauthenticated"]).is_ok());
        assert!(parse(&["--listen", "0.0.0.0:8080", "--jwt-secret", LONG_SECRET]).is_ok());
        assert!(parse(&["--listen", "[::1]:8080"]).is_ok());
    }

    #[test]
    fn every_queue_scheme_is_understood() {
        assert_eq!(QueueUrl::parse("memory://").unwrap(), QueueUrl::Memory);
        assert_eq!(
            QueueUrl::parse("sqlite:///var/lib/bridge/q.db").unwrap(),
            QueueUrl::Sqlite("/var/lib/bridge/q.db".into())
        );
        assert!(matches!(
            QueueUrl::parse("postgres://u@h/db").unwrap(),
            QueueUrl::Postgres(_)
        ));
        assert!(matches!(
            QueueUrl::parse("redis://h:6379").unwrap(),
            QueueUrl::Redis(_)
        ));
        assert!(matches!(
            QueueUrl::parse("amqp://g:g@h/%2f").unwrap(),
            QueueUrl::Amqp(_)
        ));
        assert!(matches!(
            QueueUrl::parse("mysql://h"),
            Err(ConfigError::BadQueueUrl(_))
        ));
        assert!(matches!(
            QueueUrl::parse("sqlite://"),
            Err(ConfigError::BadQueueUrl(_))
        ));
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_defaults() {
        let dir = std::env::temp_dir().join(format!("bridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bridge.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nqueue = \"memory://\"\nrate_burst = 50\n",
        )
        .unwrap();
        let config = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.queue, QueueUrl::Memory);
        assert_eq!(config.rate_burst, 50);
        assert_eq!(config.rate_per_second, 100);
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        assert!(matches!(
            parse(&["--config", file.to_str().unwrap()]),
            Err(ConfigError::File { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_limits_and_empty_secrets_are_refused() {
        assert!(matches!(
            parse(&["--rate-burst", "0"]),
            Err(ConfigError::Invalid {
                name: "rate_burst",
                ..
            })
        ));
        assert!(matches!(
            parse(&["--jwt-secret", ""]),
            Err(ConfigError::Invalid {
                name: "jwt_secret",
                ..
            })
        ));
    }

    #[test]
    fn the_retention_of_final_commands_is_seven_days_unless_set() {
        assert_eq!(parse(&[]).expect("defaults").retention_secs, 604_800);
        let config = parse(&["--retention-secs", "3600"]).expect("valid");
        assert_eq!(config.retention_secs, 3600);
        assert!(matches!(
            parse(&["--retention-secs", "0"]),
            Err(ConfigError::Invalid {
                name: "retention_secs",
                ..
            })
        ));
    }

    #[test]
    fn an_http2_connection_has_256_streams_at_once_unless_set_and_never_none() {
        assert_eq!(parse(&[]).expect("defaults").http2_max_streams, 256);
        let config = parse(&["--http2-max-streams", "32"]).expect("valid");
        assert_eq!(config.http2_max_streams, 32);
        let dir = std::env::temp_dir().join(format!("bridge-config-h2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bridge.toml");
        std::fs::write(&file, "http2_max_streams = 8\n").unwrap();
        let config = parse(&["--config", file.to_str().unwrap()]).expect("valid");
        assert_eq!(config.http2_max_streams, 8);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            parse(&["--http2-max-streams", "0"]),
            Err(ConfigError::Invalid {
                name: "http2_max_streams",
                ..
            })
        ));
    }

    #[test]
    fn a_jwt_secret_shorter_than_32_bytes_is_refused_at_start() {
        assert_eq!(LONG_SECRET.len(), 32);
        assert!(parse(&["--jwt-secret", LONG_SECRET]).is_ok());
        let err = parse(&["--jwt-secret", &LONG_SECRET[1..]]).unwrap_err();
        assert_eq!(err, ConfigError::ShortJwtSecret { bytes: 31 });
        assert!(err.to_string().contains("at least 32"), "{err}");
        let config = ServerConfig {
            jwt_secret: Some("an-e2e-test-secret".into()),
            ..ServerConfig::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::ShortJwtSecret { bytes: 18 })
        );
    }

    #[test]
    fn the_jwt_secret_may_come_from_a_file_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{LONG_SECRET}\r\n")).unwrap();
        let path = file.to_str().unwrap();
        let config = parse(&["--jwt-secret-file", path]).unwrap();
        assert_eq!(config.jwt_secret.as_deref(), Some(LONG_SECRET));
        // Short once its newline is gone.
        std::fs::write(&file, format!("{}\n", &LONG_SECRET[1..])).unwrap();
        assert_eq!(
            parse(&["--jwt-secret-file", path]),
            Err(ConfigError::ShortJwtSecret { bytes: 31 })
        );
        // In the TOML file too, below the command line.
        let toml = dir.path().join("bridge.toml");
        std::fs::write(&toml, format!("jwt_secret_file = {path:?}\n")).unwrap();
        std::fs::write(&file, LONG_SECRET).unwrap();
        let config = parse(&["--config", toml.to_str().unwrap()]).unwrap();
        assert_eq!(config.jwt_secret.as_deref(), Some(LONG_SECRET));
    }

    #[test]
    fn a_jwt_secret_and_a_secret_file_together_or_a_missing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, LONG_SECRET).unwrap();
        let path = file.to_str().unwrap();
        assert!(matches!(
            parse(&["--jwt-secret", LONG_SECRET, "--jwt-secret-file", path]),
            Err(ConfigError::Invalid {
                name: "jwt_secret_file",
                ..
            })
        ));
        let missing = dir.path().join("missing");
        assert!(matches!(
            parse(&["--jwt-secret-file", missing.to_str().unwrap()]),
            Err(ConfigError::SecretFile { .. })
        ));
    }
}

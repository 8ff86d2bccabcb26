//! Bridges over an MQTT 5 broker (PROTOCOL.md section 6), served beside the WebSocket.
//!
//! [`MqttBridges`] is a second transport for bridges built on the hub's **public** seams,
//! as an application's own transport would be: each bridge session is a virtual socket
//! handed to [`LocalHub::serve`], so every rule of a WebSocket connection holds unchanged —
//! frame size and rate limits, devices per bridge, keepalive (any frame within the pong
//! timeout), access policy, metrics, routing among every holder of a device whatever its
//! transport, and `bridge_lost` for the commands pending through a session that ends.
//!
//! ```text
//!  bridge ──publish P/b/{id}/up──► broker ──(one persistent subscription P/b/+/up, QoS 1)──► front
//!                                                                                            │ hello: authenticate,
//!                                                                                            │        replace the session
//!                                                                                            │ bye:   end the session
//!                                                                                            │ else:  the session's socket
//!                                                                                            ▼
//!  bridge ◄─publish P/b/{id}/down── broker ◄── session writer ◄── LocalHub::serve(SessionSocket, ConnectionInfo)
//! ```
//!
//! * **Authentication is the embedding server's**: a [`HelloAuthenticator`] turns a
//!   `hello` into the [`ConnectionInfo`] a WebSocket upgrade would have given
//!   (`bridge_server::Server::authenticate_hello` is the server's), or refuses it with
//!   `unauthorized` / `forbidden`. The bridge id names topics only.
//! * **One subscription, persistent**: the front connects with a stable client id
//!   ([`MqttConfig::client_id`]), clean start off and a session expiry
//!   ([`MqttConfig::session_expiry`]), and subscribes to `P/b/+/up` at QoS 1, so frames
//!   published while the server restarts wait in the broker; they then arrive for bridge ids
//!   without a live session and are answered `unauthorized`, upon which the bridge sends
//!   `hello` again.
//! * **A session ends** with `bye` (sent, or the bridge's will), with a `hello` that
//!   replaces it, or as a WebSocket connection ends (keepalive, rate limit, frame too large,
//!   token expired, server shutting down). In the last case the bridge is told with an
//!   error frame `unauthorized` saying why, so that it sends `hello` again.
//! * **Frames without a session** (other than `hello` and `bye`) are answered with an error
//!   frame `unauthorized` (with the frame's `requestId` when it has one) and otherwise
//!   ignored.
//!
//! # Readings of PROTOCOL.md 6
//!
//! * A WebSocket close code has no MQTT counterpart: where the server would close a
//!   WebSocket (1008, 1009, 1001), the session ends and the bridge gets an error frame
//!   `unauthorized` whose message carries the code and the reason.
//! * The hub's keepalive pings are not sent over MQTT (the broker's own keepalive covers the
//!   network); a session whose bridge publishes nothing within the hub's pong timeout (45 s
//!   by default) ends.
//! * A frame larger than the hub's frame limit ends the session as 1009 would; one larger
//!   than [`MqttConfig::max_packet_bytes`] (at least the frame limit plus 1 KiB) never
//!   reaches the server: MQTT 5's Maximum Packet Size makes the broker drop it.
//! * A bridge that publishes faster than the session's inbound queue
//!   ([`MqttConfig::inbound_frames`]) drains has the frames beyond it refused
//!   `rate_limited`, as the hub refuses frames beyond the rate limit.
//! * Frames of a bridge id without a session are each answered `unauthorized` and are not
//!   rate limited (there is no connection to count them on): the broker's ACL decides who
//!   may publish on an id's `up` topic.
//! * A session the server ends stays live until the bridge has been told (its error frame
//!   saying why is published): frames that arrive in between are dropped unanswered, as a
//!   WebSocket's frames in flight after its close are, and frames after it are answered
//!   `unauthorized`. So the bridge always learns why its session ended before it sees
//!   "no live session" answers (which could otherwise overtake that error frame: they are
//!   published from the front, the error frame from the session's writer).
//!
//! [`LocalHub::serve`]: bridge_hub::LocalHub::serve

mod front;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use bridge_hub::{ConnectionInfo, LocalHub};
use bridge_protocol::{ErrorCode, Hello};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Turns a bridge's `hello` into its connection, exactly as the embedding server's
/// WebSocket upgrade would (PROTOCOL.md 6: "the equivalent of the WebSocket upgrade and its
/// query"). Implemented for closures.
pub trait HelloAuthenticator: Send + Sync + 'static {
    /// The connection to serve for `hello`, or why it is refused (`unauthorized` for a
    /// missing, malformed, badly signed or expired token; `forbidden` for a device or role
    /// the token does not grant).
    fn authenticate(&self, hello: &Hello) -> Result<ConnectionInfo, HelloRefused>;
}

impl<F> HelloAuthenticator for F
where
    F: Fn(&Hello) -> Result<ConnectionInfo, HelloRefused> + Send + Sync + 'static,
{
    fn authenticate(&self, hello: &Hello) -> Result<ConnectionInfo, HelloRefused> {
        self(hello)
    }
}

/// Why a `hello` was refused: the error frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloRefused {
    /// `unauthorized` or `forbidden`.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl HelloRefused {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Why [`MqttBridges`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker URL is not `mqtt://HOST[:PORT]`.
    #[error("invalid MQTT broker URL `{0}`: expected mqtt://HOST:PORT")]
    BadUrl(String),
    /// The topic prefix is empty or has wildcards or empty levels.
    #[error("invalid MQTT topic prefix `{0}`: use /-separated levels of A-Z a-z 0-9 _ -")]
    BadPrefix(String),
}

/// Where the broker is, and how the server logs in to it.
pub(crate) struct Broker {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `user:password` of the URL, for a broker that checks them (and confines each client
    /// to its topics: README, "Bridges over MQTT").
    pub(crate) login: Option<(String, String)>,
}

/// `url` with the password of its `user:password@` replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Settings of [`MqttBridges`]. Its `Debug` form hides the password of the URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig {
    /// The broker, `mqtt://HOST:PORT` (port 1883 when left out), or
    /// `mqtt://USER:PASSWORD@HOST:PORT` for a broker that checks logins (neither may hold
    /// `@`, nor the user `:`).
    pub url: String,
    /// The topic prefix `P` of `P/b/{bridgeId}/up` and `/down` (default `bridge`).
    pub prefix: String,
    /// The server's MQTT client id: stable across restarts, so that the broker keeps its
    /// persistent session (default `bridge-server`; the binary derives it from the prefix
    /// and its node id). Two servers must not share one.
    pub client_id: String,
    /// How long the broker keeps the server's session (and queues frames for it) while the
    /// server is away (default 1 day).
    pub session_expiry: Duration,
    /// MQTT keepalive between the server and the broker (default 10 s).
    pub keep_alive: Duration,
    /// The largest MQTT packet the server takes (MQTT 5 Maximum Packet Size: the broker
    /// drops larger ones). Raised to the hub's frame limit plus 1 KiB when lower, so that a
    /// frame over the limit reaches the hub and ends its session as over WebSocket
    /// (default 1 MiB).
    pub max_packet_bytes: usize,
    /// Frames of one session waiting for the hub to read them (default 256); beyond that a
    /// frame is refused `rate_limited`.
    pub inbound_frames: usize,
    /// Frames of one session waiting to be published (default 64); beyond that the hub's
    /// own outbound queue holds them, and a bridge that does not keep up is cut off as a
    /// slow consumer.
    pub outbound_frames: usize,
}

impl MqttConfig {
    /// The defaults, on the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets [`MqttConfig::prefix`].
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`MqttConfig::client_id`].
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// A stable client id for a server node: `{prefix}-server-{node}`, each character that
    /// is not `A-Z a-z 0-9 _ -` replaced by `_`.
    pub fn node_client_id(prefix: &str, node: &str) -> String {
        format!("{prefix}-server-{node}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// `(host, port)` of [`MqttConfig::url`], and its `user:password` if it has one.
    fn broker(&self) -> Result<Broker, MqttError> {
        let bad = || MqttError::BadUrl(redacted(&self.url));
        let rest = self.url.strip_prefix("mqtt://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (login, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                if user.is_empty() {
                    return Err(bad());
                }
                (Some((user.to_owned(), password.to_owned())), rest)
            }
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| bad())?,
                None if after.is_empty() => 1883,
                None => return Err(bad()),
            };
            (host.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), port.parse().map_err(|_| bad())?),
                None => (rest.to_owned(), 1883),
            }
        };
        if host.is_empty() || host.contains(['/', '@']) {
            return Err(bad());
        }
        Ok(Broker { host, port, login })
    }

    fn check_prefix(&self) -> Result<(), MqttError> {
        let ok = !self.prefix.is_empty()
            && self.prefix.split('/').all(|level| {
                !level.is_empty()
                    && level
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if ok {
            Ok(())
        } else {
            Err(MqttError::BadPrefix(self.prefix.clone()))
        }
    }
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("client_id", &self.client_id)
            .field("session_expiry", &self.session_expiry)
            .field("keep_alive", &self.keep_alive)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("inbound_frames", &self.inbound_frames)
            .field("outbound_frames", &self.outbound_frames)
            .finish()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "bridge".into(),
            client_id: "bridge-server".into(),
            session_expiry: Duration::from_hours(24),
            keep_alive: Duration::from_secs(10),
            max_packet_bytes: 1 << 20,
            inbound_frames: 256,
            outbound_frames: 64,
        }
    }
}

/// Serves bridges over an MQTT 5 broker into a [`LocalHub`] (PROTOCOL.md 6). Runs on the
/// current tokio runtime until [`MqttBridges::stop`] (or until dropped, which aborts it).
pub struct MqttBridges {
    shared: Arc<front::Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MqttBridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBridges")
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl MqttBridges {
    /// Connects to the broker in the background and serves every bridge session through
    /// `hub`, authenticating each `hello` with `authenticate`. Must be called inside a tokio
    /// runtime. The broker need not be up yet: the front connects (and reconnects) by
    /// itself.
    pub fn start(
        config: MqttConfig,
        hub: LocalHub,
        authenticate: impl HelloAuthenticator,
    ) -> Result<Self, MqttError> {
        let broker = config.broker()?;
        config.check_prefix()?;
        let (stop, stopped) = watch::channel(false);
        let (shared, front) = front::Front::new(config, broker, hub, Arc::new(authenticate));
        let task = tokio::spawn(front.run(stopped));
        Ok(Self {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// Live bridge sessions.
    pub fn sessions(&self) -> usize {
        self.shared.sessions()
    }

    /// Waits until the front's subscription to `P/b/+/up` has been acknowledged by the
    /// broker at least once (frames published before that are not seen by a server that
    /// never subscribed before).
    pub async fn subscribed(&self) {
        let mut ready = self.shared.subscribed.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Disconnects from the broker (the broker keeps the server's session and queues what
    /// bridges publish meanwhile) and waits, at most 2 s, for it. Sessions still live are
    /// left to the hub: a server shutting down closes them (`LocalHub::shutdown`) before
    /// this.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
        {
            tracing::warn!("the MQTT front did not stop within 2 s");
        }
    }
}

impl Drop for MqttBridges {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn broker_urls_are_mqtt_host_and_port() {
        let parse = |url: &str| {
            MqttConfig::new(url)
                .broker()
                .map(|b| (b.host, b.port, b.login))
        };
        assert_eq!(
            parse("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883, None))
        );
        assert_eq!(parse("mqtt://broker"), Ok(("broker".into(), 1883, None)));
        assert_eq!(parse("mqtt://[::1]:1884/"), Ok(("::1".into(), 1884, None)));
        assert_eq!(
            parse("mqtt://server:s3cret@h:1"),
            Ok(("h".into(), 1, Some(("server".into(), "s3cret".into()))))
        );
        for bad in [
            "tcp://h:1",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://:p@h:1",
            "mqtt://[::1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_show_in_logs() {
        let config = MqttConfig::new("mqtt://server:s3cret@h:1");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(redacted(&config.url), "mqtt://server:***@h:1");
        let error = MqttConfig::new("mqtt://server:s3cret@h:x").broker().err();
        assert!(!format!("{error:?}").contains("s3cret"));
    }

    #[test]
    fn node_client_ids_are_stable_and_topic_safe() {
        assert_eq!(
            MqttConfig::node_client_id("bridge", "host-127.0.0.1:8080"),
            "bridge-server-host-127_0_0_1_8080"
        );
    }

    #[test]
    fn prefixes_are_plain_topic_levels() {
        for ok in ["bridge", "site-1/b_2"] {
            assert!(MqttConfig::default().prefix(ok).check_prefix().is_ok());
        }
        for bad in ["", "a//b", "a/+", "#", "/a"] {
            assert!(MqttConfig::default().prefix(bad).check_prefix().is_err());
        }
    }
}

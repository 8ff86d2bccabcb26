//! The bridge side over an MQTT 5 broker (PROTOCOL.md 6).
//!
//! One MQTT connection per [`BridgeClient`](crate::BridgeClient) ([`MqttLink`]): a stable
//! client id (`{prefix}-bridge-{bridgeId}`), a persistent session (clean start off, a session
//! expiry), its `down` topic subscribed at QoS 1, and the will `{"type":"bye"}` on its `up`
//! topic. A *session* with the server ([`MqttSocket`]) is opened with `hello` and lives until
//! the server answers a frame `unauthorized` (the server restarted, or ended the session), or
//! the MQTT connection was lost (the broker then published the will, which ended it); the
//! client then opens a new one with `hello`, as it reconnects a WebSocket. To the rest of the
//! client a session is a socket of WebSocket messages, so one [`BleHandler`] serves both
//! transports.
//!
//! [`BleHandler`]: crate::BleHandler

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bridge_protocol::{
    BridgeId, BridgeToServer, DeviceId, ErrorCode, Hello, MqttBridgeFrame, MqttServerFrame,
    ServerToBridge, Token, UserId,
};
use futures_util::{Sink, Stream};
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::bridge::{FrameSink, frame_text};
use crate::{ClientError, Credentials};

/// Where and as whom a bridge connects over MQTT (see
/// [`BridgeConfig::over_mqtt`](crate::BridgeConfig::over_mqtt)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// The bridge id: names the topics `P/b/{bridgeId}/up` and `/down` (never identity).
    pub bridge_id: BridgeId,
    /// The topic prefix `P` (default `bridge`, the server's `--mqtt-prefix`).
    pub prefix: String,
}

/// How often the bridge sends `{"type":"ping"}` (PROTOCOL.md 6: at least every 20 s).
const PING_EVERY: Duration = Duration::from_secs(15);
/// How long `hello` waits for `welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refusal, how long a `welcome` may still come: an `unauthorized` that answers a
/// frame published before this `hello` (by a server that restarted) looks the same.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// The MQTT connection of one bridge client, kept across its sessions.
pub(crate) struct MqttLink {
    client: AsyncClient,
    up: String,
    /// The current session's inbox; `None` between sessions.
    inbox: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>,
    /// How many times the `down` subscription was acknowledged (once per MQTT connection).
    subscribed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's host, port and the `user:password` of `mqtt://[USER:PASSWORD@]HOST[:PORT]`.
type Broker = (String, u16, Option<(String, String)>);

fn broker(url: &str) -> Result<Broker, ClientError> {
    let bad =
        || ClientError::Connect("the broker URL is not mqtt://[USER:PASSWORD@]HOST:PORT".into());
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(bad)?
        .trim_end_matches('/');
    let (login, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (Some((user.to_owned(), password.to_owned())), rest)
        }
        None => (None, rest),
    };
    match rest.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.trim_matches(['[', ']']).to_owned(),
            port.parse().map_err(|_| bad())?,
            login,
        )),
        None if !rest.is_empty() => Ok((rest.to_owned(), 1883, login)),
        None => Err(bad()),
    }
}

impl MqttLink {
    /// Connects to the broker at `url` in the background.
    pub(crate) fn start(url: &str, settings: &MqttSettings) -> Result<Self, ClientError> {
        let (host, port, login) = broker(url)?;
        let id = &settings.bridge_id;
        let up = id.up_topic(&settings.prefix);
        let down = id.down_topic(&settings.prefix);
        let mut options = MqttOptions::new(format!("{}-bridge-{id}", settings.prefix), host, port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_last_will(LastWill::new(
                up.clone(),
                MqttBridgeFrame::Bye.to_json(),
                QoS::AtLeastOnce,
                false,
                None,
            ));
        // Frames are small and each waits for an answer: no Nagle delay.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut events) = AsyncClient::new(options, 1024);
        let inbox: Arc<Mutex<Option<mpsc::UnboundedSender<String>>>> = Arc::default();
        let (subscribed_tx, subscribed) = watch::channel(0_u64);
        let task = tokio::spawn({
            let client = client.clone();
            let inbox = Arc::clone(&inbox);
            async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            // A new MQTT connection: the old one's will ended the session.
                            inbox.lock().take();
                            let _ = client.try_subscribe(down.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed_tx.send_modify(|n| *n += 1);
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let Ok(text) = String::from_utf8(publish.payload.to_vec()) else {
                                continue;
                            };
                            if let Some(session) = inbox.lock().as_ref() {
                                let _ = session.send(text);
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(%error, "MQTT connection lost; connecting again");
                            inbox.lock().take();
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        });
        Ok(Self {
            client,
            up,
            inbox,
            subscribed,
            task,
        })
    }

    /// Opens a session: `hello`, answered `welcome`.
    pub(crate) async fn open(
        &self,
        credentials: &Credentials,
        devices: &[DeviceId],
    ) -> Result<MqttSocket, ClientError> {
        let mut subscribed = self.subscribed.clone();
        tokio::time::timeout(WELCOME_TIMEOUT, subscribed.wait_for(|n| *n > 0))
            .await
            .map_err(|_| ClientError::Connect("the MQTT broker does not answer".into()))?
            .map_err(|_| ClientError::Shutdown)?;
        let credentials = match credentials {
            Credentials::Token(token) => bridge_protocol::Credentials::Token(
                Token::new(token.clone())
                    .ok_or_else(|| ClientError::Connect("empty token".into()))?,
            ),
            Credentials::Development { user_id } => bridge_protocol::Credentials::UserId(
                UserId::new(user_id).map_err(|e| ClientError::Connect(e.to_string()))?,
            ),
        };
        let hello = MqttBridgeFrame::Hello(Hello {
            credentials,
            device_ids: devices.to_vec(),
        })
        .to_json();
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.inbox.lock() = Some(tx);
        self.client
            .publish(self.up.as_str(), QoS::AtLeastOnce, false, hello)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + WELCOME_TIMEOUT;
        let mut refusal: Option<(tokio::time::Instant, String)> = None;
        loop {
            let until = refusal
                .as_ref()
                .map_or(deadline, |(at, _)| (*at).min(deadline));
            let text = match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(text)) => text,
                Ok(None) => {
                    return Err(ClientError::Connect("the MQTT connection was lost".into()));
                }
                Err(_) => {
                    let why = refusal.map_or_else(
                        || "no `welcome` in time".to_owned(),
                        |(_, why)| format!("`hello` refused: {why}"),
                    );
                    return Err(ClientError::Connect(why));
                }
            };
            match MqttServerFrame::decode(&text) {
                Ok(MqttServerFrame::Welcome) => break,
                Ok(MqttServerFrame::Frame(ServerToBridge::Error(error)))
                    if refusal.is_none()
                        && matches!(error.code, ErrorCode::Unauthorized | ErrorCode::Forbidden) =>
                {
                    let why = format!("{} ({})", error.code, error.message);
                    refusal = Some((tokio::time::Instant::now() + REFUSAL_GRACE, why));
                }
                // Answers to frames of an earlier session.
                _ => {}
            }
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        Ok(MqttSocket {
            client: self.client.clone(),
            up: self.up.clone(),
            incoming: rx,
            ping,
            ended: false,
        })
    }
}

/// One session with the server, as a socket of WebSocket messages.
pub(crate) struct MqttSocket {
    client: AsyncClient,
    up: String,
    incoming: mpsc::UnboundedReceiver<String>,
    ping: tokio::time::Interval,
    /// The server said the session is gone (`unauthorized`): the stream ends after that frame.
    ended: bool,
}

impl MqttSocket {
    fn publish(&self, text: String) -> Result<(), WsError> {
        self.client
            .try_publish(self.up.as_str(), QoS::AtLeastOnce, false, text)
            .map_err(|e| WsError::Io(std::io::Error::other(e.to_string())))
    }
}

/// Whether `text` is an error frame `unauthorized`: the server has no session for this
/// bridge id any more.
fn session_gone(text: &str) -> bool {
    matches!(
        ServerToBridge::decode(text),
        Ok(ServerToBridge::Error(error)) if error.code == ErrorCode::Unauthorized
    )
}

impl Stream for MqttSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        while self.ping.poll_tick(cx).is_ready() {
            if let Err(error) = self.publish(r#"{"type":"ping"}"#.to_owned()) {
                return Poll::Ready(Some(Err(error)));
            }
        }
        match self.incoming.poll_recv(cx) {
            Poll::Ready(Some(text)) => {
                if session_gone(&text) {
                    self.ended = true;
                }
                Poll::Ready(Some(Ok(Message::text(text))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sink<Message> for MqttSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        match message {
            Message::Text(text) => self.publish(text.as_str().to_owned()),
            Message::Close(_) => {
                self.ended = true;
                self.publish(MqttBridgeFrame::Bye.to_json())
            }
            _ => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

impl FrameSink for MqttSocket {
    /// Publishes the frame's JSON as it is, without making a [`Message`] of it first.
    fn start_send_frame(&mut self, frame: &BridgeToServer) -> Result<(), WsError> {
        self.publish(frame_text(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_mqtt_host_and_port() {
        assert_eq!(
            broker("mqtt://127.0.0.1:1883").ok(),
            Some(("127.0.0.1".into(), 1883, None))
        );
        assert_eq!(broker("mqtt://b").ok(), Some(("b".into(), 1883, None)));
        assert_eq!(
            broker("mqtt://phone-1:pw@b:1884").ok(),
            Some(("b".into(), 1884, Some(("phone-1".into(), "pw".into()))))
        );
        assert!(broker("ws://h:1").is_err());
        assert!(broker("mqtt://h:x").is_err());
    }

    #[test]
    fn only_an_unauthorized_error_says_the_session_is_gone() {
        assert!(session_gone(
            r#"{"type":"error","code":"unauthorized","message":"no live session"}"#
        ));
        assert!(!session_gone(
            r#"{"type":"error","code":"forbidden","message":"not yours"}"#
        ));
        assert!(!session_gone(r#"{"type":"pong"}"#));
    }
}

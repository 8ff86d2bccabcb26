//! The front: one MQTT connection to the broker, its subscription to every bridge's `up`
//! topic, and the sessions it demultiplexes into.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bridge_hub::LocalHub;
use bridge_protocol::{
    BridgeId, ErrorCode, Limits, MqttBridgeFrame, MqttServerFrame, ProtocolError, RequestId,
    ServerToBridge,
};
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::StreamExt;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::watch;
use tracing::Instrument;
use tungstenite::Message;

use crate::socket::SessionSocket;
use crate::{HelloAuthenticator, MqttConfig};

/// A live session: the sender of its socket's reading side, and which `hello` opened it.
struct Session {
    generation: u64,
    incoming: mpsc::Sender<Message>,
}

/// What the front shares with the sessions' tasks and with [`crate::MqttBridges`].
pub(crate) struct Shared {
    sessions: Mutex<HashMap<BridgeId, Session>>,
    next_generation: AtomicU64,
    pub(crate) subscribed: watch::Sender<bool>,
    /// Session writers still running: the front leaves the broker only once they have
    /// queued their last frames (the notices of sessions a shutdown ended), or after 1 s.
    writers: watch::Sender<usize>,
}

impl Shared {
    pub(crate) fn sessions(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Whether a newer `hello` replaced the session `generation` of `bridge` (it may be
    /// gone from the map already without having been replaced).
    fn replaced(&self, bridge: &BridgeId, generation: u64) -> bool {
        self.sessions
            .lock()
            .get(bridge)
            .is_some_and(|s| s.generation != generation)
    }

    /// Forgets the session `generation` of `bridge` unless a newer one replaced it.
    fn remove(&self, bridge: &BridgeId, generation: u64) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(bridge)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(bridge);
        }
    }
}

pub(crate) struct Front {
    config: MqttConfig,
    options: MqttOptions,
    hub: LocalHub,
    authenticate: Arc<dyn HelloAuthenticator>,
    shared: Arc<Shared>,
    /// The hub's frame limit, and the payload limits its decoder applies.
    max_frame_bytes: usize,
    limits: Limits,
}

/// How long the front waits before connecting again after the broker went away.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl Front {
    pub(crate) fn new(
        config: MqttConfig,
        broker: crate::Broker,
        hub: LocalHub,
        authenticate: Arc<dyn HelloAuthenticator>,
    ) -> (Arc<Shared>, Self) {
        let max_frame_bytes = hub.config().max_frame_bytes;
        let limits = hub.config().protocol_limits;
        let max_packet = config
            .max_packet_bytes
            .max(max_frame_bytes.saturating_add(1024));
        let mut options = MqttOptions::new(config.client_id.clone(), broker.host, broker.port);
        if let Some((user, password)) = broker.login {
            options.set_credentials(user, password);
        }
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(
                u32::try_from(config.session_expiry.as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1),
            ))
            .set_max_packet_size(Some(u32::try_from(max_packet).unwrap_or(u32::MAX)))
            .set_request_channel_capacity(1024);
        // Frames are small and answered at once: no Nagle delay on the server's side.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let shared = Arc::new(Shared {
            sessions: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            subscribed: watch::Sender::new(false),
            writers: watch::Sender::new(0),
        });
        let front = Self {
            config,
            options,
            hub,
            authenticate,
            shared: Arc::clone(&shared),
            max_frame_bytes,
            limits,
        };
        (shared, front)
    }

    fn up_filter(&self) -> String {
        format!("{}/b/+/up", self.config.prefix)
    }

    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let (client, mut events) = AsyncClient::new(self.options.clone(), 1024);
        let span = tracing::info_span!("mqtt", broker = %crate::redacted(&self.config.url), prefix = %self.config.prefix);
        async {
            let mut connected = false;
            loop {
                let event = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    event = events.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connected = true;
                        tracing::info!(
                            session_present = ack.session_present,
                            client_id = %self.config.client_id,
                            "connected to the MQTT broker"
                        );
                        // Renewed on every connection: harmless when the broker kept the
                        // session, needed when it did not.
                        if let Err(error) = client.try_subscribe(self.up_filter(), QoS::AtLeastOnce)
                        {
                            tracing::warn!(%error, "cannot subscribe to the bridges' topics");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        self.shared.subscribed.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.on_publish(&client, &publish);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if connected {
                            tracing::warn!(%error, "lost the MQTT broker; connecting again");
                        } else {
                            tracing::debug!(%error, "cannot reach the MQTT broker");
                        }
                        connected = false;
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => break,
                            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                        }
                    }
                }
            }
            // Let the sessions' writers queue their last frames and those go out, then leave;
            // the broker keeps the session (and queues the bridges' frames) until the
            // server is back.
            if connected {
                let mut writers = self.shared.writers.subscribe();
                let flush = async {
                    loop {
                        tokio::select! {
                            _ = writers.wait_for(|n| *n == 0) => break,
                            event = events.poll() => if event.is_err() { break },
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
            }
            if connected && client.try_disconnect().is_ok() {
                let drain = async {
                    loop {
                        match events.poll().await {
                            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            }
            tracing::info!("disconnected from the MQTT broker");
        }
        .instrument(span)
        .await;
    }

    /// One message a bridge published on its `up` topic.
    fn on_publish(&self, client: &AsyncClient, publish: &Publish) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        let Some(bridge) = BridgeId::from_up_topic(&self.config.prefix, topic) else {
            tracing::debug!(
                topic,
                "ignoring a message on a topic that is not a bridge's"
            );
            return;
        };
        let payload = &publish.payload;
        let text = std::str::from_utf8(payload).ok();
        let kind = text.and_then(bridge_protocol::decode::frame_type);
        match kind.as_deref() {
            Some("hello") => self.on_hello(client, &bridge, text.unwrap_or_default()),
            Some("bye") => {
                let ended = self.shared.sessions.lock().remove(&bridge);
                if ended.is_some() {
                    tracing::debug!(bridge = %bridge, "bye: session ended");
                }
            }
            _ => self.on_frame(client, &bridge, payload, text),
        }
    }

    fn on_hello(&self, client: &AsyncClient, bridge: &BridgeId, text: &str) {
        if text.len() > self.max_frame_bytes {
            self.answer(
                client,
                bridge,
                &ProtocolError::new(
                    ErrorCode::InvalidMessage,
                    format!("frame larger than {} bytes", self.max_frame_bytes),
                ),
            );
            return;
        }
        let hello = match MqttBridgeFrame::decode(text, &self.limits) {
            Ok(MqttBridgeFrame::Hello(hello)) => hello,
            Ok(_) => return,
            Err(error) => {
                self.answer(client, bridge, &error);
                return;
            }
        };
        let info = match self.authenticate.authenticate(&hello) {
            Ok(info) => info,
            Err(refused) => {
                tracing::info!(bridge = %bridge, code = %refused.code, message = %refused.message, "hello refused");
                self.answer(
                    client,
                    bridge,
                    &ProtocolError::new(refused.code, refused.message),
                );
                return;
            }
        };
        if !self.hub.is_accepting() {
            self.answer(
                client,
                bridge,
                &ProtocolError::new(ErrorCode::Unavailable, "the server is shutting down"),
            );
            return;
        }
        let (incoming_tx, incoming_rx) = mpsc::channel(self.config.inbound_frames.max(1));
        let (mut outgoing_tx, outgoing_rx) = mpsc::channel(self.config.outbound_frames.max(1));
        // First on `down`, before anything the hub writes (a fresh channel has room).
        let welcome = MqttServerFrame::Welcome.to_json();
        if outgoing_tx.try_send(Message::text(welcome)).is_err() {
            return;
        }
        let generation = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let replaced = self.shared.sessions.lock().insert(
            bridge.clone(),
            Session {
                generation,
                incoming: incoming_tx,
            },
        );
        // Dropping the old session's sender ends its socket: its pending commands fail
        // `bridge_lost`, as for a WebSocket that closed.
        let replaced = replaced.is_some();
        tracing::info!(bridge = %bridge, replaced, "bridge session opened");
        let writer = Writer {
            client: client.clone(),
            topic: bridge.down_topic(&self.config.prefix),
            bridge: bridge.clone(),
            generation,
            shared: Arc::clone(&self.shared),
        };
        self.shared.writers.send_modify(|n| *n += 1);
        tokio::spawn(writer.run(outgoing_rx).in_current_span());
        let hub = self.hub.clone();
        let bridge = bridge.clone();
        let socket = SessionSocket::new(incoming_rx, outgoing_tx);
        tokio::spawn(
            async move {
                // The session stays in the map until its writer ends (see `Writer`'s drop).
                let reason = hub.serve(socket, info).await;
                tracing::info!(bridge = %bridge, reason = reason.as_str(), "bridge session ended");
            }
            .in_current_span(),
        );
    }

    /// Any frame but `hello` and `bye`: to its session, or answered `unauthorized`.
    fn on_frame(
        &self,
        client: &AsyncClient,
        bridge: &BridgeId,
        payload: &Bytes,
        text: Option<&str>,
    ) {
        let message = match text {
            Some(text) => Message::text(text),
            None => Message::binary(payload.clone()),
        };
        let request_id = || text.and_then(bridge_protocol::decode::frame_request_id);
        let refused = {
            let mut sessions = self.shared.sessions.lock();
            match sessions.get_mut(bridge) {
                Some(session) => match session.incoming.try_send(message) {
                    Ok(()) => None,
                    Err(error) if error.is_full() => Some(ProtocolError::new(
                        ErrorCode::RateLimited,
                        "too many frames waiting for this session; this one was dropped",
                    )),
                    // The session's pump has ended and its writer is telling the bridge
                    // so (the close notice, published before the writer forgets the
                    // session). A frame in between is dropped, as a WebSocket's frames in
                    // flight after its close are: answering it here could reach the bridge
                    // before the notice. Once the session is forgotten, frames are answered
                    // `unauthorized`, after the notice.
                    Err(_) => {
                        tracing::debug!(bridge = %bridge, "frame for a session that is ending; dropped");
                        None
                    }
                },
                None => Some(no_session()),
            }
        };
        if let Some(error) = refused {
            let request_id: Option<RequestId> = request_id();
            self.answer(client, bridge, &error.with_request_id(request_id));
        }
    }

    /// Publishes an error frame on the bridge's `down` topic, without waiting: when the
    /// client's queue is full, the answer is dropped (and logged).
    fn answer(&self, client: &AsyncClient, bridge: &BridgeId, error: &ProtocolError) {
        let frame = ServerToBridge::Error(error.to_error_frame()).to_json();
        if let Err(e) = client.try_publish(
            bridge.down_topic(&self.config.prefix),
            QoS::AtLeastOnce,
            false,
            frame,
        ) {
            tracing::warn!(bridge = %bridge, error = %e, "cannot queue an answer to a bridge");
        }
    }
}

fn no_session() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unauthorized,
        "no live session for this bridge id: send `hello` first",
    )
}

/// Publishes one session's frames on its `down` topic, in order.
struct Writer {
    client: AsyncClient,
    topic: String,
    bridge: BridgeId,
    generation: u64,
    shared: Arc<Shared>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The session is forgotten once its writer has published its last frame (the close
        // notice, when the hub ended it), so that the `unauthorized` answers to frames that
        // come later are published after that notice.
        self.shared.remove(&self.bridge, self.generation);
        self.shared
            .writers
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Writer {
    async fn run(self, mut outgoing: mpsc::Receiver<Message>) {
        while let Some(message) = outgoing.next().await {
            let payload: Bytes = match message {
                Message::Text(text) => Bytes::from(text),
                Message::Binary(bytes) => bytes,
                Message::Close(frame) => {
                    // The hub ended the session (keepalive, limits, token, shutdown): tell
                    // the bridge, unless a newer `hello` already replaced it.
                    if self.shared.replaced(&self.bridge, self.generation) {
                        break;
                    }
                    let why = frame.map_or_else(
                        || "the session ended".to_owned(),
                        |f| format!("the session ended ({} {})", u16::from(f.code), f.reason),
                    );
                    let notice = ProtocolError::new(
                        ErrorCode::Unauthorized,
                        format!("{why}: send `hello` again"),
                    );
                    Bytes::from(ServerToBridge::Error(notice.to_error_frame()).to_json())
                }
                _ => continue,
            };
            if let Err(error) = self
                .client
                .publish(self.topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
            {
                tracing::debug!(%error, bridge = %self.bridge, "cannot publish to a bridge; the front is gone");
                break;
            }
        }
    }
}

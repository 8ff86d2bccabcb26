//! The user side: subscribe, command, and receive device status, events and results.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_protocol::http::CommandRequest;
use bridge_protocol::{
    CommandFrame, CommandResult, DeviceId, RequestId, ServerToUser, SubscriptionChange,
    UserToServer,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use crate::ClientError;
use crate::connect::{self, Credentials};

/// Settings of a [`UserClient`].
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// The server's WebSocket URL, such as `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// Token or development-mode identity.
    pub credentials: Credentials,
    /// How long to wait for an `ack` (default 10 s). A command waits its own `timeoutMs`
    /// plus this.
    pub reply_timeout: Duration,
    /// Other nodes of the same cluster (PROTOCOL.md 5), such as `ws://node-b:8080/ws`:
    /// [`UserClient::connect`] tries `url`, then these in order, and keeps the first that
    /// accepts. Empty (the default) for a single server, or for a cluster behind one load
    /// balancer URL. A user connection does not reconnect by itself: when its stream of
    /// frames ends, connect again (and subscribe again); with these set, that lands on a
    /// live node.
    pub fallback_urls: Vec<String>,
}

impl UserConfig {
    /// A config with the default reply timeout.
    pub fn new(url: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            url: url.into(),
            credentials,
            reply_timeout: Duration::from_secs(10),
            fallback_urls: Vec::new(),
        }
    }

    /// Sets [`UserConfig::fallback_urls`].
    #[must_use]
    pub fn with_fallback_urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fallback_urls = urls.into_iter().map(Into::into).collect();
        self
    }
}

type Pending = Arc<Mutex<HashMap<RequestId, oneshot::Sender<ServerToUser>>>>;

/// A user connection: subscribe and unsubscribe with acks, send commands and await their
/// `command_result`, and receive everything else (device status, application events, results
/// of queued commands) as a stream.
pub struct UserClient {
    outgoing: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    reply_timeout: Duration,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for UserClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserClient").finish_non_exhaustive()
    }
}

impl UserClient {
    /// Connects to [`UserConfig::url`], or else to the first of
    /// [`UserConfig::fallback_urls`] that accepts. Returns the client and the stream of
    /// frames that answer no request of its own: `device_status`, application events, `command_result`s of queued commands, and
    /// error frames without a request id. The stream ends when the connection closes.
    pub async fn connect(
        config: UserConfig,
    ) -> Result<(Self, mpsc::UnboundedReceiver<ServerToUser>), ClientError> {
        let mut socket = connect::open(&config.url, &config.credentials, &[]).await;
        for url in &config.fallback_urls {
            let Err(error) = &socket else { break };
            tracing::debug!(%error, next = %url, "cannot connect; trying the next node");
            socket = connect::open(url, &config.credentials, &[]).await;
        }
        // Every URL failed: the last one's error.
        let socket = socket?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<String>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let pending_for_reader = Arc::clone(&pending);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(text) = outgoing_rx.recv() => {
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    incoming = stream.next() => {
                        let Some(Ok(message)) = incoming else { break };
                        let Message::Text(text) = message else {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                            continue;
                        };
                        match ServerToUser::decode(text.as_str()) {
                            Ok(frame) => {
                                let waiter = reply_id(&frame).and_then(|id| {
                                    pending_for_reader.lock().ok().and_then(|mut p| p.remove(&id))
                                });
                                match waiter {
                                    Some(waiter) => {
                                        let _ = waiter.send(frame);
                                    }
                                    None => {
                                        let _ = events_tx.send(frame);
                                    }
                                }
                            }
                            Err(e) => warn!(error = %e, "undecodable frame from the server"),
                        }
                    }
                }
            }
            // Wake every waiter: the connection is gone.
            if let Ok(mut p) = pending_for_reader.lock() {
                p.clear();
            }
        });
        Ok((
            Self {
                outgoing,
                pending,
                next_id: AtomicU64::new(1),
                reply_timeout: config.reply_timeout,
                task,
            },
            events,
        ))
    }

    fn request_id(&self) -> RequestId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        RequestId::from_u128_hex(u128::from(n))
    }

    async fn request(
        &self,
        request_id: RequestId,
        frame: &UserToServer,
        timeout: Duration,
    ) -> Result<ServerToUser, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ClientError::Closed)?
            .insert(request_id, tx);
        if self.outgoing.send(frame.to_json()).is_err() {
            self.forget(&request_id);
            return Err(ClientError::Closed);
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        self.forget(&request_id);
        match answer {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(ServerToUser::Error(frame))) => Err(ClientError::Refused(frame)),
            Ok(Ok(frame)) => Ok(frame),
        }
    }

    fn forget(&self, request_id: &RequestId) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(request_id);
        }
    }

    async fn subscription(&self, device: DeviceId, subscribe: bool) -> Result<(), ClientError> {
        let request_id = self.request_id();
        let change = SubscriptionChange {
            request_id,
            device_id: device,
        };
        let frame = if subscribe {
            UserToServer::Subscribe(change)
        } else {
            UserToServer::Unsubscribe(change)
        };
        match self.request(request_id, &frame, self.reply_timeout).await? {
            ServerToUser::Ack(_) => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }

    /// Subscribes to a device; its current `device_status` follows on the event stream.
    pub async fn subscribe(&self, device: DeviceId) -> Result<(), ClientError> {
        self.subscription(device, true).await
    }

    /// Unsubscribes from a device.
    pub async fn unsubscribe(&self, device: DeviceId) -> Result<(), ClientError> {
        self.subscription(device, false).await
    }

    /// Sends a command and waits for its `command_result` (which may say `queued`,
    /// `timeout`, `offline`, ...). A refusal (`forbidden`, `queue_full`, ...) is
    /// [`ClientError::Refused`].
    pub async fn command(
        &self,
        device: DeviceId,
        command: CommandRequest,
    ) -> Result<CommandResult, ClientError> {
        let request_id = self.request_id();
        let wait = command.timeout_ms.as_duration() + self.reply_timeout;
        let frame = UserToServer::Command(CommandFrame {
            request_id,
            device_id: device,
            command,
        });
        match self.request(request_id, &frame, wait).await? {
            ServerToUser::CommandResult(result) => Ok(result),
            _ => Err(ClientError::Closed),
        }
    }

    /// Closes the connection.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for UserClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request id a frame answers, if it answers one.
fn reply_id(frame: &ServerToUser) -> Option<RequestId> {
    match frame {
        ServerToUser::Ack(ack) => Some(ack.request_id),
        ServerToUser::Error(error) => error.request_id,
        ServerToUser::CommandResult(result) => result.request_id,
        _ => None,
    }
}

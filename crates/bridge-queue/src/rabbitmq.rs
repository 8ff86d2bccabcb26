//! The RabbitMQ store: per-device durable queues that push commands to consumers as they
//! arrive, composed with a store that holds the commands' state.
//!
//! # Design, and why
//!
//! A message queue holds messages, not state. The promises of [`Store`] need state that a
//! queue cannot give: dedup in place (a queued message cannot be changed), cancel and
//! confirm (a message cannot be withdrawn or held back from the middle of a queue), `get`
//! by id and `list_open` (a queue cannot be read without consuming it), per-command
//! attempts and lease deadlines (a redelivered message does not count its tries, and an
//! un-acked message returns only when its channel closes, not at a deadline). Building that
//! state on top of queues (a log of state changes in a "state queue" replayed by every
//! process) would need a consensus the broker does not offer between two servers writing at
//! once. So [`RabbitMqStore`] is an honest composition:
//!
//! * **State** lives in a companion [`Store`] `S` — `SqliteStore` embedded, or
//!   `PostgresStore` / `RedisStore` when several servers share the queue. Every [`Store`] call is answered by it, so every
//!   promise of the trait holds exactly as it does for `S` (the conformance suite runs
//!   against the composition), and durability is `S`'s.
//! * **Delivery notices** travel through RabbitMQ: one durable queue per device
//!   (`<prefix>.<device id>`, or, where that would exceed AMQP's 255-byte limit on a queue
//!   name — a device id may be 128 characters of up to 4 bytes each —
//!   `<prefix>#<the id cut on a character boundary>#<FNV-1a 64 of the whole id in hex>`,
//!   which is as stable across restarts and processes as the short form), into which every change that makes a command deliverable
//!   (enqueue of a pending command, an update in place, confirm, recovery of a lapsed lease
//!   by `sweep`, and every end of a lease — `complete`, `release`, `reclaim` — that leaves a
//!   `pending` command behind it, which the device's one lease was holding back) publishes a persistent message (delivery mode
//!   2) through the default exchange, on a channel with publisher confirms, and waits for
//!   the broker's confirm — **off the caller's path**: the call hands the notice to the
//!   store's publisher task (a bounded inbox of 1,024; a notice that finds it full is
//!   dropped and logged) and returns, and that task alone connects, declares, publishes
//!   and waits, each step bounded by [`RabbitMqOptions::operation_timeout`]. So a slow or
//!   black-holed broker delays notices, never a call of the store, and calls are not
//!   serialized behind one another; after a failed publish the task drops notices for a
//!   second before it tries the broker again. [`RabbitMqStore::flush`] waits for the
//!   notices handed over so far. The message's body is the command as JSON (the shape of
//!   `GET /v1/commands/{id}` plus `payload`), so other AMQP consumers can see what is queued.
//! * [`RabbitMqStore::consume`] is the original toolkit's push interface: a stream that
//!   yields the device's commands, leased, in order, as they become deliverable. It leases
//!   with `S`'s [`lease_next`](Store::lease_next), so it has exactly `S`'s guarantee: one
//!   live lease per device across every consumer and every process sharing `S` (a second
//!   consumer of the device, here or in another process, waits until the first ends its
//!   lease), and a consumer that dies leaves its lease to lapse and the command to come
//!   back. RabbitMQ's own delivery is never trusted for exclusivity: any number of
//!   consumers may receive the same notice. The stream uses the device's queue to wake up at
//!   once when something may be deliverable; it also looks again every `poll_every`, so a
//!   notice that was never published does not delay delivery for longer than that.
//!
//! A notice is only a wake-up, never the command itself, so a duplicated, lost or stale
//! notice cannot cause a duplicate or lost delivery. That is also why a failed publish does
//! not fail the call that changed the state: the change is committed in `S`, the device
//! shows in [`due_devices`](Store::due_devices), and consumers find it on their next look;
//! the failure is logged and [`ping`](Store::ping) (and so `/readyz`) answers
//! [`StoreError::Unavailable`] while the publisher has been stuck on the broker longer than
//! [`RabbitMqOptions::ping_timeout`] (a black-holed broker: its attempt may last up to the
//! operation timeout at each step; answered at once), and after a failed publish while the
//! broker is away (it tries a fresh connection, bounded by the ping timeout). The connection is re-opened on the
//! next publish. Device queues are declared with `x-max-length` (oldest notices dropped
//! first: a newer notice supersedes them) and `x-expires` (a queue nobody used for
//! [`RabbitMqOptions::idle_queue_expiry`] is deleted by the broker).
//!
//! # From a connection the caller already has
//!
//! [`RabbitMqStore::open`] connects from [`RabbitMqOptions::url`].
//! [`RabbitMqStore::from_connection`] takes a `lapin::Connection` the service already has
//! (shared, in an `Arc`) and opens its channels on it — the publishing channel, and one per
//! [`consume`](RabbitMqStore::consume) stream — instead of connecting. A closed lapin
//! connection cannot be re-opened, so once the caller's connection has closed (the broker
//! went away, or the caller closed it) the store connects from [`RabbitMqOptions::url`],
//! exactly as a store made with `open` re-connects; the options still name the broker for
//! that. The state store `S` may itself be made from a caller's pool
//! (`PostgresStore::from_pool`, `RedisStore::from_pool`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandId, DeviceId, Hops};
use futures_util::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

use crate::error::{InvalidInput, StoreError};
use crate::model::{
    Cut, Lease, Leased, NewCommand, NodeId, OpenCounts, QueuedCommand, SweepReport,
};
use crate::store::Store;

const BACKEND: &str = "rabbitmq";
/// Most notices a device queue keeps; older ones are dropped first.
const MAX_NOTICES: i64 = 1_000;

/// Where and how to connect a [`RabbitMqStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RabbitMqOptions {
    /// The AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Prefix of the device queues' names; default `bridge-queue`. At most 221 bytes
    /// ([`RabbitMqStore::open`] refuses a longer one).
    pub prefix: String,
    /// Longest a connect, declare or publish (until its confirm) may take; default 5 s.
    pub operation_timeout: Duration,
    /// How long a device queue nobody uses lives on; default 7 days.
    pub idle_queue_expiry: Duration,
    /// The longest the broker may keep [`ping`](Store::ping) (and so `/readyz`) waiting:
    /// `ping` answers [`StoreError::Unavailable`] at once while the publisher task has been
    /// waiting for the broker longer than this in one attempt (a connect, declare or
    /// publish to a slow or black-holed broker may go on up to the operation timeout at
    /// each step), and when its own connection attempt takes longer. Default 2 s, well
    /// above a healthy connect, publish and confirm.
    pub ping_timeout: Duration,
}

impl RabbitMqOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "bridge-queue".to_owned(),
            operation_timeout: Duration::from_secs(5),
            idle_queue_expiry: Duration::from_hours(7 * 24),
            ping_timeout: Duration::from_secs(2),
        }
    }

    /// The same options with another queue-name prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// A [`Store`] whose state lives in `S` and whose delivery notices travel through
/// RabbitMQ; see the [module docs](self). Clones share the connection.
pub struct RabbitMqStore<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for RabbitMqStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for RabbitMqStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqStore")
            .field("state", &self.inner.state)
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    state: S,
    options: RabbitMqOptions,
    /// The caller's connection ([`RabbitMqStore::from_connection`]): channels are opened on
    /// it while it is open.
    shared: Option<Arc<Connection>>,
    /// The publisher task's inbox (see [`Publisher`]).
    notices: mpsc::Sender<Job>,
    /// What the publisher task is doing, for `ping`.
    health: Arc<PublisherHealth>,
}

/// What the publisher task reports of the broker, for [`Store::ping`].
#[derive(Debug)]
struct PublisherHealth {
    /// Whether the publisher's last attempt reached the broker.
    reachable: AtomicBool,
    /// Since when the publisher has been in its current attempt (`None` between attempts).
    busy_since: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

impl PublisherHealth {
    /// How long the current attempt has been waiting for the broker, if one runs.
    fn waiting_for(&self) -> Option<Duration> {
        self.busy_since.lock().map(|since| since.elapsed())
    }
}

/// Notices waiting for the publisher task at most; beyond, a notice is dropped (consumers
/// find its command on their next look).
const MAX_WAITING_NOTICES: usize = 1024;

/// After a failed publish, notices are dropped without trying for this long, so that a
/// broker that is away costs one attempt per pause, not one per notice.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the publisher task is asked to do, in order.
enum Job {
    /// Publish this notice to this device's queue.
    Notice { device: DeviceId, body: String },
    /// Answer once every job before this one is done.
    Flush(oneshot::Sender<()>),
}

/// The publisher task: the one owner of the publishing connection. Callers hand it notices
/// and go on ([`Inner::notify`] never waits for the broker); it publishes them one by one,
/// each bounded by the operation timeout, and re-opens the connection after a failure. A
/// black-holed broker therefore delays only notices, never a call of the store.
struct Publisher {
    options: RabbitMqOptions,
    shared: Option<Arc<Connection>>,
    link: Option<Link>,
    health: Arc<PublisherHealth>,
    /// Until when notices are dropped after a failure.
    paused_until: Option<tokio::time::Instant>,
}

impl Publisher {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                }
                Job::Notice { device, body } => {
                    if self
                        .paused_until
                        .is_some_and(|until| tokio::time::Instant::now() < until)
                    {
                        tracing::debug!(device = %device, "broker away: notice dropped");
                        continue;
                    }
                    *self.health.busy_since.lock() = Some(tokio::time::Instant::now());
                    let published = self.publish(&device, &body).await;
                    *self.health.busy_since.lock() = None;
                    match published {
                        Ok(()) => {
                            self.paused_until = None;
                            self.health.reachable.store(true, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.link = None;
                            self.paused_until = Some(tokio::time::Instant::now() + RETRY_PAUSE);
                            self.health.reachable.store(false, Ordering::Relaxed);
                            tracing::warn!(
                                device = %device,
                                error = %e,
                                "could not publish a delivery notice; consumers will find the command on their next look"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Publishes a persistent notice and waits for the broker's confirm.
    async fn publish(&mut self, device: &DeviceId, body: &str) -> Result<(), StoreError> {
        let timeout = self.options.operation_timeout;
        if !self
            .link
            .as_ref()
            .is_some_and(|link| link.channel.status().connected())
        {
            self.link = Some(connect(&self.options, self.shared.as_ref(), true).await?);
        }
        let Some(link) = self.link.as_ref() else {
            return Err(unavailable("no channel"));
        };
        declare(&self.options, &link.channel, device).await?;
        let confirm = bounded(
            timeout,
            "publish",
            link.channel.basic_publish(
                ShortString::from(""),
                ShortString::from(queue_name(&self.options.prefix, device.as_str())),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            ),
        )
        .await?;
        let confirmation = bounded(timeout, "publisher confirm", confirm).await?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err(unavailable("the broker refused the notice (nack)"))
        }
    }
}

/// A channel, and the connection of its own it was opened on (`None` on the caller's).
struct Link {
    _connection: Option<Connection>,
    channel: Channel,
}

fn unavailable(source: impl Into<crate::error::BoxError>) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        source: source.into(),
    }
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    op: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!("{what}: no answer within {timeout:?}"))),
    }
}

/// AMQP's limit on a queue name (a short string), in bytes.
const MAX_QUEUE_NAME_BYTES: usize = 255;
/// Hex digits of the digest in the name of a device queue whose plain name is too long.
const DIGEST_HEX: usize = 16;

/// FNV-1a, 64 bits: a hash fixed by its definition, so a device's queue name is the same
/// in every process and with every Rust version (std's `DefaultHasher` promises neither).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

/// The name of `device`'s notice queue under `prefix`: `<prefix>.<device id>` while that
/// fits AMQP's 255 bytes, else `<prefix>#<the id cut on a character boundary>#<FNV-1a 64 of
/// the whole id, 16 hex digits>`, as long as fits. The byte after the prefix (`.` or `#`)
/// tells the two forms apart, so a short id can never take a long id's queue.
fn queue_name(prefix: &str, device: &str) -> String {
    let plain = prefix.len() + 1 + device.len();
    if plain <= MAX_QUEUE_NAME_BYTES {
        return format!("{prefix}.{device}");
    }
    let room = MAX_QUEUE_NAME_BYTES.saturating_sub(prefix.len() + 2 + DIGEST_HEX);
    let mut cut = room.min(device.len());
    while !device.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = fnv1a_64(device.as_bytes());
    format!("{prefix}#{}#{digest:016x}", &device[..cut])
}

/// Longest queue-name prefix [`RabbitMqStore::open`] accepts: the long form of a queue
/// name must still fit, with at least a few bytes of the device id.
const MAX_PREFIX_BYTES: usize = MAX_QUEUE_NAME_BYTES - 2 - DIGEST_HEX - 16;

impl<S> Inner<S> {
    fn queue_name(&self, device: &DeviceId) -> String {
        queue_name(&self.options.prefix, device.as_str())
    }

    /// Hands a notice for `command` to the publisher task, without waiting for it.
    fn publish(&self, command: &QueuedCommand) -> Result<(), StoreError> {
        let mut body = serde_json::to_value(command.to_view())
            .map_err(|e| StoreError::backend(BACKEND, e.to_string()))?;
        body["payload"] = serde_json::Value::String(command.payload.to_hex());
        let job = Job::Notice {
            device: command.device.clone(),
            body: body.to_string(),
        };
        self.notices.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                unavailable("the publisher is behind (the broker is slow or away)")
            }
            mpsc::error::TrySendError::Closed(_) => unavailable("the publisher has stopped"),
        })
    }
}

/// The arguments every device queue is declared with.
fn queue_arguments(options: &RabbitMqOptions) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(MAX_NOTICES));
    let expiry = i64::try_from(options.idle_queue_expiry.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(expiry));
    args
}

/// Opens a channel (with publisher confirms if `confirms`) on the caller's connection while
/// it is open ([`RabbitMqStore::from_connection`]), else on a connection of its own; each
/// step bounded by the operation timeout.
async fn connect(
    options: &RabbitMqOptions,
    shared: Option<&Arc<Connection>>,
    confirms: bool,
) -> Result<Link, StoreError> {
    let timeout = options.operation_timeout;
    let (own, channel) = match shared {
        Some(shared) if shared.status().connected() => (
            None,
            bounded(timeout, "open a channel", shared.create_channel()).await?,
        ),
        _ => {
            let connection = bounded(
                timeout,
                "connect",
                Connection::connect(&options.url, ConnectionProperties::default()),
            )
            .await?;
            let channel = bounded(timeout, "open a channel", connection.create_channel()).await?;
            (Some(connection), channel)
        }
    };
    if confirms {
        bounded(
            timeout,
            "enable publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    }
    Ok(Link {
        _connection: own,
        channel,
    })
}

/// Declares `device`'s queue (idempotent).
async fn declare(
    options: &RabbitMqOptions,
    channel: &Channel,
    device: &DeviceId,
) -> Result<(), StoreError> {
    bounded(
        options.operation_timeout,
        "declare the device queue",
        channel.queue_declare(
            ShortString::from(queue_name(&options.prefix, device.as_str())),
            QueueDeclareOptions::durable(),
            queue_arguments(options),
        ),
    )
    .await
    .map(drop)
}

impl<S: Store> Inner<S> {
    /// Hands a notice to the publisher when `command` is deliverable, without waiting; a
    /// failure is logged, not returned (see the module docs: the state change is already
    /// committed and will be found).
    fn notify(&self, command: &QueuedCommand) {
        if command.status != CommandStatus::Pending {
            return;
        }
        if let Err(e) = self.publish(command) {
            tracing::warn!(
                command = %command.id,
                device = %command.device,
                error = %e,
                "could not hand over a delivery notice; consumers will find the command on their next look"
            );
        }
    }

    /// Publishes a notice for the device's first `pending` command, if any: the end of a
    /// lease lets the device's next command go.
    async fn notify_device(&self, device: &DeviceId) {
        // The first deliverable command stands for the device; list_open is in order.
        match self.state.list_open(device).await {
            Ok(open) => {
                if let Some(first) = open.iter().find(|c| c.status == CommandStatus::Pending) {
                    self.notify(first);
                }
            }
            Err(e) => {
                tracing::warn!(device = %device, error = %e, "could not read the device's commands");
            }
        }
    }
}

impl<S: Store> RabbitMqStore<S> {
    /// Wraps `state`, connecting to the broker at [`RabbitMqOptions::url`] and checking
    /// that it answers. With a connection the service already has, see
    /// [`from_connection`](Self::from_connection).
    pub async fn open(options: RabbitMqOptions, state: S) -> Result<Self, StoreError> {
        Self::start(options, state, None).await
    }

    /// Wraps `state`, opening the store's channels on `connection`, a connection the
    /// service already has, instead of connecting (see the [module docs](self)): the
    /// publishing channel now, and one per [`consume`](Self::consume) stream. Once that
    /// connection has closed the store connects from [`RabbitMqOptions::url`], as it
    /// re-connects after a broker failure when made with [`open`](Self::open). Shared: the
    /// caller keeps using its clone of the `Arc`, and the connection stays open for as long
    /// as either holds it.
    pub async fn from_connection(
        connection: Arc<Connection>,
        options: RabbitMqOptions,
        state: S,
    ) -> Result<Self, StoreError> {
        Self::start(options, state, Some(connection)).await
    }

    async fn start(
        options: RabbitMqOptions,
        state: S,
        shared: Option<Arc<Connection>>,
    ) -> Result<Self, StoreError> {
        if options.prefix.len() > MAX_PREFIX_BYTES {
            return Err(InvalidInput::QueuePrefixTooLong {
                len: options.prefix.len(),
                max: MAX_PREFIX_BYTES,
            }
            .into());
        }
        let link = connect(&options, shared.as_ref(), true).await?;
        let health = Arc::new(PublisherHealth {
            reachable: AtomicBool::new(true),
            busy_since: parking_lot::Mutex::new(None),
        });
        let (notices, jobs) = mpsc::channel(MAX_WAITING_NOTICES);
        let publisher = Publisher {
            options: options.clone(),
            shared: shared.clone(),
            link: Some(link),
            health: Arc::clone(&health),
            paused_until: None,
        };
        // Ends when the last clone of the store (and of its consume streams) is dropped.
        tokio::spawn(publisher.run(jobs));
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                options,
                shared,
                notices,
                health,
            }),
        })
    }

    /// Waits until every notice handed to the publisher before this call has been
    /// published, or given up on (the broker away: each such notice waits at most the
    /// operation timeout, and while the broker is known to be away, none). For tests, and
    /// for an orderly shutdown; the store's calls never wait for the broker.
    pub async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        if self.inner.notices.send(Job::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// The store that holds the commands' state.
    pub fn state(&self) -> &S {
        &self.inner.state
    }

    /// The name of a device's notice queue (at most 255 bytes; see the
    /// [module docs](self)).
    pub fn queue_name(&self, device: &DeviceId) -> String {
        self.inner.queue_name(device)
    }

    /// A stream of the device's commands as they become deliverable, oldest first, each
    /// already leased to `owner` for its own timeout plus `grace` (so `delivering`, with its
    /// [`Lease`]; see [`lease_next`](Store::lease_next)): the consumer sends it and ends
    /// the lease with [`complete`](Store::complete) or [`release`](Store::release). The device's next command is yielded only once that
    /// lease is over (one live lease per device, whoever holds it, as
    /// [`lease_next`](Store::lease_next) promises), so a consumer pulls, sends, ends, and
    /// pulls again. The stream wakes on the device queue's notices and also looks every
    /// `poll_every`. It yields an error when the state store fails (and goes on after
    /// waiting `poll_every`); it never ends on its own.
    pub fn consume(
        &self,
        device: DeviceId,
        owner: NodeId,
        grace: Duration,
        poll_every: Duration,
    ) -> impl Stream<Item = Result<Leased, StoreError>> + Send + 'static {
        let state = ConsumeState {
            store: self.clone(),
            device,
            owner,
            grace,
            poll_every,
            consumer: None,
            backoff: false,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await;
            Some((item, state))
        })
    }
}

struct ConsumeState<S> {
    store: RabbitMqStore<S>,
    device: DeviceId,
    owner: NodeId,
    grace: Duration,
    poll_every: Duration,
    consumer: Option<(Link, Consumer)>,
    backoff: bool,
}

impl<S: Store> ConsumeState<S> {
    async fn next(&mut self) -> Result<Leased, StoreError> {
        loop {
            if self.backoff {
                self.backoff = false;
                tokio::time::sleep(self.poll_every).await;
            }
            match self
                .store
                .inner
                .state
                .lease_next(&self.device, &self.owner, self.grace)
                .await
            {
                Ok(Some(leased)) => return Ok(leased),
                Ok(None) => {}
                Err(e) => {
                    self.backoff = true;
                    return Err(e);
                }
            }
            self.wait_for_notice().await;
        }
    }

    /// Waits for a notice on the device queue, or `poll_every`, whichever comes first.
    async fn wait_for_notice(&mut self) {
        if self.consumer.is_none() {
            match self.subscribe().await {
                Ok(subscribed) => self.consumer = Some(subscribed),
                Err(e) => {
                    tracing::debug!(device = %self.device, error = %e, "cannot subscribe to the device queue; polling");
                    tokio::time::sleep(self.poll_every).await;
                    return;
                }
            }
        }
        let Some((_, consumer)) = self.consumer.as_mut() else {
            return;
        };
        match tokio::time::timeout(self.poll_every, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                // A notice is a wake-up: the lease that follows reads the state.
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::debug!(error = %e, "could not ack a notice");
                }
            }
            Ok(Some(Err(_)) | None) => self.consumer = None,
            Err(_) => {}
        }
    }

    async fn subscribe(&self) -> Result<(Link, Consumer), StoreError> {
        let inner = &self.store.inner;
        let link = connect(&inner.options, inner.shared.as_ref(), false).await?;
        declare(&inner.options, &link.channel, &self.device).await?;
        let timeout = inner.options.operation_timeout;
        bounded(
            timeout,
            "set prefetch",
            link.channel.basic_qos(16, BasicQosOptions::default()),
        )
        .await?;
        let consumer = bounded(
            timeout,
            "consume",
            link.channel.basic_consume(
                ShortString::from(inner.queue_name(&self.device)),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok((link, consumer))
    }
}

#[async_trait]
impl<S: Store> Store for RabbitMqStore<S> {
    async fn enqueue(&self, command: NewCommand) -> Result<CommandId, StoreError> {
        let id = self.inner.state.enqueue(command).await?;
        if let Ok(stored) = self.inner.state.get(&id).await {
            self.inner.notify(&stored);
        }
        Ok(id)
    }

    async fn confirm(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        let confirmed = self.inner.state.confirm(id).await?;
        self.inner.notify(&confirmed);
        Ok(confirmed)
    }

    async fn cancel(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.state.cancel(id).await
    }

    async fn lease_next(
        &self,
        device: &DeviceId,
        owner: &NodeId,
        grace: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        self.inner.state.lease_next(device, owner, grace).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        outcome: CommandOutcome,
    ) -> Result<QueuedCommand, StoreError> {
        let completed = self.inner.state.complete(lease, outcome).await?;
        self.inner.notify_device(&completed.device).await;
        Ok(completed)
    }

    async fn release(&self, lease: &Lease, cut: Cut) -> Result<QueuedCommand, StoreError> {
        let released = self.inner.state.release(lease, cut).await?;
        // The released command itself when it is back to pending, or the one behind it.
        self.inner.notify_device(&released.device).await;
        Ok(released)
    }

    async fn record_hops(&self, lease: &Lease, hops: Hops) -> Result<(), StoreError> {
        self.inner.state.record_hops(lease, hops).await
    }

    async fn reclaim(&self, owner: &NodeId) -> Result<Vec<QueuedCommand>, StoreError> {
        let reclaimed = self.inner.state.reclaim(owner).await?;
        let mut devices: Vec<&DeviceId> = reclaimed.iter().map(|c| &c.device).collect();
        devices.sort();
        devices.dedup();
        for device in devices {
            self.inner.notify_device(device).await;
        }
        Ok(reclaimed)
    }

    async fn drain_pending(
        &self,
        device: &DeviceId,
        owner: &NodeId,
    ) -> Result<Vec<Leased>, StoreError> {
        self.inner.state.drain_pending(device, owner).await
    }

    async fn get(&self, id: &CommandId) -> Result<QueuedCommand, StoreError> {
        self.inner.state.get(id).await
    }

    async fn list_open(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.state.list_open(device).await
    }

    async fn pending_count(&self, device: &DeviceId) -> Result<u32, StoreError> {
        self.inner.state.pending_count(device).await
    }

    async fn due_devices(&self, limit: usize) -> Result<Vec<DeviceId>, StoreError> {
        self.inner.state.due_devices(limit).await
    }

    async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let report = self.inner.state.sweep().await?;
        if report.recovered > 0 {
            for device in self.inner.state.due_devices(usize::MAX).await? {
                self.inner.notify_device(&device).await;
            }
        }
        Ok(report)
    }

    async fn expire(&self, device: &DeviceId) -> Result<Vec<QueuedCommand>, StoreError> {
        self.inner.state.expire(device).await
    }

    /// The state store's retention: final commands have no notice left in their device's
    /// queue (it was consumed when they were leased), so only the state has anything to
    /// delete.
    async fn purge(&self, limit: usize) -> Result<u64, StoreError> {
        self.inner.state.purge(limit).await
    }

    async fn open_counts(&self) -> Result<OpenCounts, StoreError> {
        self.inner.state.open_counts().await
    }

    /// The state store's ping, and whether the broker answers: the publisher is not stuck
    /// (its current attempt, if any, has waited for the broker at most
    /// [`RabbitMqOptions::ping_timeout`] — answered at once, without a connection of its
    /// own), and its last attempt reached the broker, or else a fresh connection opens
    /// within the ping timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.state.ping().await?;
        let health = &self.inner.health;
        if let Some(waiting) = health
            .waiting_for()
            .filter(|waiting| *waiting > self.inner.options.ping_timeout)
        {
            return Err(unavailable(format!(
                "the delivery-notice publisher has waited {waiting:?} for the broker"
            )));
        }
        if health.reachable.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeout = self.inner.options.ping_timeout;
        tokio::time::timeout(
            timeout,
            connect(&self.inner.options, self.inner.shared.as_ref(), false),
        )
        .await
        .map_err(|_| unavailable(format!("connect: no answer within {timeout:?}")))??;
        health.reachable.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn queue_names_fit_amqp_whatever_the_prefix_and_id() {
        let prefix = "p".repeat(MAX_PREFIX_BYTES);
        for id in [
            "x".repeat(128),
            "\u{e9}".repeat(128),
            "\u{1d11e}".repeat(128),
        ] {
            let name = queue_name(&prefix, &id);
            assert!(name.len() <= MAX_QUEUE_NAME_BYTES, "{} bytes", name.len());
            assert!(name.starts_with(&format!("{prefix}#")));
        }
        assert_eq!(queue_name("bq", "lock-1"), "bq.lock-1");
    }
}

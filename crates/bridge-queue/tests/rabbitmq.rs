//! What the RabbitMQ store adds to its state store: persistent delivery notices in durable
//! per-device queues, and `consume`, which pushes commands to a consumer as they arrive, one
//! live lease per device across consumers and processes.
#![cfg(feature = "rabbitmq")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_protocol::http::{CommandOutcome, CommandStatus};
use bridge_protocol::{CommandType, DeviceId, HexPayload, TtlSeconds};
use bridge_queue::{
    Cut, MemoryStore, NodeId, RabbitMqOptions, RabbitMqStore, Store, StoreConfig, StoreError,
};
use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::ShortString;

/// The grace of every lease (on top of the command's own timeout).
const GRACE: Duration = Duration::from_secs(5);
/// Long enough that only a notice can wake a consumer within `PROMPTLY`.
const POLL: Duration = Duration::from_mins(1);
const PROMPTLY: Duration = Duration::from_secs(5);

fn url() -> String {
    std::env::var("BRIDGE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Options with a queue-name prefix of this test's own.
fn options() -> RabbitMqOptions {
    let mut options = RabbitMqOptions::new(url())
        .with_prefix(format!("bq-test-{}", uuid::Uuid::new_v4().simple()));
    options.idle_queue_expiry = Duration::from_secs(30);
    options
}

async fn open_with(options: RabbitMqOptions, state: MemoryStore) -> RabbitMqStore<MemoryStore> {
    RabbitMqStore::open(options, state)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is unreachable at {} ({e})", url()))
}

async fn open() -> RabbitMqStore<MemoryStore> {
    open_with(options(), MemoryStore::new(StoreConfig::default())).await
}

async fn channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

async fn delete_queue(store: &RabbitMqStore<MemoryStore>, device: &DeviceId) {
    let (_conn, channel) = channel().await;
    let _ = channel
        .queue_delete(
            ShortString::from(store.queue_name(device)),
            QueueDeleteOptions::default(),
        )
        .await;
}

fn device() -> DeviceId {
    DeviceId::new("lock-1").expect("valid")
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid")
}

fn kind(s: &str) -> CommandType {
    CommandType::new(s).expect("valid")
}

fn bytes(b: &[u8]) -> HexPayload {
    HexPayload::from_bytes(b.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_command_is_a_persistent_json_notice_in_the_device_queue() {
    let store = open().await;
    let dev = device();
    let awaiting = store
        .enqueue_with_confirmation(&dev, &kind("open"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    // Notices are published by the store's publisher task: wait for it before looking.
    store.flush().await;
    let (_conn, channel) = channel().await;
    let queue = ShortString::from(store.queue_name(&dev));
    let get = |channel: lapin::Channel, queue: ShortString| async move {
        channel
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    };
    // Nothing is deliverable yet, so nothing was published (the queue may not exist yet).
    if let Ok(message) = channel
        .basic_get(queue.clone(), BasicGetOptions { no_ack: true })
        .await
    {
        assert!(
            message.is_none(),
            "a command awaiting confirmation was announced"
        );
    }
    let (_conn, channel) = self::channel().await;

    store.confirm(&awaiting).await.expect("confirm");
    store.flush().await;
    let message = get(channel.clone(), queue.clone())
        .await
        .expect("confirm publishes a notice");
    assert_eq!(*message.delivery.properties.delivery_mode(), Some(2));
    let body: serde_json::Value =
        serde_json::from_slice(&message.delivery.data).expect("a JSON notice");
    assert_eq!(body["commandId"], awaiting.as_str());
    assert_eq!(body["deviceId"], "lock-1");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["payload"], "01");
    assert!(get(channel.clone(), queue.clone()).await.is_none());
    delete_queue(&store, &dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_pushes_commands_in_order_one_lease_at_a_time() {
    let store = open().await;
    let dev = device();
    let early = store
        .enqueue_or_update(&dev, &kind("a"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let mut stream = Box::pin(store.consume(dev.clone(), node("node-a"), GRACE, POLL));

    // Queued before consuming: yielded first, leased to the consumer's node.
    let first = tokio::time::timeout(PROMPTLY, stream.next())
        .await
        .expect("the command queued earlier comes at once")
        .expect("the stream does not end")
        .expect("lease");
    assert_eq!(first.command.id, early);
    assert_eq!(first.command.status, CommandStatus::Delivering);
    assert_eq!(first.command.lease_owner, Some(node("node-a")));
    store
        .complete(&first.lease, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");

    // Arrives while the consumer waits: pushed by the notice, long before the poll.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let next = stream.next().await;
        (next, started.elapsed(), stream)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = store
        .enqueue_or_update(&dev, &kind("b"), bytes(&[2]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let c = store
        .enqueue_or_update(&dev, &kind("c"), bytes(&[3]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let (got, took, mut stream) = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("pushed promptly, not at the next poll")
        .expect("task");
    assert!(took < PROMPTLY);
    let got_b = got.expect("the stream does not end").expect("lease");
    assert_eq!(got_b.command.id, b);

    // While b's lease lives, c is not handed out, though its notice is there.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a second command of the device was leased while the first was out"
    );

    // A released command comes back first, again pushed by its notice; the cut write
    // counted one attempt.
    store
        .release(&got_b.lease, Cut::Sent)
        .await
        .expect("release");
    let again = tokio::time::timeout(PROMPTLY, stream.next())
        .await
        .expect("a released command is pushed again promptly")
        .expect("the stream does not end")
        .expect("lease");
    assert_eq!(again.command.id, b);
    assert_eq!(again.command.attempts, 1);
    assert_ne!(again.lease.token, got_b.lease.token);

    // Its end lets c go, pushed by the notice of the end.
    store
        .complete(&again.lease, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");
    let last = tokio::time::timeout(PROMPTLY, stream.next())
        .await
        .expect("the next command is pushed promptly once the lease ends")
        .expect("the stream does not end")
        .expect("lease");
    assert_eq!(last.command.id, c);
    delete_queue(&store, &dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_in_two_processes_share_a_device_one_lease_at_a_time() {
    // Two stores on the same state (two server processes sharing it), a consumer on each.
    let options = options();
    let first = open_with(options.clone(), MemoryStore::new(StoreConfig::default())).await;
    let second = open_with(options, first.state().share(StoreConfig::default())).await;
    let dev = device();
    let mut queued = Vec::new();
    for i in 0..6 {
        queued.push(
            first
                .enqueue_or_update(
                    &dev,
                    &kind(&format!("t{i}")),
                    bytes(&[1]),
                    TtlSeconds::DEFAULT,
                )
                .await
                .expect("enqueue"),
        );
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (store, owner) in [(first.clone(), "node-a"), (second.clone(), "node-b")] {
        let dev = dev.clone();
        let in_flight = Arc::clone(&in_flight);
        let delivered = Arc::clone(&delivered);
        tasks.push(tokio::spawn(async move {
            let mut stream =
                Box::pin(store.consume(dev, node(owner), GRACE, Duration::from_millis(100)));
            while let Ok(Some(Ok(leased))) =
                tokio::time::timeout(Duration::from_secs(1), stream.next()).await
            {
                assert_eq!(
                    in_flight.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two deliveries of one device at once"
                );
                delivered
                    .lock()
                    .expect("not poisoned")
                    .push(leased.command.id.clone());
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                store
                    .complete(&leased.lease, CommandOutcome::Payload(bytes(&[0])))
                    .await
                    .expect("complete");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(
        *delivered.lock().expect("not poisoned"),
        queued,
        "every command exactly once, in queue order"
    );
    delete_queue(&first, &dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_unavailable_in_bounded_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut options = RabbitMqOptions::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    options.operation_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let result = RabbitMqStore::open(options, MemoryStore::default()).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "got {:?}",
        result.map(|_| ())
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_announces_a_recovered_lease() {
    let clock = bridge_queue::ManualClock::starting_now();
    let config = StoreConfig::default().with_clock(std::sync::Arc::new(clock.clone()));
    let mut options = RabbitMqOptions::new(url())
        .with_prefix(format!("bq-test-{}", uuid::Uuid::new_v4().simple()));
    options.idle_queue_expiry = Duration::from_secs(30);
    let store = RabbitMqStore::open(options, MemoryStore::new(config))
        .await
        .expect("open");
    let dev = device();
    let id = store
        .enqueue_or_update(&dev, &kind("a"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let (_conn, channel) = channel().await;
    let queue = ShortString::from(store.queue_name(&dev));
    let take = || {
        let channel = channel.clone();
        let queue = queue.clone();
        async move {
            channel
                .basic_get(queue, BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
        }
    };
    store.flush().await;
    assert!(take().await.is_some(), "enqueue announced the command");
    let leased = store
        .lease_next(&dev, &node("node-a"), GRACE)
        .await
        .expect("lease")
        .expect("the command is due");
    assert!(take().await.is_none());

    clock.advance(leased.command.timeout.as_duration() + GRACE);
    assert_eq!(store.sweep().await.expect("sweep").recovered, 1);
    store.flush().await;
    let notice = take().await.expect("the recovered command is announced");
    let body: serde_json::Value = serde_json::from_slice(&notice.delivery.data).expect("JSON");
    assert_eq!(body["commandId"], id.as_str());
    delete_queue(&store, &dev).await;
}

/// A device id of `chars` copies of a four-byte character after `head`.
fn long_device(head: &str, chars: usize) -> DeviceId {
    let id: String = head
        .chars()
        .chain(std::iter::repeat_n('𝄞', chars))
        .collect();
    DeviceId::new(&id).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_id_of_128_four_byte_characters_is_queued_consumed_and_completed() {
    let store = open().await;
    let dev = long_device("", DeviceId::MAX_CHARS);
    assert_eq!(dev.as_str().len(), 4 * DeviceId::MAX_CHARS);
    let mut stream = Box::pin(store.consume(dev.clone(), node("node-a"), GRACE, POLL));
    let waiting = tokio::spawn(async move {
        let next = stream.next().await;
        (next, stream)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = store
        .enqueue_or_update(&dev, &kind("open"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    let (got, _stream) = tokio::time::timeout(PROMPTLY, waiting)
        .await
        .expect("pushed by its notice, not at the next poll")
        .expect("task");
    let leased = got.expect("the stream does not end").expect("lease");
    assert_eq!(leased.command.id, id);
    assert_eq!(leased.command.device, dev);
    store
        .complete(&leased.lease, CommandOutcome::Payload(bytes(&[0])))
        .await
        .expect("complete");
    assert_eq!(
        store.get(&id).await.expect("get").status,
        CommandStatus::Succeeded
    );
    let queue = store.queue_name(&dev);
    assert!(queue.len() <= 255, "queue name of {} bytes", queue.len());
    delete_queue(&store, &dev).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_device_ids_sharing_a_200_byte_prefix_get_different_queues() {
    let options = options();
    let prefix = options.prefix.clone();
    let store = open_with(options, MemoryStore::new(StoreConfig::default())).await;
    let head = "\u{1d11e}".repeat(50);
    assert_eq!(head.len(), 200);
    let a = long_device(&format!("{head}a"), 20);
    let b = long_device(&format!("{head}b"), 20);
    let (qa, qb) = (store.queue_name(&a), store.queue_name(&b));
    assert!(qa.len() <= 255 && qb.len() <= 255, "{qa} / {qb}");
    assert_ne!(qa, qb);
    // Short ids keep the readable name they always had.
    assert_eq!(store.queue_name(&device()), format!("{prefix}.lock-1"));
}

/// A store made from a connection the caller already has opens its channels on it (no
/// connection of its own while that one is open), publishes and consumes through it, and
/// leaves it usable by the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_the_callers_connection_publishes_and_consumes_on_it() {
    let connection = Arc::new(
        lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is unreachable at {} ({e})", url())),
    );
    // A URL nobody listens on: were the store to connect on its own, it would fail.
    let mut options = options();
    options.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
    options.operation_timeout = Duration::from_secs(2);
    let store = RabbitMqStore::from_connection(
        Arc::clone(&connection),
        options,
        MemoryStore::new(StoreConfig::default()),
    )
    .await
    .expect("a store on the caller's connection");
    let dev = device();
    let id = store
        .enqueue_or_update(&dev, &kind("unlock"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    // The publisher task publishes it off the caller's path: wait until it has.
    store.flush().await;
    // The notice is in the device queue, read on a channel of the caller's connection.
    let channel = connection
        .create_channel()
        .await
        .expect("the caller's channel");
    let notice = channel
        .basic_get(
            ShortString::from(store.queue_name(&dev)),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("basic.get")
        .expect("a notice was published");
    let body: serde_json::Value = serde_json::from_slice(&notice.delivery.data).expect("JSON");
    assert_eq!(body["commandId"], id.as_str());
    channel
        .basic_nack(
            notice.delivery.delivery_tag,
            lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .expect("requeue the notice");
    // A consumer on the same connection gets the command, leased.
    let mut stream = Box::pin(store.consume(dev.clone(), node("node-a"), GRACE, POLL));
    let leased = tokio::time::timeout(PROMPTLY, stream.next())
        .await
        .expect("a command in time")
        .expect("the stream goes on")
        .expect("leased");
    assert_eq!(leased.command.id, id);
    store
        .complete(&leased.lease, CommandOutcome::Payload(bytes(&[1])))
        .await
        .expect("complete");
    assert!(store.ping().await.is_ok());
    drop(stream);
    delete_queue(&store, &dev).await;
    assert!(
        connection.status().connected(),
        "the caller's connection is still open"
    );
}

/// A TCP proxy between a store and the broker that the test can cut, freeze and restore,
/// standing in for a broker that goes away and comes back (the shared broker itself is never
/// stopped). Cut, it drops the connections it carries and black-holes new ones: they are
/// accepted and never answered, as a broker behind a dead network path would do. Frozen,
/// it also black-holes the connections it carries: they stay open and nothing goes either
/// way, as when a path dies without a reset. Restored, it closes the black-holed ones
/// (their connect fails at once) and carries new ones again.
struct Proxy {
    port: u16,
    mode: tokio::sync::watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Cut,
    Frozen,
}

impl Proxy {
    async fn start(broker: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let (mode, _) = tokio::sync::watch::channel(Mode::Up);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut mode = modes.subscribe();
                let broker = broker.clone();
                tokio::spawn(async move {
                    if *mode.borrow_and_update() == Mode::Up {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&broker).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = mode.wait_for(|m| *m != Mode::Up) => {}
                        }
                        // Frozen: both sockets stay open, carrying nothing, until restored
                        // or cut.
                        let _ = mode.wait_for(|m| *m != Mode::Frozen).await;
                    } else {
                        let _ = mode.wait_for(|m| *m == Mode::Up).await;
                    }
                });
            }
        });
        Self { port, mode, task }
    }

    fn set_up(&self, up: bool) {
        self.mode
            .send_replace(if up { Mode::Up } else { Mode::Cut });
    }

    fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's `host:port` in the test URL.
fn broker_address() -> String {
    let url = url();
    let authority = url.rsplit('@').next().unwrap_or(&url);
    let authority = authority.trim_start_matches("amqp://");
    authority.split('/').next().unwrap_or(authority).to_owned()
}

/// The first notice waiting in `queue`, if any.
async fn take_notice(channel: &lapin::Channel, queue: &str) -> Option<serde_json::Value> {
    channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
        .ok()
        .flatten()
        .map(|message| serde_json::from_slice(&message.delivery.data).expect("a JSON notice"))
}

/// The broker goes away while the store is in use and comes back: while it is black-holed,
/// every call of the store returns at once (no caller waits for the broker: a publish
/// waiting for it would hang for the hour of operation timeout set here, and the guard
/// below fails the test long before) and the commands are kept, while `ping` reports the
/// publisher stuck on the broker (at once, not after the attempt's timeout); once it is
/// back, notices flow again on a new connection and `ping` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_and_comes_back_never_holds_up_the_store() {
    let proxy = Proxy::start(broker_address()).await;
    let address = broker_address();
    let mut options = options();
    options.url = url().replace(&address, &format!("127.0.0.1:{}", proxy.port));
    options.operation_timeout = Duration::from_hours(1);
    options.ping_timeout = Duration::from_millis(200);
    let store = open_with(options, MemoryStore::new(StoreConfig::default())).await;
    let dev = device();
    let queue = store.queue_name(&dev);
    let (_conn, channel) = channel().await;

    let first = store
        .enqueue_or_update(&dev, &kind("k0"), bytes(&[0]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    store.flush().await;
    let notice = take_notice(&channel, &queue).await.expect("a notice");
    assert_eq!(notice["commandId"], first.as_str());

    // The broker goes away.
    proxy.set_up(false);
    let during = tokio::time::timeout(Duration::from_mins(1), async {
        let mut ids = Vec::new();
        for n in 1..=20 {
            let id = store
                .enqueue_or_update(
                    &dev,
                    &kind(&format!("k{n}")),
                    bytes(&[n]),
                    TtlSeconds::DEFAULT,
                )
                .await
                .expect("enqueue while the broker is away");
            ids.push(id);
        }
        let leased = store
            .lease_next(&dev, &node("node-a"), GRACE)
            .await
            .expect("lease")
            .expect("due");
        store
            .complete(&leased.lease, CommandOutcome::Payload(bytes(&[1])))
            .await
            .expect("complete while the broker is away");
        ids
    })
    .await
    .expect("no call of the store waits for a black-holed broker");
    assert_eq!(during.len(), 20);
    assert_eq!(store.pending_count(&dev).await.expect("count"), 20);

    // Meanwhile `ping`, and so `/readyz`, says the broker is away once the publisher has
    // waited for it longer than the ping timeout, never blocking (the publisher's attempt,
    // or a connect of ping's own, would be black-holed for the hour of operation timeout).
    ping_until_unavailable(
        &store,
        "ping answers at once while the broker is black-holed",
        "ping reports the black-holed broker",
    )
    .await;

    // It comes back: the publisher's stuck attempt fails, it reconnects, notices flow.
    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 100_u8;
    let back = loop {
        let id = store
            .enqueue_or_update(
                &dev,
                &kind(&format!("k{n}")),
                bytes(&[n]),
                TtlSeconds::DEFAULT,
            )
            .await
            .expect("enqueue after the broker is back");
        store.flush().await;
        let mut found = None;
        while let Some(notice) = take_notice(&channel, &queue).await {
            if notice["commandId"] == id.as_str() {
                found = Some(id.clone());
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no notice reached the broker within 30 s of its return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        n += 1;
    };
    assert_eq!(
        store.get(&back).await.expect("get").status,
        CommandStatus::Pending
    );
    store.ping().await.expect("ping once the broker is back");
    delete_queue(&store, &dev).await;
}

/// The broker stops answering on the publisher's open connection (no reset: the path died
/// silently), so the publisher's attempt waits for a confirm that never comes, up to the
/// hour of operation timeout set here. `ping` (and so `/readyz`) must say so at once rather
/// than answer OK for that hour; once the broker is back, notices flow and `ping` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_a_publisher_stuck_on_a_silent_broker_at_once() {
    let proxy = Proxy::start(broker_address()).await;
    let address = broker_address();
    let mut options = options();
    options.url = url().replace(&address, &format!("127.0.0.1:{}", proxy.port));
    options.operation_timeout = Duration::from_hours(1);
    options.ping_timeout = Duration::from_millis(200);
    let store = open_with(options, MemoryStore::new(StoreConfig::default())).await;
    let dev = device();
    let queue = store.queue_name(&dev);
    let (_conn, channel) = channel().await;
    store
        .enqueue_or_update(&dev, &kind("k0"), bytes(&[0]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue");
    store.flush().await;
    assert!(take_notice(&channel, &queue).await.is_some(), "a notice");
    store.ping().await.expect("ping while the broker answers");

    // The path to the broker dies silently; the next notice's publish waits for its confirm.
    proxy.freeze();
    store
        .enqueue_or_update(&dev, &kind("k1"), bytes(&[1]), TtlSeconds::DEFAULT)
        .await
        .expect("enqueue while the broker is silent");
    ping_until_unavailable(
        &store,
        "ping answers at once while the publisher is stuck",
        "ping reports the stuck publisher instead of answering OK until its timeout",
    )
    .await;

    // The broker is back: the stuck attempt fails, the publisher reconnects, ping answers.
    proxy.set_up(true);
    tokio::time::timeout(Duration::from_mins(1), async {
        for n in 2_u8..=u8::MAX {
            store
                .enqueue_or_update(
                    &dev,
                    &kind(&format!("k{n}")),
                    bytes(&[n]),
                    TtlSeconds::DEFAULT,
                )
                .await
                .expect("enqueue after the broker is back");
            store.flush().await;
            if store.ping().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("ping never answered after the broker's return");
    })
    .await
    .expect("ping answers within a minute of the broker's return");
    delete_queue(&store, &dev).await;
}

/// Pings until `ping` reports the broker unavailable (within 30 s), each ping answering
/// within 5 s: `ping` must never block while the broker is away or the publisher stuck.
async fn ping_until_unavailable(
    store: &RabbitMqStore<MemoryStore>,
    each_answers: &str,
    reported: &str,
) {
    let not_ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(5), store.ping())
                .await
                .unwrap_or_else(|_| panic!("{each_answers}"));
            if let Err(error) = answer {
                break error;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{reported}"));
    assert!(
        matches!(not_ready, StoreError::Unavailable { .. }),
        "got {not_ready:?}"
    );
}

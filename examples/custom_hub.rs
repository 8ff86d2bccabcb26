//! The server on a `Hub` of your own: two servers in one process share broadcasts and
//! presence through a "bus" and a "directory" (stand-ins for NATS and Redis).
//!
//! `cargo run -p examples --example custom_hub`
//!
//! What a custom hub swaps (see the `bridge_hub::Hub` docs for the full list and why):
//! where frames go and what presence is reported. What it does not: the sockets of this
//! process stay with its `LocalHub`, so a command is routed only through a bridge connected
//! to the node that runs it; the `device_status` snapshots a node sends its own subscribers
//! are its local view.
//!
//! Here a phone holds `lock-1` on node A; a user watches `lock-1` on node B. An event posted
//! on node A reaches the user on node B through the bus, and node B reports `lock-1`
//! online, from the directory, although no bridge of its own holds it.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bridge_client::lock::{LockBehaviour, SimulatedLocks};
use bridge_client::{BridgeClient, BridgeConfig, Credentials};
use bridge_hub::{DevicePresence, Frame, Hub, LocalHub};
use bridge_protocol::DeviceId;
use bridge_server::{Hooks, Server, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn Error + Send + Sync>;

/// A broadcast on its way to the other nodes.
#[derive(Clone)]
struct BusMessage {
    origin: &'static str,
    device: DeviceId,
    frame: Frame,
}

/// Which node's bridges hold which device.
type Directory = Arc<Mutex<HashMap<DeviceId, Vec<&'static str>>>>;

/// The custom hub: local delivery by the node's `LocalHub`, plus the bus and the directory.
struct BusHub {
    node: &'static str,
    local: LocalHub,
    bus: broadcast::Sender<BusMessage>,
    directory: Directory,
}

impl BusHub {
    /// Wraps the node's `LocalHub`, and starts delivering the other nodes' broadcasts to
    /// this node's subscribers.
    fn start(
        node: &'static str,
        local: LocalHub,
        bus: broadcast::Sender<BusMessage>,
        directory: Directory,
    ) -> Self {
        let mut incoming = bus.subscribe();
        let delivering = local.clone();
        tokio::spawn(async move {
            loop {
                match incoming.recv().await {
                    Ok(message) if message.origin != node => {
                        delivering.broadcast(&message.device, &message.frame);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Self {
            node,
            local,
            bus,
            directory,
        }
    }
}

#[async_trait]
impl Hub for BusHub {
    fn local(&self) -> &LocalHub {
        &self.local
    }

    async fn broadcast(&self, device: &DeviceId, frame: &Frame) -> usize {
        let _ = self.bus.send(BusMessage {
            origin: self.node,
            device: device.clone(),
            frame: frame.clone(),
        });
        // The count is this node's; the other nodes deliver on their own.
        self.local.broadcast(device, frame)
    }

    async fn device_presence(&self, device: &DeviceId) -> DevicePresence {
        let mut presence = self.local.device_presence(device);
        let elsewhere = self.directory.lock().map_or(0, |directory| {
            directory
                .get(device)
                .map_or(0, |nodes| nodes.iter().filter(|n| **n != self.node).count())
        });
        if elsewhere > 0 {
            presence.online = true;
            presence.bridges += elsewhere;
        }
        presence
    }
}

/// Keeps the directory up to date from each node's hooks.
struct DirectoryHooks {
    node: &'static str,
    directory: Directory,
}

#[async_trait]
impl Hooks for DirectoryHooks {
    async fn device_online(&self, device: &DeviceId) {
        if let Ok(mut directory) = self.directory.lock() {
            directory.entry(device.clone()).or_default().push(self.node);
        }
    }

    async fn device_offline(&self, device: &DeviceId) {
        if let Ok(mut directory) = self.directory.lock()
            && let Some(nodes) = directory.get_mut(device)
        {
            nodes.retain(|n| *n != self.node);
        }
    }
}

/// One node: a server on its own hub, serving on a loopback port.
async fn node(
    name: &'static str,
    bus: &broadcast::Sender<BusMessage>,
    directory: &Directory,
) -> Result<(Server, String), BoxError> {
    let (bus, hub_directory) = (bus.clone(), Arc::clone(directory));
    let mut config = ServerConfig::default();
    config.node_id = Some(name.to_owned());
    let server = Server::builder(config)
        .development_mode()
        .wrap_hub(move |local| Arc::new(BusHub::start(name, local, bus, hub_directory)))
        .hooks(DirectoryHooks {
            node: name,
            directory: Arc::clone(directory),
        })
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.clone().serve(listener, std::future::pending()));
    Ok((server, format!("127.0.0.1:{}", addr.port())))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (bus, _) = broadcast::channel(1024);
    let directory = Directory::default();
    let (a, a_addr) = node("node-a", &bus, &directory).await?;
    let (b, b_addr) = node("node-b", &bus, &directory).await?;
    println!("node A on {a_addr}, node B on {b_addr}");

    // A phone holding lock-1 connects to node A.
    let lock = DeviceId::new("lock-1")?;
    let phone = BridgeClient::start(
        BridgeConfig::new(
            format!("ws://{a_addr}/ws"),
            Credentials::Development {
                user_id: "phone-1".into(),
            },
            vec![lock.clone()],
        ),
        Arc::new(SimulatedLocks::new(
            [lock.clone()],
            LockBehaviour::default(),
        )),
    );
    phone.wait_connected(1).await?;

    // Node B reports it online once the directory knows (the hooks run off the hot path).
    let http = reqwest::Client::new();
    let mut tries = 0;
    let presence = loop {
        tries += 1;
        if tries > 250 {
            return Err("node B never saw lock-1 online".into());
        }
        let presence: Value = http
            .get(format!("http://{b_addr}/v1/devices/lock-1"))
            .send()
            .await?
            .json()
            .await?;
        if presence["online"] == true {
            break presence;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("node B: GET /v1/devices/lock-1 -> {presence}");

    // A user on node B watches lock-1; an event posted on node A reaches it.
    let (mut alice, _) =
        tokio_tungstenite::connect_async(format!("ws://{b_addr}/ws?userId=alice")).await?;
    alice
        .send(Message::Text(
            json!({"type":"subscribe","requestId":"s-1","deviceId":"lock-1"})
                .to_string()
                .into(),
        ))
        .await?;
    let ack = next_frame(&mut alice).await?;
    println!("alice (node B) got: {ack}");
    let snapshot = next_frame(&mut alice).await?;
    println!("alice (node B) got: {snapshot}  <- node B's own view of its sockets");
    let posted: Value = http
        .post(format!("http://{a_addr}/v1/devices/lock-1/events"))
        .json(&json!({"type":"state_changed","data":{"locked":false}}))
        .send()
        .await?
        .json()
        .await?;
    println!("node A: POST /v1/devices/lock-1/events -> {posted} (node A's own subscribers)");
    let event = next_frame(&mut alice).await?;
    println!("alice (node B) got: {event}");
    assert_eq!(event["type"], "state_changed");

    alice.close(None).await?;
    phone.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// The next JSON text frame.
async fn next_frame<S>(socket: &mut S) -> Result<Value, BoxError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await?
            .ok_or("the connection closed")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

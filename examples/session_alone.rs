//! `bridge-session` alone: request-id correlation over a transport of your own — no hub,
//! no server, no WebSocket.
//!
//! `cargo run -p examples --example session_alone`
//!
//! The "link" here is a pair of channels carrying the protocol's JSON text, as a serial
//! line, a Bluetooth socket or a message bus would: `ble_write` frames go down, the phone
//! answers with `ble_response` frames, which are decoded and handed to the session manager.
//! The phone answers `unlock` with the lock's reply, refuses anything else with a device
//! error, and never answers `status` (so that command times out). Then the link drops, and
//! the command in flight ends `bridge_lost` at once.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::{
    BleOutcome, BleResponse, BleWrite, BridgeToServer, ConfigRegistry, ConnectionId, DeviceId,
    HexPayload, Limits, ServerToBridge,
};
use bridge_session::{CommandError, SessionConfig, SessionManager, Transport, TransportError};
use tokio::sync::mpsc;

type BoxError = Box<dyn Error + Send + Sync>;

/// The one "connection" of this link. A transport with several links gives each its id, so
/// that an answer counts only from the link its write went out on.
const LINK: ConnectionId = ConnectionId::new(1);

/// Sends `ble_write` frames down a text link to one phone that holds `devices`.
struct TextLink {
    down: mpsc::UnboundedSender<String>,
    devices: Vec<DeviceId>,
}

#[async_trait]
impl Transport for TextLink {
    /// Nothing to count: one link, no routing among holders.
    type InFlight = ();

    async fn send_ble_write(&self, write: BleWrite) -> Result<(ConnectionId, ()), TransportError> {
        if !self.devices.contains(&write.device_id) {
            return Err(TransportError::Offline);
        }
        let frame = ServerToBridge::BleWrite(write).to_json();
        self.down.send(frame).map_err(|_| TransportError::Offline)?;
        Ok((LINK, ()))
    }
}

/// The phone at the other end: reads frames, answers some.
async fn phone(mut down: mpsc::UnboundedReceiver<String>, up: mpsc::UnboundedSender<String>) {
    while let Some(text) = down.recv().await {
        let Ok(ServerToBridge::BleWrite(write)) = ServerToBridge::decode(&text) else {
            continue;
        };
        let outcome = match write.payload.as_bytes() {
            // unlock: the lock replies 0x82 0x00 ("unlocked").
            [0x01] => BleOutcome::Payload(HexPayload::from_bytes(vec![0x82, 0x00])),
            // status: this phone never answers it.
            [0x03] => continue,
            _ => BleOutcome::Error("unsupported_command".parse().expect("a valid code")),
        };
        let answer = BridgeToServer::BleResponse(BleResponse {
            request_id: write.request_id,
            device_id: write.device_id,
            outcome,
        });
        if up.send(answer.to_json()).is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let lock = DeviceId::new("lock-1")?;
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<String>();
    let phone_task = tokio::spawn(phone(down_rx, up_tx));

    let manager = SessionManager::new(
        Arc::new(TextLink {
            down: down_tx,
            devices: vec![lock.clone()],
        }),
        Arc::new(ConfigRegistry::example()),
        &SessionConfig::default(),
    );

    // The reading side of the link: decode every answer and offer it to the manager.
    let reader_manager = manager.clone();
    let reader = tokio::spawn(async move {
        let limits = Limits::default();
        while let Some(text) = up_rx.recv().await {
            match BridgeToServer::decode(&text, &limits) {
                Ok(BridgeToServer::BleResponse(answer)) => {
                    if let Err(refused) = reader_manager.handle_response(LINK, answer) {
                        // A server would answer the bridge with an error frame here.
                        println!("refused an answer: {refused}");
                    }
                }
                Ok(other) => println!("ignored a frame: {other:?}"),
                Err(error) => println!("an unreadable frame: {error}"),
            }
        }
    });

    let send = |payload: Vec<u8>, timeout: Duration| {
        manager.send_command(lock.clone(), None, HexPayload::from_bytes(payload), timeout)
    };

    let reply = send(vec![0x01], Duration::from_secs(5)).await?;
    println!(
        "unlock: succeeded, reply {} in {:?}",
        reply.payload, reply.latency
    );
    assert_eq!(reply.payload.as_bytes(), &[0x82, 0x00]);

    let refused = send(vec![0x09], Duration::from_secs(5)).await;
    println!("0x09: {refused:?}");
    assert!(matches!(refused, Err(CommandError::DeviceError(_))));

    let silent = send(vec![0x03], Duration::from_millis(200)).await;
    println!("status (never answered): {silent:?}");
    assert_eq!(silent, Err(CommandError::Timeout));

    let offline = manager
        .send_command(
            DeviceId::new("lock-2")?,
            None,
            HexPayload::from_bytes(vec![0x01]),
            Duration::from_secs(5),
        )
        .await;
    println!("lock-2 (nobody holds it): {offline:?}");
    assert_eq!(offline, Err(CommandError::Offline));

    // The link drops while a command is in flight: it ends at once, not at its timeout.
    let in_flight = tokio::spawn({
        let manager = manager.clone();
        let lock = lock.clone();
        async move {
            manager
                .send_command(
                    lock,
                    None,
                    HexPayload::from_bytes(vec![0x03]),
                    Duration::from_mins(1),
                )
                .await
        }
    });
    while manager.pending() == 0 {
        tokio::task::yield_now().await;
    }
    manager.connection_lost(LINK);
    let lost = in_flight.await?;
    println!("status when the link dropped: {lost:?}");
    assert_eq!(lost, Err(CommandError::BridgeLost));

    let stats = manager.stats();
    println!(
        "stats: {} succeeded, {} pending",
        stats.succeeded,
        manager.pending()
    );
    manager.shutdown();
    drop(manager);
    phone_task.abort();
    reader.abort();
    Ok(())
}

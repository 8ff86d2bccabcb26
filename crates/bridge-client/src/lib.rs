//! The bridge and user side of the bridge protocol, in Rust.
//!
//! * [`BridgeClient`]: a phone (or gateway) connection that holds devices, answers
//!   `ble_write` frames through your [`BleHandler`], reports BLE links, and reconnects with
//!   exponential backoff and jitter — over a WebSocket, or through an MQTT 5 broker
//!   ([`BridgeConfig::over_mqtt`]).
//! * [`UserClient`]: an end user's connection that subscribes to devices, sends commands and
//!   awaits their results, and streams device status and events.
//! * [`lock`]: a toy smart lock and its byte protocol, used by the `bridge-sim` phone
//!   simulator, the demo and the load benches.
//!
//! Both clients speak only through `bridge-protocol` types, and fail with [`ClientError`].
//!
//! # What a bridge must do, step by step
//!
//! This crate is also the reference for people writing the phone side in Swift or Kotlin.
//! A bridge that follows these steps interoperates with the server:
//!
//! 1. **Connect** to `GET /ws` with a `bridge` token (`Authorization: Bearer <jwt>`, or
//!    `?token=<jwt>`) or, in development mode, `?userId=U&deviceId=D1&deviceId=D2`. List
//!    every device you are near as a `deviceId`; with a token, each must be in the token's
//!    `devices` claim or the upgrade is refused with 403.
//! 2. **Report links**: send `{"type":"ble_status","deviceId":"D1","connected":true,"rssi":-61}`
//!    whenever the BLE link to a device changes. The server routes commands to the holder with
//!    a live link and the best signal. A `ble_status` for a device you did not name at connect
//!    claims it (or is answered `forbidden`).
//! 3. **Answer writes**: for each `ble_write`, write `payload` (hex) to `writeUuid` of
//!    `serviceUuid`, wait for the notification on `listenUuid`, and answer on the **same
//!    connection** with `ble_response` carrying the **same `requestId`, byte for byte**, the
//!    same `deviceId`, and either `payload` (the reply, hex) or `error` (a short code such as
//!    `gatt_write_failed`) — never both. Answer within `timeoutMs`; a late answer is refused
//!    with `unknown_request`. Handle several writes concurrently; serialize per device if
//!    your BLE stack needs it.
//!
//!    **Report how far you got** (protocol 1.1, optional but what makes a timeout
//!    diagnosable): while handling a `ble_write`, send
//!    `{"type":"ble_progress","requestId":<same>,"deviceId":<same>,"stage":S}` on the same
//!    connection as each stage is reached, in order — `received` as soon as the write is
//!    handed to your BLE stack, `connected` when the link to the device came up for it
//!    (skip it when the link already was up), `written` when the GATT write completed and
//!    you wait for the notification. Skipping stages is fine; a repeated or earlier stage is
//!    ignored; none of them answers the write or extends `timeoutMs`. A timeout then tells
//!    the backend `"stage":"written"` (the lock took the write and never answered) rather
//!    than just `timeout`. In Rust, implement [`BleHandler::write_with_progress`] and call
//!    [`Progress::report`]; in Swift or Kotlin, the same three sends, e.g. in Swift
//!    `send(progress(id, device, "received"))` before `peripheral.connect`,
//!    `"connected"` in `didConnect`, `"written"` in `didWriteValueFor`; in Kotlin the same
//!    in `connectGatt`, `onConnectionStateChange(STATE_CONNECTED)` and
//!    `onCharacteristicWrite(GATT_SUCCESS)`.
//! 4. **Release** a device you are no longer near: `{"type":"release","deviceId":"D1"}`.
//!    Commands pending through you for it fail at once on the server.
//! 5. **Stay alive**: answer WebSocket pings (every WebSocket library does); the server closes
//!    a connection silent for 45 s. You may send `{"type":"ping"}` and get `{"type":"pong"}`.
//! 6. **Reconnect** when the connection drops, with exponential backoff and jitter, naming your
//!    devices again and re-sending their last `ble_status`. Writes in flight when the
//!    connection dropped have already failed on the server (`bridge_lost`); drop their
//!    answers.
//! 7. **Read error frames**: `{"type":"error","code":...,"requestId":...}` never closes the
//!    connection by itself; log it and go on. Close codes: 1008 (rate limit or expired token:
//!    reconnect with a fresh token), 1009 (frame too large), 1001 (server shutting down:
//!    reconnect with backoff).
//!
//! ## Over MQTT instead (PROTOCOL.md 6)
//!
//! The same frames, over an MQTT 5 broker: pick a bridge id, connect with a persistent
//! session and the will `{"type":"bye"}` on `P/b/{id}/up`, subscribe to `P/b/{id}/down`
//! (QoS 1), and publish `{"type":"hello","token":...,"deviceIds":[...]}` (step 1's
//! equivalent); after `welcome`, steps 2 to 4 and 7 are unchanged. Send `{"type":"ping"}` at
//! least every 20 s. When the server answers `unauthorized` (it restarted, or ended the
//! session) or the MQTT connection was lost (the will ended the session), say `hello` again
//! and re-send the links. In Rust: [`BridgeConfig::over_mqtt`], with the same
//! [`BleHandler`].
//!
//! # Example
//!
//! A phone simulator that holds one smart lock: the handler is the [`lock::SimulatedLocks`]
//! the `bridge-sim` binary uses. The lock logic runs here without a server:
//!
//! ```
//! use bridge_client::lock::{LockState, STATUS, UNLOCK};
//!
//! let mut lock = LockState::default();
//! assert_eq!(lock.apply(&[UNLOCK]), Ok(vec![0x82, 0x00]));
//! assert_eq!(lock.apply(&[STATUS]), Ok(vec![0x83, 0x00, 100]));
//! ```
//!
//! Connected to a server, the same handler answers real `ble_write` frames:
//!
//! ```no_run
//! use std::sync::Arc;
//! use bridge_client::{BridgeClient, BridgeConfig, Credentials};
//! use bridge_client::lock::{LockBehaviour, SimulatedLocks};
//! use bridge_protocol::DeviceId;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let lock = DeviceId::new("lock-1")?;
//! let handler = Arc::new(SimulatedLocks::new([lock.clone()], LockBehaviour::default()));
//! let client = BridgeClient::start(
//!     BridgeConfig::new(
//!         "ws://127.0.0.1:8080/ws",
//!         Credentials::Development { user_id: "phone-1".into() },
//!         vec![lock.clone()],
//!     ),
//!     handler,
//! );
//! client.wait_connected(1).await?;
//! client.report_status(lock, true, Some(-60))?;
//! # Ok(()) }
//! ```

mod backoff;
mod bridge;
mod connect;
mod error;
pub mod lock;
mod mqtt;
mod user;
mod ws;

pub use backoff::Backoff;
pub use bridge::{BleHandler, BridgeClient, BridgeConfig, ConnectionState, Progress};
pub use connect::Credentials;
pub use error::ClientError;
pub use mqtt::MqttSettings;
pub use user::{UserClient, UserConfig};

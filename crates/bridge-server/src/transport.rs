//! The session manager's [`Transport`] over the hub.

use std::sync::Arc;

use async_trait::async_trait;
use bridge_hub::{Frame, Hub, InFlight};
use bridge_protocol::{BleWrite, ConnectionId, ServerToBridge};
use bridge_session::{Transport, TransportError};

/// Sends `ble_write` frames through the device's best holder. The hub's [`InFlight`] ticket
/// is the session's in-flight ticket: the pending command owns it, and the hub's routing
/// count on the connection ends when the command does.
pub(crate) struct HubTransport {
    hub: Arc<dyn Hub>,
}

impl HubTransport {
    pub(crate) fn new(hub: Arc<dyn Hub>) -> Self {
        Self { hub }
    }
}

#[async_trait]
impl Transport for HubTransport {
    type InFlight = InFlight;

    async fn send_ble_write(
        &self,
        write: BleWrite,
    ) -> Result<(ConnectionId, InFlight), TransportError> {
        let request_id = write.request_id;
        let device_id = write.device_id.clone();
        let frame = Frame::from(ServerToBridge::BleWrite(write));
        let in_flight = self
            .hub
            .send_to_device(&device_id, &frame)
            .await
            .map_err(|_| TransportError::Offline)?;
        let connection = in_flight.connection();
        tracing::debug!(%request_id, device = %device_id, %connection, "ble_write sent");
        Ok((connection, in_flight))
    }
}

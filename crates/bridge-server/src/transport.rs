//! The session manager's [`Transport`] over the hub.

use std::sync::Arc;

use async_trait::async_trait;
use bridge_hub::{Frame, Hub, HubError, InFlight};
use bridge_protocol::{BleWrite, ConnectionId, DeviceId, RequestId};
use bridge_session::{SendNow, SendResult, Transport, TransportError};

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

    /// The hub's answer to a send as the session's.
    fn sent(
        result: Result<InFlight, HubError>,
        request_id: RequestId,
        device_id: &DeviceId,
    ) -> SendResult<InFlight> {
        let in_flight = result.map_err(|_| TransportError::Offline)?;
        let connection = in_flight.connection();
        tracing::debug!(%request_id, device = %device_id, %connection, "ble_write sent");
        Ok((connection, in_flight))
    }
}

#[async_trait]
impl Transport for HubTransport {
    type InFlight = InFlight;

    async fn send_ble_write(
        &self,
        write: BleWrite,
    ) -> Result<(ConnectionId, InFlight), TransportError> {
        self.send_ble_write_now(write).finish().await
    }

    /// The hub's own send without a boxed future when it ends at once (a [`LocalHub`]'s
    /// does), its boxed `send_to_device` otherwise.
    ///
    /// [`LocalHub`]: bridge_hub::LocalHub
    fn send_ble_write_now(&self, write: BleWrite) -> SendNow<'_, InFlight> {
        let frame = Frame::ble_write(&write);
        let BleWrite {
            request_id,
            device_id,
            ..
        } = write;
        match self.hub.send_frame_to_device_now(&device_id, frame) {
            Ok(result) => SendNow::Sent(Self::sent(result, request_id, &device_id)),
            Err(frame) => SendNow::Later(Box::pin(async move {
                let result = self.hub.send_to_device(&device_id, &frame).await;
                Self::sent(result, request_id, &device_id)
            })),
        }
    }
}

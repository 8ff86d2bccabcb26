//! The session manager's [`Transport`] over the hub.

use std::cell::Cell;
use std::sync::Arc;

use async_trait::async_trait;
use bridge_hub::{Frame, Hub};
use bridge_protocol::{BleWrite, ConnectionId, RequestId, ServerToBridge};
use bridge_session::{Transport, TransportError};

tokio::task_local! {
    /// The `requestId` of the last `ble_write` sent from the current task, for the
    /// `requestId` of a `succeeded` answer (the session manager returns only the payload).
    static LAST_REQUEST_ID: Cell<Option<RequestId>>;
}

/// Runs `future` and returns its output with the `requestId` of the last `ble_write` it sent.
pub(crate) async fn capture_request_id<F: Future>(future: F) -> (F::Output, Option<RequestId>) {
    LAST_REQUEST_ID
        .scope(Cell::new(None), async move {
            let output = future.await;
            (output, LAST_REQUEST_ID.with(Cell::get))
        })
        .await
}

/// Sends `ble_write` frames through the device's best holder.
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
    async fn send_ble_write(&self, write: BleWrite) -> Result<ConnectionId, TransportError> {
        let request_id = write.request_id;
        let device_id = write.device_id.clone();
        let frame = Frame::from(ServerToBridge::BleWrite(write));
        let connection = self
            .hub
            .send_to_device(&device_id, &frame)
            .await
            .map_err(|_| TransportError::Offline)?;
        // Outside a capture scope there is nobody to tell.
        let _ = LAST_REQUEST_ID.try_with(|cell| cell.set(Some(request_id)));
        tracing::debug!(%request_id, device = %device_id, %connection, "ble_write sent");
        Ok(connection)
    }

    fn command_finished(&self, connection: ConnectionId) {
        self.hub.command_finished(connection);
    }
}

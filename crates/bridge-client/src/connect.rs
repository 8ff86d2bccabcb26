//! Opening a WebSocket to the server with the right credentials.

use bridge_protocol::DeviceId;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// How a client proves who it is (PROTOCOL.md 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A JWT, sent as `Authorization: Bearer <token>`.
    Token(String),
    /// Development mode: `?userId=...` (and `deviceId=...` for a bridge).
    Development {
        /// The user id.
        user_id: String,
    },
}

/// The socket type clients use.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How much a client's socket reads at most per system call (4 KiB: a batch of 16
/// `ble_write` frames). tungstenite zero-fills this much of its read buffer at every read
/// attempt, including the ones that find nothing to read, so its default of 128 KiB cost the
/// phone ~65,000 instructions per attempt, more than everything else it does per command.
/// A frame larger than this is still read whole: the buffer grows to the frame's length.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out
}

/// The URL with the identity query parameters of development mode added.
pub(crate) fn url_with_identity(
    url: &str,
    credentials: &Credentials,
    devices: &[DeviceId],
) -> String {
    let mut params = Vec::new();
    if let Credentials::Development { user_id } = credentials {
        params.push(format!("userId={}", encode(user_id)));
    }
    for device in devices {
        params.push(format!("deviceId={}", encode(device.as_str())));
    }
    if params.is_empty() {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{}", params.join("&"))
}

/// Opens the WebSocket.
pub(crate) async fn open(
    url: &str,
    credentials: &Credentials,
    devices: &[DeviceId],
) -> Result<Socket, ClientError> {
    let full = url_with_identity(url, credentials, devices);
    let mut request = full
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    if let Credentials::Token(token) = credentials {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Connect(format!("token is not a valid header value: {e}")))?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default()
        .max_frame_size(Some(1 << 20))
        .read_buffer_size(READ_BUFFER_BYTES);
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_identity_goes_into_the_query() {
        let devices = [
            DeviceId::new("lock 1").unwrap(),
            DeviceId::new("é").unwrap(),
        ];
        let url = url_with_identity(
            "ws://127.0.0.1:8080/ws",
            &Credentials::Development {
                user_id: "u&1".into(),
            },
            &devices,
        );
        assert_eq!(
            url,
            "ws://127.0.0.1:8080/ws?userId=u%261&deviceId=lock%201&deviceId=%C3%A9"
        );
    }

    #[test]
    fn tokens_stay_out_of_the_url() {
        let url = url_with_identity("ws://h/ws", &Credentials::Token("t".into()), &[]);
        assert_eq!(url, "ws://h/ws");
    }
}

//! Opening a WebSocket to the server with the right credentials.

use bridge_protocol::DeviceId;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;
use crate::ws::WsConnection;

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

/// The request of the handshake: the URL with the identity query parameters, and the token
/// as `Authorization` header.
fn request(
    url: &str,
    credentials: &Credentials,
    devices: &[DeviceId],
) -> Result<Request, ClientError> {
    let full = url_with_identity(url, credentials, devices);
    let mut request = full
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    if let Credentials::Token(token) = credentials {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Connect(format!("token is not a valid header value: {e}")))?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Opens a bridge's WebSocket: tungstenite's handshake over a TCP connection opened as
/// `tokio_tungstenite::connect_async` opens it (same checks, same errors), then the frames
/// through [`WsConnection`], which reads and writes them with less work per frame.
pub(crate) async fn open_bridge(
    url: &str,
    credentials: &Credentials,
    devices: &[DeviceId],
) -> Result<WsConnection<TcpStream>, ClientError> {
    let request = request(url, credentials, devices)?;
    let failed = |e: WsError| ClientError::Connect(e.to_string());
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or(WsError::Url(UrlError::NoHostName))
        .map_err(failed)?;
    let port = uri
        .port_u16()
        .or_else(|| match uri.scheme_str() {
            Some("wss") => Some(443),
            Some("ws") => Some(80),
            _ => None,
        })
        .ok_or(WsError::Url(UrlError::UnsupportedUrlScheme))
        .map_err(failed)?;
    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| failed(WsError::Io(e)))?;
    tcp.set_nodelay(true).map_err(|e| failed(WsError::Io(e)))?;
    // This crate has no TLS: tokio-tungstenite refuses `wss` at this point, and so does this.
    if uri.scheme_str() != Some("ws") {
        return Err(failed(WsError::Url(match uri.scheme_str() {
            Some("wss") => UrlError::TlsFeatureNotEnabled,
            _ => UrlError::UnsupportedUrlScheme,
        })));
    }
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(request, Recording::new(tcp), None)
            .await
            .map_err(failed)?;
    let Recording { io, seen } = socket.into_inner();
    // What the server sent behind the handshake's answer (which ends at the first empty
    // line) is the start of its first frames.
    let ahead = seen
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |end| &seen[end + 4..]);
    Ok(WsConnection::new(io, ahead))
}

/// A stream that keeps a copy of every byte read through it: during the handshake, so that
/// bytes tungstenite read beyond the handshake's answer are not lost with its buffer.
struct Recording<S> {
    io: S,
    seen: Vec<u8>,
}

impl<S> Recording<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            seen: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.seen.extend_from_slice(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Opens the WebSocket.
pub(crate) async fn open(
    url: &str,
    credentials: &Credentials,
    devices: &[DeviceId],
) -> Result<Socket, ClientError> {
    let request = request(url, credentials, devices)?;
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

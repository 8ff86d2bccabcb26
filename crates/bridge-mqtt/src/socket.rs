//! A bridge session's virtual socket: what [`LocalHub::serve`](bridge_hub::LocalHub::serve)
//! reads and writes for an MQTT bridge, so that every WebSocket rule applies unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::mpsc;
use futures_util::{Sink, Stream};
use tungstenite::{Error as WsError, Message};

/// The hub's side of one MQTT bridge session.
///
/// * Reading: the text frames the bridge published on its `up` topic, pushed by the front in
///   the order the broker delivered them. The stream ends (a client close, to the hub) when
///   the front lets go of its sender: `bye`, the will message, or a `hello` that replaced
///   the session.
/// * Writing: text frames go to the session's writer, which publishes them on `down` in
///   order. The hub's keepalive pings are dropped: over MQTT the broker keeps the network
///   connection alive, and the session's liveness is the bridge's own traffic (any frame
///   within the pong timeout, PROTOCOL.md 6), which the hub's keepalive measures as it
///   measures a WebSocket's. A close frame ends the reading side at once (nobody answers
///   it over MQTT) and is handed to the writer, which tells the bridge its session ended.
pub(crate) struct SessionSocket {
    incoming: mpsc::Receiver<Message>,
    outgoing: mpsc::Sender<Message>,
    closing: bool,
}

impl SessionSocket {
    pub(crate) fn new(incoming: mpsc::Receiver<Message>, outgoing: mpsc::Sender<Message>) -> Self {
        Self {
            incoming,
            outgoing,
            closing: false,
        }
    }
}

impl Stream for SessionSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closing {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.incoming)
            .poll_next(cx)
            .map(|message| message.map(Ok))
    }
}

fn gone(_: mpsc::SendError) -> WsError {
    WsError::ConnectionClosed
}

impl Sink<Message> for SessionSocket {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing.poll_ready(cx).map_err(gone)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        match message {
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            Message::Close(_) => {
                self.closing = true;
                self.outgoing.start_send(message).map_err(gone)
            }
            Message::Text(_) | Message::Binary(_) => {
                self.outgoing.start_send(message).map_err(gone)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        // The writer publishes what it is handed; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.closing = true;
        self.outgoing.close_channel();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::{SinkExt, StreamExt};

    use super::*;

    #[tokio::test]
    async fn pings_are_dropped_and_text_goes_to_the_writer_in_order() {
        let (_in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let mut socket = SessionSocket::new(in_rx, out_tx);
        socket.send(Message::text("a")).await.unwrap();
        socket.send(Message::Ping(Vec::new().into())).await.unwrap();
        socket.send(Message::text("b")).await.unwrap();
        assert_eq!(out_rx.next().await, Some(Message::text("a")));
        assert_eq!(out_rx.next().await, Some(Message::text("b")));
    }

    #[tokio::test]
    async fn a_close_ends_the_reading_side_at_once() {
        let (mut in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let mut socket = SessionSocket::new(in_rx, out_tx);
        in_tx.try_send(Message::text("unread")).unwrap();
        socket.send(Message::Close(None)).await.unwrap();
        assert!(socket.next().await.is_none());
        assert_eq!(out_rx.next().await, Some(Message::Close(None)));
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_front_lets_go() {
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, _out_rx) = mpsc::channel(4);
        let mut socket = SessionSocket::new(in_rx, out_tx);
        drop(in_tx);
        assert!(socket.next().await.is_none());
    }
}

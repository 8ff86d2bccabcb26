//! The `connection` span a served connection runs in: what a `tracing` subscriber that
//! wants it sees.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bridge_hub::{CloseReason, ConnectionInfo, DeviceAccess, LocalHub, UserId};
use bridge_protocol::DeviceId;
use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A subscriber that wants everything and records, for each event, its message and the
/// names of the spans entered when it happened.
#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    names: Mutex<HashMap<u64, &'static str>>,
    entered: Mutex<Vec<u64>>,
    events: Mutex<Vec<(String, Vec<&'static str>)>>,
}

/// The `message` field of an event.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.names
            .lock()
            .unwrap()
            .insert(id, span.metadata().name());
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Text(String::new());
        event.record(&mut message);
        let names = self.names.lock().unwrap();
        let entered = self
            .entered
            .lock()
            .unwrap()
            .iter()
            .map(|id| names[id])
            .collect();
        self.events.lock().unwrap().push((message.0, entered));
    }
    fn enter(&self, span: &Id) {
        self.entered.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut entered = self.entered.lock().unwrap();
        if let Some(at) = entered.iter().rposition(|id| *id == span.into_u64()) {
            entered.remove(at);
        }
    }
}

/// A socket whose peer has gone at once: the stream ends, whatever is sent is taken.
struct Gone;

impl Stream for Gone {
    type Item = Result<Message, WsError>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

impl Sink<Message> for Gone {
    type Error = WsError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), WsError> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_subscriber_that_wants_the_span_sees_the_pumps_events_inside_it() {
    let recorder = Arc::new(Recorder::default());
    let _default = tracing::subscriber::set_default(Arc::clone(&recorder));
    let hub = LocalHub::builder().build();
    let info = ConnectionInfo::bridge(
        UserId::new("phone"),
        vec![DeviceId::new("lock-1").unwrap()],
        DeviceAccess::All,
    );
    assert_eq!(hub.serve(Gone, info).await, CloseReason::ClientClosed);
    let events = recorder.events.lock().unwrap();
    for message in ["connection registered", "connection ended"] {
        let (_, entered) = events
            .iter()
            .find(|(m, _)| m == message)
            .unwrap_or_else(|| panic!("no `{message}` in {events:?}"));
        assert_eq!(entered, &["connection"], "{message}");
    }
}

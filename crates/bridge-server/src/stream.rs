//! The live stream `GET /v1/stream` (PROTOCOL.md 4.5, version 1.1): Server-Sent Events of
//! `device_status`, application events and `command_result` for the `service` role.
//!
//! Publishing never waits. Each reader has its own bounded buffer
//! ([`ServerConfig::stream_buffer`](crate::ServerConfig)); an event is serialized once and
//! offered to every reader whose `deviceId` filter takes it with a non-blocking `try_send`.
//! A reader whose buffer is full is dropped from the list at once: it reads what its buffer
//! still holds, then `event: overflow`, and its response ends. So a reader that does not
//! read costs the publishers one failed `try_send`, once, and the others lose nothing. With
//! no reader, publishing is one uncontended lock and nothing is serialized.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use bridge_protocol::{DeviceId, StreamEvent};
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// One event, serialized once for every reader.
#[derive(Debug)]
struct Item {
    name: String,
    data: String,
}

impl Item {
    fn event(&self) -> Event {
        Event::default().event(&self.name).data(&self.data)
    }
}

struct Reader {
    id: u64,
    /// `None`: every device.
    devices: Option<Vec<DeviceId>>,
    sender: mpsc::Sender<Arc<Item>>,
    overflowed: Arc<AtomicBool>,
}

impl Reader {
    fn wants(&self, device: &DeviceId) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|devices| devices.contains(device))
    }
}

/// The readers of the live stream of one server, and the publishing side.
pub(crate) struct LiveStream {
    readers: Mutex<Vec<Reader>>,
    /// Set by [`close`](Self::close): new readers get an empty stream.
    closed: AtomicBool,
    next_id: AtomicU64,
    buffer: usize,
    keep_alive: Duration,
}

impl std::fmt::Debug for LiveStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStream")
            .field("readers", &self.readers.lock().len())
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl LiveStream {
    /// A stream whose readers each buffer at most `buffer` events, sent a comment line
    /// every `keep_alive`.
    pub(crate) fn new(buffer: usize, keep_alive: Duration) -> Self {
        Self {
            readers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            buffer: buffer.max(1),
            keep_alive,
        }
    }

    /// Offers the event `event` makes, about `device`, to every reader that takes it,
    /// without waiting; the event is made (and serialized) only if some reader takes it.
    pub(crate) fn publish_with(&self, device: &DeviceId, event: impl FnOnce() -> StreamEvent) {
        let mut readers = self.readers.lock();
        if readers.is_empty() {
            return;
        }
        let mut event = Some(event);
        let mut item = None;
        readers.retain(|reader| {
            if !reader.wants(device) {
                return true;
            }
            let item = item.get_or_insert_with(|| {
                let event = event.take().map_or(StreamEvent::Overflow, |make| make());
                Arc::new(Item {
                    name: event.event_name().to_owned(),
                    data: event.to_json(),
                })
            });
            match reader.sender.try_send(Arc::clone(item)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(reader = reader.id, "stream reader fell behind: overflow");
                    reader.overflowed.store(true, Ordering::SeqCst);
                    // Dropping the sender ends the reader's stream after what it holds.
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Ends every reader's stream after what it holds (the server is shutting down), and
    /// every later one at once.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.readers.lock().clear();
    }

    /// Readers connected now.
    #[cfg(test)]
    pub(crate) fn readers(&self) -> usize {
        self.readers.lock().len()
    }

    /// A new reader of the devices `devices` (`None`: every device), as the SSE response.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        devices: Option<Vec<DeviceId>>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let (sender, receiver) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        {
            let mut readers = self.readers.lock();
            // Checked under the lock `close` clears the list with: no reader slips in after.
            if !self.closed.load(Ordering::SeqCst) {
                readers.push(Reader {
                    id,
                    devices,
                    sender,
                    overflowed: Arc::clone(&overflowed),
                });
            }
        }
        let state = ReaderState {
            receiver,
            overflowed,
            done: false,
            _registration: Registration {
                stream: Arc::clone(self),
                id,
            },
        };
        let events = futures_util::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            match state.receiver.recv().await {
                Some(item) => Some((Ok(item.event()), state)),
                None if state.overflowed.load(Ordering::SeqCst) => {
                    state.done = true;
                    let overflow = StreamEvent::Overflow;
                    let event = Event::default()
                        .event(overflow.event_name())
                        .data(overflow.to_json());
                    Some((Ok(event), state))
                }
                None => None,
            }
        });
        Sse::new(events).keep_alive(KeepAlive::new().interval(self.keep_alive))
    }
}

struct ReaderState {
    receiver: mpsc::Receiver<Arc<Item>>,
    overflowed: Arc<AtomicBool>,
    done: bool,
    _registration: Registration,
}

/// Takes its reader off the list when the response is dropped (the client went away).
struct Registration {
    stream: Arc<LiveStream>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stream
            .readers
            .lock()
            .retain(|reader| reader.id != self.id);
    }
}

/// The `deviceId` values of a query string (`?deviceId=a&deviceId=b`), percent-decoded;
/// `Ok(None)` when there is none (every device). A value that is not a valid device id is
/// `Err` with a message.
pub(crate) fn device_filter(query: Option<&str>) -> Result<Option<Vec<DeviceId>>, String> {
    let mut devices = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key).as_deref() != Some("deviceId") {
            continue;
        }
        let value = percent_decode(value).ok_or("`deviceId` is not valid UTF-8")?;
        let device = DeviceId::new(&value).map_err(|error| format!("`deviceId`: {error}"))?;
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    Ok((!devices.is_empty()).then_some(devices))
}

/// `application/x-www-form-urlencoded` decoding of one key or value: `+` is a space, `%XX`
/// a byte. `None` when the bytes are not UTF-8 or an escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_leaves_the_list_when_its_response_is_dropped() {
        let stream = Arc::new(LiveStream::new(4, Duration::from_secs(15)));
        let first = stream.subscribe(None);
        let second = stream.subscribe(Some(vec![DeviceId::new("lock-1").unwrap()]));
        assert_eq!(stream.readers(), 2);
        drop(first);
        assert_eq!(stream.readers(), 1);
        drop(second);
        assert_eq!(stream.readers(), 0);

        let open = stream.subscribe(None);
        stream.close();
        assert_eq!(stream.readers(), 0, "closing lets every reader go");
        let late = stream.subscribe(None);
        assert_eq!(stream.readers(), 0, "and takes no new one");
        drop((open, late));
    }

    #[test]
    fn the_device_filter_reads_repeated_and_encoded_values() {
        assert_eq!(device_filter(None), Ok(None));
        assert_eq!(device_filter(Some("")), Ok(None));
        assert_eq!(device_filter(Some("other=1")), Ok(None));
        let devices = device_filter(Some(
            "deviceId=lock-1&x=y&deviceId=lock%202&deviceId=lock-1",
        ))
        .unwrap()
        .unwrap();
        let names: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
        assert_eq!(names, ["lock-1", "lock 2"]);
        assert!(device_filter(Some("deviceId=")).is_err());
        assert!(device_filter(Some("deviceId=%zz")).is_err());
    }
}

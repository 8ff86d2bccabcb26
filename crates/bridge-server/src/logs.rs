//! The binary's log set-up, shared with the benchmarks so that they pay what production pays.
//!
//! Log lines are not written to stderr one system call each: every command logs a line
//! (`command ended`), and a `write(2)` per line more than tripled the server's system calls
//! per command. They are gathered in one buffer, in the order they were logged, and written
//! when a runtime worker runs out of work ([`flush_logs`] from the runtime's
//! `on_thread_park`, see [`runtime_builder`]), when [`FLUSH_BYTES`] are waiting, and at the
//! latest [`FLUSH_AFTER`] after they were logged (a flusher thread, asleep while nothing is
//! logged).

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};

use crate::LogFormat;

/// Lines waiting beyond this many bytes are written at once, by the thread that logs.
pub const FLUSH_BYTES: usize = 8 * 1024;

/// The longest a logged line waits in the buffer (the flusher thread's period).
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// Periods with nothing logged after which the flusher thread sleeps until the next line.
const IDLE_ROUNDS: u32 = 20;

/// The lines waiting to be written, oldest first.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// The flusher thread, once started.
static FLUSHER: OnceLock<Thread> = OnceLock::new();
/// Whether the flusher thread sleeps until it is woken (nothing was logged for a while).
static FLUSHER_ASLEEP: AtomicBool = AtomicBool::new(false);

/// Installs the `bridge-server` binary's global `tracing` subscriber: `fmt` in `format`,
/// filtered by `RUST_LOG` (`info` when it is unset or unreadable), with colours only on a
/// terminal, to stderr through the buffer described in this module's documentation.
///
/// # Errors
///
/// When a global subscriber is installed already.
pub fn init_logs(format: LogFormat) -> Result<(), TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BufferedStderr)
        .with_timer(SecondCachedTime)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match format {
        LogFormat::Json => builder.json().finish().try_init(),
        LogFormat::Human => builder.finish().try_init(),
    };
    if installed.is_ok() {
        start_flusher();
        let previous = std::panic::take_hook();
        // The lines logged before a panic come before its message.
        std::panic::set_hook(Box::new(move |info| {
            // Not if this thread panicked holding the buffer.
            if let Ok(mut pending) = PENDING.try_lock() {
                write_out(&mut pending);
            }
            previous(info);
        }));
    }
    installed
}

/// Tokio's multi-thread runtime as the `bridge-server` binary runs it: every worker that
/// runs out of work, or stops, first writes the log lines waiting ([`flush_logs`]).
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .on_thread_park(flush_logs)
        .on_thread_stop(flush_logs);
    builder
}

/// Writes the log lines waiting in the buffer to stderr now (one system call). Cheap when
/// nothing waits. The binary calls it before it exits.
pub fn flush_logs() {
    let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    if !pending.is_empty() {
        write_out(&mut pending);
    }
}

/// Writes `pending` to stderr and empties it. A failed write drops the lines: logging has
/// nowhere else to report it, as with an unbuffered stderr.
fn write_out(pending: &mut Vec<u8>) {
    let _ = io::stderr().lock().write_all(pending);
    pending.clear();
    if pending.capacity() > 4 * FLUSH_BYTES {
        // A burst of long lines: do not keep its memory.
        pending.shrink_to(FLUSH_BYTES);
    }
}

fn start_flusher() {
    let spawned = std::thread::Builder::new()
        .name("log-flusher".into())
        .spawn(|| {
            let mut idle = 0;
            loop {
                std::thread::sleep(FLUSH_AFTER);
                let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
                if pending.is_empty() {
                    idle += 1;
                    if idle >= IDLE_ROUNDS {
                        idle = 0;
                        // Set under the lock: a line logged after this sees it and wakes
                        // the thread.
                        FLUSHER_ASLEEP.store(true, Ordering::SeqCst);
                        drop(pending);
                        // Woken by the next line (a spurious wake-up only costs a round).
                        std::thread::park();
                    }
                } else {
                    idle = 0;
                    write_out(&mut pending);
                }
            }
        });
    match spawned {
        Ok(handle) => {
            let _ = FLUSHER.set(handle.thread().clone());
        }
        // Without the thread every line is written at once (see `BufferedStderr`), so that
        // none waits indefinitely.
        Err(error) => {
            let _ = writeln!(
                io::stderr(),
                "bridge-server: cannot start the log flusher, logging unbuffered: {error}"
            );
        }
    }
}

/// `fmt`'s own timestamp ([`SystemTime`]: RFC 3339 in UTC with microseconds, such as
/// `2026-11-30T19:40:08.061536Z`), with its calendar part formatted once per second and
/// thread rather than for every line: the first line of a second is [`SystemTime`]'s text as
/// it is, and the lines after it in the same second repeat its text up to the `.` followed
/// by their own microseconds, written as [`SystemTime`] writes them.
#[derive(Debug, Clone, Copy)]
struct SecondCachedTime;

thread_local! {
    /// The second (since the Unix epoch) whose text is cached, and that text up to and
    /// including its `.`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for SecondCachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return SystemTime.format_time(w);
        };
        let second = since.as_secs();
        let cached = SECOND.with(|cache| {
            let cache = cache.borrow();
            if cache.0 == second {
                w.write_str(&cache.1)
                    .and_then(|()| write!(w, "{:06}Z", since.subsec_micros()))
                    .map(|()| true)
            } else {
                Ok(false)
            }
        })?;
        if cached {
            return Ok(());
        }
        let mut text = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut text))?;
        w.write_str(&text)?;
        // Cached only if the text shows this second's time of day (the clock may have moved
        // between the two readings).
        let prefix = text
            .strip_suffix('Z')
            .and_then(|t| t.get(..t.len().checked_sub(6)?));
        if let Some(prefix) = prefix
            && let Some(clock) = prefix.strip_suffix('.')
            && clock.get(clock.len().saturating_sub(8)..) == Some(time_of_day(second).as_str())
        {
            SECOND.with(|cache| *cache.borrow_mut() = (second, prefix.to_owned()));
        }
        Ok(())
    }
}

/// `HH:MM:SS` of the second `second` since the Unix epoch, in UTC.
fn time_of_day(second: u64) -> String {
    let in_day = second % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        in_day / 3_600,
        in_day % 3_600 / 60,
        in_day % 60
    )
}

/// The `fmt` layer's writer: each event is one `write_all` of its whole line.
#[derive(Debug, Clone, Copy)]
struct BufferedStderr;

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = BufferedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

impl Write for BufferedStderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let Some(flusher) = FLUSHER.get() else {
            // No flusher thread: nothing would bound the wait.
            io::stderr().lock().write_all(line)?;
            return Ok(line.len());
        };
        let mut pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend_from_slice(line);
        if pending.len() >= FLUSH_BYTES {
            write_out(&mut pending);
        }
        drop(pending);
        if FLUSHER_ASLEEP.load(Ordering::Relaxed) && FLUSHER_ASLEEP.swap(false, Ordering::SeqCst) {
            flusher.unpark();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(timer: impl FormatTime) -> String {
        let mut text = String::new();
        timer.format_time(&mut Writer::new(&mut text)).unwrap();
        text
    }

    #[test]
    fn the_cached_timestamp_is_fmts_own_text() {
        let mut cached_lines = 0;
        for _ in 0..200_000 {
            let before = format(SystemTime);
            let ours = format(SecondCachedTime);
            let after = format(SystemTime);
            // Same second on both sides: ours is fmt's text of that second, to the
            // microsecond, and between the two readings.
            if before[..20] == after[..20] {
                assert_eq!(ours.len(), before.len(), "{ours} / {before}");
                assert_eq!(ours[..20], before[..20], "{ours} / {before}");
                assert!(
                    before <= ours && ours <= after,
                    "{before} <= {ours} <= {after}"
                );
                cached_lines += 1;
            }
        }
        assert!(cached_lines > 0);
        let second = SECOND.with(|cache| cache.borrow().0);
        assert_ne!(second, u64::MAX, "the second's text was cached");
    }

    #[test]
    fn time_of_day_is_utcs() {
        assert_eq!(time_of_day(0), "00:00:00");
        assert_eq!(time_of_day(1_764_531_608), "19:40:08");
        assert_eq!(time_of_day(86_399), "23:59:59");
    }
}

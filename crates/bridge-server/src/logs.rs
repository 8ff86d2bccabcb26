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

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
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
        LogFormat::Human => builder
            .fmt_fields(PlainFields)
            .event_format(PlainFull::new())
            .finish()
            .try_init(),
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

/// The human format's event formatter: the text of `fmt`'s default (`Format<Full>` with
/// [`SecondCachedTime`]), byte for byte, written with plain `write_str` calls when the
/// writer has no ANSI colours — the `bridge-server` binary's case when stderr is not a
/// terminal — rather than through `fmt`'s styles, which paint every piece of a line (about a
/// dozen per `command ended` line, a third of its cost) even when they are plain. With
/// colours, and for events forwarded from the `log` crate (whose metadata `fmt` rewrites),
/// the default formatter writes the line. A test compares the two over every kind of field,
/// span nesting and level.
struct PlainFull<T = SecondCachedTime> {
    timer: T,
    inner: Format<Full, T>,
}

impl PlainFull {
    fn new() -> Self {
        Self::with_timer(SecondCachedTime)
    }
}

impl<T: FormatTime + Clone> PlainFull<T> {
    fn with_timer(timer: T) -> Self {
        Self {
            inner: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, T> FormatEvent<S, PlainFields> for PlainFull<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, PlainFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if writer.has_ansi_escapes() || meta.fields().field("log.target").is_some() {
            return self.inner.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<PlainFields>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The human format's fields: [`DefaultFields`](tracing_subscriber::fmt::format::DefaultFields)' text, with the plain fields of a writer
/// without ANSI colours written as `name=` and the value's `Debug`, and the message as its
/// text (escaped as `fmt` escapes it), without `fmt`'s styles. Everything else (errors;
/// `r#` names; `log.` fields; any field when colours are on) is written by
/// [`DefaultVisitor`] itself.
#[derive(Debug, Clone, Copy)]
struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> PlainVisitor<'a> {
        PlainVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`PlainFields`] (the state of [`DefaultVisitor`]).
struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Whether no field was written yet (the next one then needs no space before it).
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `field` is written by [`DefaultVisitor`] rather than here.
    fn is_default(&self, field: &Field) -> bool {
        let name = field.name();
        self.writer.has_ansi_escapes() || name.starts_with("r#") || name.starts_with("log.")
    }

    /// Writes the message as [`DefaultVisitor`] does: its `Debug` text, with the control
    /// characters of terminal escape sequences escaped when the writer sanitizes them.
    fn message(&mut self, value: &dyn fmt::Debug) -> fmt::Result {
        if self.writer.sanitizes_ansi_escapes() {
            fmt::Write::write_fmt(&mut Escaping(&mut self.writer), format_args!("{value:?}"))
        } else {
            write!(self.writer, "{value:?}")
        }
    }

    /// Lets [`DefaultVisitor`] record a field on this visitor's writer and state.
    fn by_default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // `DefaultVisitor` skips `log.` fields, writing nothing.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.is_default(field) {
            self.by_default(field, |v| v.record_str(field, value));
        } else if field.name() == "message" {
            // `DefaultVisitor` writes a message given as a string without its quotes.
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.is_default(field) {
            self.by_default(field, |v| v.record_debug(field, value));
            return;
        }
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if self.is_empty {
                self.is_empty = false;
            } else {
                self.writer.write_char(' ')?;
            }
            let name = field.name();
            if name == "message" {
                return self.message(value);
            }
            self.writer.write_str(name)?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        })();
    }
}

/// `fmt`'s escaping of a message's terminal control characters (ESC, BEL, BS, FF, DEL as
/// `\\x..`, the C1 controls U+0080 to U+009F as `\\u{..}`), a whole piece at a time when it
/// has none of them rather than one character at a time.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The C1 controls are `0xC2 0x80..=0x9F` in UTF-8: no 0xC2 byte, none of them.
        if !s
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                ch if ('\u{80}'..='\u{9f}').contains(&ch) => {
                    write!(self.0, "\\u{{{:x}}}", u32::from(ch))?;
                }
                ch => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
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
    use std::sync::Arc;

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

    /// A fixed timestamp, so that two formatters' lines can be compared.
    #[derive(Clone, Copy)]
    struct FixedTime;

    impl FormatTime for FixedTime {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-11-30T19:40:08.061536Z")
        }
    }

    /// An error with a source, as `fmt` writes `.sources` for it.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \x1b[1m failure")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// What `emit` logs, as `fmt`'s default human format writes it and as ours does, with
    /// or without colours.
    fn both(ansi: bool, emit: impl Fn()) -> (String, String) {
        let run = |plain: bool| {
            let out = Arc::new(Mutex::new(Vec::<u8>::new()));
            let sink = Arc::clone(&out);
            let make = move || Sink(Arc::clone(&sink));
            let builder = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("trace"))
                .with_writer(make)
                .with_timer(FixedTime)
                .with_ansi(ansi);
            if plain {
                let subscriber = builder
                    .fmt_fields(PlainFields)
                    .event_format(PlainFull::with_timer(FixedTime))
                    .finish();
                tracing::subscriber::with_default(subscriber, &emit);
            } else {
                tracing::subscriber::with_default(builder.finish(), &emit);
            }
            String::from_utf8(out.lock().unwrap().clone()).unwrap()
        };
        (run(false), run(true))
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn every_kind_of_line() {
        let device = "lock-1";
        let span = tracing::info_span!("command", device = %device, party = %"backend");
        span.in_scope(|| tracing::info!(outcome = "succeeded", "command ended"));
        let outer = tracing::info_span!("connection", id = 7_u64, peer = ?"127.0.0.1:4000");
        let later = tracing::info_span!("later", step = tracing::field::Empty, r#type = "t");
        later.record("step", 3);
        outer.in_scope(|| {
            let empty = tracing::debug_span!("empty");
            empty.in_scope(|| {
                let inner = tracing::info_span!("inner", depth = 3);
                inner.in_scope(|| tracing::info!("three deep"));
                later.in_scope(|| {
                    tracing::warn!(count = -5_i64, ok = true, ratio = 0.25_f64, "nested");
                    tracing::error!(big = u128::MAX, small = i128::MIN, "extremes");
                });
            });
        });
        tracing::trace!("only a message");
        tracing::debug!(alone = 1);
        tracing::info!(message = "");
        tracing::info!(message = "as a string \x1b[2J \u{9f}\u{7f}", after = 1);
        tracing::info!(message = ?"debug \x1b", "{}", "both");
        tracing::info!("{} {:?}", "formatted \x08", "quoted \x0c");
        tracing::info!(target: "custom::target", quoted = "a \"b\" \n c \u{9b} \x1b[31m", "t");
        tracing::info!("escapes \x1b[31m red \x07 \u{85} é");
        tracing::info!(r#type = "kind", r#loop = 2, "raw names");
        let error = Outer(std::io::Error::other("inner \x1b cause"));
        tracing::warn!(
            error = &error as &(dyn std::error::Error + 'static),
            "failed"
        );
        let lone = std::io::Error::other("lone");
        tracing::warn!(error = &lone as &(dyn std::error::Error + 'static));
        tracing::info!(
            log.target = "from_log",
            log.module_path = "m",
            "as if from `log`"
        );
        tracing::info!(log.line = 3, shown = "yes", "a log. field is skipped");
        tracing::info!(display = %std::net::Ipv4Addr::LOCALHOST, debug = ?Some("x"), "mixed");
        later.in_scope(|| tracing::info!("in a span recorded after its creation"));
    }

    #[test]
    fn the_plain_human_format_is_fmts_own_text() {
        for ansi in [false, true] {
            let (default, plain) = both(ansi, every_kind_of_line);
            assert!(default.lines().count() >= 19, "{default}");
            assert_eq!(default, plain, "ansi {ansi}");
        }
        let (default, _) = both(false, every_kind_of_line);
        assert!(
            default.contains("connection{id=7 peer=\"127.0.0.1:4000\"}:empty:inner{depth=3}: "),
            "{default}"
        );
        assert!(
            default.contains(
                "2026-11-30T19:40:08.061536Z  INFO command{device=lock-1 party=backend}: \
                 bridge_server::logs::tests: command ended outcome=\"succeeded\"\n"
            ),
            "{default}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_message_and_values_read_the_same(
            message in ".{0,40}",
            value in ".{0,40}",
            number in proptest::prelude::any::<i64>(),
            span_value in ".{0,20}",
        ) {
            let (default, plain) = both(false, || {
                let span = tracing::info_span!("command", device = %span_value, n = number);
                span.in_scope(|| tracing::info!(value = value.as_str(), number, "{message}"));
                tracing::info!(message = message.as_str(), shown = %value);
            });
            proptest::prop_assert_eq!(default, plain);
        }
    }
}

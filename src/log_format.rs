//! The text log's line format, written cheaply for the broker's own events. Every token
//! handed out logs an audit line (tens of thousands a second); through tracing's general
//! formatter that line cost about as much as finding the token. [`PlainLines`] writes the
//! very same line (`2026-11-28T12:45:00.123456Z  INFO target: message name=value ...`) for
//! the broker's events outside spans, without colours, and hands every other event to
//! tracing's default format, so the log reads as one format either way.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Full, Writer},
        time::SystemTime as TracingTime,
    },
    registry::LookupSpan,
};

/// The event format of the text log: tracing's `Full` format, with a fast path for the
/// broker's own events (target `tokenbroker...`) outside spans when colours are off.
#[derive(Debug, Default)]
pub struct PlainLines {
    full: Format<Full, TracingTime>,
}

impl<S, N> FormatEvent<S, N> for PlainLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let plain = !writer.has_ansi_escapes()
            && writer.sanitizes_ansi_escapes()
            && event.metadata().target().starts_with("tokenbroker")
            && ctx.event_scope().is_none();
        if plain {
            // The line is built aside, so that an event the fast path cannot write exactly
            // (an error field, control characters in its message) leaves nothing behind.
            let written = LINE.with(|line| {
                let Ok(mut line) = line.try_borrow_mut() else {
                    return None; // an event logged while formatting one
                };
                line.clear();
                plain_line(&mut line, event, SystemTime::now()).then(|| writer.write_str(&line))
            });
            if let Some(result) = written {
                return result;
            }
        }
        self.full.format_event(ctx, writer, event)
    }
}

thread_local! {
    /// The line being built, reused by every event of the thread.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
    /// `YYYY-MM-DDTHH:MM:SS` of the last second a line was stamped with.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes `event`'s whole line, as tracing's `Full` format without colours writes it, into
/// `line`; false if only tracing's own formatter can write it exactly.
fn plain_line(line: &mut String, event: &Event<'_>, now: SystemTime) -> bool {
    if !timestamp(line, now) {
        return false;
    }
    let meta = event.metadata();
    // `Full` pads the level to five characters, right-aligned.
    line.push_str(match *meta.level() {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    });
    line.push_str(meta.target());
    line.push_str(": ");
    let mut fields = PlainFields {
        line,
        first: true,
        exact: true,
    };
    event.record(&mut fields);
    if !fields.exact {
        return false;
    }
    line.push('\n');
    true
}

/// Writes `now` as tracing's default timer does (RFC 3339 UTC, microseconds), for any time
/// from 1970 to 9999; false outside it.
fn timestamp(line: &mut String, now: SystemTime) -> bool {
    /// 9999-12-31T23:59:59Z, the last second `humantime` writes.
    const LAST_SECOND: u64 = 253_402_300_799;
    let Ok(since_epoch) = now.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let secs = since_epoch.as_secs();
    if secs > LAST_SECOND {
        return false;
    }
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            second.1.clear();
            let _ = write!(second.1, "{}", humantime::format_rfc3339_seconds(whole));
            second.1.pop(); // the `Z`
            second.0 = secs;
        }
        line.push_str(&second.1);
    });
    line.push('.');
    push_padded(line, u64::from(since_epoch.subsec_micros()), 6);
    line.push('Z');
    true
}

/// Writes `n` in decimal, zero-padded to `width` digits.
fn push_padded(line: &mut String, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    for _ in digits.len()..width {
        line.push('0');
    }
    line.push_str(digits);
}

/// The fields of an event as tracing's `DefaultFields` writes them without colours:
/// the message first as it is, then `name=value` with values in their `Debug` form,
/// separated by spaces.
struct PlainFields<'a> {
    line: &'a mut String,
    first: bool,
    /// Still the same as tracing's formatter would write.
    exact: bool,
}

impl PlainFields<'_> {
    /// Starts the field `name`: false if it is not written at all (tracing-log metadata).
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        self.pad();
        self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.line.push('=');
        true
    }

    fn pad(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
    }

    /// The message, as its `Debug` form writes it; tracing escapes terminal control
    /// characters in it, which this leaves to tracing.
    fn message(&mut self, value: &dyn fmt::Debug) {
        self.pad();
        let start = self.line.len();
        let _ = write!(self.line, "{value:?}");
        if self.line[start..].chars().any(escaped_in_messages) {
            self.exact = false;
        }
    }
}

/// Characters tracing writes escaped in a message (terminal control sequences).
fn escaped_in_messages(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

impl tracing::field::Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.message(&format_args!("{value}"));
        }
        if !self.name(field) {
            return;
        }
        // `Debug` of a string: quoted, with quotes, backslashes and the rest escaped.
        if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "message" {
            return self.message(&value);
        }
        if self.name(field) {
            push_padded(self.line, value, 1);
        }
    }

    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        // tracing writes an error with its chain of sources: left to it.
        self.exact = false;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.message(value);
        }
        if self.name(field) {
            let _ = write!(self.line, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A log that records into shared memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failure;
    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream failed")
        }
    }
    impl std::error::Error for Failure {}

    /// Events of every kind the broker logs, and some it does not.
    fn events() {
        let fingerprint = "3f2a9c01";
        let org = "acme";
        tracing::info!(
            target: "tokenbroker::audit",
            caller = "payroll",
            rpc = "GetUserToken",
            org = %org,
            user_id = "EMP-00042",
            fingerprint = %fingerprint,
            generation = 7u64,
            streams = 3usize,
            "token handed out"
        );
        tracing::warn!(target: "tokenbroker::broker", keys = ?["server.listen"], "restart needed");
        tracing::error!(target: "tokenbroker::upstream", error = %Failure, failures = 3, "fetch failed");
        tracing::info!(
            target: "tokenbroker::audit",
            caller = "quote\" and \\ and é and \n",
            negative = -5i64,
            yes = true,
            ratio = 0.5f64,
            r#type = "raw name",
            "message with {} and \"quotes\"",
            42
        );
        tracing::debug!(target: "tokenbroker::x", "only a message");
        tracing::info!(target: "tokenbroker::x", answer = 42u64);
        tracing::info!(target: "tokenbroker::x", message = "a message field", n = 1u64);
        // Left to tracing: control characters in a message, an error value, a span, another
        // crate's event.
        tracing::info!(target: "tokenbroker::x", "bell \x07 and escape \x1b[31m");
        tracing::warn!(target: "tokenbroker::x", error = &Failure as &(dyn std::error::Error + 'static), "failed");
        tracing::info_span!("call", rpc = "Refresh").in_scope(|| {
            tracing::info!(target: "tokenbroker::audit", caller = "erp", "inside a span");
        });
        tracing::info!(target: "h2::codec", frame = 3u64, "another crate");
    }

    /// The lines `events` logs through `format`, without their timestamps, and the
    /// timestamps.
    fn logged<F>(format: F) -> (Vec<String>, Vec<String>)
    where
        F: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(log.clone())
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| {
                let (time, rest) = l.split_once(' ').unwrap();
                (rest.to_owned(), time.to_owned())
            })
            .unzip()
    }

    #[test]
    fn every_line_is_the_line_tracings_default_format_writes() {
        let (expected, their_times) = logged(Format::default());
        let (ours, our_times) = logged(PlainLines::default());
        assert_eq!(ours.len(), 11);
        assert_eq!(ours, expected);
        assert_eq!(
            ours[0],
            " INFO tokenbroker::audit: token handed out caller=\"payroll\" rpc=\"GetUserToken\" \
             org=acme user_id=\"EMP-00042\" fingerprint=3f2a9c01 generation=7 streams=3"
        );
        // Timestamps of the same shape, written moments apart.
        for (ours, theirs) in our_times.iter().zip(&their_times) {
            assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
            let ours = humantime::parse_rfc3339(ours).unwrap();
            let theirs = humantime::parse_rfc3339(theirs).unwrap();
            let apart = ours.duration_since(theirs).unwrap_or_else(|e| e.duration());
            assert!(apart < Duration::from_secs(60), "{apart:?}");
        }
    }

    #[test]
    fn the_fast_path_writes_plain_events_and_leaves_errors_and_control_characters_to_tracing() {
        let record = |event: &dyn Fn()| {
            let log = Captured::default();
            let wrote_plain = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(log)
                .event_format(Probe(Arc::clone(&wrote_plain)))
                .finish();
            tracing::subscriber::with_default(subscriber, event);
            wrote_plain.lock().unwrap().clone()
        };
        assert_eq!(
            record(&|| tracing::info!(target: "tokenbroker::audit", caller = "a", "handed out")),
            [true]
        );
        assert_eq!(
            record(&|| tracing::info!(target: "tokenbroker::x", "escape \x1b")),
            [false]
        );
        assert_eq!(
            record(&|| tracing::warn!(
                target: "tokenbroker::x",
                error = &Failure as &(dyn std::error::Error + 'static),
            )),
            [false]
        );
    }

    /// Records, per event, whether the fast path can write it.
    struct Probe(Arc<Mutex<Vec<bool>>>);

    impl<S, N> FormatEvent<S, N> for Probe
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            _ctx: &FmtContext<'_, S, N>,
            _writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let mut line = String::new();
            let plain = plain_line(&mut line, event, SystemTime::now());
            self.0.lock().unwrap().push(plain);
            Ok(())
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds_from_1970_to_9999() {
        let at = |secs: u64, micros: u32| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
        };
        for t in [
            at(0, 0),
            at(951_782_400, 1),           // 2000-02-29, a leap day
            at(1_795_869_913, 462_534),   // a time this benchmark ran
            at(4_107_542_399, 999_999),   // 2100-02-28T23:59:59, no leap year
            at(253_402_300_799, 999_999), // the last second written
        ] {
            let mut line = String::new();
            assert!(timestamp(&mut line, t));
            assert_eq!(line, humantime::format_rfc3339_micros(t).to_string());
            // Again, from the cached second.
            line.clear();
            assert!(timestamp(&mut line, t));
            assert_eq!(line, humantime::format_rfc3339_micros(t).to_string());
        }
        let mut line = String::new();
        assert!(!timestamp(&mut line, at(253_402_300_800, 0)));
        assert!(!timestamp(&mut line, UNIX_EPOCH - Duration::from_secs(1)));
    }
}

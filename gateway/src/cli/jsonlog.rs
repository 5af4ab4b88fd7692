//! JSON log lines (`[log] format = "json"`), each built in one buffer and handed to the writer
//! once.
//!
//! The same lines as tracing-subscriber's JSON format with `flatten_event` (its tests compare
//! them byte for byte): `timestamp`, `level`, the event's fields in order, `target`. Its
//! formatter serialises through an adapter that turns every piece serde_json writes — a quote,
//! a comma, a key — into a UTF-8 check and a `fmt::Write` call; the exchange line took about
//! 9 % of an unrecording gateway's CPU that way.
use std::{
    cell::RefCell,
    fmt::{self, Write as _},
};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// The event formatter for `LogFormat::Json`.
pub struct JsonLines;

thread_local! {
    /// The line being built, and the text of a field being formatted: kept per thread.
    static SCRATCH: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // A field's formatting logged (re-entered): that line gets a scratch of its own.
                return write_line(&mut (Vec::new(), String::new()), &mut writer, meta, event);
            };
            write_line(&mut scratch, &mut writer, meta, event)
        })
    }
}

fn write_line(
    (line, text): &mut (Vec<u8>, String),
    writer: &mut Writer<'_>,
    meta: &tracing::Metadata<'_>,
    event: &Event<'_>,
) -> fmt::Result {
    line.clear();
    text.clear();
    SystemTime.format_time(&mut Writer::new(text))?;
    line.extend_from_slice(b"{\"timestamp\":");
    string(line, text);
    line.extend_from_slice(b",\"level\":");
    string(line, meta.level().as_str());
    event.record(&mut Fields { line, text });
    line.extend_from_slice(b",\"target\":");
    string(line, meta.target());
    line.extend_from_slice(b"}\n");
    writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)
}

/// `s` as a JSON string, escaped as serde_json escapes.
fn string(line: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(line, s).expect("a string serialises into memory");
}

struct Fields<'a> {
    line: &'a mut Vec<u8>,
    text: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(b',');
        string(self.line, field.name());
        self.line.push(b':');
    }

    fn value(&mut self, field: &Field, value: impl serde::Serialize) {
        self.key(field);
        serde_json::to_writer(&mut *self.line, &value).expect("a value serialises into memory");
    }
}

impl Visit for Fields<'_> {
    /// Also 128-bit integers and errors (Visit's defaults), as tracing-serde has them.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text.clear();
        // As tracing-serde does: the Debug text as a string.
        let _ = write!(self.text, "{value:?}");
        self.key(field);
        string(self.line, self.text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;

        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// Every kind of field, and text that needs escaping.
    fn events() {
        let text = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 🦀 </script>";
        tracing::info!(exchange = 7u64, tgid = 42u32, neg = -3i64, big = u128::MAX, small = i128::MIN,
                       ok = true, ratio = 0.25f64, nan = f64::NAN, text, shown = %text,
                       alpn = ?Some("h2"), none = ?None::<u8>, "exchange");
        tracing::warn!(
            r#ref = "refs/heads/main",
            approval = None::<&str>,
            "policy decision"
        );
        tracing::error!("{} formatted {:?}", text, 5);
        tracing::debug!(target: "some::other", x = 1, "a debug line");
        tracing::trace!("no fields");
    }

    fn lines(ours: bool) -> String {
        let buf = Buf::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_max_level(tracing::Level::TRACE);
        if ours {
            tracing::subscriber::with_default(builder.event_format(JsonLines).finish(), events);
        } else {
            let theirs = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish();
            tracing::subscriber::with_default(theirs, events);
        }
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// The timestamp's value, cut out (the two runs differ in time only).
    fn timeless(lines: &str) -> String {
        lines
            .lines()
            .map(|l| {
                let start = l.find("\"timestamp\":\"").expect("a timestamp") + 13;
                let end = start + l[start..].find('"').unwrap();
                format!("{}{}\n", &l[..start], &l[end..])
            })
            .collect()
    }

    #[test]
    fn lines_are_tracing_subscribers_json_byte_for_byte() {
        let (ours, theirs) = (lines(true), lines(false));
        assert_eq!(ours.lines().count(), 5, "{ours}");
        assert_eq!(timeless(&ours), timeless(&theirs));
        for line in ours.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ts = v["timestamp"].as_str().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
        }
        let first: serde_json::Value = serde_json::from_str(ours.lines().next().unwrap()).unwrap();
        assert_eq!(first["shown"], first["text"]);
        assert_eq!(first["alpn"], "Some(\"h2\")");
        // As tracing-serde: 128-bit integers as their text.
        assert_eq!(first["big"], u128::MAX.to_string());
    }
}

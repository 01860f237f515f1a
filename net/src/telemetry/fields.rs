//! How a compact log line writes its fields: `name=value`, as
//! tracing-subscriber's `DefaultFields` does, except that a string field is
//! written as it is when it is one plain word, and quoted and escaped
//! otherwise. This module owns only that choice; everything else (messages,
//! numbers, errors, `Debug` values, colour) is `DefaultFields`'s own code.
//!
//! Why: each request's span formats its fields when it is made, and through
//! `DefaultFields` each field went through `write!` and the colour crate's
//! formatting even with colour off: two thirds of a span's instructions
//! (docs/perf.md, "Thirty-fourth pass"). The rule also keeps a client's
//! `x-request-id` from forging fields: `a peer=10.0.0.1` is written quoted.
//!
//! It must never write a string that could be read as more than one word or
//! field unquoted, and never drop a field.

use arrayvec::ArrayString;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// The compact format's fields (see the module's text).
#[derive(Debug, Default)]
pub struct PlainWordFields;

impl<'writer> FormatFields<'writer> for PlainWordFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        // With colour on, a person reads the line: the names keep their style.
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = PlainWordVisitor { writer, is_empty: true, result: Ok(()), pending: ArrayString::new() };
        fields.record(&mut visitor);
        visitor.result.and_then(|()| visitor.flush())
    }
}

/// Plain fields gathered before they are written: a span's fields go into its
/// string in one write, allocated once instead of grown at every field.
type Pending = ArrayString<256>;

/// Writes one line's fields.
struct PlainWordVisitor<'writer> {
    /// Where the line's fields go.
    writer: Writer<'writer>,
    /// No field written yet (the next one needs no separating space).
    is_empty: bool,
    /// The first write that failed; the fields after it are not written.
    result: fmt::Result,
    /// Plain fields not yet given to `writer`, in order.
    pending: Pending,
}

impl PlainWordVisitor<'_> {
    /// Has `DefaultFields`' visitor write one field, after the fields so far.
    fn default_visitor(&mut self, field: &Field, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.result = self.result.and_then(|()| self.flush());
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        visit(&mut visitor);
        self.result = visitor.finish();
        // It skips the `log.` fields of records bridged from the `log` crate.
        self.is_empty &= field.name().starts_with("log.");
    }

    fn write_plain(&mut self, name: &str, value: &str) -> fmt::Result {
        let space = if std::mem::take(&mut self.is_empty) { "" } else { " " };
        for part in [space, name, "=", value] {
            if self.pending.try_push_str(part).is_err() {
                self.flush()?;
                if self.pending.try_push_str(part).is_err() {
                    self.writer.write_str(part)?;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> fmt::Result {
        if !self.pending.is_empty() {
            self.writer.write_str(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// One word that reads back as itself: printable ASCII with no space, quote,
/// backslash or `=`. Anything else is quoted (and escaped) by `Debug`.
fn is_plain_word(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| PLAIN_WORD_BYTES[usize::from(b)])
}

/// The bytes of a plain word, looked up rather than compared: a request's id
/// is 36 of them, checked in every span.
static PLAIN_WORD_BYTES: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        plain[byte] = b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'=');
        byte += 1;
    }
    plain
};

impl Visit for PlainWordVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        let plain = name != "message" && !name.starts_with("r#") && !name.starts_with("log.");
        if plain && is_plain_word(value) {
            self.result = self.result.and_then(|()| self.write_plain(name, value));
        } else {
            self.default_visitor(field, |visitor| visitor.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default_visitor(field, |visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default_visitor(field, |visitor| visitor.record_debug(field, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::format::FmtSpan;

    /// The lines a compact subscriber with [`PlainWordFields`] writes while
    /// `emit` runs.
    fn lines(emit: impl FnOnce()) -> String {
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let sink = sink.clone();
            move || SinkWriter(sink.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_span_events(FmtSpan::NONE)
            .compact()
            .fmt_fields(PlainWordFields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = sink.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("log lines are UTF-8").trim().to_owned()
    }

    struct SinkWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_words_are_written_as_they_are_and_the_rest_quoted() {
        let text = lines(|| {
            let span = tracing::info_span!("ingest", request_id = "r-1", peer = "127.0.0.1:4000", path = "/a/b");
            let _entered = span.enter();
            tracing::info!(forged = "x peer=10.0.0.1", empty = "", quote = "a\"b", count = 3, "stored {} events", 2);
        });
        assert_eq!(
            text,
            "INFO ingest: stored 2 events forged=\"x peer=10.0.0.1\" empty=\"\" quote=\"a\\\"b\" count=3 \
             request_id=r-1 peer=127.0.0.1:4000 path=/a/b"
        );
    }

    #[test]
    fn fields_longer_than_what_is_gathered_are_written_whole_and_in_order() {
        let long = "x".repeat(300);
        let text = lines(|| tracing::info!(a = "1", long = long.as_str(), b = ?2, c = "3", "m"));
        assert_eq!(text, format!("INFO m a=1 long={long} b=2 c=3"));
    }

    #[test]
    fn what_is_not_a_plain_string_is_written_as_default_fields_writes_it() {
        let error = std::io::Error::other("disk full");
        let text = lines(|| {
            let error = &error as &dyn std::error::Error;
            tracing::warn!("r#kind" = "k", ok = true, code = ?Some(7), error, "refused");
        });
        assert_eq!(text, "WARN refused kind=\"k\" ok=true code=Some(7) error=disk full");
    }

    #[test]
    fn a_plain_word_has_no_space_quote_backslash_equals_or_control() {
        for word in ["abc", "127.0.0.1:80", "/api/v1/events", "6f1c-9a", "a.b_c~!"] {
            assert!(is_plain_word(word), "{word}");
        }
        for word in ["", "a b", "a\"b", "a\\b", "a=b", "a\nb", "a\tb", "é", "\u{1b}[31m"] {
            assert!(!is_plain_word(word), "{word:?}");
        }
    }
}

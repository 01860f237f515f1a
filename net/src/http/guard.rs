//! Bounds on what one HTTP request can make the server hold or write.
//!
//! A request's dead letters are capped ([`Letters`]: the first
//! [`DEAD_LETTERS_PER_REQUEST`] one by one, then one summary record), every
//! dead letter's raw bytes are cut to [`MAX_DEAD_LETTER_RAW`] so that it stays
//! deliverable to a default gRPC client, an answer lists at most
//! [`REJECTED_LISTED`] rejections, and error texts lose absolute file paths.
//! It also builds the JSON error answers. This module only shapes what the handler stores and
//! answers; it must never send anything to the bus itself.

use crate::bus::BusError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use jimbus_core::ingest::BodyError;

/// Raw bytes kept in one dead letter; the rest is cut (the reason says so).
pub const MAX_DEAD_LETTER_RAW: usize = 1 << 20;

/// Rejected events of one request dead-lettered one by one; the others are
/// summarised in one more record.
pub const DEAD_LETTERS_PER_REQUEST: usize = 100;

/// Rejections listed in an answer; past it the answer gives the count.
pub const REJECTED_LISTED: usize = 1000;

/// A dead letter's reason and raw bytes, the bytes cut to [`MAX_DEAD_LETTER_RAW`].
pub fn bounded_raw(reason: String, raw: Bytes) -> (String, Bytes) {
    if raw.len() <= MAX_DEAD_LETTER_RAW {
        return (reason, raw);
    }
    let kept = format!("{reason} (raw cut to its first {MAX_DEAD_LETTER_RAW} of {} bytes)", raw.len());
    (kept, raw.slice(..MAX_DEAD_LETTER_RAW))
}

/// Counts a request's rejected events and decides which get a dead letter.
#[derive(Default)]
pub struct Letters {
    /// Rejected events not dead-lettered one by one, with the first and last index.
    skipped: usize,
    range: Option<(usize, usize)>,
    written: usize,
}

impl Letters {
    /// True when the rejected event at `index` gets its own dead letter.
    pub fn admit(&mut self, index: usize) -> bool {
        if self.written < DEAD_LETTERS_PER_REQUEST {
            self.written += 1;
            return true;
        }
        self.skipped += 1;
        self.range = Some(self.range.map_or((index, index), |(first, _)| (first, index)));
        false
    }

    /// The reason of the summary record, when some events were not dead-lettered alone.
    pub fn summary(&self) -> Option<String> {
        let (first, last) = self.range?;
        Some(format!(
            "{} more rejected events of this request (indexes {first} to {last}) are summarised here: only the \
             first {DEAD_LETTERS_PER_REQUEST} are dead-lettered one by one; raw holds the start of the body",
            self.skipped
        ))
    }
}

/// The body of a 200 for a batch: its counts and the `rejected` list, cut to
/// [`REJECTED_LISTED`] entries (`rejected_count` then says how many there
/// were). Keys in serde_json's order, as a `json!` map would write them. The
/// usual answer, with nothing rejected, is written straight, without a
/// `Value` tree: that tree was a dozen allocations of every request's fixed cost.
pub fn accepted_body(accepted: usize, duplicates: usize, rejected: &[(usize, String)]) -> String {
    if rejected.is_empty() {
        return format!(r#"{{"accepted":{accepted},"duplicates":{duplicates},"rejected":[],"status":"ok"}}"#);
    }
    let listed: serde_json::Value = rejected
        .iter()
        .take(REJECTED_LISTED)
        .map(|(index, error)| serde_json::json!({"index": index, "error": error}))
        .collect();
    let mut body =
        serde_json::json!({"status": "ok", "accepted": accepted, "duplicates": duplicates, "rejected": listed});
    if rejected.len() > REJECTED_LISTED {
        body["rejected_count"] = rejected.len().into();
    }
    body.to_string()
}

/// An error text without absolute paths: each `/…` token is cut to its file name,
/// so an answer never tells a client where the server keeps its files.
pub fn redact_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('/') {
        let starts_token = at == 0 || matches!(rest.as_bytes()[at - 1], b' ' | b'(' | b'"' | b'\'' | b'`' | b'=');
        if !starts_token {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let end = rest[at..].find([' ', ')', '"', '\'', '`', ',', ';']).map_or(rest.len(), |e| at + e);
        let path = rest[at..end].trim_end_matches(':');
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        out.push_str(&format!("<{name}>"));
        out.push_str(&rest[at + path.len()..end]);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Which field an error message's path names (`payload.ante: ...`).
pub(crate) fn field_of(message: &str) -> Option<String> {
    let (path, _) = message.split_once(": ")?;
    Some(path.to_string())
}

pub(crate) fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn error(
    status: StatusCode,
    message: &str,
    offset: Option<usize>,
    field: Option<String>,
) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({"status": "error", "error": message});
    if let Some(offset) = offset {
        body["offset"] = offset.into();
    }
    if let Some(field) = field {
        body["field"] = field.into();
    }
    json(status, body.to_string())
}

pub(crate) fn body_error(e: &BodyError) -> Response<Full<Bytes>> {
    match e {
        BodyError::TooManyEvents(_) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None, Some("events".into()))
        }
        // However much memory is freed, these events never fit: not a 503 to retry.
        BodyError::BeyondBudget(_) => error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None, None),
        _ => error(StatusCode::BAD_REQUEST, &e.to_string(), e.offset(), e.field().map(str::to_string)),
    }
}

pub(crate) fn too_large(limit: usize) -> Response<Full<Bytes>> {
    error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {limit} bytes"), None, None)
}

pub(crate) fn unavailable(message: &str) -> Response<Full<Bytes>> {
    retry_later(StatusCode::SERVICE_UNAVAILABLE, message)
}

/// An error answer with `Retry-After: 1`: the same request may succeed then.
fn retry_later(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = error(status, message, None, None);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The answer to an append the bus refused once it was queued: 507 for a full
/// disk, 503 for the rest; both with `Retry-After`, since the same request
/// succeeds once space returns or the bus recovers.
pub(crate) fn append_refused(e: &BusError) -> Response<Full<Bytes>> {
    let status = match e {
        BusError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    retry_later(status, &redact_paths(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_their_directories() {
        assert_eq!(
            redact_paths("cannot write /var/lib/jimbus/shard-0/00000001.log: No space left on device (os error 28)"),
            "cannot write <00000001.log>: No space left on device (os error 28)"
        );
        assert_eq!(redact_paths("use POST /api/v1 and/or GET"), "use POST <v1> and/or GET");
        assert_eq!(redact_paths("no paths here"), "no paths here");
    }

    #[test]
    fn letters_past_the_cap_are_summarised() {
        let mut letters = Letters::default();
        let admitted = (0..250).filter(|&i| letters.admit(i * 2)).count();
        assert_eq!(admitted, DEAD_LETTERS_PER_REQUEST);
        let summary = letters.summary().unwrap();
        assert!(summary.starts_with("150 more rejected events") && summary.contains("indexes 200 to 498"), "{summary}");
        assert!(Letters::default().summary().is_none());
    }

    #[test]
    fn an_answer_is_what_the_json_tree_would_write() {
        let tree = serde_json::json!({"status": "ok", "accepted": 3, "duplicates": 2, "rejected": []});
        assert_eq!(accepted_body(3, 2, &[]), tree.to_string());
        let rejected = [(4, "bad \"x\"".to_string())];
        let tree = serde_json::json!({"status": "ok", "accepted": 1, "duplicates": 0,
            "rejected": [{"index": 4, "error": "bad \"x\""}]});
        assert_eq!(accepted_body(1, 0, &rejected), tree.to_string());
        let many: Vec<_> = (0..REJECTED_LISTED + 1).map(|i| (i, "e".to_string())).collect();
        let parsed: serde_json::Value = serde_json::from_str(&accepted_body(0, 0, &many)).unwrap();
        assert_eq!(parsed["rejected"].as_array().unwrap().len(), REJECTED_LISTED);
        assert_eq!(parsed["rejected_count"], REJECTED_LISTED + 1);
    }

    #[test]
    fn long_raw_bytes_are_cut() {
        let (reason, raw) = bounded_raw("bad".into(), Bytes::from(vec![b'x'; MAX_DEAD_LETTER_RAW + 5]));
        assert_eq!(raw.len(), MAX_DEAD_LETTER_RAW);
        assert!(reason.contains("of 1048581 bytes"), "{reason}");
    }
}

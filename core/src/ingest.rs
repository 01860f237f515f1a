//! Decodes one HTTP request body of the field mod's API into events.
//!
//! A body is either one event (`POST {url}`) or a batch envelope
//! (`POST {url}/batch`). An event that does not fit its fields is rejected alone,
//! with the byte range of its raw JSON so the caller can dead-letter it; a body
//! that cannot be read at all is a [`BodyError`] with a byte offset. This module
//! must never decide a session, a sequence or a status code.

use crate::adapt::{self, FieldError};
use crate::budget::Growth;
use crate::json::{JsonError, Kind, Reader};
use jimbus_proto::events as pb;
use std::ops::Range;

/// The most events one request may carry (the schema's `max_items` on
/// `PublishRequest.events`); a body with more is refused whole.
pub const MAX_EVENTS: usize = 100_000;

/// Memory an accepted event holds once decoded, besides its Structs and
/// strings: the box it is decoded into (which carries it to its shard), its
/// slot in the decoded list (which grows by doubling, so up to twice its
/// size), and its small maps and strings.
pub const HELD_PER_EVENT: usize = std::mem::size_of::<pb::Event>() + 2 * std::mem::size_of::<DecodedEvent>() + 256;

/// Memory a rejected event holds: its slot in the rejected list (up to twice
/// its size), its path and reason, and its entry in the answer's list.
pub const HELD_PER_REJECTED: usize = 2 * std::mem::size_of::<RejectedEvent>() + 192;

/// Memory per byte of an event's raw JSON (its strings, copied or unescaped).
pub const HELD_PER_RAW_BYTE: usize = 2;

/// What an event's reading may build (`Value`s, lists) before it is stopped
/// and read again with twice the room: more than any event the field mod
/// sends builds, so that only an event made to expand is read twice.
pub const FIRST_ALLOWANCE: usize = 32 * 1024;

/// The most one event's reading may build (`Value`s, lists): an event that
/// needs more is refused alone, whatever the budget. No event the field mod
/// sends comes near it; only a few made to expand (half a million empty
/// values in 2 MiB) could fit the schema's `max_size` and still need more.
pub const MAX_BUILT_PER_EVENT: usize = 64 << 20;

/// What a caller bounds while a body is decoded.
pub struct Limits<'a> {
    /// More events than this refuse the body ([`BodyError::TooManyEvents`]).
    pub max_events: usize,
    /// Asked for the total memory the body's events may hold, whenever they
    /// may need more than it granted so far (before an event is read, with
    /// room for a few more, and after); the totals asked only grow. An event
    /// is read within what was granted before it: a reading that builds more
    /// is stopped, and the event asked for with twice the room and read
    /// again. A refusal stops decoding: [`Growth::NotNow`] with
    /// [`BodyError::OverBudget`], [`Growth::BeyondLimit`] with
    /// [`BodyError::BeyondBudget`].
    pub reserve: &'a mut dyn FnMut(usize) -> Growth,
}

/// The memory one event holds: read from `raw` bytes of JSON, building
/// `built` bytes (`Value`s, `Struct`s, lists: [`Reader::built_bytes`]),
/// accepted or not.
pub fn held_bytes(raw: usize, built: usize, accepted: bool) -> usize {
    let base = if accepted { HELD_PER_EVENT } else { HELD_PER_REJECTED };
    base + raw * HELD_PER_RAW_BYTE + built
}

/// Which endpoint the body arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/v1/events`: one event object.
    Single,
    /// `POST /api/v1/events/batch`: an envelope with an `events` list.
    Batch,
}

/// The batch envelope's own fields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Envelope {
    pub batch_id: String,
    pub source: String,
    /// A newer mod names its session on the envelope; an event's own id wins.
    pub session_id: String,
    pub timestamp_ms: f64,
}

/// An event that was read, with where its JSON lies in the body.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// Position in the batch (0 for a single event).
    pub index: usize,
    /// Boxed from its decoding on, so it is never copied whole.
    pub event: Box<pb::Event>,
    pub raw: Range<usize>,
}

/// An event that was refused, with its index in the batch and its raw bytes' range.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedEvent {
    pub index: usize,
    pub error: FieldError,
    pub raw: Range<usize>,
}

/// Everything in one body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodedBody {
    pub envelope: Envelope,
    pub events: Vec<DecodedEvent>,
    pub rejected: Vec<RejectedEvent>,
}

/// A body that cannot be accepted at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty")]
    Empty,
    /// The JSON cannot be read past `offset`.
    #[error("malformed JSON: {0}")]
    Syntax(Box<JsonError>),
    /// The single event, or the envelope, has a field that does not fit.
    #[error("{0}")]
    Field(Box<FieldError>),
    /// The batch holds more than [`Limits::max_events`] events.
    #[error("events: more than {0} events in one request")]
    TooManyEvents(usize),
    /// The decoded events would hold more memory than the caller can grant.
    #[error("the decoded events need more memory than the server's budget has free")]
    OverBudget,
    /// The decoded events would hold more than the caller could ever grant.
    #[error(
        "the decoded events need more than {0} bytes, more than one request may hold of the server's memory budget"
    )]
    BeyondBudget(usize),
}

impl BodyError {
    /// The byte offset the error points at, when there is one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            BodyError::Empty | BodyError::TooManyEvents(_) | BodyError::OverBudget | BodyError::BeyondBudget(_) => None,
            BodyError::Syntax(e) => Some(e.offset),
            BodyError::Field(e) => Some(e.offset),
        }
    }

    /// The field path the error names, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            BodyError::Field(e) if !e.path.is_empty() => Some(&e.path),
            _ => None,
        }
    }
}

fn classify(e: Box<FieldError>) -> BodyError {
    if e.syntax {
        let FieldError { offset, reason, .. } = *e;
        BodyError::Syntax(JsonError::at(offset, reason, true))
    } else {
        BodyError::Field(e)
    }
}

/// Decodes a request body, with [`MAX_EVENTS`] and no memory bound.
pub fn decode_body(body: &[u8], endpoint: Endpoint) -> Result<DecodedBody, BodyError> {
    decode_body_within(body, endpoint, Limits { max_events: MAX_EVENTS, reserve: &mut |_| Growth::Held })
}

/// Decodes a request body within `limits`.
pub fn decode_body_within(body: &[u8], endpoint: Endpoint, limits: Limits<'_>) -> Result<DecodedBody, BodyError> {
    let mut reader = Reader::of_body(body);
    if body[reader.offset()..].iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let decoded = match endpoint {
        Endpoint::Single => {
            let start = skip_ws(body, reader.offset());
            let event = Reservation::new(limits.reserve).read_event(&mut reader, start)?.map_err(classify)?;
            let raw = start..reader.offset();
            DecodedBody { events: vec![DecodedEvent { index: 0, event, raw }], ..DecodedBody::default() }
        }
        Endpoint::Batch => decode_batch(&mut reader, body, limits)?,
    };
    reader.finish().map_err(BodyError::Syntax)?;
    Ok(decoded)
}

/// Skips JSON white space (as the reader does: a form feed is not white space).
fn skip_ws(body: &[u8], from: usize) -> usize {
    from + body[from..].iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).count()
}

/// Why a batch stopped being read before its end, besides its own errors.
enum Stop {
    TooMany,
    /// [`Limits::reserve`] refused: [`BodyError::OverBudget`] or [`BodyError::BeyondBudget`].
    Refused(BodyError),
}

fn decode_batch(r: &mut Reader<'_>, body: &[u8], mut limits: Limits<'_>) -> Result<DecodedBody, BodyError> {
    let mut out = DecodedBody::default();
    let mut saw_events = false;
    let mut stop = None;
    if r.peek().map_err(BodyError::Syntax)? != Kind::Object {
        return Err(BodyError::Field(FieldError::value(r.offset(), "expected a batch object".into())));
    }
    let result = r.object(|r, key| {
        let in_key = |mut e: Box<FieldError>| {
            e.path = key.to_string();
            e
        };
        match key.as_ref() {
            "events" => {
                // A repeated key: the last one wins, here as everywhere (DIALECT.md).
                out.events.clear();
                out.rejected.clear();
                saw_events = true;
                read_events(r, body, &mut out, &mut limits, &mut stop).map_err(|e| {
                    if e.path.is_empty() {
                        in_key(e)
                    } else {
                        e
                    }
                })
            }
            "batch_id" => adapt::text(r).map(|v| out.envelope.batch_id = v).map_err(in_key),
            "source" => adapt::text(r).map(|v| out.envelope.source = v).map_err(in_key),
            "session_id" => adapt::text(r).map(|v| out.envelope.session_id = v).map_err(in_key),
            "timestamp" => adapt::number(r).map(|v| out.envelope.timestamp_ms = v).map_err(in_key),
            _ => Ok(r.skip()?),
        }
    });
    match stop {
        Some(Stop::TooMany) => return Err(BodyError::TooManyEvents(limits.max_events)),
        Some(Stop::Refused(refused)) => return Err(refused),
        None => result.map_err(classify)?,
    }
    if !saw_events {
        return Err(BodyError::Field(FieldError::value(0, "required".into()).within("events")));
    }
    Ok(out)
}

fn read_events(
    r: &mut Reader<'_>,
    body: &[u8],
    out: &mut DecodedBody,
    limits: &mut Limits<'_>,
    stop: &mut Option<Stop>,
) -> adapt::Result<()> {
    if !matches!(r.peek()?, Kind::Array | Kind::Object) {
        let found = r.peek()?.name();
        return Err(FieldError::value(r.offset(), format!("expected a list, found {found}")));
    }
    let halt = |r: &Reader<'_>| {
        Box::new(FieldError { path: String::new(), reason: String::new(), offset: r.offset(), syntax: true })
    };
    let mut reservation = Reservation::new(limits.reserve);
    r.array(|r, index| {
        if index >= limits.max_events {
            *stop = Some(Stop::TooMany);
            return Err(halt(r));
        }
        let (start, depth) = (skip_ws(body, r.offset()), r.depth());
        let read = match reservation.read_event(r, start) {
            Ok(read) => read,
            Err(refused) => {
                *stop = Some(Stop::Refused(refused));
                return Err(halt(r));
            }
        };
        match read {
            Ok(event) => out.events.push(DecodedEvent { index, event, raw: start..r.offset() }),
            Err(e) if e.syntax => return Err(e),
            Err(e) => {
                r.rewind(start, depth);
                r.skip()?;
                let error = *e.within(&format!("events[{index}]"));
                out.rejected.push(RejectedEvent { index, error, raw: start..r.offset() });
            }
        }
        Ok(())
    })
}

/// The memory a body's decoded events hold, and what the caller granted for
/// them ([`Limits::reserve`]).
struct Reservation<'l> {
    /// What the events read so far hold ([`held_bytes`]).
    held: usize,
    /// The largest total the caller granted: up to it, nothing is asked.
    granted: usize,
    reserve: &'l mut dyn FnMut(usize) -> Growth,
}

impl<'l> Reservation<'l> {
    fn new(reserve: &'l mut dyn FnMut(usize) -> Growth) -> Self {
        Self { held: 0, granted: 0, reserve }
    }

    /// Makes sure `total` is granted. Asked with `room` more first, so that
    /// the next events, which each hold a few KiB, rarely ask again; without
    /// it when that is refused.
    fn cover(&mut self, total: usize, room: usize) -> Result<(), BodyError> {
        if total <= self.granted {
            return Ok(());
        }
        let with_room = total.saturating_add(room);
        let (asked, answer) = match (self.reserve)(with_room) {
            refused if refused != Growth::Held && room > 0 => (total, (self.reserve)(total)),
            answer => (with_room, answer),
        };
        match answer {
            Growth::Held => {
                self.granted = asked;
                Ok(())
            }
            Growth::NotNow => Err(BodyError::OverBudget),
            Growth::BeyondLimit => Err(BodyError::BeyondBudget(asked)),
        }
    }

    /// Reads the event at `start`, where the reader is. Its reading may build
    /// [`FIRST_ALLOWANCE`], granted first; one that needs more is stopped
    /// there and read again from `start` with twice the room, so that nothing
    /// is built before it is granted, up to [`MAX_BUILT_PER_EVENT`], past
    /// which the event is refused alone (the caller skips it). Then what the
    /// event holds is granted. The error is the caller's refusal, which stops
    /// the body.
    fn read_event(&mut self, r: &mut Reader<'_>, start: usize) -> Result<adapt::Result<Box<pb::Event>>, BodyError> {
        let depth = r.depth();
        let mut allowance = FIRST_ALLOWANCE;
        let read = loop {
            self.cover(self.held.saturating_add(allowance), FIRST_ALLOWANCE)?;
            let built = r.built_bytes();
            r.allow_built(allowance);
            let read = adapt::read_event(r);
            if !r.past_allowance() {
                self.held += held_bytes(r.offset().saturating_sub(start), r.built_bytes() - built, read.is_ok());
                break read;
            }
            drop(read);
            r.rewind(start, depth);
            allowance = allowance.saturating_mul(2);
            if allowance > MAX_BUILT_PER_EVENT {
                self.held += held_bytes(0, 0, false);
                let reason = format!("needs more than {MAX_BUILT_PER_EVENT} bytes of memory once decoded");
                break Err(FieldError::value(start, reason));
            }
        };
        r.allow_built(usize::MAX);
        self.cover(self.held, 0).map(|()| read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_event_in_a_batch_is_rejected_alone() {
        let body = br#"{"events":[{"type":"MONEY_CHANGED","payload":{"new_value":"rich"}},{"type":"HEARTBEAT"}],"batch_id":"b"}"#;
        let d = decode_body(body, Endpoint::Batch).unwrap();
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.rejected.len(), 1);
        let rejected = &d.rejected[0];
        assert_eq!(rejected.index, 0);
        assert_eq!(rejected.error.path, "events[0].payload.new_value");
        assert_eq!(&body[rejected.raw.clone()], br#"{"type":"MONEY_CHANGED","payload":{"new_value":"rich"}}"#);
        assert_eq!(&body[d.events[0].raw.clone()], br#"{"type":"HEARTBEAT"}"#);
        assert_eq!(d.envelope.batch_id, "b");
    }

    #[test]
    fn non_object_event_is_rejected_with_its_index() {
        let d = decode_body(br#"{"events":[1,{"type":"HEARTBEAT"}]}"#, Endpoint::Batch).unwrap();
        assert_eq!(d.rejected[0].index, 0);
        assert_eq!(d.events.len(), 1);
    }

    #[test]
    fn empty_table_is_an_empty_batch() {
        let d = decode_body(br#"{"batch_id":"x","events":{}}"#, Endpoint::Batch).unwrap();
        assert!(d.events.is_empty() && d.rejected.is_empty());
    }

    #[test]
    fn syntax_error_fails_the_body_with_offset() {
        let err = decode_body(br#"{"events":[{"type":"A"},{"type":]}"#, Endpoint::Batch).unwrap_err();
        assert!(matches!(err, BodyError::Syntax(_)));
        assert_eq!(err.offset(), Some(32));
    }

    #[test]
    fn missing_events_and_trailing_garbage_are_errors() {
        assert_eq!(decode_body(br#"{"batch_id":"x"}"#, Endpoint::Batch).unwrap_err().field(), Some("events"));
        assert!(matches!(decode_body(br#"{"type":"A"} x"#, Endpoint::Single), Err(BodyError::Syntax(_))));
        assert_eq!(decode_body(b"  ", Endpoint::Single), Err(BodyError::Empty));
    }

    #[test]
    fn a_form_feed_is_not_white_space() {
        let err = decode_body(b"{\"events\":[\x0c]}", Endpoint::Batch).unwrap_err();
        assert!(matches!(err, BodyError::Syntax(_)), "{err}");
        let err = decode_body(b"\x0c{\"type\":\"A\"}", Endpoint::Single).unwrap_err();
        assert!(matches!(err, BodyError::Syntax(_)), "{err}");
    }

    #[test]
    fn the_values_a_payload_builds_are_charged_with_its_event() {
        // An unknown type keeps its payload as a Struct of four Values; both
        // orders of `type` and `payload` are charged for them.
        for event in [
            &br#"{"type":"NEW","payload":{"a":1,"b":2,"c":3}}"#[..],
            br#"{"payload":{"a":1,"b":2,"c":3},"type":"NEW"}"#,
        ] {
            let mut asked = Vec::new();
            let mut reserve = |total| {
                asked.push(total);
                Growth::Held
            };
            let mut reservation = Reservation::new(&mut reserve);
            reservation.read_event(&mut Reader::new(event), 0).unwrap().unwrap();
            let held = held_bytes(event.len(), 3 * crate::json::HELD_PER_VALUE + crate::json::HELD_PER_STRUCT, true);
            assert_eq!(reservation.held, held, "{}", String::from_utf8_lossy(event));
            assert_eq!(asked, [2 * FIRST_ALLOWANCE], "asked once, with room for the next events");
        }
    }

    #[test]
    fn room_that_is_refused_is_not_needed() {
        let mut asked = Vec::new();
        let mut reserve = |total| {
            asked.push(total);
            if total <= FIRST_ALLOWANCE + 100 {
                Growth::Held
            } else {
                Growth::NotNow
            }
        };
        let mut reservation = Reservation::new(&mut reserve);
        assert_eq!(reservation.cover(FIRST_ALLOWANCE, FIRST_ALLOWANCE), Ok(()));
        assert_eq!(reservation.cover(FIRST_ALLOWANCE + 100, 0), Ok(()));
        assert_eq!(reservation.cover(FIRST_ALLOWANCE + 101, 0), Err(BodyError::OverBudget));
        assert_eq!(asked, [2 * FIRST_ALLOWANCE, FIRST_ALLOWANCE, FIRST_ALLOWANCE + 100, FIRST_ALLOWANCE + 101]);
    }

    #[test]
    fn a_single_wrong_type_names_the_field() {
        let err = decode_body(br#"{"type":"ROUND_CHANGED","payload":{"round":[]}}"#, Endpoint::Single).unwrap_err();
        assert_eq!(err.field(), Some("payload.round"));
    }
}

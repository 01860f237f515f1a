//! Turns one event object of the field mod's JSON dialect into a protobuf `Event`.
//!
//! Known types get their typed payload message; every key that has no typed field
//! goes into the message's `extra` Struct, so nothing the mod sent is dropped.
//! Fields are lenient where the dialect is (numbers as strings inside arrays, `{}`
//! for an empty list, non-finite numbers) and strict where a value cannot mean what
//! the field says: a wrong type is a [`FieldError`] naming the field path. This
//! module reads bytes and builds messages; it must never assign sessions, sequences
//! or server time, which belong to the shard that owns the session.

mod payload;

use crate::json::{self, JsonError, Kind, Reader};
use crate::spare_events;
use jimbus_proto::events as pb;
use jimbus_proto::free_form::{CompactString, Struct};
use payload::{empty_payload, typed_payload};
use std::borrow::Cow;

/// A value that does not fit its field, with the field's path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
// The body's top value has no path, and a bare `: reason` reads as a typo.
#[error("{path}{}{reason}", if .path.is_empty() { "" } else { ": " })]
pub struct FieldError {
    /// Dotted path from the event object, e.g. `payload.jokers[1].position`.
    pub path: String,
    pub reason: String,
    /// Byte offset of the value in the body.
    pub offset: usize,
    /// True when the body itself is not readable past this point.
    pub syntax: bool,
}

impl From<Box<JsonError>> for Box<FieldError> {
    fn from(e: Box<JsonError>) -> Self {
        let JsonError { offset, reason, syntax } = *e;
        Box::new(FieldError { path: String::new(), reason, offset, syntax })
    }
}

impl FieldError {
    /// A value that does not fit its field, at `offset`; its path is added
    /// by the fields it is inside ([`FieldError::within`]).
    #[cold]
    pub(crate) fn value(offset: usize, reason: String) -> Box<Self> {
        Box::new(FieldError { path: String::new(), reason, offset, syntax: false })
    }

    /// The error of the field named `segment` that holds this value.
    #[cold]
    pub(crate) fn within(mut self: Box<Self>, segment: &str) -> Box<Self> {
        self.path = match (self.path.is_empty(), self.path.starts_with('[')) {
            (true, _) => segment.to_string(),
            (false, true) => format!("{segment}{}", self.path),
            (false, false) => format!("{segment}.{}", self.path),
        };
        self
    }
}

/// The decoder's result. Its error is boxed, as the reader's is, so that a
/// `Result` stays a few words: every value read passes one up through a few
/// `?`, and with the 64-byte error inline each of them was a copy through
/// memory. Boxing both, with their constructors `#[cold]`, took
/// `perf/callgrind-ingest.sh` from 10,579 to 10,141 instructions per event.
pub type Result<T> = std::result::Result<T, Box<FieldError>>;
// With the error unboxed, this is the error's size again: the build stops here.
const _: () = assert!(std::mem::size_of::<Result<f64>>() <= 16);

/// The most bytes of protobuf one byte of an event's JSON can become: a
/// number where a string is expected is written out in full, so `1e308,`
/// in a list of strings (6 bytes) becomes 309 digits and 3 bytes of tag and
/// length. Every other value grows less: a number kept as a `Value` in a list
/// (`1,`) becomes 11 bytes, an empty list (`[],`) 4.
const ENCODED_PER_JSON_BYTE: usize = 64;

/// What the encoding of an event holds that its JSON does not pay for: the
/// timing's clock, the payload field's key, a typed empty payload, and the
/// metadata entry the client's own correlation id moves to at admission,
/// with room to spare.
const ENCODED_WITHOUT_JSON: usize = 256;

/// The most bytes the protobuf encoding of an event can take that was read
/// from `json_len` bytes of JSON and then given a session of `session_len`
/// bytes at admission (before the server's stamps). Admission checks an
/// event's size against the schema's limit with it, and walks the event for
/// its exact size only when the bound does not fit; a proptest and the
/// dialect's fuzz target check that no event breaks it.
pub fn encoded_len_bound(json_len: usize, session_len: usize) -> usize {
    // The session's tag and length prefix take at most 3 bytes more.
    json_len.saturating_mul(ENCODED_PER_JSON_BYTE).saturating_add(ENCODED_WITHOUT_JSON + session_len + 3)
}

/// Epoch milliseconds of 2001-01-01: client timestamps below it are game-clock readings.
const EPOCH_FLOOR_MS: f64 = 978_307_200_000.0;

#[cold]
fn mismatch(r: &mut Reader<'_>, want: &str) -> Box<FieldError> {
    let found = r.peek().map(Kind::name).unwrap_or("nothing");
    FieldError::value(r.offset(), format!("expected {want}, found {found}"))
}

/// Runs `read` on the value of `key`, prefixing any error with the key.
/// Always inlined: as a call per key it was 3 % of the decoder's instructions.
#[inline(always)]
fn field<'a, T>(r: &mut Reader<'a>, key: &str, read: impl FnOnce(&mut Reader<'a>) -> Result<T>) -> Result<T> {
    read(r).map_err(|e| e.within(key))
}

/// A double: a number, a bare non-finite token, or a string holding a number
/// (arrays of scalars arrive as strings; proto JSON writes "Infinity" and "NaN").
pub fn number(r: &mut Reader<'_>) -> Result<f64> {
    if let Some(value) = r.plain_integer() {
        return Ok(value);
    }
    match r.peek()? {
        Kind::Number => Ok(r.number()?),
        Kind::String => {
            let at = r.offset();
            let text = r.string()?;
            // Built only when the string is not a number: a numeric string
            // (the dialect's arrays of scalars) allocates nothing here.
            parse_number_text(&text)
                .ok_or_else(|| FieldError::value(at, format!("expected a number, found the string {text:?}")))
        }
        _ => Err(mismatch(r, "a number")),
    }
}

fn parse_number_text(text: &str) -> Option<f64> {
    match text {
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" | "-nan" => Some(f64::NAN),
        _ => text.trim().parse().ok().filter(|_| !text.trim().is_empty()),
    }
}

/// An int32 count: a number (or numeric string) that is integral and in range.
pub fn int32(r: &mut Reader<'_>) -> Result<i32> {
    let at = r.offset();
    let value = number(r)?;
    match integral_i32(value) {
        Some(whole) => Ok(whole),
        None => Err(FieldError::value(at, format!("expected an integer, found {value}"))),
    }
}

fn uint64(r: &mut Reader<'_>) -> Result<u64> {
    let at = r.offset();
    let value = number(r)?;
    match integral_u53(value) {
        Some(whole) => Ok(whole),
        None => Err(FieldError::value(at, format!("expected a non-negative integer, found {value}"))),
    }
}

// Integral and in range, tested by converting and back: `f64::fract` is a
// call into libm's `trunc` without SSE4.1, and numbers are most of a
// payload's values. A truncated conversion, or NaN's, never compares equal;
// a saturated one can only at 2^64, which the bound refuses.

/// `value` as an i32 when it is integral and in range.
fn integral_i32(value: f64) -> Option<i32> {
    let whole = value as i32;
    (f64::from(whole) == value).then_some(whole)
}

/// `value` as a u64 when it is integral, non-negative and at most 2^53 (the
/// largest integer every JSON reader holds exactly).
fn integral_u53(value: f64) -> Option<u64> {
    let whole = value as u64;
    (whole as f64 == value && whole <= 1 << 53).then_some(whole)
}

/// A string; numbers are accepted and written as Lua would print integers.
/// Read as a `String`, or as a [`CompactString`] for a field held inline
/// when short (a joker's name and id).
#[inline(always)]
pub fn text<T: for<'a> From<Cow<'a, str>> + From<String>>(r: &mut Reader<'_>) -> Result<T> {
    // Not `text_into` a new String, which would be shorter: growing an empty
    // String costs about 200 instructions per event more than `into_owned`
    // (perf/callgrind-ingest.sh: 13,129 against 12,916).
    if let Some(plain) = r.plain_string() {
        return Ok(T::from(Cow::Borrowed(plain)));
    }
    match r.peek()? {
        Kind::String => Ok(T::from(r.string()?)),
        Kind::Number => Ok(T::from(format_number(r)?)),
        _ => Err(mismatch(r, "a string")),
    }
}

/// [`text`], written over `into`, whose capacity is used first: an event
/// taken from the thread's spares ([`crate::spare_events`]) fills its
/// strings without allocating.
fn text_into(r: &mut Reader<'_>, into: &mut String) -> Result<()> {
    if let Some(plain) = r.plain_string() {
        into.clear();
        into.push_str(plain);
        return Ok(());
    }
    match r.peek()? {
        Kind::String => {
            let value = r.string()?;
            into.clear();
            into.push_str(&value);
        }
        Kind::Number => *into = format_number(r)?,
        _ => return Err(mismatch(r, "a string")),
    }
    Ok(())
}

/// The number at the reader, as text. Counted as built: `1e300` is 5 bytes
/// of input and 301 of text, in a string grown by doubling while it was
/// written (so up to twice its capacity was live).
fn format_number(r: &mut Reader<'_>) -> Result<String> {
    let value = r.number()?;
    let text = if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { value.to_string() };
    r.note_built(2 * text.capacity())?;
    Ok(text)
}

/// A boolean, or the strings "true"/"false" that arrays of booleans become.
pub fn flag(r: &mut Reader<'_>) -> Result<bool> {
    match r.peek()? {
        Kind::Bool => Ok(r.boolean()?),
        Kind::String => {
            let at = r.offset();
            match r.string()?.as_ref() {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(FieldError::value(at, format!("expected a boolean, found the string {other:?}"))),
            }
        }
        _ => Err(mismatch(r, "a boolean")),
    }
}

/// A list (`[...]`, or `{}` for an empty one) with each element filled in
/// place by `fill`, from a default: a message built on the stack and then
/// moved into the list was copied back from memory that its fields had just
/// been written to, a stalled load for each joker (docs/perf.md, "Fortieth
/// pass").
pub fn list<'a, T: Default>(
    r: &mut Reader<'a>,
    mut fill: impl FnMut(&mut Reader<'a>, &mut T) -> Result<()>,
) -> Result<Vec<T>> {
    if !matches!(r.peek()?, Kind::Array | Kind::Object) {
        return Err(mismatch(r, "a list"));
    }
    let mut out = Vec::new();
    r.array(|r, i| {
        // Counted before the element is read: a reading past its allowance stops here.
        r.note_built(json::list_slot_bytes::<T>(i))?;
        if i == 0 {
            // Room for eight at once: a game's five jokers (or a hand) is one
            // allocation, where a `Vec` grown from four took two.
            out.reserve_exact(json::FIRST_LIST_SLOTS);
        }
        out.push(T::default());
        fill(r, &mut out[i]).map_err(|e| e.within(&format!("[{i}]")))
    })?;
    Ok(out)
}

fn texts(r: &mut Reader<'_>) -> Result<Vec<String>> {
    // Each read whole with `text`, not grown by `text_into` (see `text`).
    list(r, |r, into: &mut String| {
        *into = text(r)?;
        Ok(())
    })
}

/// An object read key by key; `on_key` handles known keys and returns false for
/// the others, which are kept in `extra`.
fn object<'a>(
    r: &mut Reader<'a>,
    extra: &mut Option<Struct>,
    mut on_key: impl FnMut(&mut Reader<'a>, &str) -> Result<bool>,
) -> Result<()> {
    if r.peek()? != Kind::Object {
        return Err(mismatch(r, "an object"));
    }
    r.object(|r, key: Cow<'a, str>| {
        let known = field(r, &key, |r| on_key(r, &key))?;
        if !known {
            let value = field(r, &key, |r| Ok(r.value()?))?;
            if extra.is_none() {
                r.note_built(json::HELD_PER_STRUCT)?;
            }
            extra.get_or_insert_with(Struct::default).fields.insert(CompactString::from(key), value);
        }
        Ok(())
    })
}

/// A Struct, for fields that hold free-form objects.
fn free_object(r: &mut Reader<'_>) -> Result<Struct> {
    match r.peek()? {
        Kind::Object => Ok(r.object_value()?),
        _ => Err(mismatch(r, "an object")),
    }
}

/// Where an event's payload lies, and what was read of it while the event's
/// object was read.
struct PayloadSpan {
    /// Offset and depth of the payload's value.
    at: (usize, u32),
    /// Whether the payload was typed, into the event, by the type and
    /// subtype known when it was reached (and the error if it did not fit
    /// them); `None` when it came before the type.
    early: Option<Result<()>>,
}

/// Reads one event object. The reader must be placed on the object.
///
/// The mod sends `type` before `payload`, so the payload is typed as it is
/// reached: one pass over its bytes. Keys may still arrive in any order, so a
/// payload read before its type, or typed by a type or subtype that a later
/// key changed, is read again from its noted span once the object is done.
///
/// The event is built in its box, where it stays until the shard stores it:
/// an `Event` is over 600 bytes, and each move would copy them.
pub fn read_event(r: &mut Reader<'_>) -> Result<Box<pb::Event>> {
    let mut event = spare_events::take();
    let mut timing = pb::Timing::default();
    let mut extra = None;
    let mut payload_at: Option<PayloadSpan> = None;
    // A `type` or `subtype` key after the payload: what typed it may have changed.
    let mut retyped = false;
    object(r, &mut extra, |r, key| {
        match key {
            "type" => {
                text_into(r, &mut event.event_type)?;
                retyped |= payload_at.is_some();
            }
            "subtype" => {
                text_into(r, &mut event.subtype)?;
                retyped |= payload_at.is_some();
            }
            "source" => text_into(r, &mut event.source)?,
            "event_id" => text_into(r, &mut event.event_id)?,
            "session_id" => text_into(r, &mut event.session_id)?,
            "sequence" => event.client_sequence = uint64(r)?,
            "timestamp" => timing.client_timestamp_ms = number(r)?,
            "game_time_ms" => timing.game_time_ms = number(r)?,
            "version" => event.version = int32(r)?,
            "debug" => event.debug = flag(r)?,
            "priority" => {
                // Any other value (another word, a number) is kept as an unknown
                // field: read again from where it starts, as the caller expects.
                let (at, depth) = (r.offset(), r.depth());
                match text::<String>(r).as_deref() {
                    Ok("high") => event.priority = pb::Priority::High as i32,
                    Ok("low") => event.priority = pb::Priority::Low as i32,
                    _ => {
                        r.rewind(at, depth);
                        return Ok(false);
                    }
                }
            }
            "payload" | "data" if r.peek()? == Kind::Null => return Ok(false),
            "payload" | "data" if payload_at.is_none() || key == "payload" => {
                if payload_at.is_some() {
                    return Ok(false);
                }
                event.payload_field =
                    if key == "payload" { pb::PayloadField::Payload } else { pb::PayloadField::Data } as i32;
                payload_at = Some(read_payload_early(r, &mut event)?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if event.event_type.is_empty() {
        return Err(FieldError::value(r.offset(), "required".into()).within("type"));
    }
    timing.client_clock = client_clock(timing.client_timestamp_ms) as i32;
    event.timing = Some(timing);
    event.extra = extra;
    match payload_at {
        Some(span) => {
            let key = if event.payload_field == pb::PayloadField::Data as i32 { "data" } else { "payload" };
            let typed = match span.early {
                Some(typed) if !retyped => typed,
                _ => read_payload_again(r, span.at, &mut event),
            };
            typed.map_err(|e| e.within(key))?;
        }
        None => empty_payload(&mut event),
    }
    Ok(event)
}

/// Notes where the payload is and, when the type is known, types it now into
/// the event. A payload that does not fit its type is skipped for its syntax
/// alone, as if not yet read, and its error kept for when the object is done:
/// a syntax error later in the object, or a missing type, is reported first.
fn read_payload_early(r: &mut Reader<'_>, event: &mut pb::Event) -> Result<PayloadSpan> {
    let at = (r.offset(), r.depth());
    if event.event_type.is_empty() {
        r.skip()?;
        return Ok(PayloadSpan { at, early: None });
    }
    let typed = typed_payload(r, &event.event_type, &event.subtype, &mut event.payload);
    if typed.is_err() {
        r.rewind(at.0, at.1);
        r.skip()?;
    }
    Ok(PayloadSpan { at, early: Some(typed) })
}

/// Types a payload into the event from its noted span, then puts the reader
/// back where it was (the end of the event's object). The same reader is used
/// so the values built are counted with the event's.
fn read_payload_again(r: &mut Reader<'_>, (offset, depth): (usize, u32), event: &mut pb::Event) -> Result<()> {
    let end = (r.offset(), r.depth());
    r.rewind(offset, depth);
    let typed = typed_payload(r, &event.event_type, &event.subtype, &mut event.payload);
    r.rewind(end.0, end.1);
    typed
}

fn client_clock(timestamp_ms: f64) -> pb::ClientClock {
    if timestamp_ms == 0.0 || !timestamp_ms.is_finite() {
        pb::ClientClock::Unspecified
    } else if timestamp_ms < EPOCH_FLOOR_MS {
        pb::ClientClock::GameMs
    } else {
        pb::ClientClock::EpochMs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jimbus_proto::events::event::Payload;
    use proptest::prelude::*;

    fn event(body: &str) -> Result<pb::Event> {
        read_event(&mut Reader::new(body.as_bytes())).map(|e| *e)
    }

    proptest::proptest! {
        /// The conversion tests accept exactly what the tests by `fract` and
        /// range did: integral values in range, nothing else.
        #[test]
        fn integral_tests_match_fract_and_range(
            value in proptest::prop_oneof![
                proptest::num::f64::ANY,
                (-3e9f64..3e9).prop_map(f64::round),
                (0u64..=(1 << 54)).prop_map(|n| n as f64),
                proptest::sample::select(vec![
                    0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 2147483647.0, 2147483648.0,
                    -2147483648.0, -2147483649.0, 9007199254740992.0, 9007199254740994.0, 18446744073709551616.0,
                ]),
            ],
        ) {
            let int32 = value.fract() == 0.0 && value >= i32::MIN as f64 && value <= i32::MAX as f64;
            proptest::prop_assert_eq!(integral_i32(value), int32.then_some(value as i32));
            let uint53 = value.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&value);
            proptest::prop_assert_eq!(integral_u53(value), uint53.then_some(value as u64));
        }
    }

    #[test]
    fn an_unknown_priority_is_kept_as_an_extra_field() {
        for (body, kept) in [
            (r#"{"type":"X","priority":"normal","payload":{}}"#, Some("normal")),
            (r#"{"type":"X","priority":3,"payload":{}}"#, None),
            (r#"{"priority":{"level":1},"type":"X"}"#, None),
        ] {
            let e = event(body).unwrap_or_else(|err| panic!("{body}: {err:?}"));
            assert_eq!(e.priority, 0, "{body}");
            let extra = e.extra.expect("kept");
            assert!(extra.fields.contains_key("priority"), "{body}");
            if let Some(text) = kept {
                assert!(format!("{:?}", extra.fields["priority"]).contains(text), "{body}");
            }
        }
        assert_eq!(event(r#"{"type":"X","priority":"high"}"#).unwrap().priority, pb::Priority::High as i32);
    }

    #[test]
    fn payload_before_type_is_typed() {
        let e = event(r#"{"payload":{"old_value":1,"new_value":2,"difference":1},"type":"MONEY_CHANGED"}"#).unwrap();
        let Some(Payload::MoneyChanged(m)) = e.payload else { panic!("{e:?}") };
        assert_eq!((m.old_value, m.new_value, m.difference), (1.0, 2.0, 1.0));
    }

    #[test]
    fn a_type_or_subtype_after_the_payload_retypes_it() {
        let body = r#"{"type":"SCORING","payload":{"joker":{"name":"J"},"chips":2},"subtype":"JOKER_TRIGGER"}"#;
        let Some(Payload::Scoring(s)) = event(body).unwrap().payload else { panic!() };
        assert!(matches!(s.step, Some(pb::scoring_event::Step::JokerTrigger(_))), "{s:?}");
        // The last `type` wins, even when the payload did not fit the first one.
        let e = event(r#"{"type":"GAME_STATE","payload":{"ante":"x","new_value":3},"type":"MONEY_CHANGED"}"#).unwrap();
        let Some(Payload::MoneyChanged(m)) = e.payload else { panic!("{e:?}") };
        assert_eq!(m.new_value, 3.0);
        assert!(m.extra.unwrap().fields.contains_key("ante"));
    }

    #[test]
    fn a_syntax_error_after_a_payload_that_does_not_fit_is_reported_first() {
        let err = event(r#"{"type":"GAME_STATE","payload":{"ante":1.5},"x":[1,}"#).unwrap_err();
        assert!(err.syntax, "{err:?}");
        let err = event(r#"{"type":"GAME_STATE","payload":{"ante":1.5},"x":1}"#).unwrap_err();
        assert_eq!((err.path.as_str(), err.syntax), ("payload.ante", false));
    }

    #[test]
    fn unknown_keys_are_kept_in_extra() {
        let e = event(r#"{"type":"GAME_STATE","shiny":true,"payload":{"ante":1,"consumables":{},"levels":["1","2"]}}"#)
            .unwrap();
        assert!(e.extra.unwrap().fields.contains_key("shiny"));
        let Some(Payload::GameState(g)) = e.payload else { panic!() };
        let extra = g.extra.unwrap();
        assert!(extra.fields.contains_key("consumables"));
        assert!(extra.fields.contains_key("levels"));
    }

    #[test]
    fn wrong_type_names_the_field_path() {
        let err = event(r#"{"type":"GAME_STATE","payload":{"jokers":[{"name":"J","position":"left"}]}}"#).unwrap_err();
        assert_eq!(err.path, "payload.jokers[0].position");
        assert!(err.reason.contains("expected a number"), "{err}");
        let err = event(r#"{"type":"GAME_STATE","payload":{"ante":1.5}}"#).unwrap_err();
        assert_eq!(err.path, "payload.ante");
        assert_eq!(err.to_string(), "payload.ante: expected an integer, found 1.5");
    }

    #[test]
    fn the_top_value_is_named_by_its_reason_alone() {
        let err = event(r#""hello""#).unwrap_err();
        assert_eq!((err.path.as_str(), err.to_string().as_str()), ("", "expected an object, found string"));
    }

    #[test]
    fn missing_type_is_reported() {
        assert_eq!(event(r#"{"payload":{}}"#).unwrap_err().path, "type");
    }

    #[test]
    fn data_replaces_payload_for_connection_test() {
        let e = event(r#"{"data":{"message":"x"},"type":"connection_test"}"#).unwrap();
        assert_eq!(e.payload_field, pb::PayloadField::Data as i32);
        let Some(Payload::ConnectionTest(c)) = e.payload else { panic!() };
        assert_eq!(c.message, "x");
    }

    #[test]
    fn clocks_are_told_apart() {
        let game = event(r#"{"type":"JOKER_TRIGGER","timestamp":5.695104598999}"#).unwrap();
        assert_eq!(game.timing.unwrap().client_clock, pb::ClientClock::GameMs as i32);
        let epoch = event(r#"{"type":"HEARTBEAT","timestamp":1795531353000}"#).unwrap();
        assert_eq!(epoch.timing.unwrap().client_clock, pb::ClientClock::EpochMs as i32);
    }

    #[test]
    fn unknown_type_is_generic_and_lossless() {
        let e = event(r#"{"type":"NEW_THING","payload":{"a":[1,{"b":inf}]}}"#).unwrap();
        let Some(Payload::Generic(g)) = e.payload else { panic!() };
        assert!(g.payload.unwrap().fields.contains_key("a"));
    }
}

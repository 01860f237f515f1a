//! The one admission step of both ingest edges: what happens to an event
//! between its decoding and the bus. The session is filled in (the event's
//! own, else the envelope's, else one derived from the peer and source), the
//! request's stamps (its correlation id, the server's receive time and the
//! envelope's batch id) are set once for all its events, and each event is
//! validated as it will be stored. Events plus peer,
//! envelope, request id and receive time go in; append items and rejections
//! come out. HTTP and gRPC both call [`admit`], so an event is admitted the same
//! way whichever edge took it. This module must never decode a body or decide
//! where an event is stored.
//!
//! The rule: a request's id is the `x-request-id` header (HTTP) or metadata
//! (gRPC) when the client sends a usable one, else a new UUID; it is echoed in
//! the answer, carried by every log line about the request, and becomes the
//! `correlation_id` of every event the request holds, so one id leads from the
//! request to the stored record and to each delivery. A different
//! `correlation_id` the client set on an event itself (possible over gRPC) is
//! kept in the event's metadata as `client_correlation_id`, not lost.

use crate::bus::AppendItem;
use jimbus_core::ingest::Envelope;
use jimbus_core::stamps::RequestStamps;
use jimbus_core::topic;
use jimbus_proto::events as pb;
use std::net::IpAddr;
use std::sync::Arc;

/// The metadata key that keeps a client's own correlation id.
pub const CLIENT_CORRELATION_KEY: &str = "client_correlation_id";

/// Longest client-given request id that is taken as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id: the client's, when it sent a non-empty one of at most 128
/// bytes, else a new UUID. The UUID is written by its own encoder, not through
/// `Display`'s formatter, which took twice the instructions.
pub fn request_id(given: Option<&str>) -> String {
    given.filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN).map_or_else(
        || uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned(),
        str::to_string,
    )
}

/// Sets aside what a client put in the fields its request stamps: a different
/// correlation id of its own is kept in the metadata, and its received time
/// is dropped (the record takes the request's, see [`RequestStamps::apply`]).
pub fn set_client_stamps_aside(event: &mut pb::Event, request_id: &str) {
    if !event.correlation_id.is_empty() && event.correlation_id != request_id {
        let own = std::mem::take(&mut event.correlation_id);
        event.metadata.insert(CLIENT_CORRELATION_KEY.into(), own);
    }
    event.correlation_id.clear();
    if let Some(timing) = event.timing.as_mut() {
        timing.received_at = None;
    }
}

/// What admission knows about the request the events came in.
pub struct Admission<'a> {
    /// The request's id (see [`request_id`]): every event's correlation id.
    pub request_id: &'a str,
    /// When the server received the request, in microseconds since the epoch.
    pub received_us: u64,
    /// The client's address, for a session derived from it (a field mod that
    /// names none); `None` where the edge does not derive sessions.
    pub peer: Option<IpAddr>,
    /// The body's envelope (session, source, batch id); empty over gRPC.
    pub envelope: &'a Envelope,
    /// How many entries the request holds: room for its items is taken once,
    /// not grown by doubling.
    pub entries: usize,
}

/// One event entering admission: its place in the request, the event or why
/// it could not be decoded, and the edge's handle on its raw bytes.
pub struct Entry<R> {
    pub index: usize,
    pub event: Result<Box<pb::Event>, String>,
    pub raw: R,
    /// The length of the event's JSON, when it came as JSON: its encoding
    /// is bounded by it (`jimbus_core::adapt::encoded_len_bound`), so its
    /// size is computed only when the bound could pass the limit.
    pub json_len: Option<usize>,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The edge could not decode it (the edge's own message).
    Undecodable(String),
    /// It decoded but breaks the event schema (the violations, as
    /// `jimbus_proto::validate` words them).
    Invalid(String),
}

/// What admission made of a request's events.
#[derive(Default)]
pub struct Admitted {
    /// The events to append (and any dead letters the edge made), in request order.
    pub items: Vec<AppendItem>,
    /// Each refused event's place in the request and why, in request order.
    pub rejected: Vec<(usize, Refusal)>,
}

/// Admits a request's events in order. A refused event is reported in
/// `rejected`, and `dead_letter` (given its place, the reason, the raw bytes
/// and the event's session, if known) may turn it into an item to keep.
pub fn admit<R>(
    admission: &Admission<'_>,
    entries: impl IntoIterator<Item = Entry<R>>,
    mut dead_letter: impl FnMut(usize, &Refusal, R, String) -> Option<AppendItem>,
) -> Admitted {
    let request = Arc::new(RequestStamps {
        correlation_id: admission.request_id.to_string(),
        received_at: crate::clock::timestamp(admission.received_us),
        batch_id: admission.envelope.batch_id.clone(),
    });
    let added_bytes = request.added_bytes();
    let mut admitted = Admitted::default();
    admitted.items.reserve_exact(admission.entries);
    let mut derived = DerivedSession::default();
    for Entry { index, event, raw, json_len } in entries {
        let refused = match event {
            Ok(mut event) => {
                fill_session(admission, &mut event, &mut derived);
                set_client_stamps_aside(&mut event, admission.request_id);
                let added_entries = request.added_entries(&event.metadata);
                let bound = json_len.map(|len| jimbus_core::adapt::encoded_len_bound(len, event.session_id.len()));
                match jimbus_proto::validate::check_event_before_stamps(&event, added_bytes, added_entries, bound) {
                    Ok(()) => {
                        admitted.items.push(AppendItem::Event(event, request.clone()));
                        continue;
                    }
                    Err(violations) => (Refusal::Invalid(violations.to_string()), event.session_id),
                }
            }
            Err(reason) => (Refusal::Undecodable(reason), String::new()),
        };
        let (reason, session) = refused;
        admitted.items.extend(dead_letter(index, &reason, raw, session));
        admitted.rejected.push((index, reason));
    }
    admitted
}

/// The session last derived in a request, with the source it came from: the
/// events of one body nearly always share both, so it is formatted once.
#[derive(Default)]
struct DerivedSession {
    source: String,
    session: Option<String>,
}

/// An event without a session takes the envelope's, else one derived from
/// the peer's address and the source (the field mod's dialect).
fn fill_session(admission: &Admission<'_>, event: &mut pb::Event, derived: &mut DerivedSession) {
    if !event.session_id.is_empty() {
        return;
    }
    let envelope = admission.envelope;
    // `clone_from` writes into the event's own string, which a spare event
    // (jimbus_core::spare_events) brings with room for it.
    if !envelope.session_id.is_empty() {
        event.session_id.clone_from(&envelope.session_id);
    } else if let Some(ip) = admission.peer {
        let source = if event.source.is_empty() { &envelope.source } else { &event.source };
        match &derived.session {
            Some(session) if derived.source == *source => event.session_id.clone_from(session),
            _ => {
                let session = topic::derived_session(ip, source);
                event.session_id.clone_from(&session);
                (derived.source, derived.session) = (source.clone(), Some(session));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_is_replaced() {
        assert_eq!(request_id(Some("req-7")), "req-7");
        for unusable in [None, Some(""), Some(&*"x".repeat(129))] {
            let id = request_id(unusable);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn a_clients_own_stamps_are_set_aside_for_the_requests() {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let timing = Some(pb::Timing { received_at: at(5), client_timestamp_ms: 1.0, ..Default::default() });
        let mut event = pb::Event { correlation_id: "mine".into(), timing, ..Default::default() };
        set_client_stamps_aside(&mut event, "req-1");
        assert_eq!(event.correlation_id, "");
        assert_eq!(event.metadata.get(CLIENT_CORRELATION_KEY).map(String::as_str), Some("mine"));
        let timing = event.timing.unwrap();
        assert_eq!((timing.received_at, timing.client_timestamp_ms), (None, 1.0));

        let mut same = pb::Event { correlation_id: "req-2".into(), ..Default::default() };
        set_client_stamps_aside(&mut same, "req-2");
        assert!(same.metadata.is_empty() && same.correlation_id.is_empty(), "nothing to keep aside");
    }
}

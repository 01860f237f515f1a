//! The one admission step of both ingest edges: what happens to an event
//! between its decoding and the bus. The session is filled in (the event's
//! own, else the envelope's, else one derived from the peer and source), the
//! request's correlation id and the server's receive time are stamped, the
//! envelope's batch id is kept, and the event is validated. Events plus peer,
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
use jimbus_core::topic;
use jimbus_proto::events as pb;
use std::net::IpAddr;

/// The metadata key that keeps a client's own correlation id.
pub const CLIENT_CORRELATION_KEY: &str = "client_correlation_id";

/// Longest client-given request id that is taken as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id: the client's, when it sent a non-empty one of at most 128
/// bytes, else a new UUID.
pub fn request_id(given: Option<&str>) -> String {
    given
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
}

/// Stamps an event with its request's id and the time the server received it.
pub fn stamp(event: &mut pb::Event, request_id: &str, received: prost_types::Timestamp) {
    if !event.correlation_id.is_empty() && event.correlation_id != request_id {
        let own = std::mem::take(&mut event.correlation_id);
        event.metadata.insert(CLIENT_CORRELATION_KEY.into(), own);
    }
    event.correlation_id.clear();
    event.correlation_id.push_str(request_id);
    event.timing.get_or_insert_with(Default::default).received_at = Some(received);
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
}

/// One event entering admission: its place in the request, the event or why
/// it could not be decoded, and the edge's handle on its raw bytes.
pub struct Entry<R> {
    pub index: usize,
    pub event: Result<Box<pb::Event>, String>,
    pub raw: R,
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
    let received = crate::clock::timestamp(admission.received_us);
    let mut admitted = Admitted::default();
    let mut derived = DerivedSession::default();
    for Entry { index, event, raw } in entries {
        let refused = match event {
            Ok(mut event) => {
                fill_session(admission, &mut event, &mut derived);
                stamp(&mut event, admission.request_id, received);
                if !admission.envelope.batch_id.is_empty() {
                    event.metadata.insert("batch_id".into(), admission.envelope.batch_id.clone());
                }
                match jimbus_proto::validate::check_event(&event) {
                    Ok(()) => {
                        admitted.items.push(AppendItem::Event(event));
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
    event.session_id = if !envelope.session_id.is_empty() {
        envelope.session_id.clone()
    } else if let Some(ip) = admission.peer {
        let source = if event.source.is_empty() { &envelope.source } else { &event.source };
        match &derived.session {
            Some(session) if derived.source == *source => session.clone(),
            _ => {
                let session = topic::derived_session(ip, source);
                (derived.source, derived.session) = (source.clone(), Some(session.clone()));
                session
            }
        }
    } else {
        return;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_is_replaced() {
        assert_eq!(request_id(Some("req-7")), "req-7");
        for unusable in [None, Some(""), Some(&*"x".repeat(129))] {
            let id = request_id(unusable);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn the_request_id_wins_and_the_clients_own_id_is_kept_aside() {
        let mut event = pb::Event { correlation_id: "mine".into(), ..Default::default() };
        stamp(&mut event, "req-1", at(5));
        assert_eq!(event.correlation_id, "req-1");
        assert_eq!(event.metadata.get(CLIENT_CORRELATION_KEY).map(String::as_str), Some("mine"));
        assert_eq!(event.timing.unwrap().received_at, Some(at(5)));

        let mut same = pb::Event { correlation_id: "req-2".into(), ..Default::default() };
        stamp(&mut same, "req-2", at(1));
        assert!(same.metadata.is_empty(), "nothing to keep aside");

        let mut bare = pb::Event::default();
        stamp(&mut bare, "req-3", at(1));
        assert_eq!((bare.correlation_id.as_str(), bare.metadata.len()), ("req-3", 0));
    }
}

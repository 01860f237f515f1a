//! The server's stamps on a stored event, apart from the client's view of it.
//!
//! A record is the encoding of the event as the client sent it, followed by
//! the encoding of the server's stamps (sequence, correlation id, metadata,
//! and the received and published times). Protobuf keeps a scalar's last
//! value and merges repeated message and map fields, so the two decode as the
//! stamped event, the log encodes each event once, and the dedup key hashes
//! the client's view (what a retry resends). This module owns that split and
//! the key of a stamped event; it must never assign a stamp's value (the edges
//! and the pump do) or keep state of its own (a [`StampEncoder`] belongs to
//! its caller).

use crate::dedup::{dedup_key, dedup_key_of_encoding, DedupKey};
use jimbus_proto::events as pb;
use prost::Message;
use std::collections::BTreeMap;

/// The server's stamps on an event: the fields of `Event` that the server
/// sets, under `Event`'s own field numbers, so that their encoding appended
/// to the client's view decodes as the stamped event. A message of its own
/// rather than a whole `Event`, which is over 600 bytes and would be built,
/// moved and dropped for every stored event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stamps {
    /// `Event.correlation_id`: the id of the request that carried the event.
    #[prost(string, tag = "5")]
    pub correlation_id: String,
    /// `Event.sequence`: the event's place in its session.
    #[prost(uint64, tag = "7")]
    pub sequence: u64,
    /// `Event.timing`, holding only the server's two times.
    #[prost(message, optional, tag = "9")]
    pub timing: Option<StampTimes>,
    /// `Event.metadata`: the server's entries and the client's alike (the
    /// client's view carries none, so its key ignores them all).
    #[prost(btree_map = "string, string", tag = "10")]
    pub metadata: BTreeMap<String, String>,
}

/// The server's part of `Timing`, under `Timing`'s field numbers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StampTimes {
    /// `Timing.received_at`: when the server received the request.
    #[prost(message, optional, tag = "4")]
    pub received_at: Option<prost_types::Timestamp>,
    /// `Timing.published_at`: when the event was staged in the log.
    #[prost(message, optional, tag = "5")]
    pub published_at: Option<prost_types::Timestamp>,
}

impl Stamps {
    /// Takes the stamps out of `event`, leaving the client's view.
    pub fn take(event: &mut pb::Event) -> Self {
        let timing = event
            .timing
            .as_mut()
            .map(|t| StampTimes { received_at: t.received_at.take(), published_at: t.published_at.take() });
        // Timing that held only stamps is no part of the client's view: an
        // event sent without timing and one stored with stamps alone must
        // have the same key.
        if event.timing.as_ref().is_some_and(|t| *t == pb::Timing::default()) {
            event.timing = None;
        }
        Self {
            correlation_id: std::mem::take(&mut event.correlation_id),
            sequence: std::mem::take(&mut event.sequence),
            timing,
            metadata: std::mem::take(&mut event.metadata),
        }
    }

    /// Puts the stamps back into `event`.
    pub fn restore(self, event: &mut pb::Event) {
        event.sequence = self.sequence;
        event.correlation_id = self.correlation_id;
        event.metadata = self.metadata;
        if let Some(stamped) = self.timing {
            let timing = event.timing.get_or_insert_with(Default::default);
            timing.received_at = stamped.received_at;
            timing.published_at = stamped.published_at;
        }
    }
}

/// Appends the encoding of the client's view of `event` to `out`; returns the
/// stamps taken out of it (to be put back by [`StampEncoder::append`]) and its dedup key.
pub fn encode_client_view(event: &mut pb::Event, out: &mut Vec<u8>) -> (Stamps, Option<DedupKey>) {
    let stamps = Stamps::take(event);
    let start = out.len();
    // `encode_raw` skips `encode`'s capacity check, which walks the whole
    // event once more for its length; a `Vec` grows as needed.
    event.encode_raw(out);
    let key = (!event.event_id.is_empty()).then(|| dedup_key_of_encoding(&out[start..]));
    (stamps, key)
}

/// Completes records after the client's views that [`encode_client_view`]
/// wrote, remembering the encoding of the stamps a request's events share.
///
/// The correlation id, the metadata and the received time come from the
/// request, so consecutive events nearly always carry the same ones; their
/// encoding is kept and copied until one differs. Only the sequence and the
/// published time are encoded per event, in a second `timing` that a decoder
/// merges into the first (protobuf merges a message field that appears twice).
#[derive(Default)]
pub struct StampEncoder {
    /// The shared stamps last encoded (sequence 0, no published time).
    last: Option<Stamps>,
    /// Their encoding.
    shared: Vec<u8>,
}

impl StampEncoder {
    /// Stamps the session's `sequence` and the time the event was
    /// `published` (staged), appends the stamps to `out`, and puts them back
    /// into `event`.
    pub fn append(
        &mut self,
        mut stamps: Stamps,
        event: &mut pb::Event,
        sequence: u64,
        published: prost_types::Timestamp,
        out: &mut Vec<u8>,
    ) {
        if !self.last.as_ref().is_some_and(|last| shares(last, &stamps)) {
            self.remember(&stamps);
        }
        out.extend_from_slice(&self.shared);
        let own = StampTimes { received_at: None, published_at: Some(published) };
        Stamps { sequence, timing: Some(own), ..Default::default() }.encode_raw(out);
        stamps.sequence = sequence;
        stamps.timing.get_or_insert_with(Default::default).published_at = Some(published);
        stamps.restore(event);
    }

    /// Encodes the shared part of `stamps` and keeps a copy to compare with.
    fn remember(&mut self, stamps: &Stamps) {
        let received_at = stamps.timing.as_ref().and_then(|t| t.received_at);
        let shared = Stamps {
            correlation_id: stamps.correlation_id.clone(),
            sequence: 0,
            timing: stamps.timing.as_ref().map(|_| StampTimes { received_at, published_at: None }),
            metadata: stamps.metadata.clone(),
        };
        self.shared.clear();
        shared.encode_raw(&mut self.shared);
        self.last = Some(shared);
    }
}

/// Whether `stamps` share `last`'s correlation id, metadata and received time.
fn shares(last: &Stamps, stamps: &Stamps) -> bool {
    let received = |s: &Stamps| s.timing.as_ref().map(|t| t.received_at);
    last.correlation_id == stamps.correlation_id
        && received(last) == received(stamps)
        && last.metadata == stamps.metadata
}

/// The dedup key of a stamped event: that of its client's view.
pub fn client_key(event: &mut pb::Event) -> Option<DedupKey> {
    let stamps = Stamps::take(event);
    let key = dedup_key(event);
    stamps.restore(event);
    key
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events() -> impl Strategy<Value = pb::Event> {
        let text = || "\\PC{0,12}";
        (
            (text(), text(), text(), text(), any::<u64>()),
            proptest::collection::btree_map(text(), text(), 0..3),
            proptest::option::of((
                any::<f64>(),
                proptest::option::of(any::<i64>()),
                proptest::option::of(0i32..1_000_000),
            )),
        )
            .prop_map(|((event_id, session_id, correlation_id, event_type, sequence), metadata, timing)| {
                pb::Event {
                    event_id,
                    session_id,
                    correlation_id,
                    event_type,
                    sequence,
                    metadata,
                    timing: timing.map(|(client_timestamp_ms, seconds, nanos)| pb::Timing {
                        client_timestamp_ms,
                        received_at: seconds
                            .map(|seconds| prost_types::Timestamp { seconds, nanos: nanos.unwrap_or(0) }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
    }

    /// Gives `event` the stamps a request shares with `other`'s.
    fn same_request(event: &mut pb::Event, other: &pb::Event) {
        event.correlation_id.clone_from(&other.correlation_id);
        event.metadata.clone_from(&other.metadata);
        let received = other.timing.as_ref().and_then(|t| t.received_at);
        if let Some(received) = received {
            event.timing.get_or_insert_with(Default::default).received_at = Some(received);
        } else if let Some(timing) = event.timing.as_mut() {
            timing.received_at = None;
        }
    }

    proptest! {
        /// A record is the client's view followed by the stamps: it decodes to
        /// the stamped event, and its key is the key of the decoded event (what
        /// a restart recomputes). One encoder completes every record, so runs
        /// of events from one request reuse the shared stamps' encoding.
        #[test]
        fn records_decode_to_their_stamped_events_with_the_same_keys(
            events in proptest::collection::vec((events(), 0u8..4, 1u64.., any::<i64>()), 1..8),
        ) {
            let mut encoder = StampEncoder::default();
            let mut previous: Option<pb::Event> = None;
            for (mut event, relation, sequence, published) in events {
                // 0: an event of its own; 1: of the previous event's request;
                // 2 and 3: the same but for one metadata entry or the received time.
                if let (1.., Some(previous)) = (relation, &previous) {
                    same_request(&mut event, previous);
                    match relation {
                        2 => drop(event.metadata.insert("client_correlation_id".into(), "own".into())),
                        3 => event.timing.get_or_insert_with(Default::default).received_at =
                            Some(prost_types::Timestamp { seconds: 7, nanos: sequence as i32 & 0xffff }),
                        _ => {}
                    }
                }
                let mut out = Vec::new();
                let (stamps, key) = encode_client_view(&mut event, &mut out);
                let published = prost_types::Timestamp { seconds: published, nanos: 0 };
                encoder.append(stamps, &mut event, sequence, published, &mut out);
                let mut decoded = pb::Event::decode(out.as_slice()).unwrap();
                // NaN compares unequal to itself, so compare encodings (a
                // BTreeMap encodes its entries in one order).
                prop_assert_eq!(decoded.encode_to_vec(), event.encode_to_vec());
                prop_assert_eq!(decoded.sequence, sequence);
                prop_assert_eq!(decoded.timing.as_ref().and_then(|t| t.published_at), Some(published));
                prop_assert_eq!(client_key(&mut decoded), key);
                prop_assert_eq!(client_key(&mut event), key);
                previous = Some(event);
            }
        }
    }
}

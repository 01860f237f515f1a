//! The server's stamps on a stored event, apart from the client's view of it.
//!
//! A record is the encoding of the event as the client sent it, followed by
//! the encoding of the server's stamps (sequence, correlation id, metadata,
//! and the received and published times). Protobuf keeps a scalar's last
//! value and merges repeated message and map fields, so the two decode as the
//! stamped event, the log encodes each event once, and the dedup key hashes
//! the client's view (what a retry resends). This module owns that split and
//! the key of a stamped event; it must never assign a stamp's value (the edges
//! and the pump do) or keep state.

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
        let timing = event.timing.as_mut().map(|t| StampTimes {
            received_at: t.received_at.take(),
            published_at: t.published_at.take(),
        });
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
/// stamps taken out of it (to be put back by [`append_stamps`]) and its dedup key.
pub fn encode_client_view(event: &mut pb::Event, out: &mut Vec<u8>) -> (Stamps, Option<DedupKey>) {
    let stamps = Stamps::take(event);
    let start = out.len();
    // `encode_raw` skips `encode`'s capacity check, which walks the whole
    // event once more for its length; a `Vec` grows as needed.
    event.encode_raw(out);
    let key = (!event.event_id.is_empty()).then(|| dedup_key_of_encoding(&out[start..]));
    (stamps, key)
}

/// Appends `stamps` to the client's view encoded in `out`, and puts them back into `event`.
pub fn append_stamps(stamps: Stamps, event: &mut pb::Event, out: &mut Vec<u8>) {
    stamps.encode_raw(out);
    stamps.restore(event);
}

/// Completes a record in `out` after the client's view that
/// [`encode_client_view`] wrote: the session's `sequence` and the time it was
/// published (staged) are stamped, and the stamps appended.
pub fn append_log_stamps(
    mut stamps: Stamps,
    event: &mut pb::Event,
    sequence: u64,
    published: prost_types::Timestamp,
    out: &mut Vec<u8>,
) {
    stamps.sequence = sequence;
    stamps.timing.get_or_insert_with(Default::default).published_at = Some(published);
    append_stamps(stamps, event, out);
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

    proptest! {
        /// A record is the client's view followed by the stamps: it decodes to
        /// the stamped event, and its key is the key of the decoded event (what
        /// a restart recomputes).
        #[test]
        fn a_record_decodes_to_the_stamped_event_with_the_same_key(mut event in events(), sequence in 1u64.., published in any::<i64>()) {
            let mut out = Vec::new();
            let (mut stamps, key) = encode_client_view(&mut event, &mut out);
            stamps.sequence = sequence;
            stamps.timing.get_or_insert_with(Default::default).published_at = Some(prost_types::Timestamp { seconds: published, nanos: 0 });
            append_stamps(stamps, &mut event, &mut out);
            let mut decoded = pb::Event::decode(out.as_slice()).unwrap();
            // NaN compares unequal to itself, so compare encodings (a BTreeMap
            // encodes its entries in one order).
            prop_assert_eq!(decoded.encode_to_vec(), event.encode_to_vec());
            prop_assert_eq!(decoded.sequence, sequence);
            prop_assert_eq!(client_key(&mut decoded), key);
            prop_assert_eq!(client_key(&mut event), key);
        }
    }
}

//! The server's stamps on a stored event, apart from the client's view of it.
//!
//! A record is the encoding of the event as the client sent it, followed by
//! the encoding of the server's stamps (sequence, correlation id, metadata,
//! and the received and published times). Protobuf keeps a scalar's last
//! value and merges repeated message and map fields, so the two decode as the
//! stamped event, the log encodes each event once, and the dedup key hashes
//! the client's view (what a retry resends). The stamps a request's events
//! share ([`RequestStamps`]) are kept once per request and written into each
//! record, never copied into each event. This module owns that split and the
//! key of a stamped event; it must never assign a stamp's value (the edges and
//! the pump do) or keep state of its own (a [`StampEncoder`] belongs to its
//! caller).

use crate::dedup::{dedup_key, dedup_key_of_encoding, DedupKey};
use jimbus_proto::events as pb;
use jimbus_proto::wire::{self, Write};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The metadata key under which an event keeps its envelope's batch id.
pub const BATCH_ID_KEY: &str = "batch_id";

/// The stamps every event of one request shares: set once by the edge that
/// took the request and shared by its events (an `Arc` each), so that none
/// is copied per event. [`RequestStamps::apply`] says what they mean; the
/// [`StampEncoder`] writes exactly that into each record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestStamps {
    /// The request's id: every event's `correlation_id`.
    pub correlation_id: String,
    /// When the server received the request: every event's `timing.received_at`.
    pub received_at: prost_types::Timestamp,
    /// The envelope's batch id, every event's `metadata["batch_id"]`; empty
    /// when the request named none (the event's own entry, if any, is kept).
    pub batch_id: String,
}

impl RequestStamps {
    /// Stamps `event` in place, as its record is stamped.
    pub fn apply(&self, event: &mut pb::Event) {
        event.correlation_id.clone_from(&self.correlation_id);
        event.timing.get_or_insert_with(Default::default).received_at = Some(self.received_at);
        if !self.batch_id.is_empty() {
            event.metadata.insert(BATCH_ID_KEY.into(), self.batch_id.clone());
        }
    }

    /// How many metadata entries stamping adds to `metadata`.
    pub fn added_entries(&self, metadata: &BTreeMap<String, String>) -> usize {
        usize::from(!self.batch_id.is_empty() && !metadata.contains_key(BATCH_ID_KEY))
    }

    /// The most bytes stamping adds to an event's encoding.
    pub fn added_bytes(&self) -> usize {
        // A timing the event already has grows by its received time alone, but
        // its length prefix may take up to two more bytes.
        let mut shared = Vec::with_capacity(64 + self.correlation_id.len() + self.batch_id.len());
        SharedStamps { request: self, metadata: &BTreeMap::new() }.write(&mut shared);
        shared.len() + 2
    }
}

/// The stamps an event with its own `metadata` shares with the rest of its
/// `request`: all but the sequence and the published time. Written from the
/// borrowed parts, as prost writes the `Stamps` they make (a test compares
/// the bytes); a `Stamps` built to encode copied the ids and the batch
/// id's map entry, four allocations per request, twice.
struct SharedStamps<'a> {
    /// The request's stamps.
    request: &'a RequestStamps,
    /// The event's own metadata, into which the batch id goes.
    metadata: &'a BTreeMap<String, String>,
}

impl Write for SharedStamps<'_> {
    fn write(&self, buf: &mut Vec<u8>) {
        /// `StampTimes` holding only `received_at` (field 4).
        struct ReceivedAt<'a>(&'a prost_types::Timestamp);
        impl Write for ReceivedAt<'_> {
            fn write(&self, buf: &mut Vec<u8>) {
                buf.push(0x22);
                wire::nested(buf, self.0);
            }
        }
        let entry = |buf: &mut Vec<u8>, key: &str, value: &str| {
            buf.push(0x52); // `Stamps.metadata`, field 10: one map entry.
            wire::nested(buf, &wire::TextEntry(key, value));
        };
        if !self.request.correlation_id.is_empty() {
            buf.push(0x2a); // `Stamps.correlation_id`, field 5.
            wire::text(buf, &self.request.correlation_id);
        }
        buf.push(0x4a); // `Stamps.timing`, field 9.
        wire::nested(buf, &ReceivedAt(&self.request.received_at));
        // The map's entries in key order, the batch id's among them in place
        // of the event's own entry under its key.
        let batch_id = Some(self.request.batch_id.as_str()).filter(|id| !id.is_empty());
        let mut batch_pending = batch_id;
        for (key, value) in self.metadata {
            if let Some(id) = batch_pending.filter(|_| key.as_str() >= BATCH_ID_KEY) {
                entry(buf, BATCH_ID_KEY, id);
                batch_pending = None;
            }
            if batch_id.is_none() || key != BATCH_ID_KEY {
                entry(buf, key, value);
            }
        }
        if let Some(id) = batch_pending {
            entry(buf, BATCH_ID_KEY, id);
        }
    }
}

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
fn encode_client_view(event: &mut pb::Event, out: &mut Vec<u8>) -> (Stamps, Option<DedupKey>) {
    let stamps = Stamps::take(event);
    let start = out.len();
    // prost's bytes, written in one pass (`jimbus_proto::wire`): prost's own
    // encoder walks each nested message again for its length at every level.
    event.write(out);
    let key = (!event.event_id.is_empty()).then(|| dedup_key_of_encoding(&out[start..]));
    (stamps, key)
}

/// Encodes records ([`StampEncoder::append_record`]): the client's view of an
/// event, then its stamps, remembering the encoding of the stamps a request's
/// events share.
///
/// The request's stamps and the event's own metadata are the same for
/// consecutive events nearly always, so their encoding is kept and copied
/// until one differs. Only the sequence and the published time are encoded
/// per event, in a second `timing` that a decoder merges into the first
/// (protobuf merges a message field that appears twice).
#[derive(Default)]
pub struct StampEncoder {
    /// The request and the event metadata whose shared stamps were last encoded.
    last: Option<(Arc<RequestStamps>, BTreeMap<String, String>)>,
    /// Their encoding.
    shared: Vec<u8>,
}

impl StampEncoder {
    /// Appends to `out` the stamps of `event`'s record: its `request`'s, its
    /// own metadata, the session's `sequence` and the time it was `published`
    /// (staged). The record decodes as `event` stamped by
    /// [`RequestStamps::apply`]; `event` itself gets back its own stamps with
    /// the sequence and the published time, not the request's.
    fn append(
        &mut self,
        mut stamps: Stamps,
        request: &Arc<RequestStamps>,
        event: &mut pb::Event,
        sequence: u64,
        published: prost_types::Timestamp,
        out: &mut Vec<u8>,
    ) {
        // Two empty maps, the usual case, compared without a call into the
        // B-tree's comparison (about 34 instructions an event).
        let same_metadata = |metadata: &BTreeMap<String, String>| {
            metadata.len() == stamps.metadata.len() && (metadata.is_empty() || *metadata == stamps.metadata)
        };
        let shares = self.last.as_ref().is_some_and(|(last, metadata)| {
            (Arc::ptr_eq(last, request) || **last == **request) && same_metadata(metadata)
        });
        if !shares {
            self.remember(request, &stamps.metadata);
        }
        out.extend_from_slice(&self.shared);
        write_own_stamps(sequence, &published, out);
        stamps.sequence = sequence;
        stamps.timing.get_or_insert_with(Default::default).published_at = Some(published);
        stamps.restore(event);
    }

    /// Appends `event`'s whole record message to `out`, as a shard stores it:
    /// its client's view, then, unless `is_retry` knows the view's dedup key,
    /// its stamps with the sequence `sequence_of` hands out for its session.
    /// `None` for a retry, whose view stays in `out` for
    /// [`record::frame_with`](crate::record::frame_with) to cut back.
    pub fn append_record(
        &mut self,
        event: &mut pb::Event,
        request: &Arc<RequestStamps>,
        published: prost_types::Timestamp,
        out: &mut Vec<u8>,
        is_retry: impl FnOnce(DedupKey) -> bool,
        sequence_of: impl FnOnce(&str) -> u64,
    ) -> Option<RecordMessage> {
        let start = out.len();
        let (own, key) = encode_client_view(event, out);
        if key.is_some_and(is_retry) {
            return None;
        }
        let sequence = sequence_of(&event.session_id);
        self.append(own, request, event, sequence, published, out);
        Some(RecordMessage { key, sequence, len: out.len() - start })
    }

    /// Encodes the stamps `request`'s events with `metadata` share, and keeps
    /// what they came from to compare with.
    fn remember(&mut self, request: &Arc<RequestStamps>, metadata: &BTreeMap<String, String>) {
        self.shared.clear();
        SharedStamps { request, metadata }.write(&mut self.shared);
        self.last = Some((request.clone(), metadata.clone()));
    }
}

/// What [`StampEncoder::append_record`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMessage {
    /// The dedup key of the client's view, when the event has an id.
    pub key: Option<DedupKey>,
    /// The sequence its session gave it.
    pub sequence: u64,
    /// The length of the message, view and stamps.
    pub len: usize,
}

/// Appends prost's encoding of the stamps only this event has, `Stamps {
/// sequence, timing: Some(StampTimes { published_at: Some(published), .. }),
/// .. }`, without building one: a `Stamps` to encode cost as much as the rest
/// of the record's stamps (a test compares the bytes with prost's). Written
/// on the stack and appended at once ([`wire::StackBytes`]).
fn write_own_stamps(sequence: u64, published: &prost_types::Timestamp, out: &mut Vec<u8>) {
    // The sequence (1 + 10 bytes), two keys and lengths (4) and a timestamp.
    let mut tail = wire::StackBytes::<{ 15 + wire::MAX_TIMESTAMP_BYTES }>::new();
    if sequence != 0 {
        tail.push(0x38); // `Stamps.sequence`, field 7, a varint.
        tail.varint(sequence);
    }
    // `Stamps.timing`, field 9, holding `StampTimes.published_at`, field 5.
    tail.nested(0x4a, |timing| timing.nested(0x2a, |at| at.timestamp(published)));
    out.extend_from_slice(tail.as_slice());
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
    use prost::Message;

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

    fn requests() -> impl Strategy<Value = RequestStamps> {
        ("\\PC{0,12}", any::<i64>(), 0i32..1_000_000, prop_oneof![Just(String::new()), "\\PC{1,12}"]).prop_map(
            |(correlation_id, seconds, nanos, batch_id)| RequestStamps {
                correlation_id,
                received_at: prost_types::Timestamp { seconds, nanos },
                batch_id,
            },
        )
    }

    /// Completes `event`'s record with `encoder` and checks what it decodes
    /// to, its key, and what the event keeps.
    fn check(
        encoder: &mut StampEncoder,
        mut event: pb::Event,
        request: &Arc<RequestStamps>,
        sequence: u64,
        published: i64,
    ) -> Result<(), TestCaseError> {
        let published = prost_types::Timestamp { seconds: published, nanos: 0 };
        let with_own = |mut e: pb::Event| {
            e.sequence = sequence;
            e.timing.get_or_insert_with(Default::default).published_at = Some(published);
            e
        };
        let kept = with_own(event.clone());
        let mut stamped = kept.clone();
        request.apply(&mut stamped);
        let mut out = Vec::new();
        let (stamps, key) = encode_client_view(&mut event, &mut out);
        encoder.append(stamps, request, &mut event, sequence, published, &mut out);
        let mut decoded = pb::Event::decode(out.as_slice()).unwrap();
        // NaN compares unequal to itself, so compare encodings (a BTreeMap
        // encodes its entries in one order).
        prop_assert_eq!(decoded.encode_to_vec(), stamped.encode_to_vec());
        prop_assert_eq!(event.encode_to_vec(), kept.encode_to_vec());
        prop_assert_eq!(client_key(&mut decoded), key);
        prop_assert_eq!(client_key(&mut event), key);
        Ok(())
    }

    proptest! {
        /// The stamps of one event are written as prost writes them.
        #[test]
        fn own_stamps_are_prost_bytes(sequence in prop_oneof![Just(0u64), any::<u64>()], seconds: i64, nanos: i32) {
            let published = prost_types::Timestamp { seconds, nanos };
            let own = StampTimes { received_at: None, published_at: Some(published) };
            let expected = Stamps { sequence, timing: Some(own), ..Default::default() }.encode_to_vec();
            let mut written = Vec::new();
            write_own_stamps(sequence, &published, &mut written);
            prop_assert_eq!(written, expected);
        }
    }

    /// The shared stamps as a `Stamps` would hold them, for prost to encode.
    fn shared_stamps(request: &RequestStamps, mut metadata: BTreeMap<String, String>) -> Stamps {
        if !request.batch_id.is_empty() {
            metadata.insert(BATCH_ID_KEY.into(), request.batch_id.clone());
        }
        let timing = Some(StampTimes { received_at: Some(request.received_at), published_at: None });
        Stamps { correlation_id: request.correlation_id.clone(), sequence: 0, timing, metadata }
    }

    proptest! {
        /// The stamps a request's events share are written as prost writes
        /// them, with the batch id's entry in its place among the event's own
        /// (keys before, after and equal to it), and counted by `added_bytes`.
        #[test]
        fn shared_stamps_are_prost_bytes(
            request in requests(),
            metadata in proptest::collection::btree_map(
                prop_oneof![Just("batch_id".to_string()), Just("a".to_string()), Just("z".to_string()), "\\PC{0,12}"],
                "\\PC{0,12}",
                0..4,
            ),
        ) {
            let expected = shared_stamps(&request, metadata.clone()).encode_to_vec();
            let mut written = Vec::new();
            SharedStamps { request: &request, metadata: &metadata }.write(&mut written);
            prop_assert_eq!(written, expected);
            let bare = shared_stamps(&request, BTreeMap::new()).encoded_len();
            prop_assert_eq!(request.added_bytes(), bare + 2);
        }
    }

    proptest! {
        /// A record is the client's view followed by the stamps: it decodes to
        /// the event stamped by its request, and its key is the key of the
        /// decoded event (what a restart recomputes). The event itself keeps
        /// its own stamps. One encoder completes every record, so runs of
        /// events from one request reuse the shared stamps' encoding.
        #[test]
        fn records_decode_to_their_stamped_events_with_the_same_keys(
            events in proptest::collection::vec((events(), requests(), 0u8..5, 1u64.., any::<i64>()), 1..8),
        ) {
            let mut encoder = StampEncoder::default();
            let mut previous: Option<(Arc<RequestStamps>, BTreeMap<String, String>)> = None;
            for (mut event, request, relation, sequence, published) in events {
                // 0: a request of its own; 1: the previous event's request and
                // metadata; 2: the same but for one metadata entry; 3: an equal
                // copy of the previous request; 4: a copy that differs in the
                // received time only.
                let request = match (relation, &previous) {
                    (1.., Some((last, metadata))) => {
                        event.metadata.clone_from(metadata);
                        if relation == 2 {
                            event.metadata.insert("client_correlation_id".into(), format!("own{sequence}"));
                        }
                        let mut copy = (**last).clone();
                        match relation {
                            3 => Arc::new(copy),
                            4 => {
                                copy.received_at.nanos ^= 1;
                                Arc::new(copy)
                            }
                            _ => last.clone(),
                        }
                    }
                    _ => Arc::new(request),
                };
                check(&mut encoder, event.clone(), &request, sequence, published)?;
                previous = Some((request, event.metadata));
            }
        }
    }
}

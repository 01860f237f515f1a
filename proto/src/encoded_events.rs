//! `jimbot.bus.v1.PublishRequest` and `PublishBatchRequest` as the server
//! receives them: their events stay encoded, and counted, until the server
//! has checked their number and granted the memory their decoding takes.
//!
//! Decoded, an event takes at least the size of `Event` (over 600 bytes)
//! however few bytes it was sent in: an empty event is 2 bytes on the wire,
//! so a 4 MB request of them decoded to 1.8 GB before its count could be
//! refused. Reading a request into [`EncodedEvents`] copies its event fields,
//! counts them and adds up the heap each will take decoded
//! ([`crate::decoded_size`]); [`EncodedEvents::decode_events`] decodes them
//! once the caller allows it. Both requests are `repeated Event events = 1`,
//! so one type serves both (see `build.rs`). This module must never judge an
//! event.

use crate::events as pb;
use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// The field number of `events` in both requests.
const EVENTS_FIELD: u32 = 1;

/// A publish request's events, encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedEvents {
    /// The `events` fields as received (key, length and event), in order.
    fields: Vec<u8>,
    /// How many events `fields` holds.
    count: usize,
    /// The heap the events take decoded, beyond their `Event` structs.
    decoded_heap: usize,
}

impl EncodedEvents {
    /// How many events the request holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The heap the events take once decoded, beyond their `Event` structs
    /// (an upper bound, [`crate::decoded_size::event_heap`]).
    pub fn decoded_heap(&self) -> usize {
        self.decoded_heap
    }

    /// Decodes the events.
    pub fn decode_events(&self) -> Result<Vec<pb::Event>, DecodeError> {
        crate::bus::PublishRequest::decode(self.fields.as_slice()).map(|request| request.events)
    }
}

impl Message for EncodedEvents {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.fields);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != EVENTS_FIELD {
            return encoding::skip_field(wire_type, tag, buf, ctx);
        }
        // prost checks the wire type and the length; over tonic's buffer the
        // event is a view of it, copied once here.
        let mut event = bytes::Bytes::new();
        encoding::bytes::merge(wire_type, &mut event, buf, ctx)?;
        encoding::bytes::encode(EVENTS_FIELD, &event, &mut self.fields);
        self.count += 1;
        self.decoded_heap += crate::decoded_size::event_heap(&event);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.fields.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{PublishBatchRequest, PublishRequest};
    use proptest::prelude::*;

    fn event(id: &str, session: &str) -> pb::Event {
        pb::Event {
            event_id: id.into(),
            event_type: "HEARTBEAT".into(),
            session_id: session.into(),
            ..Default::default()
        }
    }

    proptest! {
        /// Whatever a client's generated type sends, the server counts and
        /// decodes the same events, and sends the same bytes on.
        #[test]
        fn requests_decode_to_the_events_sent(ids in proptest::collection::vec("[a-z0-9]{0,12}", 0..20), session in "[a-z]{0,8}") {
            let events: Vec<_> = ids.iter().map(|id| event(id, &session)).collect();
            for wire in [
                PublishRequest { events: events.clone() }.encode_to_vec(),
                PublishBatchRequest { events: events.clone() }.encode_to_vec(),
            ] {
                let encoded = EncodedEvents::decode(wire.as_slice()).unwrap();
                prop_assert_eq!(encoded.count(), events.len());
                prop_assert_eq!(encoded.decode_events().unwrap(), events.clone());
                prop_assert_eq!(encoded.encode_to_vec(), wire);
            }
        }
    }

    #[test]
    fn empty_events_are_counted_without_being_decoded() {
        let wire = [EVENTS_FIELD as u8 * 8 + 2, 0].repeat(200_000);
        let encoded = EncodedEvents::decode(wire.as_slice()).unwrap();
        assert_eq!((encoded.count(), encoded.encoded_len(), encoded.decoded_heap()), (200_000, 400_000, 0));
    }

    #[test]
    fn the_decoded_heap_adds_up_each_events() {
        let events = vec![event("a", "s"), pb::Event { subtype: "x".repeat(100), ..event("b", "s") }];
        let encoded =
            EncodedEvents::decode(PublishRequest { events: events.clone() }.encode_to_vec().as_slice()).unwrap();
        let each: usize = events.iter().map(|e| crate::decoded_size::event_heap(&e.encode_to_vec())).sum();
        assert_eq!(encoded.decoded_heap(), each);
        assert!(each > 100, "the long subtype is counted");
    }

    #[test]
    fn a_bad_field_is_a_decode_error_and_others_are_skipped() {
        // `events` as a varint, and an event longer than the message.
        assert!(EncodedEvents::decode(&[0x08, 0x01][..]).is_err());
        assert!(EncodedEvents::decode(&[0x0a, 0x05, 0x00][..]).is_err());
        // An unknown field 2 (a varint) is skipped, as generated code skips it.
        let encoded = EncodedEvents::decode(&[0x10, 0x07, 0x0a, 0x00][..]).unwrap();
        assert_eq!(encoded.count(), 1);
        // An event whose bytes are not an Event fails when it is decoded.
        let bad = EncodedEvents::decode(&[0x0a, 0x02, 0x0a, 0xff][..]).unwrap();
        assert!(bad.decode_events().is_err());
    }
}

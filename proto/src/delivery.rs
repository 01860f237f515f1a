//! `jimbot.bus.v1.SubscribeResponse` as the server sends it: the body stays the
//! protobuf bytes it was stored as, so a delivery is never decoded and encoded
//! again on its way from the log to a subscriber.
//!
//! On the wire it is exactly a `SubscribeResponse` (a oneof member is an ordinary
//! length-delimited field), so clients decode it with the generated type. The
//! server's `EventBusService` trait names this type in place of the generated
//! one (see `build.rs`). This module must never interpret the body's bytes.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// Which member of `SubscribeResponse.body` the bytes are (the field numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyKind {
    /// A `jimbot.events.v1.Event`.
    #[default]
    Event = 5,
    /// A `jimbot.events.v1.BalatroGameStateEvent`.
    Aggregated = 6,
    /// A `jimbot.bus.v1.DeadLetter`.
    DeadLetter = 7,
}

impl BodyKind {
    fn from_field(field: u32) -> Option<Self> {
        match field {
            5 => Some(Self::Event),
            6 => Some(Self::Aggregated),
            7 => Some(Self::DeadLetter),
            _ => None,
        }
    }
}

/// `Event.sequence`, the one body field a delivery may override.
const EVENT_SEQUENCE_FIELD: u32 = 7;

/// A `SubscribeResponse` whose body is kept encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedDelivery {
    /// The topic's UTF-8 bytes (a view of the stored record where there is one).
    pub topic: Bytes,
    pub partition: u32,
    pub offset: u64,
    pub delivery_count: u32,
    pub kind: BodyKind,
    /// The encoded body message.
    pub body: Bytes,
    /// A sequence to stamp on an `Event` body, for backends that number events
    /// only when they store them. Appended to the body's bytes: protobuf keeps
    /// the last value of a repeated scalar field.
    pub sequence_override: Option<u64>,
}

impl EncodedDelivery {
    fn body_len(&self) -> usize {
        self.body.len() + self.sequence_override.map_or(0, |s| encoding::uint64::encoded_len(EVENT_SEQUENCE_FIELD, &s))
    }
}

impl prost::Message for EncodedDelivery {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.topic.is_empty() {
            encoding::bytes::encode(1, &self.topic, buf);
        }
        if self.partition != 0 {
            encoding::uint32::encode(2, &self.partition, buf);
        }
        if self.offset != 0 {
            encoding::uint64::encode(3, &self.offset, buf);
        }
        if self.delivery_count != 0 {
            encoding::uint32::encode(4, &self.delivery_count, buf);
        }
        encoding::encode_key(self.kind as u32, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.body_len() as u64, buf);
        buf.put_slice(&self.body);
        if let Some(sequence) = self.sequence_override {
            encoding::uint64::encode(EVENT_SEQUENCE_FIELD, &sequence, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::bytes::merge(wire_type, &mut self.topic, buf, ctx),
            2 => encoding::uint32::merge(wire_type, &mut self.partition, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut self.offset, buf, ctx),
            4 => encoding::uint32::merge(wire_type, &mut self.delivery_count, buf, ctx),
            _ => match BodyKind::from_field(tag) {
                Some(kind) => {
                    // A later oneof member replaces an earlier one, as in generated code.
                    self.kind = kind;
                    self.sequence_override = None;
                    encoding::bytes::merge(wire_type, &mut self.body, buf, ctx)
                }
                None => encoding::skip_field(wire_type, tag, buf, ctx),
            },
        }
    }

    fn encoded_len(&self) -> usize {
        let body = self.body_len();
        let optional = [
            (!self.topic.is_empty()).then(|| encoding::bytes::encoded_len(1, &self.topic)),
            (self.partition != 0).then(|| encoding::uint32::encoded_len(2, &self.partition)),
            (self.offset != 0).then(|| encoding::uint64::encoded_len(3, &self.offset)),
            (self.delivery_count != 0).then(|| encoding::uint32::encoded_len(4, &self.delivery_count)),
        ];
        optional.into_iter().flatten().sum::<usize>()
            + encoding::key_len(self.kind as u32)
            + encoding::encoded_len_varint(body as u64)
            + body
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{subscribe_response::Body, DeadLetter, SubscribeResponse};
    use crate::events::{BalatroGameStateEvent, Event};
    use proptest::prelude::*;
    use prost::Message;

    fn event(sequence: u64, session: &str) -> Event {
        Event {
            event_id: "e-1".into(),
            event_type: "SCORING".into(),
            session_id: session.into(),
            sequence,
            ..Default::default()
        }
    }

    fn encoded(kind: BodyKind, body: Vec<u8>, sequence_override: Option<u64>) -> EncodedDelivery {
        EncodedDelivery {
            topic: Bytes::from_static("balatro.s.SCORING".as_bytes()),
            partition: 1,
            offset: 42,
            delivery_count: 2,
            kind,
            body: body.into(),
            sequence_override,
        }
    }

    #[test]
    fn clients_decode_it_as_the_generated_response() {
        let cases = [
            (BodyKind::Event, event(3, "s").encode_to_vec(), Body::Event(event(3, "s"))),
            (
                BodyKind::Aggregated,
                BalatroGameStateEvent::default().encode_to_vec(),
                Body::Aggregated(BalatroGameStateEvent::default()),
            ),
            (
                BodyKind::DeadLetter,
                DeadLetter { reason: "bad".into(), ..Default::default() }.encode_to_vec(),
                Body::DeadLetter(DeadLetter { reason: "bad".into(), ..Default::default() }),
            ),
        ];
        for (kind, bytes, body) in cases {
            let delivery = encoded(kind, bytes, None);
            let wire = delivery.encode_to_vec();
            assert_eq!(wire.len(), delivery.encoded_len());
            let decoded = SubscribeResponse::decode(wire.as_slice()).unwrap();
            let expected = SubscribeResponse {
                topic: "balatro.s.SCORING".into(),
                partition: 1,
                offset: 42,
                delivery_count: 2,
                body: Some(body),
            };
            assert_eq!(decoded, expected);
            assert_eq!(EncodedDelivery::decode(wire.as_slice()).unwrap(), delivery);
        }
    }

    proptest! {
        #[test]
        fn a_sequence_override_replaces_the_stored_sequence(stored in any::<u64>(), stamped in any::<u64>(), session in "[a-z]{0,12}") {
            let delivery = encoded(BodyKind::Event, event(stored, &session).encode_to_vec(), Some(stamped));
            let wire = delivery.encode_to_vec();
            prop_assert_eq!(wire.len(), delivery.encoded_len());
            let decoded = SubscribeResponse::decode(wire.as_slice()).unwrap();
            prop_assert_eq!(decoded.body, Some(Body::Event(event(stamped, &session))));
        }

        #[test]
        fn generated_responses_survive_a_trip_through_it(offset in any::<u64>(), partition in any::<u32>(), count in any::<u32>(), topic in "[a-z.]{0,30}", session in "[a-z]{0,12}") {
            let response = SubscribeResponse { topic, partition, offset, delivery_count: count, body: Some(Body::Event(event(offset, &session))) };
            let through = EncodedDelivery::decode(response.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(SubscribeResponse::decode(through.encode_to_vec().as_slice()).unwrap(), response);
        }
    }
}

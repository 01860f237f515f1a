//! `jimbot.bus.v1.AckRequest` as the server receives it: positions past the
//! schema's `max_items` are counted, not decoded.
//!
//! An empty `AckPosition` is 2 bytes on the wire and 16 decoded, so a 4 MB
//! request of them decoded to 2,000,000 positions (32 MB, and more while
//! the vector grew) before its `max_items=100000` rule refused it; eight at
//! once took the server to 147 MiB. [`CappedAck`] keeps one position more than the rule
//! allows, so the generated check still sees the request as too long and
//! says so in its own words, and skips the rest. This module must never
//! judge a position: the schema's rules do that.

use crate::bus;
use crate::validate::{Validate, Violations};
use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// Positions kept: one past `AckRequest.positions`' `max_items` rule, so that
/// a longer request still breaks it (a test holds the two together).
pub const KEPT_POSITIONS: usize = 100_001;

/// The field number of `AckRequest.positions`.
const POSITIONS_FIELD: u32 = 2;

/// An ack request with at most [`KEPT_POSITIONS`] positions decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CappedAck {
    /// The request, with the first [`KEPT_POSITIONS`] positions sent.
    request: bus::AckRequest,
    /// Positions sent past the kept ones, checked as protobuf and skipped.
    skipped: usize,
}

impl CappedAck {
    /// How many positions the client sent, kept or skipped.
    pub fn positions_sent(&self) -> usize {
        self.request.positions.len() + self.skipped
    }

    /// The request, once it keeps the schema's rules.
    pub fn into_valid(self) -> Result<bus::AckRequest, AckRefused> {
        let sent = self.positions_sent();
        match self.request.validate() {
            Ok(()) => Ok(self.request),
            Err(violations) => Err(AckRefused { violations, too_many: (sent >= KEPT_POSITIONS).then_some(sent) }),
        }
    }
}

/// Why an ack request was refused: the schema's violations, and how many
/// positions were sent when they were over its rule (the rule's words name
/// only the limit, and the request's positions were not all decoded).
#[derive(Debug, thiserror::Error)]
#[error("{violations}{}", too_many.map(|n| format!(" ({n} positions sent)")).unwrap_or_default())]
pub struct AckRefused {
    /// The rules the request broke, in the schema's words.
    pub violations: Violations,
    /// The positions sent, when they were more than the rule allows.
    pub too_many: Option<usize>,
}

impl Message for CappedAck {
    /// Encodes the kept positions only: the server never sends a request on.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.request.encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == POSITIONS_FIELD && self.request.positions.len() >= KEPT_POSITIONS {
            encoding::skip_field(wire_type, tag, buf, ctx)?;
            self.skipped += 1;
            return Ok(());
        }
        self.request.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.request.encoded_len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(positions: usize) -> bus::AckRequest {
        let positions = (0..positions).map(|i| bus::AckPosition { partition: 1, offset: i as u64 }).collect();
        bus::AckRequest { durable_name: "trainer".into(), positions }
    }

    #[test]
    fn the_kept_positions_are_one_past_the_schemas_rule() {
        assert!(request(KEPT_POSITIONS - 1).validate().is_ok());
        let refused = request(KEPT_POSITIONS).validate().unwrap_err();
        assert_eq!(refused.to_string(), format!("positions: max_items={}", KEPT_POSITIONS - 1));
    }

    #[test]
    fn positions_past_the_kept_ones_are_counted_and_refused_in_the_rules_words() {
        // The durable name comes last, after the positions that are skipped.
        let mut wire = [0x12, 0x00].repeat(2 * KEPT_POSITIONS);
        wire.extend_from_slice(&[0x0a, 1, b'x']);
        let ack = CappedAck::decode(wire.as_slice()).unwrap();
        assert_eq!(ack.positions_sent(), 2 * KEPT_POSITIONS);
        assert_eq!(ack.request.positions.len(), KEPT_POSITIONS);
        assert_eq!(ack.request.durable_name, "x");
        let refused = ack.into_valid().unwrap_err();
        let limit = KEPT_POSITIONS - 1;
        assert_eq!(
            refused.to_string(),
            format!("positions: max_items={limit} ({} positions sent)", 2 * KEPT_POSITIONS)
        );
    }

    #[test]
    fn a_refusal_names_the_positions_sent_only_when_they_were_too_many() {
        let mut short_name = request(3);
        short_name.durable_name.clear();
        let refused = CappedAck::decode(short_name.encode_to_vec().as_slice()).unwrap().into_valid().unwrap_err();
        assert_eq!(refused.too_many, None);
        assert!(!refused.to_string().contains("positions sent"), "{refused}");
        let over = CappedAck::decode(request(KEPT_POSITIONS).encode_to_vec().as_slice()).unwrap();
        assert_eq!(over.into_valid().unwrap_err().too_many, Some(KEPT_POSITIONS));
    }

    #[test]
    fn a_skipped_position_must_still_be_protobuf() {
        let mut wire = [0x12, 0x00].repeat(KEPT_POSITIONS);
        wire.extend_from_slice(&[0x12, 0x05, 0x08]);
        assert!(CappedAck::decode(wire.as_slice()).is_err(), "a length past the end");
    }

    proptest! {
        /// Under the cap, the server reads what a generated client sends.
        #[test]
        fn requests_under_the_cap_read_as_sent(
            name in "[a-z]{0,12}",
            positions in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..50),
        ) {
            let positions = positions.into_iter().map(|(partition, offset)| bus::AckPosition { partition, offset }).collect();
            let sent = bus::AckRequest { durable_name: name, positions };
            let ack = CappedAck::decode(sent.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(ack.positions_sent(), sent.positions.len());
            prop_assert_eq!(ack.encode_to_vec(), sent.encode_to_vec());
            prop_assert_eq!(ack.request, sent);
        }
    }
}

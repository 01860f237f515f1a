//! `jimbot.events.v1.Joker`, written by hand rather than generated, so that
//! its name and id are [`CompactString`]s: a joker's name ("Hanging Chad",
//! "Sock and Buskin") and id are almost always at most 24 bytes, which a
//! `CompactString` holds inline. A game state lists every joker in play, so
//! with `String`s each joker cost two allocations on the ingest path (2.6 of
//! the 6.66 allocations per event of `perf/examples/ingest_count`).
//!
//! The encoding is the schema's, byte for byte (`tests/joker.rs` checks it
//! against a prost-derived twin). This module must never change the wire
//! format or the field names the generated code had.

use crate::hand_written::{encode_text, in_field, merge_text, text_len};
use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A joker as the mod describes it.
#[derive(PartialEq, Default, Debug)]
pub struct Joker {
    /// The joker's name (field 1). rule: max_len=256
    pub name: CompactString,
    /// The mod's id for it (field 2). rule: max_len=256
    pub id: CompactString,
    /// 1-based slot, 0 when unknown (field 3). rule: min=0, max=1000
    pub position: i32,
    /// Payload keys the schema does not name (field 15).
    pub extra: Option<crate::free_form::Struct>,
}

impl Clone for Joker {
    fn clone(&self) -> Self {
        Self { name: self.name.clone(), id: self.id.clone(), position: self.position, extra: self.extra.clone() }
    }

    /// Field by field where `self` lies. The derived one built a whole clone
    /// and moved it in, reading back memory just written: a stalled load for
    /// each joker of each game state that aggregation keeps (docs/perf.md,
    /// "Fortieth pass").
    fn clone_from(&mut self, source: &Self) {
        self.name.clone_from(&source.name);
        self.id.clone_from(&source.id);
        self.position = source.position;
        self.extra.clone_from(&source.extra);
    }
}

const NAME: u32 = 1;
const ID: u32 = 2;
const POSITION: u32 = 3;
const EXTRA: u32 = 15;

impl prost::Message for Joker {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_text(NAME, &self.name, false, buf);
        encode_text(ID, &self.id, false, buf);
        if self.position != 0 {
            encoding::int32::encode(POSITION, &self.position, buf);
        }
        if let Some(extra) = &self.extra {
            encoding::message::encode(EXTRA, extra, buf);
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
            NAME => merge_text(&mut self.name, wire_type, buf, ctx).map_err(in_field("Joker", "name")),
            ID => merge_text(&mut self.id, wire_type, buf, ctx).map_err(in_field("Joker", "id")),
            POSITION => {
                encoding::int32::merge(wire_type, &mut self.position, buf, ctx).map_err(in_field("Joker", "position"))
            }
            EXTRA => encoding::message::merge(wire_type, self.extra.get_or_insert_with(Default::default), buf, ctx)
                .map_err(in_field("Joker", "extra")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        text_len(NAME, &self.name, false)
            + text_len(ID, &self.id, false)
            + if self.position != 0 { encoding::int32::encoded_len(POSITION, &self.position) } else { 0 }
            + self.extra.as_ref().map_or(0, |extra| encoding::message::encoded_len(EXTRA, extra))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

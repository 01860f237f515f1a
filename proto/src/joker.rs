//! `jimbot.events.v1.Joker`, written by hand rather than generated, so that
//! its name and id are [`CompactString`]s: a joker's name ("Hanging Chad",
//! "Sock and Buskin") and id are almost always at most 24 bytes, which a
//! `CompactString` holds inline. A game state lists every joker in play, so
//! with `String`s each joker cost two allocations on the ingest path (about
//! 2 of the 6.66 allocations per event of `perf/examples/ingest_count`).
//!
//! The encoding is the schema's, byte for byte (`tests/joker.rs` checks it
//! against a prost-derived twin). This module must never change the wire
//! format or the field names the generated code had.

pub use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A joker as the mod describes it.
#[derive(Clone, PartialEq, Default)]
pub struct Joker {
    /// The joker's name (field 1). rule: max_len=256
    pub name: CompactString,
    /// The mod's id for it (field 2). rule: max_len=256
    pub id: CompactString,
    /// 1-based slot, 0 when unknown (field 3). rule: min=0, max=1000
    pub position: i32,
    /// Payload keys the schema does not name (field 15).
    pub extra: Option<prost_types::Struct>,
}

impl std::fmt::Debug for Joker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joker")
            .field("name", &self.name.as_str())
            .field("id", &self.id.as_str())
            .field("position", &self.position)
            .field("extra", &self.extra)
            .finish()
    }
}

const NAME: u32 = 1;
const ID: u32 = 2;
const POSITION: u32 = 3;
const EXTRA: u32 = 15;

impl prost::Message for Joker {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_text(NAME, &self.name, buf);
        encode_text(ID, &self.id, buf);
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
            NAME => merge_text(&mut self.name, wire_type, buf, ctx).map_err(|e| in_field(e, "name")),
            ID => merge_text(&mut self.id, wire_type, buf, ctx).map_err(|e| in_field(e, "id")),
            POSITION => {
                encoding::int32::merge(wire_type, &mut self.position, buf, ctx).map_err(|e| in_field(e, "position"))
            }
            EXTRA => encoding::message::merge(wire_type, self.extra.get_or_insert_with(Default::default), buf, ctx)
                .map_err(|e| in_field(e, "extra")),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        text_len(NAME, &self.name)
            + text_len(ID, &self.id)
            + if self.position != 0 { encoding::int32::encoded_len(POSITION, &self.position) } else { 0 }
            + self.extra.as_ref().map_or(0, |extra| encoding::message::encoded_len(EXTRA, extra))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A string field, left out when empty (proto3).
fn encode_text(tag: u32, text: &str, buf: &mut impl BufMut) {
    if !text.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(text.len() as u64, buf);
        buf.put_slice(text.as_bytes());
    }
}

fn text_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(text.len() as u64) + text.len()
    }
}

/// Decodes a string field with prost's own checks (wire type, length, UTF-8),
/// then holds it inline when it is short. Only clients decode jokers: the
/// server reads them from JSON.
fn merge_text(
    into: &mut CompactString,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let mut text = String::new();
    encoding::string::merge(wire_type, &mut text, buf, ctx)?;
    *into = CompactString::from(text);
    Ok(())
}

fn in_field(mut error: DecodeError, field: &'static str) -> DecodeError {
    error.push("Joker", field);
    error
}

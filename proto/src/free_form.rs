//! `google.protobuf.Struct`, `Value` and `ListValue` as jimbus holds them:
//! the shape of `prost_types`' (same names, same fields), except that keys
//! and string values are [`CompactString`]s, held inline up to 24 bytes. A
//! payload key the schema does not name lands in an `extra` Struct, and with
//! `String`s each key and each short string value was an allocation on the
//! ingest path (about 1.8 of the 4.06 allocations per event of
//! `perf/examples/ingest_count`).
//!
//! The generated messages use these types through `extern_path` (build.rs).
//! The encoding is the well-known types', byte for byte: `tests/free_form.rs`
//! checks it against `prost_types` on random values. This module must never
//! change the wire format.

use crate::hand_written::{encode_text, in_field, merge_text, text_len};
pub use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, btree_map, message, DecodeContext, WireType};
use prost::DecodeError;
use std::collections::BTreeMap;

/// A JSON object: `google.protobuf.Struct`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Struct {
    /// Its keys and values (field 1, `map<string, Value>`), in key order.
    pub fields: BTreeMap<CompactString, Value>,
}

/// A JSON value: `google.protobuf.Value`; no kind encodes as nothing.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Value {
    /// Which value it is (the oneof `kind`).
    pub kind: Option<value::Kind>,
}

/// A JSON array: `google.protobuf.ListValue`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListValue {
    /// Its elements (field 1).
    pub values: Vec<Value>,
}

/// The oneof of [`Value`].
pub mod value {
    use super::{CompactString, ListValue, Struct};

    /// One JSON value, by the oneof's field numbers.
    #[derive(Clone, PartialEq, Debug)]
    pub enum Kind {
        /// 1: `null` (the `NullValue` enum, whose only value is 0).
        NullValue(i32),
        /// 2
        NumberValue(f64),
        /// 3
        StringValue(CompactString),
        /// 4
        BoolValue(bool),
        /// 5
        StructValue(Struct),
        /// 6
        ListValue(ListValue),
    }
}

use value::Kind;

const FIELDS: u32 = 1;

fn key_encode(tag: u32, key: &CompactString, buf: &mut impl BufMut) {
    encode_text(tag, key, false, buf);
}

fn key_len(tag: u32, key: &CompactString) -> usize {
    text_len(tag, key, false)
}

fn key_merge(
    wire_type: WireType,
    key: &mut CompactString,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    merge_text(key, wire_type, buf, ctx)
}

impl prost::Message for Struct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        btree_map::encode(key_encode, key_len, message::encode, message::encoded_len, FIELDS, &self.fields, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == FIELDS {
            btree_map::merge(key_merge, message::merge, &mut self.fields, buf, ctx)
                .map_err(in_field("Struct", "fields"))
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        btree_map::encoded_len(key_len, message::encoded_len, FIELDS, &self.fields)
    }

    fn clear(&mut self) {
        self.fields.clear();
    }
}

impl prost::Message for ListValue {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message::encode_repeated(FIELDS, &self.values, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == FIELDS {
            message::merge_repeated(wire_type, &mut self.values, buf, ctx).map_err(in_field("ListValue", "values"))
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(FIELDS, &self.values)
    }

    fn clear(&mut self) {
        self.values.clear();
    }
}

impl prost::Message for Value {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // A oneof member is written whatever it holds.
        match &self.kind {
            Some(Kind::NullValue(n)) => encoding::int32::encode(1, n, buf),
            Some(Kind::NumberValue(n)) => encoding::double::encode(2, n, buf),
            Some(Kind::StringValue(s)) => encode_text(3, s, true, buf),
            Some(Kind::BoolValue(b)) => encoding::bool::encode(4, b, buf),
            Some(Kind::StructValue(s)) => message::encode(5, s, buf),
            Some(Kind::ListValue(l)) => message::encode(6, l, buf),
            None => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        merge_kind(&mut self.kind, tag, wire_type, buf, ctx).map_err(in_field("Value", "kind"))
    }

    fn encoded_len(&self) -> usize {
        match &self.kind {
            Some(Kind::NullValue(n)) => encoding::int32::encoded_len(1, n),
            Some(Kind::NumberValue(n)) => encoding::double::encoded_len(2, n),
            Some(Kind::StringValue(s)) => text_len(3, s, true),
            Some(Kind::BoolValue(b)) => encoding::bool::encoded_len(4, b),
            Some(Kind::StructValue(s)) => message::encoded_len(5, s),
            Some(Kind::ListValue(l)) => message::encoded_len(6, l),
            None => 0,
        }
    }

    fn clear(&mut self) {
        self.kind = None;
    }
}

/// Merges one member of the oneof as prost does: a message member merges
/// into the same member already there, anything else replaces it.
fn merge_kind(
    kind: &mut Option<Kind>,
    tag: u32,
    wire_type: WireType,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    match tag {
        1 => {
            let mut n = 0;
            encoding::int32::merge(wire_type, &mut n, buf, ctx)?;
            *kind = Some(Kind::NullValue(n));
        }
        2 => {
            let mut n = 0.0;
            encoding::double::merge(wire_type, &mut n, buf, ctx)?;
            *kind = Some(Kind::NumberValue(n));
        }
        3 => {
            let mut s = CompactString::default();
            merge_text(&mut s, wire_type, buf, ctx)?;
            *kind = Some(Kind::StringValue(s));
        }
        4 => {
            let mut b = false;
            encoding::bool::merge(wire_type, &mut b, buf, ctx)?;
            *kind = Some(Kind::BoolValue(b));
        }
        5 => match kind {
            Some(Kind::StructValue(s)) => message::merge(wire_type, s, buf, ctx)?,
            _ => {
                let mut s = Struct::default();
                message::merge(wire_type, &mut s, buf, ctx)?;
                *kind = Some(Kind::StructValue(s));
            }
        },
        6 => match kind {
            Some(Kind::ListValue(l)) => message::merge(wire_type, l, buf, ctx)?,
            _ => {
                let mut l = ListValue::default();
                message::merge(wire_type, &mut l, buf, ctx)?;
                *kind = Some(Kind::ListValue(l));
            }
        },
        _ => encoding::skip_field(wire_type, tag, buf, ctx)?,
    }
    Ok(())
}

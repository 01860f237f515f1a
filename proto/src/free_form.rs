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

pub use crate::fields::Fields;
use crate::hand_written::{encode_text, in_field, merge_text, text_len};
pub use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, message, DecodeContext, WireType};
use prost::DecodeError;

/// A JSON object: `google.protobuf.Struct`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Struct {
    /// Its keys and values (field 1, `map<string, Value>`), in key order.
    pub fields: Fields<Value>,
}

/// A JSON value: `google.protobuf.Value`; no kind encodes as nothing.
#[derive(PartialEq, Default, Debug)]
pub struct Value {
    /// Which value it is (the oneof `kind`).
    pub kind: Option<value::Kind>,
}

impl Clone for Value {
    fn clone(&self) -> Self {
        Value { kind: self.kind.clone() }
    }

    /// Into this value's own memory where it is of the source's kind: a
    /// string, a Struct's list of entries or a list's elements are reused, not
    /// freed and allocated again (`Fields::copy_from`). A scalar is written
    /// where it lies: the derived `clone_from` built a clone and moved it in,
    /// reading back what it had just written (docs/perf.md, "Fortieth pass").
    fn clone_from(&mut self, source: &Self) {
        match (&mut self.kind, &source.kind) {
            (Some(Kind::StringValue(to)), Some(Kind::StringValue(from))) => to.clone_from(from),
            (Some(Kind::StructValue(to)), Some(Kind::StructValue(from))) => to.fields.clone_from(&from.fields),
            (Some(Kind::ListValue(to)), Some(Kind::ListValue(from))) => to.values.clone_from(&from.values),
            (to, Some(Kind::NumberValue(number))) => *to = Some(Kind::NumberValue(*number)),
            (to, Some(Kind::BoolValue(flag))) => *to = Some(Kind::BoolValue(*flag)),
            (to, from) => to.clone_from(from),
        }
    }
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

/// One entry of the map, as the wire holds it: a message of the key (field 1)
/// and the value (field 2), either left out when it is its default, as
/// prost's map functions write and read it.
#[derive(Default)]
struct Entry {
    key: CompactString,
    value: Value,
}

impl Entry {
    /// The entry's fields, without its own key and length.
    fn body_len(key: &str, value: &Value) -> usize {
        text_len(1, key, false) + if value.kind.is_some() { message::encoded_len(2, value) } else { 0 }
    }

    /// The entry as the field of its Struct: key, length, fields.
    fn encode(key: &str, value: &Value, buf: &mut impl BufMut) {
        encoding::encode_key(FIELDS, WireType::LengthDelimited, buf);
        encoding::encode_varint(Self::body_len(key, value) as u64, buf);
        Self::encode_body(key, value, buf);
    }

    fn encode_body(key: &str, value: &Value, buf: &mut impl BufMut) {
        encode_text(1, key, false, buf);
        if value.kind.is_some() {
            message::encode(2, value, buf);
        }
    }
}

/// Read as a nested message: `message::merge` checks the length and the
/// recursion limit as prost's map merge does.
impl prost::Message for Entry {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        Self::encode_body(&self.key, &self.value, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => merge_text(&mut self.key, wire_type, buf, ctx),
            2 => message::merge(wire_type, &mut self.value, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        Self::body_len(&self.key, &self.value)
    }

    fn clear(&mut self) {
        *self = Entry::default();
    }
}

impl prost::Message for Struct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (key, value) in &self.fields {
            Entry::encode(key, value, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == FIELDS {
            let mut entry = Entry::default();
            // prost's map merge reads an entry whatever the field's wire type
            // says (a length first); so does this, to accept and refuse what
            // prost_types does.
            message::merge(WireType::LengthDelimited, &mut entry, buf, ctx).map_err(in_field("Struct", "fields"))?;
            self.fields.insert(entry.key, entry.value);
            Ok(())
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        let entry_len = |body: usize| encoding::key_len(FIELDS) + encoding::encoded_len_varint(body as u64) + body;
        self.fields.iter().map(|(key, value)| entry_len(Entry::body_len(key, value))).sum()
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

//! What reading builds, and how much memory that takes: the protobuf
//! `Value`s and `Struct`s [`Reader::value`] builds for keys that have no
//! typed field, and the count of every heap byte a reading builds beyond
//! copies of its strings, which the caller may cap ([`Reader::allow_built`]).
//!
//! The count exists because a body's length says little about its decoded
//! size: a list of empty objects builds fifty times its bytes. A caller that
//! grants memory before work (the ingest) grants an allowance, and the
//! reading stops when it is spent instead of building past it. This module
//! must never build anything it has not counted first.

use super::{JsonError, Kind, Reader};
use jimbus_proto::decoded_size::SLACK;
use jimbus_proto::free_form::{value::Kind as ValueKind, CompactString, Fields, ListValue, Struct, Value};

/// Memory of one `Value`: its own 32 bytes in a list or map that grows by
/// doubling, and the allocator's rounding; a one-element list allocates four.
pub const HELD_PER_VALUE: usize = 160;

/// Memory of one `Struct` beyond its values' [`HELD_PER_VALUE`]: its
/// fields' room, eight entries of 56 bytes taken at the first key
/// (`jimbus_proto::fields`), with the allocator's rounding. At the ninth key
/// a `BTreeMap` takes over while that room is still held, which the values'
/// share covers.
pub const HELD_PER_STRUCT: usize = 512;

/// The room a typed list takes at its first element (`adapt::list`), so that
/// a game's five jokers are one allocation; a `Vec` grown from nothing takes
/// four, then eight.
pub const FIRST_LIST_SLOTS: usize = 8;

/// The most memory the slot of element `index` in a growing `Vec<T>` can
/// add: summed over a list's elements, it covers the list's peak. Past its
/// first [`FIRST_LIST_SLOTS`], the list grows by doubling, as the gRPC edge's
/// decoded sizes model it (`jimbus_proto::decoded_size`: old and new buffer
/// both live); the first element counts its own slack too.
pub fn list_slot_bytes<T>(index: usize) -> usize {
    let slots = if index == 0 { FIRST_LIST_SLOTS + SLACK } else { SLACK };
    slots * std::mem::size_of::<T>()
}

impl Reader<'_> {
    /// Heap bytes built so far (see `built_bytes`).
    pub fn built_bytes(&self) -> usize {
        self.built_bytes
    }

    /// Counts `bytes` of heap the caller is about to build from this input.
    /// Past the ceiling set by [`Reader::allow_built`] it fails, as a syntax
    /// error so that the reading stops at once; the caller tells it apart
    /// with [`Reader::past_allowance`].
    #[inline]
    pub fn note_built(&mut self, bytes: usize) -> Result<(), Box<JsonError>> {
        self.built_bytes += bytes;
        if self.built_bytes > self.built_ceiling {
            return Err(self.syntax("the value needs more memory than was allowed for it"));
        }
        Ok(())
    }

    /// Allows `bytes` more to be built from here on, and no more.
    pub fn allow_built(&mut self, bytes: usize) {
        self.built_ceiling = self.built_bytes.saturating_add(bytes);
    }

    /// Whether the reading stopped because it needed more than it was allowed.
    pub fn past_allowance(&self) -> bool {
        self.built_bytes > self.built_ceiling
    }

    /// Reads one value into a protobuf `Value`, for keys that have no typed field.
    pub fn value(&mut self) -> Result<Value, Box<JsonError>> {
        self.note_built(HELD_PER_VALUE)?;
        let kind = match self.peek()? {
            Kind::Object => ValueKind::StructValue(self.object_value()?),
            Kind::Array => {
                let mut values = Vec::new();
                self.array(|r, _| {
                    values.push(r.value()?);
                    Ok::<_, Box<JsonError>>(())
                })?;
                ValueKind::ListValue(ListValue { values })
            }
            Kind::String => ValueKind::StringValue(CompactString::from(self.string()?)),
            // Protobuf JSON cannot write inf or nan in a Value, so they are kept
            // as the strings it writes for such doubles (DIALECT.md).
            Kind::Number => match self.number()? {
                n if n.is_finite() => ValueKind::NumberValue(n),
                n if n.is_nan() => ValueKind::StringValue("NaN".into()),
                n => ValueKind::StringValue(if n > 0.0 { "Infinity" } else { "-Infinity" }.into()),
            },
            Kind::Bool => ValueKind::BoolValue(self.boolean()?),
            Kind::Null => {
                self.null()?;
                ValueKind::NullValue(0)
            }
        };
        Ok(Value { kind: Some(kind) })
    }

    /// Reads an object into a protobuf `Struct`.
    pub fn object_value(&mut self) -> Result<Struct, Box<JsonError>> {
        self.note_built(HELD_PER_STRUCT)?;
        let mut fields = Fields::default();
        self.object(|r, key| {
            fields.insert(CompactString::from(key), r.value()?);
            Ok::<_, Box<JsonError>>(())
        })?;
        Ok(Struct { fields })
    }
}

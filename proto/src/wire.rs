//! Writes the protobuf encoding of event messages in one pass: each nested
//! message goes after a one-byte length that is widened, moving the message
//! up, only when it came out longer than 127 bytes. prost's `encode` instead
//! computes a nested message's length before writing it, walking it once
//! more for every level above it, which was most of the cost of encoding an
//! event on the ingest path (docs/perf.md, "Ninth pass").
//!
//! It owns [`Write`], implemented for the schema's event messages by code
//! that `build.rs` generates (`build/wire.rs`) and here for the well-known
//! types they hold. It must never write bytes other than prost's for the same
//! message: records, dedup keys and golden files compare encodings, and
//! proto/tests/wire.rs checks it on random messages of every type.

use crate::free_form::{value::Kind, ListValue, Struct, Value};
use prost_types::Timestamp;

/// A message that can write its fields (without a length before them).
pub trait Write {
    /// Appends the encoding of the message's fields to `buf`.
    fn write(&self, buf: &mut Vec<u8>);
}

/// Appends `value` as a varint. Not prost's `encode_varint`, which writes
/// each byte through `BufMut` (perf/callgrind-ingest.sh: 10,174 instructions
/// per event with it against 9,923); nor a stack array copied in, as
/// `widen` needs (10,844).
#[inline]
pub fn varint(buf: &mut Vec<u8>, value: u64) {
    varint_bytes(value, |byte| buf.push(byte));
}

/// Gives `push` the bytes of `value` as a varint, in order: what [`varint`]
/// and [`StackBytes::varint`] write, each to its own buffer.
#[inline(always)]
fn varint_bytes(mut value: u64, mut push: impl FnMut(u8)) {
    while value >= 0x80 {
        push(value as u8 | 0x80);
        value >>= 7;
    }
    push(value as u8);
}

/// Appends a string field's length and bytes (its key is already written).
#[inline]
pub fn text(buf: &mut Vec<u8>, text: &str) {
    varint(buf, text.len() as u64);
    buf.extend_from_slice(text.as_bytes());
}

/// Appends a nested message's length and fields (its key is already written).
#[inline]
pub fn nested(buf: &mut Vec<u8>, message: &impl Write) {
    let at = buf.len();
    buf.push(0);
    message.write(buf);
    let len = buf.len() - at - 1;
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => buf[at] = short,
        _ => widen(buf, at, len),
    }
}

/// Replaces the one-byte placeholder at `at` with the varint of `len`,
/// moving the `len` bytes after it up to make room. The varint is built on
/// the stack: [`varint`] appends to the end of `buf`, and a `Vec` for it was
/// an allocation per long message.
fn widen(buf: &mut Vec<u8>, at: usize, len: usize) {
    let (mut prefix, mut width, mut rest) = ([0u8; 10], 0, len as u64);
    while rest >= 0x80 {
        prefix[width] = rest as u8 | 0x80;
        rest >>= 7;
        width += 1;
    }
    prefix[width] = rest as u8;
    width += 1;
    let end = buf.len();
    buf.resize(end + width - 1, 0);
    buf.copy_within(at + 1..end, at + width);
    buf[at..at + width].copy_from_slice(&prefix[..width]);
}

/// An entry of a `map<string, string>`: key 1 and value 2, each left out
/// when empty, as prost writes map entries.
pub struct TextEntry<'a>(pub &'a str, pub &'a str);

impl Write for TextEntry<'_> {
    fn write(&self, buf: &mut Vec<u8>) {
        if !self.0.is_empty() {
            buf.push(0x0a);
            text(buf, self.0);
        }
        if !self.1.is_empty() {
            buf.push(0x12);
            text(buf, self.1);
        }
    }
}

/// An entry of a `Struct`'s `map<string, Value>`: the value is left out when
/// it holds no kind (prost compares it with the default).
struct ValueEntry<'a>(&'a str, &'a Value);

impl Write for ValueEntry<'_> {
    fn write(&self, buf: &mut Vec<u8>) {
        if !self.0.is_empty() {
            buf.push(0x0a);
            text(buf, self.0);
        }
        if self.1.kind.is_some() {
            buf.push(0x12);
            nested(buf, self.1);
        }
    }
}

impl Write for Struct {
    fn write(&self, buf: &mut Vec<u8>) {
        for (key, value) in &self.fields {
            buf.push(0x0a);
            nested(buf, &ValueEntry(key, value));
        }
    }
}

impl Write for Value {
    fn write(&self, buf: &mut Vec<u8>) {
        match &self.kind {
            Some(Kind::NullValue(n)) => {
                buf.push(0x08);
                varint(buf, *n as i64 as u64);
            }
            Some(Kind::NumberValue(n)) => {
                buf.push(0x11);
                buf.extend_from_slice(&n.to_le_bytes());
            }
            Some(Kind::StringValue(s)) => {
                buf.push(0x1a);
                text(buf, s);
            }
            Some(Kind::BoolValue(b)) => buf.extend_from_slice(&[0x20, u8::from(*b)]),
            Some(Kind::StructValue(s)) => {
                buf.push(0x2a);
                nested(buf, s);
            }
            Some(Kind::ListValue(l)) => {
                buf.push(0x32);
                nested(buf, l);
            }
            None => {}
        }
    }
}

impl Write for ListValue {
    fn write(&self, buf: &mut Vec<u8>) {
        for value in &self.values {
            buf.push(0x0a);
            nested(buf, value);
        }
    }
}

impl Write for Timestamp {
    /// Through [`StackBytes`], which writes a timestamp for the stamps too
    /// (the same instructions per event as pushing its bytes one by one).
    fn write(&self, buf: &mut Vec<u8>) {
        let mut time = StackBytes::<MAX_TIMESTAMP_BYTES>::new();
        time.timestamp(self);
        buf.extend_from_slice(time.as_slice());
    }
}

/// The longest [`StackBytes::timestamp`]: two keys and two ten-byte varints
/// (negative seconds and nanos).
pub const MAX_TIMESTAMP_BYTES: usize = 22;

/// A few bytes of encoding written on the stack, then appended to a record
/// at once: pushed byte by byte onto the record's `Vec`, each byte's capacity
/// check cost about as much as the rest of writing it (docs/perf.md,
/// "Twenty-ninth pass"). Writing past `N` bytes panics: callers size `N`
/// for the longest encoding they write.
pub struct StackBytes<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackBytes<N> {
    pub fn new() -> Self {
        Self { bytes: [0; N], len: 0 }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    pub fn varint(&mut self, value: u64) {
        varint_bytes(value, |byte| self.push(byte));
    }

    /// A message field `key` whose body `write` writes, with its length
    /// before it in one byte: the body must be shorter than 128 bytes.
    pub fn nested(&mut self, key: u8, write: impl FnOnce(&mut Self)) {
        self.push(key);
        let at = self.len;
        self.push(0);
        write(self);
        let len = self.len - at - 1;
        assert!(len < 0x80, "a nested message of {len} bytes has a longer length");
        self.bytes[at] = len as u8;
    }

    /// A `Timestamp`'s fields.
    pub fn timestamp(&mut self, time: &Timestamp) {
        if time.seconds != 0 {
            self.push(0x08);
            self.varint(time.seconds as u64);
        }
        if time.nanos != 0 {
            self.push(0x10);
            self.varint(time.nanos as i64 as u64);
        }
    }
}

impl<const N: usize> Default for StackBytes<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The generated `Write` of every event message.
#[allow(clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/wire.rs"));
}

//! The protobuf encoding of a `string` field held in a [`CompactString`]
//! (inline up to 24 bytes), for the hand-written messages ([`crate::joker`],
//! [`crate::free_form`]): prost's `string` functions take a `String`. It must
//! never encode differently from them.

use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A field with its key; an empty string is left out (proto3), unless `always`
/// (a oneof member or a map key, which are written whatever they hold).
pub(crate) fn encode(tag: u32, text: &str, always: bool, buf: &mut impl BufMut) {
    if always || !text.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(text.len() as u64, buf);
        buf.put_slice(text.as_bytes());
    }
}

/// The bytes [`encode`] writes.
pub(crate) fn encoded_len(tag: u32, text: &str, always: bool) -> usize {
    if always || !text.is_empty() {
        encoding::key_len(tag) + encoding::encoded_len_varint(text.len() as u64) + text.len()
    } else {
        0
    }
}

/// Decodes a string field with prost's own checks (wire type, length,
/// UTF-8), then holds it inline when it is short. Only clients decode these
/// messages on a hot path: the server builds them from JSON.
pub(crate) fn merge(
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

//! What the hand-written messages ([`crate::joker`], [`crate::free_form`])
//! share: the protobuf encoding of a `string` field held in a
//! [`CompactString`] (inline up to 24 bytes), since prost's `string`
//! functions take a `String`, and the field path of a decoding error. It must
//! never encode differently from prost.

use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A field with its key; an empty string is left out (proto3), unless `always`
/// (a oneof member, which is written whatever it holds). A map's empty key is
/// left out by prost's map functions before this is called.
pub(crate) fn encode_text(tag: u32, text: &str, always: bool, buf: &mut impl BufMut) {
    if always || !text.is_empty() {
        encoding::encode_key(tag, WireType::LengthDelimited, buf);
        encoding::encode_varint(text.len() as u64, buf);
        buf.put_slice(text.as_bytes());
    }
}

/// The bytes [`encode_text`] writes.
pub(crate) fn text_len(tag: u32, text: &str, always: bool) -> usize {
    if always || !text.is_empty() {
        encoding::key_len(tag) + encoding::encoded_len_varint(text.len() as u64) + text.len()
    } else {
        0
    }
}

/// Decodes a string field with prost's own checks (wire type, length,
/// UTF-8), then holds it inline when it is short. Only clients decode these
/// messages on a hot path: the server builds them from JSON.
pub(crate) fn merge_text(
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

/// Names `message.field` in a decoding error's path, as prost's derived code does.
pub(crate) fn in_field(message: &'static str, field: &'static str) -> impl FnOnce(DecodeError) -> DecodeError {
    move |mut error| {
        error.push(message, field);
        error
    }
}

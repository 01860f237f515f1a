//! An upper bound of the heap a message takes once prost decodes it, read
//! from its encoding without decoding it.
//!
//! A decoded message can take far more memory than its encoding: an empty
//! `Value` in a list is 2 bytes on the wire and 32 in a `Vec` that grows by
//! doubling, and an empty `Joker` in a list is 2 bytes for a struct of about
//! 100. The gRPC edge grants memory before it decodes a publish, so it needs
//! the decoded size first: [`heap_of`] walks the fields with the schema's
//! descriptors and the sizes of the generated types, and counts what each
//! would allocate. This module must never allocate in proportion to its input
//! or decide anything about a message but its size.

use prost::encoding::{decode_key, decode_varint, WireType};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

include!(concat!(env!("OUT_DIR"), "/sizes.rs"));

/// A list's elements, at most: its capacity grows by doubling, and while it
/// grows the old buffer and the new, twice as large, are both live. (The
/// JSON reader's count of what it builds uses the same model.)
pub const SLACK: usize = 3;

/// A list's first element: a `Vec` first allocates room for four.
pub const FIRST_SLOTS: usize = 4;

/// The least a non-empty string or byte string allocates.
const MIN_STRING: usize = 8;

/// Entries of a B-tree node: a map's first entry allocates a whole leaf.
const NODE_ENTRIES: usize = 11;

/// A B-tree node besides its entries: its header, and an internal node's
/// twelve child pointers.
const NODE_EXTRA: usize = 16 + 12 * 8;

/// prost refuses to decode deeper nesting; what lies deeper is charged by its
/// bytes (see [`UNREAD_PER_BYTE`]).
const MAX_DEPTH: u32 = 100;

/// What a byte the walk cannot read is charged: past [`MAX_DEPTH`], or
/// malformed. prost refuses such a message, and what it allocated before the
/// bad byte is counted already; this keeps the figure generous all the same.
const UNREAD_PER_BYTE: usize = 64;

/// A scalar in a repeated field or a map: at most 8 bytes.
const SCALAR_BYTES: usize = 8;

/// A message type no table knows (none, while the tables cover the schemas):
/// more than any generated type.
const UNKNOWN_TYPE_BYTES: usize = 1024;

/// The heap a `message` encoded as `bytes` takes decoded, beyond its own struct.
pub fn heap_of(message: &MessageDescriptor, bytes: &[u8]) -> usize {
    walk(message, bytes, 0)
}

/// [`heap_of`] an encoded `jimbot.events.v1.Event`.
pub fn event_heap(bytes: &[u8]) -> usize {
    static EVENT: std::sync::OnceLock<MessageDescriptor> = std::sync::OnceLock::new();
    let event = EVENT.get_or_init(|| {
        crate::descriptor_pool().get_message_by_name("jimbot.events.v1.Event").expect("the schema defines Event")
    });
    heap_of(event, bytes)
}

/// The size of the Rust type of `message`, generated or well known.
pub fn type_size(message: &MessageDescriptor) -> usize {
    use std::mem::size_of;
    generated_size(message.full_name())
        .or(match message.full_name() {
            "google.protobuf.Struct" => Some(size_of::<crate::free_form::Struct>()),
            "google.protobuf.Value" => Some(size_of::<crate::free_form::Value>()),
            "google.protobuf.ListValue" => Some(size_of::<crate::free_form::ListValue>()),
            "google.protobuf.Timestamp" => Some(size_of::<prost_types::Timestamp>()),
            "google.protobuf.Duration" => Some(size_of::<prost_types::Duration>()),
            _ => None,
        })
        .unwrap_or(UNKNOWN_TYPE_BYTES)
}

fn walk(message: &MessageDescriptor, mut bytes: &[u8], depth: u32) -> usize {
    if depth > MAX_DEPTH {
        return bytes.len() * UNREAD_PER_BYTE;
    }
    let mut heap = 0;
    // List and map fields whose first element (a whole first allocation) is counted.
    let mut begun: Vec<u32> = Vec::new();
    while !bytes.is_empty() {
        let unread = bytes.len() * UNREAD_PER_BYTE;
        let Ok((number, wire_type)) = decode_key(&mut bytes) else { return heap + unread };
        let field = message.get_field(number);
        let in_list = field.as_ref().is_some_and(|f| f.is_list());
        let skipped = match wire_type {
            WireType::LengthDelimited => match length_delimited(&mut bytes) {
                Some(payload) => {
                    if let Some(field) = &field {
                        heap += field_heap(field, payload, depth, &mut begun);
                    }
                    true
                }
                None => false,
            },
            WireType::Varint => decode_varint(&mut bytes).is_ok(),
            WireType::SixtyFourBit => advance(&mut bytes, 8),
            WireType::ThirtyTwoBit => advance(&mut bytes, 4),
            WireType::StartGroup | WireType::EndGroup => false,
        };
        if !skipped {
            return heap + unread;
        }
        if in_list && wire_type != WireType::LengthDelimited {
            // One element of an unpacked repeated scalar.
            heap += SCALAR_BYTES * slots(number, &mut begun, FIRST_SLOTS);
        }
    }
    heap
}

/// What one length-delimited field's `payload` takes decoded.
fn field_heap(field: &FieldDescriptor, payload: &[u8], depth: u32, begun: &mut Vec<u32>) -> usize {
    let number = field.number();
    let own = if field.is_map() {
        let first = !begun.contains(&number);
        element_size(field) * slots(number, begun, NODE_ENTRIES) + if first { NODE_EXTRA } else { 0 }
    } else if field.is_list() && matches!(field.kind(), Kind::Message(_) | Kind::String | Kind::Bytes) {
        element_size(field) * slots(number, begun, FIRST_SLOTS)
    } else {
        // A singular message lives inline in its parent (prost boxes none here).
        0
    };
    own + match field.kind() {
        Kind::Message(child) => walk(&child, payload, depth + 1),
        Kind::String | Kind::Bytes if payload.is_empty() => 0,
        Kind::String | Kind::Bytes => payload.len().max(MIN_STRING),
        // Packed scalars: a byte each at least, 8 bytes each at most.
        _ => payload.len() * SCALAR_BYTES * SLACK + SCALAR_BYTES * FIRST_SLOTS,
    }
}

/// How many element sizes one more element of field `number` may take: the
/// first allocation's `first` slots, then [`SLACK`].
fn slots(number: u32, begun: &mut Vec<u32>, first: usize) -> usize {
    if begun.contains(&number) {
        SLACK
    } else {
        begun.push(number);
        first
    }
}

/// The size of one element of `field` held in a list, or of one entry of a map.
fn element_size(field: &FieldDescriptor) -> usize {
    match field.kind() {
        Kind::Message(entry) if field.is_map() => entry.fields().map(|f| element_size(&f)).sum(),
        Kind::Message(message) => type_size(&message),
        Kind::String => std::mem::size_of::<String>(),
        Kind::Bytes => std::mem::size_of::<Vec<u8>>(),
        _ => SCALAR_BYTES,
    }
}

/// The payload of a length-delimited field at the front of `bytes`, when it is whole.
fn length_delimited<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(bytes).ok()?).ok()?;
    let payload = bytes.get(..len)?;
    *bytes = &bytes[len..];
    Some(payload)
}

fn advance(bytes: &mut &[u8], n: usize) -> bool {
    match bytes.get(n..) {
        Some(rest) => {
            *bytes = rest;
            true
        }
        None => false,
    }
}

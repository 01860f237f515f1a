//! The hand-written `Struct`, `Value` and `ListValue` (src/free_form.rs)
//! against `prost_types`' generated ones: the same bytes out, the same values
//! back, and the same refusals, on random nested values.

use jimbus_proto::free_form as ours;
use proptest::prelude::*;
use prost::Message;
use prost_types::value::Kind;

/// Any `prost_types::Value`: every kind, empty and long strings and keys
/// (the inline limit is 24 bytes), nesting four deep.
fn value() -> impl Strategy<Value = prost_types::Value> {
    let leaf = prop_oneof![
        Just(None),
        (0..3i32).prop_map(|n| Some(Kind::NullValue(n))),
        any::<f64>().prop_map(|n| Some(Kind::NumberValue(n))),
        ".{0,40}".prop_map(|s| Some(Kind::StringValue(s))),
        any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
    ]
    .prop_map(|kind| prost_types::Value { kind });
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|values| Some(Kind::ListValue(prost_types::ListValue { values }))),
            prop::collection::btree_map(".{0,30}", inner, 0..6)
                .prop_map(|fields| Some(Kind::StructValue(prost_types::Struct { fields }))),
        ]
        .prop_map(|kind| prost_types::Value { kind })
    })
}

fn generated_struct() -> impl Strategy<Value = prost_types::Struct> {
    prop::collection::btree_map(".{0,30}", value(), 0..14).prop_map(|fields| prost_types::Struct { fields })
}

/// The same value built directly in our types, not through the wire.
fn converted(v: &prost_types::Value) -> ours::Value {
    use ours::value::Kind as K;
    let kind = v.kind.as_ref().map(|kind| match kind {
        Kind::NullValue(n) => K::NullValue(*n),
        Kind::NumberValue(n) => K::NumberValue(*n),
        Kind::StringValue(s) => K::StringValue(s.as_str().into()),
        Kind::BoolValue(b) => K::BoolValue(*b),
        Kind::StructValue(s) => K::StructValue(converted_struct(s)),
        Kind::ListValue(l) => K::ListValue(ours::ListValue { values: l.values.iter().map(converted).collect() }),
    });
    ours::Value { kind }
}

fn converted_struct(s: &prost_types::Struct) -> ours::Struct {
    ours::Struct { fields: s.fields.iter().map(|(k, v)| (k.as_str().into(), converted(v))).collect() }
}

/// Equal as values, NaN included (a NaN number is not equal to itself).
fn same_bytes(a: &impl Message, b: &impl Message) -> bool {
    a.encode_to_vec() == b.encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encodes_as_prost_types_does(s in generated_struct(), v in value()) {
        let (our_s, our_v) = (converted_struct(&s), converted(&v));
        prop_assert_eq!(our_s.encode_to_vec(), s.encode_to_vec());
        prop_assert_eq!(our_s.encoded_len(), s.encoded_len());
        prop_assert_eq!(our_v.encode_to_vec(), v.encode_to_vec());
        prop_assert_eq!(our_v.encoded_len(), v.encoded_len());
        let mut written = Vec::new();
        jimbus_proto::wire::Write::write(&our_s, &mut written);
        prop_assert_eq!(written, s.encode_to_vec());
    }

    #[test]
    fn decodes_what_prost_types_encodes(s in generated_struct()) {
        let bytes = s.encode_to_vec();
        let ours = ours::Struct::decode(bytes.as_slice()).expect("decodes");
        prop_assert!(same_bytes(&ours, &converted_struct(&s)));
        let back = prost_types::Struct::decode(ours.encode_to_vec().as_slice()).expect("decodes");
        prop_assert!(same_bytes(&back, &s));
    }

    #[test]
    fn refuses_what_prost_types_refuses(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        prop_assert_eq!(ours::Struct::decode(bytes.as_slice()).is_ok(), prost_types::Struct::decode(bytes.as_slice()).is_ok());
        prop_assert_eq!(ours::Value::decode(bytes.as_slice()).is_ok(), prost_types::Value::decode(bytes.as_slice()).is_ok());
        if let (Ok(a), Ok(b)) = (ours::Value::decode(bytes.as_slice()), prost_types::Value::decode(bytes.as_slice())) {
            prop_assert!(same_bytes(&a, &b));
        }
    }

    /// Two encodings one after the other merge as prost merges them: a
    /// message member into the same member, anything else replaced, map
    /// entries with the same key replaced.
    /// `Value::clone_from` reuses what a value holds and writes scalars in
    /// place: whatever the two kinds, it leaves what `clone` makes.
    #[test]
    fn clone_from_leaves_what_clone_makes(source in value(), over in value()) {
        let source = converted(&source);
        let mut into = converted(&over);
        into.clone_from(&source);
        prop_assert!(same_bytes(&into, &source.clone()), "{into:?} after clone_from {source:?}");
    }

    #[test]
    fn merges_as_prost_types_does(a in value(), b in value(), s in generated_struct(), t in generated_struct()) {
        let (mut values, mut structs) = (a.encode_to_vec(), s.encode_to_vec());
        values.extend(b.encode_to_vec());
        structs.extend(t.encode_to_vec());
        let ours_v = ours::Value::decode(values.as_slice()).expect("decodes");
        let theirs_v = prost_types::Value::decode(values.as_slice()).expect("decodes");
        prop_assert!(same_bytes(&ours_v, &theirs_v));
        let ours_s = ours::Struct::decode(structs.as_slice()).expect("decodes");
        let theirs_s = prost_types::Struct::decode(structs.as_slice()).expect("decodes");
        prop_assert!(same_bytes(&ours_s, &theirs_s));
    }
}

#[test]
fn nesting_past_prost_s_limit_is_refused_as_prost_types_refuses_it() {
    let mut value = prost_types::Value { kind: Some(Kind::NumberValue(1.0)) };
    for _ in 0..120 {
        value = prost_types::Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: vec![value] })) };
    }
    let bytes = value.encode_to_vec();
    assert!(prost_types::Value::decode(bytes.as_slice()).is_err());
    assert!(ours::Value::decode(bytes.as_slice()).is_err());
}

#[test]
fn a_string_that_is_not_utf8_is_refused() {
    // Value { string_value: [0xff] }
    let bytes = [0x1a, 0x01, 0xff];
    assert!(ours::Value::decode(&bytes[..]).is_err());
    assert!(prost_types::Value::decode(&bytes[..]).is_err());
}

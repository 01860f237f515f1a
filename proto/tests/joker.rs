//! The hand-written `Joker` (src/joker.rs) against a twin that prost derives
//! from the schema's field list, as the generated code was: the same bytes
//! out, the same values back, and the same refusals.

use jimbus_proto::events as pb;
use proptest::prelude::*;
use prost::Message;

/// `jimbot.events.v1.Joker` as prost-build generated it.
#[derive(Clone, PartialEq, prost::Message)]
struct Generated {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(int32, tag = "3")]
    position: i32,
    #[prost(message, optional, tag = "15")]
    extra: Option<prost_types::Struct>,
}

fn extra() -> impl Strategy<Value = Option<prost_types::Struct>> {
    let value = prop_oneof![
        any::<f64>().prop_map(|n| prost_types::value::Kind::NumberValue(if n.is_nan() { 0.0 } else { n })),
        ".{0,40}".prop_map(prost_types::value::Kind::StringValue),
        any::<bool>().prop_map(prost_types::value::Kind::BoolValue),
    ];
    let fields = prop::collection::btree_map(".{0,12}", value, 0..4);
    prop::option::of(fields.prop_map(|fields| prost_types::Struct {
        fields: fields.into_iter().map(|(k, v)| (k, prost_types::Value { kind: Some(v) })).collect(),
    }))
}

/// Short and long names (the inline limit is 24 bytes), any UTF-8, empty.
fn joker() -> impl Strategy<Value = Generated> {
    (".{0,40}", "[a-z0-9]{0,30}", any::<i32>(), extra()).prop_map(|(name, id, position, extra)| Generated {
        name,
        id,
        position,
        extra,
    })
}

fn hand_written(g: &Generated) -> pb::Joker {
    // The free-form types are hand-written too (tests/free_form.rs compares them).
    let extra =
        g.extra.as_ref().map(|s| jimbus_proto::free_form::Struct::decode(s.encode_to_vec().as_slice()).unwrap());
    pb::Joker { name: g.name.as_str().into(), id: g.id.as_str().into(), position: g.position, extra }
}

proptest! {
    #[test]
    fn encodes_as_the_generated_type_does(g in joker()) {
        let joker = hand_written(&g);
        let bytes = joker.encode_to_vec();
        prop_assert_eq!(&bytes, &g.encode_to_vec());
        prop_assert_eq!(joker.encoded_len(), bytes.len());
        let mut written = Vec::new();
        jimbus_proto::wire::Write::write(&joker, &mut written);
        prop_assert_eq!(written, bytes);
    }

    #[test]
    fn decodes_what_the_generated_type_encodes(g in joker(), unknown in any::<u64>()) {
        let mut bytes = g.encode_to_vec();
        // A field the schema does not name (tag 9, varint) is skipped.
        prost::encoding::uint64::encode(9, &unknown, &mut bytes);
        let joker = pb::Joker::decode(bytes.as_slice()).expect("decodes");
        prop_assert_eq!(&joker, &hand_written(&g));
        prop_assert_eq!(Generated::decode(joker.encode_to_vec().as_slice()).expect("decodes"), g);
    }

    /// `clone_from` is written by hand, field by field: it must leave what
    /// `clone` makes, over any joker, short strings or long.
    #[test]
    fn clone_from_leaves_what_clone_makes(g in joker(), over in joker()) {
        let (source, mut into) = (hand_written(&g), hand_written(&over));
        into.clone_from(&source);
        prop_assert_eq!(&into, &source.clone());
        prop_assert_eq!(into, source);
    }

    #[test]
    fn refuses_what_the_generated_type_refuses(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(pb::Joker::decode(bytes.as_slice()).is_ok(), Generated::decode(bytes.as_slice()).is_ok());
    }
}

#[test]
fn a_name_that_is_not_utf8_is_refused_with_its_field() {
    let bytes = [0x0a, 0x02, 0xff, 0xfe];
    let error = pb::Joker::decode(&bytes[..]).expect_err("invalid UTF-8");
    assert!(error.to_string().contains("Joker.name"), "{error}");
}

#[test]
fn a_later_field_replaces_an_earlier_one_and_clear_empties() {
    let first = Generated { name: "Joker".into(), id: "1".into(), position: 2, extra: None };
    let second = Generated { name: "a name longer than twenty-four bytes".into(), ..Default::default() };
    let mut bytes = first.encode_to_vec();
    bytes.extend(second.encode_to_vec());
    let mut joker = pb::Joker::decode(bytes.as_slice()).expect("decodes");
    assert_eq!((joker.name.as_str(), joker.id.as_str(), joker.position), (second.name.as_str(), "1", 2));
    joker.clear();
    assert_eq!(joker, pb::Joker::default());
}

/// The schema's `Joker` has exactly the fields the hand-written type knows:
/// a field added to the schema must be added to src/joker.rs too, or it would
/// be skipped when decoded and never written.
#[test]
fn the_schema_s_joker_has_the_fields_the_hand_written_one_has() {
    let joker = jimbus_proto::descriptor_pool().get_message_by_name("jimbot.events.v1.Joker").expect("in the schema");
    let fields: Vec<(u32, String)> = joker.fields().map(|f| (f.number(), f.name().to_string())).collect();
    let known = [(1, "name"), (2, "id"), (3, "position"), (15, "extra")].map(|(n, name)| (n, name.to_string()));
    assert_eq!(fields, known, "update proto/src/joker.rs to the schema");
}

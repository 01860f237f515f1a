//! `jimbus_proto::wire` writes prost's bytes exactly: random messages of
//! every event type, built field by field from the schema's descriptors (so a
//! field added to the schema is covered without changing this test), encode
//! the same through both. Strings of up to 16 KiB cross the one- and two-byte
//! lengths that the writer widens after the fact.

use jimbus_proto::events as pb;
use jimbus_proto::wire::Write;
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

/// splitmix64: the random choices of one case, from its proptest seed.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }

    fn text(&mut self) -> String {
        let len = match self.below(10) {
            0 => self.pick(&[16_383, 16_384, 16_400]),
            1..=3 => self.pick(&[0, 1, 126, 127, 128, 129]),
            _ => self.below(300) as usize,
        };
        let alphabet = ['a', 'Z', '0', ' ', 'é', '🃏'];
        (0..len).map(|_| self.pick(&alphabet)).collect()
    }
}

fn single(kind: &Kind, choices: &mut Choices, depth: u32) -> Option<Value> {
    let edge_ints = [0i64, 1, -1, 127, 128, i32::MIN as i64, i32::MAX as i64, i64::MIN, i64::MAX];
    Some(match kind {
        Kind::Double => Value::F64(match choices.below(6) {
            0 => f64::from_bits(choices.next()),
            _ => choices.pick(&[0.0, -0.0, f64::NAN, f64::INFINITY, 1.5, -1e308]),
        }),
        Kind::Int32 => Value::I32(choices.pick(&edge_ints) as i32 ^ (choices.below(2) as i32 * choices.next() as i32)),
        Kind::Int64 => Value::I64(choices.pick(&edge_ints)),
        Kind::Uint32 => Value::U32(choices.pick(&[0, 1, 127, 128, u32::MAX])),
        Kind::Uint64 => Value::U64(choices.pick(&edge_ints) as u64),
        Kind::Bool => Value::Bool(choices.below(2) == 1),
        Kind::String => Value::String(choices.text()),
        Kind::Enum(_) => Value::EnumNumber(choices.pick(&[0, 1, 2, 3, 99, -5])),
        Kind::Message(message) if depth > 0 => Value::Message(random_message(message, choices, depth - 1)),
        Kind::Message(_) => return None,
        other => panic!("the event schema has no {other:?} field; give this test a value for it"),
    })
}

/// A message with about two thirds of its fields set, at random.
fn random_message(descriptor: &MessageDescriptor, choices: &mut Choices, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        if choices.below(3) == 0 {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else { unreachable!("a map's kind is its entry") };
            let value_kind = entry.map_entry_value_field().kind();
            let entries = (0..choices.below(4))
                .filter_map(|_| Some((MapKey::String(choices.text()), single(&value_kind, choices, depth)?)))
                .collect();
            Value::Map(entries)
        } else if field.is_list() {
            Value::List((0..choices.below(4)).filter_map(|_| single(&field.kind(), choices, depth)).collect())
        } else {
            match single(&field.kind(), choices, depth) {
                Some(value) => value,
                None => continue,
            }
        };
        message.set_field(&field, value);
    }
    message
}

/// Builds a random `T` and checks that both encoders write the same bytes.
fn check<T: Message + Default + Write>(seed: u64) -> Result<(), TestCaseError> {
    let name = format!("jimbot.events.v1.{}", std::any::type_name::<T>().rsplit("::").next().unwrap());
    let descriptor = jimbus_proto::descriptor_pool().get_message_by_name(&name).expect("a schema message");
    let random = random_message(&descriptor, &mut Choices(seed), 7);
    let message = T::decode(random.encode_to_vec().as_slice()).expect("prost decodes what prost-reflect wrote");
    let mut written = Vec::new();
    message.write(&mut written);
    let expected = message.encode_to_vec();
    prop_assert!(written == expected, "seed {seed}: {} bytes written, prost wrote {}", written.len(), expected.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn events_are_written_as_prost_writes_them(seed in any::<u64>()) {
        check::<pb::Event>(seed)?;
    }

    #[test]
    fn the_aggregated_types_are_too(seed in any::<u64>()) {
        check::<pb::BalatroGameStateEvent>(seed)?;
        check::<pb::TriggerEvent>(seed)?;
        check::<pb::CascadeInfo>(seed)?;
    }
}

#[test]
fn a_long_nested_message_gets_a_wider_length() {
    let message = "x".repeat(200);
    let event = pb::Event {
        payload: Some(pb::event::Payload::Error(pb::ErrorEvent { message, ..Default::default() })),
        ..Default::default()
    };
    let mut written = Vec::new();
    event.write(&mut written);
    assert_eq!(&written[..5], &[0x8a, 0x02, 0xcb, 0x01, 0x0a], "key, 203 as two bytes, then the message's field");
    assert_eq!(written, event.encode_to_vec());
}

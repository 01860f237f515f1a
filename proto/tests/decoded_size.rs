//! `decoded_size::heap_of` bounds what prost really allocates: events with
//! free-form values, lists of empty messages and maps are decoded under a
//! counting allocator, and the most memory live while each decodes must stay
//! within the walk's figure.

use jimbus_proto::decoded_size::heap_of;
use jimbus_proto::events as pb;
use jimbus_proto::free_form::value::Kind;
use proptest::prelude::*;
use prost::Message;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most heap live while `bytes` decodes as an Event, beyond what was live before.
fn decoding_peak(bytes: &[u8]) -> usize {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let event = pb::Event::decode(bytes).expect("a valid event");
    let peak = PEAK.load(Relaxed) - before;
    drop(event);
    peak
}

fn event_descriptor() -> prost_reflect::MessageDescriptor {
    jimbus_proto::descriptor_pool().get_message_by_name("jimbot.events.v1.Event").unwrap()
}

fn free_form(
    fields: std::collections::BTreeMap<String, jimbus_proto::free_form::Value>,
) -> jimbus_proto::free_form::Struct {
    jimbus_proto::free_form::Struct { fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect() }
}

fn value() -> impl Strategy<Value = jimbus_proto::free_form::Value> {
    let leaf = prop_oneof![
        Just(Kind::NullValue(0)),
        any::<f64>().prop_map(Kind::NumberValue),
        "[a-z]{0,40}".prop_map(|s: String| Kind::StringValue(s.into())),
        any::<bool>().prop_map(Kind::BoolValue),
    ]
    .prop_map(|kind| jimbus_proto::free_form::Value { kind: Some(kind) });
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..40)
                .prop_map(|values| Kind::ListValue(jimbus_proto::free_form::ListValue { values })),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..12)
                .prop_map(|fields| Kind::StructValue(free_form(fields))),
        ]
        .prop_map(|kind| jimbus_proto::free_form::Value { kind: Some(kind) })
    })
}

fn event() -> impl Strategy<Value = pb::Event> {
    let jokers = proptest::collection::vec(("[a-z]{0,10}", "[a-z0-9]{0,4}"), 0..30);
    let metadata = proptest::collection::btree_map("[a-z]{1,8}", "[a-z]{0,16}", 0..200);
    let extra = proptest::collection::btree_map("[a-z]{0,8}", value(), 0..6);
    (jokers, metadata, extra).prop_map(|(jokers, metadata, extra)| {
        let jokers = jokers
            .into_iter()
            .map(|(name, id)| pb::Joker { name: name.into(), id: id.into(), ..Default::default() })
            .collect();
        let state = pb::GameStateEvent { jokers, phase: "SHOP".into(), ..Default::default() };
        pb::Event {
            event_type: "GAME_STATE".into(),
            metadata,
            extra: Some(free_form(extra)),
            payload: Some(pb::event::Payload::GameState(state)),
            ..Default::default()
        }
    })
}

proptest! {
    #[test]
    fn the_walk_bounds_what_decoding_allocates(event in event()) {
        let bytes = event.encode_to_vec();
        let estimate = heap_of(&event_descriptor(), &bytes);
        let peak = decoding_peak(&bytes);
        prop_assert!(peak <= estimate, "decoding took {} bytes, the walk said {}", peak, estimate);
    }
}

#[test]
fn lists_of_empty_messages_are_counted_at_their_decoded_size() {
    let empty_values = vec![jimbus_proto::free_form::Value::default(); 100_000];
    let list = jimbus_proto::free_form::Value {
        kind: Some(Kind::ListValue(jimbus_proto::free_form::ListValue { values: empty_values })),
    };
    let jokers = vec![pb::Joker::default(); 100_000];
    let state = pb::GameStateEvent { jokers, ..Default::default() };
    let event = pb::Event {
        extra: Some(jimbus_proto::free_form::Struct { fields: [("l".into(), list)].into() }),
        payload: Some(pb::event::Payload::GameState(state)),
        ..Default::default()
    };
    let bytes = event.encode_to_vec();
    let (estimate, peak) = (heap_of(&event_descriptor(), &bytes), decoding_peak(&bytes));
    assert!(peak <= estimate, "decoding took {peak} bytes, the walk said {estimate}");
    assert!(estimate <= 4 * peak, "the walk ({estimate}) stays near what decoding took ({peak})");
    assert!(peak > 20 * bytes.len(), "{} bytes decoded to {peak}: the case the walk exists for", bytes.len());
}

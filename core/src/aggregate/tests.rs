//! Checks of the aggregator's private accounting that its public API cannot
//! see: the game state's size, bounded by its merges within a window and
//! measured exactly at the window's end. This module must never test what
//! `core/tests/aggregate.rs` can through the public API.

use super::*;
use jimbus_proto::events::event::Payload;
use jimbus_proto::free_form::{value::Kind as ValueKind, Struct, Value};
use proptest::prelude::*;

/// Extra keys: strings, numbers and one level of nesting, so that replacing
/// a key can shrink or grow its entry.
fn extra() -> impl Strategy<Value = Option<Struct>> {
    let leaf = prop_oneof![
        "[a-z ]{0,12}".prop_map(|s: String| ValueKind::StringValue(s.into())),
        any::<f64>().prop_map(ValueKind::NumberValue),
    ];
    let value = prop_oneof![
        leaf.clone(),
        proptest::collection::btree_map("[a-z]{0,4}", leaf.prop_map(|k| Value { kind: Some(k) }), 0..3)
            .prop_map(|fields| ValueKind::StructValue(free_form(fields))),
    ];
    let fields = proptest::collection::btree_map("[a-c]{0,2}", value.prop_map(|k| Value { kind: Some(k) }), 0..4);
    proptest::option::of(fields.prop_map(free_form))
}

fn free_form(fields: std::collections::BTreeMap<String, Value>) -> Struct {
    Struct { fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect() }
}

/// A partial game state, as the mod sends one: any field may be absent.
fn game_state() -> impl Strategy<Value = pb::GameStateEvent> {
    let joker = ("[A-Za-z ]{0,16}", "[0-9]{0,3}", 0..6i32).prop_map(|(name, id, position)| pb::Joker {
        name: name.into(),
        id: id.into(),
        position,
        extra: None,
    });
    let card = ("[0-9AJQK]{0,2}", "[HDCS]?").prop_map(|(rank, suit)| pb::Card { rank, suit, ..Default::default() });
    (
        "[A-Z_]{0,14}",
        proptest::option::of(0..100i32),
        proptest::option::of(any::<f64>()),
        proptest::collection::vec(joker, 0..4),
        proptest::collection::vec(card, 0..3),
        extra(),
    )
        .prop_map(|(phase, ante, money, jokers, hand, extra)| pb::GameStateEvent {
            phase,
            ante,
            money,
            jokers,
            hand,
            extra,
            ..Default::default()
        })
}

/// The exact figure the bound stands for.
fn measured(state: &Option<pb::GameStateEvent>) -> usize {
    state.as_ref().map_or(0, |s| size_of::<pb::GameStateEvent>() + s.encoded_len())
}

proptest! {
    #[test]
    fn a_merge_is_no_longer_than_its_two_states(into in game_state(), from in game_state()) {
        let bound = into.encoded_len() + from.encoded_len();
        let mut merged = into;
        merge_game_state(&mut merged, &from);
        prop_assert!(merged.encoded_len() <= bound, "{} > {bound}", merged.encoded_len());
    }

    #[test]
    fn the_state_size_bounds_the_state_and_is_exact_after_each_window(
        steps in proptest::collection::vec((game_state(), any::<bool>(), any::<bool>()), 1..24),
    ) {
        let config = AggregateConfig::default();
        let window = config.window;
        let mut agg = Aggregator::new(config).unwrap();
        let (mut out, mut now) = (Vec::new(), Duration::ZERO);
        for (seq, (state, window_ends, from_shard)) in steps.into_iter().enumerate() {
            let mut event = pb::Event {
                event_type: "GAME_STATE".into(),
                payload: Some(Payload::GameState(state)),
                ..Default::default()
            };
            if from_shard {
                // As a shard offers it, with the length of the encoding it wrote.
                let stamped = Stamped { encoded_len: Some(event.encoded_len()), ..Default::default() };
                agg.offer_arrived("s", seq as u64 + 1, &mut event, stamped, now, now, &mut out).unwrap();
            } else {
                agg.offer("s", seq as u64 + 1, &mut event, now, &mut out).unwrap();
            }
            let slot = agg.by_name["s"];
            let sess = agg.sessions[slot].as_ref().unwrap();
            prop_assert!(sess.state_bytes >= measured(&sess.state));
            if window_ends {
                now += window;
                agg.tick(now, &mut out);
                let sess = agg.sessions[slot].as_ref().unwrap();
                prop_assert_eq!(sess.state_bytes, measured(&sess.state));
            }
            prop_assert_eq!(agg.bytes_held(), agg.sessions[slot].as_ref().unwrap().bytes());
        }
    }

    #[test]
    fn a_state_stays_within_its_limit_or_restarts_from_the_incoming_one(
        states in proptest::collection::vec(game_state(), 1..24),
        limit in 40usize..400,
    ) {
        let config = AggregateConfig { max_state_bytes: limit, ..Default::default() };
        let mut agg = Aggregator::new(config).unwrap();
        let mut out = Vec::new();
        let mut restarts = 0;
        for (seq, state) in states.into_iter().enumerate() {
            let incoming = state.encoded_len();
            let mut event =
                pb::Event { event_type: "GAME_STATE".into(), payload: Some(Payload::GameState(state)), ..Default::default() };
            agg.offer("s", seq as u64 + 1, &mut event, Duration::ZERO, &mut out).unwrap();
            let merged = agg.game_state("s").unwrap().encoded_len();
            // Longer than the limit only when it is the incoming state alone.
            prop_assert!(merged <= limit || merged == incoming, "{merged} > {limit}, incoming {incoming}");
            let restarted = agg.stats().game_states_restarted;
            prop_assert!(restarted - restarts <= 1);
            restarts = restarted;
        }
    }
}

/// A merge writes an update over what the kept state holds, where it lies:
/// the kept phase, jokers and nested extra values keep their memory (the
/// session's shard allocated it), and nothing of the update is taken (its
/// event goes back to the shard that decoded it, which frees it there).
#[test]
fn a_merge_copies_into_the_memory_the_state_holds() {
    let joker = |name: &str| pb::Joker { name: name.into(), ..Default::default() };
    let text = |text: &str| Value { kind: Some(ValueKind::StringValue(text.into())) };
    let nested = |name: &str| {
        let inner = free_form([("name".to_string(), text(name)), ("id".to_string(), text("j1"))].into());
        Value { kind: Some(ValueKind::StructValue(inner)) }
    };
    let state = |phase: &str, name: &str| pb::GameStateEvent {
        phase: phase.into(),
        jokers: vec![joker(name), joker("Joker")],
        extra: Some(free_form([("joker".to_string(), nested(name)), ("n".to_string(), text("1"))].into())),
        ..Default::default()
    };
    let nested_entry = |state: &pb::GameStateEvent| match &state.extra.as_ref().unwrap().fields["joker"].kind {
        Some(ValueKind::StructValue(inner)) => inner.fields.values().next().unwrap() as *const Value,
        _ => unreachable!("the joker key holds a Struct"),
    };
    let mut kept = state("SELECTING_HAND", "Blueprint");
    let memory = |state: &pb::GameStateEvent| (state.phase.as_ptr(), state.jokers.as_ptr(), nested_entry(state));
    let before = memory(&kept);
    let update = pb::GameStateEvent {
        extra: Some(free_form([("joker".to_string(), nested("Triboulet"))].into())),
        ..state("SHOP", "Triboulet")
    };
    merge_game_state(&mut kept, &update);
    assert_eq!(memory(&kept), before);
    let mut expected = state("SHOP", "Triboulet");
    expected.extra.as_mut().unwrap().fields.insert("n".into(), text("1"));
    assert_eq!(kept, expected, "the update's values, and the kept extra key it does not name");
}

proptest! {
    /// The reused buffer spells a joker name as the allocating reading did,
    /// whatever the buffer held before, and the case-blind search finds what
    /// a search of the lowercased text finds.
    #[test]
    fn joker_names_are_normalized_and_searched_as_before(
        name in "[ \tjJ_]{0,3}[A-Za-z_ éÉ]{0,12}[ \t]{0,2}",
        held in ".{0,8}",
        word in "(retrigger|copy|[a-z]{1,3})",
    ) {
        let before = {
            let lower = name.trim().to_ascii_lowercase();
            let lower = lower.strip_prefix("j_").unwrap_or(&lower);
            lower.replace('_', " ")
        };
        let mut out = held;
        classify::normalize_into(&name, &mut out);
        prop_assert_eq!(&out, &before);
        prop_assert_eq!(classify::normalize(&name), before);
        prop_assert_eq!(classify::contains_ignoring_case(&name, &word), name.to_ascii_lowercase().contains(word.as_str()));
    }
}

//! The aggregation stage: scenario tests of windows, cascades, coalescing,
//! eviction and batch sizing, and property tests over random interleavings of
//! many sessions showing that nothing is lost, duplicated or reordered.

use jimbus_core::aggregate::*;
use jimbus_core::batch::{BatchConfig, BatchConfigError, BatchSizer};
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_proto::events::{self as pb, event::Payload, scoring_event::Step};
use jimbus_proto::validate::Validate;
use proptest::prelude::*;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// An event as the shard hands it over: typed payload, receive time stamped.
fn event(event_type: &str, subtype: &str, payload: Payload, at: Duration) -> pb::Event {
    pb::Event {
        event_type: event_type.into(),
        subtype: subtype.into(),
        session_id: "s".into(),
        correlation_id: format!("req-{}", at.as_micros()),
        timing: Some(pb::Timing {
            client_timestamp_ms: at.as_micros() as f64 / 1000.0,
            received_at: Some(prost_types::Timestamp {
                seconds: 1_795_531_353 + at.as_secs() as i64,
                nanos: at.subsec_nanos() as i32,
            }),
            ..Default::default()
        }),
        payload: Some(payload),
        ..Default::default()
    }
}

fn scoring(step: Step) -> Payload {
    Payload::Scoring(pb::ScoringEvent { step: Some(step) })
}

fn start(hand: &str, at: Duration) -> pb::Event {
    let s = pb::HandEvalStart { hand_type: hand.into(), cards: vec!["1".into(), "2".into()], extra: None };
    event("SCORING", "HAND_EVAL_START", scoring(Step::HandEvalStart(s)), at)
}

fn complete(at: Duration) -> pb::Event {
    event("SCORING", "HAND_EVAL_COMPLETE", scoring(Step::HandEvalComplete(Default::default())), at)
}

fn joker(name: &str, mult: f64, parent: &str, context: &str, at: Duration) -> pb::Event {
    let j = pb::ScoringJokerTrigger {
        joker: Some(pb::Joker { name: name.into(), id: format!("j_{name}").into(), position: 1, extra: None }),
        mult,
        score_contribution: mult,
        parent: parent.into(),
        context: context.into(),
        ..Default::default()
    };
    event("SCORING", "JOKER_TRIGGER", scoring(Step::JokerTrigger(j)), at)
}

fn legacy(name: &str, at: Duration) -> pb::Event {
    let j = pb::JokerTriggerEvent { joker_name: name.into(), trigger_time_ms: 1.0, extra: None };
    event("JOKER_TRIGGER", "", Payload::JokerTrigger(j), at)
}

fn score_update(before: f64, after: f64, at: Duration) -> pb::Event {
    let u = pb::ScoreUpdate { score_before: before, score_after: after, extra: None };
    event("SCORING", "SCORE_UPDATE", scoring(Step::ScoreUpdate(u)), at)
}

fn mult_update(before: f64, after: f64, at: Duration) -> pb::Event {
    let u = pb::MultUpdate { mult_before: before, mult_after: after, source: "Joker".into(), extra: None };
    event("SCORING", "MULT_UPDATE", scoring(Step::MultUpdate(u)), at)
}

fn state(g: pb::GameStateEvent, at: Duration) -> pb::Event {
    event("GAME_STATE", "", Payload::GameState(g), at)
}

fn heartbeat(at: Duration) -> pb::Event {
    event("HEARTBEAT", "", Payload::Heartbeat(Default::default()), at)
}

fn error(at: Duration) -> pb::Event {
    event("ERROR", "", Payload::Error(pb::ErrorEvent { message: "boom".into(), ..Default::default() }), at)
}

/// Drives one aggregator, numbering each session's events from 1.
struct Driver {
    agg: Aggregator,
    seqs: HashMap<String, u64>,
    out: Vec<Aggregated>,
}

impl Driver {
    fn new(config: AggregateConfig) -> Self {
        Self { agg: Aggregator::new(config).unwrap(), seqs: HashMap::new(), out: Vec::new() }
    }

    /// Offers an event; returns its sequence.
    fn offer(&mut self, session: &str, e: &pb::Event, now: Duration) -> u64 {
        let seq = self.seqs.entry(session.into()).or_default();
        *seq += 1;
        self.agg.offer(session, *seq, &mut e.clone(), now, &mut self.out).unwrap();
        *seq
    }

    fn tick(&mut self, now: Duration) -> Vec<Aggregated> {
        self.agg.tick(now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn take(&mut self) -> Vec<Aggregated> {
        std::mem::take(&mut self.out)
    }
}

fn info(a: &Aggregated) -> &pb::CascadeInfo {
    a.message.cascade_info.as_ref().expect("a hand message")
}

#[test]
fn a_hand_becomes_one_message_at_window_end_field_by_field() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer(
        "mcp",
        &state(pb::GameStateEvent { phase: "SELECTING_HAND".into(), ante: Some(1), ..Default::default() }, ms(0)),
        ms(0),
    );
    d.offer("mcp", &start("Pair", ms(1)), ms(1));
    d.offer("mcp", &joker("Joker", 4.0, "", "joker_main", ms(2)), ms(2));
    d.offer("mcp", &joker("Joker", 4.0, "Blueprint", "retrigger", ms(3)), ms(3));
    d.offer("mcp", &mult_update(4.0, 12.0, ms(4)), ms(4));
    d.offer("mcp", &score_update(10.0, f64::INFINITY, ms(5)), ms(5));
    d.offer("mcp", &complete(ms(6)), ms(6));
    assert!(d.take().is_empty(), "nothing before the window ends");
    assert_eq!(d.agg.next_deadline(), Some(ms(100)));
    assert!(d.tick(ms(99)).is_empty());
    let out = d.tick(ms(100));
    assert_eq!(out.len(), 1);
    let a = &out[0];
    assert_eq!(a.session, "mcp");
    assert_eq!(a.reason, FlushReason::WindowEnd);
    assert_eq!(a.input_sequences, vec![1, 2, 3, 4, 5, 6, 7]);
    let m = &a.message;
    assert_eq!(m.session_id, "mcp");
    assert_eq!(m.correlation_id, "req-6000");
    assert_eq!(m.coalesced_game_states, 1);
    assert_eq!(m.base.as_ref().unwrap().ante, Some(1));
    let seqs: Vec<u64> = m.triggers.iter().map(|t| t.sequence).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    let orders: Vec<u32> = m.triggers.iter().map(|t| t.order).collect();
    assert_eq!(orders, vec![0, 1, 2, 3]);
    let t = &m.triggers[1];
    assert_eq!((t.joker_name.as_str(), t.joker_id.as_str(), t.position), ("Joker", "j_Joker", 1));
    assert_eq!((t.depth, t.parent_joker.as_str(), t.context.as_str()), (1, "Blueprint", "retrigger"));
    assert_eq!(t.client_timestamp_ms, 3.0);
    assert_eq!(m.triggers[2].context, "MULT_UPDATE");
    assert_eq!(m.triggers[2].mult, 8.0);
    let i = info(a);
    assert_eq!(i.cascade_id, "mcp-hand-2");
    assert_eq!(i.hand_type, "Pair");
    assert_eq!(i.cards, vec!["1", "2"]);
    assert_eq!(i.trigger_count, 4);
    assert_eq!(i.depth, 1);
    assert_eq!(i.first_trigger_at.unwrap().nanos, 2_000_000);
    assert_eq!(i.last_trigger_at.unwrap().nanos, 5_000_000);
    assert_eq!(i.duration_ms, 3.0);
    assert_eq!(i.chips_delta, 0.0);
    assert_eq!(i.mult_delta, 8.0, "the MULT_UPDATE wins over the triggers' own mult");
    assert_eq!(i.score_delta, f64::INFINITY);
    assert!(i.complete && i.final_part);
    assert_eq!(i.part, 1);
    m.validate().unwrap();
    let s = d.agg.stats();
    assert_eq!((s.hands_complete, s.messages, s.events_held, s.game_states_coalesced), (1, 1, 7, 1));
}

#[test]
fn a_window_is_timed_from_when_its_first_event_arrived_not_when_it_was_offered() {
    let mut d = Driver::new(AggregateConfig::default());
    // The hand arrived at 10 ms and became durable (was offered) at 40 ms.
    for (seq, e) in [start("Pair", ms(10)), joker("Joker", 4.0, "", "", ms(10)), complete(ms(10))].iter().enumerate() {
        d.agg
            .offer_arrived("s", seq as u64 + 1, &mut e.clone(), Stamped::default(), ms(10), ms(40), &mut d.out)
            .unwrap();
    }
    assert_eq!(d.agg.next_deadline(), Some(ms(110)));
    assert!(d.tick(ms(109)).is_empty());
    assert_eq!(d.tick(ms(110)).len(), 1);
    // An arrival time after the offer is not believed: the window opens at the offer.
    let mut flush = start("Flush", ms(0));
    d.agg.offer_arrived("s", 4, &mut flush, Stamped::default(), ms(500), ms(200), &mut d.out).unwrap();
    assert_eq!(d.agg.next_deadline(), Some(ms(300)));
}

#[test]
fn non_finite_deltas_are_kept() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Flush", ms(0)), ms(0));
    d.offer("s", &joker("A", f64::INFINITY, "", "", ms(1)), ms(1));
    d.offer("s", &joker("B", 5.0, "", "", ms(2)), ms(2));
    d.offer("s", &score_update(1.0, f64::NAN, ms(3)), ms(3));
    d.offer("s", &score_update(2.0, 3.0, ms(3)), ms(3));
    d.offer("s", &complete(ms(4)), ms(4));
    let out = d.tick(ms(200));
    let i = info(&out[0]);
    assert_eq!(i.mult_delta, f64::INFINITY, "inf + finite = inf");
    assert!(i.score_delta.is_nan(), "NaN stays NaN");
    assert_eq!(out[0].message.triggers[0].mult, f64::INFINITY);
    // NaN and inf survive the wire encoding too.
    let back = pb::BalatroGameStateEvent::decode(out[0].message.encode_to_vec().as_slice()).unwrap();
    assert!(back.cascade_info.unwrap().score_delta.is_nan());
}

#[test]
fn a_hand_that_never_closes_is_flushed_incomplete_at_timeout() {
    let config = AggregateConfig { cascade_timeout: ms(1000), ..Default::default() };
    let mut d = Driver::new(config);
    d.offer("s", &start("Pair", ms(0)), ms(0));
    d.offer("s", &joker("A", 1.0, "", "", ms(10)), ms(10));
    assert!(d.tick(ms(500)).is_empty(), "window ends with nothing closed");
    assert_eq!(d.agg.next_deadline(), Some(ms(1010)));
    assert!(d.tick(ms(1009)).is_empty());
    let out = d.tick(ms(1010));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::Closed);
    let i = info(&out[0]);
    assert!(!i.complete);
    assert!(i.final_part);
    assert_eq!(i.trigger_count, 1);
    assert_eq!(out[0].input_sequences, vec![1, 2]);
    assert_eq!(d.agg.stats().cascades_incomplete, 1);
    assert_eq!(d.agg.stats().hands_complete, 0);
}

#[test]
fn a_new_start_closes_the_open_hand_as_incomplete() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Pair", ms(0)), ms(0));
    d.offer("s", &joker("A", 1.0, "", "", ms(1)), ms(1));
    d.offer("s", &start("Flush", ms(2)), ms(2));
    d.offer("s", &joker("B", 1.0, "", "", ms(3)), ms(3));
    d.offer("s", &complete(ms(4)), ms(4));
    let out = d.tick(ms(100));
    assert_eq!(out.len(), 2);
    assert_eq!((info(&out[0]).hand_type.as_str(), info(&out[0]).complete), ("Pair", false));
    assert_eq!((info(&out[1]).hand_type.as_str(), info(&out[1]).complete), ("Flush", true));
    assert_eq!(out[0].input_sequences, vec![1, 2]);
    assert_eq!(out[1].input_sequences, vec![3, 4, 5]);
    assert_eq!(d.agg.stats().cascades_incomplete, 1);
}

#[test]
fn a_cascade_above_the_cap_is_split_into_numbered_parts_never_truncated() {
    let config = AggregateConfig { cascade_split: 10, ..Default::default() };
    let mut d = Driver::new(config);
    d.offer("s", &start("Flush", ms(0)), ms(0));
    let mut parts = Vec::new();
    for i in 0..25 {
        d.offer("s", &joker("A", 1.0, "", "", ms(1)), ms(1));
        parts.extend(d.take());
        if i == 9 || i == 19 {
            assert_eq!(parts.len(), (i + 1) / 10, "a part leaves at once when the cap is reached");
        }
    }
    d.offer("s", &complete(ms(2)), ms(2));
    parts.extend(d.tick(ms(100)));
    assert_eq!(parts.len(), 3);
    let counts: Vec<u32> = parts.iter().map(|p| info(p).trigger_count).collect();
    assert_eq!(counts, vec![10, 10, 5]);
    let numbers: Vec<(u32, bool, bool)> =
        parts.iter().map(|p| (info(p).part, info(p).final_part, info(p).complete)).collect();
    assert_eq!(numbers, vec![(1, false, false), (2, false, false), (3, true, true)]);
    assert_eq!(parts[0].reason, FlushReason::Split);
    let orders: Vec<u32> = parts.iter().flat_map(|p| p.message.triggers.iter().map(|t| t.order)).collect();
    assert_eq!(orders, (0..25).collect::<Vec<_>>());
    let all: Vec<u64> = parts.iter().flat_map(|p| p.input_sequences.iter().copied()).collect();
    assert_eq!(all, (1..=27).collect::<Vec<_>>());
    assert!(parts.iter().all(|p| info(p).cascade_id == "s-hand-1"));
    assert_eq!(d.agg.stats().cascade_splits, 2);
}

#[test]
fn the_default_cap_splits_at_ten_thousand() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Flush", ms(0)), ms(0));
    let t = joker("A", 1.0, "", "", ms(1));
    for _ in 0..25_000 {
        d.offer("s", &t, ms(1));
    }
    d.offer("s", &complete(ms(2)), ms(2));
    let out = d.tick(ms(200));
    let counts: Vec<u32> = out.iter().map(|p| info(p).trigger_count).collect();
    assert_eq!(counts, vec![10_000, 10_000, 5_000]);
    for p in &out {
        p.message.validate().unwrap();
    }
}

#[test]
fn parts_are_split_by_encoded_size_too_so_each_stays_deliverable() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Flush", ms(0)), ms(0));
    // Names near the schema's longest (its id is "j_" + name, at most 256 bytes):
    // 5,000 triggers encode to about 4 MB, in 10,000-trigger parts one message.
    let long = "J".repeat(250);
    let t = joker(&long, 1.0, &long, &"c".repeat(64), ms(1));
    for _ in 0..5_000 {
        d.offer("s", &t, ms(1));
    }
    d.offer("s", &complete(ms(2)), ms(2));
    let out = d.tick(ms(200));
    assert!(out.len() >= 3, "{} parts", out.len());
    let total: u32 = out.iter().map(|p| info(p).trigger_count).sum();
    assert_eq!(total, 5_000, "nothing dropped");
    for p in &out {
        p.message.validate().unwrap();
        let triggers: usize = p.message.triggers.iter().map(Message::encoded_len).sum();
        assert!(triggers <= (1 << 20) + 1024, "a part's triggers take {triggers} bytes");
    }
}

#[test]
fn legacy_triggers_are_grouped_by_quiet_gap() {
    let config = AggregateConfig { legacy_gap: ms(50), ..Default::default() };
    let mut d = Driver::new(config);
    d.offer("s", &legacy("Greedy Joker", ms(0)), ms(0));
    d.offer("s", &legacy("Lusty Joker", ms(20)), ms(20));
    d.offer("s", &legacy("Greedy Joker", ms(60)), ms(60));
    assert!(d.tick(ms(100)).is_empty(), "the window ends while the group is still open");
    let out = d.tick(ms(110));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::Closed);
    let i = info(&out[0]);
    assert_eq!((i.trigger_count, i.complete, i.hand_type.as_str()), (3, true, ""));
    assert_eq!(out[0].message.triggers[0].context, "JOKER_TRIGGER");
    // A gap splits groups even when no tick ran in between.
    d.offer("s", &legacy("A", ms(200)), ms(200));
    d.offer("s", &legacy("B", ms(300)), ms(300));
    let first = d.take();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].input_sequences, vec![4]);
    let second = d.tick(ms(400));
    assert_eq!(second[0].input_sequences, vec![5]);
    assert_eq!(d.agg.stats().legacy_groups, 3);
}

#[test]
fn a_complete_without_start_closes_the_legacy_group_and_a_stray_one_is_not_aggregated() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &legacy("A", ms(0)), ms(0));
    d.offer("s", &complete(ms(1)), ms(1));
    let out = d.tick(ms(100));
    assert_eq!(out[0].input_sequences, vec![1, 2]);
    let mut out = Vec::new();
    let disposition = d.agg.offer("s", 3, &mut complete(ms(200)), ms(200), &mut out).unwrap();
    assert_eq!(disposition, Disposition::NotAggregated);
    assert_eq!(d.agg.stats().stray_completes, 1);
}

#[test]
fn depth_and_parent_are_inferred() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Pair", ms(0)), ms(0));
    d.offer("s", &joker("Joker", 4.0, "", "", ms(1)), ms(1)); // direct: 0
    d.offer("s", &joker("Blueprint", 4.0, "", "", ms(2)), ms(2)); // direct: 0
    d.offer("s", &joker("Joker", 4.0, "", "", ms(3)), ms(3)); // after a copier: 1, Blueprint
    d.offer("s", &joker("Sock and Buskin", 0.0, "", "", ms(4)), ms(4)); // 0
    d.offer("s", &joker("Mime", 0.0, "", "", ms(5)), ms(5)); // after a retriggerer: 1, Sock and Buskin
    d.offer("s", &joker("Scary Face", 30.0, "", "", ms(6)), ms(6)); // 2, Mime
    d.offer("s", &joker("Joker", 4.0, "Mime", "", ms(7)), ms(7)); // explicit: Mime is at 1, so 2
    d.offer("s", &joker("Joker", 4.0, "Hack", "", ms(8)), ms(8)); // explicit, Hack never fired: 1
    d.offer("s", &joker("Joker", 4.0, "", "retrigger", ms(9)), ms(9)); // retrigger context: 1, unknown
    d.offer("s", &mult_update(1.0, 2.0, ms(10)), ms(10)); // updates: 0
    d.offer("s", &complete(ms(11)), ms(11));
    let out = d.tick(ms(100));
    let got: Vec<(u32, &str)> = out[0].message.triggers.iter().map(|t| (t.depth, t.parent_joker.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (0, ""),
            (0, ""),
            (1, "Blueprint"),
            (0, ""),
            (1, "Sock and Buskin"),
            (2, "Mime"),
            (2, "Mime"),
            (1, "Hack"),
            (1, ""),
            (0, ""),
        ]
    );
    assert_eq!(info(&out[0]).depth, 2);
    assert!(is_copy_joker("j_sock_and_buskin") && is_copy_joker("Hanging Chad") && !is_copy_joker("Joker"));
}

#[test]
fn the_field_mods_fifty_event_cascade_is_one_hand_with_a_copy_chain() {
    let body =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compat/batch_cascade50.json")).unwrap();
    let decoded = decode_body(&body, Endpoint::Batch).unwrap();
    let mut d = Driver::new(AggregateConfig::default());
    for e in &decoded.events {
        d.offer("127.0.0.1-BalatroMCP", &e.event, ms(5));
    }
    let out = d.tick(ms(105));
    assert_eq!(out.len(), 1);
    let m = &out[0].message;
    let i = m.cascade_info.as_ref().unwrap();
    assert_eq!((i.trigger_count, i.hand_type.as_str(), i.complete), (48, "Pair", true));
    assert_eq!(out[0].input_sequences, (1..=50).collect::<Vec<_>>());
    // Blueprint and Brainstorm alternate: each copies the previous one.
    assert_eq!(i.depth, 47);
    assert_eq!((m.triggers[1].joker_name.as_str(), m.triggers[1].parent_joker.as_str()), ("Brainstorm", "Blueprint"));
    assert!(m.triggers.windows(2).all(|w| w[0].client_timestamp_ms < w[1].client_timestamp_ms));
}

#[test]
fn high_priority_events_flush_at_once() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Pair", ms(0)), ms(0));
    d.offer("s", &complete(ms(1)), ms(1));
    assert!(d.take().is_empty());
    let mut out = Vec::new();
    let disposition = d.agg.offer("s", 3, &mut error(ms(2)), ms(2), &mut out).unwrap();
    assert_eq!(disposition, Disposition::NotAggregated);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::HighPriority);
    assert_eq!(out[0].input_sequences, vec![1, 2]);

    // A state with `priority: high` is flushed with itself.
    let mut urgent = state(pb::GameStateEvent { money: Some(9.0), ..Default::default() }, ms(3));
    urgent.priority = pb::Priority::High as i32;
    out.clear();
    d.agg.offer("s", 4, &mut urgent, ms(3), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].input_sequences, vec![4]);
    assert!(out[0].message.cascade_info.is_none());
    assert_eq!(out[0].message.base.as_ref().unwrap().money, Some(9.0));

    // The metadata form and LEARNING_DECISION.
    let mut meta = state(pb::GameStateEvent { money: Some(10.0), ..Default::default() }, ms(4));
    meta.metadata.insert("priority".into(), "high".into());
    out.clear();
    d.agg.offer("s", 5, &mut meta, ms(4), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    d.agg.offer("s", 6, &mut state(pb::GameStateEvent::default(), ms(5)), ms(5), &mut out).unwrap();
    let mut decision = event(
        "LEARNING_DECISION",
        "REQUEST",
        Payload::LearningDecision(pb::LearningDecisionEvent {
            kind: Some(pb::learning_decision_event::Kind::Request(Default::default())),
        }),
        ms(6),
    );
    out.clear();
    d.agg.offer("s", 7, &mut decision, ms(6), &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].input_sequences, vec![6]);
    assert_eq!(d.agg.stats().high_priority_flushes, 4);
}

#[test]
fn the_size_cap_ends_a_window_early() {
    let config = AggregateConfig { max_window_events: 3, ..Default::default() };
    let mut d = Driver::new(config);
    for i in 0..3 {
        d.offer("s", &state(pb::GameStateEvent { round: Some(i), ..Default::default() }, ms(0)), ms(0));
    }
    let out = d.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::SizeCap);
    assert_eq!(out[0].message.coalesced_game_states, 3);
    assert_eq!(d.agg.stats().size_cap_flushes, 1);
}

#[test]
fn game_states_coalesce_by_presence_within_a_window() {
    let mut d = Driver::new(AggregateConfig::default());
    let full = pb::GameStateEvent {
        phase: "SELECTING_HAND".into(),
        ante: Some(1),
        money: Some(4.0),
        jokers: vec![pb::Joker { name: "Joker".into(), ..Default::default() }],
        ..Default::default()
    };
    d.offer("s", &state(full, ms(0)), ms(0));
    d.offer("s", &state(pb::GameStateEvent { money: Some(-0.0), ..Default::default() }, ms(1)), ms(1));
    d.offer(
        "s",
        &state(pb::GameStateEvent { round: Some(2), phase: "SHOP".into(), ..Default::default() }, ms(2)),
        ms(2),
    );
    d.offer("s", &heartbeat(ms(3)), ms(3));
    let out = d.tick(ms(100));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].input_sequences, vec![1, 2, 3]);
    let m = &out[0].message;
    assert_eq!(m.coalesced_game_states, 3);
    assert!(m.triggers.is_empty() && m.cascade_info.is_none());
    let base = m.base.as_ref().unwrap();
    assert_eq!((base.phase.as_str(), base.ante, base.round), ("SHOP", Some(1), Some(2)));
    assert_eq!(base.money.map(f64::to_bits), Some((-0.0f64).to_bits()));
    assert_eq!(base.jokers.len(), 1);
    let s = d.agg.stats();
    assert_eq!((s.game_states_coalesced, s.game_states_superseded, s.events_not_aggregated), (3, 2, 1));
    // The next hand still carries the latest state, with nothing coalesced.
    d.offer("s", &start("Pair", ms(200)), ms(200));
    d.offer("s", &complete(ms(201)), ms(201));
    let out = d.tick(ms(300));
    assert_eq!(out[0].message.coalesced_game_states, 0);
    assert_eq!(out[0].message.base.as_ref().unwrap().round, Some(2));
}

#[test]
fn idle_sessions_are_evicted_and_capacity_evicts_the_least_recent() {
    let config = AggregateConfig { idle_timeout: ms(1000), max_sessions: 2, ..Default::default() };
    let mut d = Driver::new(config);
    d.offer("a", &start("Pair", ms(0)), ms(0));
    d.offer("b", &heartbeat(ms(1)), ms(1));
    assert_eq!(d.agg.sessions(), 2);
    // A third session evicts "a", whose open hand is flushed incomplete.
    d.offer("c", &heartbeat(ms(2)), ms(2));
    let out = d.take();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].session.as_str(), out[0].reason), ("a", FlushReason::Evicted));
    assert!(!info(&out[0]).complete);
    assert!(!d.agg.contains("a"));
    assert_eq!(d.agg.stats().evicted_capacity, 1);
    d.offer("c", &state(pb::GameStateEvent { ante: Some(3), ..Default::default() }, ms(500)), ms(500));
    let out = d.tick(ms(1001));
    assert_eq!(out.len(), 1, "c's window ended");
    assert_eq!((out[0].session.as_str(), out[0].reason), ("c", FlushReason::WindowEnd));
    assert!(!d.agg.contains("b") && d.agg.contains("c"));
    assert_eq!(d.agg.game_state("c").unwrap().ante, Some(3));
    let out = d.tick(ms(1500));
    assert!(out.is_empty());
    assert_eq!(d.agg.sessions(), 0);
    assert_eq!(d.agg.stats().evicted_idle, 2);
    assert_eq!(d.agg.bytes_held(), 0);
    assert_eq!(d.agg.next_deadline(), None);
}

#[test]
fn sequences_must_increase_per_session() {
    let mut agg = Aggregator::new(AggregateConfig::default()).unwrap();
    let mut out = Vec::new();
    agg.offer("s", 5, &mut heartbeat(ms(0)), ms(0), &mut out).unwrap();
    let err = agg.offer("s", 5, &mut heartbeat(ms(0)), ms(0), &mut out).unwrap_err();
    assert_eq!(err, AggregateError::OutOfOrder { session: "s".into(), seq: 5, last: 5 });
    agg.offer("t", 1, &mut heartbeat(ms(0)), ms(0), &mut out).unwrap();
}

#[test]
fn bytes_are_tracked_and_the_budget_forces_a_flush() {
    let mut d = Driver::new(AggregateConfig::default());
    d.offer("s", &start("Pair", ms(0)), ms(0));
    let empty = d.agg.bytes_held();
    for _ in 0..100 {
        d.offer("s", &joker("Joker", 1.0, "", "", ms(1)), ms(1));
    }
    let held = d.agg.bytes_held();
    assert!(held > empty + 100 * 64, "{held} vs {empty}");
    d.agg.set_memory_budget(held);
    assert!(d.take().is_empty());
    d.offer("s", &joker("Joker", 1.0, "", "", ms(2)), ms(2));
    let out = d.take();
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].reason, info(&out[0]).trigger_count, info(&out[0]).final_part),
        (FlushReason::Budget, 101, false)
    );
    assert!(d.agg.bytes_held() < held);
    assert_eq!(d.agg.stats().budget_flushes, 1);
    d.agg.flush_all(&mut d.out);
    assert_eq!(d.agg.bytes_held(), 0);
    let rest = d.take();
    assert_eq!(rest.len(), 1);
    assert_eq!((info(&rest[0]).part, info(&rest[0]).complete), (2, false));
}

#[test]
fn bad_configs_are_refused() {
    let bad = |f: fn(&mut AggregateConfig)| {
        let mut c = AggregateConfig::default();
        f(&mut c);
        Aggregator::new(c).err()
    };
    assert_eq!(bad(|c| c.window = Duration::ZERO), Some(ConfigError::Zero("window")));
    assert_eq!(bad(|c| c.cascade_split = 10_001), Some(ConfigError::SplitTooLarge));
    assert_eq!(bad(|c| c.cascade_split_bytes = 2 << 20), None);
    assert_eq!(bad(|c| c.cascade_split_bytes = (2 << 20) + 1), Some(ConfigError::PartTooLarge("cascade_split_bytes")));
    assert_eq!(bad(|c| c.max_state_bytes = (2 << 20) + 1), Some(ConfigError::PartTooLarge("max_state_bytes")));
    let batch = |f: fn(&mut BatchConfig)| {
        let mut c = BatchConfig::default();
        f(&mut c);
        c.validate().err()
    };
    assert_eq!(batch(|c| c.grow_gain = 0.0), Some(BatchConfigError::Gain));
    assert_eq!(batch(|c| c.max_batch = 0), Some(BatchConfigError::Range));
    assert_eq!(batch(|c| c.min_batch = 0), Some(BatchConfigError::ZeroMin));
}

#[test]
fn batch_size_follows_queue_depth() {
    let mut b = BatchSizer::new(BatchConfig { min_batch: 1, max_batch: 800, light_load: 1, grow_gain: 0.5 });
    assert_eq!(b.observe(0), 1);
    assert_eq!(b.observe(1), 1, "light load: one at a time");
    let grown: Vec<usize> = (0..4).map(|_| b.observe(1000)).collect();
    assert_eq!(grown, vec![501, 751, 800, 800], "halfway toward the depth, capped");
    assert_eq!(b.observe(100), 100, "drops to the queue at once");
    assert_eq!(b.observe(200), 150);
    assert_eq!(b.observe(200), 175);
    assert_eq!(b.observe(0), 1);
    assert_eq!(b.queue_depth(), 0);
    assert_eq!(b.target(), 1);
}

proptest! {
    #[test]
    fn batch_size_stays_in_range_and_moves_toward_the_queue(
        depths in proptest::collection::vec(0usize..100_000, 1..100),
        min in 1usize..8, extra in 0usize..5000, gain in 0.01f64..1.0,
    ) {
        let config = BatchConfig { min_batch: min, max_batch: min + extra, light_load: 2, grow_gain: gain };
        let mut b = BatchSizer::new(config);
        for q in depths {
            let before = b.target();
            let now = b.observe(q);
            prop_assert!(now >= config.min_batch && now <= config.max_batch);
            if q > before && q > config.light_load {
                prop_assert!(now > before || now == config.max_batch);
                prop_assert!(now <= q.max(config.min_batch));
            }
        }
    }
}

// ---- property tests over random interleavings of sessions --------------------

#[derive(Debug, Clone)]
enum Op {
    Start,
    Joker(u8, bool),
    Legacy(u8),
    Update(u8, bool),
    Complete,
    State(Option<i32>, Option<f64>, Option<String>, bool),
    Heartbeat,
    Error,
}

const JOKERS: &[&str] = &["Joker", "Blueprint", "Brainstorm", "Mime", "Scary Face", "Hack"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Start),
        6 => (0u8..6, any::<bool>()).prop_map(|(j, p)| Op::Joker(j, p)),
        3 => (0u8..6).prop_map(Op::Legacy),
        2 => (0u8..3, any::<bool>()).prop_map(|(k, inf)| Op::Update(k, inf)),
        2 => Just(Op::Complete),
        3 => (
            proptest::option::of(0i32..10),
            proptest::option::of(prop_oneof![Just(f64::INFINITY), Just(-0.0), -1e6f64..1e6]),
            proptest::option::of("[A-Z_]{1,8}"),
            proptest::bool::weighted(0.05),
        )
            .prop_map(|(a, m, p, high)| Op::State(a, m, p, high)),
        1 => Just(Op::Heartbeat),
        1 => prop_oneof![20 => Just(Op::Heartbeat), 1 => Just(Op::Error)],
    ]
}

fn build(op: &Op, at: Duration) -> pb::Event {
    match op {
        Op::Start => start("Pair", at),
        Op::Joker(j, p) => joker(JOKERS[*j as usize], 2.0, if *p { "Blueprint" } else { "" }, "", at),
        Op::Legacy(j) => legacy(JOKERS[*j as usize], at),
        Op::Update(0, inf) => score_update(1.0, if *inf { f64::INFINITY } else { 2.0 }, at),
        Op::Update(1, _) => mult_update(1.0, 3.0, at),
        Op::Update(_, _) => {
            let u = pb::ChipsUpdate { chips_before: 1.0, chips_after: 5.0, ..Default::default() };
            event("SCORING", "CHIPS_UPDATE", scoring(Step::ChipsUpdate(u)), at)
        }
        Op::Complete => complete(at),
        Op::State(ante, money, phase, high) => {
            let g = pb::GameStateEvent {
                ante: *ante,
                money: *money,
                phase: phase.clone().unwrap_or_default(),
                ..Default::default()
            };
            let mut e = state(g, at);
            if *high {
                e.priority = pb::Priority::High as i32;
            }
            e
        }
        Op::Heartbeat => heartbeat(at),
        Op::Error => error(at),
    }
}

fn is_trigger(op: &Op) -> bool {
    matches!(op, Op::Joker(..) | Op::Legacy(_) | Op::Update(..))
}

/// One step: which session, what event, how much time passes first, whether to tick.
fn steps() -> impl Strategy<Value = Vec<(usize, Op, u64, bool)>> {
    proptest::collection::vec(
        (0usize..6, op(), prop_oneof![8 => 0u64..3_000, 1 => 0u64..80_000], any::<bool>()),
        1..400,
    )
}

fn small_config() -> impl Strategy<Value = AggregateConfig> {
    (1u64..20, 1usize..30, 1u64..15, 20u64..60, 1usize..12, 100u64..400, 2usize..8).prop_map(
        |(window, cap, gap, timeout, split, idle, sessions)| AggregateConfig {
            window: ms(window),
            max_window_events: cap,
            legacy_gap: ms(gap),
            cascade_timeout: ms(timeout),
            cascade_split: split,
            idle_timeout: ms(idle),
            max_sessions: sessions,
            ..Default::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn nothing_is_lost_duplicated_or_reordered(config in small_config(), steps in steps()) {
        let split = config.cascade_split;
        let mut agg = Aggregator::new(config).unwrap();
        let mut now = Duration::ZERO;
        let mut seqs: HashMap<String, u64> = HashMap::new();
        // (session, seq) -> (op, disposition)
        let mut offered: BTreeMap<(String, u64), (Op, Disposition)> = BTreeMap::new();
        // The model of each session's merged state since it was (re)created.
        let mut model: HashMap<String, Option<pb::GameStateEvent>> = HashMap::new();
        let mut outputs: Vec<Aggregated> = Vec::new();

        // `before` is the state of `offering` before its new event: what a window
        // that the offer first closed (WindowEnd, Closed) carries.
        let check = |outs: &[Aggregated], model: &HashMap<String, Option<pb::GameStateEvent>>,
                     offering: &str, before: &Option<pb::GameStateEvent>| -> Result<(), TestCaseError> {
            for a in outs {
                // Coalescing keeps the latest state: base is the fold of every state so far.
                let earlier = a.session == offering && matches!(a.reason, FlushReason::WindowEnd | FlushReason::Closed);
                let want = if earlier { before.clone() } else { model.get(&a.session).cloned().flatten() };
                prop_assert_eq!(a.message.base.as_ref().map(|b| b.encode_to_vec()), want.map(|b| b.encode_to_vec()));
                prop_assert!(a.input_sequences.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(a.message.validate().is_ok(), "{:?}", a.message.validate());
            }
            Ok(())
        };

        for (who, op, dt, tick) in steps {
            let session = format!("s{who}");
            now += Duration::from_micros(dt);
            let mut out = Vec::new();
            if tick {
                agg.tick(now, &mut out);
                check(&out, &model, "", &None)?;
                outputs.append(&mut out);
            }
            if !agg.contains(&session) {
                model.insert(session.clone(), None);
            }
            let before = model[&session].clone();
            if let Op::State(..) = op {
                let Some(Payload::GameState(g)) = build(&op, now).payload else { unreachable!() };
                merge_game_state(model.get_mut(&session).unwrap().get_or_insert_with(Default::default), &g);
            }
            let seq = seqs.entry(session.clone()).or_default();
            *seq += 1;
            let disposition = agg.offer(&session, *seq, &mut build(&op, now), now, &mut out).unwrap();
            match op {
                Op::Heartbeat | Op::Error => prop_assert_eq!(disposition, Disposition::NotAggregated),
                Op::Complete => {}
                _ => prop_assert_eq!(disposition, Disposition::Held),
            }
            offered.insert((session.clone(), *seq), (op, disposition));
            check(&out, &model, &session, &before)?;
            outputs.append(&mut out);
            prop_assert!(agg.next_deadline().is_none_or(|d| d >= now) || !tick);
        }
        agg.flush_all(&mut outputs);
        prop_assert_eq!(agg.sessions(), 0);
        prop_assert_eq!(agg.bytes_held(), 0);

        // No event lost or duplicated: every held sequence in exactly one output.
        let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for a in &outputs {
            for &s in &a.input_sequences {
                *seen.entry((a.session.clone(), s)).or_default() += 1;
            }
        }
        for (key, (op, disposition)) in &offered {
            let n = seen.remove(key).unwrap_or(0);
            match disposition {
                Disposition::Held => prop_assert_eq!(n, 1, "{:?} {:?}", key, op),
                Disposition::NotAggregated => prop_assert_eq!(n, 0, "{:?} {:?}", key, op),
            }
        }
        prop_assert!(seen.is_empty(), "outputs name sequences never offered: {:?}", seen);

        // Every trigger in exactly one cascade, in order; coalesced counts add up.
        let mut trigger_home: BTreeMap<(String, u64), String> = BTreeMap::new();
        let mut cascades: BTreeMap<String, Vec<&Aggregated>> = BTreeMap::new();
        for a in &outputs {
            let states = a.input_sequences.iter()
                .filter(|&&s| matches!(offered[&(a.session.clone(), s)].0, Op::State(..)))
                .count();
            prop_assert_eq!(a.message.coalesced_game_states as usize, states);
            let in_message: Vec<u64> = a.message.triggers.iter().map(|t| t.sequence).collect();
            prop_assert!(in_message.windows(2).all(|w| w[0] < w[1]), "trigger order: {:?}", in_message);
            prop_assert!(in_message.len() <= split);
            for t in &a.message.triggers {
                prop_assert!(a.input_sequences.binary_search(&t.sequence).is_ok());
                let id = a.message.cascade_info.as_ref().unwrap().cascade_id.clone();
                prop_assert!(trigger_home.insert((a.session.clone(), t.sequence), id).is_none(), "trigger twice");
            }
            match &a.message.cascade_info {
                Some(i) => {
                    prop_assert_eq!(i.trigger_count as usize, a.message.triggers.len());
                    prop_assert_eq!(i.depth, a.message.triggers.iter().map(|t| t.depth).max().unwrap_or(0));
                    cascades.entry(format!("{}/{}", a.session, i.cascade_id)).or_default().push(a);
                }
                None => prop_assert!(a.message.triggers.is_empty()),
            }
        }
        for ((session, seq), (op, disposition)) in &offered {
            if is_trigger(op) {
                prop_assert_eq!(*disposition, Disposition::Held);
                prop_assert!(trigger_home.contains_key(&(session.clone(), *seq)), "trigger {} {} in no cascade", session, seq);
            }
        }
        // A cascade's parts are numbered 1.., only the last is final, and `order`
        // runs on across them.
        for (id, parts) in &cascades {
            let numbers: Vec<u32> = parts.iter().map(|p| p.message.cascade_info.as_ref().unwrap().part).collect();
            prop_assert_eq!(numbers, (1..=parts.len() as u32).collect::<Vec<_>>(), "{}", id);
            for (i, p) in parts.iter().enumerate() {
                prop_assert_eq!(p.message.cascade_info.as_ref().unwrap().final_part, i + 1 == parts.len());
            }
            let orders: Vec<u32> = parts.iter().flat_map(|p| p.message.triggers.iter().map(|t| t.order)).collect();
            prop_assert_eq!(orders.clone(), (0..orders.len() as u32).collect::<Vec<_>>(), "{}", id);
        }
        // Cascades are intervals of their session's triggers: no trigger of another
        // cascade lies between a cascade's first and last trigger.
        let mut by_session: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
        for ((session, seq), id) in &trigger_home {
            by_session.entry(session).or_default().push((*seq, id));
        }
        for (session, list) in by_session {
            let mut done: std::collections::HashSet<&str> = Default::default();
            let mut current = "";
            for (_, id) in list {
                if id != current {
                    prop_assert!(done.insert(id), "{}: cascade {} is interleaved", session, id);
                    current = id;
                }
            }
        }
    }
}

/// An optional `extra` of a few keys (some shared between two states), empty
/// or absent as often as not.
fn game_state_extra() -> impl Strategy<Value = Option<jimbus_proto::free_form::Struct>> {
    let value = any::<i8>().prop_map(|n| jimbus_proto::free_form::Value {
        kind: Some(jimbus_proto::free_form::value::Kind::NumberValue(n.into())),
    });
    let fields = proptest::collection::vec(("[a-e]", value), 0..6);
    proptest::option::of(fields.prop_map(|fields| jimbus_proto::free_form::Struct {
        fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
    }))
}

proptest! {
    /// `extra` merges key by key: the earlier state's keys stay, each
    /// replaced by the later state's value where it has one.
    #[test]
    fn a_merged_extra_holds_both_states_keys_the_later_winning(
        earlier in game_state_extra(),
        later in game_state_extra(),
    ) {
        let mut expected: BTreeMap<String, jimbus_proto::free_form::Value> = BTreeMap::new();
        for extra in [&earlier, &later].into_iter().flatten() {
            expected.extend(extra.fields.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
        let present = earlier.is_some() || later.is_some();
        let mut merged = pb::GameStateEvent { extra: earlier, ..Default::default() };
        merge_game_state(&mut merged, &pb::GameStateEvent { extra: later, ..Default::default() });
        let got: Option<BTreeMap<String, jimbus_proto::free_form::Value>> =
            merged.extra.map(|extra| extra.fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        prop_assert_eq!(got, present.then_some(expected));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    /// New triggers reuse the memory of messages taken back (as the pump takes
    /// back what it logged) and nothing of their values: an aggregator that
    /// takes back every message emits the same messages as one that never does.
    #[test]
    fn messages_taken_back_change_no_message_after_them(config in small_config(), steps in steps()) {
        let mut kept = Aggregator::new(config.clone()).unwrap();
        let mut reusing = Aggregator::new(config).unwrap();
        let mut now = Duration::ZERO;
        for (seq, (who, op, dt, tick)) in (1..).zip(steps) {
            let session = format!("s{who}");
            now += Duration::from_micros(dt);
            let (mut from_kept, mut from_reusing) = (Vec::new(), Vec::new());
            if tick {
                kept.tick(now, &mut from_kept);
                reusing.tick(now, &mut from_reusing);
            }
            let offered = kept.offer(&session, seq, &mut build(&op, now), now, &mut from_kept);
            prop_assert_eq!(offered, reusing.offer(&session, seq, &mut build(&op, now), now, &mut from_reusing));
            prop_assert_eq!(&from_kept, &from_reusing);
            reusing.take_back(from_reusing);
        }
        let (mut from_kept, mut from_reusing) = (Vec::new(), Vec::new());
        kept.flush_all(&mut from_kept);
        reusing.flush_all(&mut from_reusing);
        prop_assert_eq!(from_kept, from_reusing);
    }
}

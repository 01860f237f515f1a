//! Aggregation throughput (events/s on one core): decoded mod events offered to
//! one shard's [`Aggregator`] with an injected clock, ticked as the shard would,
//! every message built. Workloads: many interleaved sessions scoring 20-trigger
//! hands with game states between them; the mixed `mod_batch` traffic; and one
//! 5,000-trigger cascade. End-to-end latency (last event of a hand to the
//! subscriber) needs the server and is measured by the load generator, not here.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jimbus_core::aggregate::{AggregateConfig, Aggregated, Aggregator};
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_perf::mod_batch;
use jimbus_proto::events as pb;
use std::hint::black_box;
use std::time::Duration;

/// One hand in the mod's dialect: start, `triggers` joker triggers (every fourth
/// a Blueprint copy, every fifth a MULT_UPDATE), complete, then a game state.
fn hand(triggers: usize) -> Vec<pb::Event> {
    let mut events = vec![
        r#"{"type":"SCORING","subtype":"HAND_EVAL_START","payload":{"cards":["1","2"],"hand_type":"Pair"},"timestamp":1001}"#.to_string(),
    ];
    for i in 0..triggers {
        events.push(match i % 5 {
            4 => r#"{"type":"SCORING","subtype":"MULT_UPDATE","payload":{"mult_before":4,"mult_after":8,"source":"Joker"},"timestamp":1002}"#.to_string(),
            3 => format!(r#"{{"type":"SCORING","subtype":"JOKER_TRIGGER","payload":{{"joker":{{"position":2,"name":"Blueprint","id":"j2"}},"mult":4,"score_contribution":4,"trigger_index":{i}}},"timestamp":1002}}"#),
            _ => format!(r#"{{"type":"SCORING","subtype":"JOKER_TRIGGER","payload":{{"joker":{{"position":1,"name":"Joker","id":"j1"}},"mult":4,"score_contribution":inf,"trigger_index":{i}}},"timestamp":1002}}"#),
        });
    }
    events.push(r#"{"type":"SCORING","subtype":"HAND_EVAL_COMPLETE","payload":{"final_chips":80,"final_mult":inf},"timestamp":1003}"#.to_string());
    events.push(r#"{"type":"GAME_STATE","payload":{"ante":1,"round":2,"money":4,"game_state":"SELECTING_HAND","jokers":[{"position":1,"name":"Joker","id":"j1"}]},"timestamp":1004}"#.to_string());
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    decode_body(body.as_bytes(), Endpoint::Batch).unwrap().events.into_iter().map(|d| *d.event).collect()
}

/// Offers `rounds` passes over `events` for each of `sessions` sessions, round
/// robin, 10 µs apart, ticking every 64 events; returns the messages built.
fn run(events: &[pb::Event], sessions: usize, rounds: usize, out: &mut Vec<Aggregated>) -> usize {
    let mut agg = Aggregator::new(AggregateConfig::default()).unwrap();
    let names: Vec<String> = (0..sessions).map(|s| format!("bench-{s}")).collect();
    let mut now = Duration::ZERO;
    let mut seq = 0u64;
    let mut n = 0usize;
    let mut messages = 0;
    for _ in 0..rounds {
        for e in events {
            seq += 1;
            for name in &names {
                now += Duration::from_micros(10);
                // A fresh event each time, as the server offers: an offer takes its game state.
                agg.offer(name, seq, &mut e.clone(), now, out).unwrap();
                n += 1;
                if n.is_multiple_of(64) {
                    agg.tick(now, out);
                    messages += out.len();
                    out.clear();
                }
            }
        }
    }
    agg.flush_all(out);
    messages += out.len();
    out.clear();
    messages
}

fn aggregate(c: &mut Criterion) {
    let mut out = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("aggregate");

    let hand20 = hand(20);
    for sessions in [1usize, 64, 1024] {
        let rounds = (20_000 / (hand20.len() * sessions)).max(1);
        group.throughput(Throughput::Elements((hand20.len() * sessions * rounds) as u64));
        group.bench_with_input(BenchmarkId::new("hands20_sessions", sessions), &sessions, |b, &s| {
            b.iter(|| black_box(run(&hand20, s, rounds, &mut out)))
        });
    }

    let mixed: Vec<pb::Event> =
        decode_body(&mod_batch(500, 0, true), Endpoint::Batch).unwrap().events.into_iter().map(|d| *d.event).collect();
    group.throughput(Throughput::Elements((mixed.len() * 16) as u64));
    group.bench_function("mod_batch500_x16_sessions", |b| b.iter(|| black_box(run(&mixed, 16, 1, &mut out))));

    let big = hand(5_000);
    group.throughput(Throughput::Elements(big.len() as u64));
    group.bench_function("cascade_5000", |b| b.iter(|| black_box(run(&big, 1, 1, &mut out))));
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);

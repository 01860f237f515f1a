//! Instructions to make and encode aggregated messages, for docs/perf.md:
//! the message a hand of 20 joker triggers makes, encoded COUNT times as a
//! shard stages it (`jimbus_proto::wire`, one pass), or with `--prost`
//! through prost's `Message::encode`, which walks each nested message again
//! for its length at every level. With `--offer`, the hand is offered COUNT
//! times, and each message it makes is encoded, then taken back as the pump
//! takes back what it logged: the aggregation a shard does for a hand.
//!
//! ```text
//! cargo build --release -p jimbus-perf --example aggregated_encoding
//! valgrind --tool=callgrind target/release/examples/aggregated_encoding COUNT [--prost] [--offer]
//! ```
//!
//! Run it with two counts under callgrind and divide the difference of the
//! instruction totals by the difference of the counts: setup cancels out.

use jimbus_core::aggregate::{AggregateConfig, Aggregated, Aggregator};
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_proto::events::{self as pb, Event};
use std::time::Duration;

/// The server's allocator, as the shard allocates.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A hand in the mod's dialect: its start, `triggers` joker triggers over five
/// jokers, its complete, then a game state with the five jokers.
fn scored_hand(triggers: usize) -> Vec<Event> {
    const JOKERS: [&str; 5] = ["Joker", "Greedy Joker", "Blueprint", "Brainstorm", "Hanging Chad"];
    let trigger = |i: usize| {
        let (position, name) = (i % JOKERS.len(), JOKERS[i % JOKERS.len()]);
        format!(
            r#"{{"type":"SCORING","subtype":"JOKER_TRIGGER","payload":{{"joker":{{"position":{position},"name":"{name}","id":"j{position}"}},"mult":4,"score_contribution":8,"trigger_index":{i}}},"timestamp":{}}}"#,
            1_700_000_000_001u64 + i as u64
        )
    };
    let jokers: Vec<String> = JOKERS
        .iter()
        .enumerate()
        .map(|(p, name)| format!(r#"{{"position":{p},"name":"{name}","id":"j{p}"}}"#))
        .collect();
    let events: Vec<String> = std::iter::once(
        r#"{"type":"SCORING","subtype":"HAND_EVAL_START","payload":{"cards":["AS","KS"],"hand_type":"Pair"},"timestamp":1700000000000}"#.to_string(),
    )
    .chain((0..triggers).map(trigger))
    .chain([
        r#"{"type":"SCORING","subtype":"HAND_EVAL_COMPLETE","payload":{"final_chips":120,"final_mult":44},"timestamp":1700000000100}"#.to_string(),
        format!(r#"{{"type":"GAME_STATE","payload":{{"ante":2,"round":5,"money":9,"game_state":"SELECTING_HAND","jokers":[{}]}},"timestamp":1700000000101}}"#, jokers.join(",")),
    ])
    .collect();
    let body = format!(r#"{{"session_id":"bench","events":[{}]}}"#, events.join(","));
    decode_body(body.as_bytes(), Endpoint::Batch)
        .expect("the hand decodes")
        .events
        .into_iter()
        .map(|d| *d.event)
        .collect()
}

fn main() {
    jimbus_net::allocator::tune();
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let with_prost = std::env::args().any(|a| a == "--prost");
    let hand = scored_hand(20);
    let mut aggregator = Aggregator::new(AggregateConfig::default()).expect("the default configuration is valid");
    let (mut out, mut now, mut sequence) = (Vec::new(), Duration::ZERO, 0);
    // Offers the hand's events (each a fresh copy, as a shard offers decoded
    // events), then runs the timers past the window, which emits its message.
    let mut offer_hand = |aggregator: &mut Aggregator, out: &mut Vec<Aggregated>| {
        for event in &hand {
            (sequence, now) = (sequence + 1, now + Duration::from_micros(10));
            aggregator.offer("bench", sequence, &mut event.clone(), now, out).expect("offered");
        }
        now += Duration::from_millis(200);
        aggregator.tick(now, out);
    };
    let mut buffer = Vec::with_capacity(1 << 16);
    let mut encode = |message: &pb::BalatroGameStateEvent| {
        buffer.clear();
        if with_prost {
            prost::Message::encode(message, &mut buffer).expect("a Vec grows as needed");
        } else {
            jimbus_proto::wire::Write::write(message, &mut buffer);
        }
        buffer.len()
    };
    let mut bytes = 0;
    if std::env::args().any(|a| a == "--offer") {
        for _ in 0..count {
            offer_hand(&mut aggregator, &mut out);
            for logged in out.drain(..) {
                bytes += encode(&logged.message);
                aggregator.take_back([logged]);
            }
        }
        println!(
            "{count} hands of {} events offered, their messages encoded and taken back, {bytes} bytes",
            hand.len()
        );
        return;
    }
    offer_hand(&mut aggregator, &mut out);
    let messages: Vec<_> = out.into_iter().map(|a| a.message).collect();
    for message in messages.iter().cycle().take(count) {
        bytes += encode(message);
    }
    let triggers: usize = messages.iter().map(|m| m.triggers.len()).sum();
    println!("{count} encodings of the hand's {} message(s) ({triggers} triggers), {bytes} bytes", messages.len());
}

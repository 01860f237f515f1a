//! The aggregation cases, run on every bus backend (aggregation.rs: the embedded
//! log; jetstream.rs: NATS JetStream): mod-dialect HTTP batches in, one
//! `BalatroGameStateEvent` per scored hand out on `balatro.<session>.aggregated`,
//! checked field by field against what was sent and against the raw stream.

use crate::harness::{self, Jimbus};
use jimbus_proto::bus::{subscribe_response::Body, SubscribeResponse};
use jimbus_proto::events as pb;

/// Builds the events of one session, in the mod's dialect, numbering ids.
struct Game {
    session: String,
    next: usize,
    events: Vec<String>,
}

impl Game {
    fn new(session: &str) -> Self {
        Self { session: session.into(), next: 0, events: Vec::new() }
    }

    fn push(&mut self, kind: &str, subtype: Option<&str>, payload: String, timestamp: f64) {
        let subtype = subtype.map_or(String::new(), |s| format!(r#""subtype":"{s}","#));
        self.events.push(format!(
            r#"{{"event_id":"{}-{}","source":"BalatroMCP","type":"{kind}",{subtype}"session_id":"{}","payload":{payload},"timestamp":{timestamp}}}"#,
            self.session, self.next, self.session
        ));
        self.next += 1;
    }

    fn state(&mut self, money: f64, ante: u32) {
        self.push("GAME_STATE", None, format!(r#"{{"money":{money},"ante":{ante},"phase":"SELECTING_HAND"}}"#), 1e12);
    }

    fn start(&mut self, hand: &str) {
        self.push("SCORING", Some("HAND_EVAL_START"), format!(r#"{{"hand_type":"{hand}","cards":["1","2"]}}"#), 1.0);
    }

    /// A SCORING/JOKER_TRIGGER; `clock` alternates the game clock and epoch ms.
    fn trigger(&mut self, i: usize, chips: &str, clock: f64) {
        let payload = format!(
            r#"{{"joker":{{"name":"Joker {i}","position":{}}},"chips":{chips},"mult":2,"score_contribution":1,"trigger_index":{i}}}"#,
            i % 5 + 1
        );
        self.push("SCORING", Some("JOKER_TRIGGER"), payload, clock);
    }

    fn complete(&mut self, triggers: usize) {
        let payload = format!(r#"{{"duration_ms":3.5,"final_chips":120,"final_mult":40,"triggers":{triggers}}}"#);
        self.push("SCORING", Some("HAND_EVAL_COMPLETE"), payload, 2.0);
    }

    /// A hand of `n` triggers whose clocks alternate between the game's and epoch ms.
    fn hand(&mut self, n: usize) {
        self.start("Flush");
        for i in 0..n {
            let clock = if i % 2 == 0 { 1_000.0 + i as f64 } else { 1_795_531_353_000.0 - i as f64 };
            self.trigger(i, "10", clock);
        }
        self.complete(n);
    }

    /// Posts everything built so far in batches of 50, as the mod does.
    fn post(&mut self, server: &Jimbus) {
        for chunk in std::mem::take(&mut self.events).chunks(50) {
            let body = format!(r#"{{"events":[{}]}}"#, chunk.join(","));
            let response = server.post("/api/v1/events/batch", body.as_bytes());
            assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
            assert_eq!(response.json()["accepted"], chunk.len());
        }
    }
}

fn aggregated(delivery: &SubscribeResponse) -> &pb::BalatroGameStateEvent {
    match &delivery.body {
        Some(Body::Aggregated(a)) => a,
        other => panic!("not an aggregated message: {other:?}"),
    }
}

/// The aggregated messages of a session that carry a hand (state-only messages aside).
async fn hands(server: &Jimbus, session: &str, count: usize) -> Vec<pb::BalatroGameStateEvent> {
    let mut out = Vec::new();
    let mut read = count;
    // State-only messages may come first: read on until `count` hands are in.
    while out.len() < count {
        let deliveries = server.read_all(&format!("balatro.{session}.aggregated"), read).await;
        out = deliveries.iter().map(aggregated).filter(|a| a.cascade_info.is_some()).cloned().collect();
        assert!(read < count + 8 || out.len() >= count, "only {} hands arrived for {session}", out.len());
        read += 1;
    }
    out
}

/// The raw SCORING sequences of a session, in order.
async fn raw_scoring_sequences(server: &Jimbus, session: &str, count: usize) -> Vec<u64> {
    let raw = server.read_all(&format!("balatro.{session}.SCORING"), count).await;
    raw.iter()
        .map(|d| match &d.body {
            Some(Body::Event(e)) => e.sequence,
            other => panic!("not an event: {other:?}"),
        })
        .collect()
}

/// Checks one hand of `n` triggers, field by field.
fn check_hand(hand: &pb::BalatroGameStateEvent, session: &str, n: usize, raw: &[u64]) {
    assert_eq!(hand.session_id, session);
    let info = hand.cascade_info.as_ref().expect("cascade info");
    assert_eq!(info.trigger_count as usize, n);
    assert_eq!(info.hand_type, "Flush");
    assert_eq!(info.cards, vec!["1", "2"]);
    assert!(info.complete, "the hand was closed by HAND_EVAL_COMPLETE");
    assert_eq!((info.part, info.final_part), (1, true));
    assert_eq!(info.chips_delta, 10.0 * n as f64);
    assert_eq!(info.mult_delta, 2.0 * n as f64);
    assert_eq!(info.score_delta, n as f64);
    assert!(info.first_trigger_at.is_some() && info.last_trigger_at.is_some());
    assert!(info.duration_ms >= 0.0);
    assert_eq!(hand.triggers.len(), n);
    for (i, t) in hand.triggers.iter().enumerate() {
        // Arrival order, whatever the clocks say; sequences are the raw stream's.
        assert_eq!(t.joker_name, format!("Joker {i}"));
        assert_eq!(t.order as usize, i);
        assert_eq!(t.position as usize, i % 5 + 1);
        assert_eq!((t.chips, t.mult), (10.0, 2.0));
    }
    // Raw: START, the triggers, COMPLETE.
    let trigger_sequences: Vec<u64> = hand.triggers.iter().map(|t| t.sequence).collect();
    assert_eq!(trigger_sequences, raw[1..=n].to_vec());
}

pub async fn cascades_of_100_500_and_5000_triggers_become_one_message_each(server: &Jimbus) {
    for n in [100usize, 500, 5000] {
        let session = format!("cascade{n}");
        let mut game = Game::new(&session);
        game.state(42.0, 3);
        game.hand(n);
        game.post(server);
        let raw = raw_scoring_sequences(server, &session, n + 2).await;
        let hands = hands(server, &session, 1).await;
        check_hand(&hands[0], &session, n, &raw);
        let base = hands[0].base.as_ref().expect("the latest state rides along");
        assert_eq!((base.money, base.ante), (Some(42.0), Some(3)));
    }
}

pub async fn interleaved_sessions_keep_their_own_hands(server: &Jimbus) {
    let mut games: Vec<Game> = (0..4).map(|i| Game::new(&format!("mix{i}"))).collect();
    for round in 0..3 {
        for (i, game) in games.iter_mut().enumerate() {
            game.hand(10 + i + round);
            game.post(server);
        }
    }
    for (i, game) in games.iter().enumerate() {
        let sizes: Vec<usize> = (0..3).map(|round| 10 + i + round).collect();
        let total: usize = sizes.iter().map(|n| n + 2).sum();
        let raw = raw_scoring_sequences(server, &game.session, total).await;
        let hands = hands(server, &game.session, 3).await;
        let mut at = 0;
        for (hand, n) in hands.iter().zip(sizes) {
            check_hand(hand, &game.session, n, &raw[at..]);
            at += n + 2;
        }
    }
}

pub async fn a_hand_without_its_complete_is_published_incomplete_after_the_timeout(server: &Jimbus) {
    let mut game = Game::new("lost");
    game.start("Pair");
    for i in 0..7 {
        game.trigger(i, "inf", 5.0);
    }
    game.post(server);
    let hands = hands(server, "lost", 1).await;
    let info = hands[0].cascade_info.as_ref().unwrap();
    assert!(!info.complete, "no HAND_EVAL_COMPLETE arrived");
    assert_eq!(info.trigger_count, 7);
    assert_eq!(info.hand_type, "Pair");
    assert_eq!(info.chips_delta, f64::INFINITY, "non-finite deltas are kept");
}

/// Bracketless triggers stay one legacy group while each comes within the
/// server's legacy gap of the last (`--legacy-gap-ms`; run with an hour). A
/// window's end falls between the two triggers here: its state-only message
/// comes a window (100 ms) after the first, later than the default gap of
/// 50 ms, after which the first trigger would have been a group of its own
/// and that message would carry it. The next hand's start closes the group.
pub async fn bracketless_triggers_within_the_legacy_gap_are_one_group(server: &Jimbus) {
    let mut game = Game::new("legacy");
    game.state(5.0, 1);
    game.trigger(0, "10", 5.0);
    game.post(server);
    let first = server.read_all("balatro.legacy.aggregated", 1).await;
    assert_eq!(first.len(), 1, "a window's end publishes the state");
    let first = aggregated(&first[0]);
    assert!(first.cascade_info.is_none() && first.triggers.is_empty(), "the group is still open: {first:?}");
    game.trigger(1, "10", 6.0);
    game.post(server);
    game.start("Pair");
    game.post(server);
    let hands = hands(server, "legacy", 1).await;
    assert_eq!(hands[0].cascade_info.as_ref().unwrap().trigger_count, 2, "{:?}", hands[0]);
    let names: Vec<&str> = hands[0].triggers.iter().map(|t| t.joker_name.as_str()).collect();
    assert_eq!(names, ["Joker 0", "Joker 1"]);
}

pub async fn the_field_mods_cascade_fixture_becomes_one_hand_with_depth(server: &Jimbus) {
    let body = std::fs::read(format!("{}/batch_cascade50.json", harness::FIXTURES)).unwrap();
    let response = server.post("/api/v1/events/batch", &body);
    assert_eq!(response.status, 200);
    let session = server.read_all("balatro.>", 1).await[0].topic.split('.').nth(1).unwrap().to_string();
    let hands = hands(server, &session, 1).await;
    let info = hands[0].cascade_info.as_ref().unwrap();
    assert!(info.trigger_count > 0);
    // Blueprint and Brainstorm copy the joker before them: depth grows.
    assert!(info.depth > 0, "copy jokers deepen the cascade: {info:?}");
    assert!(hands[0].triggers.windows(2).all(|w| w[0].sequence < w[1].sequence));
}

pub async fn a_subscriber_chooses_the_raw_or_the_aggregated_stream(server: &Jimbus) {
    let mut game = Game::new("choose");
    game.state(7.0, 1);
    game.hand(20);
    game.post(server);
    let aggregated = hands(server, "choose", 1).await;
    assert_eq!(aggregated.len(), 1);
    // The aggregated messages are in the log among the raw events; the exclusion keeps them out.
    let raw = server.read_all("balatro.choose.> -balatro.*.aggregated", 23).await;
    assert_eq!(raw.len(), 23);
    assert!(raw.iter().all(|d| matches!(d.body, Some(Body::Event(_)))), "only raw events");
    let only_aggregated = server.read_all("balatro.*.aggregated", 1).await;
    assert!(matches!(only_aggregated[0].body, Some(Body::Aggregated(_))));
}

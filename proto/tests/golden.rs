//! Golden files that other languages decode (tools/tests/test_cross_language.py):
//! a binary `PublishRequest` made by Rust, and the same message as canonical
//! protobuf JSON. This test fails when the committed files drift from what Rust
//! produces; `JIMBUS_BLESS=1 cargo test -p jimbus-proto --test golden` rewrites them.

use jimbus_proto::bus;
use jimbus_proto::events::{self as pb, event::Payload};
use prost::Message;
use prost_reflect::DynamicMessage;
use std::path::PathBuf;

fn golden() -> bus::PublishRequest {
    let timing = |ms: f64| {
        Some(pb::Timing {
            client_timestamp_ms: ms,
            client_clock: pb::ClientClock::EpochMs as i32,
            received_at: Some(prost_types::Timestamp { seconds: 1_795_531_353, nanos: 250_000_000 }),
            ..Default::default()
        })
    };
    let event = |id: &str, kind: &str, payload| pb::Event {
        event_id: id.into(),
        event_type: kind.into(),
        source: "BalatroMCP".into(),
        session_id: "mcp-golden".into(),
        sequence: 1,
        correlation_id: "golden-request".into(),
        timing: timing(1_795_531_353_000.0),
        metadata: [("batch_id".to_string(), "b-1".to_string())].into(),
        payload: Some(payload),
        ..Default::default()
    };
    let score = pb::ScoreChangedEvent {
        old_chips: 1e308,
        new_chips: f64::INFINITY,
        old_mult: -0.0,
        new_mult: f64::NAN,
        extra: None,
    };
    let jokers = vec![pb::Joker { name: "Jöker ☺ 小丑".into(), id: "j☺".into(), position: 1, extra: None }];
    let state = pb::GameStateEvent {
        phase: "SELECTING_HAND".into(),
        ante: Some(2),
        money: Some(-0.0),
        jokers,
        ..Default::default()
    };
    let extra = jimbus_proto::free_form::Struct {
        fields: [(
            "levels".into(),
            jimbus_proto::free_form::Value {
                kind: Some(jimbus_proto::free_form::value::Kind::StringValue("1".into())),
            },
        )]
        .into(),
    };
    let trigger = pb::ScoringJokerTrigger {
        joker: Some(pb::Joker { name: "Blueprint".into(), id: "j2".into(), position: 2, extra: None }),
        score_contribution: 1.2345678901235e17,
        trigger_index: 7,
        extra: Some(extra),
        ..Default::default()
    };
    let scoring = pb::ScoringEvent { step: Some(pb::scoring_event::Step::JokerTrigger(trigger)) };
    bus::PublishRequest {
        events: vec![
            event("e-1", "SCORE_CHANGED", Payload::ScoreChanged(score)),
            event("e-2", "GAME_STATE", Payload::GameState(state)),
            event("e-3", "SCORING", Payload::Scoring(scoring)),
        ],
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

#[test]
fn golden_files_match_what_rust_produces() {
    let message = golden();
    let binary = message.encode_to_vec();
    let descriptor = jimbus_proto::descriptor_pool().get_message_by_name("jimbot.bus.v1.PublishRequest").unwrap();
    if std::env::var_os("JIMBUS_BLESS").is_some() {
        let dynamic = DynamicMessage::decode(descriptor.clone(), binary.as_slice()).unwrap();
        std::fs::write(dir().join("golden_publish_request.bin"), &binary).unwrap();
        std::fs::write(
            dir().join("golden_publish_request.json"),
            serde_json::to_string_pretty(&dynamic).unwrap() + "\n",
        )
        .unwrap();
    }
    let committed = std::fs::read(dir().join("golden_publish_request.bin")).expect("golden binary committed");
    assert_eq!(committed, binary, "the golden binary drifted: rerun with JIMBUS_BLESS=1");
    let json = std::fs::read_to_string(dir().join("golden_publish_request.json")).expect("golden JSON committed");
    let dynamic = DynamicMessage::deserialize(descriptor, &mut serde_json::Deserializer::from_str(&json)).unwrap();
    let from_json = bus::PublishRequest::decode(dynamic.encode_to_vec().as_slice()).unwrap();
    assert_eq!(from_json.encode_to_vec(), binary, "the golden JSON does not describe the golden binary");
}

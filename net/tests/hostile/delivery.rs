//! Defect 1 (and 6c): an event that is accepted reaches a default client. Every
//! event is posted over HTTP and read back with the default tonic client
//! (prost's recursion limit, a 4 MiB message limit) and with `jimbus tail`
//! (protobuf JSON); the Python runtime's side is
//! tools/tests/test_hostile_delivery.py. So does the aggregated message that
//! carries what a session's game states merged into.

use crate::harness::Jimbus;
use jimbus_proto::bus::subscribe_response::Body;
use jimbus_proto::validate::{MAX_DELIVERY_DEPTH, MAX_EVENT_BYTES};
use std::process::Command;

/// An event whose unknown key `deep` holds `arrays` nested lists. Its deepest
/// message in a delivery is level 5 + 2 per list: SubscribeResponse, Event,
/// `extra` Struct, map entry, Value, then ListValue and Value per list.
fn deep_event(session: &str, arrays: usize) -> String {
    format!(r#"{{"type":"HEARTBEAT","session_id":"{session}","deep":{}1{}}}"#, "[".repeat(arrays), "]".repeat(arrays))
}

/// The most lists that fit: 5 + 2 * lists <= MAX_DELIVERY_DEPTH.
fn max_lists() -> usize {
    (MAX_DELIVERY_DEPTH - 5) / 2
}

/// Runs `jimbus tail PATTERN --from-start --count N` and returns its JSON lines.
fn tail(server: &Jimbus, pattern: &str, count: usize) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_jimbus"))
        .args(["tail", pattern, "--from-start", "--count", &count.to_string(), "--grpc", &server.grpc_url()])
        .output()
        .expect("jimbus tail runs");
    assert!(output.status.success(), "tail failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nesting_past_what_decoders_take_is_rejected_and_dead_lettered() {
    let server = Jimbus::start(&[]);
    let body = format!(r#"{{"events":[{},{}]}}"#, deep_event("deep", max_lists()), deep_event("deep", max_lists() + 1));
    let response = server.post("/api/v1/events/batch", body.as_bytes());
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let answer = response.json();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    assert!(answer["rejected"][0]["error"].as_str().unwrap().contains("max_depth=100"), "{answer}");
    // The default tonic client (prost, recursion limit 100) decodes the deepest accepted one.
    let delivered = server.read_all("balatro.deep.>", 1).await;
    assert!(matches!(delivered[0].body, Some(Body::Event(_))));
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!("no dead letter") };
    assert!(letter.reason.contains("max_depth"), "{}", letter.reason);
    assert_eq!(tail(&server, "balatro.deep.>", 1).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_and_http_take_the_same_depth() {
    let server = Jimbus::start(&[]);
    let mut client = server.client().await;
    let mut events = Vec::new();
    for lists in [max_lists(), max_lists() + 1] {
        let body = jimbus_core::ingest::decode_body(
            deep_event("grpc-deep", lists).as_bytes(),
            jimbus_core::ingest::Endpoint::Single,
        );
        events.push(*body.unwrap().events.remove(0).event);
    }
    let answer = client.publish(jimbus_proto::bus::PublishRequest { events }).await.unwrap().into_inner();
    assert_eq!(answer.accepted, 1, "{answer:?}");
    assert_eq!(answer.rejected.len(), 1);
    assert_eq!(answer.rejected[0].index, 1);
    assert!(answer.rejected[0].error.contains("max_depth=100"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_the_size_cap_is_rejected_and_its_dead_letter_stays_deliverable() {
    let server = Jimbus::start(&[]);
    // Small numbers in a list cost 11 bytes each in protobuf and 2 in JSON, so a
    // 1 MiB body encodes to far more than the cap.
    let items = MAX_EVENT_BYTES / 9;
    let list = vec!["1"; items].join(",");
    let big = format!(r#"{{"type":"HEARTBEAT","session_id":"big","numbers":[{list}]}}"#);
    let body = format!(r#"{{"events":[{big},{{"type":"HEARTBEAT","session_id":"big"}}]}}"#);
    let response = server.post("/api/v1/events/batch", body.as_bytes());
    assert_eq!(response.status, 200);
    let answer = response.json();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert!(answer["rejected"][0]["error"].as_str().unwrap().contains("max_size"), "{answer}");
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!("no dead letter") };
    assert!(letter.raw.len() <= 1 << 20);
    assert_eq!(tail(&server, ">", 2).len(), 2, "tail reads the event and the dead letter");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_finite_numbers_in_unknown_fields_reach_json_clients() {
    let server = Jimbus::start(&[]);
    let body = br#"{"type":"HEARTBEAT","session_id":"nf","odd":inf,"list":[nan,-inf],"nested":{"x":-nan}}"#;
    let response = server.post("/api/v1/events", body);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let lines = tail(&server, "balatro.nf.>", 1);
    let extra = &lines[0]["event"]["extra"];
    assert_eq!(extra["odd"], "Infinity", "{}", lines[0]);
    assert_eq!(extra["list"], serde_json::json!(["NaN", "-Infinity"]));
    assert_eq!(extra["nested"]["x"], "NaN");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_structs_with_non_finite_numbers_are_rejected() {
    let server = Jimbus::start(&[]);
    let mut client = server.client().await;
    let mut event = jimbus_core::ingest::decode_body(
        br#"{"type":"HEARTBEAT","session_id":"g","x":1}"#,
        jimbus_core::ingest::Endpoint::Single,
    )
    .unwrap()
    .events
    .remove(0)
    .event;
    let extra = event.extra.as_mut().unwrap();
    extra.fields.insert(
        "x".into(),
        jimbus_proto::free_form::Value { kind: Some(jimbus_proto::free_form::value::Kind::NumberValue(f64::NAN)) },
    );
    let answer = client.publish(jimbus_proto::bus::PublishRequest { events: vec![*event] }).await.unwrap().into_inner();
    assert_eq!(answer.accepted, 0);
    assert!(answer.rejected[0].error.contains("finite"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn game_states_with_ever_new_keys_keep_the_aggregated_state_deliverable() {
    // One window for the whole test, ended by an ERROR: one aggregated message.
    let server = Jimbus::start(&["--shards", "1", "--aggregate-window-ms", "600000"]);
    // 64 states of 4,000 new keys each: about 6 MiB merged, past the default
    // client's 4 MiB message limit; every single state is far below it.
    let states = 64;
    for batch in 0..states / 8 {
        let events: Vec<String> = (0..8)
            .map(|i| {
                let n = batch * 8 + i;
                let keys: Vec<String> = (0..4000).map(|k| format!(r#""key{n}_{k}":{k}"#)).collect();
                format!(r#"{{"type":"GAME_STATE","session_id":"grow","payload":{{"ante":1,{}}}}}"#, keys.join(","))
            })
            .collect();
        let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
        let response = server.post("/api/v1/events/batch", body.as_bytes());
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.json()["accepted"], 8);
    }
    let response =
        server.post("/api/v1/events", br#"{"type":"ERROR","session_id":"grow","payload":{"message":"end"}}"#);
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let delivered = server.read_all("balatro.grow.aggregated", 1).await;
    assert_eq!(delivered.len(), 1, "the default client reads the aggregated message");
    let Some(Body::Aggregated(message)) = &delivered[0].body else { panic!("not an aggregated message") };
    assert_eq!(message.coalesced_game_states, states as u32, "every state is accounted for");
    let base = prost::Message::encoded_len(message.base.as_ref().expect("the merged state"));
    assert!(base <= 1 << 20, "the merged state is {base} bytes");
    assert!(server.metric("jimbus_aggregate_game_state_restarts_total") >= 1.0);
}

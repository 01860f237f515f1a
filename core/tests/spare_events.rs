//! A spare event (`jimbus_core::spare_events`) decodes exactly as a new one:
//! nothing of the event it held before shows through, whatever either carried.
//! Each body is decoded on this thread, which takes spares and gets every
//! decoded event back, and on a thread that never gets one back, where every
//! event is new.

use jimbus_core::ingest::{decode_body, DecodedEvent, Endpoint};
use jimbus_core::spare_events;
use proptest::prelude::*;
use prost::Message;

/// What a decoding produced, comparable even with NaNs in it: the events'
/// places and protobuf bytes, the rejections, or the body's error.
type Outcome = Result<(Vec<(usize, std::ops::Range<usize>, Vec<u8>)>, String), String>;

/// What decoding `body` produced; its decoded events go to `then`.
fn decode(body: &[u8], endpoint: Endpoint, then: impl FnOnce(Vec<DecodedEvent>)) -> Outcome {
    let decoded = decode_body(body, endpoint).map_err(|e| format!("{e:?}"))?;
    let events = decoded.events.iter().map(|e| (e.index, e.raw.clone(), e.event.encode_to_vec())).collect();
    let rest = format!("{:?} {:?}", decoded.rejected, decoded.envelope);
    then(decoded.events);
    Ok((events, rest))
}

/// Decodes `body`, then hands its events back to this thread's spares.
fn decode_and_give_back(body: &[u8], endpoint: Endpoint) -> Outcome {
    decode(body, endpoint, |events| spare_events::give_back(events.into_iter().map(|e| e.event)))
}

/// Decodes each body on a new thread, where no event is ever given back.
fn decode_fresh(bodies: &[(Vec<u8>, Endpoint)]) -> Vec<Outcome> {
    let bodies = bodies.to_vec();
    std::thread::spawn(move || bodies.iter().map(|(body, endpoint)| decode(body, *endpoint, drop)).collect())
        .join()
        .unwrap()
}

fn fixtures() -> Vec<(Vec<u8>, Endpoint)> {
    let fixtures = jimbus_harness::fixtures();
    assert!(fixtures.len() >= 30, "fixtures missing from {}", jimbus_harness::FIXTURES);
    fixtures
        .into_iter()
        .map(|(name, body)| (body, if name.starts_with("batch_") { Endpoint::Batch } else { Endpoint::Single }))
        .collect()
}

#[test]
fn every_fixture_decodes_the_same_after_every_other() {
    let fixtures = fixtures();
    let fresh = decode_fresh(&fixtures);
    for (before, endpoint) in &fixtures {
        for ((body, endpoint_now), expected) in fixtures.iter().zip(&fresh) {
            let _ = decode_and_give_back(before, *endpoint);
            assert_eq!(
                &decode_and_give_back(body, *endpoint_now),
                expected,
                "{} after {}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(before)
            );
        }
    }
}

/// One event object with any of the top-level keys, as strings, numbers or
/// values of the wrong kind, and a payload of the types the decoder knows.
fn event_json() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        "[a-zA-Z0-9_ -]{0,80}".prop_map(|s| format!("{s:?}")),
        (-1e6f64..1e6).prop_map(|n| format!("{n}")),
        Just("[]".to_string()),
    ];
    let kind = prop_oneof![
        Just("\"GAME_STATE\""),
        Just("\"MONEY_CHANGED\""),
        Just("\"SCORING\""),
        Just("\"HEARTBEAT\""),
        Just("\"NEW_KIND\""),
        Just("7")
    ];
    let payload = prop_oneof![
        Just(r#"{"jokers":[{"name":"Joker","id":"1"}],"money":4,"odd":{"a":[1]}}"#),
        Just(r#"{"old_value":5,"new_value":"9"}"#),
        Just(r#"{"joker":{"name":"Blueprint"},"context":"c","parent":"p"}"#),
        Just("{}"),
        Just("[]"),
    ];
    let key = |name: &'static str, value: BoxedStrategy<String>| {
        proptest::option::of(value).prop_map(move |v| v.map(|v| format!("\"{name}\":{v}")))
    };
    (
        key("type", kind.prop_map(str::to_string).boxed()),
        key("subtype", prop_oneof![Just("\"JOKER_TRIGGER\"".to_string()), text.clone()].boxed()),
        key("source", text.clone().boxed()),
        key("event_id", text.clone().boxed()),
        key("session_id", text.clone().boxed()),
        key("correlation_id", text.boxed()),
        key("payload", payload.prop_map(str::to_string).boxed()),
        key("priority", prop_oneof![Just("\"high\""), Just("\"low\""), Just("3")].prop_map(str::to_string).boxed()),
        key("sequence", (0u32..9).prop_map(|n| n.to_string()).boxed()),
        key("extra_key", Just("{\"x\":true}".to_string()).boxed()),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j)| {
            let keys: Vec<String> = [a, b, c, d, e, f, g, h, i, j].into_iter().flatten().collect();
            format!("{{{}}}", keys.join(","))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bodies_decode_the_same_with_spares(events in proptest::collection::vec(event_json(), 1..12)) {
        let bodies: Vec<(Vec<u8>, Endpoint)> = events
            .iter()
            .map(|e| (e.clone().into_bytes(), Endpoint::Single))
            .chain([(format!("{{\"events\":[{}]}}", events.join(",")).into_bytes(), Endpoint::Batch)])
            .collect();
        let fresh = decode_fresh(&bodies);
        for ((body, endpoint), expected) in bodies.iter().zip(&fresh) {
            prop_assert_eq!(&decode_and_give_back(body, *endpoint), expected, "{}", String::from_utf8_lossy(body));
        }
    }
}

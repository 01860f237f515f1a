//! Every example in `proto/examples/` parses as canonical protobuf JSON, passes
//! the validator, and survives JSON -> binary -> typed -> binary -> JSON. A bad
//! example is reported with its file, and the field path and rule that failed.

use jimbus_proto::events as pb;
use jimbus_proto::validate::Validate;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use std::path::{Path, PathBuf};

fn examples(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

fn descriptor(name: &str) -> MessageDescriptor {
    jimbus_proto::descriptor_pool().get_message_by_name(name).unwrap()
}

/// Parses, validates and round-trips one example; the error names the file.
fn check<T: Message + Default + Validate>(path: &Path, name: &str) -> Result<(), String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: {e}"))?;
    let dynamic = parse_json(&text, name).map_err(|e| format!("{file}: {e}"))?;
    // Typed encodings are canonical (Struct maps are ordered), so they can be compared.
    let typed = T::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| format!("{file}: {e}"))?;
    typed.validate().map_err(|e| format!("{file}: {e}"))?;
    let binary = typed.encode_to_vec();
    let again = T::decode(binary.as_slice()).map_err(|e| format!("{file}: {e}"))?.encode_to_vec();
    if again != binary {
        return Err(format!("{file}: binary round trip changed the message"));
    }
    let back = DynamicMessage::decode(descriptor(name), binary.as_slice()).map_err(|e| format!("{file}: {e}"))?;
    let json = serde_json::to_string(&back).map_err(|e| format!("{file}: {e}"))?;
    let reparsed = parse_json(&json, name).map_err(|e| format!("{file}: {e}"))?;
    let from_json = T::decode(reparsed.encode_to_vec().as_slice()).map_err(|e| format!("{file}: {e}"))?;
    if from_json.encode_to_vec() != binary {
        return Err(format!("{file}: JSON round trip changed the message"));
    }
    Ok(())
}

/// Parses canonical protobuf JSON; an error names the JSON path of the bad value.
fn parse_json(text: &str, name: &str) -> Result<DynamicMessage, String> {
    let mut json = serde_json::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let result =
        DynamicMessage::deserialize(descriptor(name), serde_path_to_error::Deserializer::new(&mut json, &mut track));
    result.map_err(|e| format!("{}: {e}", track.path()))
}

#[test]
fn every_event_example_round_trips() {
    let files = examples("events");
    assert!(files.len() >= 22, "one example per event type");
    let failures: Vec<String> =
        files.iter().filter_map(|f| check::<pb::Event>(f, "jimbot.events.v1.Event").err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_aggregated_example_round_trips() {
    for file in examples("aggregated") {
        check::<pb::BalatroGameStateEvent>(&file, "jimbot.events.v1.BalatroGameStateEvent").unwrap();
    }
}

#[test]
fn every_payload_kind_has_an_example() {
    let kinds: std::collections::BTreeSet<String> = examples("events")
        .iter()
        .map(|f| {
            let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.retain(|k| {
                descriptor("jimbot.events.v1.Event").oneofs().next().unwrap().fields().any(|f| f.json_name() == k)
            });
            let kind = keys.pop().unwrap_or_default();
            let inner =
                value[&kind].as_object().and_then(|o| o.keys().find(|k| *k != "extra").cloned()).unwrap_or_default();
            if kind == "scoring" || kind == "learningDecision" {
                format!("{kind}.{inner}")
            } else {
                kind
            }
        })
        .collect();
    for field in descriptor("jimbot.events.v1.Event").oneofs().next().unwrap().fields() {
        let name = field.json_name();
        match name {
            "scoring" | "learningDecision" => {
                for inner in field.kind().as_message().unwrap().oneofs().next().unwrap().fields() {
                    assert!(
                        kinds.contains(&format!("{name}.{}", inner.json_name())),
                        "no example for {name}.{}",
                        inner.json_name()
                    );
                }
            }
            _ => assert!(kinds.contains(name), "no example for {name}: {kinds:?}"),
        }
    }
}

#[test]
fn a_malformed_example_is_reported_with_file_and_field() {
    let dir = tempfile_dir();
    let bad_json = dir.join("bad_json.json");
    std::fs::write(&bad_json, r#"{"eventType": "HEARTBEAT", "sequence": "x"}"#).unwrap();
    let err = check::<pb::Event>(&bad_json, "jimbot.events.v1.Event").unwrap_err();
    assert!(err.contains("bad_json.json") && err.contains("sequence"), "{err}");

    let invalid = dir.join("invalid.json");
    std::fs::write(&invalid, r#"{"eventType": "GAME_STATE", "sessionId": "s", "gameState": {"ante": -1}}"#).unwrap();
    let err = check::<pb::Event>(&invalid, "jimbot.events.v1.Event").unwrap_err();
    assert!(err.contains("invalid.json") && err.contains("game_state.ante: min=0"), "{err}");
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jimbus-proto-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

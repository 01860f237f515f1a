//! The property behind defect 1: whatever the decoder accepts, a default prost
//! decoder (tonic's client, recursion limit 100) decodes after storage, and its
//! protobuf JSON (what `jimbus tail` prints) can be written. Generated events
//! mix deep towers of lists and objects around the depth limit, non-finite
//! tokens, escapes and lone surrogates, raw control characters and repeated
//! keys; each is posted to the real server, and every accepted one is read back.

use crate::harness::Jimbus;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("-nan".to_string()),
        Just("-0".to_string()),
        Just("1e308".to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\udc00\ud83d\ude00""#.to_string()),
        Just("\"bell\u{7}esc\u{1b}\"".to_string()),
        "[a-z☺ ]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// A value: a leaf wrapped in up to 60 lists or objects (around the limit),
/// or a small mixed tree.
fn value() -> impl Strategy<Value = String> {
    let tower = (leaf(), proptest::collection::vec(any::<bool>(), 0..60)).prop_map(|(leaf, wraps)| {
        wraps
            .iter()
            .rev()
            .fold(leaf, |inner, &list| if list { format!("[{inner}]") } else { format!(r#"{{"k":{inner}}}"#) })
    });
    let tree = leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-c]", inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![tower, tree]
}

/// An event of the prop session with unknown keys (some repeated) at the top
/// and in a generic payload.
fn event() -> impl Strategy<Value = String> {
    (proptest::collection::vec(("[xyz]", value()), 1..4), value()).prop_map(|(extra, payload)| {
        let extra: Vec<String> = extra.into_iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
        format!(r#"{{"type":"PROP","session_id":"prop",{},"payload":{{"p":{payload}}}}}"#, extra.join(","))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn whatever_is_accepted_decodes_with_default_prost_and_prints_as_json() {
    let server = Jimbus::start(&[]);
    let mut runner = TestRunner::new(Config { cases: 96, failure_persistence: None, ..Config::default() });
    let accepted = std::cell::Cell::new(0usize);
    let refused = std::cell::Cell::new(0usize);
    let result = runner.run(&event(), |body| {
        let response = server.post("/api/v1/events", body.as_bytes());
        prop_assert!(matches!(response.status, 200 | 400), "{} for {body}", response.status);
        if response.status == 200 {
            accepted.set(accepted.get() + 1);
        } else {
            refused.set(refused.get() + 1);
        }
        Ok(())
    });
    result.unwrap();
    assert!(accepted.get() > 10 && refused.get() > 0, "accepted {} refused {}", accepted.get(), refused.get());
    let delivered = server.read_all("balatro.prop.>", accepted.get()).await;
    assert_eq!(delivered.len(), accepted.get(), "every accepted event reaches a default prost client");
    let descriptor = jimbus_proto::descriptor_pool().get_message_by_name("jimbot.bus.v1.SubscribeResponse").unwrap();
    for delivery in delivered {
        let bytes = prost::Message::encode_to_vec(&delivery);
        let message = prost_reflect::DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).unwrap();
        serde_json::to_string(&message).unwrap_or_else(|e| panic!("no JSON for offset {}: {e}", delivery.offset));
    }
}

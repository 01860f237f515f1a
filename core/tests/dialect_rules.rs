//! The rules DIALECT.md states for input the field mod's encoder never writes:
//! a repeated key's last value wins everywhere, a lone surrogate escape in a
//! string becomes U+FFFD, and inf/nan in a free-form value become
//! the strings protobuf JSON uses for them.

use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_proto::events::event::Payload;
use jimbus_proto::free_form::value::Kind;

fn one(body: &str) -> jimbus_proto::events::Event {
    let mut decoded = decode_body(body.as_bytes(), Endpoint::Single).unwrap();
    *decoded.events.remove(0).event
}

fn extra_text(event: &jimbus_proto::events::Event, key: &str) -> String {
    match &event.extra.as_ref().unwrap().fields[key].kind {
        Some(Kind::StringValue(s)) => s.to_string(),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

#[test]
fn the_last_of_repeated_keys_wins_everywhere() {
    let event = one(r#"{"type":"HEARTBEAT","type":"MONEY_CHANGED","payload":{"new_value":1,"new_value":7}}"#);
    assert_eq!(event.event_type, "MONEY_CHANGED");
    let Some(Payload::MoneyChanged(money)) = &event.payload else { panic!("{event:?}") };
    assert_eq!(money.new_value, 7.0);
    let event = one(r#"{"type":"HEARTBEAT","x":"first","x":"last"}"#);
    assert_eq!(extra_text(&event, "x"), "last");
    let batch = r#"{"batch_id":"a","events":[{"type":"A"},{"type":"B"}],"batch_id":"b","events":[{"type":"C"}]}"#;
    let decoded = decode_body(batch.as_bytes(), Endpoint::Batch).unwrap();
    assert_eq!(decoded.envelope.batch_id, "b");
    let types: Vec<_> = decoded.events.iter().map(|e| e.event.event_type.as_str()).collect();
    assert_eq!(types, ["C"], "the last events list wins");
}

#[test]
fn lone_surrogates_become_the_replacement_character() {
    let event =
        one(r#"{"type":"HEARTBEAT","note":"a\ud800b","pair":"\ud83d\ude00","mixed":"\ud800\u0041","low":"\udc00"}"#);
    assert_eq!(extra_text(&event, "note"), "a\u{FFFD}b");
    assert_eq!(extra_text(&event, "pair"), "😀");
    assert_eq!(extra_text(&event, "mixed"), "\u{FFFD}A");
    assert_eq!(extra_text(&event, "low"), "\u{FFFD}");
    // A key is never escaped by the mod: `\udc00` there reads two ways and is refused (rule 6).
    let refused = decode_body(br#"{"type":"HEARTBEAT","\udc00":"k"}"#, Endpoint::Single).unwrap_err();
    assert!(refused.to_string().contains("ambiguous"), "{refused}");
}

#[test]
fn raw_bytes_that_are_not_utf8_reject_the_event_alone() {
    let mut body = br#"{"events":[{"type":"A","note":"ok"#.to_vec();
    body.push(0xff);
    body.extend_from_slice(br#""},{"type":"B"}]}"#);
    let decoded = decode_body(&body, Endpoint::Batch).unwrap();
    assert_eq!(decoded.events.len(), 1);
    assert_eq!(decoded.rejected[0].index, 0);
    assert!(decoded.rejected[0].error.reason.contains("UTF-8"));
}

#[test]
fn non_finite_numbers_in_free_form_values_are_protobuf_json_strings() {
    let event = one(r#"{"type":"HEARTBEAT","a":inf,"b":-inf,"c":nan,"d":-0}"#);
    assert_eq!(extra_text(&event, "a"), "Infinity");
    assert_eq!(extra_text(&event, "b"), "-Infinity");
    assert_eq!(extra_text(&event, "c"), "NaN");
    let Some(Kind::NumberValue(zero)) = event.extra.as_ref().unwrap().fields["d"].kind else { panic!() };
    assert!(zero == 0.0 && zero.is_sign_negative(), "-0 stays a number with its sign");
}

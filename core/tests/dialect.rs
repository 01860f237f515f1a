//! The field mod's dialect, end to end through the core decoder: every compat
//! fixture (copied from the old mod's own encoder output), and property tests that
//! a Rust model of that encoder, and strict JSON, both read back exactly.

use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_core::json::Reader;
use jimbus_proto::events::event::Payload;
use jimbus_proto::events::scoring_event::Step;
use jimbus_proto::free_form::value::Kind;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let out = jimbus_harness::fixtures();
    assert!(out.len() >= 30, "fixtures missing from {}", jimbus_harness::FIXTURES);
    out
}

#[test]
fn every_fixture_decodes_without_rejections() {
    for (name, body) in fixtures() {
        if name == "health_probe.json" {
            continue;
        }
        let endpoint = if name.starts_with("batch_") { Endpoint::Batch } else { Endpoint::Single };
        let decoded = decode_body(&body, endpoint).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(decoded.rejected.is_empty(), "{name}: {:?}", decoded.rejected);
        if endpoint == Endpoint::Single {
            assert_eq!(decoded.events.len(), 1, "{name}");
        }
    }
}

/// A byte order mark before the body, as .NET's and PowerShell's UTF-8
/// writers send it, is read past (RFC 8259 lets a reader ignore it): every
/// fixture decodes to the same events, whose raw bytes are the same bytes of
/// the longer body. An error's offset is still the body's own, and a mark
/// anywhere else stays malformed.
#[test]
fn a_leading_byte_order_mark_is_read_past() {
    use jimbus_core::ingest::BodyError;
    use jimbus_core::json::BYTE_ORDER_MARK;
    let with_mark = |body: &[u8]| [BYTE_ORDER_MARK, body].concat();
    for (name, body) in fixtures().into_iter().filter(|(name, _)| name != "health_probe.json") {
        let endpoint = if name.starts_with("batch_") { Endpoint::Batch } else { Endpoint::Single };
        let (plain, marked) = (decode_body(&body, endpoint), decode_body(&with_mark(&body), endpoint));
        let (plain, marked) =
            (plain.unwrap_or_else(|e| panic!("{name}: {e}")), marked.unwrap_or_else(|e| panic!("{name}: {e}")));
        assert_eq!(plain.events.len(), marked.events.len(), "{name}");
        for (p, m) in plain.events.iter().zip(&marked.events) {
            assert_eq!(p.event, m.event, "{name}");
            let shifted = m.raw.start - BYTE_ORDER_MARK.len()..m.raw.end - BYTE_ORDER_MARK.len();
            assert_eq!(p.raw, shifted, "{name}");
        }
    }
    assert!(matches!(decode_body(&with_mark(b" \n"), Endpoint::Batch), Err(BodyError::Empty)));
    let malformed = decode_body(&with_mark(b"{\"events\":[}"), Endpoint::Batch).unwrap_err();
    assert_eq!(malformed.offset(), Some(BYTE_ORDER_MARK.len() + 11), "{malformed}");
    let inside = [b" ", BYTE_ORDER_MARK, b"{}"].concat();
    assert!(decode_body(&inside, Endpoint::Single).is_err(), "only a mark that opens the body is read past");
}

#[test]
fn cascade_batch_keeps_all_fifty_events_in_order_despite_a_shared_event_id() {
    let body =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat/batch_cascade50.json"))
            .unwrap();
    let decoded = decode_body(&body, Endpoint::Batch).unwrap();
    assert_eq!(decoded.events.len(), 50);
    let stamps: Vec<f64> =
        decoded.events.iter().map(|e| e.event.timing.as_ref().unwrap().client_timestamp_ms).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    let last = decoded.events.last().unwrap();
    let Some(Payload::Scoring(s)) = &last.event.payload else { panic!() };
    let Some(Step::HandEvalComplete(c)) = &s.step else { panic!() };
    assert_eq!(c.final_mult, f64::INFINITY);
    assert_eq!(c.triggers, 48);
}

#[test]
fn quirk_values_survive() {
    let all: BTreeMap<_, _> = fixtures().into_iter().collect();
    let single = |name: &str| decode_body(&all[name], Endpoint::Single).unwrap().events.remove(0).event;

    let Some(Payload::ScoreChanged(s)) = single("quirk_inf_score.json").payload else { panic!() };
    assert_eq!((s.new_chips, s.new_mult, s.old_chips, s.old_mult), (f64::INFINITY, f64::INFINITY, 1e308, 1e300));

    let Some(Payload::Error(e)) = single("quirk_control_chars.json").payload else { panic!() };
    assert_eq!(e.message, "bell\u{7} backspace\u{8} formfeed\u{c} soh\u{1} esc\u{1b} end");

    let Some(Payload::JokersChanged(j)) = single("quirk_unicode.json").payload else { panic!() };
    assert_eq!(j.jokers[0].name, "Jöker ☺ 小丑");

    let Some(Payload::GameState(g)) = single("quirk_big_numbers.json").payload else { panic!() };
    assert_eq!(g.chips, Some(1.2345678901235e17));
    assert_eq!(g.money.map(f64::to_bits), Some((-0.0f64).to_bits()));
    assert_eq!(g.mult, Some(1e-7));
    let extra = g.extra.unwrap();
    assert!(matches!(extra.fields["neg"].kind, Some(Kind::NumberValue(v)) if v == -17.0));
    assert!(matches!(extra.fields["ratio"].kind, Some(Kind::NumberValue(v)) if v == 0.1));

    let Some(Payload::GameState(g)) = single("quirk_empty_tables.json").payload else { panic!() };
    assert!(g.jokers.is_empty() && g.hand.is_empty());

    let e = single("quirk_no_payload.json");
    assert!(matches!(e.payload, Some(Payload::Heartbeat(_))));
}

/// A JSON value as the Lua encoder sees a table tree.
#[derive(Debug, Clone)]
enum Lua {
    Num(f64),
    Str(String),
    Bool(bool),
    Table(BTreeMap<String, Lua>),
    List(Vec<Lua>),
}

fn lua_number(n: f64) -> String {
    if n.is_nan() {
        "nan".into()
    } else if n.is_infinite() {
        if n > 0.0 { "inf" } else { "-inf" }.into()
    } else if n == 0.0 && n.is_sign_negative() {
        "-0".into()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n:e}")
    }
}

/// A model of the field mod's encoder: only `\\ " \n \r \t` escaped, keys raw,
/// scalar arrays as arrays of strings, `{}` for empty tables.
fn encode_lua(v: &Lua, out: &mut String) {
    match v {
        Lua::Num(n) => out.push_str(&lua_number(*n)),
        Lua::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Lua::Str(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Lua::Table(m) if m.is_empty() => out.push_str("{}"),
        Lua::Table(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{k}\":"));
                encode_lua(v, out);
            }
            out.push('}');
        }
        Lua::List(items) if items.is_empty() => out.push_str("{}"),
        Lua::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Lua::Num(n) => out.push_str(&format!("\"{}\"", lua_number(*n))),
                    Lua::Bool(b) => out.push_str(&format!("\"{b}\"")),
                    other => encode_lua(other, out),
                }
            }
            out.push(']');
        }
    }
}

/// What the reader must return for a Lua value.
fn expected(v: &Lua, in_list: bool) -> jimbus_proto::free_form::Value {
    let kind = match v {
        Lua::Num(n) if in_list => Kind::StringValue(lua_number(*n).into()),
        Lua::Bool(b) if in_list => Kind::StringValue(b.to_string().into()),
        // A Value cannot carry inf or nan to protobuf JSON: they become its strings.
        Lua::Num(n) if n.is_nan() => Kind::StringValue("NaN".into()),
        Lua::Num(n) if n.is_infinite() => Kind::StringValue(if *n > 0.0 { "Infinity" } else { "-Infinity" }.into()),
        Lua::Num(n) => Kind::NumberValue(*n),
        Lua::Bool(b) => Kind::BoolValue(*b),
        Lua::Str(s) => Kind::StringValue(s.as_str().into()),
        Lua::Table(m) if m.is_empty() => Kind::StructValue(Default::default()),
        Lua::Table(m) => Kind::StructValue(jimbus_proto::free_form::Struct {
            fields: m.iter().map(|(k, v)| (k.as_str().into(), expected(v, false))).collect(),
        }),
        Lua::List(items) if items.is_empty() => Kind::StructValue(Default::default()),
        Lua::List(items) => Kind::ListValue(jimbus_proto::free_form::ListValue {
            values: items.iter().map(|v| expected(v, true)).collect(),
        }),
    };
    jimbus_proto::free_form::Value { kind: Some(kind) }
}

/// Equality that treats NaN as equal to NaN, and compares numbers bit for bit
/// otherwise (so -0 and 0 differ).
fn same(a: &jimbus_proto::free_form::Value, b: &jimbus_proto::free_form::Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::NumberValue(x)), Some(Kind::NumberValue(y))) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Some(Kind::StructValue(x)), Some(Kind::StructValue(y))) => {
            x.fields.len() == y.fields.len()
                && x.fields.iter().all(|(k, v)| y.fields.get(k).is_some_and(|w| same(v, w)))
        }
        (Some(Kind::ListValue(x)), Some(Kind::ListValue(y))) => {
            x.values.len() == y.values.len() && x.values.iter().zip(&y.values).all(|(v, w)| same(v, w))
        }
        (x, y) => x == y,
    }
}

fn lua_strategy() -> impl Strategy<Value = Lua> {
    let number = prop_oneof![
        any::<i32>().prop_map(|n| n as f64),
        (-1e300f64..1e300).prop_map(|n| format!("{n:.13e}").parse().unwrap()),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
        Just(-0.0),
    ];
    // Strings may hold any character but the few the encoder cannot produce raw.
    let text = "[^\\\\\"]{0,12}|[\\x01-\\x1f \"\\\\a-z☺]{0,8}";
    let leaf = prop_oneof![number.prop_map(Lua::Num), text.prop_map(Lua::Str), any::<bool>().prop_map(Lua::Bool)];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::btree_map("[a-z_][a-z0-9_ ]{0,8}", inner.clone(), 0..5).prop_map(Lua::Table),
            proptest::collection::vec(inner, 0..5).prop_map(Lua::List),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_field_mod_encoder_reads_back(value in lua_strategy()) {
        let mut text = String::new();
        encode_lua(&value, &mut text);
        let mut reader = Reader::new(text.as_bytes());
        let got = reader.value().map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        reader.finish().unwrap();
        prop_assert!(same(&got, &expected(&value, false)), "{text}\n{got:?}");
    }

    #[test]
    fn strict_json_reads_like_serde_json(value in any::<Vec<(String, i64, f64, bool)>>()) {
        let json = serde_json::json!(value
            .iter()
            .map(|(s, i, f, b)| serde_json::json!({"s": s, "i": i, "f": if f.is_finite() { serde_json::json!(f) } else { serde_json::Value::Null }, "b": b}))
            .collect::<Vec<_>>());
        let text = serde_json::to_string(&json).unwrap();
        let got = Reader::new(text.as_bytes()).value().unwrap();
        let Some(Kind::ListValue(list)) = got.kind else { panic!() };
        prop_assert_eq!(list.values.len(), value.len());
        for (v, (s, i, f, b)) in list.values.iter().zip(&value) {
            let Some(Kind::StructValue(obj)) = &v.kind else { panic!() };
            prop_assert_eq!(&obj.fields["s"].kind, &Some(Kind::StringValue(s.as_str().into())));
            prop_assert_eq!(&obj.fields["i"].kind, &Some(Kind::NumberValue(*i as f64)));
            prop_assert_eq!(&obj.fields["b"].kind, &Some(Kind::BoolValue(*b)));
            if f.is_finite() {
                prop_assert_eq!(&obj.fields["f"].kind, &Some(Kind::NumberValue(*f)));
            }
        }
    }

    /// No event encodes to more than `encoded_len_bound` of its JSON, which
    /// admission trusts instead of computing the size: with numbers where
    /// strings are expected (written out in full: `1e308` is 309 digits),
    /// alone, in lists of strings, in jokers and cards, as top-level ids, and
    /// free-form values of every kind in unknown keys.
    #[test]
    fn no_event_encodes_past_the_bound_admission_trusts(
        kind in 0..TYPES.len(),
        top in proptest::collection::vec(top_field(), 0..5),
        payload in proptest::collection::vec(payload_field(), 0..6),
        free in proptest::option::of(lua_strategy()),
    ) {
        let (event_type, subtype) = TYPES[kind];
        let mut json = format!(r#"{{"type":"{event_type}","subtype":"{subtype}""#);
        for field in &top {
            json.push(',');
            json.push_str(field);
        }
        let mut fields = payload.clone();
        if let Some(free) = &free {
            let mut text = String::new();
            encode_lua(free, &mut text);
            fields.push(format!(r#""free":{text}"#));
        }
        json.push_str(&format!(r#","payload":{{{}}}}}"#, fields.join(",")));
        let event = jimbus_core::adapt::read_event(&mut Reader::new(json.as_bytes()))
            .map_err(|e| TestCaseError::fail(format!("{e} in {json}")))?;
        let size = prost::Message::encoded_len(&*event);
        prop_assert!(size <= jimbus_core::adapt::encoded_len_bound(json.len(), 0), "{size} bytes from {json}");
    }
}

/// The most growth known: `1e308` where a string is expected is 309 digits,
/// 52 times its 6 bytes in a list. Lists of it in each list of strings the
/// payloads have stay within the bound, with 20 % to spare.
#[test]
fn the_largest_growth_known_stays_within_the_bound() {
    let numbers = vec!["1e308"; 2000].join(",");
    for (event_type, subtype, key) in [
        ("HAND_PLAYED", "", "cards"),
        ("CARDS_DISCARDED", "", "cards"),
        ("SCORING", "HAND_EVAL_START", "cards"),
        ("LEARNING_DECISION", "REQUEST", "available_actions"),
    ] {
        let json = format!(r#"{{"type":"{event_type}","subtype":"{subtype}","payload":{{"{key}":[{numbers}]}}}}"#);
        let event = jimbus_core::adapt::read_event(&mut Reader::new(json.as_bytes())).unwrap();
        let size = prost::Message::encoded_len(&*event);
        let bound = jimbus_core::adapt::encoded_len_bound(json.len(), 0);
        assert!(size > 50 * json.len() && size * 6 / 5 <= bound, "{key}: {size} bytes from {} of JSON", json.len());
    }
}

/// Every type and subtype the decoder gives a typed payload, and one it does not.
const TYPES: [(&str, &str); 22] = [
    ("HEARTBEAT", ""),
    ("GAME_STATE", ""),
    ("MONEY_CHANGED", ""),
    ("SCORE_CHANGED", ""),
    ("HAND_PLAYED", ""),
    ("CARDS_DISCARDED", ""),
    ("JOKERS_CHANGED", ""),
    ("ROUND_CHANGED", ""),
    ("PHASE_CHANGED", ""),
    ("ROUND_COMPLETE", ""),
    ("JOKER_TRIGGER", ""),
    ("SCORING", "HAND_EVAL_START"),
    ("SCORING", "JOKER_TRIGGER"),
    ("SCORING", "SCORE_UPDATE"),
    ("SCORING", "MULT_UPDATE"),
    ("SCORING", "CHIPS_UPDATE"),
    ("SCORING", "HAND_EVAL_COMPLETE"),
    ("LEARNING_DECISION", "REQUEST"),
    ("LEARNING_DECISION", "RESPONSE"),
    ("ERROR", ""),
    ("connection_test", ""),
    ("ANYTHING_ELSE", ""),
];

/// Short numbers that are written out long where a string is expected.
fn long_number() -> proptest::sample::Select<&'static str> {
    // Weighted towards the longest: lists of them reach the most growth.
    proptest::sample::select(vec!["1e308", "1e308", "1e308", "9e307", "5e-324", "-1e308", "1e99", "1", "-1"])
}

fn numbers(most: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(long_number(), 0..most).prop_map(|n| format!("[{}]", n.join(",")))
}

/// A top-level key of the event with a value that fits it.
fn top_field() -> impl Strategy<Value = String> {
    let text_key = proptest::sample::select(vec!["source", "event_id", "session_id", "correlation_id"]);
    prop_oneof![
        (text_key, long_number()).prop_map(|(k, v)| format!(r#""{k}":{v}"#)),
        numbers(40).prop_map(|v| format!(r#""unknown":{v}"#)),
        Just(r#""nested":[[],[],[[]],{}]"#.to_string()),
    ]
}

/// A payload key with a value that fits it in every payload that knows it.
fn payload_field() -> impl Strategy<Value = String> {
    let text_key = proptest::sample::select(vec![
        "hand_type",
        "phase",
        "old_phase",
        "new_phase",
        "message",
        "stack",
        "request_id",
        "action",
        "context",
        "parent",
        "source",
        "joker_name",
        "joker_id",
        "name",
        "version",
    ]);
    let list_key = proptest::sample::select(vec!["cards", "enhancements", "available_actions"]);
    let joker = (long_number(), long_number()).prop_map(|(n, i)| format!(r#"{{"name":{n},"id":{i}}}"#));
    let card = (long_number(), long_number(), numbers(8))
        .prop_map(|(r, s, e)| format!(r#"{{"rank":{r},"suit":{s},"enhancements":{e}}}"#));
    prop_oneof![
        (text_key, long_number()).prop_map(|(k, v)| format!(r#""{k}":{v}"#)),
        (list_key, numbers(60)).prop_map(|(k, v)| format!(r#""{k}":{v}"#)),
        joker.clone().prop_map(|j| format!(r#""joker":{j}"#)),
        proptest::collection::vec(joker, 0..8).prop_map(|j| format!(r#""jokers":[{}]"#, j.join(","))),
        proptest::collection::vec(card, 0..8).prop_map(|c| format!(r#""hand":[{}]"#, c.join(","))),
        numbers(40).prop_map(|v| format!(r#""odd":{v}"#)),
    ]
}

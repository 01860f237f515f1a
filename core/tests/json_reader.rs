//! The dialect reader on its own: numbers, strings, keys, depth and offsets.
use jimbus_core::json::*;
use jimbus_proto::free_form::value::Kind as ValueKind;
use proptest::strategy::Strategy as _;

fn read_value(text: &str) -> Result<jimbus_proto::free_form::Value, Box<JsonError>> {
    let mut r = Reader::new(text.as_bytes());
    let v = r.value()?;
    r.finish()?;
    Ok(v)
}

fn number(v: &jimbus_proto::free_form::Value) -> f64 {
    match v.kind {
        Some(ValueKind::NumberValue(n)) => n,
        _ => panic!("not a number: {v:?}"),
    }
}

#[test]
fn reads_lua_numbers_and_non_finite_tokens() {
    for (text, want) in [("42", 42.0_f64), ("-0", -0.0), ("1e-07", 1e-7), ("1.2345678901235e+17", 1.2345678901235e17)] {
        let got = number(&read_value(text).unwrap());
        assert_eq!(got.to_bits(), want.to_bits(), "{text}");
    }
    let token = |text: &str| Reader::new(text.as_bytes()).number().unwrap();
    assert_eq!(token("inf"), f64::INFINITY);
    assert_eq!(token("-inf"), f64::NEG_INFINITY);
    assert!(token("nan").is_nan() && token("-nan").is_nan() && token("NaN").is_nan());
}

#[test]
fn non_finite_values_become_protobuf_json_strings() {
    let text = |v: jimbus_proto::free_form::Value| match v.kind {
        Some(ValueKind::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    };
    assert_eq!(text(read_value("inf").unwrap()), "Infinity");
    assert_eq!(text(read_value("-inf").unwrap()), "-Infinity");
    assert_eq!(text(read_value("-nan").unwrap()), "NaN");
}

#[test]
fn rejects_malformed_numbers_with_offset() {
    for text in ["[1, 01]", "[1, 1.]", "[1, .5]", "[1, +1]", "[1, infinity]", "[1, 1e]"] {
        let err = read_value(text).unwrap_err();
        assert!(err.syntax, "{text}");
        assert_eq!(err.offset, 4, "{text}: {err}");
    }
}

#[test]
fn raw_control_characters_pass_through() {
    let text = "\"bell\u{7} esc\u{1b} soh\u{1}\"";
    let mut r = Reader::new(text.as_bytes());
    assert_eq!(r.string().unwrap(), "bell\u{7} esc\u{1b} soh\u{1}");
}

#[test]
fn escapes_decode() {
    let mut r = Reader::new(br#""a\"b\\c\n\t\u00e9\ud83d\ude00""#);
    assert_eq!(r.string().unwrap(), "a\"b\\c\n\té😀");
}

#[test]
fn unescaped_key_with_quote_is_recovered() {
    let mut r = Reader::new(br#"{"say "hi"":1,"b":2}"#);
    let s = r.object_value().unwrap();
    assert!(s.fields.contains_key("say \"hi\""), "{:?}", s.fields);
    assert!(s.fields.contains_key("b"));
}

#[test]
fn key_with_invalid_escape_is_literal() {
    let mut r = Reader::new(br#"{"C:\mods":1}"#);
    let s = r.object_value().unwrap();
    assert!(s.fields.contains_key("C:\\mods"));
}

#[test]
fn ambiguous_key_is_refused_with_offset() {
    let body = br#"{"a\\b":1}"#;
    let err = Reader::new(body).object_value().unwrap_err();
    assert!(err.reason.contains("ambiguous"), "{err}");
    assert_eq!(err.offset, 2);
}

#[test]
fn empty_object_reads_as_empty_list() {
    let mut r = Reader::new(b"{}");
    let mut n = 0;
    r.array(|r, _| {
        n += 1;
        r.skip()
    })
    .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn depth_is_limited() {
    let body = "[".repeat(MAX_DEPTH as usize + 1);
    let err = read_value(&body).unwrap_err();
    assert!(err.reason.contains("nesting"));
}

#[test]
fn truncated_body_reports_end() {
    let err = read_value(r#"{"a":[1,2"#).unwrap_err();
    assert_eq!(err.offset, 9);
}

#[test]
fn invalid_utf8_in_a_string_is_a_value_error() {
    let mut r = Reader::new(b"[\"ok\xff\"]");
    let err = r.value().unwrap_err();
    assert!(!err.syntax);
    let mut r = Reader::new(b"[\"ok\xff\"]");
    r.skip().unwrap();
}

/// The kind of the next value is what its first byte after white space says
/// (`n` is `null` only when `null` follows), for every byte: the table of the
/// usual bytes and the general reading after white space agree.
#[test]
fn peek_reads_the_kind_the_first_byte_gives() {
    for gap in ["", " ", "\n\t\r "] {
        for first in 0..=u8::MAX {
            for rest in [&b"ull"[..], b"an", b"", b"ul", b"1"] {
                let mut body = gap.as_bytes().to_vec();
                body.push(first);
                body.extend_from_slice(rest);
                let expected = match first {
                    b' ' | b'\t' | b'\n' | b'\r' => continue,
                    b'{' => Some(Kind::Object),
                    b'[' => Some(Kind::Array),
                    b'"' => Some(Kind::String),
                    b't' | b'f' => Some(Kind::Bool),
                    b'n' if rest.starts_with(b"ull") => Some(Kind::Null),
                    b'-' | b'0'..=b'9' | b'i' | b'I' | b'n' | b'N' => Some(Kind::Number),
                    _ => None,
                };
                let mut r = Reader::new(&body);
                let got = r.peek();
                assert_eq!(got.as_ref().ok().copied(), expected, "{body:?}");
                if got.is_ok() {
                    assert_eq!(r.offset(), gap.len(), "peek consumes only the white space: {body:?}");
                }
            }
        }
    }
}

/// Every byte, in every place of a 13-digit integer (a millisecond
/// timestamp's length), ends the plain integer where the digits end, or
/// leaves a number the plain integer must not read to the general reading.
#[test]
fn plain_integer_ends_where_the_digits_end() {
    for byte in 0..=u8::MAX {
        for place in 0..13 {
            let mut body = b"1700000000123".to_vec();
            body[place] = byte;
            let first = usize::from(body[0] == b'-');
            let end = first + body[first..].iter().take_while(|b| b.is_ascii_digit()).count();
            let refused_after = matches!(body.get(end), Some(b'.' | b'e' | b'E' | b'+' | b'-'));
            let leading_zero = body[first] == b'0' && end - first > 1;
            let expected = (end > first && !leading_zero && !refused_after)
                .then(|| (std::str::from_utf8(&body[..end]).unwrap().parse::<f64>().unwrap(), end));
            let mut r = Reader::new(&body);
            let got = r.plain_integer().map(|value| (value, r.offset()));
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&body));
        }
    }
}

proptest::proptest! {
    /// Integers take a fast path of their own: every well-formed number,
    /// whatever its length, still reads as Rust's float parser reads it.
    #[test]
    fn well_formed_numbers_read_as_the_float_parser_reads_them(
        text in r"-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
    ) {
        let mut r = Reader::new(text.as_bytes());
        let got = r.number().unwrap();
        proptest::prop_assert_eq!(got.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
        proptest::prop_assert_eq!(r.offset(), text.len());
        // The plain integer's shortcut reads the same, or leaves the number alone.
        let mut r = Reader::new(text.as_bytes());
        match r.plain_integer() {
            Some(value) => {
                proptest::prop_assert_eq!(value.to_bits(), got.to_bits(), "{}", text);
                proptest::prop_assert_eq!(r.offset(), text.len());
            }
            None => proptest::prop_assert_eq!(r.offset(), 0),
        }
    }

    /// Integers with a leading zero are refused, however many digits follow.
    #[test]
    fn leading_zeros_are_refused(text in r"-?0[0-9]{1,18}") {
        let wrapped = format!("[{text}]");
        proptest::prop_assert!(read_value(&wrapped).is_err(), "{}", text);
    }

    /// Keys and string values read as serde_json writes them, whatever
    /// their length (inside or past the short scan's 32 bytes), escapes and
    /// the white space around them. Keys here need no escape: one with a
    /// backslash has two readings, which the dialect reads apart.
    #[test]
    fn keys_and_strings_read_as_serde_json_writes_them(
        key in r#"[^"\\\x00-\x1f]{0,48}"#,
        value in proptest::collection::vec(proptest::prop_oneof![
            6 => proptest::char::range('a', 'z'),
            1 => proptest::sample::select(vec!['"', '\\', '\n', '\t', '\u{1}', 'é', '😀', ' ']),
        ], 0..48).prop_map(|chars| chars.into_iter().collect::<String>()),
        spaced in proptest::bool::ANY,
    ) {
        let gap = if spaced { " \n" } else { "" };
        let (k, v) = (serde_json::to_string(&key).unwrap(), serde_json::to_string(&value).unwrap());
        let body = format!("{{{gap}{k}{gap}:{gap}{v}{gap}}}");
        let mut r = Reader::new(body.as_bytes());
        let mut read = Vec::new();
        r.object(|r, got| -> Result<(), Box<JsonError>> {
            read.push((got.into_owned(), r.string()?.into_owned()));
            Ok(())
        }).unwrap();
        r.finish().unwrap();
        proptest::prop_assert_eq!(read, vec![(key, value)], "{}", body);
    }

    /// The word-at-a-time scan finds the first quote or backslash wherever
    /// it lies: in the words, in a short tail, or past the 32 bytes it hands
    /// on to memchr (bytes above 0x7f and next to the wanted ones included).
    #[test]
    fn the_quote_scan_finds_what_a_plain_search_finds(
        bytes in proptest::collection::vec(proptest::prop_oneof![
            4 => proptest::num::u8::ANY,
            1 => proptest::strategy::Just(b'"'),
            1 => proptest::strategy::Just(b'\\'),
            1 => proptest::sample::select(vec![0x21u8, 0x23, 0x5b, 0x5d, 0xa2, 0xdc, 0x00, 0x01]),
        ], 0..80),
        skip in 0usize..80,
    ) {
        let plain = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\');
        // Move the first match later to reach the memchr part as well.
        let bytes: Vec<u8> = bytes.iter().enumerate()
            .map(|(i, &c)| if i < skip && (c == b'"' || c == b'\\') { b'a' } else { c })
            .collect();
        proptest::prop_assert_eq!(quote_or_backslash(&bytes), plain(&bytes));
    }
}

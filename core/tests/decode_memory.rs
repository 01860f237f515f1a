//! The memory a body's decoding builds is granted before it is built: under a
//! counting allocator, the most heap live while a body decodes stays within
//! the largest total the decoder asked its caller to reserve, plus the copies
//! of one event's strings (at most twice the body's bytes), which are counted
//! just after its reading. Bodies made to expand (lists of empty objects,
//! numbers that format long, free-form values) are the cases that matter: a
//! body's length says little about its decoded size. (Its own binary,
//! because the allocator counts the whole process.)

use jimbus_core::budget::Growth;
use jimbus_core::ingest::{decode_body_within, DecodedBody, Endpoint, Limits, FIRST_ALLOWANCE, MAX_BUILT_PER_EVENT};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts each thread's live bytes and their peak over the system allocator:
/// per thread, so that tests running beside one another do not count each
/// other's allocations.
struct PeakCounting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let live = LIVE.get() + bytes as isize;
    LIVE.set(live);
    PEAK.set(PEAK.get().max(live));
}

fn shrank(bytes: usize) {
    LIVE.set(LIVE.get() - bytes as isize);
}

unsafe impl GlobalAlloc for PeakCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both buffers are live while a reallocation copies.
        grew(new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        shrank(layout.size());
        moved
    }
}

#[global_allocator]
static ALLOCATOR: PeakCounting = PeakCounting;

/// What one decoding did: the most heap live beyond what was live before,
/// the largest total asked, and the result.
struct Decoding {
    peak: usize,
    most_asked: usize,
    result: Result<DecodedBody, jimbus_core::ingest::BodyError>,
}

/// Decodes `body` with a caller that grants up to `budget` bytes.
fn decode(body: &[u8], endpoint: Endpoint, budget: usize) -> Decoding {
    let mut most_asked = 0;
    let mut reserve = |total: usize| {
        most_asked = most_asked.max(total);
        if total <= budget {
            Growth::Held
        } else {
            Growth::NotNow
        }
    };
    let base = LIVE.get();
    PEAK.set(base);
    let result = decode_body_within(body, endpoint, Limits { max_events: 100_000, reserve: &mut reserve });
    let peak = (PEAK.get() - base) as usize;
    Decoding { peak, most_asked, result }
}

/// The bound the module promises: what was asked, plus one event's string
/// copies (twice the body at most), plus the allocator's rounding.
fn within_what_was_asked(body: &[u8], decoding: &Decoding) -> bool {
    decoding.peak <= decoding.most_asked + 2 * body.len() + 4096
}

/// A batch of one GAME_STATE whose payload key `key` holds `count` copies of `item`.
fn expanding_batch(key: &str, item: &str, count: usize) -> Vec<u8> {
    let items = vec![item; count].join(",");
    format!(r#"{{"events":[{{"type":"GAME_STATE","payload":{{"{key}":[{items}]}}}}]}}"#).into_bytes()
}

#[test]
fn lists_made_to_expand_are_granted_before_they_are_built() {
    for (key, item) in [
        ("jokers", "{}"),
        ("hand", "{}"),
        ("jokers", r#"{"name":1e300}"#),
        ("jokers", r#"{"a":1}"#),
        ("hand", r#"{"enhancements":[0,0,0,0,0,0,0,0,0]}"#),
        ("unknown", "{}"),
        ("unknown", "[]"),
        ("unknown", "null"),
    ] {
        let body = expanding_batch(key, item, 20_000);
        let decoding = decode(&body, Endpoint::Batch, usize::MAX);
        assert!(decoding.result.is_ok(), "{key}: {item}");
        assert!(
            within_what_was_asked(&body, &decoding),
            "{key}: {item}: {} bytes live for a body of {} with {} asked",
            decoding.peak,
            body.len(),
            decoding.most_asked
        );
    }
}

#[test]
fn an_event_that_needs_more_than_the_budget_is_refused_before_it_is_built() {
    // 60 KB of `{}` decodes to about 3 MB of jokers.
    let body = expanding_batch("jokers", "{}", 20_000);
    let budget = 64 * body.len() / 100 + FIRST_ALLOWANCE;
    let decoding = decode(&body, Endpoint::Batch, budget);
    assert!(
        matches!(decoding.result, Err(jimbus_core::ingest::BodyError::OverBudget)),
        "{:?}",
        decoding.result.as_ref().map(|d| (d.events.len(), &d.rejected))
    );
    assert!(
        decoding.peak <= budget + 2 * body.len() + 4096,
        "{} bytes live within a budget of {budget}",
        decoding.peak
    );
}

#[test]
fn an_event_that_needs_more_than_any_event_may_build_is_refused_alone() {
    let jokers = vec!["{}"; 400_000].join(",");
    let body =
        format!(r#"{{"events":[{{"type":"GAME_STATE","payload":{{"jokers":[{jokers}]}}}},{{"type":"HEARTBEAT"}}]}}"#)
            .into_bytes();
    let decoding = decode(&body, Endpoint::Batch, usize::MAX);
    let decoded = decoding.result.as_ref().expect("the body decodes");
    assert_eq!((decoded.events.len(), decoded.rejected.len()), (1, 1));
    assert_eq!(decoded.events[0].index, 1);
    let refused = &decoded.rejected[0];
    assert_eq!(refused.error.reason, format!("needs more than {MAX_BUILT_PER_EVENT} bytes of memory once decoded"));
    assert_eq!(&body[refused.raw.clone()][..20], br#"{"type":"GAME_STATE""#);
    assert!(decoding.most_asked <= MAX_BUILT_PER_EVENT + 1_000_000, "{} asked", decoding.most_asked);
    assert!(within_what_was_asked(&body, &decoding), "{} bytes live", decoding.peak);
}

#[test]
fn an_event_read_again_with_more_room_decodes_as_it_would_at_once() {
    let jokers: Vec<String> =
        (0..2_000).map(|i| format!(r#"{{"name":"Joker {i}","id":"j{i}","position":{i}}}"#)).collect();
    let body = expanding_batch("jokers", &jokers.join(","), 1);
    let decoding = decode(&body, Endpoint::Batch, usize::MAX);
    let decoded = decoding.result.expect("it decodes");
    assert!(decoding.most_asked > 2 * FIRST_ALLOWANCE, "its reading needed more than the first allowance");
    let Some(jimbus_proto::events::event::Payload::GameState(state)) = &decoded.events[0].event.payload else {
        panic!("a game state")
    };
    assert_eq!(state.jokers.len(), 2_000);
    assert_eq!((state.jokers[1999].name.as_str(), state.jokers[1999].position), ("Joker 1999", 1999));
}

/// A small JSON value of the shapes that expand most: empty containers,
/// numbers that format long, and the typed payloads' own elements.
fn small_value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "{}",
        "[]",
        "null",
        "0",
        "1e300",
        r#""""#,
        r#"{"name":1e300,"id":0}"#,
        r#"{"enhancements":[0,0,0,0,0]}"#,
        r#"{"x":{}}"#,
    ])
    .prop_map(String::from);
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec(("[a-z]{1,3}", inner), 0..12).prop_map(|fields| {
                let fields: Vec<String> = fields.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_payload_is_granted_before_it_is_built(
        (event_type, key) in prop::sample::select(vec![
            ("GAME_STATE", "jokers"),
            ("GAME_STATE", "hand"),
            ("JOKERS_CHANGED", "jokers"),
            ("HAND_PLAYED", "cards"),
            ("CARDS_DISCARDED", "cards"),
            ("NEW_TYPE", "anything"),
        ]),
        item in small_value(),
        count in 0..3000usize,
        events in 1..4usize,
    ) {
        let list = format!("[{}]", vec![item; count].join(","));
        let event = format!(r#"{{"type":"{event_type}","payload":{{"{key}":{list}}}}}"#);
        let body = format!(r#"{{"events":[{}]}}"#, vec![event; events].join(",")).into_bytes();
        let decoding = decode(&body, Endpoint::Batch, usize::MAX);
        prop_assert!(
            within_what_was_asked(&body, &decoding),
            "{} bytes live for a body of {} with {} asked", decoding.peak, body.len(), decoding.most_asked
        );
    }
}

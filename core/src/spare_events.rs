//! A thread's spare decoded events: the boxes of events this thread decoded
//! and its shard has stored, emptied but with the capacity of their top-level
//! strings kept, so that the next event decoded here fills them instead of
//! allocating a box and five strings (docs/perf.md, "Eighth pass").
//!
//! It owns only the spare list. It must never hand out an event with anything
//! left of the one before it, never keep an event on a thread that does not
//! decode (the gRPC edge's threads decode with prost and would only hoard
//! them), and never keep more than [`SPARE_EVENTS`] events or a string longer
//! than [`KEPT_CAPACITY`]: what it holds is outside the memory budget, so it
//! stays small and bounded.

use jimbus_proto::events as pb;
use std::cell::RefCell;

/// The most spare events one thread keeps, at under 1 KiB each: about the
/// events of 20 requests of 50, a good part of what a busy shard has in flight.
pub const SPARE_EVENTS: usize = 1024;

/// A string whose capacity is over this is freed rather than kept: ids and
/// event types are short, and one long value must not stay pinned.
pub const KEPT_CAPACITY: usize = 64;

/// One thread's spares.
#[derive(Default)]
struct Spares {
    /// Emptied events, ready to be filled. Boxed, as they are handed out:
    /// taking one moves a pointer, not the event's 600 bytes.
    #[allow(clippy::vec_box)]
    events: Vec<Box<pb::Event>>,
    /// Whether this thread has taken an event: only a decoding thread keeps spares.
    decodes: bool,
}

thread_local! {
    static SPARES: RefCell<Spares> = RefCell::default();
}

/// An empty event to decode into: a spare when this thread has one, else a new box.
pub fn take() -> Box<pb::Event> {
    SPARES.with_borrow_mut(|spares| {
        spares.decodes = true;
        spares.events.pop().unwrap_or_default()
    })
}

/// Keeps `events` as spares when this thread decodes events and has room;
/// frees the rest.
pub fn give_back(events: impl IntoIterator<Item = Box<pb::Event>>) {
    SPARES.with_borrow_mut(|spares| {
        if !spares.decodes {
            return;
        }
        for mut event in events {
            if spares.events.len() == SPARE_EVENTS {
                return;
            }
            empty(&mut event);
            spares.events.push(event);
        }
    })
}

/// Puts every field back to its default, keeping the capacity of short
/// strings. Every field is named, so a field added to the schema does not
/// compile until it is emptied here too.
fn empty(event: &mut pb::Event) {
    let pb::Event {
        event_id,
        event_type,
        subtype,
        source,
        correlation_id,
        session_id,
        sequence,
        client_sequence,
        timing,
        metadata,
        version,
        priority,
        debug,
        payload_field,
        extra,
        payload,
    } = event;
    for text in [event_id, event_type, subtype, source, correlation_id, session_id] {
        if text.capacity() > KEPT_CAPACITY {
            *text = String::new();
        } else {
            text.clear();
        }
    }
    (*sequence, *client_sequence, *version, *priority, *debug, *payload_field) = (0, 0, 0, 0, false, 0);
    // One by one: as a tuple, the three are built in a temporary and copied
    // over the event's 330 bytes of them (a `memcpy` per event).
    *timing = None;
    *extra = None;
    *payload = None;
    // Usually empty already: `clear` on an empty map still builds and drops
    // an iterator (about 27 instructions an event).
    if !metadata.is_empty() {
        metadata.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_event(name: &str) -> Box<pb::Event> {
        let text = |s: &str| format!("{s}-{name}");
        Box::new(pb::Event {
            event_id: text("id"),
            event_type: text("TYPE"),
            subtype: text("SUB"),
            source: text("src"),
            correlation_id: text("corr"),
            session_id: "s".repeat(KEPT_CAPACITY + 1),
            sequence: 7,
            client_sequence: 8,
            timing: Some(pb::Timing { game_time_ms: 1.0, ..Default::default() }),
            metadata: [("k".to_string(), "v".to_string())].into(),
            version: 2,
            priority: 1,
            debug: true,
            payload_field: 1,
            extra: Some(Default::default()),
            payload: Some(pb::event::Payload::Heartbeat(Default::default())),
        })
    }

    #[test]
    fn a_spare_is_empty_and_keeps_only_short_strings() {
        std::thread::spawn(|| {
            drop(take());
            give_back([full_event("a")]);
            let spare = take();
            assert_eq!(*spare, pb::Event::default());
            assert!(spare.event_type.capacity() > 0, "a short string keeps its capacity");
            assert_eq!(spare.session_id.capacity(), 0, "a long one is freed");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_never_took_an_event_keeps_none() {
        std::thread::spawn(|| {
            give_back([full_event("a"), full_event("b")]);
            SPARES.with_borrow(|spares| assert!(spares.events.is_empty()));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn spares_are_bounded() {
        std::thread::spawn(|| {
            drop(take());
            give_back((0..SPARE_EVENTS + 10).map(|_| Box::<pb::Event>::default()));
            SPARES.with_borrow(|spares| assert_eq!(spares.events.len(), SPARE_EVENTS));
        })
        .join()
        .unwrap();
    }
}

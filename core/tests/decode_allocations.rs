//! Allocations of the decoder on paths where nothing fails: a number the
//! field mod sent as a string (its arrays of scalars arrive that way) must
//! cost no more than the same number sent bare. An error built and dropped
//! for every value read (an eager `ok_or`) shows up here as two allocations
//! more per numeric string.
use jimbus_core::ingest::{decode_body, Endpoint};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts every allocation of the process (this file holds one test, so no
/// other test thread adds to the count while it runs).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made while `body` decodes (the decoded body included).
fn allocations_decoding(body: &str) -> usize {
    let before = ALLOCATIONS.load(Relaxed);
    let decoded = decode_body(body.as_bytes(), Endpoint::Batch).expect("a readable body");
    let made = ALLOCATIONS.load(Relaxed) - before;
    assert_eq!((decoded.events.len(), decoded.rejected.len()), (1, 0), "{body}");
    made
}

#[test]
fn a_number_sent_as_a_string_allocates_no_more_than_a_bare_one() {
    let batch = |value: &str| {
        format!(
            r#"{{"events":[{{"type":"MONEY_CHANGED","payload":{{"old_value":{value},"new_value":{value},"difference":{value}}}}}]}}"#
        )
    };
    // The first decoding warms what is allocated once (thread-locals, spares).
    allocations_decoding(&batch("5"));
    let bare = allocations_decoding(&batch("5"));
    let quoted = allocations_decoding(&batch(r#""5""#));
    assert_eq!(quoted, bare, "three numbers as strings allocated {quoted} times, as bare numbers {bare}");
}

//! Measures how much heap the decoded events of a mod batch hold, as a multiple
//! of the JSON body they came from: the basis of the HTTP edge's memory grant
//! per body byte (`GRANT_PER_BODY_BYTE` in `net/src/http/mod.rs`). A counting
//! allocator wraps the system one; run it with
//! `cargo run --release -p jimbus-perf --example decoded_size`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn measure(name: &str, body: &[u8]) {
    let before = LIVE.load(Relaxed);
    let decoded = jimbus_core::ingest::decode_body(body, jimbus_core::ingest::Endpoint::Batch).expect("a valid batch");
    let held = LIVE.load(Relaxed) - before;
    println!(
        "{name:<16} body {:>7} B, decoded events hold {held:>7} B: {:.2} x",
        body.len(),
        held as f64 / body.len() as f64
    );
    drop(decoded);
}

fn main() {
    for (n, quirky) in [(1, false), (50, true), (500, false)] {
        measure(&format!("mod_batch({n})"), &jimbus_perf::mod_batch(n, 0, quirky));
    }
    let mut load = jimbus_perf::LoadBatch::new(1, 1, true, 50);
    load.stamp(1, 1.0);
    measure("jimbus-load 50", &load.body);
}

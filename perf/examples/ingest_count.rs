//! Allocations and instructions per event on the whole ingest path
//! (`jimbus_perf::ingest`), for docs/perf.md.
//!
//! ```text
//! cargo run --release -p jimbus-perf --example ingest_count -- REQUESTS
//! valgrind --tool=callgrind target/release/examples/ingest_count REQUESTS --cpu
//! ```
//!
//! `--cpu` runs only the CPU-bound part of the path on this thread
//! (`jimbus_perf::ingest::cpu_path`): callgrind cannot run glommio, whose
//! io_uring waits never return under valgrind.
//!
//! It prints events, wall time, and heap allocations and bytes per event
//! (a counting allocator over mimalloc, the server's). Under callgrind, run it with two
//! request counts and divide the difference of the instruction totals by the
//! difference of the events: what setup costs cancels out
//! (`perf/callgrind-ingest.sh` does that).

use jimbus_perf::ingest::{ingest, IngestRun};
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation (and reallocation) and its bytes, over mimalloc as
/// the server allocates.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The CPU-bound part alone (`jimbus_perf::ingest::cpu_path`), which callgrind can run.
fn cpu_only(body: &[u8], requests: usize) {
    jimbus_perf::ingest::cpu_path(body, 2);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let events = jimbus_perf::ingest::cpu_path(body, requests);
    let elapsed = started.elapsed().as_secs_f64();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "cpu path: events {events} in {elapsed:.3} s ({:.0} events/s); {:.2} allocations per event",
        events as f64 / elapsed,
        allocations as f64 / events.max(1) as f64
    );
}

fn main() {
    // The server's allocator settings (4 KiB pages, prompt purging): with
    // mimalloc's own defaults, zeroing fresh 2 MiB pages was 29 % of this run.
    jimbus_net::allocator::tune();
    let requests: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let body = jimbus_perf::fair_batch50();
    if std::env::args().nth(2).as_deref() == Some("--cpu") {
        return cpu_only(&body, requests);
    }
    let clients = 32;
    // A warm-up run first, so that tables and buffers that grow once are not counted.
    ingest(&body, IngestRun { requests_per_client: 2, clients });
    let (allocations, bytes) = (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    let report = ingest(&body, IngestRun { requests_per_client: requests.div_ceil(clients), clients });
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    let bytes = BYTES.load(Ordering::Relaxed) - bytes;
    let events = report.events.max(1) as f64;
    println!(
        "events {} in {:.3} s ({:.0} events/s); {:.2} allocations and {:.0} bytes allocated per event",
        report.events,
        report.elapsed.as_secs_f64(),
        events / report.elapsed.as_secs_f64(),
        allocations as f64 / events,
        bytes as f64 / events,
    );
}

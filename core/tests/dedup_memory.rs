//! The dedup window's memory bound, measured by a counting allocator: however
//! many generations turn over, it never holds more than two key tables.
//! (Its own binary, because the allocator counts the whole process.)

use jimbus_core::dedup::DedupWindow;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live bytes and their peak over the system allocator.
struct PeakCounting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for PeakCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakCounting = PeakCounting;

#[test]
fn turning_generations_over_never_holds_a_third_table() {
    const CAPACITY: usize = 100_000;
    let one_table = {
        let before = LIVE.load(Ordering::Relaxed);
        let window = DedupWindow::new(CAPACITY);
        let size = LIVE.load(Ordering::Relaxed) - before;
        drop(window);
        size
    };
    let mut window = DedupWindow::new(CAPACITY);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    // Ten windows' worth of distinct keys: several rotations.
    for key in 0..10 * CAPACITY as u128 {
        assert!(window.insert(key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835), key as u64));
    }
    let peak_above_base = PEAK.load(Ordering::Relaxed) - base;
    // `base` already holds the first table; at most one more may ever be added.
    assert!(
        peak_above_base <= one_table + one_table / 8,
        "the window's peak was {} tables ({peak_above_base} bytes above one table of {one_table})",
        1.0 + peak_above_base as f64 / one_table as f64,
    );
}

//! What every role shares while the run goes on: the live counters behind the
//! progress bar and the `--events` limit, the run's clock, HDR histograms and
//! their percentile summary, and acknowledged id ranges. It must never do I/O
//! or decide what a role sends.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Counters shared by every task, for the progress bar and the stop condition.
pub struct Live {
    pub claimed: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
    /// When the load started, and the first error after it (µs; `u64::MAX` for none).
    pub load_start: Instant,
    pub first_error_us: AtomicU64,
}

impl Live {
    pub fn new() -> Self {
        Self {
            claimed: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            load_start: Instant::now(),
            first_error_us: AtomicU64::new(u64::MAX),
        }
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
        self.first_error_us.fetch_min(self.load_start.elapsed().as_micros() as u64, Relaxed);
    }

    /// Claims up to `want` events under the --events limit; 0 when the run is over.
    pub fn claim(&self, want: usize, limit: u64) -> usize {
        if self.stop.load(Relaxed) {
            return 0;
        }
        if limit == 0 {
            return want;
        }
        let first = self.claimed.fetch_add(want as u64, Relaxed);
        if first >= limit {
            self.stop.store(true, Relaxed);
            return 0;
        }
        (limit - first).min(want as u64) as usize
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Acknowledged (session, sequence) ranges of one producer.
pub type Acked = Vec<(u32, u64, u64)>;

/// Milliseconds since the run started, the clock stamped into every event.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

pub fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

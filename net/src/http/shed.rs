//! What the HTTP edge does when it sheds an ingest request (the memory budget
//! spent, a shard's queue full, the log unavailable or its disk full): it waits
//! [`SHED_PACE`] before the 503 (507 for a full disk), asks the budget once
//! more after that wait, and logs the
//! shedding at most once a second per shard. It never decides whether to
//! shed, which is the budget's and the bus's call, and it never holds a grant
//! while it waits.

use jimbus_core::budget::{Grant, MemoryBudget};
use std::cell::Cell;
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a shed ingest request waits before its 503. A client that sends
/// again as soon as it is refused (a flood, a retry loop) otherwise keeps a
/// shard busy refusing, and the requests it admitted wait behind those
/// refusals to be committed and answered: unpaced, 512 such connections left
/// the server storing 2–3 % of what it stores without them (docs/perf.md,
/// "Thirty-eighth pass"). Paced, an open connection costs at most ten
/// refusals a second; a well-behaved client waits out the answer's
/// `Retry-After` of 1 s anyway.
const SHED_PACE: Duration = Duration::from_millis(100);

/// The shortest time between two `shedding load` lines of one shard.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A grant of `want` bytes (at least `min`) from `budget`; when it is spent,
/// one more try after [`SHED_PACE`], so that a request that would be refused
/// waits its pace for the memory that frees meanwhile.
pub(crate) async fn grant(budget: &Arc<MemoryBudget>, want: u64, min: u64) -> Option<Grant> {
    if let Some(grant) = budget.request(want, min) {
        return Some(grant);
    }
    glommio::timer::sleep(SHED_PACE).await;
    budget.request(want, min)
}

/// Waits out the pace of a request answered 503 or 507 after it was granted memory;
/// the grant is given back first, so the wait holds none.
pub(crate) async fn pace(grant: Grant) {
    drop(grant);
    glommio::timer::sleep(SHED_PACE).await;
}

/// When a shard last logged a shed request (`None`: never), and how many it
/// has shed since without a line.
type Throttle = (Option<Instant>, u64);

thread_local! {
    static LAST_LINE: Cell<Throttle> = const { Cell::new((None, 0)) };
}

/// Logs a request shed for `error`: the first at once, then at most one line
/// a second per shard, which counts the requests shed since the last line.
/// One line per refusal would be thousands a second under a flood, written
/// while the server is busiest; `jimbus_http_overload_total` counts each.
pub(crate) fn log(error: &dyn Display) {
    LAST_LINE.with(|last| {
        let (line, unlogged) = next_line(last.get(), Instant::now());
        last.set(line);
        if let Some(shed_since_last_line) = unlogged {
            tracing::warn!(error = %error, shed_since_last_line, "shedding load");
        }
    });
}

/// The throttle's state after a shed request at `now`, and whether to log it
/// (with the requests shed since the last line, not counting this one).
fn next_line((at, unlogged): Throttle, now: Instant) -> (Throttle, Option<u64>) {
    match at {
        Some(at) if now.duration_since(at) < LOG_EVERY => ((Some(at), unlogged + 1), None),
        _ => ((Some(now), 0), Some(unlogged)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_then_one_line_a_second_counts_the_rest() {
        let start = Instant::now();
        let (mut state, logged) = next_line((None, 0), start);
        assert_eq!(logged, Some(0));
        // 999 more within the second: no line, each counted.
        for i in 1..1000 {
            let (next, logged) = next_line(state, start + Duration::from_millis(i));
            assert_eq!(logged, None, "refusal {i}");
            state = next;
        }
        assert_eq!(state, (Some(start), 999));
        // A second after the last line, the next one says how many it left out.
        let (state, logged) = next_line(state, start + LOG_EVERY);
        assert_eq!((state, logged), ((Some(start + LOG_EVERY), 0), Some(999)));
    }
}

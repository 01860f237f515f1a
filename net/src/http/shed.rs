//! What the HTTP edge does when it sheds an ingest request (the memory budget
//! spent, a shard's queue full, the log unavailable or its disk full): it waits
//! [`SHED_PACE`] before the 503 (507 for a full disk) and asks the budget once
//! more after that wait. It logs shed requests, and requests whose append the
//! bus failed, at most once a second per shard each. It never decides whether to
//! shed, which is the budget's and the bus's call, and it never holds a grant
//! while it waits.

use crate::observe::LineThrottle;
use jimbus_core::budget::{Grant, MemoryBudget};
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

/// How long a shed ingest request waits before its 503. A client that sends
/// again as soon as it is refused (a flood, a retry loop) otherwise keeps a
/// shard busy refusing, and the requests it admitted wait behind those
/// refusals to be committed and answered: unpaced, 512 such connections left
/// the server storing 2–3 % of what it stores without them (docs/perf.md,
/// "Thirty-eighth pass"). Paced, an open connection costs at most ten
/// refusals a second; a well-behaved client waits out the answer's
/// `Retry-After` of 1 s anyway.
const SHED_PACE: Duration = Duration::from_millis(100);

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

thread_local! {
    /// This shard's `shedding load` lines.
    static SHED_LINES: LineThrottle = const { LineThrottle::new() };
    /// This shard's `append failed` lines.
    static APPEND_FAILED_LINES: LineThrottle = const { LineThrottle::new() };
}

/// Logs a request shed for `error`, at most once a second per shard
/// ([`LineThrottle`]); `jimbus_http_overload_total` counts each.
pub(crate) fn log(error: &dyn Display) {
    SHED_LINES.with(|lines| {
        lines.note(|shed_since_last_line| tracing::warn!(error = %error, shed_since_last_line, "shedding load"));
    });
}

/// Logs a request whose append the bus failed (the log's write, a full disk,
/// JetStream), at most once a second per shard: while a disk stays full every
/// mod's request fails the same way, and a line each would fill the journal,
/// perhaps on that disk. `jimbus_ingest_requests_total` counts each answer.
pub(crate) fn log_append_failed(error: &dyn Display) {
    APPEND_FAILED_LINES.with(|lines| {
        lines.note(|failed_since_last_line| tracing::error!(error = %error, failed_since_last_line, "append failed"));
    });
}

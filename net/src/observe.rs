//! Operational metrics that no single component owns: the process start time,
//! the data directory's free space, subscribers' delivery lag, the
//! fsync and commit sizes of the log, and the counters registered at zero at
//! start, so that rates and alerts see them from the first scrape instead of
//! from their first increment; and [`LineThrottle`], which keeps a failure
//! that repeats from writing a log line each time.
//!
//! The names recorded here are the ones `deploy/prometheus` alerts on and
//! `deploy/grafana` charts (`tools/tests/observability` checks that
//! every name they use is exported). This module must never change what it
//! observes: it reads and records, and a failure to observe is only logged.

use crate::clock::now_micros;
use jimbus_core::aggregate::Aggregated;
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shortest time between two lines of one [`LineThrottle`].
const LINE_EVERY: Duration = Duration::from_secs(1);

/// One thread's log lines about one kind of failure that repeats (load shed,
/// appends failed on a full disk): the first at once, then at most one a
/// second, which counts the failures since the last line. A line each would
/// be thousands a second under a flood, written while the server is busiest;
/// the failures' metrics count each one.
#[derive(Debug, Default)]
pub struct LineThrottle {
    /// When the last line was written (`None`: never), and the failures since
    /// then without a line.
    state: Cell<(Option<Instant>, u64)>,
}

impl LineThrottle {
    pub const fn new() -> Self {
        Self { state: Cell::new((None, 0)) }
    }

    /// Notes one failure; calls `line` with the failures left unlogged since
    /// the last line when this one is to be logged.
    pub fn note(&self, line: impl FnOnce(u64)) {
        let (next, unlogged) = next_line(self.state.get(), Instant::now());
        self.state.set(next);
        if let Some(unlogged) = unlogged {
            line(unlogged);
        }
    }
}

/// A throttle's state after a failure at `now`, and whether to log it (with
/// the failures since the last line, not counting this one).
fn next_line((at, unlogged): (Option<Instant>, u64), now: Instant) -> ((Option<Instant>, u64), Option<u64>) {
    match at {
        Some(at) if now.duration_since(at) < LINE_EVERY => ((Some(at), unlogged + 1), None),
        _ => ((Some(now), 0), Some(unlogged)),
    }
}

/// A metric's handle, registered once per thread at its call site and kept
/// there: `per_thread!(Counter, counter!("name", labels…))` is a
/// `&'static LocalKey<Counter>`, used as `.with(|c| c.increment(1))`.
///
/// `metrics::counter!` and its kin look their key up in the recorder at every
/// call: an owned copy of the key (allocations for labels) and a clone of a
/// reference count that every shard's thread shares. On the ingest path that
/// was about a sixth of a request's allocations (docs/perf.md, eighteenth
/// pass). Only for a key that never changes at its call site on one thread (a
/// shard's label does not: a shard is one thread). The recorder is installed
/// before the shards start, so no thread keeps a handle from before it.
macro_rules! per_thread {
    ($handle:ident, $register:ident!($($key:tt)*)) => {{
        thread_local! { static HANDLE: metrics::$handle = metrics::$register!($($key)*); }
        &HANDLE
    }};
}
pub(crate) use per_thread;

/// HTTP answers by status: every endpoint's, counted by the handler, and the
/// connection's own (a refused connection, an unreadable request).
pub(crate) const HTTP_REQUESTS: &str = "jimbus_http_requests_total";

/// How often the data directory's free space is read.
const DISK_EVERY: Duration = Duration::from_secs(5);

/// Counters both backends may increment, registered at zero.
const COUNTERS: &[&str] = &[
    "jimbus_events_accepted_total",
    "jimbus_events_rejected_total",
    "jimbus_events_duplicate_total",
    "jimbus_grpc_events_accepted_total",
    "jimbus_deadletter_total",
    "jimbus_consumer_dead_lettered_total",
    "jimbus_http_overload_total",
    "jimbus_http_connections_accepted_total",
    "jimbus_http_accept_failures_total",
    "jimbus_grpc_subscriptions_refused_total",
    "jimbus_aggregate_refused_total",
    "jimbus_subscriber_reads_deferred_total",
];
/// The `component`s of `jimbus_budget_denials_total`: what the spent budget
/// refused (ingest bodies, a connection's buffers, gRPC publishes, and the
/// two kinds of long-lived stream).
const BUDGET_COMPONENTS: &[&str] = &["http", "connection", "grpc", "subscription", "sse"];
/// The `reason`s of `jimbus_grpc_connections_closed_total` (see `grpc::accept`).
const GRPC_CLOSE_REASONS: &[&str] = &["over_limit", "handshake_timeout", "out_of_descriptors"];
/// The `reason`s of `jimbus_http_connections_refused_total`: a shard's
/// `--max-connections` open, or the process out of descriptors (`http::accept`).
const HTTP_REFUSE_REASONS: &[&str] = &["over_limit", "out_of_descriptors"];
/// Labelled counters registered at zero for each value of their one label:
/// name, label, values.
const LABELLED_COUNTERS: &[(&str, &str, &[&str])] = &[
    ("jimbus_budget_denials_total", "component", BUDGET_COMPONENTS),
    ("jimbus_grpc_connections_closed_total", "reason", GRPC_CLOSE_REASONS),
    ("jimbus_http_connections_refused_total", "reason", HTTP_REFUSE_REASONS),
];
/// Counters of the embedded log only.
const EMBEDDED_COUNTERS: &[&str] = &["jimbus_log_commit_failures_total"];
/// Counters of the JetStream backend only.
const JETSTREAM_COUNTERS: &[&str] =
    &["jimbus_bus_publish_failures_total", "jimbus_bus_outages_total", "jimbus_bus_disconnects_total"];

/// Records the start time (and, on the embedded log, each shard's queue
/// capacity) and registers the counters of this backend at zero.
pub fn register(embedded: bool, queue_capacity: usize) {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!("jimbus_process_start_time_seconds").set(started);
    if embedded {
        metrics::gauge!("jimbus_shard_queue_capacity").set(queue_capacity as f64);
    }
    let backend = if embedded { EMBEDDED_COUNTERS } else { JETSTREAM_COUNTERS };
    for &name in COUNTERS.iter().chain(backend) {
        metrics::counter!(name).absolute(0);
    }
    for &(name, label, values) in LABELLED_COUNTERS {
        for &value in values {
            metrics::counter!(name, label => value).absolute(0);
        }
    }
    metrics::gauge!("jimbus_grpc_connections").set(0.0);
}

/// Reads the free and total bytes of the file system holding `dir` every few
/// seconds, on a thread of its own, until `stopping` says so.
pub fn watch_data_dir(dir: PathBuf, stopping: impl Fn() -> bool + Send + 'static) {
    let spawned = std::thread::Builder::new().name("jimbus-disk".into()).spawn(move || {
        let mut warned = false;
        while !stopping() {
            match space(&dir) {
                Ok((free, size)) => {
                    metrics::gauge!("jimbus_data_dir_free_bytes").set(free as f64);
                    metrics::gauge!("jimbus_data_dir_size_bytes").set(size as f64);
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the data directory's free space");
                }
                Err(_) => {}
            }
            std::thread::sleep(DISK_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the disk space watcher");
    }
}

/// (bytes available to an unprivileged writer, file system size) of `dir`.
fn space(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// A live subscription handed over a batch whose oldest record was received
/// at `oldest_us`: one sample of delivery lag per batch, not per record, to
/// keep the hot path cheap.
pub fn delivered(oldest_us: u64) {
    let lag = now_micros().saturating_sub(oldest_us) as f64 / 1e6;
    metrics::histogram!("jimbus_delivery_lag_seconds").record(lag);
}

/// A synced write of the log (the write and its sync: the segment is
/// `O_DSYNC`) that started at `started`, recorded as the log's fsync time.
pub fn synced(started: Instant) {
    per_thread!(Histogram, histogram!("jimbus_log_fsync_seconds")).with(|h| h.record(started.elapsed().as_secs_f64()));
}

/// A group commit of `records` records and `bytes` bytes, written (and synced,
/// per the fsync mode) since `started`.
pub fn committed(started: Instant, records: usize, bytes: usize) {
    per_thread!(Histogram, histogram!("jimbus_log_commit_seconds")).with(|h| h.record(started.elapsed().as_secs_f64()));
    per_thread!(Histogram, histogram!("jimbus_log_commit_records")).with(|h| h.record(records as f64));
    per_thread!(Histogram, histogram!("jimbus_log_commit_bytes")).with(|h| h.record(bytes as f64));
}

/// Aggregated messages just made durable: how many raw events each window
/// folded, and how many triggers each scored hand's cascade had.
pub fn aggregated(messages: &[Aggregated]) {
    for aggregated in messages {
        metrics::histogram!("jimbus_aggregate_window_events").record(aggregated.input_sequences.len() as f64);
        if let Some(cascade) = &aggregated.message.cascade_info {
            metrics::histogram!("jimbus_aggregate_cascade_triggers").record(f64::from(cascade.trigger_count));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_logged_then_one_line_a_second_counts_the_rest() {
        let start = Instant::now();
        let (mut state, logged) = next_line((None, 0), start);
        assert_eq!(logged, Some(0));
        // 999 more within the second: no line, each counted.
        for i in 1..1000 {
            let (next, logged) = next_line(state, start + Duration::from_millis(i));
            assert_eq!(logged, None, "failure {i}");
            state = next;
        }
        assert_eq!(state, (Some(start), 999));
        // A second after the last line, the next one says how many it left out.
        let (state, logged) = next_line(state, start + LINE_EVERY);
        assert_eq!((state, logged), ((Some(start + LINE_EVERY), 0), Some(999)));
    }
}

//! Wall-clock time as the server stamps and compares it: microseconds since
//! the Unix epoch, and their conversion to and from protobuf timestamps. It
//! must never be used to order records (the log's offsets do that) or to
//! measure durations (`Instant` does).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since the Unix epoch of a timestamp (0 before it); the inverse of [`timestamp`].
pub fn micros(t: &prost_types::Timestamp) -> u64 {
    (t.seconds.max(0) as u64) * 1_000_000 + (t.nanos.max(0) as u64) / 1000
}

/// The timestamp of `micros` microseconds since the Unix epoch.
pub fn timestamp(micros: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (micros / 1_000_000) as i64, nanos: ((micros % 1_000_000) * 1000) as i32 }
}

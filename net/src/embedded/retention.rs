//! Retention of a shard's log: which closed segments its policy no longer
//! keeps, and their deletion. Limits apply to the shard's whole log (its
//! segments mix the topics of the sessions it owns) and are enforced by
//! deleting whole segments, oldest first; the active segment is never deleted,
//! and neither is a segment holding an offset a durable consumer has not
//! acknowledged. Files are deleted through io_uring, like every other file
//! operation of the log, so the shard's thread never blocks on an unlink.
//! This module must never delete anything but whole closed segments and
//! their indexes.

use super::layout;
use super::log::SegmentWriter;

/// A segment retention deleted.
#[derive(Debug, Clone)]
struct RemovedSegment {
    /// The segment's first offset (its name).
    base: u64,
    records: u64,
    bytes: u64,
}

impl SegmentWriter {
    /// Forgets the closed segments that retention no longer keeps, oldest
    /// first, but never one holding an offset at or above `keep_from` (the
    /// lowest offset a durable consumer has not acknowledged), and deletes their
    /// files through io_uring (the pump waits without blocking its thread).
    /// Readers that still hold a forgotten segment's file keep reading it
    /// until they let go.
    pub async fn enforce_retention(&mut self, now_us: u64, keep_from: u64) {
        for segment in self.forget_expired(now_us, keep_from) {
            let path = layout::segment(&self.dir, segment.base);
            match layout::remove(&path).await {
                Ok(()) => {
                    let (records, bytes) = (segment.records, segment.bytes);
                    tracing::info!(segment = %path.display(), records, bytes, "retention deleted segment");
                    metrics::counter!("jimbus_log_retention_deleted_bytes_total").increment(bytes);
                }
                Err(e) => tracing::error!(segment = %path.display(), error = %e, "retention cannot delete a segment"),
            }
            // An index may never have been written: its absence is fine.
            let _ = layout::remove(&layout::segment_index(&self.dir, segment.base)).await;
        }
    }

    /// Drops expired segments from the index; returns what it dropped.
    fn forget_expired(&mut self, now_us: u64, keep_from: u64) -> Vec<RemovedSegment> {
        let policy = self.options.retention;
        let mut removed = Vec::new();
        let mut log = self.index.borrow_mut();
        let mut total: u64 = log.segments.iter().map(|s| s.len).sum();
        while log.segments.len() > 1 {
            let (oldest, next) = (&log.segments[0], &log.segments[1]);
            let too_old = policy.max_age.is_some_and(|age| oldest.last_time_us + age.as_micros() as u64 <= now_us);
            let too_big = policy.max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) || next.base > keep_from {
                break;
            }
            let gone = log.segments.remove(0);
            total -= gone.len;
            removed.push(RemovedSegment { base: gone.base, records: gone.records, bytes: gone.len });
        }
        let start = log.start();
        log.time_marks.retain(|&(_, offset)| offset >= start);
        removed
    }
}

//! Bringing a shard back from its directory, and leaving it so that the next
//! start is quick: the log's segments are opened (a closed one from its index,
//! any other by a scan that cuts a torn tail), the checkpoint gives sequences
//! and topic counts as of a segment's base so only the records after it are
//! replayed, the dedup window is rebuilt from the records it covers, and the
//! durable consumers are read back with their delivery restarted. After a
//! commit that closed a segment, the pump writes a new checkpoint here. The
//! order of files is [`layout`]'s. This module must never lose a record the
//! log holds whole: what it cannot read it replays, and only a torn tail is cut.

use super::aggregation::AggregationStage;
use super::consumer::Consumer;
use super::consumer_store::{ConsumerStore, Restored};
use super::layout;
use super::log::{
    copy_for_writes, is_clean_end, open_segment, ActiveWrites, Ahead, LogError, LogIndex, LogOptions, RecoveryReport,
    Segment, SegmentWriter, Tail, POSITION_STRIDE, TIME_MARK_STRIDE,
};
use super::pump::{PumpOptions, Shard};
use super::router::ShardRouter;
use crate::observe::LineThrottle;
use jimbus_core::aggregate::ConfigError;
use jimbus_core::batch::{BatchConfig, BatchConfigError, BatchSizer};
use jimbus_core::budget::MemoryBudget;
use jimbus_core::checkpoint::{SegmentIndex, ShardCheckpoint};
use jimbus_core::dedup::DedupWindow;
use jimbus_core::recent_map::RecentKeyMap;
use jimbus_core::record::{self, Record, RecordKind};
use jimbus_core::stamps::{client_key, StampEncoder};
use jimbus_core::topic::TopicWriter;
use jimbus_proto::events as pb;
use prost::Message;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Why a shard could not open.
#[derive(Debug, thiserror::Error)]
pub enum ShardOpenError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("aggregation settings: {0}")]
    Aggregate(#[from] ConfigError),
    #[error("batch settings: {0}")]
    Batch(#[from] BatchConfigError),
}

impl From<std::io::Error> for ShardOpenError {
    fn from(e: std::io::Error) -> Self {
        ShardOpenError::Log(LogError::Io(e))
    }
}

impl Shard {
    /// Opens the shard's log and rebuilds sequences, dedup and topics from it.
    pub(super) async fn open(
        id: usize,
        dir: &std::path::Path,
        log: LogOptions,
        options: PumpOptions,
        router: ShardRouter,
        budget: &Arc<MemoryBudget>,
    ) -> Result<Self, ShardOpenError> {
        let log_retention_age = log.retention.max_age;
        let Replayed { writer, next_sequence, topics, dedup } = replay(id, dir, log, options.dedup_window).await?;
        let (store, restored, journaled) = ConsumerStore::load(dir)?;
        router.durables.set_limit(options.durables.max_names);
        // Idle consumers and aged segments are looked for a tenth of their limit apart.
        for limit in [options.durables.idle_expiry, log_retention_age].into_iter().flatten() {
            let every = (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            glommio::spawn_local(router.clone().maintain_every(id, every)).detach();
        }
        let dir = dir.to_path_buf();
        let aggregation = AggregationStage::new(id, router.shards(), options.aggregate.clone(), budget)?;
        let batch = BatchConfig { max_batch: options.max_batch, ..BatchConfig::default() };
        batch.validate()?;
        let mut shard = Shard {
            id,
            dir,
            router,
            writer,
            consumers: BTreeMap::new(),
            store,
            durable_limits: options.durables,
            next_sequence,
            dedup,
            topics,
            topic: TopicWriter::default(),
            stamps: StampEncoder::default(),
            aggregation,
            batch: BatchSizer::new(batch),
            queue_depth_gauge: metrics::gauge!("jimbus_shard_queue_depth", "shard" => id.to_string()),
            batch_target_gauge: metrics::gauge!("jimbus_shard_batch_target", "shard" => id.to_string()),
            linger: options.linger,
            fresh: Vec::new(),
            commit_failed_lines: LineThrottle::new(),
        };
        shard.restore_consumers(restored);
        if journaled {
            // Fold the journal into a snapshot now, so it starts empty.
            shard.save_consumers().await?;
        }
        Ok(shard)
    }

    /// Puts back every consumer read from disk and starts its delivery.
    fn restore_consumers(&mut self, restored: BTreeMap<String, Restored>) {
        for (name, (entry, done)) in restored {
            let Some(consumer) = Consumer::restore(name.clone(), entry, done) else {
                tracing::warn!(shard = self.id, consumer = %name, "dropping a stored consumer whose pattern no longer parses");
                continue;
            };
            self.consumers.insert(name.clone(), consumer);
            self.router.durables.register(&name);
            self.spawn_delivery(&name);
        }
    }

    /// After a commit that closed a segment, writes the shard's state as of the
    /// new segment's base in the background (the pump does not wait for it), so
    /// a restart replays only from there. A failure is logged: the restart then
    /// replays more.
    pub(super) fn checkpoint_if_rolled(&mut self) {
        let Some(end) = self.writer.take_rolled() else { return };
        let checkpoint = ShardCheckpoint {
            end,
            next_sequence: self.next_sequence.iter().map(|(s, n)| (s.clone(), *n)).collect(),
            topics: self.topics.iter().map(|(t, n)| (t.clone(), *n)).collect(),
            dedup_from: self.dedup.oldest_offset().unwrap_or(end).min(end),
        };
        let (path, bytes, shard) = (layout::checkpoint(&self.dir), checkpoint.encode(), self.id);
        glommio::spawn_local(async move {
            if let Err(e) = layout::replace_file(&path, &bytes).await {
                tracing::warn!(shard, error = %e, "cannot write the checkpoint; the next start replays more");
            }
        })
        .detach();
    }
}

/// What a shard rebuilds from its checkpoint and log.
struct Replayed {
    writer: SegmentWriter,
    next_sequence: RecentKeyMap<u64>,
    topics: RecentKeyMap<u64>,
    dedup: DedupWindow,
}

/// Opens the log and replays it over the checkpoint: sequences and topic
/// counts from the checkpoint's end, the dedup window from `dedup_from`.
async fn replay(id: usize, dir: &Path, log: LogOptions, dedup_window: usize) -> Result<Replayed, LogError> {
    let checkpoint = load_checkpoint(dir);
    let (end, dedup_from) = checkpoint.as_ref().map_or((0, 0), |c| (c.end, c.dedup_from.min(c.end)));
    let mut dedup = DedupWindow::new(dedup_window);
    let (mut next_sequence, mut topics) = (RecentKeyMap::default(), RecentKeyMap::default());
    if let Some(checkpoint) = checkpoint {
        next_sequence.extend(checkpoint.next_sequence);
        topics.extend(checkpoint.topics);
    }
    let (writer, report) = SegmentWriter::open(dir, log, dedup_from, |rec| {
        let after_checkpoint = rec.offset >= end;
        if after_checkpoint {
            *topics.get_or_insert(rec.topic, || 0) += 1;
        }
        if rec.kind != RecordKind::Event {
            return;
        }
        if let Ok(mut event) = pb::Event::decode(rec.message) {
            if after_checkpoint {
                let next = next_sequence.get_or_insert(&event.session_id, || 1);
                *next = (*next).max(event.sequence + 1);
            }
            if let Some(key) = client_key(&mut event) {
                dedup.insert(key, rec.offset);
            }
        }
    })
    .await?;
    if writer.next_offset() < end {
        let log_end = writer.next_offset();
        tracing::warn!(
            shard = id,
            checkpoint = end,
            log_end,
            "the log ends before its checkpoint: records were lost outside jimbus"
        );
    }
    tracing::info!(shard = id, segments = report.segments, from_index = report.indexed, replayed_from = dedup_from, records = report.records, truncated = ?report.truncated, "log recovered");
    Ok(Replayed { writer, next_sequence, topics, dedup })
}

/// The checkpoint to start from, if there is a readable one.
fn load_checkpoint(dir: &std::path::Path) -> Option<ShardCheckpoint> {
    let bytes = std::fs::read(layout::checkpoint(dir)).ok()?;
    match ShardCheckpoint::decode(&bytes) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring an unreadable checkpoint; replaying the whole log");
            None
        }
    }
}

impl SegmentWriter {
    /// Opens (creating if needed) the log in `dir`, recovering what is there.
    /// `each` sees every valid record at or after `replay_from`, oldest first, so
    /// the shard can rebuild its sequences, dedup window and topic counts from
    /// its checkpoint at `replay_from`. A closed segment wholly below it whose
    /// index is intact is not read at all; every other segment is scanned.
    pub async fn open(
        dir: &Path,
        options: LogOptions,
        replay_from: u64,
        mut each: impl FnMut(&Record<'_>),
    ) -> Result<(Self, RecoveryReport), LogError> {
        layout::prepare(dir)?;
        let mut report = RecoveryReport::default();
        let mut segments = Vec::new();
        let mut time_marks = Vec::new();
        let mut last_time_us = 0;
        let mut end = 0;
        let mut active_positions = Vec::new();
        let paths = layout::segments(dir)?;
        for (i, (base, path)) in paths.iter().enumerate() {
            let (base, closed) = (*base, i + 1 < paths.len());
            let index = if closed { usable_index(dir, base, path, replay_from) } else { None };
            let (positions, len, segment_time_us) = match index {
                Some(index) => {
                    report.indexed += 1;
                    // Index files written before the stride hold more marks.
                    time_marks.extend(index.time_marks.into_iter().filter(|(_, o)| o.is_multiple_of(TIME_MARK_STRIDE)));
                    (index.positions, index.valid_len, index.last_time_us)
                }
                None => scan_segment(path, replay_from, &mut time_marks, &mut report, &mut each)?,
            };
            let records = positions.len() as u64;
            report.records += records;
            last_time_us = last_time_us.max(segment_time_us);
            end = end.max(base + records);
            let file = open_segment(path, options.fsync).await?;
            let marks = positions.iter().step_by(POSITION_STRIDE as usize).copied().collect();
            segments.push(Segment { base, file: Rc::new(file), marks, records, len, last_time_us: segment_time_us });
            // The last segment stays active: its index is written when it closes.
            active_positions = positions;
        }
        report.segments = segments.len();
        // The active segment, reopened, is written through its file (its
        // zeros, if it was prepared, were cut by the scan) until the next
        // prepared one is ready.
        let writes =
            segments.last().map(|active| copy_for_writes(&active.file).map(ActiveWrites::Buffered)).transpose()?;
        let index = Rc::new(RefCell::new(LogIndex {
            segments,
            end,
            tail: Tail::new(end, options.tail_cache_bytes),
            time_marks,
            committed: event_listener::Event::new(),
        }));
        let ahead = Ahead::new(dir, options.segment_bytes, options.prepare_ahead);
        let mut writer = Self {
            dir: dir.to_path_buf(),
            options,
            index,
            staged: Vec::new(),
            staged_ends: Vec::new(),
            last_time_us,
            rolled: None,
            roll_failing: false,
            active_positions,
            writes,
            ahead,
        };
        // An empty log starts its first segment.
        if writer.index.borrow().segments.is_empty() {
            writer.start_segment(end).await?;
        }
        metrics::counter!("jimbus_log_recovered_records_total").increment(report.records);
        Ok((writer, report))
    }
}

/// The index of a closed segment when it can replace a scan: it decodes, it
/// matches the file's size, and none of its records needs replaying.
fn usable_index(dir: &Path, base: u64, segment: &Path, replay_from: u64) -> Option<SegmentIndex> {
    let index = SegmentIndex::decode(&std::fs::read(layout::segment_index(dir, base)).ok()?).ok()?;
    let size = std::fs::metadata(segment).ok()?.len();
    (size == index.valid_len && base + index.positions.len() as u64 <= replay_from).then_some(index)
}

/// Scans one segment: positions, valid length and newest time; truncates a torn
/// or corrupt tail; hands every record at or after `replay_from` to `each`.
fn scan_segment(
    path: &Path,
    replay_from: u64,
    time_marks: &mut Vec<(u64, u64)>,
    report: &mut RecoveryReport,
    each: &mut impl FnMut(&Record<'_>),
) -> Result<(Vec<u32>, u64, u64), LogError> {
    let data = std::fs::read(path)?;
    let mut positions = Vec::new();
    let mut segment_time_us = 0;
    let scan = record::scan(&data, |pos, rec| {
        segment_time_us = segment_time_us.max(rec.time_us);
        if rec.offset.is_multiple_of(TIME_MARK_STRIDE) {
            time_marks.push((rec.time_us, rec.offset));
        }
        positions.push(pos as u32);
        if rec.offset >= replay_from {
            each(rec);
        }
    });
    if scan.stopped.is_some() && is_clean_end(scan.valid_len as u64, &data[scan.valid_len..]) {
        // The zeros of a segment prepared ahead, after its last record.
        tracing::debug!(segment = %path.display(), valid_bytes = scan.valid_len, "cutting a prepared segment's zeros");
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(scan.valid_len as u64)?;
    } else if let Some(reason) = &scan.stopped {
        let cut = data.len() - scan.valid_len;
        tracing::warn!(segment = %path.display(), valid_bytes = scan.valid_len, cut_bytes = cut, %reason, "truncating log tail");
        metrics::counter!("jimbus_log_truncated_bytes_total").increment(cut as u64);
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(scan.valid_len as u64)?;
        report.truncated.push((path.to_path_buf(), cut as u64, reason.to_string()));
    }
    Ok((positions, scan.valid_len as u64, segment_time_us))
}

#[cfg(test)]
mod tests {
    use super::super::log::testing::{fd_flags, with_dir};
    use super::super::log::{read_frames, read_log, FsyncMode, LogRead, Retention, SharedIndex};
    use super::*;
    use bytes::Bytes;
    use jimbus_core::record::RecordKind;

    fn options() -> LogOptions {
        // No tail to speak of (it keeps the newest record), so reads go to the files.
        LogOptions {
            fsync: FsyncMode::Never,
            segment_bytes: 64 << 10,
            tail_cache_bytes: 0,
            retention: Retention::default(),
            prepare_ahead: false,
        }
    }

    /// The message of record `offset`: mostly small, every 97th larger than one read.
    fn message(offset: u64) -> Vec<u8> {
        let len = if offset % 97 == 13 { 300 << 10 } else { (offset as usize * 37) % 700 };
        (0..len).map(|i| (offset as usize + i) as u8).collect()
    }

    /// Reading from each offset returns the record at that offset first, and those after it.
    async fn check_every_offset(index: &SharedIndex, end: u64) {
        for from in 0..end {
            let (frames, next) = read_frames(index, from, 3, usize::MAX).await.unwrap();
            assert!(!frames.is_empty(), "nothing read from {from}");
            assert_eq!(next, from + frames.len() as u64);
            for (i, frame) in frames.iter().enumerate() {
                let rec = record::decode(frame).unwrap();
                assert_eq!((rec.offset, rec.message), (from + i as u64, &message(from + i as u64)[..]));
            }
            // Within 1,000 bytes: the same records, no more than fit (a
            // smaller read may end sooner), and at least one.
            let (within, next) = read_frames(index, from, 3, 1000).await.unwrap();
            assert!(!within.is_empty(), "nothing read within 1,000 bytes from {from}");
            assert_eq!((&within[..], next), (&frames[..within.len()], from + within.len() as u64));
            let bytes: usize = within.iter().map(Bytes::len).sum();
            assert!(within.len() == 1 || bytes <= 1000, "{bytes} bytes read from {from}");
            // Left unread: a first record on disk that needs a read of its own.
            let on_disk = from < index.borrow().tail.first;
            match read_log(index, from, 3, 1000, false).await.unwrap() {
                LogRead::Frames(unless_larger, next) => {
                    assert!(!on_disk || message(from).len() < 16 << 10, "record {from} was read");
                    assert_eq!((&unless_larger, next), (&within, from + within.len() as u64));
                }
                LogRead::Larger(len) => {
                    assert!(on_disk, "record {from} is in memory");
                    assert_eq!(len, frames[0].len(), "record {from}'s framed length");
                }
            }
        }
    }

    /// Whether `file` was opened `O_DSYNC`.
    fn opened_dsync(file: &glommio::io::BufferedFile) -> bool {
        use std::os::fd::AsRawFd;
        fd_flags(file.as_raw_fd()).expect("an open descriptor's flags") & libc::O_DSYNC != 0
    }

    /// With no `fdatasync` left in a commit, a segment opened without
    /// `O_DSYNC` would acknowledge what a power cut loses: every segment,
    /// the first, one rolled to and those reopened at start, is opened so
    /// unless the log never syncs (a segment prepared ahead: `log::ahead`).
    #[test]
    fn segments_are_opened_synced_unless_the_log_never_syncs() {
        with_dir(|path| async move {
            for fsync in [FsyncMode::Never, FsyncMode::Batch, FsyncMode::Always] {
                let dir = path.join(format!("{fsync:?}"));
                let options = LogOptions { fsync, ..options() };
                let (mut writer, _) = SegmentWriter::open(&dir, options.clone(), 0, |_| {}).await.unwrap();
                for offset in 0..3 {
                    writer.stage(RecordKind::Event, "t", &vec![7; 40 << 10], offset);
                    writer.commit().await.unwrap();
                }
                let synced = fsync != FsyncMode::Never;
                let written = writer.index();
                assert!(written.borrow().segments.len() > 1, "a segment was rolled to");
                for segment in &written.borrow().segments {
                    assert_eq!(opened_dsync(&segment.file), synced, "{fsync:?}, segment {} as written", segment.base);
                }
                drop((writer, written));
                let (reopened, _) = SegmentWriter::open(&dir, options, 0, |_| {}).await.unwrap();
                for segment in &reopened.index().borrow().segments {
                    assert_eq!(opened_dsync(&segment.file), synced, "{fsync:?}, segment {} reopened", segment.base);
                }
            }
        });
    }

    #[test]
    fn every_offset_reads_back_from_the_tail_too() {
        with_dir(|path| async move {
            let options = LogOptions { tail_cache_bytes: 16 << 20, ..options() };
            let (mut writer, _) = SegmentWriter::open(&path, options, 0, |_| {}).await.unwrap();
            for offset in 0..300 {
                writer.stage(RecordKind::Event, "t", &message(offset), offset);
                if offset % 7 == 0 {
                    writer.commit().await.unwrap();
                }
            }
            writer.commit().await.unwrap();
            let index = writer.index();
            assert_eq!(index.borrow().tail.frames.len(), 300, "every record is in the tail");
            check_every_offset(&index, 300).await;
        });
    }

    #[test]
    fn every_offset_reads_back_from_the_sparse_positions_before_and_after_a_restart() {
        with_dir(|path| async move {
            let (mut writer, _) = SegmentWriter::open(&path, options(), 0, |_| {}).await.unwrap();
            let mut offset = 0;
            for commit in 0..120u64 {
                for _ in 0..1 + commit % 9 {
                    writer.stage(RecordKind::Event, "t", &message(offset), offset);
                    offset += 1;
                }
                writer.commit().await.unwrap();
            }
            let index = writer.index();
            assert!(index.borrow().segments.len() > 3, "the records span several segments");
            for segment in &index.borrow().segments {
                // One position in memory per POSITION_STRIDE records, not one per record.
                assert_eq!(segment.marks.len() as u64, segment.records.div_ceil(POSITION_STRIDE));
            }
            check_every_offset(&index, offset).await;
            let closed: Vec<u64> = index.borrow().segments.iter().rev().skip(1).map(|s| s.base).collect();
            drop((writer, index));
            // Each closed segment's index file is written in the background.
            while !closed.iter().all(|&base| layout::segment_index(&path, base).exists()) {
                futures_lite::future::yield_now().await;
            }
            for replay_from in [0, offset] {
                // From 0 every segment is scanned; from the end, closed ones come from their index files.
                let (writer, report) = SegmentWriter::open(&path, options(), replay_from, |_| {}).await.unwrap();
                assert_eq!(report.indexed, if replay_from == 0 { 0 } else { closed.len() });
                check_every_offset(&writer.index(), offset).await;
            }
        });
    }
}

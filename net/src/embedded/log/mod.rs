//! One shard's durable log: append-only segment files with group commit.
//!
//! The shard's pump is the only writer ([`SegmentWriter`]): it stages records,
//! then [`SegmentWriter::commit`] writes them with one write to a segment
//! opened `O_DSYNC` (in `batch` mode), from glommio's blocking thread, durable
//! when it returns, so every request waiting on that commit is acknowledged
//! together. Once a shard has written a few MiB, its next segment is prepared
//! ahead as zeros (module `ahead`) and written with direct I/O over them
//! (module `direct`), through io_uring. Readers (subscriptions on the same shard)
//! go through [`LogIndex`], which maps offsets to segment positions and keeps
//! the newest records in memory; they never write. Recovery scans every
//! segment at start, truncates a torn or corrupt tail at the last valid CRC,
//! and reports it.
//! This module must never acknowledge anything itself: it tells the pump what is
//! durable and the pump answers clients.

mod ahead;
mod direct;
mod read;
mod tail;
mod write;

pub(super) use ahead::{is_clean_end, Ahead};
pub(super) use tail::Tail;

use direct::DirectSegment;
pub use read::{read_frames, read_log, LogRead};
use tail::TailCommit;
use write::write_durably;
pub(super) use write::{copy_for_writes, open_segment, ActiveWrites};

use super::layout;
use crate::observe::per_thread;
use bytes::Bytes;
use glommio::io::BufferedFile;
use jimbus_core::checkpoint::SegmentIndex;
use jimbus_core::record::{self, RecordKind};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// Every this many records of a segment, its file position is kept in
/// memory; a read from another offset starts at the mark before it and steps
/// over at most this many records less one. Keeping every record's position
/// cost 4 bytes per record for as long as the log is kept: 11 GB for a month
/// at 1,000 events/s with the default (keep everything).
pub(super) const POSITION_STRIDE: u64 = 64;
/// Every this many offsets, a record's time is kept in memory for time-based
/// starts, which read forward from the mark to the first record at the time.
pub(super) const TIME_MARK_STRIDE: u64 = 1024;

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Never sync: acknowledged events can be lost on power failure (benchmarks only).
    Never,
    /// One synced write (O_DSYNC) per group commit, before any of its events is acknowledged.
    Batch,
    /// One synced write (O_DSYNC) per record.
    Always,
}

/// Segments smaller than this are written through the page cache: each one
/// prepared ahead costs a write and a sync of its zeros ([`ahead`]).
const PREPARED_SEGMENT_MIN_BYTES: u64 = 8 << 20;

/// Tunables of a shard's log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub fsync: FsyncMode,
    /// A segment is closed and a new one started once it grows past this size.
    pub segment_bytes: u64,
    /// Newest records kept in memory for subscribers, in bytes.
    pub tail_cache_bytes: usize,
    pub retention: Retention,
    /// Whether segments are prepared ahead and written with direct I/O
    /// (module `ahead`); the configuration turns it on when the log syncs and
    /// segments are large enough to repay their zeros.
    pub prepare_ahead: bool,
}

impl LogOptions {
    /// Whether segments are prepared ahead, as the server decides it: when
    /// the log syncs (a log that never syncs gains nothing) and segments are
    /// large enough to repay their zeros.
    pub fn prepares_ahead(fsync: FsyncMode, segment_bytes: u64) -> bool {
        fsync != FsyncMode::Never && segment_bytes >= PREPARED_SEGMENT_MIN_BYTES
    }
}

/// How long closed segments are kept (applied by the `retention` module).
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Delete a segment once its newest record is older than this.
    pub max_age: Option<std::time::Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// An operation on a file that glommio names, with the OS error kept.
    #[error("log I/O failed: {op} {path}: {source}")]
    File { op: &'static str, path: String, source: std::io::Error },
    #[error("glommio I/O failed: {0}")]
    Glommio(String),
}

impl LogError {
    /// The OS error number behind it, if any.
    fn raw_os_error(&self) -> Option<i32> {
        match self {
            LogError::Io(e) | LogError::File { source: e, .. } => e.raw_os_error(),
            LogError::Glommio(_) => None,
        }
    }

    /// Whether the disk, or the user's quota on it, is full.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            LogError::Io(e) | LogError::File { source: e, .. } => crate::disk::is_out_of_space(e),
            LogError::Glommio(_) => false,
        }
    }
}

impl<T: std::fmt::Debug> From<glommio::GlommioError<T>> for LogError {
    fn from(e: glommio::GlommioError<T>) -> Self {
        match e {
            glommio::GlommioError::IoError(io) => LogError::Io(io),
            glommio::GlommioError::EnhancedIoError { source, op, path, .. } => {
                let path = path.map_or_else(|| "(no path)".to_string(), |p| p.display().to_string());
                LogError::File { op, path, source }
            }
            other => LogError::Glommio(other.to_string()),
        }
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Closed segments read from their index instead of scanned.
    pub indexed: usize,
    pub records: u64,
    /// Bytes cut from segment tails, and why.
    pub truncated: Vec<(PathBuf, u64, String)>,
}

/// One segment file and where its records are.
pub(super) struct Segment {
    /// Offset of its first record (also its file name).
    pub(super) base: u64,
    pub(super) file: Rc<BufferedFile>,
    /// File position of every [`POSITION_STRIDE`]th record from `base`.
    pub(super) marks: Vec<u32>,
    /// How many records the segment holds.
    pub(super) records: u64,
    /// Bytes of whole records in the file.
    pub(super) len: u64,
    /// Receive time of its newest record, for age retention.
    pub(super) last_time_us: u64,
}

/// Offsets, positions and the in-memory tail, shared by the writer and readers
/// of one shard (same thread, short borrows, never held across an await).
pub struct LogIndex {
    /// Every segment on disk, oldest first; the last one is being written.
    pub(super) segments: Vec<Segment>,
    /// Offset of the next record to be committed.
    pub(super) end: u64,
    /// The newest committed records, for readers that keep up.
    pub(super) tail: Tail,
    /// The (time, offset) of every record whose offset is a multiple of
    /// [`TIME_MARK_STRIDE`], for time-based starts.
    pub(super) time_marks: Vec<(u64, u64)>,
    /// Woken after every commit.
    pub committed: event_listener::Event,
}

pub type SharedIndex = Rc<RefCell<LogIndex>>;

impl LogIndex {
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn start(&self) -> u64 {
        self.segments.first().map_or(self.end, |s| s.base)
    }

    /// The first offset whose record may have been written at or after `time_us`.
    pub fn offset_near_time(&self, time_us: u64) -> u64 {
        let i = self.time_marks.partition_point(|(t, _)| *t < time_us);
        if i == 0 {
            self.start()
        } else {
            self.time_marks[i - 1].1
        }
    }

    /// Where a read of `offset` starts on disk: at the marked record at or
    /// before it (see [`Located`]).
    fn locate(&self, offset: u64) -> Option<Located> {
        let i = self.segments.partition_point(|s| s.base <= offset).checked_sub(1)?;
        let segment = &self.segments[i];
        let index = offset - segment.base;
        if index >= segment.records {
            // A gap left by a truncated segment: continue at the next one.
            let next = self.segments.get(i + 1)?;
            return Some(Located { file: next.file.clone(), first: next.base, pos: 0, available: next.len });
        }
        let mark = index / POSITION_STRIDE;
        let pos = u64::from(segment.marks[mark as usize]);
        let first = segment.base + mark * POSITION_STRIDE;
        Some(Located { file: segment.file.clone(), first, pos, available: segment.len - pos })
    }
}

/// Where a read starts on disk.
struct Located {
    file: Rc<BufferedFile>,
    /// The offset of the record at `pos`.
    first: u64,
    /// Its file position.
    pos: u64,
    /// The bytes of whole records from `pos` to the end of the segment.
    available: u64,
}

/// The single writer of a shard's log.
pub struct SegmentWriter {
    /// The shard's directory (see [`layout`]).
    pub(super) dir: PathBuf,
    pub(super) options: LogOptions,
    /// What readers see; the writer alone changes it.
    pub(super) index: SharedIndex,
    /// Encoded records waiting for the next commit, framed without their
    /// checksums, which the commit writes for all of them at once.
    pub(super) staged: Vec<u8>,
    /// Where each staged record ends in `staged`, and its time: publishing
    /// needs the time, which it would otherwise decode the record again for.
    pub(super) staged_ends: Vec<(usize, u64)>,
    /// The newest receive time handed out (see [`SegmentWriter::monotonic_time_us`]).
    pub(super) last_time_us: u64,
    /// The base of a segment started since the caller last asked (see [`SegmentWriter::take_rolled`]).
    pub(super) rolled: Option<u64>,
    /// Whether the last roll failed: a run of failures is logged once.
    pub(super) roll_failing: bool,
    /// Every record's position in the active segment, for its index file
    /// once it is closed (memory keeps only every [`POSITION_STRIDE`]th).
    pub(super) active_positions: Vec<u32>,
    /// How the active segment's commits are written: its direct writer when
    /// it was prepared ahead ([`direct`]), else its descriptor's copy for
    /// glommio's blocking thread ([`write::copy_for_writes`]). `None` only
    /// while recovery has yet to start a first segment.
    pub(super) writes: Option<ActiveWrites>,
    /// The next segment, prepared ahead.
    pub(super) ahead: Ahead,
}

impl SegmentWriter {
    pub fn index(&self) -> SharedIndex {
        self.index.clone()
    }

    /// The offset the next staged record will get.
    pub fn next_offset(&self) -> u64 {
        self.index.borrow().end + self.staged_ends.len() as u64
    }

    /// A receive time that never goes backwards within the shard, so time-based
    /// starts can search by offset.
    pub fn monotonic_time_us(&mut self, now_us: u64) -> u64 {
        self.last_time_us = self.last_time_us.max(now_us);
        self.last_time_us
    }

    /// Adds a record of already encoded `message` bytes to the next commit
    /// and returns its offset.
    pub fn stage(&mut self, kind: RecordKind, topic: &str, message: &[u8], time_us: u64) -> u64 {
        let copy = |out: &mut Vec<u8>| {
            out.extend_from_slice(message);
            Some(())
        };
        self.stage_encoded(kind, topic, time_us, copy).expect("copying never refuses").0
    }

    /// Adds a record whose message `encode` appends straight into the commit
    /// buffer, and returns its offset with what `encode` returned. When
    /// `encode` returns `None` nothing is staged (see [`record::frame_with`]).
    pub fn stage_encoded<T>(
        &mut self,
        kind: RecordKind,
        topic: &str,
        time_us: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<T>,
    ) -> Option<(u64, T)> {
        let offset = self.next_offset();
        let encoded = record::frame_with(offset, time_us, kind, topic, &mut self.staged, encode)?;
        self.staged_ends.push((self.staged.len(), time_us));
        Some((offset, encoded))
    }

    /// Writes every staged record and makes it durable per the fsync mode. On
    /// error nothing staged counts as written: the file is cut back and the
    /// offsets are reused.
    pub async fn commit(&mut self) -> Result<(), LogError> {
        if self.staged_ends.is_empty() {
            return Ok(());
        }
        // Three records' checksums at a time (`record::seal`), not each as it was framed.
        record::seal(&mut self.staged, self.staged_ends.iter().map(|&(end, _)| end));
        // The next commit is likely as large as this one: start it at this size
        // rather than growing (and copying) from nothing.
        let next = self.index.borrow_mut().tail.commit_buffer(self.staged.len());
        let pinned = self.staged.capacity();
        let data = Bytes::from(std::mem::replace(&mut self.staged, next));
        let ends = std::mem::take(&mut self.staged_ends);
        let start_len = self.index.borrow().segments.last().expect("a log always has an active segment").len;
        let target = self.writes.as_mut().expect("a log always has an active segment");
        if let Err(e) = write_durably(target, self.options.fsync, &data, &ends, start_len).await {
            // Cut back whatever reached the file so a retry is not stored
            // twice (over a prepared segment, its zeros go too: the segment's
            // later commits append).
            let file = self.index.borrow().segments.last().expect("a log always has an active segment").file.clone();
            let _ = file.truncate(start_len).await;
            if e.is_out_of_space() {
                self.ahead.release().await;
            }
            return Err(e);
        }
        self.publish(data, pinned, &ends, start_len);
        let active_len = self.index.borrow().segments.last().map_or(0, |s| s.len);
        self.ahead.note_active_len(active_len);
        // A buffered segment gives way to a prepared one as soon as it is ready.
        if active_len >= self.options.segment_bytes || (!self.is_direct() && self.ahead.is_ready()) {
            self.roll().await;
        }
        Ok(())
    }

    /// Closes the active segment and starts the next. The records committed
    /// are durable whatever happens here, so a failed roll must not fail the
    /// commit: the active segment grows instead, and the next commit tries again.
    async fn roll(&mut self) {
        let closing = self.zeros_after_records();
        let next = self.index.borrow().end;
        match self.start_segment(next).await {
            Ok(()) => {
                // In the background: the next commit need not wait for the
                // file system to free them (recovery would cut them too).
                if let Some((file, len)) = closing {
                    glommio::spawn_local(async move { cut_to(&file, len).await }).detach();
                }
                self.write_index_of_closed();
                self.rolled = Some(next);
                if std::mem::replace(&mut self.roll_failing, false) {
                    tracing::info!(base = next, "started a new segment again");
                }
            }
            // Every commit tries again: out of descriptors, each would log.
            Err(e) if !std::mem::replace(&mut self.roll_failing, true) => {
                tracing::warn!(error = %e, "cannot start a new segment; the active one keeps growing until one can be")
            }
            Err(_) => {}
        }
    }

    /// Makes committed records visible to readers; `pinned` is the memory
    /// their buffer `data` holds.
    fn publish(&mut self, data: Bytes, pinned: usize, ends: &[(usize, u64)], start_len: u64) {
        let mut log = self.index.borrow_mut();
        let mut from = 0;
        for &(end, time_us) in ends {
            let offset = log.end;
            if offset.is_multiple_of(TIME_MARK_STRIDE) {
                log.time_marks.push((time_us, offset));
            }
            let position = (start_len + from as u64) as u32;
            self.active_positions.push(position);
            let segment = log.segments.last_mut().expect("active segment");
            segment.last_time_us = segment.last_time_us.max(time_us);
            if segment.records.is_multiple_of(POSITION_STRIDE) {
                segment.marks.push(position);
            }
            segment.records += 1;
            log.tail.push_frame(offset, from..end);
            log.end += 1;
            from = end;
        }
        if let Some(segment) = log.segments.last_mut() {
            segment.len = start_len + data.len() as u64;
        }
        let data_len = data.len();
        let end = log.end;
        log.tail.push_commit(TailCommit { end, data, pinned });
        per_thread!(Counter, counter!("jimbus_log_appended_records_total")).with(|c| c.increment(ends.len() as u64));
        per_thread!(Counter, counter!("jimbus_log_appended_bytes_total")).with(|c| c.increment(data_len as u64));
        log.committed.notify(usize::MAX);
    }

    pub(super) async fn start_segment(&mut self, base: u64) -> Result<(), LogError> {
        let path = layout::segment(&self.dir, base);
        let prepared = self.ahead.take(&path).await?;
        let file = open_segment(&path, self.options.fsync).await?;
        let direct = if prepared { DirectSegment::open(&path, self.options.fsync).await? } else { None };
        let writes = match direct {
            Some(direct) => ActiveWrites::Direct(direct),
            None => ActiveWrites::Buffered(copy_for_writes(&file)?),
        };
        // The new file's directory entry must be durable before anything in it is acknowledged.
        layout::sync_dir(&self.dir).await?;
        self.writes = Some(writes);
        let segment = Segment { base, file: Rc::new(file), marks: Vec::new(), records: 0, len: 0, last_time_us: 0 };
        self.index.borrow_mut().segments.push(segment);
        Ok(())
    }

    /// The base of the segment started since the last call, if one was: every
    /// record below it is durable, so the caller may checkpoint its state there.
    pub fn take_rolled(&mut self) -> Option<u64> {
        self.rolled.take()
    }

    /// Writes `<base>.index` beside the segment just closed (the one before the
    /// active one). It can always be rebuilt by a scan, so a failure is only logged.
    fn write_index_of_closed(&mut self) {
        let positions = std::mem::take(&mut self.active_positions);
        let log = self.index.borrow();
        let Some(closed) = log.segments.len().checked_sub(2).map(|i| &log.segments[i]) else { return };
        let last = closed.base + closed.records;
        let index = SegmentIndex {
            valid_len: closed.len,
            last_time_us: closed.last_time_us,
            positions,
            time_marks: log.time_marks.iter().copied().filter(|(_, o)| (closed.base..last).contains(o)).collect(),
        };
        let (path, bytes, segment) = (layout::segment_index(&self.dir, closed.base), index.encode(), closed.base);
        // In the background: the pump does not wait for a file it can do without.
        glommio::spawn_local(async move {
            if let Err(e) = layout::replace_file(&path, &bytes).await {
                tracing::warn!(segment, error = %e, "cannot write the segment index; the next start scans it");
            }
        })
        .detach();
    }

    /// Flushes and syncs the active segment (on shutdown), without the
    /// zeros after its records when it was prepared ahead.
    pub async fn sync(&self) -> Result<(), LogError> {
        if let Some((file, len)) = self.zeros_after_records() {
            cut_to(&file, len).await;
        }
        let file = self.index.borrow().segments.last().map(|s| s.file.clone());
        if let Some(file) = file {
            file.fdatasync().await?;
        }
        Ok(())
    }

    /// Whether the active segment was prepared ahead and is written with direct I/O.
    pub(super) fn is_direct(&self) -> bool {
        matches!(self.writes, Some(ActiveWrites::Direct(_)))
    }

    /// The active segment's file and the length of its records, when it was
    /// prepared ahead: the zeros after them were never records.
    fn zeros_after_records(&self) -> Option<(Rc<BufferedFile>, u64)> {
        if !self.is_direct() {
            return None;
        }
        self.index.borrow().segments.last().map(|s| (s.file.clone(), s.len))
    }
}

/// Cuts a prepared segment back to its records' `len` bytes. Left in place on
/// an error, where recovery reads the zeros as the segment's clean end all the same.
async fn cut_to(file: &BufferedFile, len: u64) {
    if let Err(e) = file.truncate(len).await {
        tracing::warn!(error = %e, "cannot cut a prepared segment's zeros; the next start does");
    }
}

/// What the log's tests and recovery's tests share.
#[cfg(test)]
pub(in crate::embedded) mod testing {
    use std::path::PathBuf;

    /// Runs `test` on a glommio executor of its own, with a temporary directory.
    pub fn with_dir<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce(PathBuf) -> F + Send + 'static) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default().spawn(move || test(path)).expect("an executor").join().expect("runs");
    }

    /// The flags this process's descriptor `fd` was opened with, from the
    /// kernel's own record of them (`/proc/self/fdinfo`, in octal); `None`
    /// once it is closed.
    pub fn fd_flags(fd: impl std::fmt::Display) -> Option<i32> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let octal = info.lines().find_map(|line| line.strip_prefix("flags:"))?;
        i32::from_str_radix(octal.trim(), 8).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_whichever_way_its_error_came() {
        let named = || glommio::GlommioError::<()>::EnhancedIoError {
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            op: "write",
            path: Some("/data/shard-0/1.log".into()),
            fd: Some(3),
        };
        let from_glommio = LogError::from(named());
        assert!(from_glommio.is_out_of_space());
        assert_eq!(from_glommio.raw_os_error(), Some(libc::ENOSPC), "the error number is kept");
        assert!(from_glommio.to_string().contains("1.log"), "and so is the file: {from_glommio}");
        // Through glommio's own conversion to `io::Error`, only the kind is left.
        assert!(LogError::Io(std::io::Error::from(named())).is_out_of_space());
        assert!(LogError::Io(std::io::Error::from_raw_os_error(libc::EDQUOT)).is_out_of_space());
        assert!(!LogError::Io(std::io::Error::from_raw_os_error(libc::EIO)).is_out_of_space());
    }
}

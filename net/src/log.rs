//! One shard's durable log: append-only segment files with group commit.
//!
//! The shard's pump is the only writer ([`SegmentWriter`]): it stages records,
//! then [`SegmentWriter::commit`] writes them with one io_uring write and one
//! `fdatasync` (in `batch` mode), so every request waiting on that commit is
//! acknowledged together. Readers (subscriptions on the same shard) go through
//! [`LogIndex`], which maps offsets to segment positions and keeps the newest
//! records in memory; they never write. Recovery scans every segment at start,
//! truncates a torn or corrupt tail at the last valid CRC, and reports it.
//! This module must never acknowledge anything itself: it tells the pump what is
//! durable and the pump answers clients.

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};
use jimbus_core::checkpoint::SegmentIndex;
use jimbus_core::record::{self, FrameError, Record, RecordKind};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Never fdatasync: acknowledged events can be lost on power failure (benchmarks only).
    Never,
    /// One fdatasync per group commit, before any of its events is acknowledged.
    Batch,
    /// One write and one fdatasync per record.
    Always,
}

/// Tunables of a shard's log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub fsync: FsyncMode,
    /// A segment is closed and a new one started once it grows past this size.
    pub segment_bytes: u64,
    /// Newest records kept in memory for subscribers, in bytes.
    pub tail_cache_bytes: usize,
    pub retention: Retention,
}

/// How long closed segments are kept. Limits apply to the shard's whole log
/// (its segments mix the topics of the sessions it owns) and are enforced by
/// deleting whole segments, oldest first; the active segment is never deleted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Delete a segment once its newest record is older than this.
    pub max_age: Option<std::time::Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

/// A segment retention deleted.
#[derive(Debug, Clone)]
pub struct RemovedSegment {
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("glommio I/O failed: {0}")]
    Glommio(String),
}

impl<T: std::fmt::Debug> From<glommio::GlommioError<T>> for LogError {
    fn from(e: glommio::GlommioError<T>) -> Self {
        match e {
            glommio::GlommioError::IoError(io) => LogError::Io(io),
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

struct Segment {
    base: u64,
    file: Rc<BufferedFile>,
    /// File position of each record, in offset order from `base`.
    positions: Vec<u32>,
    len: u64,
    /// Receive time of its newest record, for age retention.
    last_time_us: u64,
}

/// Offsets, positions and the in-memory tail, shared by the writer and readers
/// of one shard (same thread, short borrows, never held across an await).
pub struct LogIndex {
    segments: Vec<Segment>,
    /// Offset of the next record to be committed.
    end: u64,
    tail_first: u64,
    tail: VecDeque<Bytes>,
    tail_bytes: usize,
    tail_cap: usize,
    /// Every 64th record's (time, offset), for time-based starts.
    time_marks: Vec<(u64, u64)>,
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

    fn push_tail(&mut self, offset: u64, frame: Bytes) {
        if self.tail.is_empty() {
            self.tail_first = offset;
        }
        self.tail_bytes += frame.len();
        self.tail.push_back(frame);
        while self.tail_bytes > self.tail_cap && self.tail.len() > 1 {
            if let Some(old) = self.tail.pop_front() {
                self.tail_bytes -= old.len();
                self.tail_first += 1;
            }
        }
    }

    /// Where `offset` lives on disk: the file, the position, and how many bytes
    /// may be read from there to the end of the segment.
    fn locate(&self, offset: u64) -> Option<(Rc<BufferedFile>, u64, u64, u64)> {
        let i = self.segments.partition_point(|s| s.base <= offset).checked_sub(1)?;
        let segment = &self.segments[i];
        let index = (offset - segment.base) as usize;
        match segment.positions.get(index) {
            Some(&pos) => Some((segment.file.clone(), offset, pos as u64, segment.len - pos as u64)),
            // A gap left by a truncated segment: continue at the next one.
            None => self.segments.get(i + 1).map(|next| (next.file.clone(), next.base, 0, next.len)),
        }
    }
}

/// Reads up to `max` framed records starting at `from`. Returns the frames and
/// the offset after the last one.
pub async fn read_frames(index: &SharedIndex, from: u64, max: usize) -> Result<(Vec<Bytes>, u64), LogError> {
    let located = {
        let log = index.borrow();
        let from = from.max(log.start());
        if from >= log.end {
            return Ok((Vec::new(), from));
        }
        if from >= log.tail_first && !log.tail.is_empty() {
            let skip = (from - log.tail_first) as usize;
            let frames: Vec<Bytes> = log.tail.iter().skip(skip).take(max).cloned().collect();
            let next = from + frames.len() as u64;
            return Ok((frames, next));
        }
        log.locate(from)
    };
    let Some((file, first, pos, available)) = located else { return Ok((Vec::new(), from)) };
    let chunk = available.min(256 * 1024).max(record::HEADER_LEN as u64);
    let data = file.read_at(pos, chunk as usize).await?;
    let mut bytes = Bytes::copy_from_slice(&data);
    if let Err(FrameError::Torn { needed, .. }) = record::decode(&bytes) {
        // One record larger than the chunk: read exactly that record.
        bytes = Bytes::copy_from_slice(&file.read_at(pos, needed).await?);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while frames.len() < max {
        let Ok(rec) = record::decode(&bytes[at..]) else { break };
        let len = rec.framed_len();
        frames.push(bytes.slice(at..at + len));
        at += len;
    }
    let next = first + frames.len() as u64;
    Ok((frames, next))
}

/// The single writer of a shard's log.
pub struct SegmentWriter {
    dir: PathBuf,
    options: LogOptions,
    index: SharedIndex,
    /// Encoded records waiting for the next commit.
    staged: Vec<u8>,
    staged_ends: Vec<usize>,
    last_time_us: u64,
    /// The base of a segment started since the caller last asked (see [`SegmentWriter::take_rolled`]).
    rolled: Option<u64>,
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
        std::fs::create_dir_all(dir)?;
        remove_stray_temporaries(dir)?;
        let mut report = RecoveryReport::default();
        let mut segments = Vec::new();
        let mut time_marks = Vec::new();
        let mut last_time_us = 0;
        let mut end = 0;
        let paths = segment_paths(dir)?;
        for (i, (base, path)) in paths.iter().enumerate() {
            let (base, closed) = (*base, i + 1 < paths.len());
            let index = if closed { usable_index(dir, base, path, replay_from) } else { None };
            let (positions, len, segment_time_us) = match index {
                Some(index) => {
                    report.indexed += 1;
                    time_marks.extend(index.time_marks);
                    (index.positions, index.valid_len, index.last_time_us)
                }
                None => scan_segment(path, replay_from, &mut time_marks, &mut report, &mut each)?,
            };
            report.records += positions.len() as u64;
            last_time_us = last_time_us.max(segment_time_us);
            end = end.max(base + positions.len() as u64);
            let file = open_rw(path).await?;
            segments.push(Segment { base, file: Rc::new(file), positions, len, last_time_us: segment_time_us });
        }
        report.segments = segments.len();
        let index = Rc::new(RefCell::new(LogIndex {
            segments,
            end,
            tail_first: end,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_cap: options.tail_cache_bytes,
            time_marks,
            committed: event_listener::Event::new(),
        }));
        let mut writer = Self {
            dir: dir.to_path_buf(),
            options,
            index,
            staged: Vec::new(),
            staged_ends: Vec::new(),
            last_time_us,
            rolled: None,
        };
        if writer.index.borrow().segments.is_empty() {
            writer.start_segment(end).await?;
        }
        metrics::counter!("jimbus_log_recovered_records_total").increment(report.records);
        Ok((writer, report))
    }

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

    /// Adds a record to the next commit and returns its offset.
    pub fn stage(&mut self, kind: RecordKind, topic: &str, message: &[u8], time_us: u64) -> u64 {
        let offset = self.next_offset();
        record::encode(&Record { offset, time_us, kind, topic, message }, &mut self.staged);
        self.staged_ends.push(self.staged.len());
        offset
    }

    pub fn staged_records(&self) -> usize {
        self.staged_ends.len()
    }

    /// Writes every staged record and makes it durable per the fsync mode. On
    /// error nothing staged counts as written: the file is cut back and the
    /// offsets are reused.
    pub async fn commit(&mut self) -> Result<(), LogError> {
        if self.staged_ends.is_empty() {
            return Ok(());
        }
        // The next commit is likely as large as this one: start it at this size
        // rather than growing (and copying) from nothing.
        let next = Vec::with_capacity(self.staged.len());
        let data = Bytes::from(std::mem::replace(&mut self.staged, next));
        let ends = std::mem::take(&mut self.staged_ends);
        let (file, start_len) = {
            let log = self.index.borrow();
            let active = log.segments.last().expect("a log always has an active segment");
            (active.file.clone(), active.len)
        };
        if let Err(e) = self.write_durably(&file, &data, &ends, start_len).await {
            // Cut back whatever reached the file so a retry is not stored twice.
            let _ = file.truncate(start_len).await;
            return Err(e);
        }
        self.publish(data, &ends, start_len);
        let active_len = self.index.borrow().segments.last().map_or(0, |s| s.len);
        if active_len >= self.options.segment_bytes {
            // The records above are durable whatever happens here, so a failed
            // roll must not fail the commit: the active segment grows instead,
            // and the next commit tries again.
            let next = self.index.borrow().end;
            match self.start_segment(next).await {
                Ok(()) => {
                    self.write_index_of_closed();
                    self.rolled = Some(next);
                }
                Err(e) => tracing::warn!(error = %e, "cannot start a new segment; the active one keeps growing"),
            }
        }
        Ok(())
    }

    async fn write_durably(&self, file: &BufferedFile, data: &[u8], ends: &[usize], at: u64) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        match self.options.fsync {
            FsyncMode::Always => {
                let mut from = 0;
                for &end in ends {
                    write_all(file, &data[from..end], at + from as u64).await?;
                    crate::observe::fdatasync(file).await?;
                    from = end;
                }
            }
            FsyncMode::Batch => {
                write_all(file, data, at).await?;
                crate::observe::fdatasync(file).await?;
            }
            FsyncMode::Never => write_all(file, data, at).await?,
        }
        crate::observe::committed(started, ends.len(), data.len());
        Ok(())
    }

    /// Makes committed records visible to readers.
    fn publish(&mut self, data: Bytes, ends: &[usize], start_len: u64) {
        let mut log = self.index.borrow_mut();
        let mut from = 0;
        for &end in ends {
            let offset = log.end;
            let frame = data.slice(from..end);
            let time_us = record::decode(&frame).map_or(0, |rec| rec.time_us);
            if offset.is_multiple_of(64) {
                log.time_marks.push((time_us, offset));
            }
            let segment = log.segments.last_mut().expect("active segment");
            segment.last_time_us = segment.last_time_us.max(time_us);
            segment.positions.push((start_len + from as u64) as u32);
            log.push_tail(offset, frame);
            log.end += 1;
            from = end;
        }
        if let Some(segment) = log.segments.last_mut() {
            segment.len = start_len + data.len() as u64;
        }
        metrics::counter!("jimbus_log_appended_records_total").increment(ends.len() as u64);
        metrics::counter!("jimbus_log_appended_bytes_total").increment(data.len() as u64);
        log.committed.notify(usize::MAX);
    }

    async fn start_segment(&mut self, base: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(base));
        let file = open_rw(&path).await?;
        // The new file's directory entry must be durable before anything in it is acknowledged.
        sync_dir(&self.dir).await?;
        let segment = Segment { base, file: Rc::new(file), positions: Vec::new(), len: 0, last_time_us: 0 };
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
    fn write_index_of_closed(&self) {
        let log = self.index.borrow();
        let Some(closed) = log.segments.len().checked_sub(2).map(|i| &log.segments[i]) else { return };
        let last = closed.base + closed.positions.len() as u64;
        let index = SegmentIndex {
            valid_len: closed.len,
            last_time_us: closed.last_time_us,
            positions: closed.positions.clone(),
            time_marks: log.time_marks.iter().copied().filter(|(_, o)| (closed.base..last).contains(o)).collect(),
        };
        let (path, bytes, segment) = (self.dir.join(index_name(closed.base)), index.encode(), closed.base);
        // In the background: the pump does not wait for a file it can do without.
        glommio::spawn_local(async move {
            if let Err(e) = replace_file(&path, &bytes).await {
                tracing::warn!(segment, error = %e, "cannot write the segment index; the next start scans it");
            }
        })
        .detach();
    }

    /// Deletes closed segments that retention no longer keeps, oldest first,
    /// but never one holding an offset at or above `keep_from` (the lowest
    /// offset a durable consumer has not acknowledged). Readers that still hold
    /// a deleted segment's file keep reading it until they let go.
    pub fn enforce_retention(&mut self, now_us: u64, keep_from: u64) -> Result<Vec<RemovedSegment>, LogError> {
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
            let path = self.dir.join(segment_name(oldest.base));
            std::fs::remove_file(&path)?;
            let _ = std::fs::remove_file(self.dir.join(index_name(oldest.base)));
            let gone = log.segments.remove(0);
            total -= gone.len;
            removed.push(RemovedSegment { path, records: gone.positions.len() as u64, bytes: gone.len });
        }
        let start = log.start();
        log.time_marks.retain(|&(_, offset)| offset >= start);
        for segment in &removed {
            tracing::info!(segment = %segment.path.display(), records = segment.records, bytes = segment.bytes, "retention deleted segment");
            metrics::counter!("jimbus_log_retention_deleted_bytes_total").increment(segment.bytes);
        }
        Ok(removed)
    }

    /// Flushes and syncs the active segment (on shutdown).
    pub async fn sync(&self) -> Result<(), LogError> {
        let file = self.index.borrow().segments.last().map(|s| s.file.clone());
        if let Some(file) = file {
            file.fdatasync().await?;
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` through io_uring (a fresh temporary file,
/// fdatasync, rename, directory sync), so that a crash leaves the old file or
/// the new one, whole. Concurrent replacements of one path each use their own
/// temporary file; the last rename wins.
pub async fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{TMP_PREFIX}{unique}"));
    let file = BufferedFile::create(&tmp).await?;
    write_all(&file, bytes, 0).await?;
    file.fdatasync().await?;
    file.close().await?;
    glommio::io::rename(&tmp, path).await?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).await
}

/// The extension prefix of [`replace_file`]'s temporary files; one left by a
/// crash is deleted when the log opens.
const TMP_PREFIX: &str = "tmp";

/// Makes `dir`'s entries durable, through io_uring: a blocking fsync of a
/// directory can wait for a journal commit and would stall the whole shard.
async fn sync_dir(dir: &Path) -> Result<(), LogError> {
    let dir = glommio::io::Directory::open(dir).await?;
    dir.sync().await?;
    dir.close().await?;
    Ok(())
}

/// Deletes temporary files a crash left in `dir`.
fn remove_stray_temporaries(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.starts_with(TMP_PREFIX)) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

async fn open_rw(path: &Path) -> Result<BufferedFile, LogError> {
    Ok(OpenOptions::new().read(true).write(true).create(true).buffered_open(path).await?)
}

async fn write_all(file: &BufferedFile, data: &[u8], mut at: u64) -> Result<(), LogError> {
    let mut rest = data;
    while !rest.is_empty() {
        let written = file.write_at(rest.to_vec(), at).await?;
        if written == 0 {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "segment write wrote nothing",
            )));
        }
        rest = &rest[written..];
        at += written as u64;
    }
    Ok(())
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

fn index_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// The index of a closed segment when it can replace a scan: it decodes, it
/// matches the file's size, and none of its records needs replaying.
fn usable_index(dir: &Path, base: u64, segment: &Path, replay_from: u64) -> Option<SegmentIndex> {
    let index = SegmentIndex::decode(&std::fs::read(dir.join(index_name(base))).ok()?).ok()?;
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
        if positions.len().is_multiple_of(64) {
            time_marks.push((rec.time_us, rec.offset));
        }
        positions.push(pos as u32);
        if rec.offset >= replay_from {
            each(rec);
        }
    });
    if let Some(reason) = &scan.stopped {
        let cut = data.len() - scan.valid_len;
        tracing::warn!(segment = %path.display(), valid_bytes = scan.valid_len, cut_bytes = cut, %reason, "truncating log tail");
        metrics::counter!("jimbus_log_truncated_bytes_total").increment(cut as u64);
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(scan.valid_len as u64)?;
        report.truncated.push((path.to_path_buf(), cut as u64, reason.to_string()));
    }
    Ok((positions, scan.valid_len as u64, segment_time_us))
}

/// Segment files in `dir`, by base offset.
fn segment_paths(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(base) = base {
            out.push((base, path));
        }
    }
    out.sort();
    Ok(out)
}

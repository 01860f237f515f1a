//! The next segment, prepared ahead: a file of zeros, written and synced in
//! the background, that becomes the next segment by a rename when the active
//! one rolls.
//!
//! Why: a commit written with direct I/O over blocks that are already
//! allocated, written and durable changes neither the file's length nor its
//! extents, so ext4 does it without blocking and io_uring without a worker
//! thread; a buffered commit is handed to a worker that copies it into the
//! page cache (docs/perf.md, twenty-fifth and twenty-seventh passes). The
//! zeros are synced before the file is handed over: until its extents and
//! length are durable, an overwrite's `O_DSYNC` would make only the data
//! durable, and a crash could lose acknowledged records.
//!
//! Preparation starts once the active segment holds [`PREPARE_AFTER`] bytes (or
//! half a segment, if less), so that a short-lived server never writes one.
//! The file is a temporary by [`layout`]'s naming, deleted at every start:
//! it only becomes a segment by the rename. A failure (a full disk, a file
//! system without `O_DIRECT`) deletes it and leaves the log on buffered
//! segments, as before.
//!
//! It owns that one file and its state. It must never touch a segment.

use super::super::layout;
use super::direct::BLOCK;
use super::LogError;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Bytes of the active segment after which the next one is prepared, unless
/// half a segment is less.
const PREPARE_AFTER: u64 = 4 << 20;
/// Room past a segment's size for the commit that crosses it, so that it too
/// is written over zeros; a commit that goes further appends (still direct).
const ROOM_PAST_END: u64 = 4 << 20;
/// A prepared file's length is a multiple of this, which tells its zeros from
/// a torn tail at recovery ([`is_clean_end`]).
const PREPARED_UNIT: u64 = 1 << 20;
/// The zeros are written this many bytes at a time, with [`ZEROS_PAUSE`]
/// between writes while they are ahead of the active segment ([`Pace`]): at
/// most 256 MiB/s then. Written as fast as the disk takes them, they queued
/// the shards' commits behind them and the half-rate p99 tripled; paced
/// always, they fell behind a shard taking 100 MB/s, whose segments were then
/// written through the page cache (docs/perf.md, twenty-seventh pass).
const ZEROS_PER_WRITE: usize = 256 << 10;
const ZEROS_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// A segment is prepared only while its file system has this many times its
/// zeros free, so that on a nearly full disk they never take the room that
/// commits need.
const FREE_SPACE_FACTOR: u64 = 4;

/// Where the next segment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// None prepared, none under way.
    Idle,
    /// Its zeros are being written.
    Preparing,
    /// Written, synced and closed: the next roll takes it.
    Ready,
    /// The last preparation failed: none until the next roll, so a full disk
    /// is not filled again at every commit.
    Failed,
    /// Never prepared: the log never syncs, segments are too small to repay
    /// their zeros, or the file system refuses direct I/O.
    Off,
}

/// The next segment prepared ahead of one shard's active one.
pub(in crate::embedded) struct Ahead {
    /// The file being prepared (a temporary to [`layout`]).
    path: PathBuf,
    /// Its length: a segment and [`ROOM_PAST_END`], on a block boundary.
    len: u64,
    /// Bytes of the active segment after which preparation starts.
    start_after: u64,
    /// Bytes of the active segment by which the zeros should be written.
    due_by: u64,
    /// The active segment's length after the last commit, for [`Pace`].
    active_len: Rc<Cell<u64>>,
    /// Set when a roll found the preparation under way (the segment it was
    /// for is already closed): its zeros go without pauses from then on.
    overdue: Rc<Cell<bool>>,
    /// Shared with the task that writes the zeros.
    state: Rc<Cell<State>>,
    /// Woken when a preparation ends, for the tests to wait on.
    #[cfg(test)]
    settled: Rc<event_listener::Event>,
}

impl Ahead {
    /// Prepares segments of `segment_bytes` in `dir`, or never when `enabled` is false.
    pub(in crate::embedded) fn new(dir: &Path, segment_bytes: u64, enabled: bool) -> Self {
        Self {
            path: layout::prepared_segment(dir),
            len: (segment_bytes + ROOM_PAST_END).next_multiple_of(PREPARED_UNIT),
            start_after: PREPARE_AFTER.min(segment_bytes / 2),
            due_by: segment_bytes / 4 * 3,
            active_len: Rc::default(),
            overdue: Rc::default(),
            state: Rc::new(Cell::new(if enabled { State::Idle } else { State::Off })),
            #[cfg(test)]
            settled: Rc::default(),
        }
    }

    /// Whether a prepared segment waits for the next roll.
    pub(in crate::embedded) fn is_ready(&self) -> bool {
        self.state.get() == State::Ready
    }

    /// Notes that the active segment holds `active_len` bytes, and starts
    /// preparing the next segment in the background once it holds enough,
    /// unless one is ready or under way, or the disk has too little room for
    /// it (then not before the next roll).
    pub(in crate::embedded) fn note_active_len(&self, active_len: u64) {
        self.active_len.set(active_len);
        if self.state.get() != State::Idle || active_len < self.start_after {
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let free = crate::disk::free_bytes(dir).unwrap_or(0);
        if free < FREE_SPACE_FACTOR * self.len {
            tracing::debug!(free_bytes = free, "too little room to prepare the next segment");
            self.state.set(State::Failed);
            return;
        }
        self.state.set(State::Preparing);
        let (path, len, state) = (self.path.clone(), self.len, self.state.clone());
        self.overdue.set(false);
        let pace = Pace {
            active_len: self.active_len.clone(),
            overdue: self.overdue.clone(),
            from: active_len,
            due_by: self.due_by,
        };
        #[cfg(test)]
        let settled = self.settled.clone();
        glommio::spawn_local(async move {
            let started = std::time::Instant::now();
            match write_zeros(&path, len, pace).await {
                Ok(()) => {
                    tracing::debug!(bytes = len, took_ms = started.elapsed().as_millis() as u64, "next segment prepared");
                    metrics::counter!("jimbus_log_prepared_segments_total").increment(1);
                    state.set(State::Ready);
                }
                Err(e) => {
                    let _ = layout::remove(&path).await;
                    let refused = e.raw_os_error() == Some(libc::EINVAL);
                    if refused {
                        tracing::info!(error = %e, "the file system refuses direct I/O: segments are written through the page cache");
                    } else {
                        tracing::warn!(error = %e, "cannot prepare the next segment; it is written through the page cache");
                    }
                    state.set(if refused { State::Off } else { State::Failed });
                }
            }
            #[cfg(test)]
            settled.notify(usize::MAX);
        })
        .detach();
    }

    /// Moves the prepared segment to `segment` when one is ready, and says
    /// whether it did; the caller syncs the directory. Either way a roll
    /// lets the next preparation start (after a failed one, too).
    pub(in crate::embedded) async fn take(&self, segment: &Path) -> Result<bool, LogError> {
        match self.state.get() {
            State::Ready => {
                self.state.set(State::Idle);
                glommio::io::rename(&self.path, segment).await?;
                Ok(true)
            }
            State::Failed => {
                self.state.set(State::Idle);
                Ok(false)
            }
            State::Preparing => {
                self.overdue.set(true);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Deletes a prepared segment to give its space back (the disk is full),
    /// and prepares none until the next roll.
    pub(in crate::embedded) async fn release(&self) {
        if self.state.get() == State::Ready {
            self.state.set(State::Failed);
            if let Err(e) = layout::remove(&self.path).await {
                tracing::warn!(error = %e, "cannot delete the prepared segment");
            }
        }
    }
}

/// Whether the bytes after a segment's last whole record are its clean end,
/// not a torn or corrupt tail: zeros to the end of a prepared segment (its
/// length a multiple of the zeros' writes), or a direct write's padding
/// (fewer than a block, to a block boundary) where a commit went past it.
pub(in crate::embedded) fn is_clean_end(valid_len: u64, rest: &[u8]) -> bool {
    let file_len = valid_len + rest.len() as u64;
    let padding = (rest.len() as u64) < BLOCK && file_len.is_multiple_of(BLOCK);
    let prepared = file_len.is_multiple_of(PREPARED_UNIT);
    (padding || prepared) && rest.iter().all(|&b| b == 0)
}

/// How fast the zeros go: a pause after each write while the share of them
/// written is ahead of the active segment's growth from `from` to `due_by`
/// bytes, none once they fall behind it or are overdue.
struct Pace {
    active_len: Rc<Cell<u64>>,
    overdue: Rc<Cell<bool>>,
    from: u64,
    due_by: u64,
}

impl Pace {
    /// Whether `done` bytes of `len` are ahead of the active segment.
    fn is_ahead(&self, done: u64, len: u64) -> bool {
        let active = self.active_len.get();
        if active >= self.due_by || self.overdue.get() {
            return false;
        }
        // done / len > grown / span, without division (`from` < `due_by` here).
        let (grown, span) = (active.saturating_sub(self.from), self.due_by - self.from.min(active));
        u128::from(done) * u128::from(span) > u128::from(grown) * u128::from(len)
    }
}

/// Writes `len` bytes of zeros to a new file at `path` with direct I/O, at
/// `pace`, syncs them and closes it.
async fn write_zeros(path: &Path, len: u64, pace: Pace) -> Result<(), LogError> {
    // Write-only, as every direct descriptor of the log: see `direct::DirectSegment::open`.
    let file: DmaFile = OpenOptions::new().write(true).create(true).truncate(true).dma_open(path).await?;
    // One buffer of zeros, filled once and written at every offset.
    let mut zeros = file.alloc_dma_buffer(ZEROS_PER_WRITE);
    zeros.as_bytes_mut().fill(0);
    let zeros = Rc::new(zeros);
    let mut at = 0;
    while at < len {
        let written = file.write_rc_at(zeros.clone(), at).await?;
        if written == 0 || !(written as u64).is_multiple_of(BLOCK) {
            let _ = file.close().await;
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("writing zeros ahead took {written} bytes of {ZEROS_PER_WRITE}"),
            )));
        }
        at += written as u64;
        if pace.is_ahead(at, len) {
            glommio::timer::sleep(ZEROS_PAUSE).await;
        }
    }
    // The length and extents must be durable before a commit trusts O_DSYNC over them.
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fd_flags, with_dir};
    use super::super::{read_frames, FsyncMode, LogOptions, Retention, SegmentWriter};
    use super::*;
    use jimbus_core::record::{self, RecordKind};

    /// Segments of 2 MiB, prepared ahead (6 MiB of zeros each) once the
    /// active one holds 1 MiB.
    fn options() -> LogOptions {
        let retention = Retention::default();
        LogOptions {
            fsync: FsyncMode::Batch,
            segment_bytes: 2 << 20,
            tail_cache_bytes: 0,
            retention,
            prepare_ahead: true,
        }
    }

    /// The message of record `offset`: 16 KiB, different for every offset.
    fn message(offset: u64) -> Vec<u8> {
        (0..16 << 10).map(|i| (offset as usize * 31 + i) as u8).collect()
    }

    /// Commits one record per commit until `done` says so (or fails after
    /// 2,000, 32 MiB), yielding between commits so that the zeros' writer runs.
    async fn commit_until(writer: &mut SegmentWriter, next: &mut u64, done: impl Fn(&SegmentWriter) -> bool) {
        for _ in 0..2_000 {
            if done(writer) {
                return;
            }
            writer.stage(RecordKind::Event, "t", &message(*next), *next);
            *next += 1;
            writer.commit().await.expect("commits");
            futures_lite::future::yield_now().await;
        }
        panic!("not done after 2,000 commits");
    }

    /// Commits until the next segment is being prepared, then waits for it
    /// without committing (so the active segment cannot fill meanwhile).
    async fn commit_until_prepared(writer: &mut SegmentWriter, next: &mut u64) {
        commit_until(writer, next, |w| w.ahead.state.get() == State::Preparing).await;
        let settled = writer.ahead.settled.listen();
        if writer.ahead.state.get() == State::Preparing {
            settled.await;
        }
        assert!(writer.ahead.is_ready(), "prepared: {:?}", writer.ahead.state.get());
    }

    /// A new log in `dir` whose second segment, prepared ahead, is active,
    /// and the offset of the next record.
    async fn open_until_direct(dir: &Path) -> (SegmentWriter, u64) {
        let (mut writer, _) = SegmentWriter::open(dir, options(), 0, |_| {}).await.expect("opens");
        let mut next = 0;
        commit_until_prepared(&mut writer, &mut next).await;
        // The buffered first segment gives way at the next commit.
        commit_until(&mut writer, &mut next, |w| w.is_direct()).await;
        (writer, next)
    }

    /// Every record from offset 0 to `end` reads back, each its own message.
    async fn check_records(writer: &SegmentWriter, end: u64) {
        let index = writer.index();
        let mut from = 0;
        while from < end {
            let (frames, next) = read_frames(&index, from, 64, usize::MAX).await.expect("reads");
            for (i, frame) in frames.iter().enumerate() {
                let rec = record::decode(frame).expect("a valid record");
                assert_eq!((rec.offset, rec.message), (from + i as u64, &message(from + i as u64)[..]));
            }
            from = next;
        }
        assert_eq!(index.borrow().end(), end);
    }

    /// The flags of this process's descriptors open on `path` with `O_DIRECT`.
    fn direct_flags(path: &Path) -> Vec<i32> {
        let mut found = Vec::new();
        for fd in std::fs::read_dir("/proc/self/fd").expect("lists descriptors").flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|target| target == path) {
                let flags = fd_flags(fd.file_name().to_string_lossy());
                found.extend(flags.filter(|flags| flags & libc::O_DIRECT != 0));
            }
        }
        found
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("the file exists").len()
    }

    #[test]
    fn the_zeros_pause_only_while_ahead_of_the_active_segment() {
        let pace =
            Pace { active_len: Rc::new(Cell::new(4 << 20)), overdue: Rc::default(), from: 4 << 20, due_by: 48 << 20 };
        let mib = 1 << 20;
        assert!(pace.is_ahead(mib, 68 * mib), "a first write, the segment not grown");
        pace.active_len.set(26 << 20); // half way to due
        assert!(pace.is_ahead(40 * mib, 68 * mib));
        assert!(!pace.is_ahead(30 * mib, 68 * mib), "fewer than half the zeros");
        pace.active_len.set(48 << 20);
        assert!(!pace.is_ahead(67 * mib, 68 * mib), "due: no more pauses");
        let late =
            Pace { active_len: Rc::new(Cell::new(60 << 20)), overdue: Rc::default(), from: 60 << 20, due_by: 48 << 20 };
        assert!(!late.is_ahead(mib, 68 * mib), "started past due (a segment reopened at start)");
        pace.active_len.set(4 << 20);
        assert!(pace.is_ahead(mib, 68 * mib));
        pace.overdue.set(true);
        assert!(!pace.is_ahead(mib, 68 * mib), "a roll went by without it");
    }

    #[test]
    fn only_zeros_to_a_prepared_length_or_a_block_boundary_are_a_clean_end() {
        let mib = PREPARED_UNIT as usize;
        assert!(is_clean_end(4000, &[0; 96]), "a direct write's padding");
        assert!(is_clean_end(1000, &vec![0; mib - 1000]), "a prepared segment's zeros");
        assert!(!is_clean_end(4000, &[0; 95]), "not up to a boundary");
        assert!(!is_clean_end(0, &[0; 4096]), "a whole block of zeros is more than padding");
        assert!(!is_clean_end(4000, &[0, 0, 0x5a].repeat(32)), "not all zeros");
        let mut torn = vec![0; mib - 1000];
        torn[7] = 1;
        assert!(!is_clean_end(1000, &torn), "not all zeros");
    }

    #[test]
    fn a_prepared_segment_is_written_direct_and_synced_then_cut_to_its_records_when_it_closes() {
        with_dir(|dir| async move {
            let (mut writer, mut next) = open_until_direct(&dir).await;
            let (first_len, active) = {
                let index = writer.index();
                let log = index.borrow();
                assert_eq!(log.segments.len(), 2, "the first segment gave way to the prepared one");
                (log.segments[0].len, layout::segment(&dir, log.segments[1].base))
            };
            assert!(first_len < 2 << 20, "as soon as it was ready, before the first segment filled");
            assert_eq!(file_len(&active), 6 << 20, "the prepared zeros: a segment and 4 MiB");
            let flags = direct_flags(&active);
            assert!(!flags.is_empty() && flags.iter().all(|f| f & libc::O_DSYNC != 0), "direct and synced: {flags:?}");
            commit_until(&mut writer, &mut next, |w| w.index().borrow().segments.len() == 3).await;
            let closed = writer.index().borrow().segments[1].len;
            assert!(closed >= 2 << 20, "a prepared segment rolls when full");
            // Cut in the background once the next segment has started (the
            // bound only turns a cut that never comes into a failure).
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while file_len(&active) != closed {
                assert!(std::time::Instant::now() < give_up, "the closed segment's zeros were never cut");
                futures_lite::future::yield_now().await;
            }
            check_records(&writer, next).await;
        });
    }

    #[test]
    fn a_crash_leaves_a_prepared_segments_zeros_which_the_next_start_reads_as_its_clean_end() {
        with_dir(|dir| async move {
            let (mut writer, mut next) = open_until_direct(&dir).await;
            // The one after it prepared too: a crash leaves both behind.
            commit_until_prepared(&mut writer, &mut next).await;
            let (active, len) = {
                let log = writer.index.borrow();
                let active = log.segments.last().expect("an active segment");
                (layout::segment(&dir, active.base), active.len)
            };
            assert!(file_len(&active) > len && layout::prepared_segment(&dir).exists());
            // Killed: nothing cut, nothing synced at exit (what was committed already is).
            drop(writer);
            let (reopened, report) = SegmentWriter::open(&dir, options(), 0, |_| {}).await.expect("reopens");
            assert!(report.truncated.is_empty(), "zeros are not a torn tail: {:?}", report.truncated);
            assert_eq!(report.records, next);
            assert_eq!(file_len(&active), len, "the zeros were cut");
            assert!(!layout::prepared_segment(&dir).exists(), "a start deletes a prepared segment");
            check_records(&reopened, next).await;
            let mut reopened = reopened;
            commit_until(&mut reopened, &mut next, |w| w.index().borrow().segments.len() == 3).await;
            check_records(&reopened, next).await;
        });
    }
}

//! How a commit's bytes reach the active segment and become durable: through
//! the segment's buffered file opened `O_DSYNC`, or its direct writer when
//! it was prepared ahead, once per commit or once per record as the fsync
//! mode says.
//!
//! It owns the write alone. It must never change what the log's index says:
//! the caller publishes a commit once it is written.

use super::super::layout;
use super::direct::DirectSegment;
use super::{FsyncMode, LogError};
use glommio::io::{BufferedFile, OpenOptions};
use std::path::Path;

/// Opens a segment to read and append. Unless the mode never syncs, its
/// writes are `O_DSYNC`: each returns once its bytes are durable, as a write
/// and an `fdatasync` would make them. ext4 has no non-blocking buffered
/// write, so io_uring hands each write and each `fdatasync` to a worker
/// thread: the two were two hand-overs a commit, each waking the shard when
/// it was done, and a synced write is one (docs/perf.md, twenty-fourth pass).
pub(in crate::embedded) async fn open_segment(path: &Path, fsync: FsyncMode) -> Result<BufferedFile, LogError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    if fsync != FsyncMode::Never {
        options.custom_flags(libc::O_DSYNC);
    }
    Ok(options.buffered_open(path).await?)
}

/// Where a commit's bytes go: the active segment's direct writer when it was
/// prepared ahead, else its buffered file.
pub(super) enum Target<'a> {
    Buffered(&'a BufferedFile),
    Direct(&'a mut DirectSegment),
}

impl Target<'_> {
    /// Writes `data` at `at`, the segment's end; a synced write (the segment
    /// opened `O_DSYNC`) is timed as the log's sync.
    async fn write(&mut self, data: &[u8], at: u64, synced: bool) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let written = match self {
            Target::Buffered(file) => layout::write_all(file, data, at).await.map_err(LogError::from),
            Target::Direct(direct) => direct.write(data, at).await,
        };
        if synced {
            crate::observe::synced(started);
        }
        written
    }
}

/// Writes a commit's records (`ends` in `data`) at `at` and makes them durable
/// per the fsync mode.
pub(super) async fn write_durably(
    mut target: Target<'_>,
    fsync: FsyncMode,
    data: &[u8],
    ends: &[(usize, u64)],
    at: u64,
) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    match fsync {
        FsyncMode::Always => {
            let mut from = 0;
            for &(end, _) in ends {
                target.write(&data[from..end], at + from as u64, true).await?;
                from = end;
            }
        }
        FsyncMode::Batch => target.write(data, at, true).await?,
        FsyncMode::Never => target.write(data, at, false).await?,
    }
    crate::observe::committed(started, ends.len(), data.len());
    Ok(())
}

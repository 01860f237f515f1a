//! How a commit's bytes reach the active segment and become durable: through
//! the segment's file opened `O_DSYNC`, or its direct writer when it was
//! prepared ahead, once per commit or once per record as the fsync mode says.
//! A segment that is not prepared is written from glommio's blocking thread
//! ([`copy_for_writes`] says why).
//!
//! It owns the write alone. It must never change what the log's index says:
//! the caller publishes a commit once it is written.

use super::direct::DirectSegment;
use super::{FsyncMode, LogError};
use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Opens a segment to read and append. Unless the mode never syncs, its
/// writes are `O_DSYNC`: each returns once its bytes are durable, as a write
/// and an `fdatasync` would make them. ext4 has no non-blocking buffered
/// write, so each write and each `fdatasync` went to a worker thread: the
/// two were two hand-overs a commit, each waking the shard when it was done,
/// and a synced write is one (docs/perf.md, twenty-fourth pass).
pub(in crate::embedded) async fn open_segment(path: &Path, fsync: FsyncMode) -> Result<BufferedFile, LogError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    if fsync != FsyncMode::Never {
        options.custom_flags(libc::O_DSYNC);
    }
    Ok(options.buffered_open(path).await?)
}

/// A copy of `file`'s descriptor, taken when a segment that was not prepared
/// ahead becomes the active one: glommio's blocking thread writes the
/// segment's commits through it.
///
/// Through io_uring, a buffered write was handed to a kernel worker all the
/// same (ext4 and tmpfs have no non-blocking buffered write), but glommio
/// submits a request only once the executor has run every task that is
/// ready. While the pump waited for its commit, the clients it had just
/// answered decoded their next requests, and the write started only after
/// them; then the executor slept until it was done (docs/perf.md,
/// forty-first pass). Taken once per segment, not per commit: a shard out of
/// descriptors goes on writing its active segment. A prepared segment's
/// direct writes stay on io_uring, which needs no thread for them: through
/// the blocking thread, its two hand-overs a commit cost the server more
/// CPU per event under wrk than the late start did.
pub(in crate::embedded) fn copy_for_writes(file: &BufferedFile) -> Result<Arc<std::fs::File>, LogError> {
    // SAFETY: `file` is open for as long as it is borrowed here, and the
    // copy is a descriptor of its own, whatever becomes of `file`.
    let copy = unsafe { BorrowedFd::borrow_raw(file.as_raw_fd()) }.try_clone_to_owned()?;
    Ok(Arc::new(std::fs::File::from(copy)))
}

/// How the active segment's commits are written: through its direct writer
/// when it was prepared ahead, else through its descriptor's copy
/// ([`copy_for_writes`]).
pub(in crate::embedded) enum ActiveWrites {
    Buffered(Arc<std::fs::File>),
    Direct(DirectSegment),
}

impl ActiveWrites {
    /// Writes `data` at `at`, the segment's end; a synced write (the segment
    /// opened `O_DSYNC`) is timed as the log's sync.
    async fn write(&mut self, data: Bytes, at: u64, synced: bool) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let written = match self {
            ActiveWrites::Buffered(copy) => write_at_once(copy, data, at).await,
            ActiveWrites::Direct(direct) => direct.write(&data, at).await,
        };
        if synced {
            crate::observe::synced(started);
        }
        written
    }
}

/// Writes `data` at `at` through `copy`, on glommio's blocking thread, where
/// it starts at once, and from the commit's own buffer: glommio's `write_at`
/// takes a `Vec`, which was a copy of each commit.
async fn write_at_once(copy: &Arc<std::fs::File>, data: Bytes, at: u64) -> Result<(), LogError> {
    let copy = copy.clone();
    glommio::executor().spawn_blocking(move || copy.write_all_at(&data, at)).await?;
    Ok(())
}

/// Writes a commit's records (`ends` in `data`) at `at` and makes them durable
/// per the fsync mode.
pub(super) async fn write_durably(
    target: &mut ActiveWrites,
    fsync: FsyncMode,
    data: &Bytes,
    ends: &[(usize, u64)],
    at: u64,
) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    match fsync {
        FsyncMode::Always => {
            let mut from = 0;
            for &(end, _) in ends {
                target.write(data.slice(from..end), at + from as u64, true).await?;
                from = end;
            }
        }
        FsyncMode::Batch => target.write(data.clone(), at, true).await?,
        FsyncMode::Never => target.write(data.clone(), at, false).await?,
    }
    crate::observe::committed(started, ends.len(), data.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fd_flags, with_dir};
    use super::*;

    /// A segment that was not prepared ahead is written through the copy, not
    /// through the file the log opened: the copy must sync as the segment
    /// does, or a commit would be acknowledged before it is durable.
    #[test]
    fn the_copy_that_writes_a_segment_syncs_as_the_segment_does() {
        with_dir(|dir| async move {
            for fsync in [FsyncMode::Never, FsyncMode::Batch, FsyncMode::Always] {
                let file = open_segment(&dir.join(format!("{fsync:?}.log")), fsync).await.unwrap();
                let copy = copy_for_writes(&file).unwrap();
                let flags = fd_flags(copy.as_raw_fd()).expect("an open descriptor's flags");
                assert_eq!(flags & libc::O_DSYNC != 0, fsync != FsyncMode::Never, "{fsync:?}");
            }
        });
    }
}

//! A prepared segment's writes with direct I/O (`O_DIRECT`).
//!
//! A buffered write to ext4 cannot be done without blocking, so io_uring hands
//! every commit to a worker thread that copies it into the page cache before
//! the sync; a direct write over blocks already written and synced (a segment
//! prepared ahead, see `ahead`) goes from an aligned buffer to the disk
//! without one (docs/perf.md, twenty-fifth and twenty-seventh passes). Direct
//! writes must start and end on the block size, so each one starts at the
//! block that holds the segment's end, writes that block's bytes again, then
//! the commit, and pads the last block with zeros. The page cache writes that
//! block again on every buffered append too, so no assumption about the disk
//! is new. What lies past the segment's records is zeros: the writer cuts it
//! off when a segment closes and at shutdown, and recovery reads it as the
//! segment's clean end ([`is_clean_end`]).
//!
//! It owns one segment's direct file and the bytes of its last partial block.
//! It must never write anywhere but at the segment's end.

use super::{FsyncMode, LogError};
use glommio::io::{DmaFile, OpenOptions};
use std::path::Path;

/// Every direct write starts and ends on this boundary: ext4's block, so the
/// kernel never zeroes a partial block of its own.
pub(super) const BLOCK: u64 = 4096;

/// The active segment opened for direct writes.
pub(in crate::embedded) struct DirectSegment {
    /// The segment, opened `O_DIRECT` (and `O_DSYNC` unless the log never syncs).
    file: DmaFile,
    /// The segment's bytes from its last block boundary to its end: the start
    /// of the next write. Shorter than [`BLOCK`].
    tail: Vec<u8>,
}

impl DirectSegment {
    /// Opens the new segment at `path` for direct writes from its start.
    /// `None` when the file system refuses direct I/O (the segment is then
    /// written buffered).
    pub(in crate::embedded) async fn open(path: &Path, fsync: FsyncMode) -> Result<Option<Self>, LogError> {
        let mut options = OpenOptions::new();
        // Write-only, on purpose. At a process's first direct open on a
        // device, glommio probes with a read whether the device can be polled;
        // on this machine's virtio disk (and ext4 anywhere) the read succeeds
        // whether or not it can, and glommio then keeps every direct write
        // in a ring it busy-polls, so a shard spins while its commit is on
        // the disk: with readable descriptors the CPU per event rose by a
        // third at half rate (docs/perf.md, twenty-seventh pass). On a
        // write-only descriptor the probe fails and glommio polls nothing;
        // the one error it logs for it is silenced in `telemetry`.
        options.write(true);
        if fsync != FsyncMode::Never {
            options.custom_flags(libc::O_DSYNC);
        }
        let file = match options.dma_open(path).await {
            Ok(file) => file,
            Err(glommio::GlommioError::IoError(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(segment = %path.display(), "the file system refuses direct I/O: segments are written through the page cache");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Self { file, tail: Vec::new() }))
    }

    /// Writes `data` at `at`, the segment's end: from the block boundary
    /// before it, that block's bytes, `data`, then zeros to the next
    /// boundary. Returns once the bytes are durable, unless the log never
    /// syncs. On an error the bytes before `at` are as they were.
    pub(super) async fn write(&mut self, data: &[u8], at: u64) -> Result<(), LogError> {
        let kept = self.tail.len();
        if at % BLOCK != kept as u64 {
            // Written anywhere else, the block would lose bytes: refused, as a failed write.
            return Err(LogError::Io(std::io::Error::other(format!(
                "a direct write at {at} is not at the segment's end ({kept} bytes into its last block)"
            ))));
        }
        let end = kept + data.len();
        let len = end.next_multiple_of(BLOCK as usize);
        let mut buffer = self.file.alloc_dma_buffer(len);
        let bytes = buffer.as_bytes_mut();
        bytes[..kept].copy_from_slice(&self.tail);
        bytes[kept..end].copy_from_slice(data);
        bytes[end..].fill(0);
        let next_tail = bytes[end - end % BLOCK as usize..end].to_vec();
        let written = self.file.write_at(buffer, at - kept as u64).await?;
        if written != len {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("a direct write took {written} bytes of {len}"),
            )));
        }
        self.tail = next_tail;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::with_dir;
    use super::*;
    use proptest::prelude::*;

    /// The zeros written ahead in these tests.
    const PREPARED: usize = 1 << 20;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the commits' sizes, over a prepared segment's zeros and
        /// past them, the file holds exactly the commits in order, then
        /// zeros: to the prepared length, or to the next block boundary.
        #[test]
        fn the_file_holds_every_commit_in_order_then_zeros(
            sizes in prop::collection::vec(prop_oneof![1usize..200_000, (1usize..3).prop_map(|k| k * 4096)], 1..12),
        ) {
            with_dir(move |dir| async move {
                let path = dir.join("segment");
                std::fs::write(&path, vec![0; PREPARED]).expect("prepares the segment");
                let mut written = Vec::new();
                let mut segment = DirectSegment::open(&path, FsyncMode::Batch).await.unwrap().expect("/tmp takes direct I/O");
                for (n, size) in sizes.iter().enumerate() {
                    let data: Vec<u8> = (0..*size).map(|i| (i * 7 + n) as u8 | 1).collect();
                    segment.write(&data, written.len() as u64).await.expect("writes");
                    written.extend_from_slice(&data);
                }
                let file = std::fs::read(&path).expect("reads the segment");
                assert_eq!(&file[..written.len()], &written[..]);
                assert_eq!(file.len(), PREPARED.max(written.len().next_multiple_of(BLOCK as usize)));
                assert!(file[written.len()..].iter().all(|&b| b == 0));
            });
        }
    }
}

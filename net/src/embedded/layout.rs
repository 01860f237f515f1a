//! The layout of a shard's directory: the name of every file in it, the order
//! in which they are written, and the order in which a start reads them back.
//! Every other module of the engine asks here for a path; none spells a file
//! name itself.
//!
//! ```text
//! <data-dir>/shard-NNN/
//!   00000000000000000000.log     segments, named by their first offset
//!   00000000000000000000.index   a closed segment's positions and time marks
//!   checkpoint                   sequences, topic counts and dedup start as of a segment's base
//!   consumers.json               every durable consumer (a snapshot)
//!   consumers.journal            acks appended since that snapshot
//!   <name>.tmpN                  a replacement in progress (deleted at start)
//!   next.tmpsegment              the next segment, prepared ahead (deleted at start)
//! ```
//!
//! Written, in this order within a commit: records are appended to the newest
//! segment (opened `O_DSYNC`) and durable before any answer; when a segment
//! fills, the next one is created, or renamed from the one prepared ahead (and
//! its directory entry synced), then the
//! closed segment's index and the checkpoint are written in the background,
//! each by [`replace_file`] (temporary, fdatasync, rename, directory sync).
//! Consumer acks are appended to the journal and synced before an Ack is
//! answered; the snapshot replaces the journal's content when consumers come
//! or go.
//!
//! Read back at start, in this order: temporaries are deleted; the checkpoint
//! gives where replay starts; segments are opened oldest first, a closed one
//! from its index when that is intact and wholly before the replay point,
//! else by a scan that truncates a torn tail; then the consumer snapshot, with
//! the journal replayed over it. A missing or unreadable index or checkpoint
//! only makes the start replay more. This module must never decide what a file
//! holds: it names files and moves whole files.

use glommio::io::BufferedFile;
use std::path::{Path, PathBuf};

/// The extension prefix of [`replace_file`]'s temporary files.
const TMP_PREFIX: &str = "tmp";
const SEGMENT_EXTENSION: &str = "log";
const CHECKPOINT: &str = "checkpoint";
const CONSUMERS_SNAPSHOT: &str = "consumers.json";
const CONSUMERS_JOURNAL: &str = "consumers.journal";
/// A temporary by its extension: a start deletes it, a roll renames it.
const PREPARED_SEGMENT: &str = "next.tmpsegment";

/// The directory of shard `id` under the data directory.
pub fn shard_dir(data_dir: &Path, id: usize) -> PathBuf {
    data_dir.join(format!("shard-{id:03}"))
}

/// The segment whose first record has offset `base`.
pub fn segment(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXTENSION}"))
}

/// The index of the closed segment starting at `base`.
pub fn segment_index(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

/// The next segment while it is prepared ahead (see `log::ahead`).
pub fn prepared_segment(dir: &Path) -> PathBuf {
    dir.join(PREPARED_SEGMENT)
}

pub fn checkpoint(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT)
}

pub fn consumers_snapshot(dir: &Path) -> PathBuf {
    dir.join(CONSUMERS_SNAPSHOT)
}

pub fn consumers_journal(dir: &Path) -> PathBuf {
    dir.join(CONSUMERS_JOURNAL)
}

/// Segment files in `dir`, by base offset.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.'))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(base) = base {
            out.push((base, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Creates `dir` if needed and deletes the temporary files a crash or a
/// failed replacement left in it (the first step of every start).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_temporary(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn is_temporary(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.starts_with(TMP_PREFIX))
}

/// Replaces `path` with `bytes` through io_uring (a fresh temporary file,
/// fdatasync, rename, directory sync), so that a crash leaves the old file or
/// the new one, whole. Concurrent replacements of one path each use their own
/// temporary file; the last rename wins. A failed replacement deletes its
/// temporary at once, so a full disk does not fill up with them.
pub async fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{TMP_PREFIX}{unique}"));
    let renamed = match write_new(&tmp, bytes).await {
        Ok(()) => glommio::io::rename(&tmp, path).await.map_err(std::io::Error::from),
        Err(e) => Err(e),
    };
    if renamed.is_err() {
        let _ = glommio::io::remove(&tmp).await;
    }
    renamed?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).await
}

async fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file = BufferedFile::create(path).await?;
    write_all(&file, bytes, 0).await?;
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

/// Deletes `path` through io_uring (a blocking unlink of a large file can stall
/// the shard for as long as the filesystem frees its blocks).
pub async fn remove(path: &Path) -> std::io::Result<()> {
    glommio::io::remove(path).await.map_err(std::io::Error::from)
}

/// Makes `dir`'s entries durable, through io_uring: a blocking fsync of a
/// directory can wait for a journal commit and would stall the whole shard.
pub async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = glommio::io::Directory::open(dir).await?;
    dir.sync().await?;
    dir.close().await?;
    Ok(())
}

/// Writes all of `data` at `at`. An error is the OS's own, with its number:
/// glommio's conversion would keep only its kind, in a text naming the file.
pub async fn write_all(file: &BufferedFile, data: &[u8], mut at: u64) -> std::io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let written = file.write_at(rest.to_vec(), at).await.map_err(|e| match e {
            glommio::GlommioError::EnhancedIoError { source, .. } => source,
            other => other.into(),
        })?;
        if written == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "a write wrote nothing"));
        }
        rest = &rest[written..];
        at += written as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_found_by_their_names_in_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        for base in [4096, 0, 12] {
            std::fs::write(segment(dir.path(), base), b"").unwrap();
            std::fs::write(segment_index(dir.path(), base), b"").unwrap();
        }
        std::fs::write(checkpoint(dir.path()), b"").unwrap();
        let found: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(base, _)| base).collect();
        assert_eq!(found, vec![0, 12, 4096]);
    }

    #[test]
    fn a_start_deletes_temporaries_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [segment(dir.path(), 0), consumers_snapshot(dir.path()), checkpoint(dir.path())];
        for path in &keep {
            std::fs::write(path, b"x").unwrap();
        }
        let stray = [
            consumers_snapshot(dir.path()).with_extension("tmp3"),
            segment(dir.path(), 0).with_extension("tmp0"),
            prepared_segment(dir.path()),
        ];
        for path in &stray {
            std::fs::write(path, b"x").unwrap();
        }
        prepare(dir.path()).unwrap();
        assert!(keep.iter().all(|p| p.exists()));
        assert!(stray.iter().all(|p| !p.exists()));
    }
}

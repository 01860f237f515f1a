//! What the file system under a directory still has room for, as both the
//! HTTP edge (is the data directory full?) and the log (is there room to
//! prepare a segment ahead?) ask it, and which write errors mean it had none.
//! It keeps whether the data directory is full ([`data_dir_full`]), which the
//! log notes when a write fails for want of space ([`note_full`]) and `/ready`
//! reports. It must never write anything.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The data directory, once the embedded log has made it.
static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Bytes free in the data directory when a write last failed for want of
/// space, plus one; 0 while none has.
static FULL_AT: AtomicU64 = AtomicU64::new(0);

/// Free space that counts as room again after a full disk: a segment record
/// and its index entry, with margin.
const ROOM: u64 = 64 * 1024;

/// Names the data directory whose free space `/ready` follows.
pub fn watch_data_dir(dir: &Path) {
    let _ = DATA_DIR.set(dir.to_path_buf());
}

/// Notes that a write to the data directory failed for want of space: the
/// server is not ready until the directory has room again.
pub fn note_full() {
    let free = DATA_DIR.get().and_then(|d| free_bytes(d).ok()).unwrap_or(0);
    FULL_AT.store(free + 1, Ordering::Release);
}

/// True while the data directory is full: a write failed for want of space and
/// the free space has not grown by `ROOM` since, or less than `ROOM` is free.
pub fn data_dir_full() -> bool {
    let Some(dir) = DATA_DIR.get() else { return false };
    let Ok(free) = free_bytes(dir) else { return false };
    let full_at = FULL_AT.load(Ordering::Acquire);
    if full_at != 0 && free >= (full_at - 1) + ROOM {
        FULL_AT.store(0, Ordering::Release);
    }
    free < ROOM || FULL_AT.load(Ordering::Acquire) != 0
}

/// Bytes an unprivileged writer may still use in `dir`'s file system.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Whether a write failed for want of space: the disk, or the user's quota
/// on it, is full. By kind: the OS's error number decodes to it, and an error
/// that crossed `io::Error::from(GlommioError)` keeps only its kind.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

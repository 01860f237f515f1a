//! What the file system under a directory still has room for, as both the
//! HTTP edge (is the data directory full?) and the log (is there room to
//! prepare a segment ahead?) ask it, and which write errors mean it had none.
//! It must never write anything.

use std::path::Path;

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

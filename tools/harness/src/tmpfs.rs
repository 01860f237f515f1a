//! A small file system for full-disk tests: a tmpfs mounted for the test's
//! lifetime. Mounting needs root (or CAP_SYS_ADMIN), which CI has; a test that
//! cannot mount says so plainly.

use std::path::PathBuf;
use std::process::Command;

/// A tmpfs of a fixed size, unmounted when dropped.
pub struct Tmpfs {
    /// Where it is mounted.
    pub dir: PathBuf,
    /// The temporary folder that holds the mount point.
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(bytes: u64) -> Self {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "this test mounts a tmpfs and needs root or CAP_SYS_ADMIN");
        Self { dir, _parent: parent }
    }

    /// Fills it with one file, `filler`, until `spare` bytes are left (as
    /// `df` counts them); remove that file to give the space back.
    pub fn fill_leaving(&self, spare: u64) -> PathBuf {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.dir).output().expect("df runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let free: u64 = text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output");
        let filler = self.dir.join("filler");
        std::fs::write(&filler, vec![0u8; free.saturating_sub(spare) as usize]).expect("filler fits");
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

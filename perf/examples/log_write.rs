//! What one group commit's synced write costs in CPU, the log's way and with
//! direct I/O, for docs/perf.md ("Twenty-fifth pass"):
//!
//! ```text
//! cargo run --release -p jimbus-perf --example log_write -- DIR [COMMITS [BYTES...]]
//! ```
//!
//! For each commit size in BYTES (default 4608 and 237568: a commit of about
//! 15 one-event requests and of 15 fifty-event requests, at the log's 310
//! bytes a record), it appends COMMITS commits (default 2000) to a new file
//! in DIR, one after the other as a shard's pump does, three ways:
//!
//! - `buffered`: the log's own write (`embedded::log`): a glommio
//!   `BufferedFile` opened `O_DSYNC`, one io_uring write per commit. ext4
//!   has no non-blocking buffered write, so io_uring hands it to a worker,
//!   which copies it into the page cache and then syncs.
//! - `direct`: a glommio `DmaFile` (`O_DIRECT`) opened `O_DSYNC`. A commit
//!   is written from the start of the file's last partial 4 KiB block (ext4's
//!   block; the disk's own alignment where that is larger), that block's bytes
//!   again, then the commit, zero-padded to the block: what a direct-I/O log
//!   would write.
//! - `direct-overwrite`: the same, into a file whose blocks were written (with
//!   zeros, as the first line measures) before the run, so no write extends
//!   the file or allocates.
//!
//! A first line gives what writing 512 MiB of zeros costs, per MiB, with
//! direct I/O in 1 MiB writes and one sync: how `direct-overwrite`'s file
//! would be prepared. Each other line gives the commits per second, this
//! process's CPU per commit (utime + stime of `/proc/self/stat`, which counts
//! io_uring's workers) and the whole machine's busy CPU per commit
//! (`/proc/stat`), which also counts the kernel's own workers and interrupts
//! a direct write's completion runs in. The machine's figure includes
//! anything else running: run it on an idle machine. DIR must be on the file
//! system to measure (not tmpfs, which has no disk to sync).
use glommio::io::{DmaFile, OpenOptions};
use glommio::LocalExecutorBuilder;
use jimbus_harness::ServerProcess;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The three ways of writing a commit.
#[derive(Clone, Copy, Debug)]
enum Way {
    Buffered,
    Direct,
    DirectOverwrite,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Buffered => "buffered",
            Way::Direct => "direct",
            Way::DirectOverwrite => "direct-overwrite",
        }
    }
}

/// CPU seconds so far: this process's (the harness's reading of
/// `/proc/self/stat`), and the whole machine's busy time.
fn cpu_now() -> (f64, f64) {
    let own = ServerProcess::new(std::process::id()).cpu_seconds().expect("/proc/self/stat");
    // SAFETY: sysconf takes a plain integer and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let total = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<f64> = total
        .lines()
        .next()
        .expect("a cpu line")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6];
    (own, busy / hz)
}

/// What a measured piece of work took: wall seconds, and CPU seconds of this
/// process and of the whole machine.
struct Cost {
    elapsed: f64,
    own: f64,
    machine: f64,
}

/// Runs `work` and measures it.
async fn measure(work: impl std::future::Future<Output = ()>) -> Cost {
    let ((own, machine), started) = (cpu_now(), Instant::now());
    work.await;
    let (elapsed, (own_after, machine_after)) = (started.elapsed().as_secs_f64(), cpu_now());
    Cost { elapsed, own: own_after - own, machine: machine_after - machine }
}

/// Writes `bytes` of zeros (rounded up to whole MiB) at the start of `file`
/// with direct I/O in 1 MiB writes, then syncs once: how the blocks of a
/// direct-overwrite log would be written ahead.
async fn write_zeros(file: &DmaFile, bytes: u64) {
    for n in 0..bytes.div_ceil(1 << 20) {
        let mut buf = file.alloc_dma_buffer(1 << 20);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, n << 20).await.expect("writes zeros");
    }
    file.fdatasync().await.expect("syncs the zeros");
}

/// A commit's bytes: not zeros, so nothing along the way can skip them.
fn fill(bytes: &mut [u8], commit: usize) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i + commit) as u8 | 1;
    }
}

async fn buffered(path: &Path, commits: usize, size: usize) {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DSYNC)
        .buffered_open(path)
        .await
        .expect("opens the file");
    for commit in 0..commits {
        let mut buf = vec![0; size];
        fill(&mut buf, commit);
        let written = file.write_at(buf, (commit * size) as u64).await.expect("writes");
        assert_eq!(written, size);
    }
    file.close().await.expect("closes");
}

/// Writes `commits` of `size` bytes as a direct-I/O log would: from the
/// start of the last partial block, rewriting it, padded with zeros.
async fn direct(file: &DmaFile, commits: usize, size: usize) {
    // ext4's block: a write of whole blocks never makes the kernel zero part of one.
    let align = file.alignment().max(4096) as usize;
    let (mut end, mut tail) = (0usize, Vec::new());
    for commit in 0..commits {
        let start = end - tail.len();
        let len = (tail.len() + size).div_ceil(align) * align;
        let mut buf = file.alloc_dma_buffer(len);
        let bytes = buf.as_bytes_mut();
        bytes[..tail.len()].copy_from_slice(&tail);
        fill(&mut bytes[tail.len()..tail.len() + size], commit);
        bytes[tail.len() + size..].fill(0);
        end += size;
        let kept = end % align;
        tail.clear();
        tail.extend_from_slice(&bytes[end - start - kept..end - start]);
        let written = file.write_at(buf, start as u64).await.expect("writes");
        assert_eq!(written, len);
    }
}

async fn open_direct(path: &Path, prewrite: Option<u64>) -> DmaFile {
    if let Some(bytes) = prewrite {
        let file = OpenOptions::new().write(true).create(true).dma_open(path).await.expect("opens the file");
        write_zeros(&file, bytes).await;
        file.close().await.expect("closes");
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .expect("opens the file for direct I/O")
}

async fn run(dir: PathBuf, way: Way, commits: usize, size: usize) {
    let path = dir.join(format!("{}-{size}", way.name()));
    let _ = std::fs::remove_file(&path);
    let file = match way {
        Way::Buffered => None,
        Way::Direct => Some(open_direct(&path, None).await),
        Way::DirectOverwrite => Some(open_direct(&path, Some((commits * size + (1 << 20)) as u64)).await),
    };
    let cost = measure(async {
        match &file {
            None => buffered(&path, commits, size).await,
            Some(file) => direct(file, commits, size).await,
        }
    })
    .await;
    if let Some(file) = file {
        file.close().await.expect("closes");
    }
    std::fs::remove_file(&path).expect("removes the file");
    let per = |seconds: f64| seconds * 1e6 / commits as f64;
    println!(
        "{:<17} {size:>7} bytes: {:>6.0} commits/s, {:>6.1} us process CPU per commit, {:>6.1} us machine CPU per commit",
        way.name(),
        commits as f64 / cost.elapsed,
        per(cost.own),
        per(cost.machine),
    );
}

/// What [`write_zeros`] costs for `mib` MiB: what writing a segment's
/// blocks ahead of a direct-overwrite log costs.
async fn zeros(dir: PathBuf, mib: u64) {
    let path = dir.join("zeros");
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new().write(true).create(true).dma_open(&path).await.expect("opens the file");
    let cost = measure(write_zeros(&file, mib << 20)).await;
    file.close().await.expect("closes");
    std::fs::remove_file(&path).expect("removes the file");
    println!(
        "zeros ahead       {mib:>4} MiB: {:>6.0} MiB/s, {:>6.1} us process CPU per MiB, {:>6.1} us machine CPU per MiB",
        mib as f64 / cost.elapsed,
        cost.own * 1e6 / mib as f64,
        cost.machine * 1e6 / mib as f64,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: log_write DIR [COMMITS [BYTES...]]"));
    let commits: usize = args.next().map_or(2000, |c| c.parse().expect("COMMITS is a number"));
    let mut sizes: Vec<usize> = args.map(|s| s.parse().expect("BYTES is a number")).collect();
    if sizes.is_empty() {
        sizes = vec![4608, 237_568];
    }
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            zeros(dir.clone(), 512).await;
            for size in sizes {
                for way in [Way::Buffered, Way::Direct, Way::DirectOverwrite] {
                    run(dir.clone(), way, commits, size).await;
                }
            }
        })
        .expect("starts an executor")
        .join()
        .expect("runs");
}

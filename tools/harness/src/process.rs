//! A server's process as the operating system sees it: found by the port it
//! listens on (for a server the harness did not start) or known by its pid, and
//! measured through `/proc` (CPU time used, current and peak RSS). Linux only.
//! It only reads: it must never signal, start or stop the process it measures.

/// A running process, by pid, whose cost can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: u32,
}

impl ServerProcess {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// The process listening on TCP `port` (loopback or any address), found
    /// through `/proc/net/tcp{,6}` and `/proc/*/fd`; `None` when no process we
    /// may inspect listens there.
    pub fn listening_on(port: u16) -> Option<Self> {
        let inodes = listening_socket_inodes(port);
        if inodes.is_empty() {
            return None;
        }
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path()) {
                    if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                        return Some(Self::new(pid));
                    }
                }
            }
        }
        None
    }

    /// Resident set size now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// Peak resident set size over the process's whole life, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// Starts `VmHWM` again from the resident set now (`5` to `clear_refs`),
    /// so a later peak is the peak of what happens after this.
    pub fn reset_peak_rss(&self) -> std::io::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
    }

    /// VmRSS once three readings 200 ms apart agree within 64 KiB: a server
    /// reads what its clients sent on its own time. A measurement's wait,
    /// not a test's synchronisation.
    pub fn settled_rss_kib(&self) -> u64 {
        let mut readings = vec![self.rss_kib().expect("VmRSS")];
        loop {
            let last = &readings[readings.len().saturating_sub(3)..];
            if last.len() == 3 && last.iter().max().unwrap() - last.iter().min().unwrap() <= 64 {
                return readings[readings.len() - 1];
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            readings.push(self.rss_kib().expect("VmRSS"));
        }
    }

    /// A `/proc/<pid>/status` value in KiB.
    pub fn status_kib(&self, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU time the process has used so far (user + system, from `/proc/PID/stat`),
    /// in seconds: the server's own cost, whatever else shares the machine.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads a constant of the running system.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }
}

/// `socket:[inode]` links of the sockets listening on `port`.
fn listening_socket_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_measures_the_process_listening_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = ServerProcess::listening_on(port).expect("this process listens there");
        assert_eq!(me.pid, std::process::id());
        let rss = me.rss_kib().expect("VmRSS");
        // The peak is read after, and never falls.
        assert!(rss > 0 && me.peak_rss_kib().expect("VmHWM") >= rss);
        assert!(me.cpu_seconds().is_some_and(|s| s >= 0.0));
        drop(listener);
        assert_eq!(ServerProcess::listening_on(port), None);
    }
}

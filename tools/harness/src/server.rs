//! Starting and stopping the real `jimbus serve`: a [`Launcher`] names the binary,
//! the flags, the data directory and the ports; a [`Jimbus`] is the running
//! server, with its addresses, its log lines and its process. It owns the child
//! process it started and must never leave it running (drop kills it), nor
//! decide readiness by waiting: the server's "jimbus ready" log line says so.

use crate::http::{request, HttpConn, HttpResponse};
use crate::process::ServerProcess;
use jimbus_proto::bus;
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The executable `name` built into the same target directory as the running
/// program (`target/<profile>/name` beside a test's `deps/` or a binary), for
/// crates that cannot name another crate's binary with `CARGO_BIN_EXE_*`.
pub fn binary_beside_current_exe(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("an executable has a folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// How to start a server: binary, extra flags, data directory and ports.
#[derive(Clone, Debug)]
pub struct Launcher {
    binary: PathBuf,
    extra: Vec<String>,
    data_dir: Option<PathBuf>,
    http: SocketAddr,
    grpc: SocketAddr,
    /// `--log-format`: json, which tests read, unless a test reads lines as
    /// an operator's journal has them.
    log_format: &'static str,
    /// RLIMIT_NOFILE, soft and hard, for the server's process (`None`: the
    /// test's own).
    max_open_files: Option<u64>,
}

impl Launcher {
    /// `binary serve` on free loopback ports and a fresh temporary data directory.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            extra: Vec::new(),
            data_dir: None,
            http: "127.0.0.1:0".parse().unwrap(),
            grpc: "127.0.0.1:0".parse().unwrap(),
            log_format: "json",
            max_open_files: None,
        }
    }

    /// Compact log lines, the server's format when its standard error is not
    /// a terminal (a journal, a file, a container's log).
    pub fn compact_logs(mut self) -> Self {
        self.log_format = "compact";
        self
    }

    /// More `serve` flags, after the harness's own.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    /// Starts the server with at most `count` open file descriptors, a hard
    /// limit it cannot raise.
    pub fn max_open_files(mut self, count: u64) -> Self {
        self.max_open_files = Some(count);
        self
    }

    /// A data directory the caller prepared (and cleans up).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Fixed listen addresses instead of free ports.
    pub fn addresses(mut self, http: SocketAddr, grpc: SocketAddr) -> Self {
        self.http = http;
        self.grpc = grpc;
        self
    }

    /// Starts the server and waits (at most 60 s) for its "jimbus ready" line.
    pub fn start(self) -> Jimbus {
        assert!(
            self.binary.exists(),
            "{} does not exist: build the server first (`cargo build --bin jimbus`)",
            self.binary.display()
        );
        let (data_dir, temp) = match self.data_dir.clone() {
            Some(dir) => (dir, None),
            None => {
                let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
                (temp.path().join("data"), Some(temp))
            }
        };
        Jimbus::launch(self, data_dir, temp)
    }
}

/// A metric on a `/metrics` page: the sum of its samples over their labels
/// (its one sample when it has none), or `None` when the page holds none.
pub fn metric_on_page(page: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = page
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// A running `jimbus serve`.
pub struct Jimbus {
    child: Option<Child>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    launcher: Launcher,
    /// Every log line the server wrote, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Jimbus {
    fn launch(launcher: Launcher, data_dir: PathBuf, temp: Option<Arc<tempfile::TempDir>>) -> Self {
        let mut command = Command::new(&launcher.binary);
        if let Some(count) = launcher.max_open_files {
            let limit = libc::rlimit { rlim_cur: count, rlim_max: count };
            // SAFETY: between fork and exec the closure only calls setrlimit,
            // which is async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let mut child = command
            .args(["--log-format", launcher.log_format, "serve", "--http", &launcher.http.to_string()])
            .args(["--grpc", &launcher.grpc.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&launcher.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the jimbus binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let ready = read_log(child.stderr.take().unwrap(), log.clone());
        let (http, grpc) = match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("jimbus did not become ready:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Self { child: Some(child), http, grpc, data_dir, launcher, log, _temp: temp }
    }

    /// The server's process, while it runs (for its CPU time and memory).
    pub fn process(&self) -> Option<ServerProcess> {
        self.child.as_ref().map(|c| ServerProcess::new(c.id()))
    }

    /// Kills the server with SIGKILL (nothing is flushed).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            for addr in [self.http, self.grpc] {
                wait_until_nothing_listens(addr);
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("reaped")
    }

    /// Starts the server again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let launcher = self.launcher.clone().addresses(self.http, self.grpc);
        let mut next = Self::launch(launcher, self.data_dir.clone(), self._temp.clone());
        self.child = next.child.take();
        self.log = next.log.clone();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn client(&self) -> EventBusServiceClient<tonic::transport::Channel> {
        EventBusServiceClient::connect(self.grpc_url()).await.expect("gRPC connects")
    }

    /// Reads every delivery matching `pattern` from the start until `count`
    /// have arrived (or 30 s pass, which fails the caller's assertions).
    /// Aggregated messages (`balatro.<session>.aggregated`) also match wide
    /// patterns such as `balatro.>`; they are left out unless the pattern names
    /// them, so tests of the raw stream count raw records only.
    pub async fn read_all(&self, pattern: &str, count: usize) -> Vec<bus::SubscribeResponse> {
        let mut client = self.client().await;
        let request = bus::SubscribeRequest {
            pattern: pattern.into(),
            start: bus::StartPosition::Earliest as i32,
            ..Default::default()
        };
        let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while out.len() < count {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(delivery))) => {
                    if pattern.ends_with("aggregated") || !delivery.topic.ends_with(".aggregated") {
                        out.push(delivery);
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// One HTTP request on a new connection.
    pub fn post(&self, path: &str, body: &[u8]) -> HttpResponse {
        let answer = TcpStream::connect(self.http).ok().and_then(|stream| {
            stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
            let mut conn = HttpConn { reader: BufReader::new(stream) };
            conn.send(&request("POST", path, body, &[]));
            conn.try_read_response()
        });
        answer.unwrap_or_else(|| panic!("no answer to POST {path}; server log:\n{}", self.log_text()))
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        let mut conn = HttpConn::open(self.http);
        conn.send(&request("GET", path, b"", &[]));
        conn.read_response()
    }

    /// A metric on the server's `/metrics` page: the sum of its samples over
    /// their labels (its one sample when it has none).
    ///
    /// # Panics
    /// When the page holds no sample of it.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_if(name).unwrap_or_else(|| {
            panic!("no {name} in /metrics:\n{}", String::from_utf8_lossy(&self.get("/metrics").body))
        })
    }

    /// [`Jimbus::metric`], or `None` when the page holds no sample of it (a
    /// binary older than the metric, when a measurement compares builds).
    pub fn metric_if(&self, name: &str) -> Option<f64> {
        metric_on_page(&String::from_utf8(self.get("/metrics").body).expect("the metrics page is UTF-8"), name)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.launcher.binary
    }

    /// Sends SIGTERM and polls for the exit until `limit`; the child stays
    /// (for [`Jimbus::kill9`]) when it has not exited by then.
    fn terminate_within(&mut self, limit: Duration) {
        let Some(child) = self.child.as_mut() else { return };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Jimbus {
    fn drop(&mut self) {
        // Under `cargo llvm-cov` (which sets LLVM_PROFILE_FILE) the server must
        // exit normally to write its coverage profile: SIGTERM first, SIGKILL
        // only if it has not exited within 10 s.
        if std::env::var_os("LLVM_PROFILE_FILE").is_some() {
            self.terminate_within(Duration::from_secs(10));
        }
        self.kill9();
    }
}

/// Collects the server's log lines into `log` on a thread of their own; the
/// channel gets the HTTP and gRPC addresses from the "jimbus ready" line.
fn read_log(
    stderr: std::process::ChildStderr,
    log: Arc<Mutex<Vec<String>>>,
) -> std::sync::mpsc::Receiver<(SocketAddr, SocketAddr)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addresses) = ready_addresses(&line) {
                let _ = ready_tx.send(addresses);
            }
            log.lock().unwrap().push(line);
        }
    });
    ready_rx
}

/// The listen addresses of the server's "jimbus ready" line, written as JSON
/// or as a compact line (`… jimbus ready http=ADDR grpc=ADDR …`); `None` for
/// any other line.
fn ready_addresses(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if line.contains("\"jimbus ready\"") {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let address = |name: &str| value[name].as_str().unwrap().parse().unwrap();
        return Some((address("http"), address("grpc")));
    }
    let (_, fields) = line.split_once(": jimbus ready ")?;
    let address = |name: &str| fields.split(' ').find_map(|field| field.strip_prefix(name)).unwrap().parse().unwrap();
    Some((address("http="), address("grpc=")))
}

/// Returns once no socket listens on `addr`'s port, or after 10 s. A killed
/// server's io_uring ring closes its files in the background after the
/// process is reaped; a listener left behind shares the SO_REUSEPORT port
/// with a restarted server and takes connections that nobody accepts.
fn wait_until_nothing_listens(addr: SocketAddr) {
    let port = format!(":{:04X}", addr.port());
    let listening = || {
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|row| {
                let columns: Vec<&str> = row.split_whitespace().collect();
                // Columns: slot, local address, remote address, state (0A: LISTEN).
                columns.get(1).is_some_and(|local| local.ends_with(&port)) && columns.get(3) == Some(&"0A")
            })
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listening() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
}

/// The event a delivery carries; panics when it carries anything else.
pub fn event_of(delivery: &bus::SubscribeResponse) -> &jimbus_proto::events::Event {
    match &delivery.body {
        Some(bus::subscribe_response::Body::Event(event)) => event,
        other => panic!("not an event: {other:?}"),
    }
}

/// The `event_id` of every delivery in `deliveries`, which must all be events.
pub fn event_ids(deliveries: &[bus::SubscribeResponse]) -> Vec<String> {
    deliveries.iter().map(|delivery| event_of(delivery).event_id.clone()).collect()
}

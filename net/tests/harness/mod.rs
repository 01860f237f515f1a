//! One harness for every integration test: starts the real `jimbus` binary on
//! loopback ports and its own data directory, and talks to it as clients do (raw
//! HTTP/1.1 over a socket, tonic gRPC). Readiness is read from the server's own
//! JSON log line, never guessed with a sleep.

#![allow(dead_code)]

pub mod tmpfs;

use jimbus_proto::bus;
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/compat");

/// A running `jimbus serve`.
pub struct Jimbus {
    child: Option<Child>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    /// Every log line the server wrote, for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Jimbus {
    /// Starts a server with a fresh data directory and any extra flags.
    pub fn start(extra: &[&str]) -> Self {
        let temp = Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = temp.path().join("data");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(data_dir, "127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), extra, Some(temp))
    }

    /// Starts a server on a data directory the caller prepared (and cleans up).
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(data_dir, "127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap(), extra, None)
    }

    fn launch(
        data_dir: PathBuf,
        http: SocketAddr,
        grpc: SocketAddr,
        extra: Vec<String>,
        temp: Option<Arc<tempfile::TempDir>>,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jimbus"))
            .args(["--log-format", "json", "serve", "--http", &http.to_string(), "--grpc", &grpc.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the jimbus binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"jimbus ready\"") {
                    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let http: SocketAddr = value["http"].as_str().unwrap().parse().unwrap();
                    let grpc: SocketAddr = value["grpc"].as_str().unwrap().parse().unwrap();
                    let _ = ready_tx.send((http, grpc));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (http, grpc) = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("jimbus did not become ready:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Self { child: Some(child), http, grpc, data_dir, extra, log, _temp: temp }
    }

    /// Kills the server with SIGKILL (nothing is flushed).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
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
        let mut next =
            Self::launch(self.data_dir.clone(), self.http, self.grpc, self.extra.clone(), self._temp.clone());
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

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
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

impl Jimbus {
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

/// A request as the field mod writes it.
pub fn request(method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nUser-Agent: BalatroMCP/1.0\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A raw HTTP/1.1 connection, for keep-alive, pipelining and misbehaving clients.
pub struct HttpConn {
    pub reader: BufReader<TcpStream>,
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self { reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// Reads one response; `None` when the server closed the connection first.
    pub fn try_read_response(&mut self) -> Option<HttpResponse> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).ok()? == 0 {
            return None;
        }
        let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).ok()?;
        Some(HttpResponse { status, headers, body })
    }

    pub fn read_response(&mut self) -> HttpResponse {
        self.try_read_response().expect("a response before the connection closed")
    }

    /// True when the server has closed the connection (reads end).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

/// The compat fixtures, by file name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(FIXTURES)
        .expect("fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// The path the field mod posts a fixture to.
pub fn fixture_path(name: &str) -> &'static str {
    if name.starts_with("batch_") {
        "/api/v1/events/batch"
    } else if name.starts_with("health_") {
        "/api/v1/events/health"
    } else {
        "/api/v1/events"
    }
}

pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

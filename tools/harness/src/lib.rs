//! One harness for every integration test and for `jimbus-load`: it starts the
//! real `jimbus` binary on loopback ports and its own data directory (or finds a
//! server that is already running), measures that server's process, and talks to
//! it as clients do (raw HTTP/1.1 over a socket, tonic gRPC). Readiness is read
//! from the server's own JSON log line, never guessed with a sleep. It depends
//! on `jimbus-proto` and client libraries only: it must never import the
//! server's code (`jimbus-net`, `jimbus-core`), so what it tests is the binary
//! as users run it.

pub mod http;
pub mod process;
pub mod server;
pub mod tmpfs;

pub use http::{request, HttpConn, HttpResponse};
pub use process::ServerProcess;
pub use server::{binary_beside_current_exe, event_ids, event_of, metric_on_page, Jimbus, Launcher};

use std::path::Path;
use std::time::{Duration, Instant};

/// The bytes a gRPC client opens a connection with: the HTTP/2 preface and
/// an empty SETTINGS frame (RFC 9113, 3.4).
pub const HTTP2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Polls `check` every 20 ms until it holds; panics naming `what` once
/// `within` has passed. For effects the server reports but does not signal
/// (a metric returning to rest, a file going away).
pub fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` as [`wait_for`] polls its check, until it finds something,
/// and returns that.
pub fn wait_for_some<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_for(within, what, || {
        found = probe();
        found.is_some()
    });
    found.expect("wait_for returns once the probe found something")
}

/// The compat fixtures (the field mod's own bodies), in the workspace.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../core/tests/fixtures/compat");

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

/// The workspace root (where `mod/`, `core/` and `net/` are).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

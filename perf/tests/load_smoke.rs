//! Runs `jimbus-load` against the real (debug) `jimbus` server for a fixed number
//! of events and checks what its JSON report says: everything accepted, nothing
//! lost, no errors. It asserts behaviour only, never speed.
//!
//! The server binary lives in another crate, so it is not built by this test:
//! run `cargo build --bin jimbus` first.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    http: String,
    grpc: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let path = target.join("debug").join("jimbus");
    assert!(
        path.exists(),
        "{} does not exist: this test runs the real server, build it first with `cargo build --bin jimbus`",
        path.display()
    );
    path
}

fn start_server(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(server_binary())
        .args(["--log-format", "json", "serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--fsync", "batch"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the jimbus binary starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"jimbus ready\"") {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = ready_tx
                    .send((value["http"].as_str().unwrap().to_string(), value["grpc"].as_str().unwrap().to_string()));
            }
            lines.lock().unwrap().push(line);
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok((http, grpc)) => Server { child, http, grpc, log },
        Err(_) => {
            let _ = child.kill();
            panic!("jimbus did not become ready:\n{}", log.lock().unwrap().join("\n"));
        }
    }
}

#[test]
fn a_fixed_count_run_is_accepted_and_delivered_completely() {
    let temp = tempfile::tempdir().unwrap();
    let server = start_server(&temp.path().join("data"));
    let report_path = temp.path().join("report.json");
    const EVENTS: u64 = 5_000;
    let output = Command::new(env!("CARGO_BIN_EXE_jimbus-load"))
        .arg("--url")
        .arg(format!("http://{}/api/v1/events/batch", server.http))
        .arg("--grpc")
        .arg(&server.grpc)
        .args(["--sessions", "4", "--batch", "50", "--subscribers", "1", "--duration", "0"])
        .args(["--events", &EVENTS.to_string(), "--drain-timeout", "30", "--quiet"])
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .arg("--json")
        .arg(&report_path)
        .output()
        .expect("jimbus-load runs");
    let context = || {
        format!(
            "stdout:\n{}\nstderr:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            server.log.lock().unwrap().join("\n")
        )
    };
    assert!(output.status.success(), "jimbus-load failed\n{}", context());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["accepted"], EVENTS, "{report:#}\n{}", context());
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["acked_ids"], EVENTS, "{report:#}");
    assert_eq!(report["subscribers"][0]["unique_load_events"], EVENTS, "{report:#}");
    assert_eq!(report["http"]["requests"], EVENTS / 50, "one request per batch, no retries: {report:#}");
    assert!(report["http"]["latency_us"]["p99"].as_u64().is_some(), "{report:#}");
    assert!(report["e2e_latency_us"]["count"].as_u64() == Some(EVENTS), "{report:#}");
    // `balatro.>` carries the aggregated stream too: one hand per batch, timed
    // both from its send and from its arrival.
    assert_eq!(report["e2e_aggregated_latency_us"]["count"], EVENTS / 50, "{report:#}");
    assert_eq!(report["e2e_aggregated_from_arrival_us"]["count"], EVENTS / 50, "{report:#}");
    assert!(report["server"]["vm_hwm_kib"].as_u64().is_some_and(|k| k > 0), "{report:#}");
}

//! Runs `jimbus-load` against the real (debug) `jimbus` server for a fixed number
//! of events and checks what its JSON report says: everything accepted, nothing
//! lost, no errors. It asserts behaviour only, never speed.
//!
//! The server binary lives in another crate, so it is not built by this test:
//! run `cargo build --bin jimbus` first. The shared harness (`jimbus-harness`)
//! starts it, as it does for the integration tests in `net/tests`.

use jimbus_harness::{binary_beside_current_exe, Launcher};
use std::process::Command;

#[test]
fn a_fixed_count_run_is_accepted_and_delivered_completely() {
    let temp = tempfile::tempdir().unwrap();
    let server = Launcher::new(binary_beside_current_exe("jimbus"))
        .data_dir(temp.path().join("data"))
        .args(&["--fsync", "batch"])
        .start();
    let report_path = temp.path().join("report.json");
    const EVENTS: u64 = 5_000;
    let output = Command::new(env!("CARGO_BIN_EXE_jimbus-load"))
        .arg("--url")
        .arg(format!("http://{}/api/v1/events/batch", server.http))
        .arg("--grpc")
        .arg(server.grpc.to_string())
        .args(["--sessions", "4", "--batch", "50", "--subscribers", "1", "--duration", "0"])
        .args(["--events", &EVENTS.to_string(), "--drain-timeout", "30", "--quiet"])
        .arg("--server-pid")
        .arg(server.process().expect("running").pid.to_string())
        .arg("--json")
        .arg(&report_path)
        .output()
        .expect("jimbus-load runs");
    let context = || {
        format!(
            "stdout:\n{}\nstderr:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            server.log_text()
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

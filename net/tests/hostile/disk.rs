//! Defect 7 with a full disk: `/ready` is not ready while the data directory
//! is full and ready again once space returns, and no answer names a file path.
//! The log lives on a small tmpfs, which needs root (or CAP_SYS_ADMIN), as in
//! CI; the test says so plainly if it is missing.

use crate::harness::tmpfs::Tmpfs;
use crate::harness::Jimbus;

fn batch(from: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + 20)
        .map(|i| {
            format!(r#"{{"event_id":"r-{i}","type":"HEARTBEAT","session_id":"ready","note":"{}"}}"#, "z".repeat(200))
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
}

#[test]
fn ready_is_503_while_the_data_dir_is_full_and_answers_name_no_paths() {
    let disk = Tmpfs::mount(1 << 20);
    let server = Jimbus::start_in(disk.dir.join("data"), &["--shards", "1", "--segment-bytes", "65536"]);
    assert_eq!(server.get("/ready").status, 200);
    let filler = disk.fill_leaving(96 * 1024);
    let mut sent = 0;
    let refused = loop {
        let response = server.post("/api/v1/events/batch", &batch(sent));
        if response.status == 507 {
            break response;
        }
        assert_eq!(response.status, 200);
        sent += 20;
        assert!(sent < 10_000, "the disk never filled");
    };
    let text = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(!text.contains(disk.dir.to_str().unwrap()) && !text.contains("/tmp"), "a path in {text}");
    let ready = server.get("/ready");
    assert_eq!(ready.status, 503, "{}", String::from_utf8_lossy(&ready.body));
    assert!(ready.json()["error"].as_str().unwrap().contains("full"));
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(server.get("/ready").status, 200, "ready again once space returns");
    assert_eq!(server.post("/api/v1/events/batch", &batch(sent)).status, 200);
}

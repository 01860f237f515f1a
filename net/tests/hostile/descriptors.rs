//! A flood of connections past the process's file descriptors. Before, each
//! shard retried its failing accept at once and logged every failure: with
//! 300 descriptors and 400 idle connections the server spun both cores, wrote
//! 36 GB of log lines in 15 s, and a new client hung in the kernel's queue.
//! Now every client gets an answer (the ones the server cannot take, 503 with
//! `Retry-After`), a failing accept is retried every 50 ms and logged when its
//! run starts, and the server serves again once connections close.

use crate::harness::{request, HttpConn, Jimbus};
use std::time::{Duration, Instant};

/// A one-event batch of a field mod's.
const BATCH: &[u8] = br#"{"batch_id":"fd-1","events":[{"type":"MONEY_CHANGED","source":"BalatroMCP","payload":{"old_value":5,"new_value":9,"difference":4},"timestamp":1700000000000,"version":1}],"source":"BalatroMCP","timestamp":1700000000000}"#;

/// Connections opened at once: several times what the descriptors allow.
const FLOOD: usize = 200;

#[test]
fn connections_past_the_descriptors_are_answered_503_and_the_server_recovers() {
    // One shard, whatever the machine, so that the descriptors it starts with
    // fit in 64. Idle connections stay open for the test's length: only their
    // clients close them.
    let server = Jimbus::start_with_max_open_files(64, &["--shards", "1", "--idle-timeout", "300"]);
    let started = Instant::now();
    let mut flood: Vec<HttpConn> = (0..FLOOD).map(|_| HttpConn::open(server.http)).collect();
    for conn in &mut flood {
        conn.send(&request("POST", "/api/v1/events/batch", BATCH, &[]));
    }
    let mut served = Vec::new();
    let mut refused = 0;
    for mut conn in flood {
        let answer = conn.try_read_response().expect("every connection of the flood is answered");
        match answer.status {
            200 => served.push(conn),
            503 => {
                assert_eq!(answer.header("retry-after"), Some("1"), "a refused connection is told when to retry");
                assert_eq!(answer.json()["status"], "error");
                refused += 1;
            }
            status => panic!("unexpected status {status}: {}", String::from_utf8_lossy(&answer.body)),
        }
    }
    assert!(refused > 0, "64 descriptors took all {FLOOD} connections");
    assert!(!served.is_empty(), "no connection was served");
    // The served connections are kept alive and hold their descriptors: a new
    // client is refused, and promptly (a hang would end at the 30 s read timeout).
    let mut late = HttpConn::open(server.http);
    late.send(&request("POST", "/api/v1/events/batch", BATCH, &[]));
    assert_eq!(late.try_read_response().expect("an answer, not a hang").status, 503);
    drop(served);
    crate::harness::wait_for(Duration::from_secs(30), "the server to serve again", || {
        server.post("/api/v1/events/batch", BATCH).status == 200
    });
    let elapsed = started.elapsed();
    let failures = server.metric("jimbus_http_accept_failures_total");
    // The shard waits 50 ms after a failed accept, so it fails at most 20 times a second.
    let bound = elapsed.as_secs_f64() / 0.05 + 1.0;
    assert!(failures >= 1.0 && failures <= bound, "{failures} failed accepts in {elapsed:?} (at most {bound})");
    // The flood's refused connections and the late one, and any refused while waiting.
    let counted = server.metric("jimbus_http_connections_refused_total");
    assert!(counted >= (refused + 1) as f64, "{counted} refused connections counted, {} seen", refused + 1);
    let log = server.log_text();
    let warnings = log.matches("cannot accept connections").count();
    assert!(warnings >= 1 && warnings as f64 <= failures, "{warnings} warnings for {failures} failures:\n{log}");
    assert_eq!(server.get("/health").status, 200);
}

//! A flood of connections past the process's file descriptors. Before, each
//! shard retried its failing accept at once and logged every failure: with
//! 300 descriptors and 400 idle connections the server spun both cores, wrote
//! 36 GB of log lines in 15 s, and a new client hung in the kernel's queue.
//! Now every client gets an answer (the ones the server cannot take, 503 with
//! `Retry-After`), a failing accept is retried every 50 ms and logged when its
//! run starts, and the server serves again once connections close (the gRPC
//! port closes its waiting connections the same way). The log, which needs a
//! descriptor for each new segment, logged a warning at every commit
//! meanwhile; it now logs the run once and loses nothing.

use crate::harness::{request, HttpConn, Jimbus, HTTP2_OPENING};
use std::io::{Read, Write};
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
    // The gRPC port closes the connections waiting for it too, so a client
    // fails at once and retries. (One that takes a descriptor another thread
    // freed for a moment is served: either way, not a hang.)
    let mut grpc = std::net::TcpStream::connect(server.grpc).unwrap();
    grpc.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = grpc.write_all(HTTP2_OPENING);
    let read = grpc.read(&mut [0; 64]);
    assert!(
        !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a gRPC client waited in the queue: {read:?}"
    );
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
    let counted = server.metric("jimbus_http_connections_refused_total{reason=\"out_of_descriptors\"}");
    assert!(counted >= (refused + 1) as f64, "{counted} refused connections counted, {} seen", refused + 1);
    let log = server.log_text();
    let warnings = log.matches("cannot accept connections").count();
    assert!(warnings >= 1 && warnings as f64 <= failures, "{warnings} warnings for {failures} failures:\n{log}");
    assert_eq!(server.get("/health").status, 200);
}

/// A metric on the `/metrics` page, read over `conn`: a connection the server
/// already holds, when it can accept no other.
fn metric_over(conn: &mut HttpConn, name: &str) -> f64 {
    conn.send(&request("GET", "/metrics", b"", &[]));
    let page = String::from_utf8(conn.read_response().body).unwrap();
    crate::harness::metric_on_page(&page, name).unwrap_or(0.0)
}

/// A 50-event batch of one session whose events are told apart by `batch`.
fn batch_of_50(batch: usize) -> Vec<u8> {
    let events: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type":"MONEY_CHANGED","source":"BalatroMCP","session_id":"fd","payload":{{"old_value":{batch},"new_value":{i},"difference":1}},"timestamp":{},"version":1}}"#, 1_700_000_000_000u64 + (batch * 50 + i) as u64))
        .collect();
    format!(
        r#"{{"batch_id":"fd-{batch}","events":[{}],"source":"BalatroMCP","timestamp":1700000000000}}"#,
        events.join(",")
    )
    .into_bytes()
}

/// The log needs a descriptor for each new segment. Out of them, a commit's
/// roll fails, the active segment keeps growing, the failure is logged once,
/// and every acknowledged event is delivered once descriptors are back.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_out_of_descriptors_keeps_its_segment_and_loses_no_acknowledged_event() {
    let args = ["--shards", "1", "--idle-timeout", "300", "--segment-bytes", "4096"];
    let server = Jimbus::start_with_max_open_files(64, &args);
    // Opened before the flood, so the server holds it throughout.
    let mut writer = HttpConn::open(server.http);
    let flood: Vec<std::net::TcpStream> =
        (0..FLOOD).map(|_| std::net::TcpStream::connect(server.http).expect("the kernel queues it")).collect();
    crate::harness::wait_for(Duration::from_secs(30), "the process to run out of descriptors", || {
        metric_over(&mut writer, "jimbus_http_accept_failures_total") > 0.0
    });
    let batches = 20;
    for batch in 0..batches {
        writer.send(&request("POST", "/api/v1/events/batch", &batch_of_50(batch), &[]));
        let answer = writer.read_response();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["accepted"], 50);
    }
    drop(flood);
    crate::harness::wait_for(Duration::from_secs(30), "the server to serve again", || {
        server.post("/api/v1/events/batch", BATCH).status == 200
    });
    let delivered = server.read_all("balatro.fd.>", batches * 50).await;
    assert_eq!(delivered.len(), batches * 50, "every acknowledged event is delivered");
    let log = server.log_text();
    let warnings = log.matches("cannot start a new segment").count();
    assert_eq!(warnings, 1, "one warning for the run of failed rolls, not one per commit:\n{log}");
}

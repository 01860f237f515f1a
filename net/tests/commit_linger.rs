//! `--commit-linger-us`: once a commit has a request, the pump waits that
//! long for more before writing, so that requests arriving one after
//! another while its queue is shallow share one commit. The queue-depth
//! batch size alone is 1 there, which is where a linger is meant to gather.

mod harness;

use harness::{wait_for, Jimbus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest linger the server takes (the flag is clamped to 1 s).
const LINGER: Duration = Duration::from_secs(1);

fn batch(id: &str) -> Vec<u8> {
    format!(r#"{{"batch_id":"{id}","session_id":"linger","events":[{{"type":"HEARTBEAT","source":"BalatroMCP","payload":{{"n":1}}}}]}}"#)
        .into_bytes()
}

/// Posts one request, waits until the pump holds it, posts a second and
/// returns the server, whether the second was sent within the linger, and
/// the two answers' statuses.
fn second_request_during_the_linger() -> (Arc<Jimbus>, bool, u16, u16) {
    // A cap of two commands writes the commit as soon as the second joins, so
    // the test does not wait the linger out.
    let server = Arc::new(Jimbus::start(&[
        "--shards",
        "1",
        "--commit-linger-us",
        &LINGER.as_micros().to_string(),
        "--max-batch",
        "2",
    ]));
    let first = {
        let server = server.clone();
        std::thread::spawn(move || server.post("/api/v1/events/batch", &batch("first")).status)
    };
    // The pump sets the gauge when it takes a command off its queue.
    wait_for(Duration::from_secs(10), "the pump to take the first request", || {
        server.metric_if("jimbus_shard_queue_depth") == Some(1.0)
    });
    let taken = Instant::now();
    let second = server.post("/api/v1/events/batch", &batch("second")).status;
    let in_time = taken.elapsed() < LINGER;
    (server, in_time, first.join().unwrap(), second)
}

#[test]
fn a_request_that_arrives_during_the_linger_shares_the_commit() {
    // A machine that stalls for the whole linger between the two posts says
    // nothing either way; the experiment is then run again on a fresh server.
    for _ in 0..3 {
        let (server, in_time, first, second) = second_request_during_the_linger();
        assert_eq!((first, second), (200, 200));
        if !in_time {
            continue;
        }
        assert_eq!(server.metric("jimbus_log_commit_records_count"), 1.0, "one commit for both requests");
        assert_eq!(server.metric("jimbus_log_commit_records_sum"), 2.0, "each request's event in it");
        return;
    }
    panic!("the second request never reached the server within the linger of the first");
}

//! A retry that races its original: the same batch posted several times at
//! once, so that the copies meet in one group commit (a long commit linger
//! makes sure of it), is stored once, while identical events inside one
//! request are all kept.

mod harness;

use harness::Jimbus;
use std::sync::{Arc, Barrier};

const COPIES: usize = 4;

fn batch() -> Vec<u8> {
    let mut events: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type":"HEARTBEAT","event_id":"race-{i}","source":"BalatroMCP","payload":{{"n":{i}}}}}"#))
        .collect();
    // A retrigger can repeat the event before it byte for byte: both are kept.
    events.push(events[49].clone());
    format!(r#"{{"batch_id":"race","source":"BalatroMCP","events":[{}]}}"#, events.join(",")).into_bytes()
}

#[test]
fn copies_of_a_batch_in_one_commit_are_stored_once() {
    let server = Arc::new(Jimbus::start(&["--shards", "1", "--commit-linger-us", "300000"]));
    let body = Arc::new(batch());
    let barrier = Arc::new(Barrier::new(COPIES));
    let posts: Vec<_> = (0..COPIES)
        .map(|_| {
            let (server, body, barrier) = (server.clone(), body.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                server.post("/api/v1/events/batch", &body)
            })
        })
        .collect();
    let (mut accepted, mut duplicates) = (0, 0);
    for post in posts {
        let response = post.join().unwrap();
        assert_eq!(response.status, 200);
        let answer = response.json();
        accepted += answer["accepted"].as_u64().unwrap();
        duplicates += answer["duplicates"].as_u64().unwrap();
    }
    assert_eq!(accepted, 51, "one copy stored, its repeated event included");
    assert_eq!(duplicates, 51 * (COPIES as u64 - 1));
}

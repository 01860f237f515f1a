//! `--queue-capacity`: the commands a shard queues before the HTTP edge
//! refuses a request with 503 and `Retry-After`. Through the real binary, one
//! shard with room for one command: clients posting at once find it full,
//! and what the server stored afterwards is exactly what it acknowledged,
//! nothing of a refused request.

mod harness;

use harness::Jimbus;
use std::collections::BTreeSet;

/// Clients posting at once in each round.
const CLIENTS: usize = 16;
/// Events in each request.
const EVENTS: usize = 10;

/// The event ids of client `client`'s request in round `round`.
fn ids(round: usize, client: usize) -> Vec<String> {
    (0..EVENTS).map(|k| format!("q-{round}-{client}-{k}")).collect()
}

fn batch(ids: &[String]) -> Vec<u8> {
    let events: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"event_id":"{id}","type":"HEARTBEAT","source":"BalatroMCP","payload":{{"n":1}}}}"#))
        .collect();
    format!(r#"{{"session_id":"queue","events":[{}]}}"#, events.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_shard_queue_answers_503_and_stores_only_what_was_acknowledged() {
    let server = Jimbus::start(&["--shards", "1", "--queue-capacity", "1"]);
    let mut acknowledged = BTreeSet::new();
    let mut refused = None;
    // Rounds until one request finds the queue full: with room for one
    // command, the first round nearly always does.
    for round in 0..100 {
        let answers: Vec<_> = std::thread::scope(|scope| {
            let posts: Vec<_> = (0..CLIENTS)
                .map(|client| {
                    let server = &server;
                    scope.spawn(move || {
                        let ids = ids(round, client);
                        let answer = server.post("/api/v1/events/batch", &batch(&ids));
                        (ids, answer)
                    })
                })
                .collect();
            posts.into_iter().map(|post| post.join().expect("a client thread")).collect()
        });
        for (ids, answer) in answers {
            match answer.status {
                200 => {
                    assert_eq!(answer.json()["accepted"], EVENTS, "{}", answer.json());
                    acknowledged.extend(ids);
                }
                503 => refused = Some(answer),
                other => panic!("{other}: {}", String::from_utf8_lossy(&answer.body)),
            }
        }
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("no request of 100 rounds found a queue of one command full");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let error = refused.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("overloaded"), "{error}");
    // One more acknowledged event, after every other: what comes before it in
    // the session's log is what was stored.
    let marker = vec!["q-marker".to_string()];
    assert_eq!(server.post("/api/v1/events/batch", &batch(&marker)).status, 200);
    let stored = server.read_all("balatro.queue.>", acknowledged.len() + 1).await;
    let stored_ids: Vec<String> = stored
        .iter()
        .map(|delivery| match &delivery.body {
            Some(jimbus_proto::bus::subscribe_response::Body::Event(event)) => event.event_id.clone(),
            other => panic!("not an event: {other:?}"),
        })
        .collect();
    assert_eq!(stored_ids.last(), Some(&marker[0]), "a refused request's events were stored too");
    let before_marker: BTreeSet<String> = stored_ids[..stored_ids.len() - 1].iter().cloned().collect();
    assert_eq!(before_marker, acknowledged, "stored exactly what was acknowledged");
}

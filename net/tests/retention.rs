//! Retention through the real binary: old segments go by size and by age, but
//! never while a durable consumer still needs them.

mod harness;

use harness::Jimbus;
use jimbus_proto::bus;
use std::path::Path;
use std::time::Duration;

const SEGMENT: u64 = 4096;

fn batch(from: usize, n: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"event_id":"r-{i}","type":"MONEY_CHANGED","session_id":"keep","payload":{{"new_value":{i},"note":"{}"}}}}"#,
                "x".repeat(100)
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
}

/// Size of every segment file of shard 0.
fn segments(server: &Jimbus) -> Vec<u64> {
    let dir = server.data_dir.join("shard-000");
    let mut sizes: Vec<(String, u64)> = std::fs::read_dir(Path::new(&dir))
        .expect("shard dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("metadata").len()))
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, len)| len).collect()
}

fn post_events(server: &Jimbus, from: usize, n: usize) {
    for start in (from..from + n).step_by(20) {
        let response = server.post("/api/v1/events/batch", &batch(start, 20));
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    }
}

async fn first_offset(server: &Jimbus) -> u64 {
    server.read_all("balatro.>", 1).await.first().expect("a record survives").offset
}

async fn ack_all(server: &Jimbus, name: &str, count: usize) {
    let request = bus::SubscribeRequest {
        pattern: "balatro.>".into(),
        durable_name: name.into(),
        start: bus::StartPosition::Earliest as i32,
        max_in_flight: 10_000,
        ..Default::default()
    };
    let mut client = server.client().await;
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    let mut positions = Vec::new();
    while positions.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("deliveries keep coming")
            .expect("stream ok")
            .expect("stream open");
        positions.push(bus::AckPosition { partition: delivery.partition, offset: delivery.offset });
    }
    let acked = client.ack(bus::AckRequest { durable_name: name.into(), positions }).await.expect("ack");
    assert_eq!(acked.into_inner().acked as usize, count);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_retention_waits_for_the_durable_consumer_then_deletes_old_segments() {
    let limit = 3 * SEGMENT;
    let server = Jimbus::start(&[
        "--shards",
        "1",
        "--segment-bytes",
        &SEGMENT.to_string(),
        "--retention-bytes",
        &limit.to_string(),
    ]);
    // A consumer created before anything is written pins the whole log.
    ack_all(&server, "pinned", 0).await;
    post_events(&server, 0, 200);
    let before = segments(&server);
    assert!(before.iter().sum::<u64>() > 2 * limit, "the test must outgrow the limit: {before:?}");
    assert_eq!(first_offset(&server).await, 0, "unacked data was deleted");

    ack_all(&server, "pinned", 200).await;
    let after = segments(&server);
    assert!(after.len() < before.len(), "nothing was deleted: {before:?} -> {after:?}");
    assert!(after.iter().sum::<u64>() <= limit + SEGMENT, "still too big: {after:?}");
    let first = first_offset(&server).await;
    assert!(first > 0, "the oldest segment survived");
    let rest = server.read_all("balatro.>", 200 - first as usize).await;
    let offsets: Vec<u64> = rest.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, (first..200).collect::<Vec<_>>(), "what is kept is contiguous to the end");
}

#[tokio::test(flavor = "multi_thread")]
async fn age_retention_deletes_closed_segments_once_they_are_old() {
    let server = Jimbus::start(&["--shards", "1", "--segment-bytes", &SEGMENT.to_string(), "--retention-seconds", "1"]);
    post_events(&server, 0, 100);
    assert!(segments(&server).len() > 2);
    // Age is wall-clock by nature: poll for the effect, with a deadline.
    let within = Duration::from_secs(20);
    let deadline = std::time::Instant::now() + within;
    harness::wait_for(within, "closed segments to be deleted", || segments(&server).len() <= 1);
    assert_eq!(segments(&server).len(), 1, "only the active segment is left");
    // The server logs after it deletes, and its log reaches this process through
    // a reader thread: poll for the line too, within the same deadline.
    let rest = deadline.saturating_duration_since(std::time::Instant::now());
    harness::wait_for(rest, "the retention's log line", || server.log_text().contains("retention deleted segment"));
    assert!(server.log_text().contains("retention deleted segment"));
    // The log goes on from where it was; nothing new is lost.
    post_events(&server, 100, 20);
    let first = first_offset(&server).await;
    assert!(first > 0 && first <= 100, "first kept offset {first}");
}

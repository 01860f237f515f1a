//! What durable consumers keep on disk and in memory, through the real binary:
//! a consumer stuck on one unacknowledged record while it reads past thousands
//! of others keeps a few bytes of state, and an Ack appends a few bytes to the
//! journal instead of rewriting `consumers.json`; the `--max-durables` cap; the
//! `--durable-idle-expiry-seconds` rule; `consumers.json` files written by
//! earlier versions; and temporaries of a snapshot that failed or was cut short.

mod harness;

use harness::tmpfs::Tmpfs;
use harness::Jimbus;
use jimbus_proto::bus::{self, subscribe_response::Body};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Streaming;

fn batch(session: &str, from: usize, n: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"event_id":"{session}-{i}","type":"MONEY_CHANGED","session_id":"{session}","payload":{{"new_value":{i}}}}}"#
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
}

fn shard_dir(server: &Jimbus) -> PathBuf {
    server.data_dir.join("shard-000")
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn request(name: &str, pattern: &str, max_in_flight: u32) -> bus::SubscribeRequest {
    bus::SubscribeRequest {
        pattern: pattern.into(),
        durable_name: name.into(),
        start: bus::StartPosition::Earliest as i32,
        max_in_flight,
        ack_wait: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        ..Default::default()
    }
}

async fn subscribe(
    server: &Jimbus,
    name: &str,
    pattern: &str,
    max_in_flight: u32,
) -> Streaming<bus::SubscribeResponse> {
    let subscribed = server.client().await.subscribe(request(name, pattern, max_in_flight)).await;
    subscribed.unwrap_or_else(|e| panic!("subscribe {name}: {e}")).into_inner()
}

async fn next(stream: &mut Streaming<bus::SubscribeResponse>) -> bus::SubscribeResponse {
    let got = tokio::time::timeout(Duration::from_secs(20), stream.message()).await;
    got.expect("a delivery within 20 s").expect("the stream is healthy").expect("the stream goes on")
}

fn id(delivery: &bus::SubscribeResponse) -> String {
    match &delivery.body {
        Some(Body::Event(e)) => e.event_id.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

async fn ack(server: &Jimbus, name: &str, deliveries: &[&bus::SubscribeResponse]) -> u32 {
    let positions = deliveries.iter().map(|d| bus::AckPosition { partition: d.partition, offset: d.offset }).collect();
    let request = bus::AckRequest { durable_name: name.into(), positions };
    server.client().await.ack(request).await.expect("ack").into_inner().acked
}

/// The regression of issue 19, defect 2: one integer was kept per record read
/// past an unacknowledged one, and consumers.json was rewritten on every Ack.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_consumer_reading_past_many_records_keeps_a_few_bytes_of_state() {
    let mut server = Jimbus::start(&["--shards", "1"]);
    assert_eq!(server.post("/api/v1/events/batch", &batch("rare", 0, 1)).status, 200);
    let mut stuck = subscribe(&server, "stuck", "balatro.rare.MONEY_CHANGED", 2).await;
    let held = next(&mut stuck).await;
    assert_eq!(id(&held), "rare-0");
    let total = 20_000;
    for from in (0..total).step_by(2000) {
        assert_eq!(server.post("/api/v1/events/batch", &batch("bulk", from, 2000)).status, 200);
    }
    assert_eq!(server.post("/api/v1/events/batch", &batch("rare", 1, 1)).status, 200);
    // The consumer read past every bulk record to reach this one.
    let last = next(&mut stuck).await;
    assert_eq!(id(&last), "rare-1");

    let dir = shard_dir(&server);
    let snapshot_before = std::fs::read(dir.join("consumers.json")).unwrap();
    assert_eq!(ack(&server, "stuck", &[&last]).await, 1);
    let journal = size(&dir.join("consumers.journal"));
    assert!(journal > 0 && journal <= 64, "one ack appends one small journal entry, not {journal} bytes");
    assert_eq!(
        std::fs::read(dir.join("consumers.json")).unwrap(),
        snapshot_before,
        "an Ack does not rewrite the snapshot"
    );
    let ranges = server.metric("jimbus_consumer_state_ranges");
    assert!(ranges <= 1.0, "{total} records past the floor are kept as {ranges} ranges");

    // After a crash the journal is replayed: the held record comes back, the
    // acknowledged one does not, and the state is folded into a small snapshot.
    drop(stuck);
    server.kill9();
    server.restart();
    let mut again = subscribe(&server, "stuck", "balatro.rare.MONEY_CHANGED", 2).await;
    let redelivered = next(&mut again).await;
    assert_eq!((id(&redelivered), redelivered.offset), ("rare-0".to_string(), held.offset));
    assert_eq!(server.post("/api/v1/events/batch", &batch("rare", 2, 1)).status, 200);
    assert_eq!(id(&next(&mut again).await), "rare-2", "rare-1 was acknowledged before the crash");
    let state = size(&dir.join("consumers.json")) + size(&dir.join("consumers.journal"));
    assert!(state < 1024, "the consumer's whole state is {state} bytes after {total} records");
}

fn refused(result: Result<tonic::Response<Streaming<bus::SubscribeResponse>>, tonic::Status>) -> tonic::Status {
    match result {
        Ok(_) => panic!("a subscription past the cap was accepted"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_durable_name_past_max_durables_gets_resource_exhausted() {
    let mut server = Jimbus::start(&["--shards", "2", "--max-durables", "2"]);
    let a = subscribe(&server, "a", ">", 10).await;
    let b = subscribe(&server, "b", ">", 10).await;
    let status = refused(server.client().await.subscribe(request("c", ">", 10)).await);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-durables"), "the message names the limit: {}", status.message());
    drop(a);
    let _a_again = subscribe(&server, "a", ">", 10).await;
    // Names are counted from disk after a restart too.
    drop((b, _a_again));
    server.terminate();
    server.restart();
    let status = refused(server.client().await.subscribe(request("c", ">", 10)).await);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let _b_again = subscribe(&server, "b", ">", 10).await;
}

/// Polls `subscribe` for `name` until it is accepted (a name freed by expiry).
async fn subscribe_when_free(server: &Jimbus, name: &str) -> Streaming<bus::SubscribeResponse> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match server.client().await.subscribe(request(name, "balatro.>", 10)).await {
            Ok(stream) => return stream.into_inner(),
            Err(status) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{name} was never freed: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_consumer_expires_and_a_connected_one_does_not() {
    let server = Jimbus::start(&["--shards", "1", "--max-durables", "1", "--durable-idle-expiry-seconds", "1"]);
    assert_eq!(server.post("/api/v1/events/batch", &batch("s", 0, 3)).status, 200);
    let mut old = subscribe(&server, "old", "balatro.*.MONEY_CHANGED", 10).await;
    let got = [next(&mut old).await, next(&mut old).await, next(&mut old).await];
    assert_eq!(ack(&server, "old", &got.iter().collect::<Vec<_>>()).await, 3);
    // Connected, it outlives several expiry periods (the sweep runs every 100 ms).
    let connected_until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < connected_until {
        let status = refused(server.client().await.subscribe(request("new", ">", 10)).await);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "a connected consumer expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(old);
    let new = subscribe_when_free(&server, "new").await;
    // "new" is written to the snapshot after the sweep that removed "old".
    let snapshot = harness::wait_for_some(Duration::from_secs(20), "a snapshot with \"new\"", || {
        let text = std::fs::read_to_string(shard_dir(&server).join("consumers.json")).unwrap_or_default();
        text.contains("\"new\"").then_some(text)
    });
    assert!(!snapshot.contains("\"old\""), "an expired consumer leaves the snapshot: {snapshot}");
    // Once "new" expires too, "old" starts afresh: its acks went with it.
    drop(new);
    let mut reborn = subscribe_when_free(&server, "old").await;
    let first = next(&mut reborn).await;
    assert_eq!(id(&first), "s-0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumers_json_of_an_earlier_version_is_read_and_stray_temporaries_go() {
    let mut server = Jimbus::start(&["--shards", "1"]);
    assert_eq!(server.post("/api/v1/events/batch", &batch("s", 0, 6)).status, 200);
    let stored = server.read_all("balatro.*.MONEY_CHANGED", 6).await;
    let offsets: Vec<u64> = stored.iter().map(|d| d.offset).collect();
    server.terminate();
    let dir = shard_dir(&server);
    // As written before ack ranges: a floor and one offset per acked record above it.
    let old = format!(
        r#"{{"legacy":{{"pattern":"balatro.*.MONEY_CHANGED","ack_floor":{},"acked":[{}],"options":{{"max_in_flight":10,"ack_wait_ms":600000,"max_deliver":5}}}}}}"#,
        offsets[2], offsets[4]
    );
    std::fs::write(dir.join("consumers.json"), old).unwrap();
    let _ = std::fs::remove_file(dir.join("consumers.journal"));
    for stray in ["consumers.tmp3", "consumers.tmp12"] {
        std::fs::write(dir.join(stray), b"{\"half\":").unwrap();
    }
    server.restart();
    for stray in ["consumers.tmp3", "consumers.tmp12"] {
        assert!(!dir.join(stray).exists(), "{stray} is left behind");
    }
    let mut legacy = subscribe(&server, "legacy", "balatro.*.MONEY_CHANGED", 10).await;
    let got = [next(&mut legacy).await, next(&mut legacy).await, next(&mut legacy).await];
    let ids: Vec<String> = got.iter().map(id).collect();
    assert_eq!(ids, ["s-2", "s-3", "s-5"], "what the old file acknowledged is not delivered again");
    assert_eq!(ack(&server, "legacy", &got.iter().collect::<Vec<_>>()).await, 3);
    server.terminate();
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("consumers.json")).unwrap()).unwrap();
    assert!(snapshot["legacy"]["ack_floor"].as_u64().unwrap() > offsets[5], "{snapshot}");
    assert_eq!(snapshot["legacy"]["acked"], serde_json::json!([]), "older binaries can still read it");
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.write_all(&[0]);
}

fn temporaries(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names.filter(|n| n.starts_with("consumers.tmp")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_that_fails_on_a_full_disk_leaves_no_temporary_file() {
    let disk = Tmpfs::mount(4 << 20);
    let server = Jimbus::start_in(disk.dir.join("data"), &["--shards", "1"]);
    let dir = shard_dir(&server);
    let filler = disk.dir.join("filler");
    fill(&filler);
    // Creating a consumer writes a snapshot, which fails.
    let _late = subscribe(&server, "late", ">", 10).await;
    let failed = || server.log_text().contains("cannot persist the durable consumers").then_some(());
    harness::wait_for_some(Duration::from_secs(20), "the failed snapshot's log line", failed);
    assert_eq!(temporaries(&dir), Vec::<String>::new(), "a failed snapshot left its temporary file");
    std::fs::remove_file(&filler).unwrap();
    let _later = subscribe(&server, "later", ">", 10).await;
    let snapshot = harness::wait_for_some(Duration::from_secs(20), "a snapshot with \"later\"", || {
        let text = std::fs::read_to_string(dir.join("consumers.json")).unwrap_or_default();
        text.contains("\"later\"").then_some(text)
    });
    assert!(snapshot.contains("\"late\""), "once space is back every consumer is written: {snapshot}");
}

//! A full disk through the real binary: the log lives on a small tmpfs; when it
//! fills, ingest answers 507 (Insufficient Storage) with `Retry-After`, a gRPC
//! publish RESOURCE_EXHAUSTED, and neither acknowledges anything it did not
//! store; when space returns, the same requests succeed and nothing
//! acknowledged before is lost. Mounting needs root (or CAP_SYS_ADMIN), which
//! CI has; the test says so plainly if it is missing.

mod harness;

use harness::tmpfs::Tmpfs;
use harness::{event_ids, Jimbus};
use jimbus_proto::bus;
use jimbus_proto::events as pb;

const TMPFS_BYTES: u64 = 1 << 20;

fn batch(from: usize, n: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"event_id":"d-{i}","type":"GAME_STATE","session_id":"disk","payload":{{"money":{i},"note":"{}"}}}}"#,
                "y".repeat(200)
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_507_loses_nothing_and_recovers_when_space_returns() {
    let disk = Tmpfs::mount(TMPFS_BYTES);
    let data = disk.dir.join("data");
    let server = Jimbus::start_in(data.clone(), &["--shards", "1", "--segment-bytes", "65536"]);
    let filler = disk.fill_leaving(64 * 1024);

    let mut acked = 0;
    let refused = loop {
        let response = server.post("/api/v1/events/batch", &batch(acked, 20));
        match response.status {
            200 => acked += 20,
            507 => break response,
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&response.body)),
        }
        assert!(acked < 10_000, "the disk never filled");
    };
    assert!(acked > 0, "some events fit before the disk filled");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"].as_str().unwrap().contains("no space left"), "{}", refused.json());
    // Still full: still refused, on both edges, and the server is up; the
    // refusals are logged once a second, not once each.
    for _ in 0..10 {
        assert_eq!(server.post("/api/v1/events/batch", &batch(acked, 20)).status, 507);
    }
    let log = server.log_text();
    for line in ["append failed", "commit failed"] {
        let lines = log.matches(line).count();
        assert!((1..=3).contains(&lines), "{lines} `{line}` lines for 11 refused requests");
    }
    let mut client = server.client().await;
    // Larger than the refused batch, so it cannot fit where that did not.
    let event = pb::Event {
        event_type: "HEARTBEAT".into(),
        session_id: "disk".into(),
        source: "z".repeat(120),
        payload: Some(pb::event::Payload::Heartbeat(Default::default())),
        ..Default::default()
    };
    let status = client.publish(bus::PublishRequest { events: vec![event; 100] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(server.get("/health").status, 200);

    std::fs::remove_file(&filler).unwrap();
    let retried = server.post("/api/v1/events/batch", &batch(acked, 20));
    assert_eq!(retried.status, 200, "{}", String::from_utf8_lossy(&retried.body));
    assert_eq!(retried.json()["accepted"], 20, "the refused batch was not stored before");
    let total = acked + 20;
    let stored = server.read_all("balatro.disk.>", total).await;
    assert_eq!(event_ids(&stored), (0..total).map(|i| format!("d-{i}")).collect::<Vec<_>>());
    drop(server);
}

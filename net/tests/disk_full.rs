//! A full disk through the real binary: the log lives on a small tmpfs; when it
//! fills, ingest answers 507 (Insufficient Storage) with `Retry-After`, a gRPC
//! publish RESOURCE_EXHAUSTED, and neither acknowledges anything it did not
//! store; when space returns, the same requests succeed and nothing
//! acknowledged before is lost. Mounting needs root (or CAP_SYS_ADMIN), which
//! CI has; the test says so plainly if it is missing.

mod harness;

use harness::tmpfs::Tmpfs;
use harness::{event_ids, event_of, Jimbus};
use jimbus_proto::bus;
use jimbus_proto::events as pb;
use std::collections::{BTreeMap, BTreeSet};

const TMPFS_BYTES: u64 = 1 << 20;

fn batch(from: usize, n: usize) -> Vec<u8> {
    let ids: Vec<String> = (from..from + n).map(|i| format!("d-{i}")).collect();
    batch_of(&ids, "disk")
}

/// A batch of one `GAME_STATE` event per id, in `session`, of about 300 bytes each.
fn batch_of(ids: &[String], session: &str) -> Vec<u8> {
    let events: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"event_id":"{id}","type":"GAME_STATE","session_id":"{session}","payload":{{"money":1,"note":"{}"}}}}"#,
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

/// Clients that post at once, four to a session, while the disk fills: their
/// requests share commits, and a failed commit must refuse each of them and
/// hand out its offsets and sequences again. Each client retries what was
/// refused once space returns. Then every acknowledged event is stored
/// exactly once, each client's events in the order it sent them, and each
/// session's sequences run from 1 with no gap.
#[tokio::test(flavor = "multi_thread")]
async fn clients_at_once_on_a_full_disk_store_each_event_once_with_no_gap() {
    const CLIENTS: usize = 8;
    let disk = Tmpfs::mount(TMPFS_BYTES);
    let server = Jimbus::start_in(disk.dir.join("data"), &["--shards", "1", "--segment-bytes", "65536"]);
    let filler = disk.fill_leaving(64 * 1024);
    let session = |client: usize| format!("s{}", client % 2);
    let ids =
        |client: usize, round: usize| -> Vec<String> { (0..10).map(|i| format!("c{client}-{round}-{i}")).collect() };
    // Each client posts until it has been refused three times running; the
    // batch refused last is its first retry.
    let rounds: Vec<usize> = std::thread::scope(|scope| {
        let posting: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let server = &server;
                scope.spawn(move || {
                    let (mut round, mut refused) = (0, 0);
                    while refused < 3 {
                        match server
                            .post("/api/v1/events/batch", &batch_of(&ids(client, round), &session(client)))
                            .status
                        {
                            200 => (round, refused) = (round + 1, 0),
                            507 => refused += 1,
                            other => panic!("unexpected {other}"),
                        }
                        assert!(round < 1000, "the disk never filled");
                    }
                    round
                })
            })
            .collect();
        posting.into_iter().map(|client| client.join().unwrap()).collect()
    });
    std::fs::remove_file(&filler).unwrap();
    let mut expected: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (client, &round) in rounds.iter().enumerate() {
        let response = server.post("/api/v1/events/batch", &batch_of(&ids(client, round), &session(client)));
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.json()["accepted"], 10, "the refused batch was not stored before");
        expected.insert(client, (0..=round).flat_map(|round| ids(client, round)).collect());
    }
    let total: usize = expected.values().map(Vec::len).sum();
    // A last event, so that reading up to it shows there is nothing else.
    assert_eq!(server.post("/api/v1/events/batch", &batch_of(&["end".into()], "end")).status, 200);
    let mut stored = server.read_all("balatro.>", total + 1).await;
    assert_eq!(stored.pop().map(|last| event_of(&last).event_id.clone()).as_deref(), Some("end"));
    assert_eq!(stored.len(), total, "every acknowledged event once, and nothing else");
    let stored_ids = event_ids(&stored);
    let unique: BTreeSet<&String> = stored_ids.iter().collect();
    assert_eq!(unique.len(), total, "no event twice");
    for (client, ids) in &expected {
        let prefix = format!("c{client}-");
        let theirs: Vec<String> = stored_ids.iter().filter(|id| id.starts_with(&prefix)).cloned().collect();
        assert_eq!(&theirs, ids, "client {client}'s events, in the order it sent them");
    }
    for session in ["s0", "s1"] {
        let sequences: Vec<u64> =
            stored.iter().map(event_of).filter(|e| e.session_id == session).map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>(), "{session}'s sequences");
    }
}

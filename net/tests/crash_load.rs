//! SIGKILL under load: publishers stream batches over keep-alive connections
//! and record every acknowledged event id while the server is killed at random
//! moments and restarted. Afterwards every acknowledged id is stored exactly
//! once, in per-session order, and a durable consumer has seen all of them.

mod harness;

use harness::{request, HttpConn, Jimbus};
use jimbus_proto::bus::{self, subscribe_response::Body};
use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PUBLISHERS: usize = 3;
const BATCH: usize = 25;
const KILLS: usize = 3;

/// Shared by the publishers and the test.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<String>>,
    count: AtomicUsize,
    stop: AtomicBool,
}

fn batch(publisher: usize, first: usize) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (first..first + BATCH).map(|i| format!("p{publisher}-{i}")).collect();
    let events: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| {
            format!(
                r#"{{"event_id":"{id}","type":"SCORE_CHANGED","session_id":"load-{publisher}","payload":{{"new_value":{}}}}}"#,
                first + k
            )
        })
        .collect();
    (ids, format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes())
}

fn connect(addr: SocketAddr) -> Option<HttpConn> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    Some(HttpConn { reader: BufReader::new(stream) })
}

/// Posts one batch until the server acknowledges it (retrying the same ids
/// across crashes, as a mod does), then records its ids.
fn publish(addr: SocketAddr, publisher: usize, ledger: &Ledger) {
    let mut conn = None;
    let mut first = 0;
    while !ledger.stop.load(Ordering::Relaxed) {
        let (ids, body) = batch(publisher, first);
        if conn.is_none() {
            conn = connect(addr);
        }
        let Some(c) = conn.as_mut() else {
            // The server is down: back off briefly before reconnecting.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        // A kill can land between connecting and writing: a refused write is
        // a connection to remake, like a missing answer.
        use std::io::Write;
        if c.reader.get_mut().write_all(&request("POST", "/api/v1/events/batch", &body, &[])).is_err() {
            conn = None;
            continue;
        }
        match c.try_read_response() {
            Some(response) if response.status == 200 => {
                let answer = response.json();
                let counted = answer["accepted"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap();
                assert_eq!(counted, BATCH as u64, "{answer}");
                ledger.acked.lock().unwrap().extend(ids);
                ledger.count.fetch_add(BATCH, Ordering::SeqCst);
                first += BATCH;
            }
            Some(response) => panic!("unexpected status {}", response.status),
            None => conn = None,
        }
    }
}

/// A small xorshift, seeded from the clock so each run kills at other moments.
fn random_steps(seed: u64, n: usize) -> Vec<usize> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            100 + (x % 900) as usize
        })
        .collect()
}

fn wait_for_acks(ledger: &Ledger, at_least: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ledger.count.load(Ordering::SeqCst) < at_least {
        assert!(std::time::Instant::now() < deadline, "publishers stalled at {}", ledger.count.load(Ordering::SeqCst));
        std::thread::yield_now();
    }
}

fn event_of(delivery: &bus::SubscribeResponse) -> &jimbus_proto::events::Event {
    match &delivery.body {
        Some(Body::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    // A linger makes commits gather more requests, so a kill lands among more of them.
    let mut server = Jimbus::start(&["--shards", "2", "--commit-linger-us", "500"]);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let ledger = Arc::new(Ledger::default());
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (ledger, addr) = (ledger.clone(), server.http);
            std::thread::spawn(move || publish(addr, p, &ledger))
        })
        .collect();
    let mut target = 0;
    for step in random_steps(seed, KILLS) {
        target += step;
        wait_for_acks(&ledger, target);
        server.kill9();
        server.restart();
    }
    wait_for_acks(&ledger, target + 200);
    ledger.stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.join().expect("publisher");
    }

    let acked = ledger.acked.lock().unwrap().clone();
    let stored = server.read_all("balatro.>", acked.len()).await;
    let ids: Vec<&str> = stored.iter().map(|d| event_of(d).event_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was stored twice");
    for id in &acked {
        assert!(unique.contains(id.as_str()), "acknowledged {id} is lost (seed {seed})");
    }
    // Per session, the stored order is the publish order and sequences rise by one.
    let mut per_session: HashMap<&str, Vec<&jimbus_proto::events::Event>> = HashMap::new();
    for d in &stored {
        let e = event_of(d);
        per_session.entry(e.session_id.as_str()).or_default().push(e);
    }
    for (session, events) in per_session {
        let numbers: Vec<usize> =
            events.iter().map(|e| e.event_id.rsplit('-').next().unwrap().parse().unwrap()).collect();
        assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>(), "{session} out of order (seed {seed})");
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>(), "{session} sequences");
    }
}

/// Reads the durable consumer "trainer", acking every 100 deliveries (its max
/// in flight holds back the rest), until `done(seen)`. Fails on a redelivery of
/// something already acknowledged, and on a stall.
async fn consume(server: &Jimbus, seen: &mut HashSet<String>, done: impl Fn(&HashSet<String>) -> bool) {
    let mut client = server.client().await;
    let request = bus::SubscribeRequest {
        pattern: "balatro.>".into(),
        durable_name: "trainer".into(),
        start: bus::StartPosition::Earliest as i32,
        max_in_flight: 1000,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    let mut positions = Vec::new();
    while !done(seen) {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a gap: the consumer stopped receiving")
            .expect("stream ok")
            .expect("stream open");
        assert!(seen.insert(event_of(&d).event_id.clone()), "an acknowledged event came back");
        positions.push(bus::AckPosition { partition: d.partition, offset: d.offset });
        if positions.len() == 100 || done(seen) {
            let request = bus::AckRequest { durable_name: "trainer".into(), positions: std::mem::take(&mut positions) };
            client.ack(request).await.expect("ack");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_consumer_resumes_without_a_gap_across_sigkills() {
    let mut server = Jimbus::start(&["--shards", "2"]);
    let ledger = Arc::new(Ledger::default());
    let (l, addr) = (ledger.clone(), server.http);
    let publisher = std::thread::spawn(move || publish(addr, 0, &l));
    let mut seen: HashSet<String> = HashSet::new();
    for round in 0..KILLS {
        wait_for_acks(&ledger, (round + 1) * 300);
        // Consume and ack what is there now, then crash the server.
        let want = ledger.count.load(Ordering::SeqCst);
        consume(&server, &mut seen, |seen| seen.len() >= want).await;
        server.kill9();
        server.restart();
    }
    ledger.stop.store(true, Ordering::SeqCst);
    publisher.join().expect("publisher");
    let acked: HashSet<String> = ledger.acked.lock().unwrap().iter().cloned().collect();
    // The consumer gets everything it has not acknowledged, and nothing it has.
    consume(&server, &mut seen, |seen| acked.iter().all(|id| seen.contains(id))).await;
}

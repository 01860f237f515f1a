//! The durable-subscription cases, run on every bus backend (durable.rs: the
//! embedded log; jetstream.rs: NATS JetStream): resume after a crash at the last
//! acknowledgement, redelivery after the ack deadline, dead-letter after
//! `max_deliver`, flow control by `max_in_flight`, consumer groups, and a
//! leaving member's unacknowledged deliveries given back to the group.

use crate::harness::Jimbus;
use jimbus_proto::bus::{self, subscribe_response::Body};
use std::time::Duration;
use tonic::Streaming;

fn batch(from: usize, n: usize) -> Vec<u8> {
    let events: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"event_id":"e-{i}","type":"MONEY_CHANGED","session_id":"s{}","payload":{{"new_value":{i}}}}}"#,
                i % 3
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes()
}

fn id(delivery: &bus::SubscribeResponse) -> String {
    match &delivery.body {
        Some(Body::Event(e)) => e.event_id.clone(),
        Some(Body::DeadLetter(d)) => format!("dead:{}", d.reason),
        _ => panic!("unexpected body"),
    }
}

async fn durable(
    server: &Jimbus,
    name: &str,
    max_in_flight: u32,
    ack_wait_ms: u64,
    max_deliver: u32,
) -> Streaming<bus::SubscribeResponse> {
    let request = bus::SubscribeRequest {
        pattern: "balatro.>".into(),
        durable_name: name.into(),
        start: bus::StartPosition::Earliest as i32,
        max_in_flight,
        ack_wait: Some(prost_types::Duration {
            seconds: (ack_wait_ms / 1000) as i64,
            nanos: ((ack_wait_ms % 1000) * 1_000_000) as i32,
        }),
        max_deliver,
        ..Default::default()
    };
    server.client().await.subscribe(request).await.expect("subscribe").into_inner()
}

async fn next(stream: &mut Streaming<bus::SubscribeResponse>) -> Option<bus::SubscribeResponse> {
    tokio::time::timeout(Duration::from_secs(20), stream.message()).await.ok()?.ok()?
}

async fn ack(server: &Jimbus, name: &str, deliveries: &[bus::SubscribeResponse]) -> u32 {
    let positions = deliveries.iter().map(|d| bus::AckPosition { partition: d.partition, offset: d.offset }).collect();
    let request = bus::AckRequest { durable_name: name.into(), positions };
    server.client().await.ack(request).await.expect("ack").into_inner().acked
}

fn sorted_ids(deliveries: &[bus::SubscribeResponse]) -> Vec<String> {
    let mut ids: Vec<String> = deliveries.iter().map(id).collect();
    ids.sort();
    ids
}

/// `ack_wait_ms`: what the bus holds a delivery before it may redeliver it
/// (JetStream redelivers what a killed node handed out only after it).
pub async fn a_durable_consumer_resumes_after_sigkill_at_its_last_ack(server: &mut Jimbus, ack_wait_ms: u64) {
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 12)).json()["accepted"], 12);
    let mut stream = durable(server, "trainer", 100, ack_wait_ms, 5).await;
    let mut got = Vec::new();
    while got.len() < 12 {
        got.push(next(&mut stream).await.expect("delivery"));
    }
    assert_eq!(sorted_ids(&got).len(), 12);
    let (done, left) = got.split_at(7);
    assert_eq!(ack(server, "trainer", done).await, 7);
    drop(stream);
    server.kill9();
    server.restart();
    let mut stream = durable(server, "trainer", 100, ack_wait_ms, 5).await;
    let mut again = Vec::new();
    while again.len() < left.len() {
        again.push(next(&mut stream).await.expect("redelivery after restart"));
    }
    assert_eq!(sorted_ids(&again), sorted_ids(left), "exactly the unacknowledged events come back");
    assert_eq!(ack(server, "trainer", &again).await, 5);
    // New events after the restart reach the same consumer.
    assert_eq!(server.post("/api/v1/events/batch", &batch(12, 1)).json()["accepted"], 1);
    assert_eq!(id(&next(&mut stream).await.unwrap()), "e-12");
}

pub async fn unacked_deliveries_come_back_then_go_to_the_dead_letter_topic(server: &Jimbus) {
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 1)).status, 200);
    let mut stream = durable(server, "lazy", 10, 200, 2).await;
    let first = next(&mut stream).await.unwrap();
    assert_eq!((id(&first), first.delivery_count), ("e-0".to_string(), 1));
    let second = next(&mut stream).await.unwrap();
    assert_eq!((id(&second), second.delivery_count, second.offset), ("e-0".to_string(), 2, first.offset));
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!() };
    assert!(letter.reason.contains("\"lazy\": delivered 2 times"), "{}", letter.reason);
    assert_eq!(letter.origin, "balatro.s0.MONEY_CHANGED");
    assert_eq!(ack(server, "lazy", &[second]).await, 0, "a dead-lettered delivery is no longer pending");
}

pub async fn max_in_flight_holds_back_deliveries_until_acks_arrive(server: &Jimbus) {
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 6)).status, 200);
    let mut stream = durable(server, "slow", 2, 60_000, 5).await;
    let a = next(&mut stream).await.unwrap();
    let b = next(&mut stream).await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(held.is_err(), "a third delivery arrived with two unacknowledged: {held:?}");
    assert_eq!(ack(server, "slow", &[a]).await, 1);
    let c = next(&mut stream).await.unwrap();
    assert_eq!(id(&c), "e-2");
    assert_eq!(ack(server, "slow", &[b, c]).await, 2);
}

pub async fn a_consumer_group_shares_the_events(server: &Jimbus) {
    let mut one = durable(server, "group", 4, 60_000, 5).await;
    let mut two = durable(server, "group", 4, 60_000, 5).await;
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 30)).json()["accepted"], 30);
    let (mut from_one, mut from_two) = (Vec::new(), Vec::new());
    while from_one.len() + from_two.len() < 30 {
        tokio::select! {
            Some(d) = next(&mut one) => { ack(server, "group", std::slice::from_ref(&d)).await; from_one.push(d); }
            Some(d) = next(&mut two) => { ack(server, "group", std::slice::from_ref(&d)).await; from_two.push(d); }
        }
    }
    assert!(!from_one.is_empty() && !from_two.is_empty(), "{} / {}", from_one.len(), from_two.len());
    let mut all = from_one;
    all.extend(from_two);
    let ids = sorted_ids(&all);
    let mut want: Vec<String> = (0..30).map(|i| format!("e-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every event exactly once across the group");
}

/// A subscriber that stops reading is paused (the bus waits on its bounded
/// channel and on HTTP/2 flow control), never buffered without bound, and
/// ingest goes on; when it reads again it catches up with everything, in order.
pub async fn a_paused_slow_subscriber_catches_up_in_order(server: &Jimbus) {
    let request = bus::SubscribeRequest {
        pattern: "balatro.s0.> -balatro.*.aggregated".into(),
        start: bus::StartPosition::Earliest as i32,
        ..Default::default()
    };
    let mut stream = server.client().await.subscribe(request).await.expect("subscribe").into_inner();
    // Far more than the subscriber's channel (1024) and the HTTP/2 windows hold.
    let total = 15_000;
    for from in (0..total).step_by(500) {
        let response = server.post("/api/v1/events/batch", &batch(from, 500));
        assert_eq!(response.status, 200, "ingest goes on while the subscriber sleeps");
    }
    let mut ids = Vec::new();
    while ids.len() < total / 3 {
        ids.push(id(&next(&mut stream).await.expect("the paused subscriber catches up")));
    }
    let expected: Vec<String> = (0..total).filter(|i| i % 3 == 0).map(|i| format!("e-{i}")).collect();
    assert_eq!(ids, expected);
}

/// A member that leaves with deliveries it never acknowledged gives them back
/// to the group at once: with a ten-minute ack wait, only that give-back can
/// bring them to the member that stayed within `next`'s 20 s.
pub async fn a_member_that_leaves_gives_its_unacked_deliveries_to_the_group(server: &Jimbus) {
    assert_eq!(server.post("/api/v1/events/batch", &batch(0, 3)).status, 200);
    let mut leaving = durable(server, "hand", 3, 600_000, 5).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut leaving).await.expect("delivered to the first member"));
    }
    let mut staying = durable(server, "hand", 3, 600_000, 5).await;
    drop(leaving);
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(next(&mut staying).await.expect("given back to the member that stayed"));
    }
    assert_eq!(sorted_ids(&again), sorted_ids(&held));
    assert!(
        again.iter().all(|d| d.delivery_count == 2),
        "{:?}",
        again.iter().map(|d| d.delivery_count).collect::<Vec<_>>()
    );
    assert_eq!(ack(server, "hand", &again).await, 3);
}

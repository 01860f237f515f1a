//! The compat cases, run on every bus backend (compat.rs: the embedded log;
//! jetstream.rs: NATS JetStream): every compat fixture, posted as the field mod
//! posts it, is answered 2xx and reaches a gRPC subscriber in order with its
//! values intact; retries are deduplicated.

use crate::harness::{fixture_path, fixtures, request, HttpConn, Jimbus};
use jimbus_proto::bus::subscribe_response::Body;
use jimbus_proto::events::event::Payload;
use jimbus_proto::events::{self as pb};

fn events_in(name: &str, body: &[u8]) -> usize {
    if name.starts_with("health_") {
        0
    } else if name.starts_with("batch_") {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        value["events"].as_array().map_or_else(|| count_events_lenient(body), Vec::len)
    } else {
        1
    }
}

/// Batches with non-finite tokens are not strict JSON: count top-level event objects.
fn count_events_lenient(body: &[u8]) -> usize {
    String::from_utf8_lossy(body).matches("\"event_id\"").count()
}

fn event(delivery: &jimbus_proto::bus::SubscribeResponse) -> &pb::Event {
    match &delivery.body {
        Some(Body::Event(e)) => e,
        other => panic!("not an event: {other:?}"),
    }
}

pub async fn every_fixture_is_accepted_and_delivered_in_order(server: &Jimbus) {
    let mut expected = Vec::new();
    for (i, (name, body)) in fixtures().iter().enumerate() {
        let request_id = format!("fixture-{i}");
        let mut conn = HttpConn::open(server.http);
        conn.send(&request("POST", fixture_path(name), body, &[("X-Request-Id", &request_id)]));
        let response = conn.read_response();
        assert!(
            (200..300).contains(&response.status),
            "{name}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        let n = events_in(name, body);
        if !name.starts_with("health_") {
            let answer = response.json();
            assert_eq!(answer["accepted"], n, "{name}: {answer}");
            assert_eq!(answer["rejected"].as_array().unwrap().len(), 0, "{name}");
        }
        expected.extend(std::iter::repeat_n((name.clone(), request_id), n));
    }
    let deliveries = server.read_all("balatro.>", expected.len()).await;
    assert_eq!(deliveries.len(), expected.len(), "log:\n{}", server.log_text());
    let mut last_sequence = 0;
    for (delivery, (name, request_id)) in deliveries.iter().zip(&expected) {
        let e = event(delivery);
        assert_eq!(&e.correlation_id, request_id, "{name}: deliveries out of order");
        assert_eq!(e.session_id, "127.0.0.1-BalatroMCP", "{name}");
        assert!(e.sequence > last_sequence, "{name}: sequence {} after {last_sequence}", e.sequence);
        last_sequence = e.sequence;
        let timing = e.timing.as_ref().unwrap();
        assert!(timing.received_at.is_some() && timing.published_at.is_some(), "{name}");
    }
    let by_name =
        |name: &str| deliveries.iter().zip(&expected).find(|(_, (n, _))| n == name).map(|(d, _)| event(d)).unwrap();
    let Some(Payload::ScoreChanged(score)) = &by_name("quirk_inf_score.json").payload else { panic!() };
    assert_eq!(score.new_chips, f64::INFINITY);
    assert_eq!(score.old_chips, 1e308);
    let Some(Payload::Error(error)) = &by_name("quirk_control_chars.json").payload else { panic!() };
    assert_eq!(error.message, "bell\u{7} backspace\u{8} formfeed\u{c} soh\u{1} esc\u{1b} end");
    let connection = by_name("single_connection_test.json");
    assert_eq!(connection.payload_field, pb::PayloadField::Data as i32);
    assert!(
        matches!(&connection.payload, Some(Payload::ConnectionTest(c)) if c.message == "Testing event bus connection")
    );
    let float_clock = by_name("quirk_float_timestamp.json").timing.unwrap();
    assert_eq!(float_clock.client_timestamp_ms, 5.695104598999);
    assert_eq!(float_clock.client_clock, pb::ClientClock::GameMs as i32);
}

pub async fn a_retried_batch_is_acknowledged_but_stored_once(server: &Jimbus) {
    let body = std::fs::read(format!("{}/batch_cascade50.json", crate::harness::FIXTURES)).unwrap();
    let first = server.post("/api/v1/events/batch", &body).json();
    assert_eq!((first["accepted"].as_u64(), first["duplicates"].as_u64()), (Some(50), Some(0)));
    let retry = server.post("/api/v1/events/batch", &body).json();
    assert_eq!((retry["accepted"].as_u64(), retry["duplicates"].as_u64()), (Some(0), Some(50)));
    // A marker after the retry: when it arrives, everything before it has too.
    server.post("/api/v1/events", br#"{"type":"HEARTBEAT","source":"BalatroMCP"}"#);
    let deliveries = server.read_all("balatro.>", 51).await;
    assert_eq!(deliveries.len(), 51);
    assert_eq!(event(&deliveries[50]).event_type, "HEARTBEAT", "the retry was stored again");
}

/// A subscriber of every event (`balatro.>`) never receives a dead letter,
/// though dead letters share the bus (JetStream: the stream, whose consumer
/// for `balatro.>` has no subject filter, so the pattern check drops them).
pub async fn a_subscriber_of_every_event_never_receives_a_dead_letter(server: &Jimbus) {
    let body = br#"{"source":"BalatroMCP","events":[{"type":"HEARTBEAT","event_id":"a"},{"type":"ROUND_CHANGED","payload":{"round":{}}},{"type":"HEARTBEAT","event_id":"b"}]}"#;
    assert_eq!(server.post("/api/v1/events/batch", body).json()["accepted"], 2);
    assert_eq!(server.read_all("deadletter", 1).await.len(), 1, "the bad event is a dead letter");
    // A marker after the dead letter: the first three deliveries are a, b and it.
    server.post("/api/v1/events", br#"{"type":"HEARTBEAT","source":"BalatroMCP","event_id":"c"}"#);
    let deliveries = server.read_all("balatro.>", 3).await;
    let topics: Vec<&str> = deliveries.iter().map(|d| d.topic.as_str()).collect();
    assert!(!topics.contains(&"deadletter"), "{topics:?}");
    let ids: Vec<&str> = deliveries.iter().map(|d| event(d).event_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    // `>` takes everything, dead letters included.
    let everything = server.read_all(">", 4).await;
    assert!(
        everything.iter().any(|d| d.topic == "deadletter"),
        "{:?}",
        everything.iter().map(|d| &d.topic).collect::<Vec<_>>()
    );
}

/// `dense`: the bus numbers each session 1, 2, 3… (the embedded log); otherwise
/// (JetStream: the stream sequence) the numbers only increase.
pub async fn explicit_session_ids_win_and_sessions_keep_their_own_order(server: &Jimbus, dense: bool) {
    for i in 0..20 {
        let session = format!("mcp-{}", i % 4);
        let body = format!(
            r#"{{"type":"MONEY_CHANGED","session_id":"{session}","sequence":{i},"payload":{{"new_value":{i}}}}}"#
        );
        assert_eq!(server.post("/api/v1/events", body.as_bytes()).status, 200);
    }
    let deliveries = server.read_all("balatro.*.MONEY_CHANGED", 20).await;
    assert_eq!(deliveries.len(), 20);
    for session in 0..4 {
        let name = format!("mcp-{session}");
        let values: Vec<f64> = deliveries
            .iter()
            .map(event)
            .filter(|e| e.session_id == name)
            .map(|e| match &e.payload {
                Some(Payload::MoneyChanged(m)) => m.new_value,
                _ => panic!(),
            })
            .collect();
        let want: Vec<f64> = (0..20).filter(|i| i % 4 == session).map(|i| i as f64).collect();
        assert_eq!(values, want, "session {name} out of order");
        let sequences: Vec<u64> =
            deliveries.iter().map(event).filter(|e| e.session_id == name).map(|e| e.sequence).collect();
        if dense {
            assert_eq!(sequences, vec![1, 2, 3, 4, 5]);
        } else {
            assert!(sequences.windows(2).all(|w| w[0] < w[1]), "session {name}: sequences {sequences:?}");
        }
    }
}

/// One PublishBatch stream of 30 requests, each holding events of two
/// sessions and one invalid event: every valid event is accepted, the invalid
/// ones are named by their index in the whole stream, and each session's events
/// arrive in the order they were streamed, however many requests were in flight.
pub async fn a_publish_batch_stream_keeps_each_sessions_order(server: &Jimbus) {
    use jimbus_proto::bus::PublishBatchRequest;
    const REQUESTS: usize = 30;
    const PER_REQUEST: usize = 20;
    let mut requests = Vec::new();
    let mut invalid = Vec::new();
    for r in 0..REQUESTS {
        let events = (0..PER_REQUEST)
            .map(|k| {
                let n = r * PER_REQUEST + k;
                let session = if k == 7 { String::new() } else { format!("pb-{}", n % 2) };
                if session.is_empty() {
                    invalid.push(n as u32);
                }
                pb::Event {
                    event_id: format!("pb-{n}"),
                    event_type: "MONEY_CHANGED".into(),
                    session_id: session,
                    client_sequence: n as u64,
                    payload: Some(Payload::MoneyChanged(pb::MoneyChangedEvent {
                        new_value: n as f64,
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            })
            .collect();
        requests.push(PublishBatchRequest { events });
    }
    let mut client = server.client().await;
    let response = client.publish_batch(tokio_stream::iter(requests)).await.expect("PublishBatch").into_inner();
    let valid = REQUESTS * (PER_REQUEST - 1);
    assert_eq!(response.accepted as usize, valid, "{:?}", response.rejected.first());
    assert_eq!(response.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), invalid);
    assert!(response.rejected.iter().all(|r| r.error == "session_id: required"), "{:?}", response.rejected[0]);
    let deliveries = server.read_all("balatro.*.MONEY_CHANGED", valid).await;
    for session in ["pb-0", "pb-1"] {
        let order: Vec<u64> =
            deliveries.iter().map(event).filter(|e| e.session_id == session).map(|e| e.client_sequence).collect();
        let sent = (0..REQUESTS * PER_REQUEST).filter(|n| n % PER_REQUEST != 7 && format!("pb-{}", n % 2) == session);
        assert_eq!(order.len(), sent.count(), "{session}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{session} out of order: {order:?}");
    }
}

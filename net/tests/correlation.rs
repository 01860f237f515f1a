//! One id from the request to the record and the delivery, the same way on
//! both edges: the request's `x-request-id` (or a new id, echoed back) becomes
//! every event's `correlation_id`; a client's own, different id on an event is
//! kept in its metadata as `client_correlation_id`; log lines about the
//! request carry the id.

mod harness;

use harness::{event_of, request, HttpConn, Jimbus};
use jimbus_proto::bus::{self, subscribe_response::Body};
use jimbus_proto::events as pb;

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_stamp_the_request_id_alike() {
    let server = Jimbus::start(&["--shards", "1"]);
    let mut conn = HttpConn::open(server.http);
    let body = br#"{"type":"HEARTBEAT","source":"BalatroMCP","session_id":"c1","payload":{"n":1}}"#;
    conn.send(&request("POST", "/api/v1/events", body, &[("x-request-id", "http-req-1")]));
    let answer = conn.read_response();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), Some("http-req-1"));

    let mut client = server.client().await;
    let heartbeat = |correlation_id: &str| pb::Event {
        event_type: "HEARTBEAT".into(),
        session_id: "c1".into(),
        correlation_id: correlation_id.into(),
        payload: Some(pb::event::Payload::Heartbeat(Default::default())),
        ..Default::default()
    };
    let events = vec![heartbeat(""), heartbeat("client-own")];
    let mut publish = tonic::Request::new(bus::PublishRequest { events });
    publish.metadata_mut().insert("x-request-id", "grpc-req-2".parse().unwrap());
    let answer = client.publish(publish).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "grpc-req-2");
    assert_eq!(answer.get_ref().accepted, 2, "{:?}", answer.get_ref().rejected);

    let delivered = server.read_all("balatro.c1.>", 3).await;
    let ids: Vec<&str> = delivered.iter().map(|d| event_of(d).correlation_id.as_str()).collect();
    assert_eq!(ids, ["http-req-1", "grpc-req-2", "grpc-req-2"]);
    assert!(!event_of(&delivered[1]).metadata.contains_key("client_correlation_id"));
    assert_eq!(event_of(&delivered[2]).metadata["client_correlation_id"], "client-own");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_an_id_gets_one_and_its_log_lines_carry_it() {
    let server = Jimbus::start(&[]);
    let answer = server.post("/api/v1/events", br#"{"type":"HEARTBEAT","payload":["#);
    assert_eq!(answer.status, 400);
    let id = answer.header("x-request-id").expect("an id is echoed").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let letters = server.read_all("deadletter", 1).await;
    let Some(Body::DeadLetter(letter)) = &letters[0].body else { panic!("{letters:?}") };
    assert_eq!(letter.correlation_id, id);
    // The refusal is logged inside the request's span.
    refusal_logged_with(&server, &id);
}

/// A client's id of more than one plain word is written quoted in the
/// request's log lines, so that it cannot add fields to them.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_id_cannot_forge_fields_on_its_log_lines() {
    let server = Jimbus::start_with_compact_logs(&[]);
    let mut conn = HttpConn::open(server.http);
    let forged = "a peer=10.0.0.1";
    conn.send(&request("POST", "/api/v1/events", br#"{"type":"HEARTBEAT","payload":["#, &[("x-request-id", forged)]));
    assert_eq!(conn.read_response().status, 400);
    let line = refusal_logged_with(&server, forged);
    assert!(line.contains(r#" request_id="a peer=10.0.0.1" peer=127.0.0.1:"#), "{line}");
}

/// The server's log line that refuses a body and names `id`, once the log has
/// reached this process.
fn refusal_logged_with(server: &Jimbus, id: &str) -> String {
    harness::wait_for_some(std::time::Duration::from_secs(10), &format!("a log line refusing a body with {id}"), || {
        server.log_text().lines().find(|l| l.contains("refused a body") && l.contains(id)).map(str::to_string)
    })
}

/// A request's stamps are kept once for the request, yet every stored event
/// carries them: the request id, the receive time and the envelope's batch id.
/// A gRPC event's own `batch_id` entry stays when its request has none.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_of_a_request_is_stored_with_its_requests_stamps() {
    let server = Jimbus::start(&["--shards", "1"]);
    let mut conn = HttpConn::open(server.http);
    let body = br#"{"batch_id":"b-7","source":"BalatroMCP","session_id":"st","events":[{"type":"HEARTBEAT"},{"type":"MONEY_CHANGED","payload":{"new_value":4}}]}"#;
    conn.send(&request("POST", "/api/v1/events/batch", body, &[("x-request-id", "batch-req")]));
    assert_eq!(conn.read_response().status, 200);
    let mut client = server.client().await;
    let mut own = pb::Event {
        event_type: "HEARTBEAT".into(),
        session_id: "st".into(),
        payload: Some(pb::event::Payload::Heartbeat(Default::default())),
        ..Default::default()
    };
    own.metadata.insert("batch_id".into(), "client-batch".into());
    let answer = client.publish(bus::PublishRequest { events: vec![own] }).await.unwrap();
    assert_eq!(answer.get_ref().accepted, 1, "{:?}", answer.get_ref().rejected);

    let delivered = server.read_all("balatro.st.>", 3).await;
    let events: Vec<&pb::Event> = delivered.iter().map(event_of).collect();
    for event in &events[..2] {
        assert_eq!(event.correlation_id, "batch-req");
        assert_eq!(event.metadata.get("batch_id").map(String::as_str), Some("b-7"), "{event:?}");
        assert_eq!(event.sequence, events.iter().position(|e| std::ptr::eq(*e, *event)).unwrap() as u64 + 1);
    }
    let timing = |e: &pb::Event| e.timing.expect("stamped times");
    let received = timing(events[0]).received_at.expect("a received time");
    assert_eq!(timing(events[1]).received_at, Some(received), "one request, one receive time");
    assert!(events.iter().all(|e| timing(e).published_at.is_some()));
    assert_eq!(events[2].metadata.get("batch_id").map(String::as_str), Some("client-batch"));
    assert!(!events[2].correlation_id.is_empty() && events[2].correlation_id != "batch-req");
}

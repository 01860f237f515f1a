//! jimbus on NATS JetStream (`--bus nats://…`), against real nats-server
//! processes: the compat and durable-subscription cases of the embedded log run
//! unchanged; a 3-node cluster with 3 replicas survives a SIGKILLed server while
//! two jimbus processes take a stream of events; without quorum ingest answers
//! 503 and recovers by itself; a stream out of storage answers 507; a SIGKILLed
//! jimbus loses nothing it acknowledged.

mod cases;
mod harness;
mod nats;

use harness::{HttpResponse, Jimbus};
use jimbus_proto::bus::{self, subscribe_response::Body};
use nats::Nats;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A jimbus process on the JetStream bus of `nats`.
fn jimbus_on(nats: &Nats, extra: &[&str]) -> Jimbus {
    let urls = nats.urls();
    let mut flags = vec!["--bus", urls.as_str(), "--shards", "1"];
    flags.extend_from_slice(extra);
    Jimbus::start(&flags)
}

// --- the shared cases, on one JetStream server --------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn durable_a_paused_slow_subscriber_catches_up_in_order() {
    let nats = Nats::single();
    cases::durable::a_paused_slow_subscriber_catches_up_in_order(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregation_cascades_of_100_500_and_5000_triggers_become_one_message_each() {
    let nats = Nats::single();
    cases::aggregation::cascades_of_100_500_and_5000_triggers_become_one_message_each(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregation_interleaved_sessions_keep_their_own_hands() {
    let nats = Nats::single();
    cases::aggregation::interleaved_sessions_keep_their_own_hands(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregation_a_hand_without_its_complete_is_published_incomplete_after_the_timeout() {
    let nats = Nats::single();
    let server = jimbus_on(&nats, &["--cascade-timeout-ms", "300"]);
    cases::aggregation::a_hand_without_its_complete_is_published_incomplete_after_the_timeout(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregation_a_subscriber_chooses_the_raw_or_the_aggregated_stream() {
    let nats = Nats::single();
    cases::aggregation::a_subscriber_chooses_the_raw_or_the_aggregated_stream(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_every_fixture_is_accepted_and_delivered_in_order() {
    let nats = Nats::single();
    cases::compat::every_fixture_is_accepted_and_delivered_in_order(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_a_retried_batch_is_acknowledged_but_stored_once() {
    let nats = Nats::single();
    cases::compat::a_retried_batch_is_acknowledged_but_stored_once(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_a_subscriber_of_every_event_never_receives_a_dead_letter() {
    let nats = Nats::single();
    cases::compat::a_subscriber_of_every_event_never_receives_a_dead_letter(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_explicit_session_ids_win_and_sessions_keep_their_own_order() {
    let nats = Nats::single();
    cases::compat::explicit_session_ids_win_and_sessions_keep_their_own_order(&jimbus_on(&nats, &[]), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_a_publish_batch_stream_keeps_each_sessions_order() {
    let nats = Nats::single();
    cases::compat::a_publish_batch_stream_keeps_each_sessions_order(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_a_consumer_resumes_after_a_jimbus_sigkill_at_its_last_ack() {
    let nats = Nats::single();
    let mut server = jimbus_on(&nats, &[]);
    // What the killed node handed out comes back once JetStream's ack wait ends.
    cases::durable::a_durable_consumer_resumes_after_sigkill_at_its_last_ack(&mut server, 2_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_unacked_deliveries_come_back_then_go_to_the_dead_letter_topic() {
    let nats = Nats::single();
    cases::durable::unacked_deliveries_come_back_then_go_to_the_dead_letter_topic(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_max_in_flight_holds_back_deliveries_until_acks_arrive() {
    let nats = Nats::single();
    cases::durable::max_in_flight_holds_back_deliveries_until_acks_arrive(&jimbus_on(&nats, &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_a_consumer_group_shares_the_events() {
    let nats = Nats::single();
    cases::durable::a_consumer_group_shares_the_events(&jimbus_on(&nats, &[])).await;
}

/// JetStream is one partition: an ack naming another is the client's mistake.
#[tokio::test(flavor = "multi_thread")]
async fn durable_an_ack_for_a_partition_jetstream_does_not_have_is_invalid_argument() {
    let nats = Nats::single();
    let server = jimbus_on(&nats, &[]);
    let positions = vec![bus::AckPosition { partition: 3, offset: 1 }];
    let request = bus::AckRequest { durable_name: "any".into(), positions };
    let refused = server.client().await.ack(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("partition 3 does not exist"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_a_member_that_leaves_gives_its_unacked_deliveries_to_the_group() {
    let nats = Nats::single();
    cases::durable::a_member_that_leaves_gives_its_unacked_deliveries_to_the_group(&jimbus_on(&nats, &[])).await;
}

/// The backend publishes on its own runtime's thread, but a published event
/// comes back to the thread that awaits the answer, the edge's that decoded
/// it: the next event decoded there fills the same box, with the capacity of
/// its strings, instead of a new one (no cross-thread free).
#[test]
fn a_published_event_comes_back_to_the_thread_that_decoded_it() {
    use jimbus_core::spare_events;
    use jimbus_net::bus::{AppendItem, Bus, ItemOutcome};
    let nats = Nats::single();
    let options = jimbus_net::jetstream::JetStreamOptions {
        urls: vec![nats.urls()],
        replicas: 1,
        publish_timeout: Duration::from_secs(10),
        max_age: None,
        max_bytes: None,
        startup_timeout: Duration::from_secs(30),
        aggregate: Default::default(),
    };
    let bus = jimbus_net::jetstream::JetStreamBus::start(options).expect("the bus reaches nats-server");
    // As the decoder does: an event taken from this thread's spares, filled.
    let mut event = spare_events::take();
    event.event_id = String::with_capacity(48);
    event.event_id.push_str("spare-1");
    (event.session_id, event.event_type) = ("s".into(), "HEARTBEAT".into());
    let request = jimbus_core::stamps::RequestStamps {
        correlation_id: "req-1".into(),
        received_at: jimbus_net::clock::timestamp(jimbus_net::clock::now_micros()),
        batch_id: String::new(),
    };
    let answer = bus.try_append(vec![AppendItem::Event(event, Arc::new(request))]).expect("the bus takes it");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let outcomes = runtime.block_on(answer).expect("stored");
    assert!(matches!(outcomes[..], [ItemOutcome::Stored { .. }]), "{outcomes:?}");
    let next = spare_events::take();
    assert!(next.event_id.is_empty() && next.event_id.capacity() >= 48, "a new event, not the spare: {next:?}");
    bus.stop();
}

// --- failures ------------------------------------------------------------------

const SESSIONS: usize = 4;
const BATCH: usize = 20;

/// Batch `n`: events with globally increasing indexes spread over the sessions.
fn batch(n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..BATCH).map(|k| format!("e-{:08}", n * BATCH + k)).collect();
    let events: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| {
            format!(
                r#"{{"event_id":"{id}","type":"MONEY_CHANGED","session_id":"s{}","payload":{{"new_value":{}}}}}"#,
                k % SESSIONS,
                n * BATCH + k
            )
        })
        .collect();
    (format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes(), ids)
}

/// One POST on a new connection; `Err` when the server cannot be reached or
/// closes without answering (a killed jimbus).
fn post(addr: SocketAddr, body: &[u8]) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&harness::request("POST", "/api/v1/events/batch", body, &[]))?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::other("closed without an answer"));
    }
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(HttpResponse { status, headers, body })
}

/// What a publisher saw.
#[derive(Default)]
struct Published {
    /// Event ids of every batch answered 2xx.
    acked: Vec<String>,
    batches: usize,
    unavailable: usize,
    unreachable: usize,
}

/// Posts batch `n` until some target answers 2xx (a 503 is retried after its
/// Retry-After; an unreachable target is left for the next one). Panics on any
/// other answer or after `within`.
fn publish_until_acked(targets: &[SocketAddr], n: usize, first: usize, within: Duration, out: &mut Published) {
    let (body, ids) = batch(n);
    let deadline = Instant::now() + within;
    let mut target = first;
    while Instant::now() < deadline {
        match post(targets[target % targets.len()], &body) {
            Ok(r) if (200..300).contains(&r.status) => {
                let answer = r.json();
                let stored = answer["accepted"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap();
                assert_eq!(stored, BATCH as u64, "{answer}");
                out.acked.extend(ids);
                out.batches += 1;
                return;
            }
            Ok(r) if r.status == 503 => {
                assert!(r.header("retry-after").is_some(), "a 503 without Retry-After");
                out.unavailable += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(r) => panic!("batch {n}: {} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(_) => {
                out.unreachable += 1;
                target += 1;
            }
        }
    }
    panic!("batch {n} was not acknowledged within {within:?}");
}

fn event_id(delivery: &bus::SubscribeResponse) -> Option<(String, String)> {
    match &delivery.body {
        Some(Body::Event(e)) => Some((e.event_id.clone(), e.session_id.clone())),
        _ => None,
    }
}

/// A durable subscriber that acks everything it gets, through `server`; keeps
/// every delivery (redeliveries included) in arrival order.
async fn audit(server: SocketAddr, received: Arc<Mutex<Vec<(String, String)>>>) {
    let url = format!("http://{server}");
    let mut client = bus::event_bus_service_client::EventBusServiceClient::connect(url).await.expect("gRPC");
    let request = bus::SubscribeRequest {
        pattern: "balatro.>".into(),
        durable_name: "audit".into(),
        start: bus::StartPosition::Earliest as i32,
        max_in_flight: 1000,
        ack_wait: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
        max_deliver: 100,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    while let Ok(Some(delivery)) = stream.message().await {
        if let Some(entry) = event_id(&delivery) {
            received.lock().unwrap().push(entry);
        }
        let positions = vec![bus::AckPosition { partition: delivery.partition, offset: delivery.offset }];
        // An ack lost in an election only means a redelivery, which dedup absorbs.
        let _ = client.ack(bus::AckRequest { durable_name: "audit".into(), positions }).await;
    }
}

/// Every acked id arrived; after dedup each once, and each session in publish order.
fn check_delivered(acked: &[String], received: &[(String, String)]) {
    let mut seen = HashSet::new();
    let mut per_session: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, session) in received {
        if seen.insert(id.clone()) {
            per_session.entry(session.clone()).or_default().push(id.clone());
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (session, ids) in per_session {
        let out_of_order = ids.windows(2).find(|w| w[0] >= w[1]);
        assert!(out_of_order.is_none(), "session {session} out of order: {out_of_order:?}");
    }
}

async fn wait_for(received: &Arc<Mutex<Vec<(String, String)>>>, acked: &[String], within: Duration) {
    let want: HashSet<&String> = acked.iter().collect();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let have: HashSet<String> = received.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        if want.iter().all(|id| have.contains(*id)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server that leads the JIMBUS stream, from any live server's monitoring.
fn stream_leader(nats: &Nats) -> usize {
    for node in &nats.nodes {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", node.monitor)) else { continue };
        let _ = write!(stream, "GET /jsz?streams=true HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut answer = String::new();
        // HTTP/1.0: the answer is not chunked.
        let _ = stream.read_to_string(&mut answer);
        let Some((_, json)) = answer.split_once("\r\n\r\n") else { continue };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else { continue };
        let leader = value["account_details"][0]["stream_detail"]
            .as_array()
            .and_then(|streams| streams.iter().find(|s| s["name"] == "JIMBUS"))
            .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_string));
        if let Some(leader) = leader {
            return nats.nodes.iter().position(|n| n.name == leader).expect("a known server");
        }
    }
    panic!("no server reports a leader of the JIMBUS stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_survives_a_sigkilled_server_while_two_jimbus_take_events() {
    let mut nats = Nats::cluster(3);
    let one = jimbus_on(&nats, &["--bus-replicas", "3"]);
    let two = jimbus_on(&nats, &["--bus-replicas", "3"]);
    let received = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tokio::spawn(audit(one.grpc, received.clone()));
    let targets = [one.http, two.http];
    let mut published = Published::default();
    let mut n = 0;
    let mut publish = |count: usize, published: &mut Published| {
        for _ in 0..count {
            publish_until_acked(&targets, n, n, Duration::from_secs(60), published);
            n += 1;
        }
    };
    tokio::task::block_in_place(|| publish(20, &mut published));
    let leader = stream_leader(&nats);
    nats.kill9(leader);
    let before = published.unavailable;
    tokio::task::block_in_place(|| publish(30, &mut published));
    let during_outage = published.unavailable - before;
    nats.restart(leader);
    tokio::task::block_in_place(|| {
        publish(10, &mut published);
        nats.wait_healthy(leader, Duration::from_secs(60));
    });
    // Back to three healthy servers: every batch is taken at the first try.
    let before = published.unavailable;
    tokio::task::block_in_place(|| publish(10, &mut published));
    assert_eq!(published.unavailable, before, "503s with every server healthy");
    wait_for(&received, &published.acked, Duration::from_secs(60)).await;
    subscriber.abort();
    let received = received.lock().unwrap().clone();
    check_delivered(&published.acked, &received);
    eprintln!(
        "cluster: {} batches acknowledged, {} answers 503 while the leader was down, {} deliveries for {} events",
        published.batches,
        during_outage,
        received.len(),
        published.acked.len()
    );
}

fn ready_status(server: &Jimbus) -> u16 {
    server.get("/ready").status
}

fn wait_ready(server: &Jimbus, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ready_status(server) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/ready did not answer {want} within {within:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_quorum_ingest_answers_503_and_recovers_by_itself() {
    let mut nats = Nats::cluster(3);
    let server = jimbus_on(&nats, &[]);
    let mut published = Published::default();
    tokio::task::block_in_place(|| {
        publish_until_acked(&[server.http], 0, 0, Duration::from_secs(30), &mut published);
        nats.kill9(1);
        nats.kill9(2);
        for _ in 0..3 {
            let (body, _) = batch(1);
            let answer = post(server.http, &body).expect("jimbus answers");
            assert_eq!(answer.status, 503, "{}", String::from_utf8_lossy(&answer.body));
            assert!(answer.header("retry-after").is_some());
        }
        wait_ready(&server, 503, Duration::from_secs(30));
        nats.restart(1);
        nats.restart(2);
        // The same jimbus process takes the batch again once the cluster is back.
        publish_until_acked(&[server.http], 1, 0, Duration::from_secs(60), &mut published);
        wait_ready(&server, 200, Duration::from_secs(30));
    });
    let deliveries = server.read_all("balatro.>", 2 * BATCH).await;
    let ids: Vec<String> = deliveries.iter().filter_map(event_id).map(|(id, _)| id).collect();
    assert_eq!(ids, published.acked, "each acknowledged event stored exactly once, nothing else");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_out_of_storage_answers_507_and_loses_nothing_it_acknowledged() {
    let nats = Nats::single_with_file_store(256 * 1024);
    let server = jimbus_on(&nats, &[]);
    let mut acked = Vec::new();
    let refused = tokio::task::block_in_place(|| {
        for n in 0.. {
            let (body, ids) = batch(n);
            let answer = post(server.http, &body).expect("jimbus answers");
            match answer.status {
                200 => acked.extend(ids),
                507 => return answer,
                other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&answer.body)),
            }
            assert!(n < 10_000, "the stream's storage never filled");
        }
        unreachable!()
    });
    assert!(!acked.is_empty(), "some batches fit before the storage filled");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"].as_str().unwrap().contains("no space left"), "{}", refused.json());
    let deliveries = server.read_all("balatro.>", acked.len()).await;
    let ids: Vec<String> = deliveries.iter().filter_map(event_id).map(|(id, _)| id).collect();
    assert_eq!(ids, acked, "every acknowledged event exactly once, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_jimbus_loses_nothing_it_acknowledged_and_the_other_carries_on() {
    let nats = Nats::single();
    let mut one = jimbus_on(&nats, &[]);
    let two = jimbus_on(&nats, &[]);
    let targets = [one.http, two.http];
    let mut published = Published::default();
    tokio::task::block_in_place(|| {
        for n in 0..10 {
            publish_until_acked(&targets, n, n, Duration::from_secs(30), &mut published);
        }
        // Kill `one` while a batch is in flight to it.
        let (body, _) = batch(10);
        let target = one.http;
        let racing = std::thread::spawn(move || post(target, &body));
        one.kill9();
        let _ = racing.join();
        for n in 10..30 {
            publish_until_acked(&targets, n, n, Duration::from_secs(30), &mut published);
        }
    });
    assert!(published.unreachable > 0, "the publisher never had to move to the other jimbus");
    let deliveries = two.read_all("balatro.>", 30 * BATCH).await;
    let ids: Vec<String> = deliveries.iter().filter_map(event_id).map(|(id, _)| id).collect();
    // Batch 10 may have been stored by the killed process before it answered;
    // the retry through the other one is then a duplicate, stored once.
    assert_eq!(ids, published.acked, "every acknowledged event exactly once, in order");
}

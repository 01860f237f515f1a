//! Defect 6: long PublishBatch streams, bytes that are not UTF-8, and the same
//! depth limit as HTTP; requests whose events would take more memory decoded
//! than their number or the budget allows are refused before decoding; and
//! subscriptions, each granted its memory, past half the budget are refused,
//! and stalled ones, plain or durable, hold about that grant on many shards.

use crate::harness::Jimbus;
use jimbus_proto::bus;
use jimbus_proto::events as pb;
use std::time::Duration;

fn event(session: &str, i: usize) -> pb::Event {
    pb::Event {
        event_type: "HEARTBEAT".into(),
        session_id: session.into(),
        event_id: format!("e{i}"),
        payload: Some(pb::event::Payload::Heartbeat(pb::HeartbeatEvent::default())),
        ..Default::default()
    }
}

/// 20,000 one-event messages as fast as the client writes them: the server used
/// to stop reading while commits were pending, so h2 buffered the small DATA
/// frames until its framing budget ran out and it sent GOAWAY too_many_data_frames.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_stream_of_one_event_messages_is_stored_whole() {
    let server = Jimbus::start(&[]);
    let mut client = server.client().await;
    const N: usize = 20_000;
    // A channel of one slot hands tonic one message at a time, so each goes out
    // in its own small DATA frame, as grpcio and grpc-go send them (tonic would
    // otherwise pack a ready iterator's messages into large frames).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..N {
            let message = bus::PublishBatchRequest { events: vec![event("long-stream", i)] };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    let answer = client.publish_batch(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let answer = answer.unwrap_or_else(|e| panic!("stream failed: {e}; log:\n{}", server.log_text())).into_inner();
    assert_eq!(answer.accepted as usize, N, "{answer:?}");
    assert!(answer.rejected.is_empty());
    let stored = server.read_all("balatro.long-stream.>", N).await;
    assert_eq!(stored.len(), N);
}

/// A string field that is not UTF-8 is the client's mistake: INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_a_pattern_or_durable_name_is_invalid_argument() {
    let server = Jimbus::start(&[]);
    // SubscribeRequest{pattern(1) = "\xff\xfe"} and {pattern = ">", durable_name(5)? } built by hand.
    let bad_pattern: Vec<u8> = vec![0x0a, 2, 0xff, 0xfe];
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    for (method, body) in [
        ("/jimbot.bus.v1.EventBusService/Subscribe", bad_pattern.clone()),
        ("/jimbot.bus.v1.EventBusService/ListTopics", bad_pattern.clone()),
        ("/jimbot.bus.v1.EventBusService/Ack", vec![0x0a, 2, 0xc3, 0x28]),
    ] {
        let code = raw_call(channel.clone(), method, body).await;
        assert_eq!(code, tonic::Code::InvalidArgument, "{method}");
    }
    let durable = durable_name_field();
    let mut body = vec![0x0a, 1, b'>'];
    body.extend_from_slice(&[(durable << 3 | 2) as u8, 2, 0xff, 0xfe]);
    let code = raw_call(channel, "/jimbot.bus.v1.EventBusService/Subscribe", body).await;
    assert_eq!(code, tonic::Code::InvalidArgument, "durable name");
}

/// The field number of `SubscribeRequest.durable_name`, read from the schema.
fn durable_name_field() -> u32 {
    let pool = jimbus_proto::descriptor_pool();
    let message = pool.get_message_by_name("jimbot.bus.v1.SubscribeRequest").unwrap();
    message.get_field_by_name("durable_name").unwrap().number()
}

/// Sends `body` as the encoded request of a method (as one message, whatever
/// its streaming) and returns the code the call (or its stream's first
/// message) ends with.
async fn raw_call(channel: tonic::transport::Channel, method: &str, body: Vec<u8>) -> tonic::Code {
    raw_status(channel, method, body).await.code()
}

/// [`raw_call`]'s whole status.
async fn raw_status(channel: tonic::transport::Channel, method: &str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = method.parse().unwrap();
    let codec = RawCodec;
    let result = grpc.server_streaming(tonic::Request::new(bytes::Bytes::from(body)), path, codec).await;
    match result {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status,
            Ok(_) => tonic::Status::ok(""),
        },
    }
}

/// Passes bytes through unchanged, to send what a generated client never would.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Published events are granted memory from the budget until they are durable:
/// past it, RESOURCE_EXHAUSTED (a retry), and the server stays up.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_past_the_memory_budget_is_resource_exhausted() {
    // The aggregators hold at most half the budget: about 4 MiB of the 8 are left.
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", "8388608"]);
    let mut client = server.client().await;
    let big = |i: usize| {
        let mut e = event("budget", i);
        let text = jimbus_proto::free_form::Value {
            kind: Some(jimbus_proto::free_form::value::Kind::StringValue("b".repeat(100_000).into())),
        };
        e.extra = Some(jimbus_proto::free_form::Struct { fields: [("note".into(), text)].into() });
        e
    };
    let events: Vec<_> = (0..20).map(big).collect();
    let refused = client.publish(bus::PublishRequest { events }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("retry later"), "it fits the budget when nothing else holds it: {refused}");
    let fits = client.publish(bus::PublishRequest { events: vec![big(99)] }).await.unwrap().into_inner();
    assert_eq!(fits.accepted, 1);
}

/// A decoded event takes at least the size of `Event` (over 600 bytes) however
/// few bytes it was sent in: 2,000,000 empty events in a 4 MB request decoded
/// to 1.8 GB before their number was refused. They are counted first now, and
/// the request is refused whole without being decoded.
#[tokio::test(flavor = "multi_thread")]
async fn millions_of_empty_events_are_refused_before_they_are_decoded() {
    let server = Jimbus::start(&["--shards", "1"]);
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    // `events` (field 1), empty, two million times.
    let empty_events = [0x0a, 0x00].repeat(2_000_000);
    for method in ["/jimbot.bus.v1.EventBusService/Publish", "/jimbot.bus.v1.EventBusService/PublishBatch"] {
        let status = raw_status(channel.clone(), method, empty_events.clone()).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{method}: {status}");
        assert!(status.message().contains("more than 100000"), "{method}: {status}");
    }
    assert_peak_rss_under(&server, 256);
    let mut client = server.client().await;
    let fits = client.publish(bus::PublishRequest { events: vec![event("empty", 1)] }).await.unwrap();
    assert_eq!(fits.into_inner().accepted, 1);
}

/// What a publish's events take decoded is granted before they are decoded:
/// 100,000 empty events ask about 200 MB, more than the 16 MiB a 32 MiB
/// budget leaves beside the aggregator, so each request is refused at once
/// and the server never holds them.
#[tokio::test(flavor = "multi_thread")]
async fn empty_events_are_granted_their_decoded_size_before_they_are_decoded() {
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(32u64 << 20).to_string()]);
    let empty_events = [0x0a, 0x00].repeat(100_000);
    all_refused_for_memory(&server, &empty_events, 8, 64).await;
}

/// Publishes `body` `calls` times at once: each must be RESOURCE_EXHAUSTED,
/// and the server's peak RSS stay under `peak_mib`.
async fn all_refused_for_memory(server: &Jimbus, body: &[u8], calls: usize, peak_mib: u64) {
    // More than the whole budget: the answer says to split, not to retry.
    let says = "more than the server's whole memory budget";
    for status in statuses_at_once(server, "/jimbot.bus.v1.EventBusService/Publish", body, calls).await {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        assert!(status.message().contains(says), "{status}");
    }
    assert_peak_rss_under(server, peak_mib);
}

/// Sends `body` to `method` `calls` times at once, on one connection, and
/// returns how each call ended.
async fn statuses_at_once(server: &Jimbus, method: &'static str, body: &[u8], calls: usize) -> Vec<tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let calls: Vec<_> = (0..calls).map(|_| tokio::spawn(raw_status(channel.clone(), method, body.to_vec()))).collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses
}

/// The server's peak RSS so far (VmHWM) is under `mib`.
fn assert_peak_rss_under(server: &Jimbus, mib: u64) {
    let peak = server.process().unwrap().peak_rss_kib().unwrap();
    eprintln!("peak RSS {} MiB", peak >> 10);
    assert!(peak < mib << 10, "peak RSS {} MiB", peak >> 10);
}

/// An empty ack position is 2 bytes on the wire and 16 decoded: eight 4 MB
/// acks of 2,000,000 empty positions took the server to 147 MiB before their
/// `max_items=100000` rule refused them. Positions past the rule are counted,
/// not decoded, now: 57 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn millions_of_empty_ack_positions_are_refused_before_they_are_decoded() {
    let server = Jimbus::start(&["--shards", "1"]);
    // `durable_name` "t" (field 1), then `positions` (field 2), empty, two million times.
    let mut body = vec![0x0a, 1, b't'];
    body.extend_from_slice(&[0x12, 0x00].repeat(2_000_000));
    for status in statuses_at_once(&server, "/jimbot.bus.v1.EventBusService/Ack", &body, 8).await {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert_eq!(status.message(), "positions: max_items=100000 (2000000 positions sent)");
    }
    assert_peak_rss_under(&server, 96);
}

/// The Resource Coordinator's requests are small by their schema (ids of at
/// most 128 bytes, at most 64 metadata entries), and their rules were never
/// checked: eight 3.7 MB requests of 350,000 metadata entries were each
/// decoded and granted (peak RSS 115 MiB; 25 MiB now), and a component of any
/// length was kept in its grant and reported back.
#[tokio::test(flavor = "multi_thread")]
async fn resource_requests_past_the_schemas_limits_are_refused() {
    use jimbus_proto::coordinator::{self as rc, resource_coordinator_client::ResourceCoordinatorClient};
    let server = Jimbus::start(&["--shards", "1", "--resource-pools", "gpu=4"]);
    let ask = |component: &str| rc::ResourceRequest {
        request_id: "r1".into(),
        component: component.into(),
        resource: rc::ResourceType::Gpu as i32,
        quantity: 1,
        ..Default::default()
    };
    let mut client = ResourceCoordinatorClient::connect(server.grpc_url()).await.unwrap();
    let long = client.request_resource(ask(&"c".repeat(129))).await.unwrap_err();
    assert_eq!(long.code(), tonic::Code::InvalidArgument, "{long}");
    assert!(long.message().contains("component: max_len=128"), "{long}");
    let mut crowded = ask("trainer");
    crowded.metadata = (0..350_000).map(|i| (format!("k{i}"), String::new())).collect();
    let body = prost::Message::encode_to_vec(&crowded);
    for status in statuses_at_once(&server, "/jimbot.ResourceCoordinator/RequestResource", &body, 8).await {
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
        assert!(status.message().contains("message length too large"), "{status}");
    }
    assert_peak_rss_under(&server, 64);
    let granted = client.request_resource(ask("trainer")).await.unwrap().into_inner();
    assert_eq!(granted.status, rc::RequestStatus::Granted as i32, "{granted:?}");
}

/// One event can hold a free-form list of 1,000,000 empty values: 2 MB on
/// the wire, about 50 MB decoded. What the values take decoded is counted
/// from their encoding and granted first, so on a small budget such events
/// are refused before any is decoded.
#[tokio::test(flavor = "multi_thread")]
async fn free_form_values_are_granted_their_decoded_size_before_they_are_decoded() {
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(64u64 << 20).to_string()]);
    let values =
        jimbus_proto::free_form::ListValue { values: vec![jimbus_proto::free_form::Value::default(); 1_000_000] };
    let list = jimbus_proto::free_form::Value { kind: Some(jimbus_proto::free_form::value::Kind::ListValue(values)) };
    let mut big = event("values", 1);
    big.extra = Some(jimbus_proto::free_form::Struct { fields: [("list".into(), list)].into() });
    let body = prost::Message::encode_to_vec(&bus::PublishRequest { events: vec![big] });
    all_refused_for_memory(&server, &body, 4, 96).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_long_list_topics_pattern_is_invalid_argument() {
    let server = Jimbus::start(&[]);
    let mut client = server.client().await;
    let pattern = format!("balatro.{}", "x".repeat(600));
    let refused = client.list_topics(bus::ListTopicsRequest { pattern }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("max_len=512"), "{refused}");
}

/// A stalled subscription held about 1.75 MB of deliveries and reads, and
/// nothing bounded how many were open: a thousand took a server to 1.8 GB.
/// Each holds its grant now, and together at most half the budget: on a
/// 16 MiB budget the subscription past 8 MiB is RESOURCE_EXHAUSTED, and one
/// that ends gives its room back.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_past_half_the_budget_are_resource_exhausted() {
    use jimbus_net::grpc::SUBSCRIPTION_GRANT;
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(16u64 << 20).to_string()]);
    let mut client = server.client().await;
    let mut open = Vec::new();
    let refused = loop {
        match client.subscribe(everything(String::new())).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => break status,
        }
        assert!(open.len() <= 64, "subscriptions were never refused");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("too many subscriptions are open for the memory budget"), "{refused}");
    assert!(!open.is_empty() && open.len() as u64 * SUBSCRIPTION_GRANT <= 8 << 20, "{} open", open.len());
    // Refused for the subscriptions' half, not for a spent budget: the
    // budget's denials (which page about ingest) do not count it.
    assert_eq!(server.metric("jimbus_grpc_subscriptions_refused_total"), 1.0);
    assert_eq!(server.metric("jimbus_budget_denials_total{component=\"subscription\"}"), 0.0);
    drop(open.pop());
    // The server sees the stream end in its own time: until then it refuses.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.subscribe(everything(String::new())).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "the ended subscription's room never came back");
                tokio::task::yield_now().await;
            }
            Err(status) => panic!("{status}"),
        }
    }
}

/// Every shard a stalled subscription reads holds the copy of its last read
/// while it waits for the subscriber. Reads were 256 records whatever their
/// size, so on 16 shards with 4 KiB events a stalled subscription held about
/// 16 MiB against its 1 MiB grant (a thousand of them took a server with a
/// 256 MiB budget to 1.6 GB). Each shard now reads its share of the
/// subscriber's room: the subscriptions that fit half of a 32 MiB budget,
/// all stalled, grow the server by about their grants.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_subscriptions_on_many_shards_hold_about_their_grants() {
    stalled_on_many_shards(|_| String::new(), 4 << 10, ReadFrom::Disk).await;
}

/// The same for durable consumers, whose shards read for the consumer and
/// send each member what it is assigned.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_durable_consumers_on_many_shards_hold_about_their_grants() {
    stalled_on_many_shards(|i| format!("durable-{i}"), 4 << 10, ReadFrom::Tail).await;
}

/// A read takes at least one record, however large: with 1 MiB events each
/// of 16 shards held one for each stalled subscription, 16 MiB against its
/// 1 MiB grant. A read past a shard's share is now copied only with the
/// subscriber's room for it taken, and otherwise dropped and read again once
/// the room is free.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_subscriptions_hold_records_past_their_share_one_at_a_time() {
    stalled_on_many_shards(|_| String::new(), 1 << 20, ReadFrom::Disk).await;
}

/// The same for durable consumers.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_durable_consumers_hold_records_past_their_share_one_at_a_time() {
    stalled_on_many_shards(|i| format!("durable-{i}"), 1 << 20, ReadFrom::Tail).await;
}

/// Opens subscriptions from the start (durable as `durable_name(i)` names
/// them, unless empty) on a 16-shard server with a 32 MiB budget holding
/// 32 MiB of events of `event_bytes` each, until the budget refuses one;
/// reads one delivery from each and no more; then checks how much the server
/// grew once they have stalled: about their grants, and the records each has
/// in hand when they are larger than the room.
async fn stalled_on_many_shards(durable_name: impl Fn(usize) -> String, event_bytes: usize, from: ReadFrom) {
    use jimbus_net::{bus::SUBSCRIBER_BYTES, grpc::SUBSCRIPTION_GRANT};
    const SHARDS: u64 = 16;
    const BUDGET: u64 = 32 << 20;
    let mut server = Jimbus::start(&["--shards", &SHARDS.to_string(), "--memory-budget", &BUDGET.to_string()]);
    let posted = post_spread_over_shards(&server, 32 << 20, event_bytes);
    if from == ReadFrom::Disk {
        assert!(server.terminate().success());
        server.restart();
    }
    let process = server.process().expect("the server runs");
    let before = process.rss_kib().expect("VmRSS") << 10;
    process.reset_peak_rss().expect("VmHWM can be reset");
    let mut open = Vec::new();
    // One connection each: a stalled stream holds its connection's flow-control window.
    while let Ok(stream) = server.client().await.subscribe(everything(durable_name(open.len()))).await {
        let mut stream = stream.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        first.expect("a first delivery within 30 s").expect("a delivery").expect("the stream is open");
        open.push(stream); // and never read again
        assert!(open.len() <= 64, "subscriptions were never refused");
    }
    // Wait until at least half the shards of every subscription hold a read
    // for it, or have put it off for want of room.
    let stalled = open.len() as f64 * SHARDS as f64 / 2.0;
    let waiting = || {
        server.metric("jimbus_subscriber_sends_waiting") + server.metric("jimbus_subscriber_reads_deferred_total")
            >= stalled
    };
    tokio::task::block_in_place(|| crate::harness::wait_for(Duration::from_secs(30), "shards waiting", waiting));
    let grown = (process.peak_rss_kib().expect("VmHWM") << 10).saturating_sub(before);
    eprintln!("{} stalled subscriptions grew the server by {} KiB", open.len(), grown >> 10);
    // Records larger than the room pass the grant by what is in hand: one
    // in the subscriber's channel, one tonic is encoding, and its encoding
    // (45 MiB for 16 subscriptions here, 270 MiB when each shard held one).
    let in_hand = if event_bytes > SUBSCRIBER_BYTES { 3 * event_bytes as u64 } else { 0 };
    let bound = open.len() as u64 * (SUBSCRIPTION_GRANT + in_hand) + (8 << 20);
    assert!(grown < bound, "{} MiB held, more than {} MiB", grown >> 20, bound >> 20);
    drop(open);
    reads_every_event_in_order(&server, posted).await;
}

/// Where the subscriptions of [`stalled_on_many_shards`] read the records.
#[derive(PartialEq)]
enum ReadFrom {
    /// The in-memory tail, which holds every record (it is not restarted).
    Tail,
    /// The segment files, after a restart. Not for durable consumers: their
    /// shard task reads a record past its share before it knows the member
    /// it is for, so its reads in flight are bounded by the consumers and
    /// shards, not by the subscribers' room (docs/perf.md, fourteenth pass).
    Disk,
}

/// A new subscription from the start gets `posted` events, each partition's
/// offsets following on without a gap. It waits for the stalled ones' grants
/// to come back first.
async fn reads_every_event_in_order(server: &Jimbus, posted: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match server.client().await.subscribe(everything(String::new())).await {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "the stalled subscriptions' grants never came back");
                tokio::task::yield_now().await;
            }
            Err(status) => panic!("{status}"),
        }
    };
    let mut next_offset = std::collections::HashMap::new();
    let mut events = 0;
    while events < posted {
        let delivery = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let delivery = delivery.expect("the next delivery within 30 s").expect("a delivery").expect("open");
        let expected = next_offset.entry(delivery.partition).or_insert(delivery.offset);
        assert_eq!(delivery.offset, *expected, "partition {}: a gap or a repeat", delivery.partition);
        *expected += 1;
        events += usize::from(matches!(delivery.body, Some(bus::subscribe_response::Body::Event(_))));
    }
}

/// Posts `total` bytes of events of `event_bytes` each over 1,024 sessions,
/// so that every one of the 16 shards holds some, in bodies of about 2 MiB;
/// returns how many.
fn post_spread_over_shards(server: &Jimbus, total: usize, event_bytes: usize) -> usize {
    let note = "n".repeat(event_bytes);
    let per_body = ((2 << 20) / event_bytes).max(1);
    let sessions = (0..total / event_bytes).map(|i| i * 997 % 1024).collect::<Vec<_>>();
    for chunk in sessions.chunks(per_body) {
        let events: Vec<String> =
            chunk.iter().map(|s| format!(r#"{{"type":"A","session_id":"s{s}","note":"{note}"}}"#)).collect();
        let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
        assert_eq!(server.post("/api/v1/events/batch", body.as_bytes()).status, 200);
    }
    sessions.len()
}

/// Subscribe to every topic from the start, durable as `durable_name` names
/// it unless it is empty.
fn everything(durable_name: String) -> bus::SubscribeRequest {
    bus::SubscribeRequest {
        pattern: ">".into(),
        start: bus::StartPosition::Earliest as i32,
        durable_name,
        ..Default::default()
    }
}

/// A Publish call on `channel` whose request body is `body`, sent as it
/// comes: the server's answer (its headers), or the error that ended it.
pub async fn raw_publish(
    mut channel: tonic::transport::Channel,
    body: tonic::body::Body,
) -> Result<http::Response<tonic::body::Body>, tonic::transport::Error> {
    use tower::{Service, ServiceExt};
    let request = http::Request::builder()
        .uri("/jimbot.bus.v1.EventBusService/Publish")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    channel.ready().await?.call(request).await
}

/// A Publish call on its own connection whose body sends `bytes` and then
/// stays open until the server answers or ends the call.
async fn stalled_publish(url: String, bytes: bytes::Bytes) {
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let (frames, body) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, tonic::Status>>(1);
    frames.send(Ok(hyper::body::Frame::data(bytes))).await.unwrap();
    let body =
        tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body)));
    // A refused call is answered (RESOURCE_EXHAUSTED) or reset while its body
    // is still open; either ends it.
    let _ = raw_publish(channel, body).await;
    drop(frames);
}

/// tonic gathers a message whole before a handler sees it, and h2 opened
/// every stream a client asked for: 64 calls, each sending all but the last
/// byte of a 4 MiB message, made the server hold 256 MiB outside a 64 MiB
/// budget. Each message is granted its length when its prefix arrives now:
/// the calls past the budget are RESOURCE_EXHAUSTED at once, and the server
/// holds about the budget.
#[tokio::test(flavor = "multi_thread")]
async fn messages_under_way_on_many_streams_are_granted_before_they_are_held() {
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(64u64 << 20).to_string()]);
    let at_rest = server.metric("jimbus_budget_used_bytes");
    let length: u32 = 4 << 20;
    let mut message = vec![0u8];
    message.extend_from_slice(&length.to_be_bytes());
    message.resize(5 + length as usize - 1, 0x0a);
    let message = bytes::Bytes::from(message);
    let calls: Vec<_> = (0..64).map(|_| tokio::spawn(stalled_publish(server.grpc_url(), message.clone()))).collect();
    // At most 16 fit the budget: the others are refused while they wait.
    // Before, none was (and this fails at the deadline).
    let refused = || server.metric("jimbus_budget_denials_total") >= 48.0;
    crate::harness::wait_for(Duration::from_secs(60), "48 messages refused for memory", refused);
    assert_peak_rss_under(&server, 192);
    calls.iter().for_each(tokio::task::JoinHandle::abort);
    let back = || server.metric("jimbus_budget_used_bytes") <= at_rest;
    crate::harness::wait_for(Duration::from_secs(10), "the stalled calls' grants given back", back);
    let mut client = server.client().await;
    let fits = client.publish(bus::PublishRequest { events: vec![event("after", 1)] }).await.unwrap();
    assert_eq!(fits.into_inner().accepted, 1);
}

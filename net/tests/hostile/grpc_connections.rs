//! The gRPC port's connections and calls: each connection costs about 16 KiB
//! outside the memory budget, so past `--max-grpc-connections` they are
//! closed at accept, and a socket that does not begin HTTP/2 within
//! `--header-timeout` is closed, so silent sockets cannot hold the slots.
//! Before, 5,000 connections grew the server by 77 MiB, and a silent one
//! stayed open for good. Each call holds 16 KiB of the budget (a reserve
//! first) while its request arrives: calls that never send their message,
//! 256 to a connection, held 9.5 KiB each outside it. Calls and messages under
//! way hold at most a quarter of the budget, so they never starve ingest.

use crate::harness::{wait_for, Jimbus, HTTP2_OPENING};
use jimbus_proto::bus;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection to the gRPC port that has sent `bytes`.
fn connect_sending(server: &Jimbus, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.grpc).expect("connect to the gRPC port");
    stream.write_all(bytes).expect("send the opening bytes");
    stream
}

/// True when the server closes `stream` (reading whatever it sent first)
/// within the harness's bound of 30 s; false when the read times out.
fn closed_by_server(mut stream: TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// True when a tonic client connects and is answered a ListTopics.
async fn served(server: &Jimbus) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await else {
        return false;
    };
    let mut client = bus::event_bus_service_client::EventBusServiceClient::new(channel);
    client.list_topics(bus::ListTopicsRequest::default()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_at_accept() {
    let server = Jimbus::start(&["--max-grpc-connections", "4"]);
    let held: Vec<TcpStream> = (0..4).map(|_| connect_sending(&server, HTTP2_OPENING)).collect();
    wait_for(Duration::from_secs(30), "4 open gRPC connections", || server.metric("jimbus_grpc_connections") == 4.0);
    let fifth = connect_sending(&server, HTTP2_OPENING);
    assert!(closed_by_server(fifth), "the connection past the cap was kept open");
    assert_eq!(server.metric("jimbus_grpc_connections_closed_total"), 1.0);
    assert!(!served(&server).await, "a client past the cap was served");
    drop(held);
    wait_for(Duration::from_secs(30), "the held connections to close", || {
        server.metric("jimbus_grpc_connections") == 0.0
    });
    assert!(served(&server).await, "a client under the cap was not served");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_does_not_begin_http2_in_time_is_closed() {
    let server = Jimbus::start(&["--header-timeout", "1"]);
    let silent = connect_sending(&server, b"");
    let preface_only = connect_sending(&server, &HTTP2_OPENING[..24]);
    let opened = connect_sending(&server, HTTP2_OPENING);
    assert!(closed_by_server(silent), "a silent connection was kept open");
    assert!(closed_by_server(preface_only), "a connection with no SETTINGS after its preface was kept open");
    assert_eq!(server.metric("jimbus_grpc_connections_closed_total"), 2.0);
    // The connection that began HTTP/2 is open; only its pings (30 s) could close it.
    wait_for(Duration::from_secs(30), "only the opened connection left", || {
        server.metric("jimbus_grpc_connections") == 1.0
    });
    drop(opened);
    assert!(served(&server).await, "a client that begins HTTP/2 was not served");
}

/// A Publish call on `channel` whose request never sends a byte of its message.
async fn stalled_call(channel: tonic::transport::Channel) -> Option<tonic::Code> {
    let never = futures_util::stream::pending::<Result<hyper::body::Frame<bytes::Bytes>, tonic::Status>>();
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(never));
    let answer = crate::grpc::raw_publish(channel, body).await.ok()?;
    tonic::Status::from_header_map(answer.headers()).map(|status| status.code())
}

/// 2,560 calls on 10 connections, none sending its message: the 16 MiB
/// reserve holds 1,024 of them, and a quarter of the 33 MiB budget 528 more;
/// the rest are RESOURCE_EXHAUSTED at once. Before the grants, all were held;
/// before the quarter, they took all 17 MiB the aggregator (16 MiB) left, and
/// a mod's request got 503 while they waited.
#[tokio::test(flavor = "multi_thread")]
async fn calls_that_never_send_their_message_are_granted_before_they_are_held() {
    let server = Jimbus::start(&["--shards", "1", "--memory-budget", &(33u64 << 20).to_string()]);
    let at_rest = server.metric("jimbus_budget_used_bytes");
    let mut calls = Vec::new();
    for _ in 0..10 {
        let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
        calls.extend((0..256).map(|_| tokio::spawn(stalled_call(channel.clone()))));
    }
    let refused = || calls.iter().filter(|call| call.is_finished()).count() >= 1_008;
    wait_for(Duration::from_secs(60), "1,008 calls refused for memory", refused);
    let (ended, held): (Vec<_>, Vec<_>) = calls.into_iter().partition(tokio::task::JoinHandle::is_finished);
    assert!((1_500..=1_552).contains(&held.len()), "{} calls ended, {} held", ended.len(), held.len());
    let body = br#"{"events":[{"type":"ERROR","session_id":"beside-stalled-calls","payload":{"message":"kept"}}]}"#;
    let answer = server.post("/api/v1/events/batch", body);
    assert_eq!(answer.status, 200, "a mod's request beside the stalled calls: {:?}", answer.json());
    for call in ended {
        assert_eq!(call.await.unwrap(), Some(tonic::Code::ResourceExhausted));
    }
    held.iter().for_each(tokio::task::JoinHandle::abort);
    let back = || server.metric("jimbus_budget_used_bytes") <= at_rest;
    wait_for(Duration::from_secs(30), "the stalled calls' grants given back", back);
    assert!(served(&server).await, "a call after the stalled ones was not served");
}

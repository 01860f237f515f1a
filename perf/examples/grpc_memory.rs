//! Memory the gRPC port's connections and calls hold, for docs/perf.md and
//! docs/tuning.md.
//!
//! ```text
//! cargo run --release -p jimbus-perf --example grpc_memory -- JIMBUS_BINARY connections [COUNT]
//! cargo run --release -p jimbus-perf --example grpc_memory -- JIMBUS_BINARY calls [CONNECTIONS]
//! ```
//!
//! Starts the binary (`jimbus_harness::Launcher`, default flags). `connections`
//! opens COUNT sockets (default 5,000) that each send the HTTP/2 preface and an
//! empty SETTINGS frame, and keeps them open; `calls` opens CONNECTIONS
//! channels (default 100) with 256 PublishBatch calls on each whose request
//! never sends a message. Once the server's RSS settles, it prints the growth
//! of VmRSS and the peak, the memory budget in use, the gRPC connections open
//! and closed, and the calls answered. Needs `ulimit -n` above COUNT plus a few.

use jimbus_harness::{Jimbus, Launcher, HTTP2_OPENING};
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use std::io::Write;
use std::net::TcpStream;

/// Calls h2 lets one connection have open (the server's stream limit).
const CALLS_PER_CONNECTION: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: grpc_memory JIMBUS_BINARY connections [COUNT] | calls [CONNECTIONS]";
    let binary = args.first().expect(usage);
    let mode = args.get(1).map_or("connections", String::as_str);
    let server = Launcher::new(binary).start();
    let process = server.process().expect("the server runs");
    let rest_kib = process.settled_rss_kib();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (held, answered) = match mode {
        "connections" => (open_connections(&server, count_arg(&args, 5_000)), 0),
        "calls" => (Vec::new(), runtime.block_on(stalled_calls(&server, count_arg(&args, 100)))),
        other => panic!("unknown mode {other}; {usage}"),
    };
    let grown_kib = process.settled_rss_kib().saturating_sub(rest_kib);
    let peak_kib = process.peak_rss_kib().expect("VmHWM");
    // A build older than the gRPC connection metrics prints `-` for them.
    let metric = |name| server.metric_if(name).map_or("-".to_string(), |value| value.to_string());
    println!(
        "{mode}: VmRSS grew {:.1} MiB, peak {:.1} MiB; budget used {:.1} MiB; gRPC connections open {}, \
         closed {}; budget denials {}; calls answered {answered}",
        grown_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        server.metric("jimbus_budget_used_bytes") / f64::from(1 << 20),
        metric("jimbus_grpc_connections"),
        metric("jimbus_grpc_connections_closed_total"),
        server.metric("jimbus_budget_denials_total"),
    );
    drop(held);
    runtime.shutdown_background();
}

/// The number after the mode, or `default`.
fn count_arg(args: &[String], default: usize) -> usize {
    args.get(2).map_or(default, |n| n.parse().expect("a count"))
}

/// `count` sockets to the gRPC port, each through its HTTP/2 opening bytes.
fn open_connections(server: &Jimbus, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(server.grpc).ok()?;
            stream.write_all(HTTP2_OPENING).ok()?;
            Some(stream)
        })
        .collect()
}

/// Starts [`CALLS_PER_CONNECTION`] PublishBatch calls on each of
/// `connections` channels, none sending a message, and returns how many were
/// answered once the server's RSS has settled (the rest stay open).
async fn stalled_calls(server: &Jimbus, connections: usize) -> usize {
    let mut calls = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Channel::from_shared(server.grpc_url())
            .expect("a URL")
            .connect()
            .await
            .expect("the gRPC port accepts");
        for _ in 0..CALLS_PER_CONNECTION {
            let mut client = EventBusServiceClient::new(channel.clone());
            let never = futures_util::stream::pending::<jimbus_proto::bus::PublishBatchRequest>();
            calls.push(tokio::spawn(async move { client.publish_batch(never).await.err().map(|s| s.code()) }));
        }
    }
    let process = server.process().expect("the server runs");
    tokio::task::spawn_blocking(move || process.settled_rss_kib()).await.expect("settled");
    calls.iter().filter(|call| call.is_finished()).count()
}

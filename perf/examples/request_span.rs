//! Instructions of one ingest request's span (`jimbus_net::http::request_span`)
//! with the server's log setup (compact lines, `info`) and allocator, for
//! docs/perf.md:
//!
//! ```text
//! cargo build --release -p jimbus-perf --example request_span
//! valgrind --tool=callgrind target/release/examples/request_span SPANS [--peer-as-address] 2>/dev/null
//! ```
//!
//! Run it with two span counts and divide the difference of the instruction
//! totals by the difference of the spans. Each span has a new request id, as
//! a request without `x-request-id` has. `--peer-as-address` formats the
//! client's address into each span, as the server did before the thirty-first
//! pass, instead of the text its connection formatted once.

use std::net::SocketAddr;

/// The server's allocator: a span's strings are allocated and grown through it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let spans: usize = args.next().and_then(|n| n.parse().ok()).expect("usage: request_span SPANS [--peer-as-address]");
    let as_address = args.next().as_deref() == Some("--peer-as-address");
    jimbus_net::allocator::tune();
    jimbus_net::telemetry::init_logs(jimbus_net::telemetry::LogFormat::Compact);
    let peer: SocketAddr = "127.0.0.1:45678".parse().expect("an address");
    let peer_text = peer.to_string();
    let path = "/api/v1/events/batch";
    for _ in 0..spans {
        let request_id = jimbus_net::admit::request_id(None);
        let span = if as_address {
            tracing::info_span!("ingest", request_id = %request_id, peer = ?Some(peer), path = %path)
        } else {
            jimbus_net::http::request_span(&request_id, &peer_text, path)
        };
        drop(std::hint::black_box(span));
    }
}

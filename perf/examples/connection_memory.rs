//! Memory per open HTTP connection, for docs/perf.md and docs/tuning.md.
//!
//! ```text
//! cargo run --release -p jimbus-perf --example connection_memory -- JIMBUS_BINARY [COUNT] [idle|head|none]
//! ```
//!
//! Starts the binary with one shard (`jimbus_harness::Launcher`), opens COUNT
//! connections (default 1,000) and prints the growth of the server's VmRSS per
//! connection and what the memory budget charged per connection
//! (`jimbus_budget_used_bytes`). Modes: `idle` sends one `GET /health` on each
//! and keeps it open, `head` sends an unfinished 60,000-byte head on each
//! (held until the header timeout), `none` sends nothing. Needs `ulimit -n`
//! above COUNT plus a few.

use jimbus_harness::{Jimbus, Launcher};
use std::io::{Read, Write};
use std::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let binary = args.first().expect("usage: connection_memory JIMBUS_BINARY [COUNT] [idle|head|none]");
    let count: usize = args.get(1).map_or(1000, |n| n.parse().expect("COUNT is a number"));
    let mode = args.get(2).map_or("idle", String::as_str);
    let connections = (count + 16).to_string();
    let server = Launcher::new(binary).args(&["--shards", "1", "--max-connections", &connections]).start();
    let process = server.process().expect("the server runs");
    let (rss, used) = (process.settled_rss_kib(), server.metric("jimbus_budget_used_bytes"));
    let open = open_connections(&server, count, mode);
    let grown = process.settled_rss_kib().saturating_sub(rss);
    let charged = server.metric("jimbus_budget_used_bytes") - used;
    println!(
        "{mode}: {count} connections, VmRSS {:.1} KiB and budget {:.1} KiB per connection",
        grown as f64 / count as f64,
        charged / count as f64 / 1024.0
    );
    drop(open);
}

/// `count` connections to `server`, each as `mode` says.
fn open_connections(server: &Jimbus, count: usize, mode: &str) -> Vec<TcpStream> {
    let head = format!("POST /api/v1/events HTTP/1.1\r\nHost: x\r\nX-Pad: {}", "h".repeat(60_000));
    (0..count)
        .map(|_| {
            let mut conn = TcpStream::connect(server.http).expect("the server accepts");
            match mode {
                "idle" => {
                    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("a request");
                    let _ = conn.read(&mut [0; 4096]).expect("an answer");
                }
                "head" => conn.write_all(head.as_bytes()).expect("a head"),
                "none" => {}
                other => panic!("unknown mode {other}: idle, head or none"),
            }
            conn
        })
        .collect()
}

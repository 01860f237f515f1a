//! The transport's floor (`jimbus_perf::floor`): a server that reads each
//! request whole and answers it without looking at it, for docs/perf.md.
//!
//! ```text
//! cargo build --release -p jimbus-perf --example http_floor
//! target/release/examples/http_floor 127.0.0.1:PORT &
//! perf/wrk-cpu.sh $! http://127.0.0.1:PORT/api/v1/events/batch 8
//! ```
//!
//! or `FLOOR=target/release/examples/http_floor perf/compare-old-bus.sh …`,
//! which measures it in the same rounds as jimbus and the old bus.

fn main() -> std::io::Result<()> {
    let given = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let address = given.parse().map_err(|e| std::io::Error::other(format!("{given}: {e} (want HOST:PORT)")))?;
    let executors = std::thread::available_parallelism().map_or(1, usize::from);
    println!("http_floor on {address}, {executors} executors");
    jimbus_perf::floor::run(address, executors)
}

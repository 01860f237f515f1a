//! The whole ingest path on one core, without sockets (see `jimbus_perf::ingest`):
//! the field mod's 50-event batch (the same body as `perf/wrk/fair-batch50.lua`)
//! from bytes to a durable-path answer, with 32 requests in flight as wrk
//! -c32 keeps them. Throughput is in events.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jimbus_perf::ingest::{ingest, IngestRun};
use std::time::Duration;

/// The server's allocator, with its settings (`jimbus_net::allocator::tune`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn whole_path(c: &mut Criterion) {
    jimbus_net::allocator::tune();
    let body = jimbus_perf::fair_batch50();
    let events = 50u64;
    let mut group = c.benchmark_group("ingest_path");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("fair_batch50_c32", |b| {
        b.iter_custom(|iters| {
            // Each iteration is one request; spread over 32 clients.
            let clients = 32usize;
            let per_client = (iters as usize).div_ceil(clients).max(1);
            let report = ingest(&body, IngestRun { requests_per_client: per_client, clients });
            assert_eq!(report.events, per_client as u64 * clients as u64 * events, "every event stored");
            report.elapsed.mul_f64(iters as f64 / (per_client * clients) as f64)
        })
    });
    group.finish();
}

criterion_group!(benches, whole_path);
criterion_main!(benches);

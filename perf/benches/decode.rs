//! Decoding mod batches: jimbus's dialect decoder (which also builds the typed
//! protobuf events) against serde_json parsing the same strict-JSON bytes into a
//! `Value` tree (the old bus's approach, which does less work and rejects quirks).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_perf::mod_batch;
use prost::Message;
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_batch");
    for events in [1usize, 50, 500] {
        let strict = mod_batch(events, 0, false);
        let quirky = mod_batch(events, 0, true);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::new("jimbus", events), &strict, |b, body| {
            b.iter(|| decode_body(black_box(body), Endpoint::Batch).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("jimbus_quirky", events), &quirky, |b, body| {
            b.iter(|| decode_body(black_box(body), Endpoint::Batch).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", events), &strict, |b, body| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
        });
    }
    group.finish();

    let body = mod_batch(50, 0, true);
    let decoded = decode_body(&body, Endpoint::Batch).unwrap();
    let mut group = c.benchmark_group("protobuf_encode");
    group.throughput(Throughput::Elements(50));
    group.bench_function("event_x50", |b| {
        let mut buf = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            buf.clear();
            for e in &decoded.events {
                e.event.encode(&mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

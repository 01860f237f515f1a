//! The embedded log's hot paths: appending group commits (with and without
//! fdatasync) through `SegmentWriter` on a glommio executor, and fanning one
//! shard's records out to several subscribers (read from the log, turned into
//! the gRPC message bytes tonic sends), with the stored bytes handed on as they
//! are and, as the baseline, decoded and encoded again.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_core::record::{self, RecordKind};
use jimbus_net::embedded::log::{read_frames, SegmentWriter};
use jimbus_net::embedded::{FsyncMode, LogOptions, Retention};
use jimbus_perf::mod_batch;
use prost::Message;
use std::time::{Duration, Instant};

const GROUP: usize = 50;

/// The protobuf bytes of `GROUP` typical mod events.
fn messages() -> Vec<Vec<u8>> {
    let body = mod_batch(GROUP, 0, true);
    decode_body(&body, Endpoint::Batch).unwrap().events.iter().map(|e| e.event.encode_to_vec()).collect()
}

fn options(fsync: FsyncMode) -> LogOptions {
    // Segments prepared ahead as the server's are.
    let segment_bytes = 64 << 20;
    LogOptions {
        fsync,
        segment_bytes,
        tail_cache_bytes: 8 << 20,
        retention: Retention::default(),
        prepare_ahead: LogOptions::prepares_ahead(fsync, segment_bytes),
    }
}

/// Runs `f` on a fresh glommio executor and returns what it measured.
fn on_glommio<F, Fut>(f: F) -> Duration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Duration> + 'static,
{
    LocalExecutorBuilder::default().spawn(f).expect("executor").join().expect("bench task")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Elements(GROUP as u64));
    for (name, fsync) in [("fsync_never", FsyncMode::Never), ("fsync_batch", FsyncMode::Batch)] {
        group.bench_function(BenchmarkId::new(name, GROUP), |b| {
            b.iter_custom(|iters| {
                let messages = messages();
                on_glommio(move || async move {
                    let dir = tempfile::tempdir().unwrap();
                    let (mut writer, _) = SegmentWriter::open(dir.path(), options(fsync), 0, |_| {}).await.unwrap();
                    let started = Instant::now();
                    for _ in 0..iters {
                        for m in &messages {
                            writer.stage(RecordKind::Event, "balatro.s.SCORING", m, 1);
                        }
                        writer.commit().await.unwrap();
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// How a subscription turns a stored record into the bytes tonic sends.
#[derive(Clone, Copy)]
enum Delivery {
    /// jimbus: views of the stored bytes, copied once into the frame.
    Stored,
    /// The baseline (jimbus before it kept bodies encoded): the stored
    /// protobuf decoded into a `SubscribeResponse` and encoded again.
    Decoded,
}

/// The gRPC message bytes of one record, written into `out`.
fn encode_delivery(how: Delivery, frame: &bytes::Bytes, out: &mut bytes::BytesMut) {
    let rec = record::decode(frame).unwrap();
    match how {
        Delivery::Stored => jimbus_net::embedded::delivery(0, frame, &rec).encode(out).unwrap(),
        Delivery::Decoded => {
            let event = jimbus_proto::events::Event::decode(rec.message).unwrap();
            let response = jimbus_proto::bus::SubscribeResponse {
                topic: rec.topic.to_string(),
                partition: 0,
                offset: rec.offset,
                delivery_count: 1,
                body: Some(jimbus_proto::bus::subscribe_response::Body::Event(event)),
            };
            response.encode(out).unwrap()
        }
    }
}

fn fan_out(c: &mut Criterion) {
    const RECORDS: usize = 10_000;
    let mut group = c.benchmark_group("subscriber_fan_out");
    group.sample_size(10);
    for (name, how) in [("stored_bytes", Delivery::Stored), ("decode_reencode", Delivery::Decoded)] {
        for subscribers in [1usize, 4] {
            group.throughput(Throughput::Elements((RECORDS * subscribers) as u64));
            group.bench_function(BenchmarkId::new(name, subscribers), |b| {
                b.iter_custom(|iters| {
                    let messages = messages();
                    on_glommio(move || async move {
                        let dir = tempfile::tempdir().unwrap();
                        let (mut writer, _) =
                            SegmentWriter::open(dir.path(), options(FsyncMode::Never), 0, |_| {}).await.unwrap();
                        for i in 0..RECORDS {
                            writer.stage(RecordKind::Event, "balatro.s.SCORING", &messages[i % GROUP], 1);
                        }
                        writer.commit().await.unwrap();
                        let index = writer.index();
                        let mut out = bytes::BytesMut::with_capacity(1 << 20);
                        let started = Instant::now();
                        for _ in 0..iters {
                            for _ in 0..subscribers {
                                let mut at = 0;
                                while at < RECORDS as u64 {
                                    let (frames, next) = read_frames(&index, at, 512, usize::MAX).await.unwrap();
                                    for frame in &frames {
                                        encode_delivery(how, frame, &mut out);
                                    }
                                    out.clear();
                                    at = next;
                                }
                            }
                        }
                        started.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append, fan_out);
criterion_main!(benches);

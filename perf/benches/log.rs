//! The embedded log's hot paths: appending group commits (with and without
//! fdatasync) through `SegmentWriter` on a glommio executor, and fanning one
//! shard's records out to several subscribers (read from the log, decoded into
//! deliveries, sent on each subscriber's channel).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use jimbus_core::ingest::{decode_body, Endpoint};
use jimbus_core::record::{self, RecordKind};
use jimbus_net::log::{read_frames, FsyncMode, LogOptions, Retention, SegmentWriter};
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
    LogOptions { fsync, segment_bytes: 64 << 20, tail_cache_bytes: 8 << 20, retention: Retention::default() }
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

fn fan_out(c: &mut Criterion) {
    const RECORDS: usize = 10_000;
    let mut group = c.benchmark_group("subscriber_fan_out");
    group.sample_size(10);
    for subscribers in [1usize, 4] {
        group.throughput(Throughput::Elements((RECORDS * subscribers) as u64));
        group.bench_function(BenchmarkId::new("deliveries", subscribers), |b| {
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
                    let started = Instant::now();
                    for _ in 0..iters {
                        let channels: Vec<_> = (0..subscribers).map(|_| flume::unbounded()).collect();
                        for (tx, _) in &channels {
                            let mut at = 0;
                            while at < RECORDS as u64 {
                                let (frames, next) = read_frames(&index, at, 512).await.unwrap();
                                for frame in &frames {
                                    let rec = record::decode(frame).unwrap();
                                    tx.send(jimbus_net::shard::delivery(0, &rec).unwrap()).unwrap();
                                }
                                at = next;
                            }
                        }
                        for (_, rx) in channels {
                            assert_eq!(rx.drain().count(), RECORDS);
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, fan_out);
criterion_main!(benches);

//! The dedup window's cost per new key as the pump pays it: a `contains`
//! when an event is staged, between the decoding and encoding of other
//! events, then an `insert` once its commit is durable, for keys never seen
//! before (the common case), in a window filled to its steady state (two
//! full generations). At the server's default (400,000 keys per generation,
//! two 9 MiB tables) each lookup reaches memory the caches no longer hold:
//! callgrind cannot see that, so this bench does, beside a 4,000-key window
//! whose tables stay cached.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jimbus_core::dedup::{dedup_key_of_encoding, DedupWindow};
use std::hint::black_box;

/// New keys as the server makes them: the dedup key of a distinct encoding.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u128 {
        self.0 += 1;
        dedup_key_of_encoding(&self.0.to_le_bytes())
    }
}

/// Keys per measured batch: one group commit of the pump (16 requests of 50).
const BATCH: usize = 800;

/// What the pump reads between two events' lookups (one event's share of
/// the bodies, records and tails it passes through), from a region far larger
/// than the caches, so that the table's lines and page-table entries are
/// evicted as they are in the server.
const BETWEEN: usize = 2048;

/// Stands in for the work between two lookups: reads `BETWEEN` bytes of
/// `other` at `at`, a line at a time.
fn other_work(other: &[u8], at: &mut usize) -> u64 {
    if *at + BETWEEN > other.len() {
        *at = 0;
    }
    let sum = other[*at..*at + BETWEEN].iter().step_by(64).map(|&b| u64::from(b)).sum();
    *at += BETWEEN;
    sum
}

fn window(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_new_key");
    group.throughput(Throughput::Elements(BATCH as u64));
    let other = vec![1u8; 64 << 20];
    for capacity in [4_000, 400_000] {
        let mut window = DedupWindow::new(capacity);
        let mut keys = Keys(0);
        let mut offset = 0u64;
        for _ in 0..2 * capacity + 1 {
            window.insert(keys.next(), offset);
            offset += 1;
        }
        let mut at = 0;
        group.bench_with_input(BenchmarkId::from_parameter(capacity), &capacity, |b, _| {
            let mut batch = Vec::with_capacity(BATCH);
            b.iter(|| {
                batch.clear();
                batch.extend((0..BATCH).map(|_| keys.next()));
                let mut known = 0;
                for &key in &batch {
                    known += other_work(&other, &mut at);
                    known += u64::from(window.contains(key));
                }
                for &key in &batch {
                    window.insert(key, offset);
                    offset += 1;
                }
                black_box(known)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);

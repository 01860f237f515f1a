//! Subscriptions on one shard: where a start position falls in the log, and
//! the task that streams matching records to one ephemeral subscriber. Each
//! delivery is a view of the stored bytes (topic and message), never a
//! decode; the sender copies a read's deliveries once before it waits. A
//! subscription waits for room in its subscriber's channel, so a slow
//! subscriber slows only itself and never makes the shard buffer, and it
//! reads no more than its share of that room at a time, so what it holds
//! while it waits stays small however many shards there are; a record larger
//! than the share is read from disk, and copied, only with the subscriber's
//! room for it taken. This module
//! reads the log and must never write it or change a shard's state.

use super::log::{read_frames, read_log, LogRead, SharedIndex};
use crate::bus::{DeliverySender, Sent, Start, MAX_DELIVERY_BATCH};
use crate::observe;
use jimbus_core::record::{self, RecordKind};
use jimbus_core::topic::Pattern;
use jimbus_proto::delivery::{BodyKind, EncodedDelivery};
use std::rc::Rc;
use std::time::Duration;

/// Resolves a start position at once (a time start uses the coarse time index).
pub(super) fn start_offset_now(index: &SharedIndex, start: Start) -> u64 {
    let log = index.borrow();
    match start {
        Start::Latest => log.end(),
        Start::Earliest => log.start(),
        Start::Offset(offset) => offset.clamp(log.start(), log.end()),
        Start::TimeMicros(t) => log.offset_near_time(t),
    }
}

/// Resolves a start position to an offset on this shard.
async fn start_offset(index: &SharedIndex, start: Start) -> u64 {
    let (first, end) = {
        let log = index.borrow();
        (log.start(), log.end())
    };
    match start {
        Start::Latest => end,
        Start::Earliest => first,
        Start::Offset(offset) => offset.clamp(first, end),
        Start::TimeMicros(t) => {
            let mut at = index.borrow().offset_near_time(t);
            loop {
                let Ok((frames, next)) = read_frames(index, at, 256, usize::MAX).await else { return at };
                if frames.is_empty() {
                    return at;
                }
                for frame in &frames {
                    match record::decode_without_checksum(frame) {
                        Ok(rec) if rec.time_us >= t => return rec.offset,
                        _ => {}
                    }
                }
                at = next;
            }
        }
    }
}

/// The delivery of one record: views of the stored topic and message bytes
/// of `frame`, which `rec` was decoded from. Nothing is decoded or copied.
pub fn delivery(shard: usize, frame: &bytes::Bytes, rec: &record::Record<'_>) -> EncodedDelivery {
    let kind = match rec.kind {
        RecordKind::Event => BodyKind::Event,
        RecordKind::Aggregated => BodyKind::Aggregated,
        RecordKind::DeadLetter => BodyKind::DeadLetter,
    };
    EncodedDelivery {
        topic: frame.slice_ref(rec.topic.as_bytes()),
        partition: shard as u32,
        offset: rec.offset,
        delivery_count: 1,
        kind,
        body: frame.slice_ref(rec.message),
        sequence_override: None,
    }
}

/// Streams the records of this shard that match `pattern` to one subscriber,
/// waiting for room in its channel (so a slow subscriber slows only itself and
/// never makes the shard buffer), until the subscriber goes away.
pub(super) async fn subscription(
    shard: usize,
    index: SharedIndex,
    pattern: Pattern,
    start: Start,
    out: DeliverySender,
) {
    let index: Rc<_> = index;
    let mut cursor = start_offset(&index, start).await;
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    // Lag is measured once the subscription has caught up: a replay from the
    // start is not late.
    let mut live = false;
    // The subscriber's room, taken for a record past the share before it is
    // read (or read again, after a send gave it back).
    let mut reserved = None;
    while !out.is_disconnected() {
        let listener = index.borrow().committed.listen();
        if cursor >= index.borrow().end() {
            live = true;
            let idle = glommio::timer::Timer::new(Duration::from_secs(1));
            futures_lite::future::or(listener, async {
                idle.await;
            })
            .await;
            continue;
        }
        let read = read_log(&index, cursor, MAX_DELIVERY_BATCH, out.read_share(), reserved.is_some()).await;
        let (frames, next) = match read {
            Ok(LogRead::Frames(frames, next)) => (frames, next),
            Ok(LogRead::Larger(bytes)) => {
                reserved = out.reserve_bytes(bytes).await;
                continue;
            }
            Err(e) => {
                tracing::error!(shard, error = %e, "subscription read failed");
                break;
            }
        };
        if frames.is_empty() {
            cursor = next.max(cursor + 1).min(index.borrow().end());
            continue;
        }
        let mut oldest = None;
        let mut batch = Vec::with_capacity(frames.len());
        for frame in &frames {
            let Ok(rec) = record::decode_without_checksum(frame) else { continue };
            if !pattern.matches(rec.topic) {
                continue;
            }
            oldest.get_or_insert(rec.time_us);
            batch.push(delivery(shard, frame, &rec));
        }
        // One read's matches go out as one batch (cut to the subscriber's
        // limit), copied before the wait for the subscriber's room, so that
        // a stalled subscriber pins neither the read nor a commit buffer.
        drop(frames);
        match out.send(batch, reserved.take()).await {
            Sent::Queued => {}
            Sent::Deferred(batch) => {
                let room = out.reserve(&batch);
                drop(batch);
                reserved = room.await;
                continue;
            }
            Sent::Gone => break,
        }
        if let Some(oldest) = oldest.filter(|_| live) {
            observe::delivered(oldest);
        }
        cursor = next;
    }
    metrics::gauge!("jimbus_subscriptions").decrement(1.0);
}

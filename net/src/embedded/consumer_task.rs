//! The delivery task of one durable consumer on one shard: it reads the log
//! and sends records to the consumer's members, and asks the shard's pump,
//! through the pump's command queue, what to send ([`ConsumerRequest`]). It
//! also moves deliveries past `max_deliver` to the dead-letter topic (an
//! append like any other) and keeps the consumer's backlog gauges. It must
//! never change the consumer's state itself: the pump owns it.

use super::command::ConsumerRequest;
use super::consumer::{Assignment, Plan};
use super::log::{read_frames, SharedIndex};
use super::router::ShardRouter;
use super::subscription::delivery;
use crate::bus::{read_share, AppendItem, Bus, DeliveryBatch, DeliverySender, Sent, SUBSCRIBER_BYTES};
use crate::clock::now_micros;
use jimbus_core::record::{self, RecordKind};
use jimbus_core::topic::Pattern;
use jimbus_proto::bus;
use std::time::{Duration, Instant};

/// How many records one read of the log looks at.
const READ_AHEAD: usize = 256;

/// Who the task serves: one life of one durable name on one shard.
pub struct ConsumerTask {
    pub shard: usize,
    pub name: String,
    /// The life of the name it serves (see [`super::command::Command::Consumer`]).
    pub incarnation: u64,
    /// The consumer's pattern, to tell the pump which records match.
    pub pattern: Pattern,
    pub index: SharedIndex,
    pub router: ShardRouter,
}

impl ConsumerTask {
    /// Delivers until the consumer is removed or the shard stops.
    pub async fn run(self) {
        let mut gauges = Gauges::new(&self.name, self.shard);
        loop {
            let committed = self.index.borrow().committed.listen();
            let Some(plan) = self.plan().await else { return };
            gauges.update(&self.index, plan.floor).await;
            self.dead_letter(&plan.exhausted).await;
            self.send(plan.resend, Vec::new()).await;
            let end = self.index.borrow().end();
            if plan.room > 0 && plan.cursor < end {
                self.read_and_send(plan.cursor).await;
                continue;
            }
            let wait = plan.deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
            let timer = glommio::timer::sleep(wait.clamp(Duration::from_millis(5), Duration::from_secs(1)));
            if plan.room > 0 {
                futures_lite::future::or(futures_lite::future::or(committed, plan.wake), timer).await;
            } else {
                // Without a member or room, new records change nothing: only an
                // ack, a member or a deadline does. Waking on every commit would
                // send the pump a plan request per idle consumer per commit.
                futures_lite::future::or(plan.wake, timer).await;
            }
        }
    }

    async fn plan(&self) -> Option<Plan> {
        let (reply, answer) = flume::bounded(1);
        self.ask(ConsumerRequest::Plan { reply }).await;
        answer.recv_async().await.ok().flatten()
    }

    async fn ask(&self, request: ConsumerRequest) {
        // A stopped shard drops the reply sender: the caller's receive fails and the task ends.
        let _ = self.router.ask_consumer(self.shard, &self.name, self.incarnation, request).await;
    }

    /// Reads records from `cursor`, offers them to the pump, and sends what it assigns.
    async fn read_and_send(&self, cursor: u64) {
        let Ok((frames, next)) =
            read_frames(&self.index, cursor, READ_AHEAD, read_share(SUBSCRIBER_BYTES, self.router.shards())).await
        else {
            // Nothing can be read right now: wait for the next commit or timer.
            glommio::timer::sleep(Duration::from_millis(5)).await;
            return;
        };
        let matching: Vec<(u64, bytes::Bytes)> = frames
            .into_iter()
            .filter_map(|frame| {
                let rec = record::decode_without_checksum(&frame).ok()?;
                let offset = rec.offset;
                self.pattern.matches(rec.topic).then_some((offset, frame))
            })
            .collect();
        let offsets = matching.iter().map(|(offset, _)| *offset).collect();
        let (reply, answer) = flume::bounded(1);
        let to = next.max(cursor + 1);
        self.ask(ConsumerRequest::Offer { from: cursor, to, matching: offsets, reply }).await;
        let assigned = answer.recv_async().await.unwrap_or_default();
        self.send(assigned, matching).await;
    }

    /// Sends each assignment to its member, reading the record unless `read`
    /// already holds it; each member gets its share as one batch, in order. A
    /// member that went away is noticed by the pump at the next plan, which
    /// sends its deliveries again. A batch past the read share whose room is
    /// not free ([`Sent::Deferred`]) is dropped with `read`, and read and sent
    /// again once its room is taken, with nothing held meanwhile.
    async fn send(&self, assigned: Vec<Assignment>, mut read: Vec<(u64, bytes::Bytes)>) {
        let mut members: Vec<(DeliverySender, Vec<(u64, u32)>)> = Vec::new();
        for Assignment { offset, count, member } in assigned {
            match members.iter_mut().find(|(to, _)| to.same_subscriber(&member)) {
                Some((_, deliveries)) => deliveries.push((offset, count)),
                None => members.push((member, vec![(offset, count)])),
            }
        }
        for (member, deliveries) in members {
            let mut reserved = None;
            while let Sent::Deferred(batch) = member.send(self.batch(&deliveries, &read).await, reserved.take()).await {
                let room = member.reserve(&batch);
                drop((batch, std::mem::take(&mut read)));
                reserved = room.await;
            }
        }
    }

    /// The deliveries of the records at these offsets, with their delivery
    /// counts, taken from `read` where it holds them and read otherwise.
    async fn batch(&self, deliveries: &[(u64, u32)], read: &[(u64, bytes::Bytes)]) -> DeliveryBatch {
        let mut batch = Vec::with_capacity(deliveries.len());
        for &(offset, count) in deliveries {
            let frame = match read.binary_search_by_key(&offset, |(at, _)| *at) {
                Ok(i) => read[i].1.clone(),
                Err(_) => match read_frames(&self.index, offset, 1, usize::MAX).await {
                    Ok((frames, _)) if !frames.is_empty() => frames[0].clone(),
                    _ => continue,
                },
            };
            let Ok(rec) = record::decode_without_checksum(&frame) else { continue };
            let mut delivery = delivery(self.shard, &frame, &rec);
            delivery.delivery_count = count;
            batch.push(delivery);
        }
        batch
    }

    /// Moves each exhausted delivery to the dead-letter topic; it is done once
    /// the dead letter is durable, not merely queued, else it is sent again.
    async fn dead_letter(&self, exhausted: &[(u64, u32)]) {
        for &(offset, count) in exhausted {
            let kept = self.append_dead_letter(offset, count).await;
            if kept {
                metrics::counter!("jimbus_consumer_dead_lettered_total").increment(1);
            }
            self.ask(ConsumerRequest::Settle { offset, count, dead_lettered: kept }).await;
        }
    }

    async fn append_dead_letter(&self, offset: u64, count: u32) -> bool {
        let Ok((frames, _)) = read_frames(&self.index, offset, 1, usize::MAX).await else { return false };
        let Some(frame) = frames.first() else { return false };
        let Ok(rec) = record::decode_without_checksum(frame) else { return false };
        if rec.kind == RecordKind::DeadLetter {
            // A dead letter is not dead-lettered again.
            return true;
        }
        let letter = bus::DeadLetter {
            reason: format!("consumer {:?}: delivered {count} times without an ack", self.name),
            raw: bytes::Bytes::copy_from_slice(rec.message),
            origin: rec.topic.to_string(),
            ..Default::default()
        };
        match Bus::append(&self.router, vec![AppendItem::DeadLetter(Box::new(letter))]).await {
            Ok(durable) => durable.await.is_ok(),
            Err(_) => false,
        }
    }
}

/// How often the backlog age is read from the log.
const GAUGE_EVERY: Duration = Duration::from_secs(1);

/// A consumer's backlog on its shard: how many records are at or past its ack
/// floor, and how old the record at the floor (the oldest not yet done) is;
/// 0 when it has everything.
struct Gauges {
    backlog: metrics::Gauge,
    age: metrics::Gauge,
    /// When the age was last read (it costs a read of the log).
    read_at: Option<Instant>,
}

impl Gauges {
    fn new(name: &str, shard: usize) -> Self {
        let (name, shard) = (name.to_string(), shard.to_string());
        Self {
            backlog: metrics::gauge!("jimbus_consumer_backlog_records", "consumer" => name.clone(), "shard" => shard.clone()),
            age: metrics::gauge!("jimbus_consumer_oldest_unacked_age_seconds", "consumer" => name, "shard" => shard),
            read_at: None,
        }
    }

    async fn update(&mut self, index: &SharedIndex, floor: u64) {
        let pending = index.borrow().end().saturating_sub(floor);
        self.backlog.set(pending as f64);
        if self.read_at.is_some_and(|at| at.elapsed() < GAUGE_EVERY) {
            return;
        }
        self.read_at = Some(Instant::now());
        let oldest = if pending == 0 { None } else { record_time(index, floor).await };
        self.age.set(oldest.map_or(0.0, |t| now_micros().saturating_sub(t) as f64 / 1e6));
    }
}

/// The receive time of the record at `offset`, if it can be read.
async fn record_time(index: &SharedIndex, offset: u64) -> Option<u64> {
    let (frames, _) = read_frames(index, offset, 1, usize::MAX).await.ok()?;
    let frame = frames.first()?;
    record::decode_without_checksum(frame).ok().map(|rec| rec.time_us)
}

//! Durable consumers of one shard: what each named subscription has been sent,
//! what it acknowledged, and what must be sent again.
//!
//! A durable consumer keeps an ack floor (every offset below it is done) and the
//! acknowledged offsets above it, and persists both in `consumers.json` before an
//! Ack is answered, so it resumes at its floor after a restart (at-least-once:
//! what was delivered but not acked is delivered again). Deliveries not acked
//! within `ack_wait` are sent again with a higher delivery count; after
//! `max_deliver` deliveries the record is moved to `deadletter` and counted as
//! done. At most `max_in_flight` deliveries are unacknowledged at once. Several
//! clients may share one consumer (a group): each delivery goes to one of them.
//! The delivery task reads the log; it never writes it (dead letters go through
//! the pump like any append).

use crate::bus::{AppendItem, Bus, ConsumerOptions};
use crate::log::{read_frames, replace_file, LogError, SharedIndex};
use crate::shard::ShardRouter;
use jimbus_core::record::{self, RecordKind};
use jimbus_core::topic::Pattern;
use jimbus_proto::bus;
use jimbus_proto::delivery::EncodedDelivery;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What is persisted of a consumer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConsumerRecord {
    pub pattern: String,
    pub ack_floor: u64,
    pub acked: Vec<u64>,
    pub options: ConsumerOptions,
}

struct InFlight {
    deadline: Instant,
    count: u32,
    /// Who has it: if that client goes away, it is sent again at once rather
    /// than after the ack deadline.
    member: flume::Sender<EncodedDelivery>,
}

/// One durable consumer on one shard.
pub struct Consumer {
    pub name: String,
    pub pattern: Pattern,
    pub options: ConsumerOptions,
    /// Every offset below this is done (acked, skipped or dead-lettered).
    ack_floor: u64,
    /// Done offsets at or above the floor.
    acked: BTreeSet<u64>,
    /// The next offset never looked at.
    cursor: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Offsets whose ack deadline passed, with their delivery count so far.
    redeliver: BTreeMap<u64, u32>,
    /// The clients sharing this consumer.
    members: Vec<flume::Sender<EncodedDelivery>>,
    next_member: usize,
    /// Woken by acks and new members.
    wake: event_listener::Event,
}

pub type SharedConsumer = Rc<RefCell<Consumer>>;

impl Consumer {
    pub fn new(name: String, pattern: Pattern, options: ConsumerOptions, start: u64) -> Self {
        Self {
            name,
            pattern,
            options,
            ack_floor: start,
            acked: BTreeSet::new(),
            cursor: start,
            in_flight: BTreeMap::new(),
            redeliver: BTreeMap::new(),
            members: Vec::new(),
            next_member: 0,
            wake: event_listener::Event::new(),
        }
    }

    pub fn restore(name: String, record: ConsumerRecord) -> Option<Self> {
        let pattern = Pattern::parse(&record.pattern).ok()?;
        let mut consumer = Self::new(name, pattern, record.options, record.ack_floor);
        consumer.acked = record.acked.into_iter().filter(|&o| o >= record.ack_floor).collect();
        Some(consumer)
    }

    pub fn record(&self) -> ConsumerRecord {
        ConsumerRecord {
            pattern: self.pattern.to_string(),
            ack_floor: self.ack_floor,
            acked: self.acked.iter().copied().collect(),
            options: self.options,
        }
    }

    pub fn ack_floor(&self) -> u64 {
        self.ack_floor
    }

    pub fn add_member(&mut self, member: flume::Sender<EncodedDelivery>) {
        self.members.push(member);
        self.wake.notify(usize::MAX);
    }

    /// Marks an offset done; true when it was waiting for an ack.
    pub fn ack(&mut self, offset: u64) -> bool {
        let pending = self.in_flight.remove(&offset).is_some() || self.redeliver.remove(&offset).is_some();
        if pending {
            self.done(offset);
            self.wake.notify(usize::MAX);
        }
        pending
    }

    fn done(&mut self, offset: u64) {
        if offset >= self.ack_floor {
            self.acked.insert(offset);
        }
        while self.acked.remove(&self.ack_floor) {
            self.ack_floor += 1;
        }
    }

    /// Moves expired deliveries to the redelivery set; returns those that have
    /// been delivered `max_deliver` times, which the caller dead-letters.
    fn expire(&mut self, now: Instant) -> Vec<(u64, u32)> {
        let expired: Vec<u64> = self.in_flight.iter().filter(|(_, f)| f.deadline <= now).map(|(o, _)| *o).collect();
        let mut exhausted = Vec::new();
        for offset in expired {
            let Some(flight) = self.in_flight.remove(&offset) else { continue };
            if flight.count >= self.options.max_deliver {
                exhausted.push((offset, flight.count));
            } else {
                self.redeliver.insert(offset, flight.count);
            }
        }
        exhausted
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.deadline).min()
    }

    fn has_room(&self) -> bool {
        self.in_flight.len() < self.options.max_in_flight.max(1)
    }

    fn drop_closed_members(&mut self) {
        self.members.retain(|m| !m.is_disconnected());
        let orphaned: Vec<u64> =
            self.in_flight.iter().filter(|(_, f)| f.member.is_disconnected()).map(|(o, _)| *o).collect();
        for offset in orphaned {
            if let Some(flight) = self.in_flight.remove(&offset) {
                self.redeliver.insert(offset, flight.count);
            }
        }
    }
}

/// Reads `consumers.json` from a shard's directory.
pub fn load(dir: &Path) -> std::io::Result<BTreeMap<String, ConsumerRecord>> {
    match std::fs::read(dir.join("consumers.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Writes `consumers.json` durably: a temporary file, fdatasync, rename, and a
/// sync of the directory, so a crash leaves the old or the new file, never half.
pub async fn save(dir: &Path, records: &BTreeMap<String, ConsumerRecord>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(records).map_err(std::io::Error::other)?;
    replace_file(&dir.join("consumers.json"), &bytes).await.map_err(|e| match e {
        LogError::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    })
}

/// Sends one consumer's records to its members until the shard stops.
pub async fn deliver(shard: usize, index: SharedIndex, consumer: SharedConsumer, router: ShardRouter) {
    loop {
        dead_letter_exhausted(&index, &consumer, &router).await;
        let committed = index.borrow().committed.listen();
        let woken = consumer.borrow().wake.listen();
        let next = pick_next(&index, &consumer).await;
        match next {
            Some((offset, count, frame)) => send(shard, &consumer, offset, count, &frame).await,
            None => {
                let deadline = consumer.borrow().next_deadline();
                let wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
                let timer = glommio::timer::sleep(wait.clamp(Duration::from_millis(5), Duration::from_secs(1)));
                futures_lite::future::or(futures_lite::future::or(committed, woken), timer).await;
                consumer.borrow_mut().drop_closed_members();
            }
        }
    }
}

/// The next record to deliver and its delivery count so far, or `None` when
/// there is nothing to send or no one to send it to.
async fn pick_next(index: &SharedIndex, consumer: &SharedConsumer) -> Option<(u64, u32, bytes::Bytes)> {
    {
        let c = consumer.borrow();
        if c.members.is_empty() || !c.has_room() {
            return None;
        }
    }
    let redelivery = consumer.borrow().redeliver.first_key_value().map(|(o, n)| (*o, *n));
    if let Some((offset, count)) = redelivery {
        consumer.borrow_mut().redeliver.remove(&offset);
        let (frames, _) = read_frames(index, offset, 1).await.ok()?;
        return frames.into_iter().next().map(|frame| (offset, count, frame));
    }
    loop {
        let cursor = consumer.borrow().cursor;
        if cursor >= index.borrow().end() {
            return None;
        }
        let (frames, next) = read_frames(index, cursor, 256).await.ok()?;
        if frames.is_empty() {
            consumer.borrow_mut().cursor = next.max(cursor + 1);
            continue;
        }
        let mut c = consumer.borrow_mut();
        for frame in frames {
            let Ok(rec) = record::decode(&frame) else { continue };
            c.cursor = rec.offset + 1;
            if c.acked.contains(&rec.offset) || rec.offset < c.ack_floor {
                continue;
            }
            if !c.pattern.matches(rec.topic) {
                c.done(rec.offset);
                continue;
            }
            return Some((rec.offset, 0, frame));
        }
    }
}

/// Sends one record to a member, round robin; waits for room (flow control).
async fn send(shard: usize, consumer: &SharedConsumer, offset: u64, count: u32, frame: &bytes::Bytes) {
    let Ok(rec) = record::decode(frame) else { return };
    let mut delivery = crate::shard::delivery(shard, frame, &rec);
    delivery.delivery_count = count + 1;
    loop {
        let member = {
            let mut c = consumer.borrow_mut();
            c.drop_closed_members();
            if c.members.is_empty() {
                // Nobody to send to: deliver again when someone subscribes.
                c.redeliver.insert(offset, count);
                return;
            }
            c.next_member = (c.next_member + 1) % c.members.len();
            let ack_wait = Duration::from_millis(c.options.ack_wait_ms);
            let member = c.members[c.next_member].clone();
            let flight = InFlight { deadline: Instant::now() + ack_wait, count: count + 1, member: member.clone() };
            c.in_flight.insert(offset, flight);
            member
        };
        match member.send_async(delivery.clone()).await {
            Ok(()) => return,
            Err(_) => {
                consumer.borrow_mut().in_flight.remove(&offset);
            }
        }
    }
}

async fn dead_letter_exhausted(index: &SharedIndex, consumer: &SharedConsumer, router: &ShardRouter) {
    let exhausted = consumer.borrow_mut().expire(Instant::now());
    for (offset, count) in exhausted {
        let Ok((frames, _)) = read_frames(index, offset, 1).await else { continue };
        let Some(frame) = frames.first() else { continue };
        let Ok(rec) = record::decode(frame) else { continue };
        let name = consumer.borrow().name.clone();
        let letter = bus::DeadLetter {
            reason: format!("consumer {name:?}: delivered {count} times without an ack"),
            raw: bytes::Bytes::copy_from_slice(rec.message),
            origin: rec.topic.to_string(),
            ..Default::default()
        };
        let kept = rec.kind == RecordKind::DeadLetter
            || Bus::append(router, vec![AppendItem::DeadLetter(Box::new(letter))]).await.is_ok();
        if kept {
            metrics::counter!("jimbus_consumer_dead_lettered_total").increment(1);
            consumer.borrow_mut().done(offset);
        } else {
            consumer.borrow_mut().redeliver.insert(offset, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(deadline: Instant, count: u32) -> InFlight {
        // A member that is still listening (the receiver is leaked on purpose).
        let (member, listening) = flume::unbounded();
        std::mem::forget(listening);
        InFlight { deadline, count, member }
    }

    fn consumer() -> Consumer {
        Consumer::new(
            "c".into(),
            Pattern::parse(">").unwrap(),
            ConsumerOptions { max_in_flight: 2, ack_wait_ms: 10, max_deliver: 2 },
            0,
        )
    }

    #[test]
    fn the_floor_advances_only_over_contiguous_acks() {
        let mut c = consumer();
        for o in 0..4 {
            c.in_flight.insert(o, flight(Instant::now(), 1));
        }
        assert!(c.ack(1));
        assert_eq!(c.ack_floor(), 0);
        assert!(c.ack(0));
        assert_eq!(c.ack_floor(), 2);
        assert!(!c.ack(0), "a second ack changes nothing");
        assert!(c.ack(3));
        assert_eq!(c.ack_floor(), 2);
        assert!(c.ack(2));
        assert_eq!(c.ack_floor(), 4);
        assert!(c.record().acked.is_empty());
    }

    #[test]
    fn expiry_redelivers_then_exhausts() {
        let mut c = consumer();
        let past = Instant::now() - Duration::from_secs(1);
        c.in_flight.insert(5, flight(past, 1));
        c.in_flight.insert(6, flight(past, 2));
        let exhausted = c.expire(Instant::now());
        assert_eq!(exhausted, vec![(6, 2)]);
        assert_eq!(c.redeliver.get(&5), Some(&1));
        assert!(c.in_flight.is_empty());
    }

    #[test]
    fn what_a_departed_member_held_is_sent_again_at_once() {
        let mut c = consumer();
        let later = Instant::now() + Duration::from_secs(60);
        let (gone, receiver) = flume::unbounded();
        drop(receiver);
        c.in_flight.insert(7, InFlight { deadline: later, count: 1, member: gone });
        c.in_flight.insert(8, flight(later, 1));
        c.drop_closed_members();
        assert_eq!(c.redeliver.get(&7), Some(&1));
        assert!(c.in_flight.contains_key(&8), "a listening member keeps its delivery");
    }

    #[test]
    fn a_record_round_trips_through_persistence() {
        let mut c = consumer();
        c.in_flight.insert(3, flight(Instant::now(), 1));
        c.ack(3);
        let restored = Consumer::restore("c".into(), c.record()).unwrap();
        assert_eq!(restored.ack_floor, 0);
        assert_eq!(restored.acked, BTreeSet::from([3]));
        assert_eq!(restored.cursor, 0);
    }
}

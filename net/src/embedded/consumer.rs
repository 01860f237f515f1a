//! Durable consumers of one shard: what each named subscription has been sent,
//! what it acknowledged, and what must be sent again.
//!
//! A durable consumer keeps the offsets it is done with as an ack floor and the
//! ranges done above it ([`DoneSet`]), so its state is proportional to what is
//! in flight, not to how far it has read. Acks are appended to a journal and
//! made durable before an Ack is answered ([`store`]), so a consumer resumes at
//! its floor after a restart (at-least-once: what was delivered but not acked
//! is delivered again). Deliveries not acked within `ack_wait` are sent again
//! with a higher delivery count; after `max_deliver` deliveries the record is
//! moved to `deadletter` and counted as done. At most `max_in_flight` (capped at
//! [`MAX_IN_FLIGHT`]) deliveries are unacknowledged at once. Several clients may
//! share one consumer (a group): each delivery goes to one of them.
//!
//! This module is the state and its rules, owned by the shard's pump and
//! changed only by it: the delivery task ([`super::consumer_task`]) reads the
//! log and sends, and asks the pump for a [`Plan`] and to [`Consumer::offer`]
//! what it read, through the pump's command queue like everything else. It
//! must never read or write the log.

use crate::bus::{ConsumerOptions, DeliverySender};
use jimbus_core::consumer_state::{DoneSet, JournalEntry, SnapshotEntry};
use jimbus_core::topic::Pattern;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The most deliveries one consumer may hold unacknowledged, whatever a client
/// asks: what is in flight is what its state grows with.
pub const MAX_IN_FLIGHT: usize = 65_536;

struct InFlight {
    /// When it is sent again if not acked.
    deadline: Instant,
    /// Deliveries so far, this one included.
    count: u32,
    /// Who has it: if that client goes away, it is sent again at once rather
    /// than after the ack deadline.
    member: DeliverySender,
}

/// Limits on a server's durable consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableLimits {
    /// Most durable names a server keeps; a subscription that would create
    /// one more is refused.
    pub max_names: usize,
    /// A consumer with no subscriber and no ack for this long is removed.
    pub idle_expiry: Option<Duration>,
}

impl Default for DurableLimits {
    fn default() -> Self {
        Self { max_names: 1024, idle_expiry: None }
    }
}

/// The durable names that exist on any shard, shared by the router (which
/// refuses a new name past the limit before it reaches a shard) and the shards
/// (which register what they restore or create and release what they remove).
#[derive(Debug)]
pub struct DurableNames {
    max: std::sync::atomic::AtomicUsize,
    /// Name → how many shards hold a consumer of that name (0: just reserved).
    names: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Default for DurableNames {
    fn default() -> Self {
        Self { max: DurableLimits::default().max_names.into(), names: Default::default() }
    }
}

impl DurableNames {
    pub fn set_limit(&self, max: usize) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lets `name` be subscribed: an existing name always, a new one while
    /// fewer than the limit exist.
    pub fn reserve(&self, name: &str) -> Result<(), String> {
        let mut names = crate::lock::lock(&self.names);
        if names.contains_key(name) {
            return Ok(());
        }
        let max = self.max.load(std::sync::atomic::Ordering::Relaxed);
        if names.len() >= max {
            return Err(format!(
                "this server already keeps {max} durable consumers (--max-durables); reuse a name, or let one expire (--durable-idle-expiry-seconds)"
            ));
        }
        names.insert(name.to_string(), 0);
        Ok(())
    }

    pub fn register(&self, name: &str) {
        *crate::lock::lock(&self.names).entry(name.to_string()).or_default() += 1;
    }

    pub fn release(&self, name: &str) {
        let mut names = crate::lock::lock(&self.names);
        if let Some(held) = names.get_mut(name) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                names.remove(name);
            }
        }
    }
}

/// One durable consumer on one shard.
pub struct Consumer {
    /// Its durable name, unique on the server.
    pub name: String,
    /// The topics it receives; others are skipped (done without delivery).
    pub pattern: Pattern,
    /// Ack wait, max deliveries and max in flight, as created.
    pub options: ConsumerOptions,
    /// This life of the name (journal entries of an earlier one never apply).
    pub incarnation: u64,
    /// Offsets done with: acked, skipped (not matching) or dead-lettered.
    done: DoneSet,
    /// Offsets acked since the last journal entry.
    unjournaled: Vec<u64>,
    /// When a subscriber was last seen or an ack arrived (a start counts).
    last_active: Instant,
    /// The next offset never looked at.
    cursor: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// Offsets whose ack deadline passed, with their delivery count so far.
    redeliver: BTreeMap<u64, u32>,
    /// The clients sharing this consumer.
    members: Vec<DeliverySender>,
    /// The member the last delivery went to (round robin).
    next_member: usize,
    /// Woken by acks and new members.
    wake: event_listener::Event,
}

impl Consumer {
    pub fn new(name: String, pattern: Pattern, options: ConsumerOptions, start: u64, incarnation: u64) -> Self {
        let options = ConsumerOptions { max_in_flight: options.max_in_flight.clamp(1, MAX_IN_FLIGHT), ..options };
        Self {
            name,
            pattern,
            options,
            incarnation,
            done: DoneSet::new(start),
            unjournaled: Vec::new(),
            last_active: Instant::now(),
            cursor: start,
            in_flight: BTreeMap::new(),
            redeliver: BTreeMap::new(),
            members: Vec::new(),
            next_member: 0,
            wake: event_listener::Event::new(),
        }
    }

    pub fn restore(name: String, entry: SnapshotEntry<ConsumerOptions>, done: DoneSet) -> Option<Self> {
        let pattern = Pattern::parse(&entry.pattern).ok()?;
        let mut consumer = Self::new(name, pattern, entry.options, done.floor(), entry.incarnation);
        consumer.done = done;
        Some(consumer)
    }

    pub fn record(&self) -> SnapshotEntry<ConsumerOptions> {
        SnapshotEntry {
            pattern: self.pattern.to_string(),
            ack_floor: self.done.floor(),
            acked: Vec::new(),
            acked_ranges: self.done.ranges().collect(),
            options: self.options,
            incarnation: self.incarnation,
        }
    }

    pub fn ack_floor(&self) -> u64 {
        self.done.floor()
    }

    /// Ranges kept above the floor: the size of this consumer's state.
    pub fn range_count(&self) -> usize {
        self.done.range_count()
    }

    /// The acks since the last call, with the floor after them, to journal.
    pub fn take_journal_entry(&mut self) -> Option<JournalEntry> {
        if self.unjournaled.is_empty() {
            return None;
        }
        Some(JournalEntry {
            name: self.name.clone(),
            incarnation: self.incarnation,
            floor: self.done.floor(),
            offsets: std::mem::take(&mut self.unjournaled),
        })
    }

    /// Whether no subscriber is connected and nothing was acked for `expiry`.
    /// A connected subscriber counts as activity.
    pub fn idle_for(&mut self, expiry: Duration, now: Instant) -> bool {
        self.drop_closed_members();
        if !self.members.is_empty() {
            self.last_active = now;
        }
        now.saturating_duration_since(self.last_active) >= expiry
    }

    /// Ends the consumer: its subscribers' streams close, and its task stops
    /// at its next plan, which finds the consumer gone.
    pub fn remove(&mut self) {
        self.members.clear();
        self.wake.notify(usize::MAX);
    }

    pub fn add_member(&mut self, member: DeliverySender) {
        self.last_active = Instant::now();
        self.members.push(member);
        self.wake.notify(usize::MAX);
    }

    /// Marks an offset done; true when it was waiting for an ack.
    pub fn ack(&mut self, offset: u64) -> bool {
        let pending = self.in_flight.remove(&offset).is_some() || self.redeliver.remove(&offset).is_some();
        if pending {
            self.done.insert(offset);
            self.unjournaled.push(offset);
            self.last_active = Instant::now();
            self.wake.notify(usize::MAX);
        }
        pending
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

/// A delivery the pump handed to one member: the task reads the record and sends it.
pub struct Assignment {
    pub offset: u64,
    /// Deliveries so far, this one included.
    pub count: u32,
    pub member: DeliverySender,
}

/// What a consumer's delivery task does next, as the pump decided it.
pub struct Plan {
    /// Redeliveries (ack wait passed, or their member left), already assigned.
    pub resend: Vec<Assignment>,
    /// Deliveries past `max_deliver`, with their count: the task moves each to
    /// the dead-letter topic, then [`Consumer::settle`]s it.
    pub exhausted: Vec<(u64, u32)>,
    /// The next offset never looked at: where the task reads new records.
    pub cursor: u64,
    /// How many new deliveries may go out now (0 without a member).
    pub room: usize,
    /// The ack floor, for the backlog metrics.
    pub floor: u64,
    /// When the earliest in-flight delivery expires.
    pub deadline: Option<Instant>,
    /// Fires on an ack, a new member or the consumer's removal.
    pub wake: event_listener::EventListener,
}

impl Consumer {
    /// Expires what waited too long, assigns redeliveries to members, and says
    /// how many new records may go out.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let wake = self.wake.listen();
        self.drop_closed_members();
        let exhausted = self.expire(now);
        let mut resend = Vec::new();
        while !self.members.is_empty() && self.has_room() {
            let Some((offset, count)) = self.redeliver.pop_first() else { break };
            resend.push(self.assign(offset, count, now));
        }
        let room = if self.members.is_empty() {
            0
        } else {
            self.options.max_in_flight.max(1).saturating_sub(self.in_flight.len())
        };
        let (cursor, floor, deadline) = (self.cursor, self.ack_floor(), self.next_deadline());
        Plan { resend, exhausted, cursor, room, floor, deadline, wake }
    }

    /// The task read the records in `from..to`; those at `matching` (ascending)
    /// match the pattern. Skipped ones are done; matching ones not done yet are
    /// assigned while there is room, and the cursor stops at the first that is
    /// not. An offer that does not start at the cursor is stale and changes nothing.
    pub fn offer(&mut self, from: u64, to: u64, matching: &[u64], now: Instant) -> Vec<Assignment> {
        let mut assigned = Vec::new();
        if from != self.cursor {
            return assigned;
        }
        let mut matching = matching.iter().copied().peekable();
        for offset in from..to {
            if matching.next_if_eq(&offset).is_none() {
                self.done.insert(offset);
            } else if !self.done.contains(offset) {
                if self.members.is_empty() || !self.has_room() {
                    return assigned;
                }
                assigned.push(self.assign(offset, 0, now));
            }
            self.cursor = offset + 1;
        }
        assigned
    }

    /// After the task tried to dead-letter an exhausted delivery: done once the
    /// dead letter is durable, else sent again.
    pub fn settle(&mut self, offset: u64, count: u32, dead_lettered: bool) {
        if dead_lettered {
            self.done.insert(offset);
        } else {
            self.redeliver.insert(offset, count);
        }
    }

    /// Hands `offset` (delivered `count` times so far) to the next member, round robin.
    fn assign(&mut self, offset: u64, count: u32, now: Instant) -> Assignment {
        self.next_member = (self.next_member + 1) % self.members.len();
        let member = self.members[self.next_member].clone();
        let deadline = now + Duration::from_millis(self.options.ack_wait_ms);
        self.in_flight.insert(offset, InFlight { deadline, count: count + 1, member: member.clone() });
        Assignment { offset, count: count + 1, member }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(deadline: Instant, count: u32) -> InFlight {
        // A member that is still listening (the receiver is leaked on purpose).
        let (member, listening) = crate::bus::delivery_channel(16, crate::bus::SUBSCRIBER_BYTES, 1);
        std::mem::forget(listening);
        InFlight { deadline, count, member }
    }

    fn consumer() -> Consumer {
        Consumer::new(
            "c".into(),
            Pattern::parse(">").unwrap(),
            ConsumerOptions { max_in_flight: 2, ack_wait_ms: 10, max_deliver: 2 },
            0,
            1,
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
        assert!(c.record().acked_ranges.is_empty());
        let journaled = c.take_journal_entry().unwrap();
        assert_eq!((journaled.floor, journaled.offsets), (4, vec![1, 0, 3, 2]));
        assert!(c.take_journal_entry().is_none(), "each ack is journaled once");
    }

    #[test]
    fn skipped_records_and_acks_above_a_stuck_floor_stay_a_few_ranges() {
        let mut c = consumer();
        c.in_flight.insert(0, flight(Instant::now(), 1));
        for o in 1..100_000 {
            c.done.insert(o);
        }
        assert_eq!((c.ack_floor(), c.range_count()), (0, 1));
        assert_eq!(c.record().acked_ranges, vec![(1, 100_000)]);
        assert!(c.ack(0));
        assert_eq!((c.ack_floor(), c.range_count()), (100_000, 0));
    }

    #[test]
    fn a_consumer_is_idle_only_without_subscribers() {
        let mut c = consumer();
        let later = Instant::now() + Duration::from_secs(10);
        assert!(c.idle_for(Duration::from_secs(5), later));
        let (member, listening) = crate::bus::delivery_channel(16, crate::bus::SUBSCRIBER_BYTES, 1);
        c.add_member(member);
        assert!(!c.idle_for(Duration::from_secs(5), later));
        drop(listening);
        assert!(!c.idle_for(Duration::from_secs(5), later), "the subscriber was there until now");
        assert!(c.idle_for(Duration::from_secs(5), later + Duration::from_secs(5)));
    }

    #[test]
    fn a_name_past_the_limit_is_refused_until_every_shard_released_one() {
        let names = DurableNames::default();
        names.set_limit(2);
        names.reserve("a").unwrap();
        names.register("a");
        names.register("a");
        names.reserve("b").unwrap();
        assert!(names.reserve("c").unwrap_err().contains("--max-durables"));
        assert!(names.reserve("a").is_ok(), "an existing name is always let through");
        names.release("a");
        assert!(names.reserve("c").is_err(), "a is still held by one shard");
        names.release("a");
        assert!(names.reserve("c").is_ok());
    }

    #[test]
    fn a_client_cannot_ask_for_unbounded_in_flight_state() {
        let options = ConsumerOptions { max_in_flight: usize::MAX, ack_wait_ms: 10, max_deliver: 2 };
        let c = Consumer::new("c".into(), Pattern::parse(">").unwrap(), options, 0, 1);
        assert_eq!(c.options.max_in_flight, MAX_IN_FLIGHT);
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
        let (gone, receiver) = crate::bus::delivery_channel(16, crate::bus::SUBSCRIBER_BYTES, 1);
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
        let record = c.record();
        let restored = Consumer::restore("c".into(), record.clone(), record.done()).unwrap();
        assert_eq!(restored.ack_floor(), 0);
        assert!(restored.done.contains(3) && !restored.done.contains(2));
        assert_eq!((restored.cursor, restored.incarnation), (0, 1));
    }

    #[test]
    fn an_offer_skips_what_does_not_match_and_stops_where_room_ends() {
        let mut c = consumer();
        let (member, _listening) = crate::bus::delivery_channel(16, crate::bus::SUBSCRIBER_BYTES, 1);
        c.add_member(member);
        let now = Instant::now();
        c.done.insert(3);
        let sent: Vec<u64> = c.offer(0, 8, &[1, 3, 4, 6], now).into_iter().map(|a| a.offset).collect();
        assert_eq!(sent, vec![1, 4], "3 is done already; room for two");
        assert_eq!(c.cursor, 6, "6 waits for room");
        assert!(c.done.contains(0) && c.done.contains(2) && c.done.contains(5));
        assert!(c.offer(0, 8, &[6], now).is_empty(), "a stale offer changes nothing");
        assert_eq!(c.plan(now).room, 0);
        assert!(c.ack(1));
        let plan = c.plan(now);
        assert_eq!((plan.cursor, plan.room, plan.floor), (6, 1, 4), "0..4 are done; 4 is in flight");
    }

    #[test]
    fn a_plan_resends_and_exhausts_after_the_ack_wait() {
        let mut c = consumer();
        let (member, _listening) = crate::bus::delivery_channel(16, crate::bus::SUBSCRIBER_BYTES, 1);
        c.add_member(member);
        let start = Instant::now();
        assert_eq!(c.offer(0, 1, &[0], start).len(), 1);
        let later = start + Duration::from_secs(1);
        let plan = c.plan(later);
        assert_eq!(plan.resend.iter().map(|a| (a.offset, a.count)).collect::<Vec<_>>(), vec![(0, 2)]);
        let plan = c.plan(later + Duration::from_secs(1));
        assert_eq!(plan.exhausted, vec![(0, 2)]);
        c.settle(0, 2, true);
        assert_eq!(c.ack_floor(), 1);
    }
}

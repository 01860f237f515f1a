//! Event aggregation: turns one session's raw events into the derived messages
//! published on `balatro.<session>.aggregated` — one [`pb::BalatroGameStateEvent`]
//! per scored hand (its joker cascade, in order, with its shape) and, per window,
//! the latest coalesced game state.
//!
//! This module owns the per-session aggregation state (time windows, open
//! cascades, pending game states), idle-session eviction and the memory budget
//! ([`Aggregator`], here); its parts live in files of their own: configuration
//! (`config.rs`), what an event is (`classify.rs`), one open cascade with depth
//! inference and splitting (`cascade.rs`), what leaves the aggregator (messages,
//! counters, GAME_STATE coalescing: `output.rs`), and logged messages' triggers
//! kept for the next ones (`spare.rs`). The pump's adaptive batch
//! size is not aggregation's: it is [`crate::batch`]. It is pure: it must never perform I/O,
//! read a clock, spawn, or depend on an async runtime — the shard that owns a
//! session passes the time in (`now`, a monotonic [`Duration`] from any origin) and
//! publishes what comes out. It must never drop a raw event either: raw events
//! are logged by the caller as received before they are offered (an offer
//! takes a GAME_STATE payload out of its event rather than copying it; the
//! caller only frees the event afterwards), and every raw sequence that
//! [`Aggregator::offer`] accepts as [`Disposition::Held`] appears in exactly one
//! [`Aggregated::input_sequences`] later on (events the aggregated stream does not
//! carry are answered with [`Disposition::NotAggregated`] and are not held).
//!
//! # Windows
//! A session's window opens when the first held event after the previous window
//! arrived (its `arrived` time, which the caller may date back to when the
//! server received it, never later than `now`) and ends `window` after that, or
//! earlier when `max_window_events` events were held in it (size cap), or at
//! once when a high-priority event arrives (`priority: high` on the event or
//! `priority=high` in its metadata, ERROR, LEARNING_DECISION). At a window's end
//! every closed cascade becomes one message, and game states offered
//! since the last message are coalesced into the `base` of the first message (a
//! state-only message, without triggers or cascade info, when no hand closed).
//! An open hand is not flushed at window end; it stays open across windows.
//!
//! # Cascades
//! SCORING/HAND_EVAL_START opens a hand and SCORING/HAND_EVAL_COMPLETE closes it;
//! JOKER_TRIGGER, SCORING/JOKER_TRIGGER, SCORING/MULT_UPDATE, SCORING/CHIPS_UPDATE
//! and SCORING/SCORE_UPDATE in between are its triggers (every one of them is a
//! [`pb::TriggerEvent`]; `context` names the kind for updates). Triggers outside
//! brackets form a legacy group that closes after `legacy_gap` without a trigger,
//! at the next HAND_EVAL_START, or at a HAND_EVAL_COMPLETE (whose START was lost).
//! A second HAND_EVAL_START, or `cascade_timeout` without any event of the hand,
//! closes an open hand as incomplete (`complete: false`, counted). A
//! HAND_EVAL_COMPLETE with nothing open is not aggregated (counted as stray).
//! A cascade that reaches `cascade_split` triggers, or whose triggers reach
//! `cascade_split_bytes` (1 MiB) on the wire, is emitted at once as a
//! numbered part (`part` from 1, `final_part` on the last; non-final parts have
//! `complete: false`); `order` continues across parts and the trigger count,
//! depth, times and deltas of a part's `CascadeInfo` are the part's own.
//!
//! Depth and parent are inferred per cascade: a trigger with an explicit `parent`
//! gets depth (depth of the parent's last trigger in the cascade, or 0) + 1;
//! otherwise a trigger right after a trigger of a copy/retrigger joker (Blueprint,
//! Brainstorm, Hanging Chad, Mime, Sock and Buskin, Seltzer, Dusk, Hack) is that
//! trigger's child (depth + 1, parent = that joker); otherwise a `retrigger` or
//! `copy` context gives depth 1 with no known parent; everything else is depth 0.
//! Updates (MULT/CHIPS/SCORE_UPDATE) have depth 0 and do not affect inference.
//! Deltas: `chips_delta` is the sum of `chips_after - chips_before` over the part's
//! CHIPS_UPDATEs when it has any, else the sum of its joker triggers' `chips`;
//! `mult_delta` likewise with MULT_UPDATE/`mult`, `score_delta` with
//! SCORE_UPDATE/`score_contribution`. Plain IEEE-754 sums, so non-finite values
//! survive (inf + finite = inf, NaN stays NaN; an update from inf to inf is NaN).
//!
//! # Game states
//! GAME_STATE payloads are merged by presence ([`merge_game_state`]) into the
//! session's cumulative state; every message carries that state as `base`, and
//! the first message after them accounts for the merged events
//! (`coalesced_game_states`, `input_sequences`). A state that merging the next
//! could make longer than `max_state_bytes` (1 MiB) restarts from that next
//! one (counted): `extra` keys accumulate, and a client sending new keys
//! would otherwise grow the state, and every message carrying it, without end.
//!
//! # Bounds
//! Per session at most one cascade is open and holds at most `cascade_split`
//! triggers; closed cascades and pending states live at most one window, and a
//! window holds at most `max_window_events` events. Sessions idle for
//! `idle_timeout` are evicted (flushed completely), and so is the least recently
//! active session when `max_sessions` would be exceeded. [`Aggregator::bytes_held`]
//! is the approximate heap held; the caller asks its memory budget before letting
//! it grow and sets the grant with [`Aggregator::set_memory_budget`]. When an
//! offer leaves the aggregator above its budget and the offering session holds
//! more than its fair share (budget / sessions), that session is flushed at once
//! (its open cascade as a non-final part): nothing is dropped.

mod cascade;
mod classify;
mod config;
mod output;
mod spare;
#[cfg(test)]
mod tests;

pub use classify::{is_copy_joker, Stamped};
pub use config::{AggregateConfig, ConfigError};
pub use output::{merge_game_state, AggregateError, AggregateStats, Aggregated, Disposition, FlushReason};

use cascade::Cascade;
use classify::{classify, is_high_priority, Kind};
use jimbus_proto::events as pb;
use output::Ready;
use prost::Message as _;
use spare::SpareTriggers;
use std::collections::BTreeSet;
use std::mem::size_of;
use std::time::Duration;

/// The earlier of two optional deadlines.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The aggregation state of one session.
struct Session {
    /// The session's name, as offered (and as its messages' `session`).
    name: String,
    /// The last sequence offered; a later offer must be above it.
    last_seq: u64,
    /// `now` of the last offer, its key in the LRU index.
    last_active: Duration,
    /// The cumulative merged game state.
    state: Option<pb::GameStateEvent>,
    /// Approximate heap bytes of `state`: its encoded length, measured at each
    /// window's end, plus at most the length of each state merged since.
    state_bytes: usize,
    /// GAME_STATE sequences not yet accounted for by a message.
    state_seqs: Vec<u64>,
    /// When the current window opened, if one is open.
    window_start: Option<Duration>,
    /// Held events in the current window, for the size cap.
    window_events: usize,
    /// The open hand or legacy group, if any (at most one per session).
    open: Option<Cascade>,
    /// Closed parts waiting for the window's end.
    ready: Vec<Ready>,
    /// Approximate bytes of `ready`.
    ready_bytes: usize,
    /// The entry of this session in the deadline index.
    deadline: Option<Duration>,
}

impl Session {
    fn new(name: &str, now: Duration) -> Self {
        Session {
            name: name.to_string(),
            last_seq: 0,
            last_active: now,
            state: None,
            state_bytes: 0,
            state_seqs: Vec::new(),
            window_start: None,
            window_events: 0,
            open: None,
            ready: Vec::new(),
            ready_bytes: 0,
            deadline: None,
        }
    }

    /// Approximate heap bytes held; the name counts twice because the
    /// aggregator's name index holds a copy of it.
    fn bytes(&self) -> usize {
        size_of::<Session>()
            + self.name.capacity() * 2
            + self.state_bytes
            + self.state_seqs.capacity() * size_of::<u64>()
            + self.open.as_ref().map_or(0, Cascade::held_bytes)
            + self.ready_bytes
    }

    /// Measures the merged game state exactly, in place of the bound its
    /// merges added up (see [`Session::apply`]): once per window.
    fn measure_state(&mut self) {
        self.state_bytes = self.state.as_ref().map_or(0, |s| size_of::<pb::GameStateEvent>() + s.encoded_len());
    }

    /// Drops the merged game state when merging `g` (`incoming` bytes at most)
    /// could make it longer than `max_state_bytes`, so that the state restarts
    /// from `g`: measured exactly first, since the account may be a bound.
    fn restart_state_if_too_long(
        &mut self,
        stats: &mut AggregateStats,
        config: &AggregateConfig,
        incoming: usize,
        g: &pb::GameStateEvent,
    ) {
        let limit = size_of::<pb::GameStateEvent>() + config.max_state_bytes;
        if self.state.is_none() || self.state_bytes + incoming <= limit {
            return;
        }
        self.measure_state();
        if self.state_bytes + g.encoded_len() > limit {
            stats.game_states_restarted += 1;
            self.state = None;
            self.state_bytes = 0;
        }
    }

    /// When the session next has work: its window's end or its open cascade's
    /// timeout (legacy gap for a bracketless group).
    fn next_deadline(&self, c: &AggregateConfig) -> Option<Duration> {
        let window = self.window_start.map(|w| w + c.window);
        let open = self.open.as_ref().map(|o| o.last_now + if o.bracketed { c.cascade_timeout } else { c.legacy_gap });
        earliest(window, open)
    }

    /// Applies the event, as `classify` made it (`kind`), to the game state
    /// or the open cascade; returns its disposition and whether the open
    /// cascade must be split now.
    fn apply(
        &mut self,
        stats: &mut AggregateStats,
        config: &AggregateConfig,
        seq: u64,
        kind: Kind<'_>,
        stamped: Stamped<'_>,
        now: Duration,
    ) -> (Disposition, bool) {
        match kind {
            Kind::State(g) => {
                // An upper bound until the window ends (`measure_state`): a
                // merge replaces or extends what the state held, so the merged
                // state is no longer than the two together, and the event's
                // encoding holds the state's. Measuring the whole state at every
                // merge walked all its jokers, cards and extra values again.
                let incoming = stamped.encoded_len.unwrap_or_else(|| g.encoded_len());
                self.restart_state_if_too_long(stats, config, incoming, g);
                let first = if self.state.is_none() { size_of::<pb::GameStateEvent>() } else { 0 };
                self.state_bytes += first + incoming;
                merge_game_state(self.state.get_or_insert_with(Default::default), g);
                self.state_seqs.push(seq);
            }
            Kind::Start(start) => {
                // A new start means the previous hand's COMPLETE was lost (or it
                // was a legacy group, which a start ends normally).
                if let Some(open) = self.open.take() {
                    let complete = !open.bracketed;
                    output::close(stats, self, open, complete);
                }
                let mut c = Cascade::new(&self.name, seq, true, now);
                c.hand_type.clone_from(&start.hand_type);
                c.cards.clone_from(&start.cards);
                c.push_seq(seq, now, stamped.correlation_id);
                self.open = Some(c);
            }
            Kind::Complete => match self.open.take() {
                Some(mut open) => {
                    open.push_seq(seq, now, stamped.correlation_id);
                    if open.bracketed {
                        stats.hands_complete += 1;
                    }
                    output::close(stats, self, open, true);
                }
                None => {
                    stats.stray_completes += 1;
                    return (Disposition::NotAggregated, false);
                }
            },
            Kind::Trigger(t, kind) => {
                let open = self.open.get_or_insert_with(|| Cascade::new(&self.name, seq, false, now));
                open.push_trigger(t, kind, now, stamped.correlation_id);
                let split = open.triggers.len() >= config.cascade_split || open.encoded >= config.cascade_split_bytes;
                return (Disposition::Held, split);
            }
            Kind::Other => return (Disposition::NotAggregated, false),
        }
        (Disposition::Held, false)
    }
}

/// The aggregation state of one shard: every session it owns.
pub struct Aggregator {
    /// The validated configuration.
    config: AggregateConfig,
    /// Sessions by slot; a `None` slot is free and listed in `free`.
    sessions: Vec<Option<Session>>,
    /// Free slots, reused before the vector grows, so slot numbers stay small.
    free: Vec<usize>,
    /// The slot of every held session, by name.
    by_name: crate::FastMap<String, usize>,
    /// The slot found last, checked by its session's name before it is used
    /// (a request's events share a session: one comparison, not a hash).
    last_slot: usize,
    /// (deadline, slot) of every session with a window, legacy gap or timeout pending.
    deadlines: BTreeSet<(Duration, usize)>,
    /// (last_active, slot) of every session, least recently active first.
    lru: BTreeSet<(Duration, usize)>,
    /// The latest `now` seen; time never runs backwards even if the caller's does.
    now: Duration,
    /// Approximate heap bytes held by all sessions (sum of `Session::bytes`).
    bytes: usize,
    /// The memory budget granted by the caller, in bytes.
    budget: usize,
    /// The counters, for the caller to export.
    stats: AggregateStats,
    /// Triggers of logged messages, emptied, for the next triggers to reuse.
    spare: SpareTriggers,
}

impl Aggregator {
    /// An empty aggregator, or the reason `config` cannot work.
    pub fn new(config: AggregateConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            budget: config.memory_budget,
            config,
            sessions: Vec::new(),
            free: Vec::new(),
            by_name: crate::FastMap::default(),
            last_slot: 0,
            deadlines: BTreeSet::new(),
            lru: BTreeSet::new(),
            now: Duration::ZERO,
            bytes: 0,
            stats: AggregateStats::default(),
            spare: SpareTriggers::default(),
        })
    }

    /// Takes back messages the caller has logged: their triggers' memory
    /// holds the next triggers (`spare`), so that a trigger's strings are not
    /// allocated and freed for every hand.
    pub fn take_back(&mut self, messages: impl IntoIterator<Item = Aggregated>) {
        for message in messages {
            self.spare.keep(message.message.triggers);
        }
    }

    /// The counters, for the caller to export.
    pub fn stats(&self) -> AggregateStats {
        self.stats
    }

    /// Sessions currently held.
    pub fn sessions(&self) -> usize {
        self.by_name.len()
    }

    /// Whether `session` is held (it has not been evicted since its last event).
    pub fn contains(&self, session: &str) -> bool {
        self.by_name.contains_key(session)
    }

    /// The merged game state of `session`, as the next message's `base` will carry it.
    pub fn game_state(&self, session: &str) -> Option<&pb::GameStateEvent> {
        let slot = *self.by_name.get(session)?;
        self.sessions[slot].as_ref()?.state.as_ref()
    }

    /// Approximate heap bytes held by all sessions.
    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    /// Sets the memory budget (the bytes the coordinator granted).
    pub fn set_memory_budget(&mut self, bytes: usize) {
        self.budget = bytes;
    }

    /// The earliest time at which [`tick`](Self::tick) has work, if any: the
    /// caller may sleep until then (new offers can only make it earlier).
    pub fn next_deadline(&self) -> Option<Duration> {
        let timer = self.deadlines.first().map(|(d, _)| *d);
        let idle = self.lru.first().map(|(t, _)| *t + self.config.idle_timeout);
        earliest(timer, idle)
    }

    /// Offers one raw event of `session`, which carries its own stamps, with
    /// its server sequence, received at `now`. Messages it completes are
    /// pushed to `out`. A game state is copied out of the event, which keeps it.
    pub fn offer(
        &mut self,
        session: &str,
        seq: u64,
        event: &mut pb::Event,
        now: Duration,
        out: &mut Vec<Aggregated>,
    ) -> Result<Disposition, AggregateError> {
        // Lent out of the event, which the offer borrows mutably.
        let correlation_id = std::mem::take(&mut event.correlation_id);
        let received_at = event.timing.as_ref().and_then(|t| t.received_at);
        let stamped = Stamped { correlation_id: &correlation_id, received_at, encoded_len: None };
        let offered = self.offer_arrived(session, seq, event, stamped, now, now, out);
        event.correlation_id = correlation_id;
        offered
    }

    /// [`Aggregator::offer`] for an event `stamped` apart from it, that
    /// arrived at `arrived`, before it could be offered (it had to become
    /// durable first): a window it opens is timed from `arrived`, so waiting
    /// for the log does not lengthen it.
    #[allow(clippy::too_many_arguments)]
    pub fn offer_arrived(
        &mut self,
        session: &str,
        seq: u64,
        event: &mut pb::Event,
        stamped: Stamped<'_>,
        arrived: Duration,
        now: Duration,
        out: &mut Vec<Aggregated>,
    ) -> Result<Disposition, AggregateError> {
        self.now = self.now.max(now);
        let now = self.now;
        let slot = self.slot_for(session, now, out);
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        if seq <= sess.last_seq {
            return Err(AggregateError::OutOfOrder { session: session.to_string(), seq, last: sess.last_seq });
        }
        let before = sess.bytes();
        sess.last_seq = seq;
        // A shard offers a commit's events at one `now`: the session's place
        // in the index moves only with its first.
        if sess.last_active != now {
            self.lru.remove(&(sess.last_active, slot));
            sess.last_active = now;
            self.lru.insert((now, slot));
        }
        let kind = classify(seq, event, stamped.received_at, &mut self.spare);
        let (disposition, split) = sess.apply(&mut self.stats, &self.config, seq, kind, stamped, now);
        if disposition == Disposition::Held {
            self.stats.events_held += 1;
            sess.window_start.get_or_insert(arrived.min(now));
            sess.window_events += 1;
        } else {
            self.stats.events_not_aggregated += 1;
        }
        if split {
            output::emit_part(&mut self.stats, sess, FlushReason::Split, out);
        }
        if is_high_priority(event) {
            self.stats.high_priority_flushes += 1;
            output::flush_window(&mut self.stats, sess, FlushReason::HighPriority, out);
        } else if sess.window_events >= self.config.max_window_events {
            self.stats.size_cap_flushes += 1;
            output::flush_window(&mut self.stats, sess, FlushReason::SizeCap, out);
        }
        let after = sess.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        self.enforce_budget(slot, out);
        self.reindex(slot);
        Ok(disposition)
    }

    /// The slot of `session`, created if new. Its due work is done first, so an
    /// event that comes after a cascade's timeout or a window's end does not
    /// join them just because `tick` was late.
    fn slot_for(&mut self, session: &str, now: Duration, out: &mut Vec<Aggregated>) -> usize {
        let last = self.sessions.get(self.last_slot).and_then(Option::as_ref);
        let slot = match last {
            Some(last) if last.name == session => self.last_slot,
            _ => match self.by_name.get(session) {
                Some(&slot) => slot,
                None => self.create(session, now, out),
            },
        };
        self.last_slot = slot;
        if self.sessions[slot].as_ref().and_then(|s| s.deadline).is_some_and(|d| d <= now) {
            self.service(slot, now, out);
        }
        slot
    }

    /// Flushes the session in `slot` at once when the aggregator is above its
    /// budget and the session holds more than its fair share: bounding memory
    /// by emitting early instead of dropping anything.
    fn enforce_budget(&mut self, slot: usize, out: &mut Vec<Aggregated>) {
        let fair_share = self.budget / self.by_name.len().max(1);
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        if self.bytes <= self.budget || sess.bytes() <= fair_share {
            return;
        }
        self.stats.budget_flushes += 1;
        let before = sess.bytes();
        if sess.open.as_ref().is_some_and(|o| !o.triggers.is_empty()) {
            output::emit_part(&mut self.stats, sess, FlushReason::Budget, out);
        }
        output::flush_window(&mut self.stats, sess, FlushReason::Budget, out);
        let after = sess.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
    }

    /// Does everything due by `now`: ends windows, closes legacy groups whose gap
    /// passed and hands that timed out, and evicts idle sessions.
    pub fn tick(&mut self, now: Duration, out: &mut Vec<Aggregated>) {
        self.now = self.now.max(now);
        let now = self.now;
        while let Some(&(deadline, slot)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.service(slot, now, out);
        }
        while let Some(&(active, slot)) = self.lru.first() {
            if active + self.config.idle_timeout > now {
                break;
            }
            self.stats.evicted_idle += 1;
            self.evict(slot, FlushReason::Evicted, out);
        }
    }

    /// Does the session's due work: closes an expired cascade, ends a due window.
    fn service(&mut self, slot: usize, now: Duration, out: &mut Vec<Aggregated>) {
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        let before = sess.bytes();
        let c = &self.config;
        let mut closed = false;
        if let Some(open) = sess.open.take() {
            let limit = if open.bracketed { c.cascade_timeout } else { c.legacy_gap };
            if open.last_now + limit <= now {
                // A legacy group ends by its gap: that is its normal, complete end.
                let complete = !open.bracketed;
                output::close(&mut self.stats, sess, open, complete);
                closed = true;
            } else {
                sess.open = Some(open);
            }
        }
        if closed {
            output::flush_window(&mut self.stats, sess, FlushReason::Closed, out);
        } else if sess.window_start.is_some_and(|w| w + c.window <= now) {
            output::flush_window(&mut self.stats, sess, FlushReason::WindowEnd, out);
        }
        let after = sess.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        self.reindex(slot);
    }

    /// Flushes everything held and forgets every session (at shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Aggregated>) {
        let mut slots: Vec<(Duration, usize)> = self.lru.iter().copied().collect();
        slots.sort();
        for (_, slot) in slots {
            self.evict(slot, FlushReason::FlushAll, out);
        }
    }

    /// Makes room for and adds a new session; returns its slot.
    fn create(&mut self, session: &str, now: Duration, out: &mut Vec<Aggregated>) -> usize {
        while self.by_name.len() >= self.config.max_sessions {
            let Some(&(_, lru)) = self.lru.first() else { break };
            self.stats.evicted_capacity += 1;
            self.evict(lru, FlushReason::Evicted, out);
        }
        let sess = Session::new(session, now);
        self.bytes += sess.bytes();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.sessions[slot] = Some(sess);
                slot
            }
            None => {
                self.sessions.push(Some(sess));
                self.sessions.len() - 1
            }
        };
        self.by_name.insert(session.to_string(), slot);
        self.lru.insert((now, slot));
        slot
    }

    /// Flushes and forgets the session in `slot` (its open cascade as
    /// incomplete, unless it is a legacy group whose gap already passed).
    fn evict(&mut self, slot: usize, reason: FlushReason, out: &mut Vec<Aggregated>) {
        let Some(mut sess) = self.sessions[slot].take() else { return };
        let before = sess.bytes();
        if let Some(open) = sess.open.take() {
            let complete = !open.bracketed && open.last_now + self.config.legacy_gap <= self.now;
            output::close(&mut self.stats, &mut sess, open, complete);
        }
        output::flush_window(&mut self.stats, &mut sess, reason, out);
        self.bytes = self.bytes.saturating_sub(before);
        if let Some(d) = sess.deadline {
            self.deadlines.remove(&(d, slot));
        }
        self.lru.remove(&(sess.last_active, slot));
        self.by_name.remove(&sess.name);
        self.free.push(slot);
    }

    /// Puts the session's next deadline in the index.
    fn reindex(&mut self, slot: usize) {
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        let next = sess.next_deadline(&self.config);
        if next != sess.deadline {
            if let Some(d) = sess.deadline {
                self.deadlines.remove(&(d, slot));
            }
            if let Some(d) = next {
                self.deadlines.insert((d, slot));
            }
            sess.deadline = next;
        }
    }
}

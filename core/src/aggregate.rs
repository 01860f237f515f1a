//! Event aggregation: turns one session's raw events into the derived messages
//! published on `balatro.<session>.aggregated` — one [`pb::BalatroGameStateEvent`]
//! per scored hand (its joker cascade, in order, with its shape) and, per window,
//! the latest coalesced game state.
//!
//! This module owns the per-session aggregation state (time windows, open
//! cascades, pending game states), cascade detection and depth inference,
//! GAME_STATE coalescing, the split of oversized cascades, idle-session eviction,
//! the adaptive batch-size control law ([`BatchSizer`]) and the counters that
//! describe all of it ([`AggregateStats`]). It is pure: it must never perform I/O,
//! read a clock, spawn, or depend on an async runtime — the shard that owns a
//! session passes the time in (`now`, a monotonic [`Duration`] from any origin) and
//! publishes what comes out. It must never alter or drop a raw event either: raw
//! events are logged by the caller as received, and every raw sequence that
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
//! `priority=high` in its metadata, ERROR, LEARNING_DECISION). At a window's end every closed cascade becomes one message, and game states offered
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
//! (`coalesced_game_states`, `input_sequences`).
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
//!
//! # Adaptive batch size: the control law
//! The shard observes its input queue depth `q` before draining a batch and asks
//! [`BatchSizer::observe`] for the batch size `b` (events drained, offered and
//! published as one append before the next `tick`). With parameters
//! `min_batch`, `max_batch`, `light_load` and `grow_gain` ([`BatchConfig`]):
//!
//! ```text
//! q <= light_load      : b' = min_batch                          (latency first)
//! q >  b               : b' = min(max_batch, b + ceil(grow_gain * (q - b)))
//! light_load < q <= b  : b' = max(min_batch, q)                  (never wait to fill)
//! ```
//!
//! So under light load every event is handled at once; as the queue deepens the
//! batch grows geometrically toward the depth, capped at `max_batch` (throughput
//! first), and it drops back as soon as the queue drains. `b'` always lies in
//! `[min_batch, max_batch]`. The caller exports `target()` and `queue_depth()`.

use jimbus_proto::events::{self as pb, event::Payload, scoring_event::Step};
use prost::Message as _;
use prost_types::Timestamp;
use std::collections::{BTreeSet, HashMap};
use std::mem::size_of;
use std::time::Duration;

/// Jokers whose triggers copy or retrigger another effect, as normalized names.
const COPY_JOKERS: &[&str] =
    &["blueprint", "brainstorm", "hanging chad", "mime", "sock and buskin", "seltzer", "dusk", "hack"];

/// Whether `name` (a joker name like "Sock and Buskin" or a key like
/// "j_sock_and_buskin") is a copy or retrigger joker.
pub fn is_copy_joker(name: &str) -> bool {
    let normalized = normalize(name);
    COPY_JOKERS.contains(&normalized.as_str())
}

fn normalize(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("j_").unwrap_or(&lower);
    lower.replace('_', " ")
}

/// Parameters of the adaptive batch size (see the module header for the law).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// The batch size under light load. At least 1.
    pub min_batch: usize,
    /// The cap the batch size grows toward under load.
    pub max_batch: usize,
    /// A queue this deep or shallower is light load.
    pub light_load: usize,
    /// The fraction of the gap between batch size and queue depth closed per
    /// observation, in (0, 1].
    pub grow_gain: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { min_batch: 1, max_batch: 4096, light_load: 1, grow_gain: 0.5 }
    }
}

/// Everything the aggregator is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Length of a session's window.
    pub window: Duration,
    /// A window is flushed early once it held this many events.
    pub max_window_events: usize,
    /// Bracketless triggers further apart than this are separate legacy groups.
    pub legacy_gap: Duration,
    /// An open hand with no event for this long is flushed as incomplete.
    pub cascade_timeout: Duration,
    /// A cascade is emitted as a numbered part each time it holds this many triggers.
    pub cascade_split: usize,
    /// ... or as soon as its triggers encode to this many bytes, so that a part
    /// (with its base game state, itself at most 2 MiB as an accepted event)
    /// stays under the 4 MiB message limit of default gRPC clients.
    pub cascade_split_bytes: usize,
    /// A session with no event for this long is evicted.
    pub idle_timeout: Duration,
    /// At most this many sessions are held; the least recently active is evicted.
    pub max_sessions: usize,
    /// The initial memory budget in bytes (see [`Aggregator::set_memory_budget`]).
    pub memory_budget: usize,
    /// The adaptive batch size's parameters.
    pub batch: BatchConfig,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(100),
            max_window_events: 4096,
            legacy_gap: Duration::from_millis(50),
            cascade_timeout: Duration::from_secs(5),
            cascade_split: 10_000,
            cascade_split_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            max_sessions: 65_536,
            memory_budget: 256 << 20,
            batch: BatchConfig::default(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("cascade_split must be at most 10000 (the schema's max_items for triggers)")]
    SplitTooLarge,
    #[error("batch.max_batch must be at least batch.min_batch")]
    BatchRange,
    #[error("batch.grow_gain must lie in (0, 1]")]
    Gain,
}

impl AggregateConfig {
    /// Checks that every parameter is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero_durations = [
            (self.window, "window"),
            (self.legacy_gap, "legacy_gap"),
            (self.cascade_timeout, "cascade_timeout"),
            (self.idle_timeout, "idle_timeout"),
        ];
        for (value, name) in zero_durations {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        let zero_counts = [
            (self.max_window_events, "max_window_events"),
            (self.cascade_split, "cascade_split"),
            (self.cascade_split_bytes, "cascade_split_bytes"),
            (self.max_sessions, "max_sessions"),
            (self.batch.min_batch, "batch.min_batch"),
        ];
        for (value, name) in zero_counts {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.cascade_split > 10_000 {
            return Err(ConfigError::SplitTooLarge);
        }
        if self.batch.max_batch < self.batch.min_batch {
            return Err(ConfigError::BatchRange);
        }
        if !(self.batch.grow_gain > 0.0 && self.batch.grow_gain <= 1.0) {
            return Err(ConfigError::Gain);
        }
        Ok(())
    }
}

/// An offer the aggregator refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// Sequences of a session must strictly increase; a repeat would be counted twice.
    #[error("session {session}: sequence {seq} is not after {last}")]
    OutOfOrder { session: String, seq: u64, last: u64 },
}

/// What the aggregator did with an offered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Held: its sequence will appear in exactly one output's `input_sequences`
    /// (possibly one already pushed by this very call).
    Held,
    /// The aggregated stream does not carry this event (only the raw stream does);
    /// it is not held. It may still have flushed the session (high priority).
    NotAggregated,
}

/// Why a message was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The session's window ended.
    WindowEnd,
    /// The window held `max_window_events` events.
    SizeCap,
    /// A high-priority event arrived.
    HighPriority,
    /// A cascade reached `cascade_split` triggers and a part was emitted.
    Split,
    /// A legacy group's quiet gap or an open hand's timeout elapsed.
    Closed,
    /// The session was evicted (idle or over `max_sessions`).
    Evicted,
    /// The aggregator was above its memory budget.
    Budget,
    /// [`Aggregator::flush_all`].
    FlushAll,
}

/// One message for `balatro.<session>.aggregated`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    pub session: String,
    pub message: pb::BalatroGameStateEvent,
    /// Every raw sequence this message accounts for, ascending: the hand's
    /// brackets, triggers and updates, and the game states coalesced into `base`.
    pub input_sequences: Vec<u64>,
    pub reason: FlushReason,
}

/// Counters for the caller to export as metrics. All are totals since creation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AggregateStats {
    /// Events held (offers answered with [`Disposition::Held`]).
    pub events_held: u64,
    /// Events answered with [`Disposition::NotAggregated`].
    pub events_not_aggregated: u64,
    /// Messages emitted.
    pub messages: u64,
    /// Hands closed by HAND_EVAL_COMPLETE.
    pub hands_complete: u64,
    /// Hands flushed without their HAND_EVAL_COMPLETE (timeout, a new start, eviction).
    pub cascades_incomplete: u64,
    /// Legacy (bracketless) groups closed.
    pub legacy_groups: u64,
    /// Non-final parts emitted because a cascade reached `cascade_split` (or the budget).
    pub cascade_splits: u64,
    /// GAME_STATE events merged into a message's `base`.
    pub game_states_coalesced: u64,
    /// GAME_STATE events superseded: merged without a message of their own.
    pub game_states_superseded: u64,
    /// HAND_EVAL_COMPLETE events with nothing open.
    pub stray_completes: u64,
    /// Flushes caused by high-priority events.
    pub high_priority_flushes: u64,
    /// Windows flushed at the size cap.
    pub size_cap_flushes: u64,
    /// Flushes forced by the memory budget.
    pub budget_flushes: u64,
    /// Sessions evicted for idleness.
    pub evicted_idle: u64,
    /// Sessions evicted to stay within `max_sessions`.
    pub evicted_capacity: u64,
}

/// Merges a (possibly partial) game state into `into`, by presence: `optional`
/// numbers, `blind` and `deck` overwrite when present, `phase` when non-empty,
/// `jokers` and `hand` when non-empty (a repeated field has no presence, so an
/// empty list cannot be told from an absent one and keeps the previous list), and
/// `extra` key by key.
pub fn merge_game_state(into: &mut pb::GameStateEvent, from: &pb::GameStateEvent) {
    if !from.phase.is_empty() {
        into.phase.clone_from(&from.phase);
    }
    macro_rules! present {
        ($($f:ident),*) => { $(if from.$f.is_some() { into.$f.clone_from(&from.$f); })* };
    }
    present!(ante, round, money, chips, mult, score, hands_remaining, discards_remaining, blind, deck);
    if !from.jokers.is_empty() {
        into.jokers.clone_from(&from.jokers);
    }
    if !from.hand.is_empty() {
        into.hand.clone_from(&from.hand);
    }
    if let Some(extra) = &from.extra {
        let target = into.extra.get_or_insert_with(Default::default);
        for (k, v) in &extra.fields {
            target.fields.insert(k.clone(), v.clone());
        }
    }
}

/// The adaptive batch size (see the module header for the control law).
#[derive(Debug, Clone)]
pub struct BatchSizer {
    config: BatchConfig,
    target: usize,
    depth: usize,
}

impl BatchSizer {
    pub fn new(config: BatchConfig) -> Self {
        let min = config.min_batch.max(1);
        Self {
            config: BatchConfig { min_batch: min, max_batch: config.max_batch.max(min), ..config },
            target: min,
            depth: 0,
        }
    }

    /// Takes the current queue depth and returns the next batch size.
    pub fn observe(&mut self, queue_depth: usize) -> usize {
        let c = &self.config;
        self.depth = queue_depth;
        self.target = if queue_depth <= c.light_load {
            c.min_batch
        } else if queue_depth > self.target {
            let gap = (queue_depth - self.target) as f64;
            let step = (c.grow_gain.clamp(f64::MIN_POSITIVE, 1.0) * gap).ceil() as usize;
            self.target.saturating_add(step.max(1))
        } else {
            queue_depth
        }
        .clamp(c.min_batch, c.max_batch);
        self.target
    }

    /// The current batch size.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The queue depth last observed.
    pub fn queue_depth(&self) -> usize {
        self.depth
    }
}

/// What an event is to aggregation.
enum Kind<'a> {
    State(&'a pb::GameStateEvent),
    Start(&'a pb::HandEvalStart),
    Complete,
    Trigger(pb::TriggerEvent, Update),
    Other,
}

/// Which delta a trigger feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Update {
    Joker,
    Chips,
    Mult,
    Score,
}

fn classify(seq: u64, event: &pb::Event) -> Kind<'_> {
    let timing = event.timing.as_ref();
    let base = || pb::TriggerEvent {
        sequence: seq,
        client_timestamp_ms: timing.map_or(0.0, |t| t.client_timestamp_ms),
        received_at: timing.and_then(|t| t.received_at),
        ..Default::default()
    };
    match &event.payload {
        Some(Payload::GameState(g)) => Kind::State(g),
        Some(Payload::JokerTrigger(j)) => {
            let mut t = base();
            t.joker_name.clone_from(&j.joker_name);
            t.context = "JOKER_TRIGGER".into();
            if t.client_timestamp_ms == 0.0 {
                t.client_timestamp_ms = j.trigger_time_ms;
            }
            Kind::Trigger(t, Update::Joker)
        }
        Some(Payload::Scoring(s)) => match &s.step {
            Some(Step::HandEvalStart(start)) => Kind::Start(start),
            Some(Step::HandEvalComplete(_)) => Kind::Complete,
            Some(Step::JokerTrigger(j)) => {
                let mut t = base();
                if let Some(joker) = &j.joker {
                    t.joker_name.clone_from(&joker.name);
                    t.joker_id.clone_from(&joker.id);
                    t.position = joker.position;
                }
                t.context = if j.context.is_empty() { "JOKER_TRIGGER".into() } else { j.context.clone() };
                t.chips = j.chips;
                t.mult = j.mult;
                t.money = j.money;
                t.score_contribution = j.score_contribution;
                t.parent_joker.clone_from(&j.parent);
                Kind::Trigger(t, Update::Joker)
            }
            Some(Step::MultUpdate(m)) => {
                let mut t = base();
                t.joker_name.clone_from(&m.source);
                t.context = "MULT_UPDATE".into();
                t.mult = m.mult_after - m.mult_before;
                Kind::Trigger(t, Update::Mult)
            }
            Some(Step::ChipsUpdate(c)) => {
                let mut t = base();
                t.joker_name.clone_from(&c.source);
                t.context = "CHIPS_UPDATE".into();
                t.chips = c.chips_after - c.chips_before;
                Kind::Trigger(t, Update::Chips)
            }
            Some(Step::ScoreUpdate(u)) => {
                let mut t = base();
                t.context = "SCORE_UPDATE".into();
                t.score_contribution = u.score_after - u.score_before;
                Kind::Trigger(t, Update::Score)
            }
            None => Kind::Other,
        },
        _ => Kind::Other,
    }
}

fn is_high_priority(event: &pb::Event) -> bool {
    event.priority == pb::Priority::High as i32
        || event.metadata.get("priority").is_some_and(|p| p.eq_ignore_ascii_case("high"))
        || matches!(event.payload, Some(Payload::Error(_)) | Some(Payload::LearningDecision(_)))
        || event.event_type == "ERROR"
        || event.event_type == "LEARNING_DECISION"
}

fn millis_between(a: &Timestamp, b: &Timestamp) -> f64 {
    (b.seconds - a.seconds) as f64 * 1000.0 + f64::from(b.nanos - a.nanos) / 1e6
}

fn trigger_bytes(t: &pb::TriggerEvent) -> usize {
    size_of::<pb::TriggerEvent>()
        + t.joker_name.capacity()
        + t.joker_id.capacity()
        + t.context.capacity()
        + t.parent_joker.capacity()
        + size_of::<u64>()
}

/// The current part of one open cascade.
struct Cascade {
    id: String,
    bracketed: bool,
    hand_type: String,
    cards: Vec<String>,
    part: u32,
    order: u32,
    /// `now` of the last event of the cascade.
    last_now: Duration,
    // Inference state, kept across parts.
    depth_of: HashMap<String, u32>,
    prev_copier: Option<(String, u32)>,
    // The current part.
    triggers: Vec<pb::TriggerEvent>,
    seqs: Vec<u64>,
    first_now: Option<Duration>,
    depth: u32,
    updates: [bool; 4],
    correlation_id: String,
    bytes: usize,
    /// What the current part's triggers take on the wire.
    encoded: usize,
}

impl Cascade {
    fn new(session: &str, seq: u64, bracketed: bool, now: Duration) -> Self {
        let id = if session.len() + 30 <= 128 {
            format!("{session}-hand-{seq}")
        } else {
            format!("{:016x}-hand-{seq}", xxhash_rust::xxh3::xxh3_64(session.as_bytes()))
        };
        Cascade {
            id,
            bracketed,
            hand_type: String::new(),
            cards: Vec::new(),
            part: 1,
            order: 0,
            last_now: now,
            depth_of: HashMap::new(),
            prev_copier: None,
            triggers: Vec::new(),
            seqs: Vec::new(),
            first_now: None,
            depth: 0,
            updates: [false; 4],
            correlation_id: String::new(),
            bytes: size_of::<Cascade>(),
            encoded: 0,
        }
    }

    fn push_seq(&mut self, seq: u64, now: Duration, correlation_id: &str) -> usize {
        self.seqs.push(seq);
        self.last_now = now;
        if !correlation_id.is_empty() {
            self.correlation_id.clear();
            self.correlation_id.push_str(correlation_id);
        }
        size_of::<u64>()
    }

    /// Adds a trigger; returns the bytes it holds.
    fn push_trigger(&mut self, mut t: pb::TriggerEvent, kind: Update, now: Duration, correlation_id: &str) -> usize {
        if kind == Update::Joker {
            let (depth, parent) = if !t.parent_joker.is_empty() {
                (self.depth_of.get(&normalize(&t.parent_joker)).map_or(1, |d| d + 1), None)
            } else if let Some((copier, d)) = &self.prev_copier {
                (d + 1, Some(copier.clone()))
            } else {
                let c = t.context.to_ascii_lowercase();
                (u32::from(c.contains("retrigger") || c.contains("copy")), None)
            };
            t.depth = depth;
            if let Some(parent) = parent {
                t.parent_joker = parent;
            }
            let name = normalize(if t.joker_name.is_empty() { &t.joker_id } else { &t.joker_name });
            self.prev_copier = COPY_JOKERS.contains(&name.as_str()).then(|| (t.joker_name.clone(), depth));
            self.depth_of.insert(name, depth);
        }
        if kind != Update::Joker {
            self.updates[kind as usize] = true;
        }
        t.order = self.order;
        self.order += 1;
        self.depth = self.depth.max(t.depth);
        self.first_now.get_or_insert(now);
        let bytes = trigger_bytes(&t) + self.push_seq(t.sequence, now, correlation_id);
        // The trigger's field tag and length, and its sequence in the part's list.
        self.encoded += t.encoded_len() + 16;
        self.triggers.push(t);
        self.bytes += bytes;
        bytes
    }

    /// Takes the current part as a message (without `base`), leaving the cascade
    /// ready for the next part.
    fn take_part(&mut self, session: &str, complete: bool, final_part: bool) -> (pb::BalatroGameStateEvent, Vec<u64>) {
        let triggers = std::mem::take(&mut self.triggers);
        let sum = |kind: Update, joker_field: fn(&pb::TriggerEvent) -> f64| -> f64 {
            if self.updates[kind as usize] {
                triggers.iter().filter(|t| t.context == update_context(kind)).map(joker_field).sum()
            } else {
                triggers.iter().filter(|t| is_joker_context(t)).map(joker_field).sum()
            }
        };
        let chips_delta = sum(Update::Chips, |t| t.chips);
        let mult_delta = sum(Update::Mult, |t| t.mult);
        let score_delta = sum(Update::Score, |t| t.score_contribution);
        let first = triggers.first().and_then(|t| t.received_at);
        let last = triggers.last().and_then(|t| t.received_at);
        let duration_ms = match (&first, &last) {
            (Some(a), Some(b)) => millis_between(a, b),
            _ => match self.first_now {
                Some(f) if !triggers.is_empty() => self.last_now.saturating_sub(f).as_secs_f64() * 1000.0,
                _ => 0.0,
            },
        };
        let info = pb::CascadeInfo {
            cascade_id: self.id.clone(),
            hand_type: self.hand_type.clone(),
            cards: self.cards.clone(),
            trigger_count: triggers.len() as u32,
            depth: self.depth,
            first_trigger_at: first,
            last_trigger_at: last,
            duration_ms,
            chips_delta,
            mult_delta,
            score_delta,
            complete,
            part: self.part,
            final_part,
        };
        let message = pb::BalatroGameStateEvent {
            base: None,
            triggers,
            cascade_info: Some(info),
            session_id: session.to_string(),
            correlation_id: self.correlation_id.clone(),
            coalesced_game_states: 0,
        };
        let seqs = std::mem::take(&mut self.seqs);
        self.part += 1;
        self.first_now = None;
        self.depth = 0;
        self.updates = [false; 4];
        self.bytes = size_of::<Cascade>();
        self.encoded = 0;
        (message, seqs)
    }
}

fn update_context(kind: Update) -> &'static str {
    match kind {
        Update::Joker => "",
        Update::Chips => "CHIPS_UPDATE",
        Update::Mult => "MULT_UPDATE",
        Update::Score => "SCORE_UPDATE",
    }
}

fn is_joker_context(t: &pb::TriggerEvent) -> bool {
    !matches!(t.context.as_str(), "CHIPS_UPDATE" | "MULT_UPDATE" | "SCORE_UPDATE")
}

/// A closed part waiting for its window's end.
struct Ready {
    message: pb::BalatroGameStateEvent,
    seqs: Vec<u64>,
}

struct Session {
    name: String,
    last_seq: u64,
    last_active: Duration,
    /// The cumulative merged game state.
    state: Option<pb::GameStateEvent>,
    state_bytes: usize,
    /// GAME_STATE sequences not yet accounted for by a message.
    state_seqs: Vec<u64>,
    window_start: Option<Duration>,
    window_events: usize,
    open: Option<Cascade>,
    ready: Vec<Ready>,
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

    fn bytes(&self) -> usize {
        size_of::<Session>()
            + self.name.capacity() * 2
            + self.state_bytes
            + self.state_seqs.capacity() * size_of::<u64>()
            + self.open.as_ref().map_or(0, |c| c.bytes + c.depth_of.len() * 48)
            + self.ready_bytes
    }

    fn next_deadline(&self, c: &AggregateConfig) -> Option<Duration> {
        let window = self.window_start.map(|w| w + c.window);
        let open = self.open.as_ref().map(|o| o.last_now + if o.bracketed { c.cascade_timeout } else { c.legacy_gap });
        match (window, open) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The aggregation state of one shard: every session it owns.
pub struct Aggregator {
    config: AggregateConfig,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    by_name: HashMap<String, usize>,
    /// (deadline, slot) of every session with a window, legacy gap or timeout pending.
    deadlines: BTreeSet<(Duration, usize)>,
    /// (last_active, slot) of every session, least recently active first.
    lru: BTreeSet<(Duration, usize)>,
    now: Duration,
    bytes: usize,
    budget: usize,
    stats: AggregateStats,
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
            by_name: HashMap::new(),
            deadlines: BTreeSet::new(),
            lru: BTreeSet::new(),
            now: Duration::ZERO,
            bytes: 0,
            stats: AggregateStats::default(),
        })
    }

    pub fn config(&self) -> &AggregateConfig {
        &self.config
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

    pub fn memory_budget(&self) -> usize {
        self.budget
    }

    /// The earliest time at which [`tick`](Self::tick) has work, if any: the
    /// caller may sleep until then (new offers can only make it earlier).
    pub fn next_deadline(&self) -> Option<Duration> {
        let timer = self.deadlines.first().map(|(d, _)| *d);
        let idle = self.lru.first().map(|(t, _)| *t + self.config.idle_timeout);
        match (timer, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Offers one raw event of `session` with its server sequence, received at
    /// `now`. Messages it completes are pushed to `out`.
    pub fn offer(
        &mut self,
        session: &str,
        seq: u64,
        event: &pb::Event,
        now: Duration,
        out: &mut Vec<Aggregated>,
    ) -> Result<Disposition, AggregateError> {
        self.offer_arrived(session, seq, event, now, now, out)
    }

    /// [`Aggregator::offer`] for an event that arrived at `arrived`, before it
    /// could be offered (it had to become durable first): a window it opens is
    /// timed from `arrived`, so waiting for the log does not lengthen it.
    pub fn offer_arrived(
        &mut self,
        session: &str,
        seq: u64,
        event: &pb::Event,
        arrived: Duration,
        now: Duration,
        out: &mut Vec<Aggregated>,
    ) -> Result<Disposition, AggregateError> {
        self.now = self.now.max(now);
        let now = self.now;
        let slot = match self.by_name.get(session) {
            Some(&slot) => slot,
            None => self.create(session, now, out),
        };
        if self.sessions[slot].as_ref().and_then(|s| s.deadline).is_some_and(|d| d <= now) {
            self.service(slot, now, out);
        }
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        if seq <= sess.last_seq {
            return Err(AggregateError::OutOfOrder { session: session.to_string(), seq, last: sess.last_seq });
        }
        let before = sess.bytes();
        sess.last_seq = seq;
        self.lru.remove(&(sess.last_active, slot));
        sess.last_active = now;
        self.lru.insert((now, slot));

        let high = is_high_priority(event);
        let mut disposition = Disposition::Held;
        let mut split = false;
        match classify(seq, event) {
            Kind::State(g) => {
                let state = sess.state.get_or_insert_with(Default::default);
                merge_game_state(state, g);
                sess.state_bytes = size_of::<pb::GameStateEvent>() + state.encoded_len();
                sess.state_seqs.push(seq);
            }
            Kind::Start(start) => {
                if let Some(open) = sess.open.take() {
                    let complete = !open.bracketed;
                    Self::close(&mut self.stats, sess, open, complete);
                }
                let mut c = Cascade::new(session, seq, true, now);
                c.hand_type.clone_from(&start.hand_type);
                c.cards.clone_from(&start.cards);
                c.push_seq(seq, now, &event.correlation_id);
                sess.open = Some(c);
            }
            Kind::Complete => match sess.open.take() {
                Some(mut open) => {
                    open.push_seq(seq, now, &event.correlation_id);
                    if open.bracketed {
                        self.stats.hands_complete += 1;
                    }
                    Self::close(&mut self.stats, sess, open, true);
                }
                None => {
                    self.stats.stray_completes += 1;
                    disposition = Disposition::NotAggregated;
                }
            },
            Kind::Trigger(t, kind) => {
                let open = sess.open.get_or_insert_with(|| Cascade::new(session, seq, false, now));
                open.push_trigger(t, kind, now, &event.correlation_id);
                split =
                    open.triggers.len() >= self.config.cascade_split || open.encoded >= self.config.cascade_split_bytes;
            }
            Kind::Other => disposition = Disposition::NotAggregated,
        }
        if disposition == Disposition::Held {
            self.stats.events_held += 1;
            sess.window_start.get_or_insert(arrived.min(now));
            sess.window_events += 1;
        } else {
            self.stats.events_not_aggregated += 1;
        }
        if split {
            self.stats.cascade_splits += 1;
            let open = sess.open.as_mut().expect("a split cascade is open");
            let (message, seqs) = open.take_part(&sess.name, false, false);
            Self::emit(&mut self.stats, sess, message, seqs, FlushReason::Split, out);
        }
        if high {
            self.stats.high_priority_flushes += 1;
            Self::flush_window(&mut self.stats, sess, FlushReason::HighPriority, out);
        } else if sess.window_events >= self.config.max_window_events {
            self.stats.size_cap_flushes += 1;
            Self::flush_window(&mut self.stats, sess, FlushReason::SizeCap, out);
        }
        let after = sess.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        let fair_share = self.budget / self.by_name.len().max(1);
        let sess = self.sessions[slot].as_mut().expect("indexed sessions exist");
        if self.bytes > self.budget && sess.bytes() > fair_share {
            self.stats.budget_flushes += 1;
            let before = sess.bytes();
            if let Some(open) = sess.open.as_mut().filter(|o| !o.triggers.is_empty()) {
                self.stats.cascade_splits += 1;
                let (message, seqs) = open.take_part(&sess.name, false, false);
                Self::emit(&mut self.stats, sess, message, seqs, FlushReason::Budget, out);
            }
            Self::flush_window(&mut self.stats, sess, FlushReason::Budget, out);
            let after = sess.bytes();
            self.bytes = (self.bytes + after).saturating_sub(before);
        }
        self.reindex(slot);
        Ok(disposition)
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
                let complete = !open.bracketed;
                Self::close(&mut self.stats, sess, open, complete);
                closed = true;
            } else {
                sess.open = Some(open);
            }
        }
        if closed {
            Self::flush_window(&mut self.stats, sess, FlushReason::Closed, out);
        } else if sess.window_start.is_some_and(|w| w + c.window <= now) {
            Self::flush_window(&mut self.stats, sess, FlushReason::WindowEnd, out);
        }
        let after = sess.bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        self.reindex(slot);
    }

    /// Flushes and forgets one session (its open cascade as incomplete), if held.
    pub fn evict_session(&mut self, session: &str, out: &mut Vec<Aggregated>) -> bool {
        match self.by_name.get(session) {
            Some(&slot) => {
                self.evict(slot, FlushReason::Evicted, out);
                true
            }
            None => false,
        }
    }

    /// Flushes everything held and forgets every session (at shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Aggregated>) {
        let mut slots: Vec<(Duration, usize)> = self.lru.iter().copied().collect();
        slots.sort();
        for (_, slot) in slots {
            self.evict(slot, FlushReason::FlushAll, out);
        }
    }

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

    fn evict(&mut self, slot: usize, reason: FlushReason, out: &mut Vec<Aggregated>) {
        let Some(mut sess) = self.sessions[slot].take() else { return };
        let before = sess.bytes();
        if let Some(open) = sess.open.take() {
            let complete = !open.bracketed && open.last_now + self.config.legacy_gap <= self.now;
            Self::close(&mut self.stats, &mut sess, open, complete);
        }
        Self::flush_window(&mut self.stats, &mut sess, reason, out);
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

    /// Closes a cascade: its last part becomes ready for the window's end.
    fn close(stats: &mut AggregateStats, sess: &mut Session, mut open: Cascade, complete: bool) {
        if !complete {
            stats.cascades_incomplete += 1;
        }
        if !open.bracketed {
            stats.legacy_groups += 1;
        }
        let (message, seqs) = open.take_part(&sess.name, complete, true);
        sess.ready_bytes += message.encoded_len() + seqs.len() * size_of::<u64>();
        sess.ready.push(Ready { message, seqs });
    }

    /// Emits every ready part, accounting pending game states to the first message
    /// (or to a state-only message), and ends the window.
    fn flush_window(stats: &mut AggregateStats, sess: &mut Session, reason: FlushReason, out: &mut Vec<Aggregated>) {
        let ready = std::mem::take(&mut sess.ready);
        sess.ready_bytes = 0;
        let had_ready = !ready.is_empty();
        for r in ready {
            Self::emit(stats, sess, r.message, r.seqs, reason, out);
        }
        if !had_ready && !sess.state_seqs.is_empty() {
            let message = pb::BalatroGameStateEvent { session_id: sess.name.clone(), ..Default::default() };
            Self::emit(stats, sess, message, Vec::new(), reason, out);
        }
        sess.window_start = None;
        sess.window_events = 0;
    }

    fn emit(
        stats: &mut AggregateStats,
        sess: &mut Session,
        mut message: pb::BalatroGameStateEvent,
        mut seqs: Vec<u64>,
        reason: FlushReason,
        out: &mut Vec<Aggregated>,
    ) {
        let states = sess.state_seqs.len();
        if states > 0 {
            message.coalesced_game_states = states as u32;
            stats.game_states_coalesced += states as u64;
            stats.game_states_superseded += states as u64 - 1;
            seqs.append(&mut sess.state_seqs);
            seqs.sort_unstable();
            sess.state_seqs.shrink_to(64);
        }
        message.base.clone_from(&sess.state);
        stats.messages += 1;
        out.push(Aggregated { session: sess.name.clone(), message, input_sequences: seqs, reason });
    }
}

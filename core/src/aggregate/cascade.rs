//! One open cascade: the triggers of a hand (or of a bracketless legacy group)
//! collected in order, with depth and parent inference, and its cut into
//! numbered parts.
//!
//! This file owns [`Cascade`]: the inference state kept across parts (depth of
//! each joker, the last copy/retrigger joker), the current part's triggers and
//! sequences, its byte accounting, and [`Cascade::take_part`], which turns the
//! current part into a message (its `CascadeInfo` with times and deltas). It
//! must never decide when a cascade closes or splits, attach a game state, or
//! touch counters: the session decides and [`super::output`] emits. It must
//! never drop or reorder a trigger, and every sequence pushed must come out in
//! exactly one part.

use super::classify::{contains_ignoring_case, is_joker_context, normalize_into, update_context, Update, COPY_JOKERS};
use jimbus_proto::events as pb;
use prost::Message as _;
use prost_types::Timestamp;
use std::mem::size_of;
use std::time::Duration;

/// The current part of one open cascade.
pub(super) struct Cascade {
    /// `cascade_id` of every part: the session and the first sequence, hashed
    /// when the session name would make it longer than 128 bytes.
    id: String,
    /// Opened by HAND_EVAL_START (a hand), not by a bracketless trigger (a legacy group).
    pub(super) bracketed: bool,
    /// From HAND_EVAL_START, repeated in every part.
    pub(super) hand_type: String,
    /// From HAND_EVAL_START, repeated in every part.
    pub(super) cards: Vec<String>,
    /// The number the next part gets, from 1.
    part: u32,
    /// The `order` the next trigger gets; continues across parts.
    order: u32,
    /// `now` of the last event of the cascade.
    pub(super) last_now: Duration,
    // Inference state, kept across parts.
    /// Depth of each joker's last trigger, by normalized name, for explicit parents.
    depth_of: crate::FastMap<String, u32>,
    /// The previous trigger's joker and depth when it was a copy/retrigger joker.
    prev_copier: Option<(String, u32)>,
    /// A joker name being normalized, reused by every trigger: a new
    /// `String` each time was two allocations per trigger.
    name: String,
    // The current part.
    /// Its triggers and updates, in arrival order.
    pub(super) triggers: Vec<pb::TriggerEvent>,
    /// Every raw sequence it accounts for (brackets included), ascending.
    seqs: Vec<u64>,
    /// `now` of its first trigger, for a duration when triggers lack `received_at`.
    first_now: Option<Duration>,
    /// The largest depth among its triggers.
    depth: u32,
    /// Which kinds of update it holds, indexed by [`Update`]: an update kind
    /// present replaces the joker triggers' own values for that delta.
    updates: [bool; 4],
    /// The last non-empty correlation id of its events.
    correlation_id: String,
    /// Approximate heap bytes of the current part, for the memory budget.
    bytes: usize,
    /// What its triggers take on the wire.
    pub(super) encoded: usize,
}

impl Cascade {
    pub(super) fn new(session: &str, seq: u64, bracketed: bool, now: Duration) -> Self {
        // "-hand-" and a u64 take at most 26 bytes; ids stay within 128.
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
            depth_of: crate::FastMap::default(),
            prev_copier: None,
            name: String::new(),
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

    /// Approximate heap bytes held, for the memory budget: the current part and
    /// the inference map (about 48 bytes an entry with its name).
    pub(super) fn held_bytes(&self) -> usize {
        self.bytes + self.depth_of.len() * 48
    }

    /// Records one raw sequence of the cascade; returns the bytes it holds.
    pub(super) fn push_seq(&mut self, seq: u64, now: Duration, correlation_id: &str) -> usize {
        self.seqs.push(seq);
        self.last_now = now;
        if !correlation_id.is_empty() {
            self.correlation_id.clear();
            self.correlation_id.push_str(correlation_id);
        }
        size_of::<u64>()
    }

    /// Adds a trigger; returns the bytes it holds.
    pub(super) fn push_trigger(
        &mut self,
        mut t: pb::TriggerEvent,
        kind: Update,
        now: Duration,
        correlation_id: &str,
    ) -> usize {
        if kind == Update::Joker {
            self.infer_depth(&mut t);
        } else {
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

    /// Sets a joker trigger's depth and parent (rules in the module header of
    /// `aggregate`) and remembers it for the triggers after it.
    fn infer_depth(&mut self, t: &mut pb::TriggerEvent) {
        let (depth, parent) = if !t.parent_joker.is_empty() {
            normalize_into(&t.parent_joker, &mut self.name);
            (self.depth_of.get(self.name.as_str()).map_or(1, |d| d + 1), None)
        } else if let Some((copier, d)) = &self.prev_copier {
            (d + 1, Some(copier.as_str()))
        } else {
            let copied = contains_ignoring_case(&t.context, "retrigger") || contains_ignoring_case(&t.context, "copy");
            (u32::from(copied), None)
        };
        t.depth = depth;
        if let Some(parent) = parent {
            // Into the trigger's own memory (a spare's, see `spare`).
            parent.clone_into(&mut t.parent_joker);
        }
        normalize_into(if t.joker_name.is_empty() { &t.joker_id } else { &t.joker_name }, &mut self.name);
        self.prev_copier = COPY_JOKERS.contains(&self.name.as_str()).then(|| (t.joker_name.clone(), depth));
        // A joker seen before in the hand keeps its key: no copy of the name.
        match self.depth_of.get_mut(self.name.as_str()) {
            Some(known) => *known = depth,
            None => {
                self.depth_of.insert(self.name.clone(), depth);
            }
        }
    }

    /// Takes the current part as a message (without `base`), leaving the cascade
    /// ready for the next part.
    pub(super) fn take_part(
        &mut self,
        session: &str,
        complete: bool,
        final_part: bool,
    ) -> (pb::BalatroGameStateEvent, Vec<u64>) {
        let triggers = std::mem::take(&mut self.triggers);
        let info = self.part_info(&triggers, complete, final_part);
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

    /// The `CascadeInfo` of the current part, whose triggers are `triggers`.
    fn part_info(&self, triggers: &[pb::TriggerEvent], complete: bool, final_part: bool) -> pb::CascadeInfo {
        // An update kind, when present, is the truth for its delta; the joker
        // triggers' own values are only a fallback for mods that send no updates.
        let sum = |kind: Update, joker_field: fn(&pb::TriggerEvent) -> f64| -> f64 {
            if self.updates[kind as usize] {
                triggers.iter().filter(|t| t.context == update_context(kind)).map(joker_field).sum()
            } else {
                triggers.iter().filter(|t| is_joker_context(t)).map(joker_field).sum()
            }
        };
        let first = triggers.first().and_then(|t| t.received_at);
        let last = triggers.last().and_then(|t| t.received_at);
        let duration_ms = match (&first, &last) {
            (Some(a), Some(b)) => millis_between(a, b),
            _ => match self.first_now {
                Some(f) if !triggers.is_empty() => self.last_now.saturating_sub(f).as_secs_f64() * 1000.0,
                _ => 0.0,
            },
        };
        pb::CascadeInfo {
            cascade_id: self.id.clone(),
            hand_type: self.hand_type.clone(),
            cards: self.cards.clone(),
            trigger_count: triggers.len() as u32,
            depth: self.depth,
            first_trigger_at: first,
            last_trigger_at: last,
            duration_ms,
            chips_delta: sum(Update::Chips, |t| t.chips),
            mult_delta: sum(Update::Mult, |t| t.mult),
            score_delta: sum(Update::Score, |t| t.score_contribution),
            complete,
            part: self.part,
            final_part,
        }
    }
}

fn millis_between(a: &Timestamp, b: &Timestamp) -> f64 {
    (b.seconds - a.seconds) as f64 * 1000.0 + f64::from(b.nanos - a.nanos) / 1e6
}

/// Approximate heap bytes one held trigger takes (struct, strings, sequence).
fn trigger_bytes(t: &pb::TriggerEvent) -> usize {
    size_of::<pb::TriggerEvent>()
        + t.joker_name.capacity()
        + t.joker_id.capacity()
        + t.context.capacity()
        + t.parent_joker.capacity()
        + size_of::<u64>()
}

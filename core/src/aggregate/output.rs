//! What leaves the aggregator: the answer to an offer, the messages it emits,
//! the counters that describe it, and how a session's ready parts and pending
//! game states become those messages.
//!
//! This file owns [`Disposition`], [`AggregateError`], [`FlushReason`],
//! [`Aggregated`], [`AggregateStats`], [`merge_game_state`], and the steps that
//! close a cascade ([`close`]), end a window ([`flush_window`]) and emit one
//! message ([`emit`]) with the session's game state as `base`. It must never
//! decide *when* to flush (the session and the aggregator do), and it must never
//! lose a sequence: every GAME_STATE sequence pending in a session goes into the
//! first message emitted after it, and every message counts in the stats.

use super::cascade::Cascade;
use super::Session;
use jimbus_proto::events as pb;
use prost::Message as _;
use std::mem::size_of;

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
    /// [`Aggregator::flush_all`](super::Aggregator::flush_all).
    FlushAll,
}

/// One message for `balatro.<session>.aggregated`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    /// The session the message belongs to (the `<session>` of its topic).
    pub session: String,
    /// The message itself, `base` filled with the session's merged game state.
    pub message: pb::BalatroGameStateEvent,
    /// Every raw sequence this message accounts for, ascending: the hand's
    /// brackets, triggers and updates, and the game states coalesced into `base`.
    pub input_sequences: Vec<u64>,
    /// What made the aggregator emit it.
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
    /// Merged game states restarted from one GAME_STATE, which could have
    /// made them longer than `max_state_bytes`.
    pub game_states_restarted: u64,
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
/// `extra` key by key. What `from` holds is copied into what `into` already
/// holds ([`Clone::clone_from`]: its strings, lists and Structs keep their
/// memory), and `from` is left as it was. Moved instead, its parts were
/// freed here at the next merge, on the shard that owns the session, while
/// the connection's shard had often allocated them: 17 to 33 frees across
/// threads per 50-event request under wrk, each collected later by the
/// decoding thread's allocator (docs/perf.md, "Thirty-second pass"). The
/// event goes back to the thread that decoded it, which frees or keeps its
/// parts.
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
        // Into an empty Struct, `copy_from` is a clone.
        into.extra.get_or_insert_with(Default::default).fields.copy_from(&extra.fields);
    }
}

/// A closed part waiting for its window's end.
pub(super) struct Ready {
    /// The part, without `base` (the state at the window's end goes there).
    pub(super) message: pb::BalatroGameStateEvent,
    /// The raw sequences the part accounts for.
    pub(super) seqs: Vec<u64>,
}

/// Closes a cascade: its last part becomes ready for the window's end.
pub(super) fn close(stats: &mut AggregateStats, sess: &mut Session, mut open: Cascade, complete: bool) {
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

/// Emits the open cascade's current part at once as a non-final, incomplete
/// part (a split), leaving the cascade open for the next part.
pub(super) fn emit_part(
    stats: &mut AggregateStats,
    sess: &mut Session,
    reason: FlushReason,
    out: &mut Vec<Aggregated>,
) {
    stats.cascade_splits += 1;
    let open = sess.open.as_mut().expect("a split cascade is open");
    let (message, seqs) = open.take_part(&sess.name, false, false);
    emit(stats, sess, message, seqs, reason, out);
}

/// Emits every ready part, accounting pending game states to the first message
/// (or to a state-only message), and ends the window.
pub(super) fn flush_window(
    stats: &mut AggregateStats,
    sess: &mut Session,
    reason: FlushReason,
    out: &mut Vec<Aggregated>,
) {
    let ready = std::mem::take(&mut sess.ready);
    sess.ready_bytes = 0;
    let had_ready = !ready.is_empty();
    for r in ready {
        emit(stats, sess, r.message, r.seqs, reason, out);
    }
    if !had_ready && !sess.state_seqs.is_empty() {
        let message = pb::BalatroGameStateEvent { session_id: sess.name.clone(), ..Default::default() };
        emit(stats, sess, message, Vec::new(), reason, out);
    }
    sess.window_start = None;
    sess.window_events = 0;
    sess.measure_state();
}

/// Emits one message with the session's state as `base`; the game states
/// pending since the last message are accounted to this one.
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
        // Only one of the merged states is "used"; the others were superseded.
        stats.game_states_superseded += states as u64 - 1;
        seqs.append(&mut sess.state_seqs);
        seqs.sort_unstable();
        // A burst of states must not pin a large buffer for the session's life.
        sess.state_seqs.shrink_to(64);
    }
    message.base.clone_from(&sess.state);
    stats.messages += 1;
    out.push(Aggregated { session: sess.name.clone(), message, input_sequences: seqs, reason });
}

//! What a raw event is to aggregation.
//!
//! This file owns the mapping from a raw [`pb::Event`] to a [`Kind`] (game
//! state, hand bracket, trigger or update, or nothing the aggregated stream
//! carries), the [`pb::TriggerEvent`] built for each trigger and update, the
//! context names that tell updates apart, the high-priority test, the list of
//! copy/retrigger jokers, and what aggregation reads of the server's stamps
//! beside an event ([`Stamped`]). It must never hold state, look at other events or
//! decide what happens next (that is the session's and the cascade's job), and
//! it must never alter the raw event: it only reads it.

use super::spare::SpareTriggers;
use crate::stamps::RequestStamps;
use jimbus_proto::events::{self as pb, event::Payload, scoring_event::Step};

/// The server's stamps that aggregation reads from an event: the id of the
/// request that carried it and when the server received it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamped<'a> {
    /// The event's `correlation_id`, which a cascade keeps (its last non-empty one).
    pub correlation_id: &'a str,
    /// The event's `timing.received_at`, which a trigger keeps.
    pub received_at: Option<prost_types::Timestamp>,
    /// The length of the event's encoding, when the caller has it (a shard
    /// has just written it). It bounds the length of the game state the
    /// event carries, which aggregation measures otherwise.
    pub encoded_len: Option<usize>,
}

impl<'a> Stamped<'a> {
    /// What a shard knows of an event it stored: the stamps of the request
    /// that carried it (kept apart from it), and the length of its record.
    pub fn of_stored(request: &'a RequestStamps, encoded_len: usize) -> Self {
        Self {
            correlation_id: &request.correlation_id,
            received_at: Some(request.received_at),
            encoded_len: Some(encoded_len),
        }
    }
}

/// Jokers whose triggers copy or retrigger another effect, as normalized names.
pub(super) const COPY_JOKERS: &[&str] =
    &["blueprint", "brainstorm", "hanging chad", "mime", "sock and buskin", "seltzer", "dusk", "hack"];

/// Whether `name` (a joker name like "Sock and Buskin" or a key like
/// "j_sock_and_buskin") is a copy or retrigger joker.
pub fn is_copy_joker(name: &str) -> bool {
    let normalized = normalize(name);
    COPY_JOKERS.contains(&normalized.as_str())
}

/// A joker name or key in one spelling, so that "Sock and Buskin",
/// "j_sock_and_buskin" and a `parent` written either way compare equal.
pub(super) fn normalize(name: &str) -> String {
    let mut normalized = String::with_capacity(name.len());
    normalize_into(name, &mut normalized);
    normalized
}

/// [`normalize`] into `out`, replacing what it held, so that a caller that
/// normalizes one name per trigger reuses one buffer: trimmed, ASCII letters
/// lowercased, a leading `j_` dropped and `_` read as a space.
pub(super) fn normalize_into(name: &str, out: &mut String) {
    out.clear();
    let trimmed = name.trim();
    // Both bytes are ASCII when they match, so byte 2 starts a character.
    let rest = match trimmed.as_bytes() {
        [j, b'_', ..] if j.eq_ignore_ascii_case(&b'j') => &trimmed[2..],
        _ => trimmed,
    };
    out.extend(rest.chars().map(|c| if c == '_' { ' ' } else { c.to_ascii_lowercase() }));
}

/// Whether `text` holds `word` with ASCII letters in any case, as
/// `text.to_ascii_lowercase().contains(word)` for a lowercase `word`,
/// without the lowercase copy.
pub(super) fn contains_ignoring_case(text: &str, word: &str) -> bool {
    word.is_empty() || text.as_bytes().windows(word.len()).any(|window| window.eq_ignore_ascii_case(word.as_bytes()))
}

/// What an event is to aggregation.
pub(super) enum Kind<'a> {
    /// A GAME_STATE payload, in the event, to copy into the session's state.
    State(&'a pb::GameStateEvent),
    /// SCORING/HAND_EVAL_START: opens a hand.
    Start(&'a pb::HandEvalStart),
    /// SCORING/HAND_EVAL_COMPLETE: closes the open hand.
    Complete,
    /// A trigger or update of the open cascade, and the delta it feeds.
    Trigger(pb::TriggerEvent, Update),
    /// Anything the aggregated stream does not carry.
    Other,
}

/// Which delta a trigger feeds. The discriminant indexes `Cascade::updates`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Update {
    Joker,
    Chips,
    Mult,
    Score,
}

/// Classifies `event` (server sequence `seq`, received at `received_at`),
/// building the trigger it carries in a `spare`'s memory when one is kept; a
/// game state is lent, not taken.
pub(super) fn classify<'a>(
    seq: u64,
    event: &'a pb::Event,
    received_at: Option<prost_types::Timestamp>,
    spare: &mut SpareTriggers,
) -> Kind<'a> {
    let timing = event.timing.as_ref();
    // A trigger holds its strings in a spare's memory when one is kept: every
    // string below is written into it, never assigned anew.
    let mut base = || pb::TriggerEvent {
        sequence: seq,
        client_timestamp_ms: timing.map_or(0.0, |t| t.client_timestamp_ms),
        received_at,
        ..spare.trigger()
    };
    match &event.payload {
        Some(Payload::GameState(g)) => Kind::State(g),
        Some(Payload::JokerTrigger(j)) => {
            let mut t = base();
            t.joker_name.clone_from(&j.joker_name);
            t.context.push_str("JOKER_TRIGGER");
            // Legacy triggers may carry their time only in the payload.
            if t.client_timestamp_ms == 0.0 {
                t.client_timestamp_ms = j.trigger_time_ms;
            }
            Kind::Trigger(t, Update::Joker)
        }
        Some(Payload::Scoring(s)) => match &s.step {
            Some(step) => classify_step(step, base),
            None => Kind::Other,
        },
        _ => Kind::Other,
    }
}

/// Classifies one SCORING step; `base` gives a trigger with the event's
/// sequence and timing filled in.
fn classify_step(step: &Step, base: impl FnOnce() -> pb::TriggerEvent) -> Kind<'_> {
    match step {
        Step::HandEvalStart(start) => Kind::Start(start),
        Step::HandEvalComplete(_) => Kind::Complete,
        Step::JokerTrigger(j) => {
            let mut t = base();
            if let Some(joker) = &j.joker {
                joker.name.as_str().clone_into(&mut t.joker_name);
                joker.id.as_str().clone_into(&mut t.joker_id);
                t.position = joker.position;
            }
            t.context.push_str(if j.context.is_empty() { "JOKER_TRIGGER" } else { &j.context });
            t.chips = j.chips;
            t.mult = j.mult;
            t.money = j.money;
            t.score_contribution = j.score_contribution;
            t.parent_joker.clone_from(&j.parent);
            Kind::Trigger(t, Update::Joker)
        }
        Step::MultUpdate(m) => update(base(), &m.source, Update::Mult, |t| &mut t.mult, m.mult_after - m.mult_before),
        Step::ChipsUpdate(c) => {
            update(base(), &c.source, Update::Chips, |t| &mut t.chips, c.chips_after - c.chips_before)
        }
        Step::ScoreUpdate(u) => {
            update(base(), "", Update::Score, |t| &mut t.score_contribution, u.score_after - u.score_before)
        }
    }
}

/// A MULT/CHIPS/SCORE update as a trigger named after its `source`, carrying
/// its change in `field` (the one its kind feeds), so that the deltas sum
/// updates and joker triggers over the same field.
fn update(
    mut t: pb::TriggerEvent,
    source: &str,
    kind: Update,
    field: fn(&mut pb::TriggerEvent) -> &mut f64,
    delta: f64,
) -> Kind<'static> {
    source.clone_into(&mut t.joker_name);
    t.context.push_str(update_context(kind));
    *field(&mut t) = delta;
    Kind::Trigger(t, kind)
}

/// Whether `event` must flush its session's window at once.
pub(super) fn is_high_priority(event: &pb::Event) -> bool {
    event.priority == pb::Priority::High as i32
        || event.metadata.get("priority").is_some_and(|p| p.eq_ignore_ascii_case("high"))
        || matches!(event.payload, Some(Payload::Error(_)) | Some(Payload::LearningDecision(_)))
        || event.event_type == "ERROR"
        || event.event_type == "LEARNING_DECISION"
}

/// The `context` an update of `kind` carries; the deltas find updates by it.
pub(super) fn update_context(kind: Update) -> &'static str {
    match kind {
        Update::Joker => "",
        Update::Chips => "CHIPS_UPDATE",
        Update::Mult => "MULT_UPDATE",
        Update::Score => "SCORE_UPDATE",
    }
}

/// Whether `t` is a joker trigger rather than an update.
pub(super) fn is_joker_context(t: &pb::TriggerEvent) -> bool {
    !matches!(t.context.as_str(), "CHIPS_UPDATE" | "MULT_UPDATE" | "SCORE_UPDATE")
}

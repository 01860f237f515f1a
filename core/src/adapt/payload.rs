//! The typed payloads of the dialect's known event types: one reader per
//! message, which fills a default message where it lies, and the choice of
//! reader by an event's type and subtype. Keys without a typed field go to
//! the message's `extra`. Like the rest of [`super`], it reads bytes into
//! messages and must never stamp them.

use super::{flag, free_object, int32, list, number, object, text, texts, Result};
use crate::json::Reader;
use jimbus_proto::events::{self as pb, event::Payload};

/// Declares a payload reader, which fills a default message in place: each
/// `"key" => field: reader` line maps a JSON key to a typed field; every
/// other key lands in `extra`. In place, not returned: a message returned
/// and then moved is read back from memory its fields were just written to,
/// which stalls the load (docs/perf.md, "Fortieth pass").
macro_rules! payload_reader {
    ($name:ident, $msg:ty { $($key:literal => $field:ident : $read:expr),* $(,)? }) => {
        fn $name(r: &mut Reader<'_>, m: &mut $msg) -> Result<()> {
            let mut extra = None;
            object(r, &mut extra, |r, key| {
                match key {
                    $($key => m.$field = $read(r)?,)*
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            m.extra = extra;
            Ok(())
        }
    };
}

fn some<T>(read: impl Fn(&mut Reader<'_>) -> Result<T>) -> impl Fn(&mut Reader<'_>) -> Result<Option<T>> {
    move |r| read(r).map(Some)
}

/// A message field that may be absent, read by a payload reader.
fn some_message<T: Default>(
    fill: impl Fn(&mut Reader<'_>, &mut T) -> Result<()>,
) -> impl Fn(&mut Reader<'_>) -> Result<Option<T>> {
    move |r| {
        let mut message = T::default();
        fill(r, &mut message)?;
        Ok(Some(message))
    }
}

payload_reader!(joker, pb::Joker { "name" => name: text, "id" => id: text, "position" => position: int32 });
payload_reader!(card, pb::Card { "rank" => rank: text, "suit" => suit: text, "enhancements" => enhancements: texts });
payload_reader!(blind, pb::Blind { "name" => name: text, "chips" => chips: number });
payload_reader!(deck, pb::DeckSummary { "cards_remaining" => cards_remaining: int32, "size" => size: int32 });
payload_reader!(heartbeat, pb::HeartbeatEvent {
    "version" => mod_version: text, "uptime" => uptime: number,
    "headless" => headless: flag, "game_state" => game_state: text,
});
payload_reader!(game_state, pb::GameStateEvent {
    "game_state" => phase: text, "phase" => phase: text, "ante" => ante: some(int32), "round" => round: some(int32),
    "money" => money: some(number), "chips" => chips: some(number), "mult" => mult: some(number),
    "score" => score: some(number), "hands_remaining" => hands_remaining: some(int32),
    "discards_remaining" => discards_remaining: some(int32),
    "blind" => blind: some_message(blind), "jokers" => jokers: |r: &mut Reader<'_>| list(r, joker),
    "hand" => hand: |r: &mut Reader<'_>| list(r, card), "deck" => deck: some_message(deck),
});
payload_reader!(money_changed, pb::MoneyChangedEvent {
    "old_value" => old_value: number, "new_value" => new_value: number, "difference" => difference: number,
});
payload_reader!(score_changed, pb::ScoreChangedEvent {
    "old_chips" => old_chips: number, "new_chips" => new_chips: number,
    "old_mult" => old_mult: number, "new_mult" => new_mult: number,
});
payload_reader!(hand_played, pb::HandPlayedEvent {
    "hands_remaining" => hands_remaining: int32, "hand_number" => hand_number: int32,
    "hand_type" => hand_type: text, "cards" => cards: texts,
});
payload_reader!(cards_discarded, pb::CardsDiscardedEvent {
    "discards_remaining" => discards_remaining: int32, "cards" => cards: texts,
});
payload_reader!(jokers_changed, pb::JokersChangedEvent {
    "old_count" => old_count: int32, "new_count" => new_count: int32,
    "jokers" => jokers: |r: &mut Reader<'_>| list(r, joker),
});
payload_reader!(round_changed, pb::RoundChangedEvent { "round" => round: int32, "ante" => ante: int32 });
payload_reader!(phase_changed, pb::PhaseChangedEvent { "old_phase" => old_phase: text, "new_phase" => new_phase: text });
payload_reader!(round_complete, pb::RoundCompleteEvent {
    "score" => score: number, "ante" => ante: int32, "round" => round: int32, "money" => money: number,
});
payload_reader!(joker_trigger, pb::JokerTriggerEvent { "joker_name" => joker_name: text, "timestamp" => trigger_time_ms: number });
payload_reader!(hand_eval_start, pb::HandEvalStart { "hand_type" => hand_type: text, "cards" => cards: texts });
payload_reader!(scoring_joker, pb::ScoringJokerTrigger {
    "joker" => joker: some_message(joker), "score_contribution" => score_contribution: number,
    "trigger_index" => trigger_index: int32, "chips" => chips: number, "mult" => mult: number,
    "money" => money: number, "context" => context: text, "parent" => parent: text,
});
payload_reader!(score_update, pb::ScoreUpdate { "score_before" => score_before: number, "score_after" => score_after: number });
payload_reader!(mult_update, pb::MultUpdate {
    "mult_before" => mult_before: number, "mult_after" => mult_after: number, "source" => source: text,
});
payload_reader!(chips_update, pb::ChipsUpdate {
    "chips_before" => chips_before: number, "chips_after" => chips_after: number, "source" => source: text,
});
payload_reader!(hand_eval_complete, pb::HandEvalComplete {
    "duration_ms" => duration_ms: number, "final_chips" => final_chips: number,
    "final_mult" => final_mult: number, "triggers" => triggers: int32,
});
payload_reader!(decision_request, pb::DecisionRequest {
    "request_id" => request_id: text, "available_actions" => available_actions: texts,
    "time_limit_ms" => time_limit_ms: int32, "game_state" => game_state: some(free_object),
});
payload_reader!(decision_response, pb::DecisionResponse {
    "request_id" => request_id: text, "action" => action: text, "params" => params: some(free_object),
});
payload_reader!(error_event, pb::ErrorEvent { "message" => message: text, "stack" => stack: text });
payload_reader!(connection_test, pb::ConnectionTestEvent { "message" => message: text });

/// Sets `slot` to the payload `shape` makes of a default message `m`, then
/// fills `m` where it now lies with the payload reader `fill`. `shape` is
/// written once and read both as the expression that builds the payload and
/// as the pattern that finds its message again.
macro_rules! fill_payload {
    ($slot:ident, $r:ident, $fill:ident, |$m:ident| $($shape:tt)+) => {{
        let payload = $slot.insert({
            let $m = Default::default();
            $($shape)+
        });
        let $($shape)+ = payload else { unreachable!("the payload was just made in this shape") };
        $fill($r, $m)
    }};
}

/// Reads the payload object of an event of `event_type`/`subtype` into
/// `slot`, the event's own payload field. Filled there rather than returned:
/// a `Payload` is 304 bytes whatever its variant (a game state's size), and
/// returning it through the readers' results moved it about six times per
/// event (docs/perf.md, "Ninth pass"). On an error `slot` holds what was
/// read before it, which the caller replaces or drops with the event.
pub(super) fn typed_payload(
    r: &mut Reader<'_>,
    event_type: &str,
    subtype: &str,
    slot: &mut Option<Payload>,
) -> Result<()> {
    use pb::learning_decision_event::Kind as Decision;
    use pb::scoring_event::Step;
    use pb::{LearningDecisionEvent as Learning, ScoringEvent as Scoring};
    match (event_type, subtype) {
        ("HEARTBEAT", _) => fill_payload!(slot, r, heartbeat, |m| Payload::Heartbeat(m)),
        ("GAME_STATE", _) => fill_payload!(slot, r, game_state, |m| Payload::GameState(m)),
        ("MONEY_CHANGED", _) => fill_payload!(slot, r, money_changed, |m| Payload::MoneyChanged(m)),
        ("SCORE_CHANGED", _) => fill_payload!(slot, r, score_changed, |m| Payload::ScoreChanged(m)),
        ("HAND_PLAYED", _) => fill_payload!(slot, r, hand_played, |m| Payload::HandPlayed(m)),
        ("CARDS_DISCARDED", _) => fill_payload!(slot, r, cards_discarded, |m| Payload::CardsDiscarded(m)),
        ("JOKERS_CHANGED", _) => fill_payload!(slot, r, jokers_changed, |m| Payload::JokersChanged(m)),
        ("ROUND_CHANGED", _) => fill_payload!(slot, r, round_changed, |m| Payload::RoundChanged(m)),
        ("PHASE_CHANGED", _) => fill_payload!(slot, r, phase_changed, |m| Payload::PhaseChanged(m)),
        ("ROUND_COMPLETE", _) => fill_payload!(slot, r, round_complete, |m| Payload::RoundComplete(m)),
        ("JOKER_TRIGGER", _) => fill_payload!(slot, r, joker_trigger, |m| Payload::JokerTrigger(m)),
        ("SCORING", "HAND_EVAL_START") => {
            fill_payload!(slot, r, hand_eval_start, |m| Payload::Scoring(Scoring {
                step: Some(Step::HandEvalStart(m))
            }))
        }
        ("SCORING", "JOKER_TRIGGER") => {
            fill_payload!(slot, r, scoring_joker, |m| Payload::Scoring(Scoring { step: Some(Step::JokerTrigger(m)) }))
        }
        ("SCORING", "SCORE_UPDATE") => {
            fill_payload!(slot, r, score_update, |m| Payload::Scoring(Scoring { step: Some(Step::ScoreUpdate(m)) }))
        }
        ("SCORING", "MULT_UPDATE") => {
            fill_payload!(slot, r, mult_update, |m| Payload::Scoring(Scoring { step: Some(Step::MultUpdate(m)) }))
        }
        ("SCORING", "CHIPS_UPDATE") => {
            fill_payload!(slot, r, chips_update, |m| Payload::Scoring(Scoring { step: Some(Step::ChipsUpdate(m)) }))
        }
        ("SCORING", "HAND_EVAL_COMPLETE") => {
            fill_payload!(slot, r, hand_eval_complete, |m| Payload::Scoring(Scoring {
                step: Some(Step::HandEvalComplete(m))
            }))
        }
        ("LEARNING_DECISION", "REQUEST") => {
            fill_payload!(slot, r, decision_request, |m| Payload::LearningDecision(Learning {
                kind: Some(Decision::Request(m))
            }))
        }
        ("LEARNING_DECISION", "RESPONSE") => {
            fill_payload!(slot, r, decision_response, |m| Payload::LearningDecision(Learning {
                kind: Some(Decision::Response(m))
            }))
        }
        ("ERROR", _) => fill_payload!(slot, r, error_event, |m| Payload::Error(m)),
        ("connection_test", _) => fill_payload!(slot, r, connection_test, |m| Payload::ConnectionTest(m)),
        _ => {
            *slot = Some(Payload::Generic(pb::GenericEvent { payload: Some(free_object(r)?) }));
            Ok(())
        }
    }
}

/// Gives an event that sent no payload a typed, empty one, so subscribers can
/// still match on the type.
pub(super) fn empty_payload(event: &mut pb::Event) {
    if typed_payload(&mut Reader::new(b"{}"), &event.event_type, &event.subtype, &mut event.payload).is_err() {
        event.payload = Some(Payload::Generic(pb::GenericEvent::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    /// What a typed list counts as built covers the most its `Vec` holds at
    /// once: its first room, then, as it doubles, the old and new buffers.
    #[test]
    fn a_list_counts_at_least_the_room_it_holds() {
        for n in 0..40 {
            let body = format!("[{}]", vec!["{}"; n].join(","));
            let mut r = Reader::new(body.as_bytes());
            let jokers = list(&mut r, joker).unwrap();
            let room = jokers.capacity() * std::mem::size_of::<pb::Joker>();
            let peak = if jokers.capacity() > json::FIRST_LIST_SLOTS { room + room / 2 } else { room };
            assert!(r.built_bytes() >= peak, "{n} jokers: {} counted, {peak} held", r.built_bytes());
        }
    }
}

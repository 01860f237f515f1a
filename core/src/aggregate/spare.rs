//! Triggers that left the aggregator in a message the shard has logged, kept
//! to hold the next triggers: their strings' memory is reused where a new
//! trigger would allocate a name, an id and a context of its own.
//!
//! At a farm's traffic, a shard spent 3.4 % of its samples in the allocator
//! for aggregation's triggers, their strings first (docs/perf.md,
//! thirty-third pass). This module owns the spares and how many it keeps; it
//! must never hand out a trigger with a value left from its last use, and
//! never keeps more than [`MAX_SPARE_TRIGGERS`].

use jimbus_proto::events as pb;

/// The most triggers kept: what a shard's aggregation takes between the
/// commits that bring triggers back, at 100,000 events/s of a farm's traffic
/// (512 ran dry: 2.8 % of the samples were still in the allocator for
/// triggers, and 0.7–1.0 % with this many; docs/perf.md, thirty-third pass). At
/// most 1.25 MiB with their strings (184 bytes and four strings of at most
/// [`MAX_KEPT_STRING`] each), outside the aggregator's memory budget.
const MAX_SPARE_TRIGGERS: usize = 4096;

/// A string longer than this is not kept: a trigger's names and contexts are
/// short, and one long string would be held for every trigger after it.
const MAX_KEPT_STRING: usize = 32;

/// Emptied triggers whose strings keep their memory.
#[derive(Default)]
pub(super) struct SpareTriggers {
    /// Each is a default trigger but for its strings' capacity.
    triggers: Vec<pb::TriggerEvent>,
}

impl SpareTriggers {
    /// A trigger equal to `TriggerEvent::default()`, with a spare's memory when one is kept.
    pub(super) fn trigger(&mut self) -> pb::TriggerEvent {
        self.triggers.pop().unwrap_or_default()
    }

    /// Keeps `triggers`, emptied, up to the limit; drops the rest.
    pub(super) fn keep(&mut self, triggers: Vec<pb::TriggerEvent>) {
        let room = MAX_SPARE_TRIGGERS - self.triggers.len();
        self.triggers.extend(triggers.into_iter().take(room).map(emptied));
    }
}

/// `t` as a default trigger holding its strings' memory: every field not
/// named here (one added to the schema too) is set to its default.
fn emptied(t: pb::TriggerEvent) -> pb::TriggerEvent {
    let pb::TriggerEvent { joker_name, joker_id, context, parent_joker, .. } = t;
    let [joker_name, joker_id, context, parent_joker] = [joker_name, joker_id, context, parent_joker].map(|mut s| {
        if s.capacity() > MAX_KEPT_STRING {
            return String::new();
        }
        s.clear();
        s
    });
    pb::TriggerEvent { joker_name, joker_id, context, parent_joker, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(i: usize) -> pb::TriggerEvent {
        pb::TriggerEvent {
            joker_name: format!("Joker {i}"),
            joker_id: format!("j{i}"),
            position: i as i32,
            context: "JOKER_TRIGGER".into(),
            chips: 1.0,
            mult: 2.0,
            money: 3.0,
            order: 4,
            sequence: 5,
            client_timestamp_ms: 6.0,
            received_at: Some(prost_types::Timestamp { seconds: 7, nanos: 8 }),
            depth: 9,
            parent_joker: "Blueprint".into(),
            score_contribution: 10.0,
        }
    }

    /// A spare is a default trigger, whatever it held, and holds the memory
    /// of the strings it had.
    #[test]
    fn a_spare_is_a_default_trigger_with_its_strings_memory() {
        let mut spare = SpareTriggers::default();
        let name_at = {
            let t = used(1);
            let at = t.joker_name.as_ptr();
            spare.keep(vec![t]);
            at
        };
        let t = spare.trigger();
        assert_eq!(t, pb::TriggerEvent::default());
        assert_eq!(t.joker_name.as_ptr(), name_at, "the name's memory is reused");
        assert!(t.context.capacity() >= "JOKER_TRIGGER".len());
        assert_eq!(spare.trigger(), pb::TriggerEvent::default(), "none kept: a fresh one");
    }

    /// At most MAX_SPARE_TRIGGERS are kept, and a long string's memory is let go.
    #[test]
    fn spares_are_bounded() {
        let mut spare = SpareTriggers::default();
        spare.keep((0..MAX_SPARE_TRIGGERS + 10).map(used).collect());
        spare.keep(vec![used(0)]);
        assert_eq!(spare.triggers.len(), MAX_SPARE_TRIGGERS);
        let mut long = used(0);
        long.context = "x".repeat(MAX_KEPT_STRING + 1);
        let mut spare = SpareTriggers::default();
        spare.keep(vec![long]);
        assert_eq!(spare.trigger().context.capacity(), 0);
    }
}

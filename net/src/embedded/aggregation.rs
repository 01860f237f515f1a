//! A shard's aggregation stage: it feeds raw events to the pure
//! [`Aggregator`] once they are durable, holds the aggregated messages until
//! the log has them, tells the pump when the aggregator's timers are due and
//! when held messages have waited long enough for a commit of ingest to ride
//! with, and exports the aggregator's counters as metrics.
//!
//! It must never see an event before the raw stream has it durably (so a
//! failed commit, which the client retries, cannot be aggregated twice), and
//! it must never drop a message the log refused: refused messages go back and
//! are written with the next commit. What it holds in memory is lost on a
//! crash: hands still open then are on the raw stream only.

use super::command::StoredEvent;
use jimbus_core::aggregate::{AggregateConfig, AggregateStats, Aggregated, Aggregator, ConfigError, Stamped};
use jimbus_core::budget::{Grant, MemoryBudget};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The aggregator's counters, in the order [`AggregationStage::export_metrics`] computes them.
const COUNTERS: [&str; 7] = [
    "jimbus_aggregate_messages_total",
    "jimbus_aggregate_hands_complete_total",
    "jimbus_aggregate_cascades_incomplete_total",
    "jimbus_aggregate_cascade_splits_total",
    "jimbus_aggregate_game_states_coalesced_total",
    "jimbus_aggregate_sessions_evicted_total",
    "jimbus_aggregate_game_state_restarts_total",
];

/// How long aggregated messages wait for the next group commit of ingest
/// before they get a synced write of their own. Under load a request comes
/// well within it and carries them; a commit of their own each time the
/// queue was empty for an instant was one synced write in four or five at
/// half rate (docs/perf.md, twenty-sixth pass), every request that came
/// during it waiting for it.
/// Against windows of 100 ms, it is little.
pub const RIDE_WAIT: Duration = Duration::from_millis(5);

/// One shard's aggregator and what it has produced but not yet logged.
pub struct AggregationStage {
    /// The pure windows and cascades.
    aggregator: Aggregator,
    /// The aggregator's clock starts here.
    origin: Instant,
    /// Messages produced and not yet durable, oldest first.
    pending: Vec<Aggregated>,
    /// When `pending` last went from empty to holding a newly produced
    /// message: it gets a commit of its own [`RIDE_WAIT`] later. `None` while
    /// empty, and for messages the log refused, which wait for the next
    /// commit or the aggregator's next timer, as a failing disk is not
    /// retried in a loop.
    pending_since: Option<Instant>,
    /// The shard's number, as the metrics' label.
    shard: String,
    /// The counters as last exported, so that each export adds what they gained.
    exported: AggregateStats,
    /// The aggregator's share of the memory budget, held for the shard's life.
    _grant: Option<Grant>,
}

impl AggregationStage {
    /// Builds the stage, asking `budget` for the aggregator's memory (taking
    /// what is free down to a sixteenth of its configured size). The aggregators of all
    /// `shards` together ask for at most half the budget: held for the
    /// shards' life, more would leave ingest nothing to grant (with 2 shards,
    /// a 32 MiB budget answered every request 503).
    pub fn new(
        shard: usize,
        shards: usize,
        config: AggregateConfig,
        budget: &Arc<MemoryBudget>,
    ) -> Result<Self, ConfigError> {
        let share = budget.limit() / (2 * shards.max(1) as u64);
        let floor = config.memory_budget as u64 / 16;
        let want = (config.memory_budget as u64).min(share);
        // Below a sixteenth of its configured memory an aggregator asks for
        // nothing, as when the budget had less than that free.
        let grant = if want < floor { None } else { budget.request(want, floor) };
        let granted = grant.as_ref().map_or(0, Grant::bytes) as usize;
        if granted < config.memory_budget {
            tracing::warn!(
                shard,
                granted,
                configured = config.memory_budget,
                "aggregation runs on a smaller memory budget than configured"
            );
        }
        let mut aggregator = Aggregator::new(config)?;
        aggregator.set_memory_budget(granted);
        // At zero from the start, so that rates see a counter's first increments.
        for name in COUNTERS {
            metrics::counter!(name, "shard" => shard.to_string()).absolute(0);
        }
        Ok(Self {
            aggregator,
            origin: Instant::now(),
            pending: Vec::new(),
            pending_since: None,
            shard: shard.to_string(),
            exported: AggregateStats::default(),
            _grant: grant,
        })
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Offers events that just became durable, in log order, each dated from
    /// when the server received it.
    pub fn offer(&mut self, events: &mut [StoredEvent]) {
        let (now, held) = (self.now(), self.pending.len());
        let wall_now = crate::clock::now_micros();
        for StoredEvent { sequence, event, request, encoded_len } in events {
            let received = crate::clock::micros(&request.received_at);
            let arrived = now.saturating_sub(Duration::from_micros(wall_now.saturating_sub(received)));
            let stamped = Stamped::of_stored(request, *encoded_len);
            // Lent out of the event, which the offer borrows mutably (it takes a game state).
            let session = std::mem::take(&mut event.session_id);
            let offered =
                self.aggregator.offer_arrived(&session, *sequence, event, stamped, arrived, now, &mut self.pending);
            event.session_id = session;
            if let Err(e) = offered {
                // Sequences come from this shard's own counter, so this is a bug, not bad input.
                tracing::error!(shard = %self.shard, error = %e, "aggregation refused an event");
                metrics::counter!("jimbus_aggregate_refused_total").increment(1);
            }
        }
        self.note_produced(held);
    }

    /// Starts the wait for a commit to ride with when messages were produced
    /// beyond the `held` ones (messages the log refused start no wait).
    fn note_produced(&mut self, held: usize) {
        if self.pending_since.is_none() && self.pending.len() > held {
            self.pending_since = Some(Instant::now());
        }
    }

    /// Runs the aggregator's timers (window ends, gaps, timeouts, eviction).
    pub fn tick(&mut self) {
        let (now, held) = (self.now(), self.pending.len());
        self.aggregator.tick(now, &mut self.pending);
        self.note_produced(held);
    }

    /// Flushes every session (on shutdown).
    pub fn flush_all(&mut self) {
        self.aggregator.flush_all(&mut self.pending);
    }

    /// When the pump must wake: for the aggregator's timers, or to commit
    /// messages that have waited [`RIDE_WAIT`] for a commit of ingest.
    pub fn deadline(&self) -> Option<Instant> {
        let timers = self.aggregator.next_deadline().map(|d| self.origin + d);
        let ride = self.pending_since.map(|since| since + RIDE_WAIT);
        match (timers, ride) {
            (Some(timers), Some(ride)) => Some(timers.min(ride)),
            (timers, ride) => timers.or(ride),
        }
    }

    /// Whether a wake with no command should commit what is held: messages
    /// that have waited [`RIDE_WAIT`], or only messages the log refused
    /// (tried again at the aggregator's timers).
    pub fn due(&self, now: Instant) -> bool {
        match self.pending_since {
            Some(since) => now >= since + RIDE_WAIT,
            None => !self.pending.is_empty(),
        }
    }

    /// Messages to write with the next commit.
    pub fn take_pending(&mut self) -> Vec<Aggregated> {
        self.pending_since = None;
        std::mem::take(&mut self.pending)
    }

    /// Hands messages the log has made durable back to the aggregator, whose
    /// next triggers reuse their memory.
    pub fn take_back(&mut self, logged: Vec<Aggregated>) {
        self.aggregator.take_back(logged);
    }

    /// Puts back messages the log refused, ahead of anything newer.
    pub fn restore_pending(&mut self, mut refused: Vec<Aggregated>) {
        refused.append(&mut self.pending);
        self.pending = refused;
    }

    /// Exports what the counters gained since the last export.
    pub fn export_metrics(&mut self) {
        let now = self.aggregator.stats();
        let before = std::mem::replace(&mut self.exported, now);
        let shard = &self.shard;
        let gains = [
            now.messages - before.messages,
            now.hands_complete - before.hands_complete,
            now.cascades_incomplete - before.cascades_incomplete,
            now.cascade_splits - before.cascade_splits,
            now.game_states_coalesced - before.game_states_coalesced,
            now.evicted_idle + now.evicted_capacity - before.evicted_idle - before.evicted_capacity,
            now.game_states_restarted - before.game_states_restarted,
        ];
        let counters = COUNTERS.into_iter().zip(gains);
        for (name, gained) in counters {
            if gained > 0 {
                metrics::counter!(name, "shard" => shard.clone()).increment(gained);
            }
        }
        metrics::gauge!("jimbus_aggregate_sessions", "shard" => shard.clone()).set(self.aggregator.sessions() as f64);
        metrics::gauge!("jimbus_aggregate_bytes_held", "shard" => shard.clone())
            .set(self.aggregator.bytes_held() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jimbus_core::stamps::RequestStamps;
    use jimbus_proto::events::{self as pb, event::Payload, scoring_event::Step};

    fn stored(sequence: u64, event_type: &str, subtype: &str, payload: Payload) -> StoredEvent {
        let event = pb::Event {
            event_type: event_type.into(),
            subtype: subtype.into(),
            session_id: "s".into(),
            payload: Some(payload),
            ..Default::default()
        };
        let request = Arc::new(RequestStamps {
            received_at: crate::clock::timestamp(crate::clock::now_micros()),
            ..Default::default()
        });
        StoredEvent { sequence, event: Box::new(event), request, encoded_len: 64 }
    }

    /// A hand closed by an ERROR, which flushes it at once (high priority).
    fn a_flushed_hand() -> Vec<StoredEvent> {
        let scoring = |step| Payload::Scoring(pb::ScoringEvent { step: Some(step) });
        vec![
            stored(1, "SCORING", "HAND_EVAL_START", scoring(Step::HandEvalStart(Default::default()))),
            stored(2, "SCORING", "HAND_EVAL_COMPLETE", scoring(Step::HandEvalComplete(Default::default()))),
            stored(3, "ERROR", "", Payload::Error(pb::ErrorEvent { message: "boom".into(), ..Default::default() })),
        ]
    }

    #[test]
    fn produced_messages_wait_for_a_commit_to_ride_with_and_refused_ones_start_no_wait() {
        let mut stage = AggregationStage::new(0, 1, AggregateConfig::default(), &MemoryBudget::new(64 << 20)).unwrap();
        assert!(!stage.due(Instant::now()), "nothing held, nothing due");
        let before = Instant::now();
        stage.offer(&mut a_flushed_hand());
        let after = Instant::now();
        assert_eq!(stage.pending.len(), 1, "the hand, flushed by the error");
        // The pump wakes for them once the wait is over, and not before.
        assert!(stage.deadline().is_some_and(|deadline| deadline <= after + RIDE_WAIT));
        assert!(!stage.due(before), "a wake before the wait is over commits nothing");
        assert!(stage.due(after + RIDE_WAIT));

        let refused = stage.take_pending();
        assert!(stage.pending_since.is_none() && !stage.due(after + RIDE_WAIT));
        // Refused by the log: due at the next wake, but a tick that produces
        // nothing starts no wait, so a failing disk is not tried in a loop.
        stage.restore_pending(refused);
        stage.tick();
        assert!(stage.pending_since.is_none());
        assert!(stage.due(before));
    }
}

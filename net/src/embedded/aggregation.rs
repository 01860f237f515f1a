//! A shard's aggregation stage: it feeds raw events to the pure
//! [`Aggregator`] once they are durable, holds the aggregated messages until
//! the log has them, tells the pump when the aggregator's timers are due, and
//! exports the aggregator's counters as metrics.
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

/// One shard's aggregator and what it has produced but not yet logged.
pub struct AggregationStage {
    aggregator: Aggregator,
    origin: Instant,
    pending: Vec<Aggregated>,
    shard: String,
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
        let now = self.now();
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
    }

    /// Runs the aggregator's timers (window ends, gaps, timeouts, eviction).
    pub fn tick(&mut self) {
        let now = self.now();
        self.aggregator.tick(now, &mut self.pending);
    }

    /// Flushes every session (on shutdown).
    pub fn flush_all(&mut self) {
        self.aggregator.flush_all(&mut self.pending);
    }

    /// When the pump must wake for the aggregator's timers.
    pub fn deadline(&self) -> Option<Instant> {
        self.aggregator.next_deadline().map(|d| self.origin + d)
    }

    /// Messages to write with the next commit.
    pub fn take_pending(&mut self) -> Vec<Aggregated> {
        std::mem::take(&mut self.pending)
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

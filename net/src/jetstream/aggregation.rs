//! Aggregation on the JetStream bus: the same pure [`Aggregator`] as the
//! embedded log's shards, fed with the events this node published once
//! JetStream has acknowledged them (so the triggers' sequences are their
//! stream sequences), its timers driven by a task on the bus's tokio runtime,
//! and its messages published on `balatro.<session>.aggregated` with a
//! `Nats-Msg-Id` made from the session and the first raw sequence they cover,
//! so a message published twice is stored once.
//!
//! A session is aggregated by the node that received its events (a game keeps
//! its connection to one node; after a failover the next node starts a new
//! hand). It must never hold a message JetStream refused without trying it
//! again, and never see an event JetStream did not acknowledge.

use crate::lock::lock;
use async_nats::jetstream::{self, message::PublishMessage};
use jimbus_core::aggregate::{AggregateConfig, Aggregated, Aggregator, ConfigError};
use jimbus_core::topic;
use jimbus_proto::events as pb;
use jimbus_proto::wire;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Longest sleep of the timer task when no deadline is due.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// This node's aggregator on the JetStream bus, shared by the publishing
/// tasks (which offer) and the timer task (which ticks and publishes).
pub struct NatsAggregation {
    /// The aggregator and what it produced, not yet stored.
    state: Mutex<State>,
    /// The zero of the aggregator's clock (it counts durations, not wall time).
    origin: Instant,
    /// Woken when an offer produced messages to publish.
    produced: Notify,
}

/// What the lock guards: offers and ticks change both together.
struct State {
    /// The pure aggregator, the same as the embedded log's.
    aggregator: Aggregator,
    /// Messages produced and not yet acknowledged by JetStream, oldest first.
    pending: Vec<Aggregated>,
}

impl NatsAggregation {
    pub fn new(config: AggregateConfig) -> Result<Arc<Self>, ConfigError> {
        let budget = config.memory_budget;
        let mut aggregator = Aggregator::new(config)?;
        aggregator.set_memory_budget(budget);
        let state = Mutex::new(State { aggregator, pending: Vec::new() });
        Ok(Arc::new(Self { state, origin: Instant::now(), produced: Notify::new() }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Offers events JetStream acknowledged, with their stream sequences, in publish order.
    pub fn offer(&self, events: &mut [(u64, &mut pb::Event)]) {
        let now = self.origin.elapsed();
        let mut state = self.state();
        let State { aggregator, pending } = &mut *state;
        for (sequence, event) in events {
            // Lent out of the event, which the offer borrows mutably (it takes a game state).
            let session = std::mem::take(&mut event.session_id);
            let offered = aggregator.offer(&session, *sequence, event, now, pending);
            event.session_id = session;
            if let Err(e) = offered {
                // Two requests of one session raced on two connections.
                tracing::warn!(error = %e, "aggregation skipped an out-of-order event");
                metrics::counter!("jimbus_aggregate_refused_total").increment(1);
            }
        }
        if !pending.is_empty() {
            self.produced.notify_one();
        }
    }

    /// Ticks the aggregator at its deadlines and publishes what it produces, until the runtime stops.
    pub async fn run(self: Arc<Self>, js: jetstream::Context) {
        loop {
            let wait = {
                let state = self.state();
                let now = self.origin.elapsed();
                state.aggregator.next_deadline().map_or(IDLE_TICK, |d| d.saturating_sub(now)).min(IDLE_TICK)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.produced.notified() => {}
            }
            let messages = {
                let mut state = self.state();
                let State { aggregator, pending } = &mut *state;
                aggregator.tick(self.origin.elapsed(), pending);
                std::mem::take(pending)
            };
            let refused = publish(&js, messages).await;
            if !refused.is_empty() {
                let mut state = self.state();
                let newer = std::mem::replace(&mut state.pending, refused);
                state.pending.extend(newer);
            }
        }
    }
}

/// Publishes messages in order; returns those from the first refused one on.
async fn publish(js: &jetstream::Context, messages: Vec<Aggregated>) -> Vec<Aggregated> {
    let mut acks = Vec::with_capacity(messages.len());
    for aggregated in &messages {
        let first = aggregated.input_sequences.first().copied().unwrap_or_default();
        // In one pass, as the embedded pump stages it (`wire`): prost's
        // `encode` walks the nested triggers again at every level.
        let mut payload = Vec::new();
        wire::Write::write(&aggregated.message, &mut payload);
        let message = PublishMessage::build()
            .payload(payload.into())
            .header(super::KIND, "aggregated")
            .message_id(format!("agg-{}-{first}", aggregated.session));
        acks.push(js.send_publish(topic::aggregated_topic(&aggregated.session), message).await);
    }
    for (i, ack) in acks.into_iter().enumerate() {
        let stored = match ack {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "aggregated messages kept for another try");
            return messages.into_iter().skip(i).collect();
        }
    }
    Vec::new()
}

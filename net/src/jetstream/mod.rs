//! The NATS JetStream backend of the [`Bus`]: one stream (`JIMBUS`, subjects
//! `balatro.>` and `deadletter`, file storage, the configured replicas) whose
//! subjects are jimbus topics, driven by async-nats on a small tokio runtime of
//! its own and reached by either runtime only through `Send` futures and flume
//! channels.
//!
//! This module owns the [`JetStreamBus`] handle, its options and errors, and
//! the state its tasks share; the work lives in its children: `connection`
//! (connect, the stream, the availability probe), `publish`, `subscribe`
//! (ephemeral and durable subscriptions), `acks` (pending deliveries, acks,
//! dead letters), `aggregation` and `observe` (consumer backlog gauges). An
//! event's content key (the one the embedded log deduplicates by) is its
//! `Nats-Msg-Id`, so JetStream's duplicate window does the dedup; an event's
//! `sequence` is its stream sequence, stamped on delivery: strictly increasing
//! per session (and across the stream), not dense. The backend must never keep
//! event data of its own: a jimbus node in this mode holds no state that a
//! restart could lose.

mod acks;
mod aggregation;
mod connection;
mod observe;
mod publish;
mod subscribe;

use crate::bus::{delivery_channel, AppendItem, Bus, BusError, BusFuture, DeliveryBatch, ItemOutcome, Subscription};
use crate::lock::lock;
use aggregation::NatsAggregation;
use async_nats::jetstream;
use futures_util::StreamExt;
use jimbus_core::aggregate::{AggregateConfig, ConfigError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream every jimbus topic lives in.
pub const STREAM: &str = "JIMBUS";
/// The stream's subjects besides `deadletter`: every event and aggregated message.
const EVENT_SUBJECTS: &str = "balatro.>";
/// Header naming what a message's payload encodes (its protobuf message type).
const KIND: &str = "Jimbus-Kind";
/// Events in flight on this node before HTTP publishers are shed with 503.
const MAX_EVENTS_IN_FLIGHT: usize = 65_536;

/// How to reach and shape the JetStream stream.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port` URLs of the cluster's servers.
    pub urls: Vec<String>,
    /// Replicas of the stream when this node creates it (an existing stream keeps its own).
    pub replicas: usize,
    /// How long a publish may wait for JetStream's ack before it counts as failed.
    pub publish_timeout: Duration,
    /// Limits retention of the stream by age (JetStream deletes by limits, acked or not).
    pub max_age: Option<Duration>,
    /// Limits retention of the stream by size, in bytes.
    pub max_bytes: Option<u64>,
    /// How long startup keeps trying to reach the cluster and create the stream.
    pub startup_timeout: Duration,
    /// Windows and cascades of the aggregated stream this node produces.
    pub aggregate: AggregateConfig,
}

/// Why the JetStream bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// The tokio runtime (or its thread) could not be created.
    #[error("cannot start the NATS runtime: {0}")]
    Runtime(String),
    /// No server answered, or the stream could not be created, before `startup_timeout`.
    #[error("cannot reach JetStream at {urls} within {waited:?}: {reason}")]
    Unreachable { urls: String, waited: Duration, reason: String },
    /// The aggregation settings are invalid.
    #[error("aggregation settings: {0}")]
    Aggregate(#[from] ConfigError),
}

/// What every task of the backend shares.
struct Shared {
    /// The NATS connection (core subscriptions: advisories; flush on stop).
    client: async_nats::Client,
    /// JetStream on that connection: publishes, streams, consumers.
    js: jetstream::Context,
    /// Events of unanswered appends, against `MAX_EVENTS_IN_FLIGHT`.
    events_in_flight: AtomicUsize,
    /// What the last probe saw, so that only changes are logged and counted.
    available: AtomicBool,
    /// Per durable consumer: stream sequence → delivery awaiting its ack.
    pending: Mutex<HashMap<String, BTreeMap<u64, acks::Pending>>>,
    /// Durable consumers whose max-deliveries advisories this node dead-letters.
    watched: Mutex<HashSet<String>>,
    /// Numbers the members of durable consumers, so a leaver gives back only its own.
    next_member: AtomicU64,
    /// Told the availability after every probe (readiness).
    reporters: Mutex<Vec<Report>>,
    /// The aggregator fed by acknowledged publishes.
    aggregation: Arc<NatsAggregation>,
}

/// A callback told the bus's availability.
type Report = Box<dyn Fn(bool) + Send + Sync>;

/// The JetStream bus. Cheap to clone; every clone drives the same connection.
#[derive(Clone)]
pub struct JetStreamBus {
    /// The state every task of this backend shares.
    shared: Arc<Shared>,
    /// The backend's own tokio runtime, where all NATS work runs.
    runtime: tokio::runtime::Handle,
    /// Stops that runtime's thread (taken by the first `stop`).
    stop: Arc<Mutex<Option<std::sync::mpsc::Sender<()>>>>,
}

impl JetStreamBus {
    /// Starts the runtime, connects, and creates the stream if it is missing.
    pub fn start(options: JetStreamOptions) -> Result<Self, JetStreamError> {
        let aggregation = NatsAggregation::new(options.aggregate.clone())?;
        let (runtime, stop) = connection::spawn_runtime()?;
        let shared = runtime.block_on(connection::connect_until(&options, aggregation.clone()))?;
        let bus = Self { shared: Arc::new(shared), runtime, stop: Arc::new(Mutex::new(Some(stop))) };
        bus.runtime.spawn(connection::probe(bus.shared.clone()));
        bus.runtime.spawn(aggregation.run(bus.shared.js.clone()));
        Ok(bus)
    }

    /// Calls `report` with the bus's availability about once a second (for `/ready`).
    pub fn on_availability(&self, report: impl Fn(bool) + Send + Sync + 'static) {
        lock(&self.shared.reporters).push(Box::new(report));
    }

    /// Flushes what is buffered and stops the runtime.
    pub fn stop(&self) {
        let client = self.shared.client.clone();
        let flushed =
            self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.flush()).await });
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("the NATS connection could not be flushed on stop");
        }
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
    }

    /// Runs `work` on the backend's runtime; the returned future is `Send` and
    /// may be awaited from glommio or tokio alike.
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, BusError>> + Send + 'static,
    ) -> BusFuture<T> {
        let (reply, answer) = flume::bounded(1);
        self.runtime.spawn(async move {
            let _ = reply.send(work.await);
        });
        Box::pin(async move { answer.recv_async().await.map_err(|_| BusError::Stopped)? })
    }

    /// Publishes `items` on the runtime. Their events come back to the
    /// thread that awaits the answer, the edge's that decoded them, and are
    /// kept there as its spares (`jimbus_core::spare_events`) or freed.
    fn publish(&self, items: Vec<AppendItem>) -> BusFuture<Vec<ItemOutcome>> {
        let shared = self.shared.clone();
        let published = self.run(async move { Ok(publish::publish_all(shared, items).await) });
        Box::pin(async move {
            let (outcomes, items) = published.await?;
            let events = items.into_iter().filter_map(|item| match item {
                AppendItem::Event(event, _) => Some(event),
                AppendItem::DeadLetter(_) => None,
            });
            jimbus_core::spare_events::give_back(events);
            outcomes
        })
    }
}

impl Bus for JetStreamBus {
    fn try_append(&self, items: Vec<AppendItem>) -> Result<BusFuture<Vec<ItemOutcome>>, BusError> {
        // Shed at once what could only wait: no connection, or too much in flight.
        if self.shared.client.connection_state() != async_nats::connection::State::Connected {
            metrics::counter!("jimbus_bus_publish_failures_total").increment(1);
            return Err(BusError::Storage("not connected to NATS".into()));
        }
        if self.shared.events_in_flight.load(Ordering::Acquire) + items.len() > MAX_EVENTS_IN_FLIGHT {
            return Err(BusError::Overloaded);
        }
        Ok(self.publish(items))
    }

    /// Queued means stored here: acknowledgements of different requests could
    /// complete out of order, and aggregation must see each session in order.
    fn append(&self, items: Vec<AppendItem>) -> BusFuture<BusFuture<Vec<ItemOutcome>>> {
        let stored = self.publish(items);
        Box::pin(async move {
            let outcomes = stored.await?;
            Ok(Box::pin(std::future::ready(Ok(outcomes))) as BusFuture<Vec<ItemOutcome>>)
        })
    }

    fn subscribe(&self, subscription: Subscription) -> Result<flume::Receiver<DeliveryBatch>, BusError> {
        if let Some(durable) = &subscription.durable {
            subscribe::check_consumer_name(&durable.name)?;
        }
        let (out, receiver) = delivery_channel(subscription.buffer, subscription.room, 1);
        let shared = self.shared.clone();
        let Subscription { pattern, start, durable, .. } = subscription;
        match durable {
            None => self.runtime.spawn(subscribe::ephemeral(shared, pattern, start, out)),
            Some(durable) => self.runtime.spawn(subscribe::durable_member(shared, durable, pattern, start, out)),
        };
        Ok(receiver)
    }

    fn ack(&self, durable: String, positions: Vec<(u32, u64)>) -> BusFuture<u32> {
        self.run(acks::ack_positions(self.shared.clone(), durable, positions))
    }

    fn topics(&self) -> BusFuture<Vec<(String, u64)>> {
        let js = self.shared.js.clone();
        self.run(async move {
            let stream = js.get_stream(STREAM).await.map_err(|e| BusError::Storage(e.to_string()))?;
            let mut subjects = stream.info_with_subjects(">").await.map_err(|e| BusError::Storage(e.to_string()))?;
            let mut topics = Vec::new();
            while let Some(entry) = subjects.next().await {
                let (subject, count) = entry.map_err(|e| BusError::Storage(e.to_string()))?;
                topics.push((subject, count as u64));
            }
            topics.sort();
            Ok(topics)
        })
    }
}

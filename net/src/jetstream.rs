//! The NATS JetStream backend of the [`Bus`]: one stream (`JIMBUS`, subjects
//! `balatro.>` and `deadletter`, file storage, the configured replicas) whose
//! subjects are jimbus topics, driven by async-nats on a small tokio runtime of
//! its own and reached by either runtime only through `Send` futures and flume
//! channels.
//!
//! It owns the NATS connection, the stream's configuration, and, per durable
//! consumer, the deliveries this node handed out and not yet saw acknowledged
//! (an ack must reach the JetStream message it names). An event's content key
//! (the one the embedded log deduplicates by) is its `Nats-Msg-Id`, so
//! JetStream's duplicate window does the dedup. Publishes of one request are all
//! in flight together; a request resolves only once JetStream acknowledged every
//! item, and any failure fails the whole request (the client retries, and the
//! duplicate window absorbs what was stored). An event's `sequence` is its
//! stream sequence, stamped on delivery: strictly increasing per session (and
//! across the stream), not dense. This module must never keep event data of its
//! own: a jimbus node in this mode holds no state that a restart could lose.

use crate::bus::{AppendItem, Bus, BusError, BusFuture, ConsumerOptions, Durable, ItemOutcome, Start, Subscription};
use crate::clock::{now_micros, timestamp};
use crate::nats_aggregation::NatsAggregation;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use jimbus_core::aggregate::{AggregateConfig, ConfigError};
use jimbus_core::stamps::client_key;
use jimbus_core::topic::{self, Pattern};
use jimbus_proto::bus;
use jimbus_proto::delivery::{BodyKind, EncodedDelivery};
use jimbus_proto::events as pb;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream every jimbus topic lives in.
pub const STREAM: &str = "JIMBUS";
/// Header naming what a message's payload encodes (its protobuf message type).
const KIND: &str = "Jimbus-Kind";
/// How long a retried event is recognised as a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Events in flight on this node before HTTP publishers are shed with 503.
const MAX_EVENTS_IN_FLIGHT: usize = 65_536;

/// How to reach and shape the JetStream stream.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port` URLs of the cluster's servers.
    pub urls: Vec<String>,
    pub replicas: usize,
    /// How long a publish may wait for JetStream's ack before it counts as failed.
    pub publish_timeout: Duration,
    /// Limits retention of the stream (JetStream deletes by limits, acked or not).
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// How long startup keeps trying to reach the cluster and create the stream.
    pub startup_timeout: Duration,
    /// Windows and cascades of the aggregated stream this node produces.
    pub aggregate: AggregateConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot start the NATS runtime: {0}")]
    Runtime(String),
    #[error("cannot reach JetStream at {urls} within {waited:?}: {reason}")]
    Unreachable { urls: String, waited: Duration, reason: String },
    #[error("aggregation settings: {0}")]
    Aggregate(#[from] ConfigError),
}

/// One delivery of a durable consumer that this node handed out, until acked.
struct Pending {
    message: jetstream::Message,
    /// The subscriber it went to, so its leaving can give the message back.
    member: u64,
}

/// What every task of the backend shares.
struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    events_in_flight: AtomicUsize,
    available: AtomicBool,
    /// Per durable consumer: stream sequence → delivery awaiting its ack.
    pending: Mutex<HashMap<String, BTreeMap<u64, Pending>>>,
    /// Durable consumers whose max-deliveries advisories this node dead-letters.
    watched: Mutex<HashSet<String>>,
    next_member: AtomicU64,
    /// Told the availability after every probe (readiness).
    reporters: Mutex<Vec<Report>>,
    aggregation: Arc<NatsAggregation>,
}

/// The JetStream bus. Cheap to clone; every clone drives the same connection.
#[derive(Clone)]
pub struct JetStreamBus {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop: Arc<Mutex<Option<std::sync::mpsc::Sender<()>>>>,
}

impl JetStreamBus {
    /// Starts the runtime, connects, and creates the stream if it is missing.
    pub fn start(options: JetStreamOptions) -> Result<Self, JetStreamError> {
        let aggregation = NatsAggregation::new(options.aggregate.clone())?;
        let (runtime, stop) = spawn_runtime()?;
        let shared = runtime.block_on(connect_until(&options, aggregation.clone()))?;
        let bus = Self { shared: Arc::new(shared), runtime, stop: Arc::new(Mutex::new(Some(stop))) };
        bus.runtime.spawn(probe(bus.shared.clone()));
        bus.runtime.spawn(aggregation.run(bus.shared.js.clone()));
        Ok(bus)
    }

    /// Calls `report` with the bus's availability about once a second (for `/ready`).
    pub fn on_availability(&self, report: impl Fn(bool) + Send + Sync + 'static) {
        self.shared.reporters.lock().expect("reporters lock").push(Box::new(report));
    }

    pub fn is_available(&self) -> bool {
        self.shared.available.load(Ordering::Acquire)
    }

    /// Flushes what is buffered and stops the runtime.
    pub fn stop(&self) {
        let client = self.shared.client.clone();
        let flushed =
            self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.flush()).await });
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("the NATS connection could not be flushed on stop");
        }
        if let Some(stop) = self.stop.lock().expect("stop lock").take() {
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
}

type Report = Box<dyn Fn(bool) + Send + Sync>;

/// The runtime thread: a small multi-threaded tokio runtime kept until `stop`.
fn spawn_runtime() -> Result<(tokio::runtime::Handle, std::sync::mpsc::Sender<()>), JetStreamError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jetstream")
        .enable_all()
        .build()
        .map_err(|e| JetStreamError::Runtime(e.to_string()))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("jetstream-runtime".into())
        .spawn(move || {
            let _ = stopped.recv();
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| JetStreamError::Runtime(e.to_string()))?;
    Ok((handle, stop))
}

/// Connects and ensures the stream, retrying until `startup_timeout`: a cluster
/// that is still electing at startup is not an error yet.
async fn connect_until(
    options: &JetStreamOptions,
    aggregation: Arc<NatsAggregation>,
) -> Result<Shared, JetStreamError> {
    let started = tokio::time::Instant::now();
    loop {
        let reason = match connect(options, aggregation.clone()).await {
            Ok(shared) => return Ok(shared),
            Err(reason) => reason,
        };
        if started.elapsed() >= options.startup_timeout {
            let urls = options.urls.join(",");
            return Err(JetStreamError::Unreachable { urls, waited: started.elapsed(), reason });
        }
        tracing::warn!(reason = %reason, "JetStream not reachable yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn connect(options: &JetStreamOptions, aggregation: Arc<NatsAggregation>) -> Result<Shared, String> {
    let client = async_nats::ConnectOptions::new()
        .name("jimbus")
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move { on_connection_event(event) })
        .connect(options.urls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(options.publish_timeout)
        .max_ack_inflight(MAX_EVENTS_IN_FLIGHT)
        .build(client.clone());
    ensure_stream(&js, options).await?;
    tracing::info!(urls = %options.urls.join(","), replicas = options.replicas, "JetStream bus connected");
    Ok(Shared {
        client,
        js,
        events_in_flight: AtomicUsize::new(0),
        available: AtomicBool::new(true),
        pending: Mutex::new(HashMap::new()),
        watched: Mutex::new(HashSet::new()),
        next_member: AtomicU64::new(0),
        reporters: Mutex::new(Vec::new()),
        aggregation,
    })
}

fn on_connection_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => {
            metrics::counter!("jimbus_bus_disconnects_total").increment(1);
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        async_nats::Event::Connected => tracing::info!("connected to NATS"),
        other => tracing::info!(event = %other, "NATS connection event"),
    }
}

/// Creates the stream, or keeps the existing one (whose replica count an
/// operator may have changed on purpose).
async fn ensure_stream(js: &jetstream::Context, options: &JetStreamOptions) -> Result<(), String> {
    if let Ok(mut existing) = js.get_stream(STREAM).await {
        let info = existing.info().await.map_err(|e| e.to_string())?;
        if info.config.num_replicas != options.replicas {
            tracing::warn!(
                configured = options.replicas,
                actual = info.config.num_replicas,
                "the stream keeps its replica count"
            );
        }
        return Ok(());
    }
    let config = stream::Config {
        name: STREAM.into(),
        subjects: vec!["balatro.>".into(), topic::DEADLETTER.into()],
        storage: stream::StorageType::File,
        num_replicas: options.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: options.max_age.unwrap_or_default(),
        max_bytes: options.max_bytes.map_or(-1, |b| b as i64),
        allow_direct: true,
        ..Default::default()
    };
    js.create_stream(config).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Asks for the stream's info every second: available means the stream has a
/// leader (a quorum of its replicas), not merely a connection.
async fn probe(shared: Arc<Shared>) {
    loop {
        let info = tokio::time::timeout(Duration::from_secs(2), shared.js.get_stream(STREAM)).await;
        // Without a leader a replica still answers, later and naming no leader.
        let up = match info {
            Ok(Ok(stream)) => {
                tracing::debug!(cluster = ?stream.cached_info().cluster, "stream info");
                stream.cached_info().cluster.as_ref().is_none_or(|c| c.leader.as_ref().is_some_and(|l| !l.is_empty()))
            }
            _ => false,
        };
        note_availability(&shared, up);
        for report in shared.reporters.lock().expect("reporters lock").iter() {
            report(up);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn note_availability(shared: &Shared, up: bool) {
    let was = shared.available.swap(up, Ordering::AcqRel);
    metrics::gauge!("jimbus_bus_available").set(if up { 1.0 } else { 0.0 });
    if was && !up {
        metrics::counter!("jimbus_bus_outages_total").increment(1);
        tracing::error!("JetStream unavailable: no stream leader answers");
    } else if !was && up {
        tracing::info!("JetStream available again");
    }
}

/// The subject, headers and payload of one item.
fn outbound(item: &mut AppendItem) -> (String, PublishMessage) {
    let now = now_micros();
    match item {
        AppendItem::Event(event) => {
            let key = client_key(event);
            event.timing.get_or_insert_with(Default::default).published_at = Some(timestamp(now));
            let subject = topic::raw_topic(&event.session_id, &event.event_type);
            let mut message = PublishMessage::build().payload(event.encode_to_vec().into()).header(KIND, "event");
            if let Some(key) = key {
                message = message.message_id(format!("{key:032x}"));
            }
            (subject, message)
        }
        AppendItem::DeadLetter(letter) => {
            metrics::counter!("jimbus_deadletter_total").increment(1);
            let message = PublishMessage::build().payload(letter.encode_to_vec().into()).header(KIND, "deadletter");
            (topic::DEADLETTER.to_string(), message)
        }
    }
}

fn publish_error(e: impl std::fmt::Display, kind: PublishErrorKind) -> BusError {
    metrics::counter!("jimbus_bus_publish_failures_total").increment(1);
    tracing::warn!(error = %e, "JetStream publish failed");
    match kind {
        PublishErrorKind::MaxAckPending => BusError::Overloaded,
        _ => BusError::Storage(e.to_string()),
    }
}

/// Publishes every item with all acks in flight together, then waits for each.
async fn publish_all(shared: Arc<Shared>, items: Vec<AppendItem>) -> Result<Vec<ItemOutcome>, BusError> {
    let count = items.len();
    let _in_flight = InFlight::new(&shared, count);
    let mut acks = Vec::with_capacity(count);
    let mut items = items;
    for item in &mut items {
        let (subject, message) = outbound(item);
        let ack = shared.js.send_publish(subject, message).await.map_err(|e| publish_error(&e, e.kind()))?;
        acks.push(ack);
    }
    let mut outcomes = Vec::with_capacity(count);
    for ack in acks {
        let ack = ack.await.map_err(|e| publish_error(&e, e.kind()))?;
        outcomes.push(if ack.duplicate {
            metrics::counter!("jimbus_events_duplicate_total").increment(1);
            ItemOutcome::Duplicate
        } else {
            ItemOutcome::Stored { partition: 0, offset: ack.sequence }
        });
    }
    let stored: Vec<(u64, &pb::Event)> = items
        .iter()
        .zip(&outcomes)
        .filter_map(|(item, outcome)| match (item, outcome) {
            (AppendItem::Event(event), ItemOutcome::Stored { offset, .. }) => Some((*offset, &**event)),
            _ => None,
        })
        .collect();
    shared.aggregation.offer(&stored);
    Ok(outcomes)
}

/// Counts a request's events as in flight until it is answered.
struct InFlight<'a> {
    shared: &'a Shared,
    count: usize,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, count: usize) -> Self {
        shared.events_in_flight.fetch_add(count, Ordering::AcqRel);
        Self { shared, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.events_in_flight.fetch_sub(self.count, Ordering::AcqRel);
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
        Ok(self.run(publish_all(self.shared.clone(), items)))
    }

    /// Queued means stored here: acknowledgements of different requests could
    /// complete out of order, and aggregation must see each session in order.
    fn append(&self, items: Vec<AppendItem>) -> BusFuture<BusFuture<Vec<ItemOutcome>>> {
        let stored = self.run(publish_all(self.shared.clone(), items));
        Box::pin(async move {
            let outcomes = stored.await?;
            Ok(Box::pin(std::future::ready(Ok(outcomes))) as BusFuture<Vec<ItemOutcome>>)
        })
    }

    fn subscribe(&self, subscription: Subscription) -> Result<flume::Receiver<EncodedDelivery>, BusError> {
        if let Some(durable) = &subscription.durable {
            check_consumer_name(&durable.name)?;
        }
        let (out, receiver) = flume::bounded(subscription.buffer.max(1));
        let shared = self.shared.clone();
        match subscription.durable {
            None => self.runtime.spawn(ephemeral(shared, subscription.pattern, subscription.start, out)),
            Some(durable) => {
                self.runtime.spawn(durable_member(shared, durable, subscription.pattern, subscription.start, out))
            }
        };
        Ok(receiver)
    }

    fn ack(&self, durable: String, positions: Vec<(u32, u64)>) -> BusFuture<u32> {
        self.run(ack_positions(self.shared.clone(), durable, positions))
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

/// JetStream consumer names may not hold subject or path separators.
fn check_consumer_name(name: &str) -> Result<(), BusError> {
    let bad = name.is_empty() || name.chars().any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace());
    if bad {
        return Err(BusError::InvalidArgument(format!(
            "durable_name: {name:?} may not contain '.', '*', '>', slashes or whitespace on the JetStream bus"
        )));
    }
    Ok(())
}

/// The consumer filter of a jimbus pattern; `>` is the whole stream.
fn filter_of(pattern: &Pattern) -> String {
    let text = pattern.subject();
    if text == ">" {
        String::new()
    } else {
        text
    }
}

fn deliver_policy(start: Start) -> DeliverPolicy {
    match start {
        Start::Latest => DeliverPolicy::New,
        Start::Earliest => DeliverPolicy::All,
        Start::Offset(offset) => DeliverPolicy::ByStartSequence { start_sequence: offset.max(1) },
        Start::TimeMicros(micros) => {
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            DeliverPolicy::ByStartTime { start_time }
        }
    }
}

/// The delivery of one stored message, its `sequence` stamped with the stream
/// sequence; the payload is handed on as stored, not decoded.
fn delivery(message: &async_nats::Message, sequence: u64, delivered: u32) -> EncodedDelivery {
    let kind = message.headers.as_ref().and_then(|h| h.get(KIND)).map(|v| v.as_str().to_string());
    let subject = message.subject.as_str();
    let kind = match kind.as_deref() {
        Some("deadletter") => BodyKind::DeadLetter,
        Some("aggregated") => BodyKind::Aggregated,
        _ if subject == topic::DEADLETTER => BodyKind::DeadLetter,
        _ => BodyKind::Event,
    };
    EncodedDelivery {
        topic: bytes::Bytes::copy_from_slice(subject.as_bytes()),
        partition: 0,
        offset: sequence,
        delivery_count: delivered,
        kind,
        body: message.payload.clone(),
        sequence_override: (kind == BodyKind::Event).then_some(sequence),
    }
}

/// Resolves when the subscriber has gone away (checked every half second: a
/// flume sender has no closed-notification of its own).
async fn gone(out: &flume::Sender<EncodedDelivery>) {
    while !out.is_disconnected() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `messages` until the subscriber goes away: one watch for the whole stream,
/// not a timer registered and cancelled per message.
fn until_gone<'a, S: futures_util::Stream + 'a>(
    messages: S,
    out: &'a flume::Sender<EncodedDelivery>,
) -> impl futures_util::Stream<Item = S::Item> + 'a {
    messages.take_until(gone(out))
}

/// An ephemeral subscription: an ordered consumer, recreated after the last
/// sequence delivered whenever it fails, until the subscriber goes away.
async fn ephemeral(shared: Arc<Shared>, pattern: Pattern, start: Start, out: flume::Sender<EncodedDelivery>) {
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    // Lag counts once the subscription has caught up, as on the embedded log.
    let mut live = matches!(start, Start::Latest);
    let mut start = start;
    while !out.is_disconnected() {
        match ordered_messages(&shared, &pattern, start).await {
            Ok(messages) => {
                let mut messages = std::pin::pin!(until_gone(messages, &out));
                while let Some(next) = messages.next().await {
                    let message = match next {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(error = %e, "ephemeral subscription interrupted; resuming");
                            break;
                        }
                    };
                    let Ok((sequence, published, pending)) =
                        message.info().map(|i| (i.stream_sequence, i.published, i.pending))
                    else {
                        continue;
                    };
                    start = Start::Offset(sequence + 1);
                    if !pattern.matches(&message.subject) {
                        continue; // excluded: the consumer filter cannot say so
                    }
                    if out.send_async(delivery(&message.message, sequence, 1)).await.is_err() {
                        break;
                    }
                    if live {
                        crate::observe::delivered((published.unix_timestamp_nanos() / 1000).max(0) as u64);
                    }
                    live |= pending == 0;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open an ephemeral subscription yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = gone(&out) => {}
        }
    }
    metrics::gauge!("jimbus_subscriptions").decrement(1.0);
}

async fn ordered_messages(
    shared: &Shared,
    pattern: &Pattern,
    start: Start,
) -> Result<pull::Ordered, async_nats::Error> {
    let stream = shared.js.get_stream(STREAM).await?;
    let config = pull::OrderedConfig {
        filter_subject: filter_of(pattern),
        deliver_policy: deliver_policy(start),
        ..Default::default()
    };
    Ok(stream.create_consumer(config).await?.messages().await?)
}

fn consumer_config(durable: &Durable, pattern: &Pattern, start: Start) -> pull::Config {
    let ConsumerOptions { max_in_flight, ack_wait_ms, max_deliver } = durable.options;
    pull::Config {
        durable_name: Some(durable.name.clone()),
        deliver_policy: deliver_policy(start),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_millis(ack_wait_ms.max(1)),
        max_deliver: i64::from(max_deliver.max(1)),
        max_ack_pending: max_in_flight.max(1) as i64,
        filter_subject: filter_of(pattern),
        ..Default::default()
    }
}

/// One member of a durable consumer (several members make a group): pulls
/// from the shared JetStream consumer and keeps each delivery pending until it
/// is acked. When the subscriber leaves, what it held unacked is handed back
/// (nak) for immediate redelivery to another member.
async fn durable_member(
    shared: Arc<Shared>,
    durable: Durable,
    pattern: Pattern,
    start: Start,
    out: flume::Sender<EncodedDelivery>,
) {
    let member = shared.next_member.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    watch_max_deliveries(&shared, &durable.name).await;
    let batch = durable.options.max_in_flight.clamp(1, 256);
    while !out.is_disconnected() {
        match durable_messages(&shared, &durable, &pattern, start, batch).await {
            Ok(messages) => {
                let mut messages = std::pin::pin!(until_gone(messages, &out));
                while let Some(next) = messages.next().await {
                    match next {
                        Ok(message) if !pattern.matches(&message.subject) => {
                            // Excluded by the pattern: done for this consumer.
                            let _ = message.ack().await;
                        }
                        Ok(message) => {
                            if !hand_out(&shared, &durable.name, member, message, &out).await {
                                break;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, consumer = %durable.name, "pull interrupted"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, consumer = %durable.name, "cannot open the durable consumer yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = gone(&out) => {}
        }
    }
    give_back(&shared, &durable.name, member).await;
    metrics::gauge!("jimbus_subscriptions").decrement(1.0);
}

async fn durable_messages(
    shared: &Shared,
    durable: &Durable,
    pattern: &Pattern,
    start: Start,
    batch: usize,
) -> Result<pull::Stream, async_nats::Error> {
    let stream = shared.js.get_stream(STREAM).await?;
    let consumer: jetstream::consumer::PullConsumer =
        stream.get_or_create_consumer(&durable.name, consumer_config(durable, pattern, start)).await?;
    Ok(consumer.stream().max_messages_per_batch(batch).heartbeat(Duration::from_secs(5)).messages().await?)
}

/// Records one delivery as pending and sends it; false when the subscriber is gone.
async fn hand_out(
    shared: &Shared,
    name: &str,
    member: u64,
    message: jetstream::Message,
    out: &flume::Sender<EncodedDelivery>,
) -> bool {
    let Ok((sequence, delivered)) = message.info().map(|i| (i.stream_sequence, i.delivered.max(1) as u32)) else {
        return true;
    };
    let delivery = delivery(&message.message, sequence, delivered);
    {
        let mut pending = shared.pending.lock().expect("pending lock");
        pending.entry(name.to_string()).or_default().insert(sequence, Pending { message, member });
    }
    out.send_async(delivery).await.is_ok()
}

/// Naks what `member` held unacked, so the group redelivers it at once.
async fn give_back(shared: &Shared, name: &str, member: u64) {
    let held: Vec<jetstream::Message> = {
        let mut pending = shared.pending.lock().expect("pending lock");
        let Some(by_sequence) = pending.get_mut(name) else { return };
        let sequences: Vec<u64> = by_sequence.iter().filter(|(_, p)| p.member == member).map(|(s, _)| *s).collect();
        sequences.into_iter().filter_map(|s| by_sequence.remove(&s)).map(|p| p.message).collect()
    };
    for message in held {
        let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
    }
}

/// Acknowledges positions this node delivered; each ack waits for JetStream's
/// confirmation. A position this node did not deliver (or that was already
/// acked or dead-lettered) counts as not newly acknowledged.
async fn ack_positions(shared: Arc<Shared>, name: String, positions: Vec<(u32, u64)>) -> Result<u32, BusError> {
    if let Some((partition, _)) = positions.iter().find(|(p, _)| *p != 0) {
        return Err(BusError::InvalidArgument(format!("positions: partition {partition} does not exist")));
    }
    let taken: Vec<(u64, Pending)> = {
        let mut pending = shared.pending.lock().expect("pending lock");
        let Some(by_sequence) = pending.get_mut(&name) else { return Ok(0) };
        positions.iter().filter_map(|(_, s)| by_sequence.remove(s).map(|p| (*s, p))).collect()
    };
    let confirmations = futures_util::future::join_all(taken.iter().map(|(_, p)| p.message.double_ack())).await;
    let mut acked = 0;
    let mut failure = None;
    let mut back = Vec::new();
    for ((sequence, pending), confirmed) in taken.into_iter().zip(confirmations) {
        match confirmed {
            Ok(()) => acked += 1,
            Err(e) => {
                failure = Some(e.to_string());
                back.push((sequence, pending));
            }
        }
    }
    if let Some(reason) = failure {
        // Keep the unconfirmed ones so that the client's retry can ack them.
        let mut pending = shared.pending.lock().expect("pending lock");
        pending.entry(name).or_default().extend(back);
        return Err(BusError::Storage(format!("acks not confirmed by JetStream: {reason}")));
    }
    Ok(acked)
}

/// The advisory JetStream sends when a message was delivered `max_deliver`
/// times without an ack.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Subscribes (once per node and consumer) to the max-deliveries advisories of
/// `name` and moves each exhausted message to `deadletter`. Every node watching
/// publishes the same letter under the same `Nats-Msg-Id`, so it is stored once.
async fn watch_max_deliveries(shared: &Arc<Shared>, name: &str) {
    if !shared.watched.lock().expect("watched lock").insert(name.to_string()) {
        return;
    }
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{name}");
    let mut advisories = match shared.client.subscribe(subject).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            tracing::error!(error = %e, consumer = name, "cannot watch max-deliveries advisories");
            shared.watched.lock().expect("watched lock").remove(name);
            return;
        }
    };
    let (shared, name) = (shared.clone(), name.to_string());
    tokio::spawn(crate::observe::watch_jetstream_consumer(shared.js.clone(), STREAM, name.clone()));
    tokio::spawn(async move {
        while let Some(advisory) = advisories.next().await {
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else { continue };
            dead_letter(&shared, &name, advisory).await;
        }
    });
}

async fn dead_letter(shared: &Shared, name: &str, advisory: MaxDeliveries) {
    let held = shared.pending.lock().expect("pending lock").get_mut(name).and_then(|p| p.remove(&advisory.stream_seq));
    drop(held);
    let original = match shared.js.get_stream(STREAM).await {
        Ok(stream) => stream.get_raw_message(advisory.stream_seq).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let original = match original {
        Ok(original) => original,
        Err(e) => {
            tracing::error!(error = %e, consumer = name, sequence = advisory.stream_seq, "cannot read an exhausted message to dead-letter it");
            return;
        }
    };
    if original.subject.as_str() == topic::DEADLETTER {
        return;
    }
    let letter = bus::DeadLetter {
        reason: format!("consumer {name:?}: delivered {} times without an ack", advisory.deliveries),
        raw: original.payload.clone(),
        origin: original.subject.to_string(),
        ..Default::default()
    };
    let message = PublishMessage::build()
        .payload(letter.encode_to_vec().into())
        .header(KIND, "deadletter")
        .message_id(format!("deadletter-{name}-{}", advisory.stream_seq));
    let stored = match shared.js.send_publish(topic::DEADLETTER, message).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => metrics::counter!("jimbus_consumer_dead_lettered_total").increment(1),
        Err(e) => tracing::error!(error = %e, consumer = name, "cannot store a dead letter"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_refuse_subject_separators() {
        assert!(check_consumer_name("trainer-1").is_ok());
        for bad in ["a.b", "a*", "a>", "a b", "", "a/b"] {
            assert!(check_consumer_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_whole_stream_needs_no_filter() {
        assert_eq!(filter_of(&Pattern::parse(">").unwrap()), "");
        assert_eq!(filter_of(&Pattern::parse("balatro.*.SCORING").unwrap()), "balatro.*.SCORING");
    }

    #[test]
    fn start_positions_map_to_deliver_policies() {
        assert_eq!(deliver_policy(Start::Latest), DeliverPolicy::New);
        assert_eq!(deliver_policy(Start::Earliest), DeliverPolicy::All);
        assert_eq!(deliver_policy(Start::Offset(0)), DeliverPolicy::ByStartSequence { start_sequence: 1 });
        let DeliverPolicy::ByStartTime { start_time } = deliver_policy(Start::TimeMicros(1_500_000)) else { panic!() };
        assert_eq!(start_time.unix_timestamp_nanos(), 1_500_000_000);
    }

    #[test]
    fn an_event_is_keyed_by_its_client_content_and_stamped() {
        let event = pb::Event {
            event_id: "e-1".into(),
            session_id: "s".into(),
            event_type: "HEARTBEAT".into(),
            ..Default::default()
        };
        let (subject, message) = outbound(&mut AppendItem::Event(Box::new(event.clone())));
        assert_eq!(subject, "balatro.s.HEARTBEAT");
        let outbound = message.outbound_message(subject);
        let headers = outbound.headers.unwrap();
        let id = headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        assert_eq!(id, format!("{:032x}", client_key(&mut event.clone()).unwrap()));
        let stored = pb::Event::decode(outbound.payload).unwrap();
        assert!(stored.timing.unwrap().published_at.is_some());
    }
}

//! A shard: the single writer of the sessions it owns.
//!
//! Every mutation of a shard arrives as a [`ShardCommand`] on its one flume
//! queue, from HTTP handlers on any shard and from the tokio gRPC edge alike, and
//! is applied by the shard's pump in arrival order: sequence numbers, dedup and
//! the log need no locks. The pump drains whatever is queued (up to a cap) into
//! one group commit, so batches grow with queue depth and shrink to one under
//! light load, and answers every command of the commit once it is durable.
//! Subscriptions are tasks on the shard that read its log. A shard must never
//! reach into another shard's state; it only sends commands.

use crate::aggregation::AggregationStage;
use crate::bus::{AppendItem, Bus, BusError, BusFuture, Durable, ItemOutcome, Start, Subscription};
use crate::clock::{now_micros, timestamp};
use crate::consumer::store::{ConsumerStore, Restored};
use crate::consumer::{self, Consumer, DurableLimits, DurableNames, SharedConsumer};
use crate::log::{read_frames, replace_file, LogError, SegmentWriter, SharedIndex};
use crate::observe;
use jimbus_core::aggregate::{AggregateConfig, ConfigError};
use jimbus_core::budget::MemoryBudget;
use jimbus_core::checkpoint::ShardCheckpoint;
use jimbus_core::dedup::{DedupKey, DedupWindow, KeySet};
use jimbus_core::record::{self, RecordKind};
use jimbus_core::stamps::{append_stamps, client_key, encode_client_view};
use jimbus_core::topic::{self, Pattern};
use jimbus_proto::delivery::{BodyKind, EncodedDelivery};
use jimbus_proto::events as pb;
use prost::Message;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type AppendReply = flume::Sender<AppendAnswer>;

/// A request to a shard's pump.
pub enum ShardCommand {
    Append {
        items: Vec<AppendItem>,
        reply: AppendReply,
    },
    Subscribe {
        pattern: Pattern,
        start: Start,
        durable: Option<Durable>,
        deliveries: flume::Sender<EncodedDelivery>,
    },
    /// Acknowledges offsets of a durable consumer; answered once the acks are on disk.
    Ack {
        name: String,
        offsets: Vec<u64>,
        reply: flume::Sender<Result<u32, BusError>>,
    },
    ListTopics {
        reply: flume::Sender<Vec<(String, u64)>>,
    },
    /// Periodic housekeeping: age retention.
    Maintain,
    Shutdown {
        done: flume::Sender<()>,
    },
}

/// How to reach every shard. Cheap to clone; `Send`, so the gRPC edge holds one.
#[derive(Clone)]
pub struct ShardRouter {
    queues: Vec<flume::Sender<ShardCommand>>,
    /// Durable names on any shard, to refuse one past the limit.
    durables: Arc<DurableNames>,
}

type AppendAnswer = Result<Vec<ItemOutcome>, BusError>;

impl ShardRouter {
    pub fn new(queues: Vec<flume::Sender<ShardCommand>>) -> Self {
        Self { queues, durables: Arc::default() }
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    pub fn shard_for(&self, session: &str) -> usize {
        topic::shard_for(session, self.queues.len())
    }

    /// Splits `items` by owning shard, keeping each item's place in the request.
    fn split(&self, items: Vec<AppendItem>) -> Vec<(usize, Vec<usize>, Vec<AppendItem>)> {
        let mut parts: Vec<(usize, Vec<usize>, Vec<AppendItem>)> = Vec::new();
        for (place, item) in items.into_iter().enumerate() {
            let shard = self.shard_for(item.session());
            match parts.iter_mut().find(|(s, _, _)| *s == shard) {
                Some((_, places, items)) => {
                    places.push(place);
                    items.push(item);
                }
                None => parts.push((shard, vec![place], vec![item])),
            }
        }
        parts
    }

    /// Waits for every shard's answer and puts the outcomes back in request order.
    fn gather(waits: Vec<(Vec<usize>, flume::Receiver<AppendAnswer>)>, len: usize) -> BusFuture<Vec<ItemOutcome>> {
        Box::pin(async move {
            let mut outcomes = vec![ItemOutcome::Duplicate; len];
            for (places, answer) in waits {
                let answered = answer.recv_async().await.map_err(|_| BusError::Stopped)??;
                for (place, outcome) in places.into_iter().zip(answered) {
                    outcomes[place] = outcome;
                }
            }
            Ok(outcomes)
        })
    }

    /// Acknowledges offsets of a durable consumer on `shard`.
    async fn ack_on(&self, shard: usize, name: String, offsets: Vec<u64>) -> Result<u32, BusError> {
        let queue = self.queues.get(shard).ok_or(BusError::Stopped)?;
        let (reply, answer) = flume::bounded(1);
        queue.send_async(ShardCommand::Ack { name, offsets, reply }).await.map_err(|_| BusError::Stopped)?;
        answer.recv_async().await.map_err(|_| BusError::Stopped)?
    }

    pub fn broadcast(&self, make: impl Fn() -> ShardCommand) -> bool {
        self.queues.iter().all(|q| q.send(make()).is_ok())
    }

    /// Asks `shard` for housekeeping every `every`, until it stops.
    async fn maintain_every(self, shard: usize, every: Duration) {
        loop {
            glommio::timer::sleep(every).await;
            if self.queues[shard].send_async(ShardCommand::Maintain).await.is_err() {
                return;
            }
        }
    }
}

impl Bus for ShardRouter {
    fn try_append(&self, items: Vec<AppendItem>) -> Result<BusFuture<Vec<ItemOutcome>>, BusError> {
        let len = items.len();
        let mut waits = Vec::new();
        for (shard, places, items) in self.split(items) {
            let (reply, answer) = flume::bounded(1);
            self.queues[shard].try_send(ShardCommand::Append { items, reply }).map_err(|_| BusError::Overloaded)?;
            waits.push((places, answer));
        }
        Ok(Self::gather(waits, len))
    }

    fn append(&self, items: Vec<AppendItem>) -> BusFuture<BusFuture<Vec<ItemOutcome>>> {
        let router = self.clone();
        Box::pin(async move {
            let len = items.len();
            let mut waits = Vec::new();
            for (shard, places, items) in router.split(items) {
                let (reply, answer) = flume::bounded(1);
                let command = ShardCommand::Append { items, reply };
                router.queues[shard].send_async(command).await.map_err(|_| BusError::Stopped)?;
                waits.push((places, answer));
            }
            Ok(Self::gather(waits, len))
        })
    }

    fn subscribe(&self, subscription: Subscription) -> Result<flume::Receiver<EncodedDelivery>, BusError> {
        if let Some(durable) = &subscription.durable {
            self.durables.reserve(&durable.name).map_err(BusError::Exhausted)?;
        }
        let (deliveries, receiver) = flume::bounded(subscription.buffer.max(1));
        let opened = self.broadcast(|| ShardCommand::Subscribe {
            pattern: subscription.pattern.clone(),
            start: subscription.start,
            durable: subscription.durable.clone(),
            deliveries: deliveries.clone(),
        });
        if opened {
            Ok(receiver)
        } else {
            Err(BusError::Stopped)
        }
    }

    fn ack(&self, durable: String, positions: Vec<(u32, u64)>) -> BusFuture<u32> {
        let router = self.clone();
        Box::pin(async move {
            let mut per_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (partition, offset) in positions {
                let shard = partition as usize;
                if shard >= router.shards() {
                    return Err(BusError::InvalidArgument(format!("positions: partition {shard} does not exist")));
                }
                per_shard.entry(shard).or_default().push(offset);
            }
            let mut acked = 0;
            for (shard, offsets) in per_shard {
                acked += router.ack_on(shard, durable.clone(), offsets).await?;
            }
            Ok(acked)
        })
    }

    fn topics(&self) -> BusFuture<Vec<(String, u64)>> {
        let (reply, answers) = flume::unbounded();
        let asked = self.broadcast(|| ShardCommand::ListTopics { reply: reply.clone() });
        drop(reply);
        Box::pin(async move {
            if !asked {
                return Err(BusError::Stopped);
            }
            let mut totals = BTreeMap::<String, u64>::new();
            while let Ok(topics) = answers.recv_async().await {
                for (name, count) in topics {
                    *totals.entry(name).or_default() += count;
                }
            }
            Ok(totals.into_iter().collect())
        })
    }
}

/// Tunables of a shard's pump.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// Retry ids remembered per shard.
    pub dedup_window: usize,
    /// How long a group commit waits for more commands once it has one (0: not at all).
    pub linger: Duration,
    /// Windows, cascades and the adaptive batch size (its `batch.max_batch` caps
    /// the commands folded into one group commit).
    pub aggregate: AggregateConfig,
    /// How many durable consumers, and how long an idle one is kept.
    pub durables: DurableLimits,
}

/// Why a shard could not open.
#[derive(Debug, thiserror::Error)]
pub enum ShardOpenError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("aggregation settings: {0}")]
    Aggregate(#[from] ConfigError),
}

impl From<std::io::Error> for ShardOpenError {
    fn from(e: std::io::Error) -> Self {
        ShardOpenError::Log(LogError::Io(e))
    }
}

/// The state the pump owns.
pub struct Shard {
    id: usize,
    dir: PathBuf,
    router: ShardRouter,
    writer: SegmentWriter,
    consumers: BTreeMap<String, SharedConsumer>,
    /// Where the consumers are persisted.
    store: ConsumerStore,
    durable_limits: DurableLimits,
    next_sequence: HashMap<String, u64>,
    dedup: DedupWindow,
    topics: HashMap<String, u64>,
    scratch: Vec<u8>,
    aggregation: AggregationStage,
    linger: Duration,
    /// Events staged in the current commit, for aggregation once durable.
    fresh: Vec<(u64, Box<pb::Event>)>,
}

impl Shard {
    /// Opens the shard's log and rebuilds sequences, dedup and topics from it.
    pub async fn open(
        id: usize,
        dir: &std::path::Path,
        log: crate::log::LogOptions,
        options: PumpOptions,
        router: ShardRouter,
        budget: &Arc<MemoryBudget>,
    ) -> Result<Self, ShardOpenError> {
        let log_retention_age = log.retention.max_age;
        let checkpoint = load_checkpoint(dir);
        // The checkpoint holds sequences and topic counts as of `end`; the dedup
        // window is rebuilt from the records at or after `dedup_from`.
        let (end, dedup_from) = checkpoint.as_ref().map_or((0, 0), |c| (c.end, c.dedup_from.min(c.end)));
        let mut dedup = DedupWindow::new(options.dedup_window);
        let (mut next_sequence, mut topics) = (HashMap::new(), HashMap::new());
        if let Some(checkpoint) = checkpoint {
            next_sequence.extend(checkpoint.next_sequence);
            topics.extend(checkpoint.topics);
        }
        let (writer, report) = SegmentWriter::open(dir, log, dedup_from, |rec| {
            let after_checkpoint = rec.offset >= end;
            if after_checkpoint {
                *topics.entry(rec.topic.to_string()).or_default() += 1;
            }
            if rec.kind != RecordKind::Event {
                return;
            }
            if let Ok(mut event) = pb::Event::decode(rec.message) {
                if after_checkpoint {
                    let next = next_sequence.entry(event.session_id.clone()).or_insert(1);
                    *next = (*next).max(event.sequence + 1);
                }
                if let Some(key) = client_key(&mut event) {
                    dedup.insert(key, rec.offset);
                }
            }
        })
        .await?;
        if writer.next_offset() < end {
            tracing::warn!(
                shard = id,
                checkpoint = end,
                log_end = writer.next_offset(),
                "the log ends before its checkpoint: records were lost outside jimbus"
            );
        }
        tracing::info!(shard = id, segments = report.segments, from_index = report.indexed, replayed_from = dedup_from, records = report.records, truncated = ?report.truncated, "log recovered");
        let (store, restored, journaled) = ConsumerStore::load(dir)?;
        let consumers = restore_consumers(id, &writer, &router, restored);
        router.durables.set_limit(options.durables.max_names);
        if let Some(expiry) = options.durables.idle_expiry {
            let every = (expiry / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            glommio::spawn_local(router.clone().maintain_every(id, every)).detach();
        }
        if let Some(age) = log_retention_age {
            let every = (age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            glommio::spawn_local(router.clone().maintain_every(id, every)).detach();
        }
        let dir = dir.to_path_buf();
        let aggregation = AggregationStage::new(id, options.aggregate.clone(), budget)?;
        let mut shard = Self {
            id,
            dir,
            router,
            writer,
            consumers,
            store,
            durable_limits: options.durables,
            next_sequence,
            dedup,
            topics,
            scratch: Vec::new(),
            aggregation,
            linger: options.linger,
            fresh: Vec::new(),
        };
        if journaled {
            // Fold the journal into a snapshot now, so it starts empty.
            shard.save_consumers().await?;
        }
        Ok(shard)
    }

    /// The lowest offset a durable consumer still needs (retention keeps it).
    pub fn oldest_unacked(&self) -> Option<u64> {
        self.consumers.values().map(|c| c.borrow().ack_floor()).min()
    }

    /// After a commit that closed a segment, writes the shard's state as of the
    /// new segment's base in the background (the pump does not wait for it), so
    /// a restart replays only from there. A failure is logged: the restart then
    /// replays more.
    fn checkpoint_if_rolled(&mut self) {
        let Some(end) = self.writer.take_rolled() else { return };
        let checkpoint = ShardCheckpoint {
            end,
            next_sequence: self.next_sequence.iter().map(|(s, n)| (s.clone(), *n)).collect(),
            topics: self.topics.iter().map(|(t, n)| (t.clone(), *n)).collect(),
            dedup_from: self.dedup.oldest_offset().unwrap_or(end).min(end),
        };
        let (path, bytes, shard) = (self.dir.join(CHECKPOINT), checkpoint.encode(), self.id);
        glommio::spawn_local(async move {
            if let Err(e) = replace_file(&path, &bytes).await {
                tracing::warn!(shard, error = %e, "cannot write the checkpoint; the next start replays more");
            }
        })
        .detach();
    }

    /// Deletes what retention no longer keeps, sparing every offset a durable
    /// consumer has not acknowledged.
    fn enforce_retention(&mut self) {
        let keep_from = self.oldest_unacked().unwrap_or(u64::MAX);
        if let Err(e) = self.writer.enforce_retention(now_micros(), keep_from) {
            tracing::error!(shard = self.id, error = %e, "retention failed; segments kept");
        }
    }

    /// Joins (or creates, starting at `start`) a durable consumer.
    fn join_consumer(
        &mut self,
        durable: Durable,
        pattern: Pattern,
        start: u64,
        member: flume::Sender<EncodedDelivery>,
    ) -> bool {
        let created = !self.consumers.contains_key(&durable.name);
        let index = self.index();
        // Unique per life of a name on this shard, even if the clock steps back.
        let incarnation =
            now_micros().max(self.consumers.values().map(|c| c.borrow().incarnation + 1).max().unwrap_or(0));
        let shared = self.consumers.entry(durable.name.clone()).or_insert_with(|| {
            let consumer = Consumer::new(durable.name.clone(), pattern, durable.options, start, incarnation);
            Rc::new(RefCell::new(consumer))
        });
        shared.borrow_mut().add_member(member);
        if created {
            self.router.durables.register(&durable.name);
            glommio::spawn_local(observe::watch_consumer(self.id, index.clone(), shared.clone())).detach();
            glommio::spawn_local(consumer::deliver(self.id, index, shared.clone(), self.router.clone())).detach();
        }
        created
    }

    /// Writes every consumer to a new snapshot (which empties the journal).
    async fn save_consumers(&mut self) -> std::io::Result<()> {
        let records = self.consumers.iter().map(|(name, c)| (name.clone(), c.borrow().record())).collect();
        self.store.compact(&records).await
    }

    /// Makes the acks applied since the last call durable: one journal
    /// append, or a new snapshot when consumers came or went or the journal
    /// has grown past its bound.
    async fn persist_consumers(&mut self, snapshot: bool) -> std::io::Result<()> {
        let entries: Vec<_> = self.consumers.values().filter_map(|c| c.borrow_mut().take_journal_entry()).collect();
        let ranges: usize = self.consumers.values().map(|c| c.borrow().range_count()).sum();
        metrics::gauge!("jimbus_consumer_state_ranges", "shard" => self.id.to_string()).set(ranges as f64);
        if snapshot || self.store.needs_compaction() {
            return self.save_consumers().await;
        }
        self.store.append(&entries).await
    }

    /// Removes consumers idle past the configured expiry; true if any was.
    fn expire_idle_consumers(&mut self) -> bool {
        let Some(expiry) = self.durable_limits.idle_expiry else { return false };
        let now = Instant::now();
        let idle: Vec<String> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.borrow_mut().idle_for(expiry, now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &idle {
            if let Some(consumer) = self.consumers.remove(name) {
                consumer.borrow_mut().remove();
                self.router.durables.release(name);
                tracing::info!(shard = self.id, consumer = %name, idle_seconds = expiry.as_secs(), "durable consumer expired");
            }
        }
        !idle.is_empty()
    }

    pub fn index(&self) -> SharedIndex {
        self.writer.index()
    }

    /// Applies commands until a shutdown command arrives or every sender is
    /// gone, waking also when the aggregator's timers are due.
    pub async fn run(mut self, queue: flume::Receiver<ShardCommand>) {
        loop {
            let commands = match self.next_commands(&queue).await {
                Some(commands) => commands,
                None => break,
            };
            if let Some(done) = self.apply(commands).await {
                self.stop().await;
                let _ = done.send(());
                return;
            }
        }
        self.stop().await;
    }

    /// Waits for commands or the aggregator's next deadline, then drains as
    /// many commands as the adaptive batch size allows (possibly none, when
    /// only a timer is due). `None` when every sender is gone.
    async fn next_commands(&mut self, queue: &flume::Receiver<ShardCommand>) -> Option<Vec<ShardCommand>> {
        let first = recv_until(queue, self.aggregation.deadline()).await.ok()?;
        let limit = self.aggregation.batch_size(queue.len() + usize::from(first.is_some()));
        let mut commands: Vec<ShardCommand> = first.into_iter().collect();
        // With a linger, a commit waits that long for company once it has work.
        let linger_end = (!commands.is_empty() && !self.linger.is_zero()).then(|| Instant::now() + self.linger);
        while commands.len() < limit {
            let next = match queue.try_recv() {
                Ok(command) => Some(command),
                Err(_) => match linger_end {
                    Some(end) if Instant::now() < end => recv_until(queue, Some(end)).await.ok().flatten(),
                    _ => None,
                },
            };
            match next {
                Some(command) => commands.push(command),
                None => break,
            }
        }
        Some(commands)
    }

    /// Flushes the aggregator and syncs the log.
    async fn stop(&mut self) {
        if let Err(e) = self.save_consumers().await {
            tracing::warn!(shard = self.id, error = %e, "cannot snapshot the consumers; their journal is replayed at start");
        }
        self.aggregation.flush_all();
        self.commit_aggregated().await;
        if let Err(e) = self.writer.sync().await {
            tracing::error!(shard = self.id, error = %e, "final sync failed");
        }
    }

    /// Writes what aggregation produced; what the log refuses is kept for the next try.
    async fn commit_aggregated(&mut self) {
        let messages = self.aggregation.take_pending();
        if messages.is_empty() {
            return;
        }
        let now = self.writer.monotonic_time_us(now_micros());
        for aggregated in &messages {
            let topic = topic::aggregated_topic(&aggregated.session);
            self.stage_message(RecordKind::Aggregated, topic, &aggregated.message, now);
        }
        match self.writer.commit().await {
            Ok(()) => {
                observe::aggregated(&messages);
                self.checkpoint_if_rolled();
            }
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, messages = messages.len(), "aggregated messages kept for the next commit");
                self.aggregation.restore_pending(messages);
            }
        }
        self.aggregation.export_metrics();
    }

    /// Applies a batch of commands with one commit; returns the shutdown waiter
    /// when the batch held a shutdown command.
    async fn apply(&mut self, commands: Vec<ShardCommand>) -> Option<flume::Sender<()>> {
        let mut pending = Vec::new();
        let mut acks = Vec::new();
        let mut consumers_changed = false;
        // Consumers created or removed: the snapshot is rewritten.
        let mut consumers_replaced = false;
        let mut shutdown = None;
        let mut keys = Vec::new();
        // Keys staged by earlier requests of this commit: a retry that races its
        // original into the same commit is a duplicate too. Identical events
        // inside one request are both kept (a retrigger can repeat its trigger
        // byte for byte, and the field mod reuses ids).
        let mut staged = KeySet::default();
        let sequences_before = self.next_sequence.clone();
        for command in commands {
            match command {
                ShardCommand::Append { items, reply } => {
                    let first = keys.len();
                    let outcomes =
                        items.into_iter().map(|item| self.stage(item, &mut keys, &staged)).collect::<Vec<_>>();
                    staged.extend(keys[first..].iter().map(|(key, _)| *key));
                    pending.push((reply, outcomes));
                }
                ShardCommand::Subscribe { pattern, start, durable: None, deliveries } => {
                    glommio::spawn_local(subscription(self.id, self.index(), pattern, start, deliveries)).detach();
                }
                ShardCommand::Subscribe { pattern, start, durable: Some(durable), deliveries } => {
                    let first = start_offset_now(&self.index(), start);
                    let created = self.join_consumer(durable, pattern, first, deliveries);
                    consumers_changed |= created;
                    consumers_replaced |= created;
                }
                ShardCommand::Ack { name, offsets, reply } => {
                    let acked = self.consumers.get(&name).map_or(0, |c| {
                        let mut c = c.borrow_mut();
                        offsets.into_iter().filter(|&o| c.ack(o)).count() as u32
                    });
                    consumers_changed |= acked > 0;
                    acks.push((reply, acked));
                }
                ShardCommand::ListTopics { reply } => {
                    let _ = reply.send(self.topics.iter().map(|(t, n)| (t.clone(), *n)).collect());
                }
                ShardCommand::Maintain => {
                    let expired = self.expire_idle_consumers();
                    consumers_changed |= expired;
                    consumers_replaced |= expired;
                }
                ShardCommand::Shutdown { done } => shutdown = Some(done),
            }
        }
        let saved = if consumers_changed {
            self.persist_consumers(consumers_replaced).await.map_err(|e| {
                tracing::warn!(shard = self.id, error = %e, "cannot persist the durable consumers; their acks are refused");
                e.to_string()
            })
        } else {
            Ok(())
        };
        if consumers_changed && saved.is_ok() {
            // Before the acks are answered, so that once Ack returns nothing
            // retention may delete is still on disk.
            self.enforce_retention();
        }
        for (reply, acked) in acks {
            let _ = reply.send(saved.clone().map(|_| acked).map_err(BusError::Storage));
        }
        let result = self.writer.commit().await;
        match result {
            Ok(()) => {
                for (key, offset) in keys {
                    self.dedup.insert(key, offset);
                }
                self.checkpoint_if_rolled();
                for (reply, outcomes) in pending {
                    let _ = reply.send(Ok(outcomes));
                }
                if saved.is_ok() {
                    self.enforce_retention();
                }
                let fresh = std::mem::take(&mut self.fresh);
                self.aggregation.offer(&fresh);
            }
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "commit failed; answering unavailable");
                metrics::counter!("jimbus_log_commit_failures_total").increment(1);
                self.next_sequence = sequences_before;
                self.fresh.clear();
                for (reply, _) in pending {
                    let _ = reply.send(Err(BusError::Storage(e.to_string())));
                }
            }
        }
        self.aggregation.tick();
        self.commit_aggregated().await;
        shutdown
    }

    /// Stages one item: assigns its sequence and offset, or recognises a retry
    /// (a key already durable, or `staged` by an earlier request of this commit).
    fn stage(&mut self, item: AppendItem, keys: &mut Vec<(DedupKey, u64)>, staged: &KeySet) -> ItemOutcome {
        let now = self.writer.monotonic_time_us(now_micros());
        match item {
            AppendItem::Event(mut event) => {
                self.scratch.clear();
                let (mut stamps, key) = encode_client_view(&mut event, &mut self.scratch);
                if key.is_some_and(|k| self.dedup.contains(k) || staged.contains(&k)) {
                    metrics::counter!("jimbus_events_duplicate_total").increment(1);
                    return ItemOutcome::Duplicate;
                }
                let next = self.next_sequence.entry(event.session_id.clone()).or_insert(1);
                stamps.0.sequence = *next;
                *next += 1;
                stamps.0.timing.get_or_insert_with(Default::default).published_at = Some(timestamp(now));
                append_stamps(stamps, &mut event, &mut self.scratch);
                let topic = topic::raw_topic(&event.session_id, &event.event_type);
                let outcome = self.stage_scratch(RecordKind::Event, topic, now);
                if let (Some(key), ItemOutcome::Stored { offset, .. }) = (key, outcome) {
                    keys.push((key, offset));
                }
                self.fresh.push((event.sequence, event));
                outcome
            }
            AppendItem::DeadLetter(letter) => {
                metrics::counter!("jimbus_deadletter_total").increment(1);
                self.stage_message(RecordKind::DeadLetter, topic::DEADLETTER.to_string(), &*letter, now)
            }
        }
    }

    fn stage_message(&mut self, kind: RecordKind, topic: String, message: &impl Message, now: u64) -> ItemOutcome {
        self.scratch.clear();
        message.encode(&mut self.scratch).expect("a Vec grows as needed");
        self.stage_scratch(kind, topic, now)
    }

    /// Stages the message encoded in `scratch`.
    fn stage_scratch(&mut self, kind: RecordKind, topic: String, now: u64) -> ItemOutcome {
        let offset = self.writer.stage(kind, &topic, &self.scratch, now);
        *self.topics.entry(topic).or_default() += 1;
        ItemOutcome::Stored { partition: self.id as u32, offset }
    }
}

/// Starts the delivery of every consumer read back from disk.
fn restore_consumers(
    id: usize,
    writer: &SegmentWriter,
    router: &ShardRouter,
    restored: BTreeMap<String, Restored>,
) -> BTreeMap<String, SharedConsumer> {
    let mut consumers = BTreeMap::new();
    for (name, (entry, done)) in restored {
        let Some(restored) = Consumer::restore(name.clone(), entry, done) else {
            tracing::warn!(shard = id, consumer = %name, "dropping a stored consumer whose pattern no longer parses");
            continue;
        };
        let shared = Rc::new(RefCell::new(restored));
        glommio::spawn_local(consumer::deliver(id, writer.index(), shared.clone(), router.clone())).detach();
        glommio::spawn_local(observe::watch_consumer(id, writer.index(), shared.clone())).detach();
        router.durables.register(&name);
        consumers.insert(name, shared);
    }
    consumers
}

/// The shard's checkpoint file, beside its segments.
const CHECKPOINT: &str = "checkpoint";

/// The checkpoint to start from, if there is a readable one.
fn load_checkpoint(dir: &std::path::Path) -> Option<ShardCheckpoint> {
    let bytes = std::fs::read(dir.join(CHECKPOINT)).ok()?;
    match ShardCheckpoint::decode(&bytes) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "ignoring an unreadable checkpoint; replaying the whole log");
            None
        }
    }
}

/// The next command, or `None` once `deadline` passes; an error when every sender is gone.
async fn recv_until(
    queue: &flume::Receiver<ShardCommand>,
    deadline: Option<Instant>,
) -> Result<Option<ShardCommand>, flume::RecvError> {
    let Some(deadline) = deadline else { return queue.recv_async().await.map(Some) };
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Ok(None)
    };
    futures_lite::future::or(async { queue.recv_async().await.map(Some) }, timer).await
}

/// Resolves a start position at once (a time start uses the coarse time index).
fn start_offset_now(index: &SharedIndex, start: Start) -> u64 {
    let log = index.borrow();
    match start {
        Start::Latest => log.end(),
        Start::Earliest => log.start(),
        Start::Offset(offset) => offset.clamp(log.start(), log.end()),
        Start::TimeMicros(t) => log.offset_near_time(t),
    }
}

/// Resolves a start position to an offset on this shard.
async fn start_offset(index: &SharedIndex, start: Start) -> u64 {
    let (first, end) = {
        let log = index.borrow();
        (log.start(), log.end())
    };
    match start {
        Start::Latest => end,
        Start::Earliest => first,
        Start::Offset(offset) => offset.clamp(first, end),
        Start::TimeMicros(t) => {
            let mut at = index.borrow().offset_near_time(t);
            loop {
                let Ok((frames, next)) = read_frames(index, at, 256).await else { return at };
                if frames.is_empty() {
                    return at;
                }
                for frame in &frames {
                    match record::decode(frame) {
                        Ok(rec) if rec.time_us >= t => return rec.offset,
                        _ => {}
                    }
                }
                at = next;
            }
        }
    }
}

/// The delivery of one record: views of the stored topic and message bytes
/// of `frame`, which `rec` was decoded from. Nothing is decoded or copied.
pub fn delivery(shard: usize, frame: &bytes::Bytes, rec: &record::Record<'_>) -> EncodedDelivery {
    let kind = match rec.kind {
        RecordKind::Event => BodyKind::Event,
        RecordKind::Aggregated => BodyKind::Aggregated,
        RecordKind::DeadLetter => BodyKind::DeadLetter,
    };
    EncodedDelivery {
        topic: frame.slice_ref(rec.topic.as_bytes()),
        partition: shard as u32,
        offset: rec.offset,
        delivery_count: 1,
        kind,
        body: frame.slice_ref(rec.message),
        sequence_override: None,
    }
}

/// Streams the records of this shard that match `pattern` to one subscriber,
/// waiting for room in its channel (so a slow subscriber slows only itself and
/// never makes the shard buffer), until the subscriber goes away.
async fn subscription(
    shard: usize,
    index: SharedIndex,
    pattern: Pattern,
    start: Start,
    out: flume::Sender<EncodedDelivery>,
) {
    let index: Rc<_> = index;
    let mut cursor = start_offset(&index, start).await;
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    // Lag is measured once the subscription has caught up: a replay from the
    // start is not late.
    let mut live = false;
    'outer: while !out.is_disconnected() {
        let listener = index.borrow().committed.listen();
        if cursor >= index.borrow().end() {
            live = true;
            let idle = glommio::timer::Timer::new(Duration::from_secs(1));
            futures_lite::future::or(listener, async {
                idle.await;
            })
            .await;
            continue;
        }
        let (frames, next) = match read_frames(&index, cursor, 512).await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(shard, error = %e, "subscription read failed");
                break;
            }
        };
        if frames.is_empty() {
            cursor = next.max(cursor + 1).min(index.borrow().end());
            continue;
        }
        let mut oldest = None;
        for frame in &frames {
            let Ok(rec) = record::decode(frame) else { continue };
            if !pattern.matches(rec.topic) {
                continue;
            }
            oldest.get_or_insert(rec.time_us);
            if out.send_async(delivery(shard, frame, &rec)).await.is_err() {
                break 'outer;
            }
        }
        if let Some(oldest) = oldest.filter(|_| live) {
            observe::delivered(oldest);
        }
        cursor = next;
    }
    metrics::gauge!("jimbus_subscriptions").decrement(1.0);
}

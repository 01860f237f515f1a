//! A shard's pump: the single writer of the sessions the shard owns.
//!
//! Every mutation of a shard arrives as a [`Command`] on its one flume queue,
//! from HTTP handlers on any shard, from the tokio gRPC edge and from the
//! shard's own delivery tasks alike, and is applied by the pump in arrival
//! order: sequence numbers, dedup, durable consumers and the log need no
//! locks. The pump drains whatever is queued (up to `max_batch`, sized by the
//! [`BatchSizer`] from queue depth) into one group commit, so batches grow with
//! queue depth and shrink to one under light load, and answers every command
//! of the commit once it is durable. A shard must never reach into another
//! shard's state; it only sends commands.

use super::aggregation::AggregationStage;
use super::command::{AppendReply, Appended, Command, ConsumerRequest, StoredEvent};
use super::consumer::{Consumer, DurableLimits};
use super::consumer_store::ConsumerStore;
use super::consumer_task::ConsumerTask;
use super::log::{SegmentWriter, SharedIndex};
use super::router::ShardRouter;
use super::subscription::{start_offset_now, subscription};
use crate::bus::{AppendItem, BusError, DeliverySender, Durable, ItemOutcome};
use crate::clock::{now_micros, timestamp};
use crate::observe::{self, LineThrottle};
use jimbus_core::aggregate::{AggregateConfig, Aggregated};
use jimbus_core::batch::BatchSizer;
use jimbus_core::dedup::{DedupKey, DedupWindow, KeySet};
use jimbus_core::recent_map::{take_sequence, RecentKeyMap};
use jimbus_core::record::RecordKind;
use jimbus_core::stamps::{RecordMessage, StampEncoder};
use jimbus_core::topic::{self, Pattern, TopicWriter};
use jimbus_proto::wire;
use prost::Message;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Tunables of a shard's pump.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// Retry ids remembered per shard.
    pub dedup_window: usize,
    /// How long a group commit waits for more commands once it has one (0:
    /// not at all); a lingering commit takes up to `max_batch` of them.
    pub linger: Duration,
    /// The most commands folded into one group commit; the batch grows toward
    /// it with the queue's depth ([`BatchSizer`]), or at once with a linger.
    pub max_batch: usize,
    /// Windows and cascades of the aggregated stream.
    pub aggregate: AggregateConfig,
    /// How many durable consumers, and how long an idle one is kept.
    pub durables: DurableLimits,
}

/// The state the pump owns: everything about the shard that changes.
pub struct Shard {
    /// This shard's number, its partition in every position it hands out.
    pub(super) id: usize,
    /// The shard's directory (see [`super::layout`]).
    pub(super) dir: PathBuf,
    /// To reach the other shards (dead letters, subscriptions, maintenance timers).
    pub(super) router: ShardRouter,
    /// The log's single writer.
    pub(super) writer: SegmentWriter,
    /// The durable consumers on this shard, by name.
    pub(super) consumers: BTreeMap<String, Consumer>,
    /// Where the consumers are persisted.
    pub(super) store: ConsumerStore,
    /// How many durable names, and when an idle consumer goes.
    pub(super) durable_limits: DurableLimits,
    /// The sequence the next event of each session gets.
    pub(super) next_sequence: RecentKeyMap<u64>,
    /// Keys of recent events, to recognise retries.
    pub(super) dedup: DedupWindow,
    /// Records per topic, for ListTopics.
    pub(super) topics: RecentKeyMap<u64>,
    /// Writes each event's topic into one reused buffer.
    pub(super) topic: TopicWriter,
    /// Completes each event's record after its client view.
    pub(super) stamps: StampEncoder,
    /// Windows and cascades of the events once durable.
    pub(super) aggregation: AggregationStage,
    /// How many queued commands the next group commit takes.
    pub(super) batch: BatchSizer,
    /// This shard's `jimbus_shard_queue_depth`, registered once: a `gauge!`
    /// per batch rebuilt its key (`observe::per_thread` says what that costs).
    pub(super) queue_depth_gauge: metrics::Gauge,
    /// This shard's `jimbus_shard_batch_target`, registered once likewise.
    pub(super) batch_target_gauge: metrics::Gauge,
    /// How long a commit waits for company (see [`PumpOptions::linger`]).
    pub(super) linger: Duration,
    /// Events staged in the current commit, with their sequences and their
    /// requests' stamps, for aggregation once durable.
    pub(super) fresh: Vec<StoredEvent>,
    /// The `commit failed` lines: while a disk stays full, every commit fails.
    pub(super) commit_failed_lines: LineThrottle,
}

/// An append staged in a group commit, answered once the commit is durable.
struct StagedAppend {
    /// Where the answer goes.
    reply: AppendReply,
    /// Each item's outcome, in request order.
    outcomes: Vec<ItemOutcome>,
    /// How many of the shard's fresh events are this append's stored ones.
    stored: usize,
    /// The sender's list for them ([`Appended::spent`]), empty until answered.
    spent: Vec<StoredEvent>,
}

/// What one group commit collects before it is written.
#[derive(Default)]
struct Batch {
    /// The appends, in the order their records were staged.
    appends: Vec<StagedAppend>,
    /// Each ack's reply and how many offsets it acknowledged.
    acks: Vec<(flume::Sender<Result<u32, BusError>>, u32)>,
    /// Dedup keys staged, with their offsets: in the window once durable.
    keys: Vec<(DedupKey, u64)>,
    /// Keys staged by earlier requests of this commit: a retry that races its
    /// original into the same commit is a duplicate too. Identical events
    /// inside one request are both kept (a retrigger can repeat its trigger
    /// byte for byte, and the field mod reuses ids).
    staged: KeySet,
    /// Acks applied: the consumers are persisted before the commit is answered.
    consumers_changed: bool,
    /// Consumers created or removed: the snapshot is rewritten.
    consumers_replaced: bool,
    /// Set when the batch held a shutdown command.
    shutdown: Option<flume::Sender<()>>,
}

impl Shard {
    /// The lowest offset a durable consumer still needs (retention keeps it).
    fn oldest_unacked(&self) -> Option<u64> {
        self.consumers.values().map(Consumer::ack_floor).min()
    }

    /// Deletes what retention no longer keeps, sparing every offset a durable
    /// consumer has not acknowledged.
    async fn enforce_retention(&mut self) {
        let keep_from = self.oldest_unacked().unwrap_or(u64::MAX);
        self.writer.enforce_retention(now_micros(), keep_from).await;
    }

    fn index(&self) -> SharedIndex {
        self.writer.index()
    }

    /// Starts the delivery task of the consumer `name`.
    pub(super) fn spawn_delivery(&self, name: &str) {
        let Some(consumer) = self.consumers.get(name) else { return };
        let task = ConsumerTask {
            shard: self.id,
            name: name.to_string(),
            incarnation: consumer.incarnation,
            pattern: consumer.pattern.clone(),
            index: self.index(),
            router: self.router.clone(),
        };
        glommio::spawn_local(task.run()).detach();
    }

    /// Joins (or creates, starting at `start`) a durable consumer; true if created.
    fn join_consumer(&mut self, durable: Durable, pattern: Pattern, start: u64, member: DeliverySender) -> bool {
        let created = !self.consumers.contains_key(&durable.name);
        // Unique per life of a name on this shard, even if the clock steps back.
        let incarnation = now_micros().max(self.consumers.values().map(|c| c.incarnation + 1).max().unwrap_or(0));
        let consumer = self
            .consumers
            .entry(durable.name.clone())
            .or_insert_with(|| Consumer::new(durable.name.clone(), pattern, durable.options, start, incarnation));
        consumer.add_member(member);
        if created {
            self.router.durables.register(&durable.name);
            self.spawn_delivery(&durable.name);
        }
        created
    }

    /// Answers a delivery task about its consumer; true if the consumer's
    /// state changed in a way only a snapshot keeps.
    fn serve_consumer(&mut self, name: &str, incarnation: u64, request: ConsumerRequest) {
        let consumer = self.consumers.get_mut(name).filter(|c| c.incarnation == incarnation);
        let now = Instant::now();
        match (request, consumer) {
            (ConsumerRequest::Plan { reply }, consumer) => {
                let _ = reply.send(consumer.map(|c| c.plan(now)));
            }
            (ConsumerRequest::Offer { from, to, matching, reply }, consumer) => {
                let _ = reply.send(consumer.map(|c| c.offer(from, to, &matching, now)).unwrap_or_default());
            }
            (ConsumerRequest::Settle { offset, count, dead_lettered }, Some(c)) => {
                c.settle(offset, count, dead_lettered)
            }
            (ConsumerRequest::Settle { .. }, None) => {}
        }
    }

    /// Writes every consumer to a new snapshot (which empties the journal).
    pub(super) async fn save_consumers(&mut self) -> std::io::Result<()> {
        let records = self.consumers.iter().map(|(name, c)| (name.clone(), c.record())).collect();
        self.store.compact(&records).await
    }

    /// Makes the acks applied since the last call durable: one journal
    /// append, or a new snapshot when consumers came or went or the journal
    /// has grown past its bound.
    async fn persist_consumers(&mut self, snapshot: bool) -> std::io::Result<()> {
        let entries: Vec<_> = self.consumers.values_mut().filter_map(Consumer::take_journal_entry).collect();
        let ranges: usize = self.consumers.values().map(Consumer::range_count).sum();
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
        let idle: Vec<String> =
            self.consumers.iter_mut().filter_map(|(name, c)| c.idle_for(expiry, now).then(|| name.clone())).collect();
        for name in &idle {
            if let Some(mut consumer) = self.consumers.remove(name) {
                consumer.remove();
                self.router.durables.release(name);
                tracing::info!(shard = self.id, consumer = %name, idle_seconds = expiry.as_secs(), "durable consumer expired");
            }
        }
        !idle.is_empty()
    }

    /// Applies commands until a shutdown command arrives or every sender is
    /// gone, waking also when the aggregator's timers are due.
    pub(super) async fn run(mut self, queue: flume::Receiver<Command>) {
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
    /// many commands as the adaptive batch size allows, or with a linger as
    /// arrive within it up to the cap (possibly none, when only a timer is
    /// due). `None` when every sender is gone.
    async fn next_commands(&mut self, queue: &flume::Receiver<Command>) -> Option<Vec<Command>> {
        let first = recv_until(queue, self.aggregation.deadline()).await.ok()?;
        let sized = self.batch_size(queue.len() + usize::from(first.is_some()));
        let mut commands: Vec<Command> = first.into_iter().collect();
        // With a linger, a commit waits that long for company once it has
        // work, up to the cap: the size that follows the queue's depth is 1
        // when the queue is shallow, which is when a linger is meant to gather.
        let linger_end = (!commands.is_empty() && !self.linger.is_zero()).then(|| Instant::now() + self.linger);
        let limit = if linger_end.is_some() { self.batch.max_batch() } else { sized };
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

    /// The number of commands to drain next, from the queue's depth.
    fn batch_size(&mut self, queue_depth: usize) -> usize {
        let size = self.batch.observe(queue_depth);
        self.queue_depth_gauge.set(queue_depth as f64);
        self.batch_target_gauge.set(size as f64);
        size
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

    /// Writes what aggregation produced, in a commit of its own; what the log
    /// refuses is kept for the next try.
    async fn commit_aggregated(&mut self) {
        let messages = self.stage_aggregated();
        if messages.is_empty() {
            return;
        }
        let committed = match self.writer.commit().await {
            Ok(()) => {
                self.checkpoint_if_rolled();
                true
            }
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, messages = messages.len(), "aggregated messages kept for the next commit");
                false
            }
        };
        self.settle_aggregated(messages, committed);
    }

    /// Stages what aggregation produced since the last commit and returns it,
    /// for [`Shard::settle_aggregated`] once that commit is done.
    fn stage_aggregated(&mut self) -> Vec<Aggregated> {
        let messages = self.aggregation.take_pending();
        if !messages.is_empty() {
            let now = self.writer.monotonic_time_us(now_micros());
            for aggregated in &messages {
                let topic = topic::aggregated_topic(&aggregated.session);
                // In one pass (`wire`): prost's `encode` walks each nested
                // message again for its length at every level, and an
                // aggregated message nests triggers and their times in a
                // message: 2.8 times the instructions for a 20-trigger hand
                // (docs/perf.md, thirty-third pass).
                let message = &aggregated.message;
                self.stage_message(RecordKind::Aggregated, &topic, now, |out| wire::Write::write(message, out));
            }
        }
        messages
    }

    /// After the commit that carried `messages`: counted and handed back to
    /// aggregation (whose next triggers reuse their memory) if it succeeded,
    /// kept for the next commit if it failed.
    fn settle_aggregated(&mut self, messages: Vec<Aggregated>, committed: bool) {
        if messages.is_empty() {
            return;
        }
        if committed {
            observe::aggregated(&messages);
            self.aggregation.take_back(messages);
        } else {
            self.aggregation.restore_pending(messages);
        }
        self.aggregation.export_metrics();
    }

    /// Applies a batch of commands with one commit; returns the shutdown waiter
    /// when the batch held a shutdown command.
    ///
    /// What aggregation produced since the last commit goes into this one.
    /// What it produces now rides with the next batch's commit, and gets a
    /// commit of its own only when no command comes within
    /// [`super::aggregation::RIDE_WAIT`] (the pump wakes for it, see
    /// [`AggregationStage::deadline`]): a commit of its own whenever the
    /// queue was empty for an instant was a second synced write for many
    /// batches, and every request that came during it waited for it.
    async fn apply(&mut self, commands: Vec<Command>) -> Option<flume::Sender<()>> {
        if commands.is_empty() {
            // Only a timer woke the pump: the aggregator's, or the end of a
            // wait for company. What the tick produces waits its own turn.
            self.aggregation.tick();
            if !self.aggregation.due(Instant::now()) {
                return None;
            }
        }
        let mut batch = Batch::default();
        for command in commands {
            self.take(command, &mut batch);
        }
        let aggregated = self.stage_aggregated();
        let saved = self.persist_acks(&mut batch).await;
        let committed = self.commit(&mut batch, saved.is_ok()).await;
        self.settle_aggregated(aggregated, committed);
        self.aggregation.tick();
        batch.shutdown
    }

    /// Applies one command to the shard's state, staging what it appends.
    fn take(&mut self, command: Command, batch: &mut Batch) {
        match command {
            Command::Append { items, reply, spent } => {
                let (first, fresh) = (batch.keys.len(), self.fresh.len());
                // One receive time for the request's records: the clock read
                // per event was 1.5 % of the whole ingest path's CPU.
                let now = self.writer.monotonic_time_us(now_micros());
                let outcomes: Vec<_> =
                    items.into_iter().map(|item| self.stage(item, now, &mut batch.keys, &batch.staged)).collect();
                batch.staged.extend(batch.keys[first..].iter().map(|(key, _)| *key));
                batch.appends.push(StagedAppend { reply, outcomes, stored: self.fresh.len() - fresh, spent });
            }
            Command::Subscribe { pattern, start, durable: None, deliveries } => {
                glommio::spawn_local(subscription(self.id, self.index(), pattern, start, deliveries)).detach();
            }
            Command::Subscribe { pattern, start, durable: Some(durable), deliveries } => {
                let first = start_offset_now(&self.index(), start);
                let created = self.join_consumer(durable, pattern, first, deliveries);
                batch.consumers_changed |= created;
                batch.consumers_replaced |= created;
            }
            Command::Ack { name, offsets, reply } => {
                let acked =
                    self.consumers.get_mut(&name).map_or(0, |c| offsets.into_iter().filter(|&o| c.ack(o)).count());
                batch.consumers_changed |= acked > 0;
                batch.acks.push((reply, acked as u32));
            }
            Command::Consumer { name, incarnation, request } => self.serve_consumer(&name, incarnation, request),
            Command::ListTopics { reply } => {
                let _ = reply.send(self.topics.iter().map(|(t, n)| (t.clone(), *n)).collect());
            }
            Command::Maintain => {
                let expired = self.expire_idle_consumers();
                batch.consumers_changed |= expired;
                batch.consumers_replaced |= expired;
            }
            Command::Shutdown { done } => batch.shutdown = Some(done),
        }
    }

    /// Persists the batch's acks and answers them; an error refuses them all.
    async fn persist_acks(&mut self, batch: &mut Batch) -> Result<(), BusError> {
        let saved = if batch.consumers_changed {
            self.persist_consumers(batch.consumers_replaced).await.map_err(|e| {
                tracing::warn!(shard = self.id, error = %e, "cannot persist the durable consumers; their acks are refused");
                write_failed(&e, crate::disk::is_out_of_space(&e))
            })
        } else {
            Ok(())
        };
        if batch.consumers_changed && saved.is_ok() {
            // Before the acks are answered, so that once Ack returns nothing
            // retention may delete is still on disk.
            self.enforce_retention().await;
        }
        for (reply, acked) in batch.acks.drain(..) {
            let _ = reply.send(saved.clone().map(|_| acked));
        }
        saved
    }

    /// Writes the staged records and answers the batch's appends; true when
    /// the commit succeeded.
    async fn commit(&mut self, batch: &mut Batch, consumers_saved: bool) -> bool {
        match self.writer.commit().await {
            Ok(()) => {
                for (key, offset) in batch.keys.drain(..) {
                    self.dedup.insert(key, offset);
                }
                self.checkpoint_if_rolled();
                self.aggregation.offer(&mut self.fresh);
                let mut fresh = std::mem::take(&mut self.fresh).into_iter();
                for StagedAppend { reply, outcomes, stored, mut spent } in batch.appends.drain(..) {
                    spent.extend(fresh.by_ref().take(stored));
                    let _ = reply.send(Ok(Appended { outcomes, spent }));
                }
                if consumers_saved {
                    self.enforce_retention().await;
                }
                true
            }
            Err(e) => {
                let shard = self.id;
                self.commit_failed_lines.note(|failed_since_last_line| {
                    tracing::error!(shard, error = %e, failed_since_last_line, "commit failed; its appends are refused");
                });
                metrics::counter!("jimbus_log_commit_failures_total").increment(1);
                self.unstage_sequences();
                let error = write_failed(&e, e.is_out_of_space());
                for StagedAppend { reply, .. } in batch.appends.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                false
            }
        }
    }

    /// After a failed commit, hands out again the sequences its events took:
    /// each session's next sequence goes back to its first event's in the commit.
    fn unstage_sequences(&mut self) {
        for StoredEvent { sequence, event, .. } in self.fresh.drain(..) {
            if let Some(next) = self.next_sequence.get_mut(&event.session_id) {
                *next = (*next).min(sequence);
            }
        }
    }

    /// Stages one item received at `now`: assigns its sequence and offset, or
    /// recognises a retry (a key already durable, or `staged` by an earlier
    /// request of this commit).
    ///
    /// An event is encoded once, straight into the log's commit buffer: its
    /// client view (whose bytes give its dedup key), then its stamps. A retry
    /// found after its encoding is cut back out.
    fn stage(&mut self, item: AppendItem, now: u64, keys: &mut Vec<(DedupKey, u64)>, staged: &KeySet) -> ItemOutcome {
        let (mut event, request) = match item {
            AppendItem::Event(event, request) => (event, request),
            AppendItem::DeadLetter(letter) => {
                metrics::counter!("jimbus_deadletter_total").increment(1);
                let encode = |out: &mut Vec<u8>| letter.encode(out).expect("a Vec grows as needed");
                return self.stage_message(RecordKind::DeadLetter, topic::DEADLETTER, now, encode);
            }
        };
        let (dedup, next_sequence, stamps) = (&self.dedup, &mut self.next_sequence, &mut self.stamps);
        let topic = self.topic.write(&event.session_id, &event.event_type);
        let staged = self.writer.stage_encoded(RecordKind::Event, topic, now, |out| {
            let is_retry = |key| dedup.contains(key) || staged.contains(&key);
            let sequence_of = |session: &str| take_sequence(next_sequence, session);
            stamps.append_record(&mut event, &request, timestamp(now), out, is_retry, sequence_of)
        });
        let Some((offset, RecordMessage { key, sequence, len: encoded_len })) = staged else {
            metrics::counter!("jimbus_events_duplicate_total").increment(1);
            return ItemOutcome::Duplicate;
        };
        count_topic(&mut self.topics, topic);
        if let Some(key) = key {
            keys.push((key, offset));
        }
        self.fresh.push(StoredEvent { sequence, event, request, encoded_len });
        ItemOutcome::Stored { partition: self.id as u32, offset }
    }

    /// Stages one record of `kind` on `topic` whose message `encode` appends.
    fn stage_message(
        &mut self,
        kind: RecordKind,
        topic: &str,
        now: u64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> ItemOutcome {
        let staged = self.writer.stage_encoded(kind, topic, now, |out| {
            encode(out);
            Some(())
        });
        let (offset, ()) = staged.expect("a record whose encoding returns no `None` is always staged");
        count_topic(&mut self.topics, topic);
        ItemOutcome::Stored { partition: self.id as u32, offset }
    }
}

/// Counts one more record of `topic`, for ListTopics.
fn count_topic(topics: &mut RecentKeyMap<u64>, topic: &str) {
    *topics.get_or_insert(topic, || 0) += 1;
}

/// The next command, or `None` once `deadline` passes; an error when every sender is gone.
async fn recv_until(
    queue: &flume::Receiver<Command>,
    deadline: Option<Instant>,
) -> Result<Option<Command>, flume::RecvError> {
    let Some(deadline) = deadline else { return queue.recv_async().await.map(Some) };
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Ok(None)
    };
    futures_lite::future::or(async { queue.recv_async().await.map(Some) }, timer).await
}

/// The error that refuses what a failed write carried; a write that failed
/// for want of space also makes the server not ready until there is room.
fn write_failed(e: &dyn std::fmt::Display, out_of_space: bool) -> BusError {
    if out_of_space {
        crate::disk::note_full();
        BusError::Full(e.to_string())
    } else {
        BusError::Storage(e.to_string())
    }
}

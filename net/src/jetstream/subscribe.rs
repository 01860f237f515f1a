//! Subscriptions on the JetStream bus. An ephemeral subscription is an
//! ephemeral pull consumer (no acks, state in memory, one replica) read with
//! large pull batches; a durable one is a member of a named pull consumer with
//! explicit acks, whose deliveries stay pending in `acks` until acknowledged.
//! Each stored message becomes one [`EncodedDelivery`] whose body is the
//! payload as stored (never decoded) and whose `sequence` is the stream
//! sequence. Both loops reopen their consumer after a failure, until the
//! subscriber goes away; an ephemeral one resumes after the last stream
//! sequence it saw and reopens on any gap, so it never skips or reorders
//! messages. This module must never buffer deliveries beyond the pull batch
//! and the subscriber's flume channel: a slow subscriber makes it wait.

use super::acks::{self, Pending};
use super::{Shared, EVENT_SUBJECTS, KIND, STREAM};
use crate::bus::{BusError, ConsumerOptions, DeliverySender, Durable, Sent, Start};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use jimbus_core::topic::{self, Pattern};
use jimbus_proto::delivery::{BodyKind, EncodedDelivery};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Messages one pull request of an ephemeral subscription asks for; the next
/// request goes out when half are delivered, so up to one and a half batches
/// are on their way to this node.
const EPHEMERAL_BATCH: usize = 4_096;
/// Bytes one pull request may bring, bounding a subscriber's buffer in bytes.
const EPHEMERAL_BATCH_BYTES: usize = 4 << 20;
/// The largest pull batch of a durable member (its `max_in_flight` bounds it too).
const DURABLE_BATCH: usize = 1_024;
/// Idle heartbeat of pull requests: a missed one reopens the consumer.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps an ephemeral consumer nobody pulls from.
const INACTIVE: Duration = Duration::from_secs(10);
/// The most messages taken from the consumer at once, when they are already
/// there, before their deliveries go to the subscriber's channel together.
const READY_CHUNK: usize = 256;
/// Pause before reopening a failed consumer.
const RETRY: Duration = Duration::from_millis(500);

/// JetStream consumer names may not hold subject or path separators.
pub(super) fn check_consumer_name(name: &str) -> Result<(), BusError> {
    let bad = name.is_empty() || name.chars().any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace());
    if bad {
        return Err(BusError::InvalidArgument(format!(
            "durable_name: {name:?} may not contain '.', '*', '>', slashes or whitespace on the JetStream bus"
        )));
    }
    Ok(())
}

/// The consumer filter of a jimbus pattern. `>` is the whole stream, and so
/// is [`EVENT_SUBJECTS`] (`balatro.>`, the usual subscription): the stream's
/// one other subject is `deadletter`, whose rare messages the pattern check
/// drops here, while NATS serves a consumer with a wildcard filter at a third
/// of the speed (one subscriber reading back 1 M events: 157–159 K/s with the
/// filter, 387–415 K/s without; nats-server's CPU 6.7–7.1 s against 1.7–1.9 s;
/// docs/perf.md).
fn filter_of(pattern: &Pattern) -> String {
    let text = pattern.subject();
    if text == ">" || text == EVENT_SUBJECTS {
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
/// sequence; the payload is handed on as stored (a reference, not a copy).
fn delivery(message: &async_nats::Message, sequence: u64, delivered: u32) -> EncodedDelivery {
    let subject = message.subject.as_str();
    let kind = match message.headers.as_ref().and_then(|h| h.get(KIND)).map(|v| v.as_str()) {
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
async fn gone(out: &DeliverySender) {
    while !out.is_disconnected() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `messages` until the subscriber goes away: one watch for the whole stream,
/// not a timer registered and cancelled per message.
fn until_gone<'a, S: futures_util::Stream + 'a>(
    messages: S,
    out: &'a DeliverySender,
) -> impl futures_util::Stream<Item = S::Item> + 'a {
    messages.take_until(gone(out))
}

/// Waits before reopening a consumer, unless the subscriber leaves first.
async fn pause(out: &DeliverySender) {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => {}
        _ = gone(out) => {}
    }
}

/// Where an ephemeral subscription stands, across the consumers it opens.
struct Cursor {
    /// Where the next consumer starts: after the last stream sequence seen.
    start: Start,
    /// The last consumer sequence of the current consumer (a gap reopens it).
    consumer_sequence: u64,
    /// Caught up once: lag counts from then on, as on the embedded log.
    live: bool,
}

impl Cursor {
    /// Turns a chunk of one consumer's messages into `deliveries`, in order;
    /// false when the consumer failed or skipped a sequence (what came before
    /// is still delivered, and the next consumer starts after it).
    fn take(&mut self, chunk: Vec<Messages>, pattern: &Pattern, deliveries: &mut Vec<EncodedDelivery>) -> bool {
        let mut sampled = false;
        for next in chunk {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "ephemeral subscription interrupted; resuming");
                    return false;
                }
            };
            let Ok(info) = message.info() else { continue };
            if info.consumer_sequence != self.consumer_sequence + 1 {
                tracing::warn!(expected = self.consumer_sequence + 1, got = info.consumer_sequence, "gap; resuming");
                return false;
            }
            let (sequence, published, pending) = (info.stream_sequence, info.published, info.pending);
            self.consumer_sequence = info.consumer_sequence;
            self.start = Start::Offset(sequence + 1);
            if !pattern.matches(&message.subject) {
                continue; // excluded: the consumer filter cannot say so
            }
            deliveries.push(delivery(&message.message, sequence, 1));
            if self.live && !sampled {
                // One lag sample per chunk, not per message, as on the embedded log.
                crate::observe::delivered((published.unix_timestamp_nanos() / 1000).max(0) as u64);
                sampled = true;
            }
            self.live |= pending == 0;
        }
        true
    }
}

/// One item of a pull consumer's message stream.
type Messages = Result<jetstream::Message, pull::MessagesError>;

/// An ephemeral subscription: an ephemeral pull consumer, reopened after the
/// last sequence delivered whenever it fails, until the subscriber goes away.
pub(super) async fn ephemeral(shared: Arc<Shared>, pattern: Pattern, start: Start, out: DeliverySender) {
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    let mut cursor = Cursor { start, consumer_sequence: 0, live: matches!(start, Start::Latest) };
    while !out.is_disconnected() {
        match ephemeral_messages(&shared, &pattern, cursor.start).await {
            Ok((stream, name, messages)) => {
                cursor.consumer_sequence = 0;
                forward(messages, &pattern, &out, &mut cursor).await;
                // The server would drop it after `INACTIVE`; free it now.
                let _ = stream.delete_consumer(&name).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot open an ephemeral subscription yet"),
        }
        pause(&out).await;
    }
    metrics::gauge!("jimbus_subscriptions").decrement(1.0);
}

/// Forwards one consumer's messages to the subscriber, in order, until it
/// fails, skips a consumer sequence, or the subscriber goes away. Messages
/// that arrived together are converted, then sent together, so the edge wakes
/// once per chunk rather than once per message.
async fn forward(messages: pull::Stream, pattern: &Pattern, out: &DeliverySender, cursor: &mut Cursor) {
    let mut chunks = std::pin::pin!(until_gone(messages, out).ready_chunks(READY_CHUNK));
    let mut deliveries = Vec::with_capacity(READY_CHUNK);
    while let Some(chunk) = chunks.next().await {
        let healthy = cursor.take(chunk, pattern, &mut deliveries);
        if !send_all(out, &mut deliveries).await || !healthy {
            return;
        }
    }
}

/// Opens an ephemeral pull consumer at `start` and its message stream; also
/// returns the stream and the consumer's name, to delete it when done.
async fn ephemeral_messages(
    shared: &Shared,
    pattern: &Pattern,
    start: Start,
) -> Result<(stream::Stream, String, pull::Stream), async_nats::Error> {
    let stream = shared.js.get_stream(STREAM).await?;
    let config = pull::Config {
        filter_subject: filter_of(pattern),
        deliver_policy: deliver_policy(start),
        ack_policy: AckPolicy::None,
        inactive_threshold: INACTIVE,
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await?;
    let name = consumer.cached_info().name.clone();
    let messages = consumer
        .stream()
        .max_messages_per_batch(EPHEMERAL_BATCH)
        .max_bytes_per_batch(EPHEMERAL_BATCH_BYTES)
        .heartbeat(HEARTBEAT)
        .messages()
        .await?;
    Ok((stream, name, messages))
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
pub(super) async fn durable_member(
    shared: Arc<Shared>,
    durable: Durable,
    pattern: Pattern,
    start: Start,
    out: DeliverySender,
) {
    let member = shared.next_member.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("jimbus_subscriptions").increment(1.0);
    acks::watch_max_deliveries(&shared, &durable.name).await;
    let batch = durable.options.max_in_flight.clamp(1, DURABLE_BATCH);
    while !out.is_disconnected() {
        match durable_messages(&shared, &durable, &pattern, start, batch).await {
            Ok(messages) => {
                let mut chunks = std::pin::pin!(until_gone(messages, &out).ready_chunks(READY_CHUNK));
                let mut deliveries = Vec::with_capacity(READY_CHUNK);
                while let Some(chunk) = chunks.next().await {
                    hold_chunk(&shared, &durable.name, member, &pattern, chunk, &mut deliveries).await;
                    if !send_all(&out, &mut deliveries).await {
                        break;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, consumer = %durable.name, "cannot open the durable consumer yet"),
        }
        pause(&out).await;
    }
    acks::give_back(&shared, &durable.name, member).await;
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
    Ok(consumer.stream().max_messages_per_batch(batch).heartbeat(HEARTBEAT).messages().await?)
}

/// Records each delivery of a chunk of a durable consumer's messages as
/// pending (before the subscriber can see it, so that its ack finds it) and
/// adds it to `deliveries`; acks at once what the pattern excludes.
async fn hold_chunk(
    shared: &Shared,
    name: &str,
    member: u64,
    pattern: &Pattern,
    chunk: Vec<Messages>,
    deliveries: &mut Vec<EncodedDelivery>,
) {
    for next in chunk {
        let message = match next {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!(error = %e, consumer = name, "pull interrupted");
                continue;
            }
        };
        if !pattern.matches(&message.subject) {
            // Excluded by the pattern: done for this consumer.
            let _ = message.ack().await;
            continue;
        }
        let Ok((sequence, delivered)) = message.info().map(|i| (i.stream_sequence, i.delivered.max(1) as u32)) else {
            continue;
        };
        deliveries.push(delivery(&message.message, sequence, delivered));
        acks::hold(shared, name, sequence, Pending { message, member });
    }
}

/// Sends and empties `deliveries`, as batches; false when the subscriber is
/// gone. Deliveries past the room's share wait for it whole: they are
/// messages the NATS client holds anyway, so they are kept, not read again.
async fn send_all(out: &DeliverySender, deliveries: &mut Vec<EncodedDelivery>) -> bool {
    let (mut batch, mut reserved) = (std::mem::take(deliveries), None);
    loop {
        match out.send(batch, reserved.take()).await {
            Sent::Queued => return true,
            Sent::Gone => return false,
            Sent::Deferred(back) => {
                reserved = out.reserve(&back).await;
                batch = back;
            }
        }
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
        assert_eq!(filter_of(&Pattern::parse("balatro.>").unwrap()), "");
        assert_eq!(filter_of(&Pattern::parse("balatro.> -balatro.*.aggregated").unwrap()), "");
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
    fn a_delivery_names_its_kind_and_keeps_the_payload() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(KIND, "aggregated");
        let message = async_nats::Message {
            subject: "balatro.s.aggregated".into(),
            reply: None,
            payload: bytes::Bytes::from_static(b"body"),
            headers: Some(headers),
            status: None,
            description: None,
            length: 4,
        };
        let delivery = delivery(&message, 7, 2);
        assert_eq!(delivery.kind, BodyKind::Aggregated);
        assert_eq!((delivery.offset, delivery.delivery_count, delivery.sequence_override), (7, 2, None));
        assert_eq!(&delivery.topic[..], b"balatro.s.aggregated");
        assert_eq!(delivery.body.as_ptr(), message.payload.as_ptr(), "the payload is not copied");
    }
}

//! Acknowledgements on the JetStream bus: per durable consumer, the
//! deliveries this node handed out and has not yet seen acknowledged (an ack
//! must reach the JetStream message it names), acks confirmed by JetStream
//! (double ack), the hand-back (nak) of what a leaving group member held, and
//! the max-deliveries advisories that move an exhausted message to the
//! `deadletter` topic. It must never count an ack as done before JetStream
//! confirmed it, and never drop a pending delivery whose ack failed (the
//! client's retry must still find it).

use super::{Shared, KIND, STREAM};
use crate::bus::BusError;
use crate::lock::lock;
use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::StreamExt;
use jimbus_core::topic;
use jimbus_proto::bus;
use prost::Message as _;
use std::sync::Arc;

/// One delivery of a durable consumer that this node handed out, until acked.
pub(super) struct Pending {
    /// The JetStream message, whose reply subject the ack goes to.
    pub(super) message: jetstream::Message,
    /// The subscriber it went to, so its leaving can give the message back.
    pub(super) member: u64,
}

/// Records a delivery of consumer `name` as pending under its stream `sequence`.
pub(super) fn hold(shared: &Shared, name: &str, sequence: u64, pending: Pending) {
    let mut by_name = lock(&shared.pending);
    // The name is allocated once per consumer, not once per delivery.
    match by_name.get_mut(name) {
        Some(by_sequence) => {
            by_sequence.insert(sequence, pending);
        }
        None => {
            by_name.entry(name.to_string()).or_default().insert(sequence, pending);
        }
    }
}

/// Naks what `member` held unacked, so the group redelivers it at once.
pub(super) async fn give_back(shared: &Shared, name: &str, member: u64) {
    let held: Vec<jetstream::Message> = {
        let mut pending = lock(&shared.pending);
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
pub(super) async fn ack_positions(
    shared: Arc<Shared>,
    name: String,
    positions: Vec<(u32, u64)>,
) -> Result<u32, BusError> {
    if let Some((partition, _)) = positions.iter().find(|(p, _)| *p != 0) {
        return Err(BusError::InvalidArgument(format!("positions: partition {partition} does not exist")));
    }
    let taken: Vec<(u64, Pending)> = {
        let mut pending = lock(&shared.pending);
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
        lock(&shared.pending).entry(name).or_default().extend(back);
        return Err(BusError::Storage(format!("acks not confirmed by JetStream: {reason}")));
    }
    Ok(acked)
}

/// The advisory JetStream sends when a message was delivered `max_deliver`
/// times without an ack.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    /// The exhausted message's stream sequence.
    stream_seq: u64,
    /// How many times it was delivered.
    deliveries: u64,
}

/// Subscribes (once per node and consumer) to the max-deliveries advisories of
/// `name` and moves each exhausted message to `deadletter`; starts the
/// consumer's backlog gauges with it. Every node watching publishes the same
/// letter under the same `Nats-Msg-Id`, so it is stored once.
pub(super) async fn watch_max_deliveries(shared: &Arc<Shared>, name: &str) {
    if !lock(&shared.watched).insert(name.to_string()) {
        return;
    }
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{name}");
    let mut advisories = match shared.client.subscribe(subject).await {
        Ok(subscriber) => subscriber,
        Err(e) => {
            tracing::error!(error = %e, consumer = name, "cannot watch max-deliveries advisories");
            lock(&shared.watched).remove(name);
            return;
        }
    };
    let (shared, name) = (shared.clone(), name.to_string());
    tokio::spawn(super::observe::watch_jetstream_consumer(shared.js.clone(), STREAM, name.clone()));
    tokio::spawn(async move {
        while let Some(advisory) = advisories.next().await {
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else { continue };
            dead_letter(&shared, &name, advisory).await;
        }
    });
}

/// Stores the exhausted message of `advisory` on `deadletter` (a dead letter
/// itself is never dead-lettered again).
async fn dead_letter(shared: &Shared, name: &str, advisory: MaxDeliveries) {
    let held = lock(&shared.pending).get_mut(name).and_then(|p| p.remove(&advisory.stream_seq));
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

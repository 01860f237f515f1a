//! Publishing on the JetStream bus: each append item becomes one message on
//! its topic's subject (events keyed by their client content as
//! `Nats-Msg-Id`, so the stream's duplicate window deduplicates retries), all
//! of a request's publishes in flight together. A request resolves only once
//! JetStream acknowledged every item, and any failure fails the whole request
//! (the client retries, and the duplicate window absorbs what was stored).
//! Acknowledged events go on to aggregation in publish order. This module must
//! never answer an item as stored before JetStream's ack says so.

use super::{Shared, KIND};
use crate::bus::{AppendItem, BusError, ItemOutcome};
use crate::clock::{now_micros, timestamp};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use jimbus_core::stamps::client_key;
use jimbus_core::topic;
use jimbus_proto::events as pb;
use prost::Message as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The subject, headers and payload of one item.
fn outbound(item: &mut AppendItem) -> (String, PublishMessage) {
    let now = now_micros();
    match item {
        AppendItem::Event(event, request) => {
            let key = client_key(event);
            // Each message is a whole event: the request's stamps go into it.
            request.apply(event);
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

fn publish_error(e: &PublishError) -> BusError {
    metrics::counter!("jimbus_bus_publish_failures_total").increment(1);
    tracing::warn!(error = %e, "JetStream publish failed");
    match e.kind() {
        PublishErrorKind::MaxAckPending => BusError::Overloaded,
        _ if is_out_of_storage(e) => BusError::Full(e.to_string()),
        _ => BusError::Storage(e.to_string()),
    }
}

/// Whether JetStream refused the message for want of storage: its servers' or
/// account's file store is spent.
fn is_out_of_storage(e: &PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    let Some(refusal) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
    else {
        return false;
    };
    let full = [
        ErrorCode::STORAGE_RESOURCES_EXCEEDED,
        ErrorCode::INSUFFICIENT_RESOURCES,
        ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
    ];
    full.contains(&refusal.error_code())
}

/// Publishes every item with all acks in flight together, then waits for
/// each. The items come back with the outcome, whatever it is, so that their
/// events are freed (or kept as spares) by the thread that decoded them, not
/// by the NATS runtime's.
pub(super) async fn publish_all(
    shared: Arc<Shared>,
    mut items: Vec<AppendItem>,
) -> (Result<Vec<ItemOutcome>, BusError>, Vec<AppendItem>) {
    let outcomes = publish_items(&shared, &mut items).await;
    (outcomes, items)
}

async fn publish_items(shared: &Shared, items: &mut [AppendItem]) -> Result<Vec<ItemOutcome>, BusError> {
    let count = items.len();
    let _in_flight = InFlight::new(shared, count);
    let mut acks = Vec::with_capacity(count);
    for item in items.iter_mut() {
        let (subject, message) = outbound(item);
        let ack = shared.js.send_publish(subject, message).await.map_err(|e| publish_error(&e))?;
        acks.push(ack);
    }
    let mut outcomes = Vec::with_capacity(count);
    for ack in acks {
        let ack = ack.await.map_err(|e| publish_error(&e))?;
        outcomes.push(if ack.duplicate {
            metrics::counter!("jimbus_events_duplicate_total").increment(1);
            ItemOutcome::Duplicate
        } else {
            ItemOutcome::Stored { partition: 0, offset: ack.sequence }
        });
    }
    let mut stored: Vec<(u64, &mut pb::Event)> = items
        .iter_mut()
        .zip(&outcomes)
        .filter_map(|(item, outcome)| match (item, outcome) {
            (AppendItem::Event(event, _), ItemOutcome::Stored { offset, .. }) => Some((*offset, &mut **event)),
            _ => None,
        })
        .collect();
    shared.aggregation.offer(&mut stored);
    Ok(outcomes)
}

/// Counts a request's events as in flight until it is answered.
struct InFlight<'a> {
    /// Whose counter this holds.
    shared: &'a Shared,
    /// How many events it added, and takes back on drop.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_keyed_by_its_client_content_and_stamped() {
        let event = pb::Event {
            event_id: "e-1".into(),
            session_id: "s".into(),
            event_type: "HEARTBEAT".into(),
            ..Default::default()
        };
        let request = jimbus_core::stamps::RequestStamps {
            correlation_id: "req-1".into(),
            received_at: timestamp(5_000_000),
            batch_id: "b-1".into(),
        };
        let (subject, message) = outbound(&mut AppendItem::Event(Box::new(event.clone()), Arc::new(request)));
        assert_eq!(subject, "balatro.s.HEARTBEAT");
        let outbound = message.outbound_message(subject);
        let headers = outbound.headers.unwrap();
        let id = headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        assert_eq!(id, format!("{:032x}", client_key(&mut event.clone()).unwrap()));
        let stored = pb::Event::decode(outbound.payload).unwrap();
        assert_eq!(stored.correlation_id, "req-1");
        assert_eq!(stored.metadata.get("batch_id").map(String::as_str), Some("b-1"));
        let timing = stored.timing.unwrap();
        assert!(timing.published_at.is_some());
        assert_eq!(timing.received_at, Some(timestamp(5_000_000)));
    }
}

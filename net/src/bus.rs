//! The bus interface: what the HTTP and gRPC edges need from a durable event
//! bus (append, subscribe, ack, and topic/position queries), and nothing of how
//! a backend stores it.
//!
//! The embedded log ([`crate::embedded::ShardRouter`]) implements [`Bus`]; a
//! second backend (NATS JetStream) can take its place without the edges
//! changing. Positions are (partition, offset) pairs, which every partitioned
//! log has. Futures are `Send` and deliveries arrive on a bounded flume channel,
//! so either runtime (glommio shards, the tokio edge) can drive them. This
//! module must never name a segment, a shard's pump or any other backend type.

use jimbus_core::stamps::RequestStamps;
use jimbus_core::topic::Pattern;
use jimbus_proto::bus;
use jimbus_proto::delivery::EncodedDelivery;
use jimbus_proto::events as pb;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One thing to append.
#[derive(Debug)]
pub enum AppendItem {
    /// A client event whose `session_id` is set, and the stamps of the request
    /// that carried it, shared with the request's other events; the bus
    /// assigns its sequence and stores it stamped.
    Event(Box<pb::Event>, Arc<RequestStamps>),
    /// Something that could not be accepted, kept on `deadletter`.
    DeadLetter(Box<bus::DeadLetter>),
}

impl AppendItem {
    /// The session whose order this item belongs to (dead letters may have none).
    pub fn session(&self) -> &str {
        match self {
            AppendItem::Event(event, _) => &event.session_id,
            AppendItem::DeadLetter(letter) => &letter.session_id,
        }
    }
}

/// What happened to one appended item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    Stored {
        partition: u32,
        offset: u64,
    },
    /// Already stored (a retry): acknowledged, not stored again.
    Duplicate,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// No room right now: shed load and let the client retry.
    #[error("the bus is overloaded, retry later")]
    Overloaded,
    #[error("the bus could not make the events durable: {0}")]
    Storage(String),
    #[error("the bus is shutting down")]
    Stopped,
    #[error("{0}")]
    InvalidArgument(String),
    /// A limit of the server is reached (e.g. its number of durable consumers).
    #[error("{0}")]
    Exhausted(String),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Latest,
    Earliest,
    Offset(u64),
    TimeMicros(u64),
}

/// Flow-control settings of a durable consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsumerOptions {
    pub max_in_flight: usize,
    pub ack_wait_ms: u64,
    pub max_deliver: u32,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self { max_in_flight: 1000, ack_wait_ms: 30_000, max_deliver: 5 }
    }
}

/// A named subscription's identity and flow control.
#[derive(Debug, Clone)]
pub struct Durable {
    pub name: String,
    pub options: ConsumerOptions,
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub pattern: Pattern,
    pub start: Start,
    pub durable: Option<Durable>,
    /// Deliveries buffered before the bus waits for the subscriber.
    pub buffer: usize,
}

/// Deliveries handed to a subscriber together: one message on its channel,
/// so a subscriber's task wakes once per batch, not once per record.
pub type DeliveryBatch = Vec<EncodedDelivery>;

/// The most deliveries in one batch.
pub const MAX_DELIVERY_BATCH: usize = 256;

/// The sending end of a subscription's channel. It cuts what it is given into
/// batches of at most its limit, and the channel holds whole batches worth
/// about the subscription's buffer, so a slow subscriber holds up its
/// producers (flow control) with a bounded number of deliveries queued.
#[derive(Clone)]
pub struct DeliverySender {
    tx: flume::Sender<DeliveryBatch>,
    /// The most deliveries per batch.
    limit: usize,
}

/// A subscription's channel for `buffer` deliveries: batches of at most
/// `buffer` (up to [`MAX_DELIVERY_BATCH`]), and room for as many as make `buffer`.
pub fn delivery_channel(buffer: usize) -> (DeliverySender, flume::Receiver<DeliveryBatch>) {
    let limit = buffer.clamp(1, MAX_DELIVERY_BATCH);
    let (tx, rx) = flume::bounded(buffer.max(1).div_ceil(limit));
    (DeliverySender { tx, limit }, rx)
}

impl DeliverySender {
    /// Sends `deliveries` in order, in batches, waiting for room; false once
    /// the subscriber is gone.
    pub async fn send(&self, mut deliveries: DeliveryBatch) -> bool {
        while deliveries.len() > self.limit {
            let rest = deliveries.split_off(self.limit);
            if self.tx.send_async(deliveries).await.is_err() {
                return false;
            }
            deliveries = rest;
        }
        deliveries.is_empty() || self.tx.send_async(deliveries).await.is_ok()
    }

    /// Whether the subscriber has gone away.
    pub fn is_disconnected(&self) -> bool {
        self.tx.is_disconnected()
    }

    /// Whether `other` sends to the same subscriber.
    pub fn same_subscriber(&self, other: &DeliverySender) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

pub type BusFuture<T> = Pin<Box<dyn Future<Output = Result<T, BusError>> + Send>>;

pub trait Bus: Send + Sync + 'static {
    /// Starts appending `items` without waiting for room, for callers that shed
    /// load at once (HTTP). The future resolves, with one outcome per item in
    /// order, once every item is durable.
    fn try_append(&self, items: Vec<AppendItem>) -> Result<BusFuture<Vec<ItemOutcome>>, BusError>;

    /// Queues `items`, waiting for room (gRPC publishers, whose stream flow
    /// control then pushes back). Resolves once they are queued to the future
    /// of their outcomes, which resolves once every item is durable. A caller
    /// may queue more before awaiting that future: the bus keeps the order of
    /// queueing.
    fn append(&self, items: Vec<AppendItem>) -> BusFuture<BusFuture<Vec<ItemOutcome>>>;

    /// Opens a subscription; deliveries arrive on the returned channel in
    /// batches (see [`delivery_channel`]), their bodies still encoded as stored.
    fn subscribe(&self, subscription: Subscription) -> Result<flume::Receiver<DeliveryBatch>, BusError>;

    /// Acknowledges positions of a durable consumer; resolves once persisted,
    /// with how many were newly acknowledged.
    fn ack(&self, durable: String, positions: Vec<(u32, u64)>) -> BusFuture<u32>;

    /// Every topic with its record count.
    fn topics(&self) -> BusFuture<Vec<(String, u64)>>;
}

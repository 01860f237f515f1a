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

use bytes::Bytes;
use jimbus_core::stamps::RequestStamps;
use jimbus_core::topic::Pattern;
use jimbus_proto::bus;
use jimbus_proto::delivery::EncodedDelivery;
use jimbus_proto::events as pb;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

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
    /// The log's disk (or the stream's storage) has no space left: nothing
    /// was stored, and the same request succeeds once space returns.
    #[error("the bus has no space left to store the events: {0}")]
    Full(String),
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
    /// Bytes of deliveries the subscriber may have queued or in hand before
    /// the bus waits for it ([`SUBSCRIBER_BYTES`] for gRPC).
    pub room: usize,
}

/// Deliveries' bytes with the subscriber's room they take, given back on drop.
struct Held {
    bytes: Vec<u8>,
    /// Set once the room is taken (after the copy, unless it was taken first).
    _room: Arc<OnceLock<tokio::sync::OwnedSemaphorePermit>>,
}

/// `deliveries` (of `bytes` topic and body bytes) as views of one copy of
/// them, with the slot for the room the copy will hold.
fn copied(
    mut deliveries: DeliveryBatch,
    bytes: usize,
) -> (DeliveryBatch, Arc<OnceLock<tokio::sync::OwnedSemaphorePermit>>) {
    let mut copy = Vec::with_capacity(bytes);
    for delivery in &deliveries {
        copy.extend_from_slice(&delivery.topic);
        copy.extend_from_slice(&delivery.body);
    }
    let room = Arc::new(OnceLock::new());
    let shared = Bytes::from_owner(Held { bytes: copy, _room: room.clone() });
    let mut at = 0;
    for delivery in &mut deliveries {
        let (topic, body) = (delivery.topic.len(), delivery.body.len());
        delivery.topic = shared.slice(at..at + topic);
        delivery.body = shared.slice(at + topic..at + topic + body);
        at += topic + body;
    }
    (deliveries, room)
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Deliveries handed to a subscriber together: one message on its channel,
/// so a subscriber's task wakes once per batch, not once per record.
pub type DeliveryBatch = Vec<EncodedDelivery>;

/// The most deliveries in one batch.
pub const MAX_DELIVERY_BATCH: usize = 256;

/// Bytes of deliveries one gRPC subscriber may have queued or in hand at
/// once, across all shards: past them its shards wait for it, so a stalled
/// subscriber holds no more (docs/tuning.md, "Subscriptions").
pub const SUBSCRIBER_BYTES: usize = 256 * 1024;

/// The sending end of a subscription's channel. It copies what it is given
/// into one buffer of its own, waits until the subscriber has room for its
/// bytes, and cuts it into batches of at most its limit; the channel holds
/// whole batches worth about the subscription's buffer, so a slow subscriber
/// holds up its producers (flow control) with bounded deliveries and bytes
/// queued.
#[derive(Clone)]
pub struct DeliverySender {
    tx: flume::Sender<DeliveryBatch>,
    /// The most deliveries per batch.
    limit: usize,
    /// The subscriber's room, in bytes, shared by every shard sending to it:
    /// a batch takes its bytes' worth (all of it, for more) and gives them
    /// back when the subscriber has dropped the last of it.
    room: Arc<tokio::sync::Semaphore>,
    /// The room's size.
    room_bytes: usize,
    /// Bytes of records one sender reads for this subscriber at a time: the
    /// room shared among its senders, since each holds its last read's copy
    /// while it waits for room.
    read_share: usize,
}

/// What became of the deliveries given to [`DeliverySender::send`].
#[derive(Debug)]
pub enum Sent {
    /// Queued for the subscriber, in order.
    Queued,
    /// Given back unsent and uncopied: they are past the sender's read share
    /// (one record larger than it) and the subscriber's room for them is not
    /// free now. A shard drops them, waits for the room with
    /// [`DeliverySender::reserve`] holding nothing, then reads them again.
    Deferred(DeliveryBatch),
    /// The subscriber has gone away.
    Gone,
}

/// The subscriber's room for a read past the read share, taken before the
/// read ([`DeliverySender::reserve`]) and given to [`DeliverySender::send`].
pub struct Reserved(tokio::sync::OwnedSemaphorePermit);

/// A subscription's channel for `buffer` deliveries of at most `room` bytes
/// from `senders` senders (one per shard): batches of at most `buffer` (up
/// to [`MAX_DELIVERY_BATCH`]), and room for as many as make `buffer`.
pub fn delivery_channel(
    buffer: usize,
    room: usize,
    senders: usize,
) -> (DeliverySender, flume::Receiver<DeliveryBatch>) {
    let limit = buffer.clamp(1, MAX_DELIVERY_BATCH);
    let (tx, rx) = flume::bounded(buffer.max(1).div_ceil(limit));
    let room_bytes = room.max(1);
    let sender = DeliverySender {
        tx,
        limit,
        room: Arc::new(tokio::sync::Semaphore::new(room_bytes)),
        room_bytes,
        read_share: read_share(room_bytes, senders),
    };
    (sender, rx)
}

/// One [`DeliverySender::send`] holding its copy until the subscriber takes
/// it, counted in `jimbus_subscriber_sends_waiting`: a count that stays high
/// says slow subscribers are holding their shards' reads.
struct SendUnderWay(metrics::Gauge);

impl SendUnderWay {
    fn start() -> Self {
        let gauge = metrics::gauge!("jimbus_subscriber_sends_waiting");
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for SendUnderWay {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The topic and body bytes of `deliveries`, which their copy holds.
fn bytes_of(deliveries: &DeliveryBatch) -> usize {
    deliveries.iter().map(|d| d.topic.len() + d.body.len()).sum()
}

/// Bytes of records each of `senders` reads for one subscriber of `room`
/// bytes at once (at least one record): the room shared among them, so that
/// what they hold while they wait for it is about `room` however many they are.
pub fn read_share(room: usize, senders: usize) -> usize {
    room / senders.max(1)
}

impl DeliverySender {
    /// Bytes of records a sender reads for this subscriber at once ([`read_share`]).
    pub fn read_share(&self) -> usize {
        self.read_share
    }

    /// Sends `deliveries` in order, in batches, waiting for room.
    ///
    /// They are first copied into one buffer of their own, so that they no
    /// longer pin what they were read from (a shard's commit buffer, or a
    /// read of the log); then the subscriber's room for their bytes is taken
    /// (all of it for more than that), held by the buffer until the
    /// subscriber drops the last of them.
    ///
    /// Deliveries past the read share (a read takes at least one record,
    /// however large) are copied only once their room is taken: `reserved`
    /// for them, or room free now, else they are [`Sent::Deferred`]. Waiting
    /// with such a copy would let every shard hold one record for each
    /// stalled subscriber, outside its grant.
    pub async fn send(&self, deliveries: DeliveryBatch, reserved: Option<Reserved>) -> Sent {
        let bytes = bytes_of(&deliveries);
        let want = bytes.min(self.room_bytes) as u32;
        let taken = match reserved.filter(|r| r.0.num_permits() >= want as usize) {
            Some(Reserved(permit)) => Some(permit),
            None if bytes > self.read_share => match self.room.clone().try_acquire_many_owned(want) {
                Ok(permit) => Some(permit),
                Err(_) => return Sent::Deferred(deliveries),
            },
            None => None,
        };
        let (mut deliveries, room) = copied(deliveries, bytes);
        let _under_way = SendUnderWay::start();
        let taken = match taken {
            Some(permit) => permit,
            // Closed only when dropped: it cannot fail while `self` holds it.
            None => match self.room.clone().acquire_many_owned(want).await {
                Ok(permit) => permit,
                Err(_) => return Sent::Gone,
            },
        };
        // Set once, by this call alone.
        let _ = room.set(taken);
        while deliveries.len() > self.limit {
            let rest = deliveries.split_off(self.limit);
            if self.tx.send_async(deliveries).await.is_err() {
                return Sent::Gone;
            }
            deliveries = rest;
        }
        if deliveries.is_empty() || self.tx.send_async(deliveries).await.is_ok() {
            Sent::Queued
        } else {
            Sent::Gone
        }
    }

    /// Waits until the subscriber has room for `deliveries` (all of it for
    /// more), and takes it for the next [`Self::send`] of them: after a
    /// [`Sent::Deferred`]. The future does not borrow them, so a shard drops
    /// them first and waits holding nothing. Waiters are served in turn, so
    /// a large read is not put off for ever by smaller ones.
    pub fn reserve(&self, deliveries: &DeliveryBatch) -> impl Future<Output = Option<Reserved>> + use<> {
        self.reserve_bytes(bytes_of(deliveries))
    }

    /// [`Self::reserve`] for `bytes` not yet read. Each wait is counted in
    /// `jimbus_subscriber_reads_deferred_total`.
    pub fn reserve_bytes(&self, bytes: usize) -> impl Future<Output = Option<Reserved>> + use<> {
        metrics::counter!("jimbus_subscriber_reads_deferred_total").increment(1);
        let want = bytes.min(self.room_bytes) as u32;
        let room = self.room.clone();
        async move { room.acquire_many_owned(want).await.ok().map(Reserved) }
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
    /// load at once (HTTP); a refusal means that none of them was taken. The
    /// future resolves, with one outcome per item in order, once every item
    /// is durable.
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    /// `count` deliveries of `bytes` body bytes each, viewing one shared buffer.
    fn deliveries(count: usize, bytes: usize) -> DeliveryBatch {
        let read = Bytes::from(vec![7u8; count * bytes]);
        (0..count)
            .map(|i| EncodedDelivery { body: read.slice(i * bytes..(i + 1) * bytes), ..Default::default() })
            .collect()
    }

    #[test]
    fn a_stalled_subscriber_holds_its_room_and_no_more() {
        let (sender, receiver) = delivery_channel(1024, SUBSCRIBER_BYTES, 1);
        let third = SUBSCRIBER_BYTES / 3;
        block_on(async {
            assert!(matches!(sender.send(deliveries(1, third), None).await, Sent::Queued));
            assert!(matches!(sender.send(deliveries(1, third), None).await, Sent::Queued));
            // A third batch would pass the room: it waits for the subscriber.
            let mut waiting = Box::pin(sender.send(deliveries(2, third / 2 + 2), None));
            assert!(poll_once(&mut waiting).await.is_none(), "the room is spent");
            let taken = receiver.recv_async().await.unwrap();
            assert!(poll_once(&mut waiting).await.is_none(), "a batch taken but still held keeps its room");
            drop(taken);
            assert!(matches!(poll_once(&mut waiting).await, Some(Sent::Queued)), "a batch dropped gives its room back");
        });
    }

    #[test]
    fn deliveries_are_copied_and_pin_nothing_they_were_read_from() {
        let (sender, receiver) = delivery_channel(16, SUBSCRIBER_BYTES, 1);
        let read = Bytes::from(vec![1u8; 4096]);
        let delivery = EncodedDelivery { topic: read.slice(0..5), body: read.slice(5..105), ..Default::default() };
        let the_read = read.clone();
        drop(read);
        assert!(matches!(block_on(sender.send(vec![delivery], None)), Sent::Queued));
        let got = receiver.try_recv().unwrap();
        assert_eq!((got[0].topic.len(), got[0].body.len()), (5, 100));
        // The read's buffer is now held by `the_read` alone.
        assert!(the_read.is_unique(), "the delivery still pins the read it came from");
        drop(got);
        // A batch larger than the room takes all of it, and still goes.
        assert!(matches!(block_on(sender.send(deliveries(1, SUBSCRIBER_BYTES + 1), None)), Sent::Queued));
    }

    #[test]
    fn a_read_past_the_share_is_copied_only_with_its_room_taken() {
        let (sender, receiver) = delivery_channel(16, SUBSCRIBER_BYTES, 4);
        let share = sender.read_share();
        block_on(async {
            let first = sender.send(deliveries(1, share * 3), None).await;
            assert!(matches!(first, Sent::Queued), "the room is free");
            let Sent::Deferred(past) = sender.send(deliveries(1, share * 2), None).await else {
                panic!("a read past the share was copied to wait for room")
            };
            assert!(past[0].body.is_unique(), "given back uncopied");
            let mut reserving = Box::pin(sender.reserve(&past));
            drop(past);
            assert!(poll_once(&mut reserving).await.is_none(), "the room is held by the first read");
            let mut within = Box::pin(sender.send(deliveries(1, share), None));
            assert!(poll_once(&mut within).await.is_none(), "a read within the share waits its turn");
            drop(receiver.recv_async().await.unwrap());
            let reserved = poll_once(&mut reserving).await.expect("the first reservation is served first");
            assert!(matches!(sender.send(deliveries(1, share * 2), reserved).await, Sent::Queued));
            assert_eq!(receiver.recv_async().await.unwrap()[0].body.len(), share * 2, "in order");
            assert!(matches!(poll_once(&mut within).await, Some(Sent::Queued)));
        });
    }
}

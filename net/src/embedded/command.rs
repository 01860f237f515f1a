//! What can be asked of a shard's pump: every change to a shard's state, from
//! any thread, is one of these commands on the shard's one queue, applied in
//! arrival order. The router sends them, the pump applies them; this module
//! only names them and must never act on one.

use super::consumer::{Assignment, Plan};
use crate::bus::{AppendItem, BusError, DeliverySender, Durable, ItemOutcome, Start};
use jimbus_core::stamps::RequestStamps;
use jimbus_core::topic::Pattern;
use jimbus_proto::events as pb;
use std::sync::Arc;

/// Where an append is answered: per item, in request order, once durable.
pub type AppendReply = flume::Sender<Result<Appended, BusError>>;

/// A durable append's answer.
pub struct Appended {
    /// Each item's outcome, in request order.
    pub outcomes: Vec<ItemOutcome>,
    /// The request's stored events, done with on the shard: they go back with
    /// the answer so that the thread that decoded (and allocated) them keeps
    /// them as its spares (`jimbus_core::spare_events`) or frees them. Freed
    /// on the shard instead, their memory went back to the decoding thread's
    /// allocator only lazily, and that thread kept taking fresh pages
    /// (docs/perf.md, "Third pass").
    pub spent: Vec<StoredEvent>,
}

/// An event the shard stored.
pub struct StoredEvent {
    /// Its place in its session.
    pub sequence: u64,
    /// The event, with its own stamps (not its request's).
    pub event: Box<pb::Event>,
    /// The stamps of the request that carried it.
    pub request: Arc<RequestStamps>,
    /// The length of its record's message, which bounds its payload's for
    /// aggregation's memory account.
    pub encoded_len: usize,
}

/// A request to a shard's pump.
pub enum Command {
    Append {
        items: Vec<AppendItem>,
        reply: AppendReply,
        /// Room for the request's stored events ([`Appended::spent`]), made
        /// by the thread that sends the command: the list comes back to that
        /// thread and is freed there, not across threads.
        spent: Vec<StoredEvent>,
    },
    /// Opens a subscription on this shard (joins or creates a durable consumer).
    Subscribe {
        pattern: Pattern,
        start: Start,
        durable: Option<Durable>,
        deliveries: DeliverySender,
    },
    /// Acknowledges offsets of a durable consumer; answered once the acks are on disk.
    Ack {
        name: String,
        offsets: Vec<u64>,
        reply: flume::Sender<Result<u32, BusError>>,
    },
    /// A durable consumer's delivery task, asking about its consumer (see [`ConsumerRequest`]).
    Consumer {
        name: String,
        /// The life of the name the task serves; a request for an earlier one finds nothing.
        incarnation: u64,
        request: ConsumerRequest,
    },
    ListTopics {
        reply: flume::Sender<Vec<(String, u64)>>,
    },
    /// Periodic housekeeping: age retention and idle consumers.
    Maintain,
    Shutdown {
        done: flume::Sender<()>,
    },
}

/// What a durable consumer's delivery task asks of the consumer's state.
pub enum ConsumerRequest {
    /// What to do next; `None` once the consumer is gone.
    Plan { reply: flume::Sender<Option<Plan>> },
    /// The records read in `from..to`, of which `matching` match the pattern;
    /// answered with those to send now.
    Offer { from: u64, to: u64, matching: Vec<u64>, reply: flume::Sender<Vec<Assignment>> },
    /// An exhausted delivery: dead-lettered durably, or to be sent again.
    Settle { offset: u64, count: u32, dead_lettered: bool },
}

//! The tonic edge: `jimbot.bus.v1.EventBusService`, gRPC health and reflection.
//!
//! It runs on its own small tokio runtime and reaches the bus only through the
//! [`Bus`] interface (flume queues to the glommio shards on the embedded log):
//! publishes are answered once durable, and each subscription is one bounded
//! flume channel (a slow subscriber waits, it is never buffered without bound). The request id
//! (`x-request-id` metadata, or a new one) stamps the events as on HTTP (see
//! [`crate::admit`]), names the request's log span, and is echoed in the response
//! metadata. This module must never hold shard state.

pub mod accept;
pub mod coordinator;
pub mod frames;
pub mod remote_budget;

use crate::admit;
use crate::bus::{
    Bus, BusError, BusFuture, ConsumerOptions, Durable, ItemOutcome, Start, Subscription, SUBSCRIBER_BYTES,
};
use crate::clock::{micros, now_micros};
use jimbus_core::budget::{self, Grant, MemoryBudget, StreamGrant, StreamGrants, StreamRefusal};
use jimbus_core::ingest::Envelope;
use jimbus_core::pools::PoolCapacity;
use jimbus_core::topic::Pattern;
use jimbus_proto::bus::{self, StartPosition};
use jimbus_proto::capped_ack::CappedAck;
use jimbus_proto::delivery::EncodedDelivery;
use jimbus_proto::delivery_server::event_bus_service_server::{EventBusService, EventBusServiceServer};
use jimbus_proto::encoded_events::EncodedEvents;
use jimbus_proto::events as pb;
use jimbus_proto::validate::Validate;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// PublishBatch requests of one stream queued on the bus and not yet durable.
const PUBLISH_PIPELINE: usize = 8;

/// Bytes of a stream's messages gathered, while its pipeline is full, into the
/// request queued next. Reading on while commits are pending keeps h2 from
/// buffering the stream's small DATA frames, whose framing overhead h2 caps
/// (its data frame budget, half the connection window) with GOAWAY
/// `too_many_data_frames`; past this bound the stream is not read and HTTP/2
/// flow control pushes back.
const GATHER_BYTES: usize = 8 << 20;

/// The HTTP/2 connection window of the gRPC port (see [`serve`]).
const GRPC_CONNECTION_WINDOW: u32 = 4 << 20;

/// A connection silent this long is pinged, and closed when the ping is not
/// answered within [`KEEPALIVE_TIMEOUT`]: a peer that vanished does not keep
/// its slot ([`accept`]), nor its subscriptions' share of the budget.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping of [`KEEPALIVE_INTERVAL`] waits for its answer.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Streams one gRPC connection may have open at once (h2 refuses more, and
/// clients queue them): twice the subscriptions the default budget allows.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Events in one Publish request or one PublishBatch message (the schema's
/// `max_items`), and in one request gathered from a stream.
const MAX_EVENTS: usize = jimbus_core::ingest::MAX_EVENTS;

/// A prost decode error (a string that is not UTF-8, a truncated field) is the
/// client's mistake: INVALID_ARGUMENT, where tonic says INTERNAL.
fn invalid_if_undecodable(status: Status) -> Status {
    if status.code() == tonic::Code::Internal && status.message().starts_with("failed to decode Protobuf message") {
        Status::invalid_argument(status.message().to_string())
    } else {
        status
    }
}

/// The same for requests tonic refuses before a handler runs: their status is
/// in the headers of a trailers-only response.
pub fn undecodable_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|v| v == "13")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").starts_with("failed to decode Protobuf message"));
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

/// RESOURCE_EXHAUSTED for a request the budget has no room for, counted in
/// `jimbus_budget_denials_total{component="grpc"}`.
fn refused_for_memory(message: impl Into<String>) -> Status {
    metrics::counter!("jimbus_budget_denials_total", "component" => "grpc").increment(1);
    Status::resource_exhausted(message)
}

fn check_count(events: &EncodedEvents) -> Result<(), Status> {
    if events.count() > MAX_EVENTS {
        return Err(Status::invalid_argument(format!("events: more than {MAX_EVENTS} in one request")));
    }
    Ok(())
}

/// Deliveries buffered per subscriber before its shard tasks wait.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Memory budget an open subscription holds for its life: its room for
/// deliveries queued or in hand ([`SUBSCRIBER_BYTES`]), and what each shard
/// holds while it waits for that room (the copy of its last read, of its
/// share of that room: [`crate::bus::read_share`]), with tonic's stream.
/// Measured for 170 stalled subscriptions replaying on 2 shards: about
/// 800 KB of RSS each; on 16 shards, 16 of them grew a server by 9 MiB
/// (docs/tuning.md, "Subscriptions").
pub const SUBSCRIPTION_GRANT: u64 = 4 * SUBSCRIBER_BYTES as u64;

/// The EventBusService over the shards.
pub struct BusService {
    bus: Arc<dyn Bus>,
    /// Published events are granted memory here until they are durable, and
    /// each open subscription [`SUBSCRIPTION_GRANT`] for its life.
    budget: Arc<MemoryBudget>,
    /// Subscriptions open, each holding [`SUBSCRIPTION_GRANT`] of `budget`:
    /// together at most half of it.
    subscriptions: StreamGrants,
}

/// Memory a publish holds per byte of its encoding: the request in tonic's
/// buffer while it is read, and its events' copy in `EncodedEvents`.
const HELD_PER_ENCODED_BYTE: u64 = 2;

/// Memory each decoded event's `Event` struct holds whatever its size on the
/// wire (an empty event is 2 bytes): three slots of the decoded list while it
/// grows (its old buffer and the new, twice as large), or two and its box.
/// What the event holds besides is `EncodedEvents::decoded_heap`.
const HELD_PER_EVENT: u64 = 3 * std::mem::size_of::<pb::Event>() as u64 + 256;

fn request_id<T>(request: &Request<T>) -> String {
    admit::request_id(request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()))
}

fn with_request_id<T>(mut response: Response<T>, id: &str) -> Response<T> {
    if let Ok(value) = id.parse() {
        response.metadata_mut().insert("x-request-id", value);
    }
    response
}

fn status_of(e: BusError) -> Status {
    match e {
        BusError::InvalidArgument(message) => Status::invalid_argument(message),
        BusError::Exhausted(message) => Status::resource_exhausted(message),
        // gRPC's code for a full file system, as its status codes say.
        full @ BusError::Full(_) => Status::resource_exhausted(crate::http::guard::redact_paths(&full.to_string())),
        other => Status::unavailable(crate::http::guard::redact_paths(&other.to_string())),
    }
}

/// A queued request's outcomes, and the memory its events hold until then.
struct Held {
    outcomes: BusFuture<Vec<ItemOutcome>>,
    /// The memory of the request's events, held until they are durable.
    _grant: Grant,
}

/// The outcome of publishing a list of events.
#[derive(Default)]
struct Published {
    accepted: u32,
    duplicates: u32,
    rejected: Vec<bus::Rejection>,
}

impl BusService {
    pub fn new(bus: Arc<dyn Bus>, budget: Arc<MemoryBudget>) -> Self {
        let subscriptions = StreamGrants::new(budget.clone(), SUBSCRIPTION_GRANT, u64::MAX);
        Self { bus, budget, subscriptions }
    }

    /// A subscription's grant, unless the open ones would hold more than
    /// half the budget (the rest stays for the mods' requests) or the budget
    /// has not that much free: RESOURCE_EXHAUSTED, to retry later.
    fn hold_subscription(&self) -> Result<StreamGrant, Status> {
        self.subscriptions.take().map_err(|refusal| {
            metrics::counter!("jimbus_grpc_subscriptions_refused_total").increment(1);
            Status::resource_exhausted(match refusal {
                StreamRefusal::TooMany => format!(
                    "too many subscriptions are open for the memory budget: each holds {SUBSCRIPTION_GRANT} bytes, \
                     and together at most half of it; retry later"
                ),
                // Only this one is the budget's denial, as for the live view's streams.
                StreamRefusal::BudgetSpent => {
                    metrics::counter!("jimbus_budget_denials_total", "component" => "subscription").increment(1);
                    budget::SPENT.to_string()
                }
            })
        })
    }

    /// Decodes a request's events once their number is checked and the
    /// memory they hold until they are durable is granted: too many is
    /// INVALID_ARGUMENT, and a spent budget RESOURCE_EXHAUSTED (the client
    /// retries), both before anything is decoded.
    fn decode_granted(&self, events: EncodedEvents) -> Result<(Vec<pb::Event>, Grant), Status> {
        check_count(&events)?;
        let encoded = prost::Message::encoded_len(&events) as u64;
        let want =
            encoded * HELD_PER_ENCODED_BYTE + events.count() as u64 * HELD_PER_EVENT + events.decoded_heap() as u64;
        let grant = self.budget.request(want, want).ok_or_else(|| {
            let limit = self.budget.limit();
            if want > limit {
                // A retry would never fit: the client must split the request.
                refused_for_memory(format!(
                    "the events take {want} bytes decoded, more than the server's whole memory budget \
                     ({limit}); send fewer at a time"
                ))
            } else {
                refused_for_memory(budget::SPENT)
            }
        })?;
        let decoded = events
            .decode_events()
            .map_err(|e| Status::invalid_argument(format!("failed to decode Protobuf message: {e}")))?;
        Ok((decoded, grant))
    }

    /// Validates and stamps events and queues the valid ones; `first_index`
    /// numbers them across a stream, and invalid ones go to `rejected`. Returns
    /// the future of the queued events' outcomes.
    async fn queue_events(
        &self,
        events: Vec<pb::Event>,
        correlation: &str,
        first_index: u32,
        rejected: &mut Vec<bus::Rejection>,
    ) -> Result<BusFuture<Vec<ItemOutcome>>, Status> {
        let envelope = Envelope::default();
        let admission = admit::Admission {
            request_id: correlation,
            received_us: now_micros(),
            peer: None,
            envelope: &envelope,
            entries: events.len(),
        };
        let entries = events.into_iter().enumerate().map(|(i, event)| admit::Entry {
            index: first_index as usize + i,
            event: Ok(Box::new(event)),
            raw: (),
            json_len: None,
        });
        let admitted = admit::admit(&admission, entries, |_, _, (), _| None);
        rejected.extend(admitted.rejected.into_iter().map(|(index, refusal)| {
            let (admit::Refusal::Invalid(error) | admit::Refusal::Undecodable(error)) = refusal;
            bus::Rejection { index: index as u32, error }
        }));
        self.bus.append(admitted.items).await.map_err(status_of)
    }
}

impl Published {
    /// Counts the outcomes of one queued request once they are durable.
    async fn settle(&mut self, outcomes: BusFuture<Vec<ItemOutcome>>) -> Result<(), Status> {
        self.count(outcomes.await)
    }

    /// Counts the outcomes of one request that has settled.
    fn count(&mut self, outcomes: Result<Vec<ItemOutcome>, BusError>) -> Result<(), Status> {
        let outcomes = outcomes.map_err(status_of)?;
        let stored = outcomes.iter().filter(|o| matches!(o, ItemOutcome::Stored { .. })).count() as u32;
        self.accepted += stored;
        self.duplicates += outcomes.len() as u32 - stored;
        metrics::counter!("jimbus_grpc_events_accepted_total").increment(u64::from(stored));
        Ok(())
    }
}

fn start_of(request: &bus::SubscribeRequest) -> Result<Start, Status> {
    Ok(match StartPosition::try_from(request.start).unwrap_or_default() {
        StartPosition::Unspecified | StartPosition::Latest => Start::Latest,
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Offset => Start::Offset(request.start_offset),
        StartPosition::Time => {
            let t = request
                .start_time
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("start_time: required for START_POSITION_TIME"))?;
            Start::TimeMicros(micros(t))
        }
    })
}

/// The durable consumer a request names, with its flow control (0 means default).
fn durable_of(request: &bus::SubscribeRequest) -> Option<Durable> {
    if request.durable_name.is_empty() {
        return None;
    }
    let defaults = ConsumerOptions::default();
    let ack_wait_ms =
        request.ack_wait.as_ref().map_or(0, |d| d.seconds.max(0) as u64 * 1000 + d.nanos.max(0) as u64 / 1_000_000);
    let options = ConsumerOptions {
        max_in_flight: if request.max_in_flight == 0 { defaults.max_in_flight } else { request.max_in_flight as usize },
        ack_wait_ms: if ack_wait_ms == 0 { defaults.ack_wait_ms } else { ack_wait_ms },
        max_deliver: if request.max_deliver == 0 { defaults.max_deliver } else { request.max_deliver },
    };
    Some(Durable { name: request.durable_name.clone(), options })
}

type DeliveryStream = Pin<Box<dyn Stream<Item = Result<EncodedDelivery, Status>> + Send>>;

#[tonic::async_trait]
impl EventBusService for BusService {
    async fn publish(&self, request: Request<EncodedEvents>) -> Result<Response<bus::PublishResponse>, Status> {
        let id = request_id(&request);
        let span = tracing::info_span!("publish", request_id = id.as_str());
        async {
            let mut out = Published::default();
            let (events, _grant) = self.decode_granted(request.into_inner())?;
            let outcomes = self.queue_events(events, &id, 0, &mut out.rejected).await?;
            out.settle(outcomes).await?;
            let response =
                bus::PublishResponse { accepted: out.accepted, duplicates: out.duplicates, rejected: out.rejected };
            Ok(with_request_id(Response::new(response), &id))
        }
        .instrument(span)
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<tonic::Streaming<EncodedEvents>>,
    ) -> Result<Response<bus::PublishBatchResponse>, Status> {
        let id = request_id(&request);
        let span = tracing::info_span!("publish_batch", request_id = id.as_str());
        async {
            let mut stream = request.into_inner();
            let mut out = Published::default();
            let mut index = 0u32;
            // Requests are queued in stream order while earlier ones are committed.
            // With PUBLISH_PIPELINE unsettled, messages go on being read into one
            // gathered request (see GATHER_BYTES), queued when a slot frees.
            let mut unsettled = std::collections::VecDeque::new();
            let mut gathered: Vec<pb::Event> = Vec::new();
            let mut gathered_grant: Option<Grant> = None;
            let mut gathered_bytes = 0;
            let mut ended = false;
            while !ended || !gathered.is_empty() {
                let full = unsettled.len() >= PUBLISH_PIPELINE;
                if !full && (!gathered.is_empty() || ended) {
                    let events = std::mem::take(&mut gathered);
                    gathered_bytes = 0;
                    let count = events.len() as u32;
                    let grant = gathered_grant.take().expect("gathered events hold a grant");
                    let outcomes = self.queue_events(events, &id, index, &mut out.rejected).await?;
                    unsettled.push_back(Held { outcomes, _grant: grant });
                    index += count;
                    continue;
                }
                let room = gathered_bytes < GATHER_BYTES && gathered.len() < MAX_EVENTS;
                let message = if full && (ended || !room) {
                    out.settle(unsettled.pop_front().expect("full").outcomes).await?;
                    continue;
                } else if full {
                    let oldest = &mut unsettled.front_mut().expect("full").outcomes;
                    tokio::select! {
                        outcomes = oldest => {
                            unsettled.pop_front();
                            out.count(outcomes)?;
                            continue;
                        }
                        message = stream.next() => message,
                    }
                } else {
                    stream.next().await
                };
                let Some(message) = message else {
                    ended = true;
                    continue;
                };
                let message = message.map_err(invalid_if_undecodable)?;
                gathered_bytes += prost::Message::encoded_len(&message);
                let (events, grant) = self.decode_granted(message)?;
                gathered.extend(events);
                match gathered_grant.as_mut() {
                    Some(held) => held.merge(grant),
                    None => gathered_grant = Some(grant),
                }
            }
            while let Some(held) = unsettled.pop_front() {
                out.settle(held.outcomes).await?;
            }
            let response = bus::PublishBatchResponse {
                accepted: out.accepted,
                duplicates: out.duplicates,
                rejected: out.rejected,
            };
            Ok(with_request_id(Response::new(response), &id))
        }
        .instrument(span)
        .await
    }

    type SubscribeStream = DeliveryStream;

    async fn subscribe(&self, request: Request<bus::SubscribeRequest>) -> Result<Response<DeliveryStream>, Status> {
        let id = request_id(&request);
        let request = request.into_inner();
        request.validate()?;
        let pattern =
            Pattern::parse(&request.pattern).map_err(|e| Status::invalid_argument(format!("pattern: {e}")))?;
        let durable = durable_of(&request);
        let start = start_of(&request)?;
        let buffer =
            durable.as_ref().map_or(SUBSCRIBER_BUFFER, |d| d.options.max_in_flight.clamp(1, SUBSCRIBER_BUFFER));
        let pattern_text = pattern.to_string();
        let hold = self.hold_subscription()?;
        let receiver = self
            .bus
            .subscribe(Subscription { pattern, start, durable, buffer, room: SUBSCRIBER_BYTES })
            .map_err(status_of)?;
        tracing::info!(request_id = %id, pattern = %pattern_text, "subscription opened");
        // Batches from the bus, one delivery per gRPC message; the stream holds
        // the subscription's grant until tonic drops it.
        let deliveries = futures_util::StreamExt::flat_map(receiver.into_stream(), futures_util::stream::iter);
        let stream: DeliveryStream = Box::pin(deliveries.map(move |delivery| {
            let _held = &hold;
            Ok(delivery)
        }));
        Ok(with_request_id(Response::new(stream), &id))
    }

    async fn ack(&self, request: Request<CappedAck>) -> Result<Response<bus::AckResponse>, Status> {
        let request =
            request.into_inner().into_valid().map_err(|refused| Status::invalid_argument(refused.to_string()))?;
        let positions = request.positions.iter().map(|p| (p.partition, p.offset)).collect();
        let acked = self.bus.ack(request.durable_name, positions).await.map_err(status_of)?;
        Ok(Response::new(bus::AckResponse { acked }))
    }

    async fn list_topics(
        &self,
        request: Request<bus::ListTopicsRequest>,
    ) -> Result<Response<bus::ListTopicsResponse>, Status> {
        let request = request.into_inner();
        request.validate()?;
        let pattern = request.pattern;
        let pattern = if pattern.is_empty() {
            None
        } else {
            Some(Pattern::parse(&pattern).map_err(|e| Status::invalid_argument(format!("pattern: {e}")))?)
        };
        let totals = self.bus.topics().await.map_err(status_of)?;
        let topics = totals
            .into_iter()
            .filter(|(name, _)| pattern.as_ref().is_none_or(|p| p.matches(name)))
            .map(|(name, events)| bus::TopicInfo { name, events })
            .collect();
        Ok(Response::new(bus::ListTopicsResponse { topics }))
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: accept::GrpcListener,
    bus: Arc<dyn Bus>,
    budget: Arc<MemoryBudget>,
    pools: PoolCapacity,
    limits: accept::GrpcLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<EventBusServiceServer<BusService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jimbus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is valid");
    let frame_budgets = frames::FrameBudgets::new(budget.clone());
    tonic::transport::Server::builder()
        // h2 closes a connection whose buffered small DATA frames cost more
        // framing than half its connection window (GOAWAY too_many_data_frames).
        // A stream window of a sixteenth of the connection window bounds what
        // one stream can buffer: 256 KiB of 40-byte messages is 1.4 MB of
        // framing, under the 2 MiB budget, so a publisher of tiny messages
        // meets flow control first.
        .initial_connection_window_size(GRPC_CONNECTION_WINDOW)
        .initial_stream_window_size(GRPC_CONNECTION_WINDOW / 16)
        // Each stream's state, and what h2 buffers for it, is outside the budget.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(tower::util::MapResponseLayer::new(undecodable_is_invalid_argument))
        .layer(tower::util::MapRequestLayer::new(move |request| frames::granted(request, &frame_budgets)))
        .add_service(health)
        .add_service(reflection)
        // The limit the frames' grants stop at (tonic's default, made explicit).
        .add_service(
            EventBusServiceServer::new(BusService::new(bus, budget))
                .max_decoding_message_size(frames::MAX_MESSAGE_BYTES as usize),
        )
        .add_service(crate::grpc::coordinator::CoordinatorService::server(pools))
        .serve_with_incoming_shutdown(accept::incoming(listener, limits), shutdown)
        .await
}

//! `GET /api/v1/stream`: the bus as Server-Sent Events, for browsers.
//!
//! It takes what gRPC Subscribe takes (`pattern` with NATS wildcards and
//! exclusions after a space, `from` = `latest`, `earliest`, `offset:N` or
//! `time:<unix ms>`), opens one bus subscription and writes each delivery as one
//! event whose data is the canonical protobuf JSON of the `SubscribeResponse`
//! (the same mapping `jimbus tail` prints, from [`response_json`]).
//!
//! Offsets are per partition, so an event's `id:` is a cursor, not one offset:
//! the stream's origin (`e`, `o<N>` or `t<µs>`; a `latest` start is pinned to
//! the time it opened) then, for every partition this stream delivered from,
//! the last offset delivered (`t1764500000000000~0:41,1:17`). A reconnect that
//! sends it back (`Last-Event-ID`, or `last_event_id=` in the query, since a new
//! `EventSource` cannot set the header) subscribes again from the origin and
//! skips what the cursor covers, so nothing is lost or repeated; the price is
//! that the resumed subscription re-reads the log from the origin.
//!
//! Memory: each stream holds [`STREAM_GRANT`] of the memory budget for its
//! life, at most [`STREAM_BUFFER`] deliveries and [`STREAM_ROOM`] bytes in
//! its channel and the batch it is framing (half of them each), the shards'
//! reads waiting for that room (each its share of it), and at most
//! [`WRITE_AHEAD`] bytes written but not yet taken by the socket: the
//! connection's [`WriteGate`] counts what the socket took (hyper's own write
//! buffer is unbounded on these connections, which flush pipelined answers
//! together). A slow client therefore fills its channel and the shards wait for
//! it: it is paused, never buffered without bound. A client that takes none of
//! its stream for the idle timeout is closed ([`crate::http::conn`]), which
//! gives its slot and grant back.
//! Streams past [`MAX_STREAMS`], past half the budget (the other half stays
//! for the mods' requests), or without a grant, get 503. A stream ends
//! when the server stops, or when its client stalls as above. This module
//! must never hold shard state: it only reads the bus.

use crate::bus::{Bus, BusError, DeliveryBatch, Start, Subscription};
use bytes::Bytes;
use hyper::body::Frame;
use jimbus_core::budget::{self, MemoryBudget, StreamGrant, StreamGrants, StreamRefusal};
use jimbus_core::topic::Pattern;
use jimbus_proto::delivery::EncodedDelivery;
use jimbus_proto::validate::Validate;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Concurrent streams across the server.
pub const MAX_STREAMS: u64 = 2048;
/// Deliveries a stream holds (its channel and the batch it frames) before the
/// shards wait for its client.
pub const STREAM_BUFFER: usize = 16;
/// Bytes of deliveries a stream may have queued or in hand (its channel and
/// the batch it frames) before the shards wait for its client.
pub const STREAM_ROOM: usize = 16 * 1024;
/// Bytes of events a stream produces beyond what its socket has taken.
pub const WRITE_AHEAD: u64 = 32 * 1024;
/// Memory budget held by each open stream: [`WRITE_AHEAD`], its
/// [`STREAM_ROOM`], and the shards' reads waiting for that room (as much
/// again in all: each shard reads its share of it, or one record).
pub const STREAM_GRANT: u64 = 64 * 1024;
/// A comment is sent after this much silence, so a vanished client is noticed
/// and proxies keep the connection.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("pattern: {0}")]
    Pattern(String),
    #[error("{0}: not UTF-8 once its %XX escapes are decoded")]
    NotUtf8(String),
    /// A rule of gRPC Subscribe's request broken, named as gRPC names it.
    #[error(transparent)]
    Rules(#[from] jimbus_proto::validate::Violations),
    #[error("from: {0:?} is not latest, earliest, offset:N or time:<unix ms>")]
    From(String),
    #[error("last event id: {0:?} is not a cursor this server wrote")]
    Cursor(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the delivery could not be converted to JSON: {0}")]
    Json(String),
}

/// Where a stream starts, in a form that can be written into an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Earliest,
    Offset(u64),
    TimeMicros(u64),
}

impl Origin {
    fn start(self) -> Start {
        match self {
            Origin::Earliest => Start::Earliest,
            Origin::Offset(offset) => Start::Offset(offset),
            Origin::TimeMicros(t) => Start::TimeMicros(t),
        }
    }
}

/// The position of a stream: its origin and the last offset delivered per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub origin: Origin,
    pub delivered: BTreeMap<u32, u64>,
}

impl Cursor {
    /// Parses an id written by [`Cursor::id`].
    pub fn parse(text: &str) -> Result<Self, SseError> {
        let bad = || SseError::Cursor(text.chars().take(64).collect());
        let (origin, positions) = text.split_once('~').ok_or_else(bad)?;
        let origin = match origin.split_at_checked(1).ok_or_else(bad)? {
            ("e", "") => Origin::Earliest,
            ("o", n) => Origin::Offset(n.parse().map_err(|_| bad())?),
            ("t", t) => Origin::TimeMicros(t.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        let mut delivered = BTreeMap::new();
        for pair in positions.split(',').filter(|p| !p.is_empty()) {
            let (partition, offset) = pair.split_once(':').ok_or_else(bad)?;
            delivered.insert(partition.parse().map_err(|_| bad())?, offset.parse().map_err(|_| bad())?);
        }
        Ok(Self { origin, delivered })
    }

    /// The event id: origin, then `partition:offset` pairs.
    pub fn id(&self) -> String {
        let mut id = match self.origin {
            Origin::Earliest => "e~".to_string(),
            Origin::Offset(n) => format!("o{n}~"),
            Origin::TimeMicros(t) => format!("t{t}~"),
        };
        let pairs: Vec<String> = self.delivered.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        id.push_str(&pairs.join(","));
        id
    }

    /// Whether the stream already delivered this position.
    fn covers(&self, partition: u32, offset: u64) -> bool {
        self.delivered.get(&partition).is_some_and(|last| offset <= *last)
    }
}

/// A parsed stream request.
#[derive(Debug)]
pub struct StreamRequest {
    pub pattern: Pattern,
    pub cursor: Cursor,
}

/// Reads `pattern`, `from` and `last_event_id` from the query; a `Last-Event-ID`
/// header wins over both `from` and `last_event_id`. `now_micros` pins `latest`.
pub fn parse_request(
    query: Option<&str>,
    last_event_id: Option<&str>,
    now_micros: u64,
) -> Result<StreamRequest, SseError> {
    let (mut pattern, mut from, mut resume) = ("balatro.>".to_string(), "latest".to_string(), None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || percent_decode(value).ok_or_else(|| SseError::NotUtf8(key.to_string()));
        match key {
            "pattern" => pattern = decoded()?,
            "from" => from = decoded()?,
            "last_event_id" if !value.is_empty() => resume = Some(decoded()?),
            _ => {}
        }
    }
    // The rules gRPC Subscribe holds its pattern to (its length).
    let subscribe = jimbus_proto::bus::SubscribeRequest { pattern, ..Default::default() };
    subscribe.validate()?;
    let pattern = Pattern::parse(&subscribe.pattern).map_err(|e| SseError::Pattern(e.to_string()))?;
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()).map(str::to_string).or(resume) {
        return Ok(StreamRequest { pattern, cursor: Cursor::parse(&id)? });
    }
    let origin = match from.as_str() {
        "" | "latest" => Origin::TimeMicros(now_micros),
        "earliest" => Origin::Earliest,
        other => match other.split_once(':') {
            Some(("offset", n)) => Origin::Offset(n.parse().map_err(|_| SseError::From(from.clone()))?),
            Some(("time", ms)) => {
                Origin::TimeMicros(ms.parse::<u64>().map_err(|_| SseError::From(from.clone()))?.saturating_mul(1000))
            }
            _ => return Err(SseError::From(from)),
        },
    };
    Ok(StreamRequest { pattern, cursor: Cursor { origin, delivered: BTreeMap::new() } })
}

/// `%XX` and `+` decoding of one query value (invalid escapes are kept as
/// sent); `None` when the bytes it gives are not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The canonical protobuf JSON of an encoded `jimbot.bus.v1.SubscribeResponse`.
pub fn response_json(encoded: &[u8]) -> Result<Vec<u8>, SseError> {
    static DESCRIPTOR: OnceLock<prost_reflect::MessageDescriptor> = OnceLock::new();
    let descriptor = DESCRIPTOR.get_or_init(|| {
        jimbus_proto::descriptor_pool()
            .get_message_by_name("jimbot.bus.v1.SubscribeResponse")
            .expect("the descriptor pool has SubscribeResponse")
    });
    let message = prost_reflect::DynamicMessage::decode(descriptor.clone(), encoded)
        .map_err(|e| SseError::Json(e.to_string()))?;
    serde_json::to_vec(&message).map_err(|e| SseError::Json(e.to_string()))
}

/// A response of the HTTP edge: a whole body, or a stream.
pub type Response = http::Response<http_body_util::Either<http_body_util::Full<Bytes>, SseBody>>;

/// `GET /api/v1/stream`: 200 with the stream, 400 for a bad query or id, 405
/// for another method, 503 when the streams or the budget are spent.
pub fn respond<B>(
    req: &http::Request<B>,
    bus: &Arc<dyn Bus>,
    context: &Arc<crate::http::context::EdgeContext>,
    gate: &Rc<WriteGate>,
) -> Response {
    use http::{header, HeaderValue, Method, StatusCode};
    use http_body_util::Either;
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let last = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let opened = parse_request(req.uri().query(), last, crate::clock::now_micros())
        .and_then(|request| open(bus, context, gate, request));
    match opened {
        Ok(body) => {
            gate.streaming.set(true);
            metrics::counter!("jimbus_sse_streams_opened_total").increment(1);
            let mut r = http::Response::new(Either::Right(body));
            let headers = r.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            // Its connection serves nothing after it (reads on it are untimed).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Err(e @ SseError::Unavailable(_)) => {
            metrics::counter!("jimbus_sse_streams_refused_total").increment(1);
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => plain(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// A JSON error in the edge's usual shape.
fn plain(status: http::StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"status": "error", "error": message}).to_string();
    let mut r = http::Response::new(http_body_util::Either::Left(http_body_util::Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// What one connection's socket has taken, shared by its I/O (which counts)
/// and its event stream (which waits for the socket before producing more).
#[derive(Default)]
pub struct WriteGate {
    streaming: Cell<bool>,
    written: Cell<u64>,
    waiting: Cell<Option<Waker>>,
}

impl WriteGate {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Whether the connection carries an event stream (its client sends nothing).
    pub fn is_streaming(&self) -> bool {
        self.streaming.get()
    }

    /// The socket took `bytes`.
    pub fn wrote(&self, bytes: usize) {
        self.written.set(self.written.get() + bytes as u64);
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// The live view's streams: [`STREAM_GRANT`] each, at most [`MAX_STREAMS`]
/// and half of `budget`.
pub fn stream_grants(budget: Arc<MemoryBudget>) -> StreamGrants {
    StreamGrants::new(budget, STREAM_GRANT, MAX_STREAMS)
}

/// An open stream's place and grant, counted in `jimbus_sse_streams` while it lives.
struct Slot {
    _held: StreamGrant,
}

impl Slot {
    fn take(streams: &StreamGrants) -> Result<Self, SseError> {
        let grant = streams.take().map_err(|refusal| match refusal {
            StreamRefusal::TooMany => {
                SseError::Unavailable("too many streams are open (at most 2048, and half the memory budget)".into())
            }
            StreamRefusal::BudgetSpent => {
                metrics::counter!("jimbus_budget_denials_total", "component" => "sse").increment(1);
                SseError::Unavailable(budget::SPENT.into())
            }
        })?;
        metrics::gauge!("jimbus_sse_streams").increment(1.0);
        Ok(Slot { _held: grant })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("jimbus_sse_streams").decrement(1.0);
    }
}

/// Opens the subscription of `request`, holding a slot and a grant for its life.
pub fn open(
    bus: &Arc<dyn Bus>,
    context: &Arc<crate::http::context::EdgeContext>,
    gate: &Rc<WriteGate>,
    request: StreamRequest,
) -> Result<SseBody, SseError> {
    let slot = Slot::take(&context.streams)?;
    let subscription = Subscription {
        pattern: request.pattern,
        start: request.cursor.origin.start(),
        durable: None,
        // Batches of half the buffer, one in the channel and one being framed.
        buffer: STREAM_BUFFER / 2,
        room: STREAM_ROOM,
    };
    let receiver = bus.subscribe(subscription).map_err(|e| match e {
        BusError::InvalidArgument(m) => SseError::Pattern(m),
        other => SseError::Unavailable(other.to_string()),
    })?;
    Ok(SseBody {
        preamble: Some(Bytes::from_static(b"retry: 1000\n: jimbus stream\n\n")),
        deliveries: receiver.into_stream(),
        batch: Vec::new().into_iter(),
        cursor: request.cursor,
        stopped: context.shutdown.listen(),
        context: context.clone(),
        gate: gate.clone(),
        // Bytes count from what the socket had taken before this answer.
        produced: gate.written.get(),
        keepalive: async_io::Timer::after(KEEPALIVE),
        _slot: slot,
    })
}

/// The response body: one SSE event per delivery, polled by hyper only when the
/// connection can take more.
pub struct SseBody {
    preamble: Option<Bytes>,
    deliveries: flume::r#async::RecvStream<'static, DeliveryBatch>,
    /// What is left of the batch being framed.
    batch: std::vec::IntoIter<EncodedDelivery>,
    cursor: Cursor,
    stopped: event_listener::EventListener,
    context: Arc<crate::http::context::EdgeContext>,
    gate: Rc<WriteGate>,
    /// Bytes produced, on the scale of `gate.written`.
    produced: u64,
    keepalive: async_io::Timer,
    _slot: Slot,
}

impl SseBody {
    /// The SSE frame of one delivery, advancing the cursor.
    fn frame(&mut self, delivery: &EncodedDelivery) -> Bytes {
        self.cursor.delivered.insert(delivery.partition, delivery.offset);
        let encoded = prost::Message::encode_to_vec(delivery);
        let json = response_json(&encoded).unwrap_or_else(|e| {
            // Never expected (the body was validated when stored); say so in
            // the stream rather than dropping the position silently.
            tracing::warn!(error = %e, "a delivery could not be written as JSON");
            serde_json::json!({"topic": String::from_utf8_lossy(&delivery.topic), "error": e.to_string()})
                .to_string()
                .into_bytes()
        });
        let id = self.cursor.id();
        let mut out = Vec::with_capacity(json.len() + id.len() + 16);
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use futures_lite::{FutureExt, StreamExt};
        let this = &mut *self;
        if let Some(preamble) = this.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(preamble))));
        }
        if this.stopped.poll(cx).is_ready() || this.context.shutdown.is_stopping() {
            return Poll::Ready(None);
        }
        loop {
            if this.produced > this.gate.written.get() + WRITE_AHEAD {
                // The socket has not taken what was produced: wait for it,
                // which leaves the deliveries in the bounded channel.
                this.gate.waiting.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            if let Some(delivery) = this.batch.next() {
                if this.cursor.covers(delivery.partition, delivery.offset) {
                    continue;
                }
                this.keepalive.set_after(KEEPALIVE);
                let frame = this.frame(&delivery);
                this.produced += frame.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.deliveries.poll_next(cx) {
                Poll::Ready(Some(batch)) => this.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        if this.keepalive.poll(cx).is_ready() {
            this.keepalive.set_after(KEEPALIVE);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": keepalive\n\n")))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_through_its_id() {
        let mut delivered = BTreeMap::new();
        delivered.insert(0, 41);
        delivered.insert(3, 17);
        for origin in [Origin::Earliest, Origin::Offset(9), Origin::TimeMicros(1_764_500_000_000_000)] {
            let cursor = Cursor { origin, delivered: delivered.clone() };
            assert_eq!(Cursor::parse(&cursor.id()).unwrap(), cursor);
        }
        assert_eq!(Cursor::parse("e~").unwrap().delivered.len(), 0);
        for bad in ["", "e", "x~", "o~", "e~0", "e~a:1", "ee~"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_query_gives_pattern_start_and_resume() {
        let r = parse_request(Some("pattern=balatro.%3E+-balatro.*.aggregated&from=offset:5"), None, 7).unwrap();
        assert_eq!(r.pattern.to_string(), "balatro.> -balatro.*.aggregated");
        assert_eq!(r.cursor.origin, Origin::Offset(5));
        assert_eq!(parse_request(None, None, 7).unwrap().cursor.origin, Origin::TimeMicros(7));
        assert_eq!(parse_request(Some("from=time:2"), None, 7).unwrap().cursor.origin, Origin::TimeMicros(2000));
        let resumed = parse_request(Some("from=earliest&last_event_id=o3~1:4"), None, 7).unwrap();
        assert_eq!(resumed.cursor.origin, Origin::Offset(3));
        assert!(resumed.cursor.covers(1, 4) && !resumed.cursor.covers(1, 5) && !resumed.cursor.covers(0, 0));
        let header = parse_request(Some("last_event_id=o3~1:4"), Some("e~0:1"), 7).unwrap();
        assert_eq!(header.cursor.origin, Origin::Earliest);
        assert!(parse_request(Some("from=soon"), None, 7).is_err());
        assert!(parse_request(Some("pattern=a..b"), None, 7).is_err());
    }

    /// An SSE stream took patterns gRPC refuses: one past 512 bytes, and
    /// bytes that are not UTF-8 (read as U+FFFD).
    #[test]
    fn the_query_is_held_to_grpcs_rules() {
        let longest = format!("pattern=a.{}", "b".repeat(510));
        assert!(parse_request(Some(&longest), None, 7).is_ok());
        let refused = parse_request(Some(&format!("{longest}b")), None, 7).err().unwrap();
        assert_eq!(refused.to_string(), "pattern: max_len=512");
        let refused = parse_request(Some("pattern=a.%FF"), None, 7).err().unwrap();
        assert_eq!(refused.to_string(), "pattern: not UTF-8 once its %XX escapes are decoded");
        assert!(parse_request(Some("from=%C3"), None, 7).is_err());
        assert!(parse_request(Some("other=%FF"), None, 7).is_ok(), "keys it does not read are not judged");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        let decoded = |value| percent_decode(value).unwrap();
        assert_eq!(decoded("a%20b+c%3e"), "a b c>");
        assert_eq!(decoded("100%"), "100%");
        assert_eq!(decoded("%zz%4"), "%zz%4");
        assert_eq!(decoded("%C3%A9"), "é");
        assert_eq!(percent_decode("%C3"), None);
    }
}

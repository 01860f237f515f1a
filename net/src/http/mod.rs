//! The HTTP/1.1 edge on each shard: the field mod's API, health, readiness and metrics.
//!
//! [`Listener`] accepts on the shard's SO_REUSEPORT socket and caps connections;
//! `Handler` serves one connection through hyper over glommio's TcpStream. A
//! request body is a `Bytes` view of the connection's read buffer (hyper's
//! `BytesMut`, which it reclaims and reuses once the request's views are dropped,
//! so it is the connection's buffer pool; a body that spans several reads is
//! gathered once), is decoded in place by `jimbus-core`, and its events are sent
//! through the bus to the shards that own their sessions. The answer is 2xx only after every event is durable; what cannot be
//! accepted is dead-lettered first, then refused with a precise 4xx. Overload
//! and storage failures are 503 with `Retry-After`, a full disk 507 with it. This module must never touch
//! the log or shard state directly: it only sends commands.

use crate::admit;
use crate::bus::{AppendItem, Bus, ItemOutcome};
use crate::clock::{now_micros, timestamp};
pub mod accept;
pub mod body;
pub mod charge;
pub mod conn;
pub mod context;
pub mod frame;
pub mod guard;
pub mod profile;
mod shed;
pub mod sse;
pub mod ui;

use crate::http::accept::HttpSocket;
use crate::http::charge::BufferCharge;
use crate::http::conn::{finish, Activity, GlommioIo, ReadBuffer, Serving};
pub use crate::http::context::EdgeContext;
use crate::http::guard::{body_error, error, field_of, json, unavailable};
use crate::observe::{per_thread, HTTP_REQUESTS};
use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jimbus_core::budget::{self, Grant};
use jimbus_core::ingest::{decode_body_within, BodyError, DecodedBody, Endpoint, Limits, MAX_EVENTS};
use jimbus_proto::bus;
use std::{cell::Cell, net::SocketAddr, pin::Pin, rc::Rc, sync::Arc, time::Duration};
use tracing::Instrument;

/// Admits the decoded events of a body from `peer` (see [`admit`]): what is
/// refused is dead-lettered through `letter` (up to a bound per request,
/// then one summary) and listed with its place. Public for the ingest-path
/// benchmark, which runs the same steps without a socket.
pub fn prepare(
    decoded: DecodedBody,
    body: &Bytes,
    request_id: &str,
    received: u64,
    peer: Option<std::net::IpAddr>,
    letter: &dyn Fn(String, Bytes, String) -> AppendItem,
) -> (Vec<AppendItem>, Vec<(usize, String)>) {
    let envelope = decoded.envelope;
    let entries = decoded.events.len() + decoded.rejected.len();
    // Both lists are in index order: merged one item at a time, since a
    // merged copy of a large batch would double what it holds.
    let mut events = decoded.events.into_iter().peekable();
    let mut refused = decoded.rejected.into_iter().peekable();
    let ordered = std::iter::from_fn(|| match (events.peek(), refused.peek()) {
        (Some(e), Some(r)) if e.index < r.index => events.next().map(decoded_entry),
        (Some(_), None) => events.next().map(decoded_entry),
        (_, Some(_)) => refused.next().map(|r| admit::Entry {
            index: r.index,
            event: Err(r.error.to_string()),
            raw: r.raw,
            json_len: None,
        }),
        (None, None) => None,
    });
    let peer = peer.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let admission =
        admit::Admission { request_id, received_us: received, peer: Some(peer), envelope: &envelope, entries };
    let mut letters = crate::http::guard::Letters::default();
    let mut admitted = admit::admit(&admission, ordered, |index, refusal, raw, session| {
        letters.admit(index).then(|| letter(message_of(index, refusal), body.slice(raw), session))
    });
    if let Some(summary) = letters.summary() {
        admitted.items.push(letter(summary, body.clone(), String::new()));
    }
    let rejected = admitted.rejected.iter().map(|(index, refusal)| (*index, message_of(*index, refusal))).collect();
    (admitted.items, rejected)
}

/// What the field mod is told about a refused event (decode errors name their place already).
fn message_of(index: usize, refusal: &admit::Refusal) -> String {
    match refusal {
        admit::Refusal::Undecodable(message) => message.clone(),
        admit::Refusal::Invalid(violations) => format!("events[{index}]: {violations}"),
    }
}

/// A decoded event as admission takes it, with its raw bytes' range.
fn decoded_entry(decoded: jimbus_core::ingest::DecodedEvent) -> admit::Entry<std::ops::Range<usize>> {
    let json_len = Some(decoded.raw.len());
    admit::Entry { index: decoded.index, event: Ok(decoded.event), raw: decoded.raw, json_len }
}

/// Limits and paths of the HTTP edge.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The mod's `event_bus_url` path (default `/api/v1/events`).
    pub ingest_path: String,
    /// Largest request body accepted (413 beyond it).
    pub body_limit: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A request whose headers take longer than this to arrive gets 408 (slowloris).
    pub header_timeout: Duration,
    /// A body that takes longer than this to arrive gets 408.
    pub body_timeout: Duration,
    /// Connections per shard; more get 503 and are closed.
    pub max_connections: usize,
    /// Serve CPU profiles at `/debug/pprof/profile`.
    pub profiling: bool,
    /// Serve the web view at `/ui` ([`crate::http::ui`]).
    pub ui: bool,
}

/// State shared by the connections of one shard.
pub struct Listener {
    /// The shard whose socket it accepts on (named in logs).
    shard: usize,
    /// Where events go.
    bus: Arc<dyn Bus>,
    /// Limits, timeouts and paths.
    options: HttpOptions,
    /// Readiness, metrics and the memory budget, shared by every listener.
    context: Arc<EdgeContext>,
    /// Open connections, capped by `options.max_connections`.
    connections: Cell<usize>,
    /// `jimbus_http_connections{shard}`: `connections`, for operators (how near
    /// the cap, how evenly spread over the shards) and the perf scripts.
    connections_gauge: metrics::Gauge,
    /// Woken when the last connection closes.
    idle: event_listener::Event,
    /// The buffer every connection of the shard reads its socket into.
    read_buffer: ReadBuffer,
}

type Body = Full<Bytes>;

impl Listener {
    pub fn new(shard: usize, bus: Arc<dyn Bus>, options: HttpOptions, context: Arc<EdgeContext>) -> Rc<Self> {
        let (connections, idle, read_buffer) = (Cell::new(0), event_listener::Event::new(), conn::read_buffer());
        let connections_gauge = metrics::gauge!("jimbus_http_connections", "shard" => shard.to_string());
        connections_gauge.set(0.0);
        Rc::new(Self { shard, bus, options, context, connections, connections_gauge, idle, read_buffer })
    }

    /// Accepts connections until the process stops, then waits for open
    /// connections to finish their requests, at most [`DRAIN_TIMEOUT`].
    pub async fn run(self: Rc<Self>, socket: HttpSocket) {
        loop {
            let stop = self.context.shutdown.listen();
            if self.context.shutdown.is_stopping() {
                break;
            }
            let accepted = futures_lite::future::or(async { Some(socket.next().await) }, async {
                stop.await;
                None
            })
            .await;
            match accepted {
                Some((stream, peer)) => self.clone().spawn_connection(stream, peer),
                None => break,
            }
        }
        drop(socket);
        let drained = futures_lite::future::or(
            async {
                self.until_no_connections().await;
                true
            },
            async {
                glommio::timer::sleep(DRAIN_TIMEOUT).await;
                false
            },
        )
        .await;
        if !drained {
            // Their tasks end with the shard's executor, after its pump has
            // answered every append: nothing acknowledged is lost.
            let open = self.connections.get();
            tracing::warn!(shard = self.shard, open, "connections still open at the drain timeout are dropped");
        }
    }

    /// Returns once the shard's last connection has closed.
    async fn until_no_connections(&self) {
        while self.connections.get() > 0 {
            let idle = self.idle.listen();
            if self.connections.get() > 0 {
                idle.await;
            }
        }
    }

    /// Adds `change` to the open connections and their gauge; wakes the drain at none.
    fn count_connections(&self, change: isize) {
        let open = self.connections.get().saturating_add_signed(change);
        self.connections.set(open);
        self.connections_gauge.set(open as f64);
        if open == 0 {
            self.idle.notify(usize::MAX);
        }
    }

    fn spawn_connection(self: Rc<Self>, mut stream: TcpStream, peer: Option<SocketAddr>) {
        // Against the request count, it shows whether mods keep their
        // connections: a new one costs the server more than a small request.
        per_thread!(Counter, counter!("jimbus_http_connections_accepted_total")).with(|c| c.increment(1));
        if self.connections.get() >= self.options.max_connections {
            metrics::counter!("jimbus_http_connections_refused_total", "reason" => "over_limit").increment(1);
            let answer = conn::answer_bytes(503, "Service Unavailable", "too many connections, retry later");
            glommio::spawn_local(async move {
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.close().await;
            })
            .detach();
            return;
        }
        let charge = BufferCharge::new(&self.context.budget);
        self.count_connections(1);
        glommio::spawn_local(async move {
            let handler = Handler {
                listener: self.clone(),
                peer,
                peer_text: peer.map_or_else(|| "unknown".into(), |peer| peer.to_string().into()),
                gate: crate::http::sse::WriteGate::new(),
            };
            handler.serve(stream, charge).await;
            self.count_connections(-1);
        })
        .detach();
    }
}

/// The span of one ingest request: its id (every event's correlation id, and
/// the field that joins its log lines), the client's address and the path.
/// `peer` is already text: the span formats every field into a string. The
/// fields are recorded as strings, not `Display` values, so that the compact
/// log format writes a plain word as it is (`telemetry/fields.rs`).
pub fn request_span(request_id: &str, peer: &str, path: &str) -> tracing::Span {
    tracing::info_span!("ingest", request_id, peer, path)
}

/// Memory a request asks per byte of its body, held until it is answered: the
/// body itself and its decoded events, which take about 4.5 times the JSON they
/// came from (`cargo run --release -p jimbus-perf --example decoded_size`
/// measures it), rounded up.
const GRANT_PER_BODY_BYTE: u64 = 6;

/// How long a stopping shard waits for its open connections to end.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest request head (request line and headers); more gets 431 (414 for
/// the request line alone). hyper reads at most this much at once.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One connection.
struct Handler {
    /// The shard's listener: its bus, options and the process's context.
    listener: Rc<Listener>,
    /// The client's address (sessions derived from it).
    peer: Option<SocketAddr>,
    /// The client's address as logs write it, formatted once per connection:
    /// formatted into every request's span, it was a fifth of the span's cost
    /// (the `request_span` example: docs/perf.md, "Thirty-first pass").
    peer_text: Box<str>,
    /// What the socket has taken, for an event stream's flow control; once
    /// the connection carries a stream, which its client never answers, its
    /// reads wait without the idle timeout.
    gate: Rc<crate::http::sse::WriteGate>,
}

impl Handler {
    async fn serve(self, stream: TcpStream, charge: BufferCharge) {
        let shutdown = self.listener.context.shutdown.clone();
        let activity = Activity::new();
        let serving = Serving {
            gate: self.gate.clone(),
            activity: activity.clone(),
            idle_timeout: self.listener.options.idle_timeout,
            header_timeout: self.listener.options.header_timeout,
            max_head: MAX_HEAD_BYTES,
            read_buffer: self.listener.read_buffer.clone(),
            charge,
        };
        let io = GlommioIo::new(stream, serving);
        let this = Rc::new(self);
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            // The connection's clock (idle, header timeouts) stops while a request is in progress.
            let busy = activity.enter();
            async move {
                let response = this.route_browser(req).await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut conn = hyper::server::conn::http1::Builder::new()
            // The connection times heads itself (see crate::http::conn).
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true)
            .pipeline_flush(true)
            .serve_connection(io, service);
        let stop = shutdown.listen();
        if shutdown.is_stopping() {
            Pin::new(&mut conn).graceful_shutdown();
        }
        let finished = futures_lite::future::or(async { Some((&mut conn).await) }, async {
            stop.await;
            None
        })
        .await;
        let result = match finished {
            Some(result) => result,
            None => {
                Pin::new(&mut conn).graceful_shutdown();
                (&mut conn).await
            }
        };
        // hyper leaves a malformed request unanswered (or answers it with an
        // empty body): finish writes a JSON answer before closing.
        finish(conn.into_parts().io, result.as_ref().err()).await;
        if let Err(e) = result {
            if !e.is_incomplete_message() {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }

    /// The browser's stream ([`crate::http::sse`]) and view ([`crate::http::ui`]); every
    /// other request goes to [`Handler::route`].
    async fn route_browser(&self, req: Request<Incoming>) -> crate::http::sse::Response {
        let path = req.uri().path();
        if path == "/api/v1/stream" {
            return crate::http::sse::respond(&req, &self.listener.bus, &self.listener.context, &self.gate);
        }
        if self.listener.options.ui && (path == "/ui" || path.starts_with("/ui/")) {
            return crate::http::ui::respond(&req).map(http_body_util::Either::Left);
        }
        self.route(req).await.map(http_body_util::Either::Left)
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/');
        let ingest = self.listener.options.ingest_path.trim_end_matches('/');
        let endpoint = match path.strip_prefix(ingest) {
            Some("") => Some(Endpoint::Single),
            Some("/batch") => Some(Endpoint::Batch),
            _ => None,
        };
        let started = std::time::Instant::now();
        let response = match (req.method(), path, endpoint) {
            (&Method::POST, _, Some(endpoint)) => self.ingest(req, endpoint).await,
            (&Method::POST, p, None) if p == format!("{ingest}/health") => self.health_probe(req).await,
            // hyper leaves out the body of an answer to HEAD.
            (&Method::GET | &Method::HEAD, "/health", _) => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            (&Method::GET | &Method::HEAD, "/ready", _) => self.readiness(),
            (&Method::GET, "/metrics", _) => self.metrics(),
            (&Method::GET, "/openapi.yaml", _) => openapi(),
            (&Method::GET, "/debug/pprof/profile", _) => self.profile(req.uri().query()).await,
            (_, p, _) if endpoint.is_some() || p == format!("{ingest}/health") => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None, None);
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
            (_, "/health" | "/ready" | "/metrics" | "/openapi.yaml" | "/debug/pprof/profile", _) => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET", None, None);
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
                r
            }
            _ => error(StatusCode::NOT_FOUND, "no such endpoint", None, None),
        };
        count_answer(response.status(), started.elapsed().as_secs_f64(), endpoint.is_some());
        response
    }

    fn readiness(&self) -> Response<Body> {
        if !self.listener.context.shutdown.is_ready() {
            unavailable("not ready")
        } else if crate::disk::data_dir_full() {
            unavailable("not ready: the data directory is full")
        } else {
            json(StatusCode::OK, r#"{"status":"ready"}"#.into())
        }
    }

    fn metrics(&self) -> Response<Body> {
        let budget = &self.listener.context.budget;
        metrics::gauge!("jimbus_budget_limit_bytes").set(budget.limit() as f64);
        metrics::gauge!("jimbus_budget_used_bytes").set(budget.used() as f64);
        let mut r = Response::new(Full::new(Bytes::from(self.listener.context.metrics.render())));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        r
    }

    /// `POST {url}/health`: the mod's breaker probe. Ready means it may send again.
    async fn health_probe(&self, req: Request<Incoming>) -> Response<Body> {
        // A probe's few bytes are granted as they arrive, from nothing up front.
        let mut grant = self.listener.context.budget.request(0, 0).expect("a request for nothing is always granted");
        if let Err(response) = body::read(req, self.body_limits(), &mut grant).await {
            return response;
        }
        self.readiness()
    }

    fn body_limits(&self) -> body::BodyLimits {
        let options = &self.listener.options;
        body::BodyLimits { max: options.body_limit, timeout: options.body_timeout }
    }

    async fn ingest(&self, req: Request<Incoming>, endpoint: Endpoint) -> Response<Body> {
        let request_id = admit::request_id(req.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
        let span = request_span(&request_id, &self.peer_text, req.uri().path());
        // Instrumented, never entered across an await: on a shard's one thread an
        // entered span would become the parent of every request interleaved with it.
        self.ingest_traced(req, endpoint, request_id).instrument(span).await
    }

    async fn ingest_traced(&self, req: Request<Incoming>, endpoint: Endpoint, request_id: String) -> Response<Body> {
        let declared = body::declared_length(&req);
        // Without a length (chunked), the grant grows as the body arrives.
        let body = declared.unwrap_or(64 * 1024).min(self.listener.options.body_limit) as u64;
        // On a tight budget, room for the body itself is enough to go on.
        let Some(mut grant) = shed::grant(&self.listener.context.budget, body * GRANT_PER_BODY_BYTE, body).await else {
            metrics::counter!("jimbus_http_overload_total").increment(1);
            metrics::counter!("jimbus_budget_denials_total", "component" => "http").increment(1);
            return unavailable(budget::SPENT);
        };
        let origin = req.uri().path().to_string();
        let mut response = match body::read(req, self.body_limits(), &mut grant).await {
            Err(response) => response,
            Ok(body) => self.accept(body, endpoint, &request_id, origin, &mut grant).await,
        };
        if matches!(response.status(), StatusCode::SERVICE_UNAVAILABLE | StatusCode::INSUFFICIENT_STORAGE) {
            shed::pace(grant).await;
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }

    /// A CPU profile of the whole process (see [`crate::http::profile`]).
    async fn profile(&self, query: Option<&str>) -> Response<Body> {
        use crate::http::profile::{capture, parse_query, ProfileError};
        if !self.listener.options.profiling {
            return error(
                StatusCode::NOT_FOUND,
                "profiling is off: start the server with --enable-profiling",
                None,
                None,
            );
        }
        let captured = match parse_query(query) {
            Ok((length, format)) => capture(length, format).await,
            Err(e) => Err(e),
        };
        match captured {
            Ok((content_type, bytes)) => {
                let mut r = Response::new(Full::new(Bytes::from(bytes)));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                r
            }
            Err(e @ ProfileError::BadQuery(_)) => error(StatusCode::BAD_REQUEST, &e.to_string(), None, None),
            Err(e @ (ProfileError::Busy | ProfileError::NoSamples)) => {
                error(StatusCode::CONFLICT, &e.to_string(), None, None)
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None, None),
        }
    }

    /// Decodes, stores and answers one body.
    async fn accept(
        &self,
        body: Bytes,
        endpoint: Endpoint,
        request_id: &str,
        origin: String,
        grant: &mut Grant,
    ) -> Response<Body> {
        let received = now_micros();
        let letter = |reason: String, raw: Bytes, session_id: String| {
            let (reason, raw) = crate::http::guard::bounded_raw(reason, raw);
            AppendItem::DeadLetter(Box::new(bus::DeadLetter {
                reason,
                raw,
                origin: origin.clone(),
                correlation_id: request_id.to_string(),
                received_at: Some(timestamp(received)),
                session_id,
            }))
        };
        // Each event is read within memory granted before it: the grant asked
        // before the body covers ordinary bodies, and grows (or stops the
        // request) for the rest.
        let mut reserve = |total: usize| grant.grow_to((body.len() + total) as u64);
        let limits = Limits { max_events: MAX_EVENTS, reserve: &mut reserve };
        let decoded = match decode_body_within(&body, endpoint, limits) {
            Ok(decoded) => decoded,
            Err(BodyError::OverBudget) => {
                metrics::counter!("jimbus_budget_denials_total", "component" => "http").increment(1);
                return unavailable(&BodyError::OverBudget.to_string());
            }
            Err(e) => {
                tracing::info!(error = %e, "refused a body");
                let stored = self.store(vec![letter(e.to_string(), body.clone(), String::new())]).await;
                return match stored {
                    Ok(_) => body_error(&e),
                    Err(response) => response,
                };
            }
        };
        let peer = self.peer.map(|p| p.ip());
        let (items, mut rejected) = prepare(decoded, &body, request_id, received, peer, &letter);
        if endpoint == Endpoint::Single && !rejected.is_empty() {
            let stored = self.store(items).await;
            let (_, message) = rejected.remove(0);
            return match stored {
                Ok(_) => error(StatusCode::BAD_REQUEST, &message, None, field_of(&message)),
                Err(response) => response,
            };
        }
        match self.store(items).await {
            Ok((accepted, duplicates)) => {
                per_thread!(Counter, counter!("jimbus_events_accepted_total")).with(|c| c.increment(accepted as u64));
                per_thread!(Counter, counter!("jimbus_events_rejected_total"))
                    .with(|c| c.increment(rejected.len() as u64));
                json(StatusCode::OK, crate::http::guard::accepted_body(accepted, duplicates, &rejected))
            }
            Err(response) => response,
        }
    }

    /// Sends items to their shards and waits until all are durable. Returns
    /// (stored events, duplicates), or the answer to give instead: 503, or 507 for a full disk.
    async fn store(&self, items: Vec<AppendItem>) -> Result<(usize, usize), Response<Body>> {
        let events: Vec<bool> = items.iter().map(|i| matches!(i, AppendItem::Event(..))).collect();
        let appending = self.listener.bus.try_append(items).map_err(|e| {
            shed::log(&e);
            metrics::counter!("jimbus_http_overload_total").increment(1);
            unavailable(&crate::http::guard::redact_paths(&e.to_string()))
        })?;
        let outcomes = appending.await.map_err(|e| {
            shed::log_append_failed(&e);
            crate::http::guard::append_refused(&e)
        })?;
        let (mut stored, mut duplicates) = (0, 0);
        for (outcome, _) in outcomes.iter().zip(&events).filter(|(_, is_event)| **is_event) {
            match outcome {
                ItemOutcome::Stored { .. } => stored += 1,
                ItemOutcome::Duplicate => duplicates += 1,
            }
        }
        Ok((stored, duplicates))
    }
}

/// Answers by status, the ingest endpoints' (the SLOs of deploy/prometheus).
const INGEST_REQUESTS: &str = "jimbus_ingest_requests_total";

/// Counts one answer: every answer by status and its time, and for ingest the
/// SLOs of deploy/prometheus (answers by status, and the time to a 2xx). The
/// handles of a 200, nearly every answer, are kept per thread; a rarer
/// status is looked up each time.
fn count_answer(status: StatusCode, seconds: f64, ingest: bool) {
    let count = |ok: &'static std::thread::LocalKey<metrics::Counter>, name: &'static str| {
        if status == StatusCode::OK {
            ok.with(|c| c.increment(1));
        } else {
            metrics::counter!(name, "status" => status.as_str().to_string()).increment(1);
        }
    };
    count(per_thread!(Counter, counter!(HTTP_REQUESTS, "status" => "200")), HTTP_REQUESTS);
    per_thread!(Histogram, histogram!("jimbus_http_request_seconds")).with(|h| h.record(seconds));
    if ingest {
        count(per_thread!(Counter, counter!(INGEST_REQUESTS, "status" => "200")), INGEST_REQUESTS);
        if status.is_success() {
            per_thread!(Histogram, histogram!("jimbus_ingest_ack_seconds")).with(|h| h.record(seconds));
        }
    }
}

/// `GET /openapi.yaml`: the HTTP API's contract (docs/openapi.yaml), built in.
fn openapi() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(include_str!("../../../docs/openapi.yaml").as_bytes())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    r
}

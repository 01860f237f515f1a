//! `jimbus-load`: a self-play farm in one process, to measure a bus.
//!
//! N HTTP sessions post 50-event cascade batches in the mod's dialect over
//! keep-alive connections (at a fixed total rate or as fast as possible), M gRPC
//! subscribers check that every acknowledged event arrives, and gRPC
//! PublishBatch producers add streamed load. It reports accepted events/s, HTTP
//! latency percentiles (HDR histogram), end-to-end latency from POST to delivery,
//! errors by status, lost events and the server's peak RSS. See `perf/README.md`.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jimbus_perf::{load_event_id, load_session_id, parse_load_event_id, LoadBatch};
use jimbus_proto::bus;
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use jimbus_proto::events as pb;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Session index of the readiness probe (outside any real session's range).
const PROBE_SESSION: u32 = 99_999;

#[derive(Parser, Debug, Clone)]
#[command(name = "jimbus-load", about = "Load generator for jimbus (or any bus speaking the mod's HTTP API)")]
struct Args {
    /// The batch endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/events/batch")]
    url: String,
    /// Concurrent HTTP sessions (one keep-alive connection each, one request in flight).
    #[arg(long, default_value_t = 64)]
    sessions: u32,
    /// Events per batch.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Total HTTP rate in events/s across all sessions; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many events in total (HTTP and gRPC producers); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Share of HTTP sessions that speak as the field mod (no session_id: the server
    /// derives one session from the peer and source); the rest send session_id.
    #[arg(long, default_value_t = 0.25)]
    field_mod_share: f64,
    /// Send strict JSON (finite numbers only), for servers that reject the mod's
    /// bare `inf`/`nan` tokens (the old bus, a bare serde_json server).
    #[arg(long)]
    strict_json: bool,
    /// gRPC address of the bus (host:port), for subscribers and producers.
    #[arg(long)]
    grpc: Option<String>,
    /// gRPC subscribers.
    #[arg(long, default_value_t = 0)]
    subscribers: u32,
    /// Subscription pattern: `balatro.>` (raw, checked for loss) or `balatro.*.aggregated`.
    #[arg(long, default_value = "balatro.>")]
    pattern: String,
    /// gRPC PublishBatch producers (as fast as possible unless --grpc-rate).
    #[arg(long, default_value_t = 0)]
    grpc_producers: u32,
    /// Total gRPC producer rate in events/s; 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    grpc_rate: u64,
    /// PublishBatch requests per stream; the stream's summary acknowledges them.
    #[arg(long, default_value_t = 100)]
    grpc_stream_messages: usize,
    /// Longest wait, after the load, for subscribers to receive every acked event.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Server process id, for its peak RSS (VmHWM); found from the URL's port when absent.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Retries of a batch answered with an error or a broken connection (the field
    /// mod makes 3 attempts); 429/503 wait for Retry-After (at most 1 s).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    quiet: bool,
}

/// Counters shared by every task, for the progress bar and the stop condition.
struct Live {
    claimed: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    /// When the load started, and the first error after it (µs; `u64::MAX` for none).
    load_start: Instant,
    first_error_us: AtomicU64,
}

impl Live {
    fn new() -> Self {
        Self {
            claimed: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            load_start: Instant::now(),
            first_error_us: AtomicU64::new(u64::MAX),
        }
    }

    fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
        self.first_error_us.fetch_min(self.load_start.elapsed().as_micros() as u64, Relaxed);
    }
}

impl Live {
    /// Claims up to `want` events under the --events limit; 0 when the run is over.
    fn claim(&self, want: usize, limit: u64) -> usize {
        if self.stop.load(Relaxed) {
            return 0;
        }
        if limit == 0 {
            return want;
        }
        let first = self.claimed.fetch_add(want as u64, Relaxed);
        if first >= limit {
            self.stop.store(true, Relaxed);
            return 0;
        }
        (limit - first).min(want as u64) as usize
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Acknowledged (session, sequence) ranges of one producer.
type Acked = Vec<(u32, u64, u64)>;

/// What one HTTP session did.
struct SessionResult {
    latency_us: Histogram<u64>,
    requests: u64,
    sent: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    errors: BTreeMap<String, u64>,
    acked: Acked,
}

struct Target {
    authority: String,
    host_port: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let uri: http::Uri = url.parse().with_context(|| format!("--url {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http:// (got {url})");
    }
    let authority = uri.authority().context("--url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let host = uri.host().unwrap_or("127.0.0.1");
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    Ok(Target { authority, host_port: format!("{host}:{port}"), path })
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(&target.host_port).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

enum Outcome {
    Ok { accepted: u64, duplicates: u64, rejected: Vec<usize> },
    Status { code: u16, retry_after: Option<Duration> },
    Failed(&'static str),
}

async fn post(sender: &mut Sender, target: &Target, body: Bytes, timeout: Duration) -> Outcome {
    let request = http::Request::post(&target.path)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "BalatroMCP/1.0")
        .body(Full::new(body))
        .expect("request");
    let exchange = async {
        if sender.ready().await.is_err() {
            return Outcome::Failed("io");
        }
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            Err(_) => return Outcome::Failed("io"),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Outcome::Failed("io"),
        };
        if !status.is_success() {
            return Outcome::Status { code: status.as_u16(), retry_after };
        }
        // A 2xx is success (the mod never reads the body); jimbus also says what it kept.
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).and_then(Value::as_u64);
        let rejected = parsed
            .as_ref()
            .and_then(|v| v.get("rejected"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|r| r.get("index").and_then(Value::as_u64)).map(|i| i as usize).collect())
            .unwrap_or_default();
        Outcome::Ok {
            accepted: field("accepted").unwrap_or(u64::MAX),
            duplicates: field("duplicates").unwrap_or(0),
            rejected,
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed("timeout"),
    }
}

/// Milliseconds since the run started, the clock stamped into every event.
fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn http_session(
    index: u32,
    run: u32,
    args: Arc<Args>,
    target: Arc<Target>,
    live: Arc<Live>,
    start: Instant,
    deadline: Instant,
) -> SessionResult {
    let explicit = (index as f64 + 0.5) / args.sessions as f64 > args.field_mod_share;
    let quirky = !args.strict_json;
    let mut batch = LoadBatch::with_quirks(run, index, explicit, args.batch, quirky);
    let mut result = SessionResult {
        latency_us: histogram(),
        requests: 0,
        sent: 0,
        accepted: 0,
        duplicates: 0,
        rejected: 0,
        errors: BTreeMap::new(),
        acked: Vec::new(),
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    // Open loop at a fixed rate: batch k of this session is due at `phase + k * interval`.
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.batch as f64 * args.sessions as f64 / args.rate as f64));
    let phase = interval.map(|i| i.mul_f64(index as f64 / args.sessions as f64));
    let mut sender: Option<Sender> = None;
    let mut seq = 0u64;
    let mut k = 0u32;
    loop {
        let due = match (interval, phase) {
            (Some(i), Some(p)) => {
                let due = start + p + i * k;
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            _ => None,
        };
        if Instant::now() >= deadline {
            break;
        }
        let n = live.claim(args.batch, args.events);
        if n == 0 {
            break;
        }
        if n != batch.len() {
            batch = LoadBatch::with_quirks(run, index, explicit, n, quirky);
        }
        k += 1;
        let sent_at = Instant::now();
        batch.stamp(seq, ms_since(start));
        let body = Bytes::copy_from_slice(&batch.body);
        result.sent += n as u64;
        let mut attempt = 0;
        loop {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = match connect(&target).await {
                    Ok(s) => Some(s),
                    Err(_) => {
                        *result.errors.entry("connect".into()).or_default() += 1;
                        live.error();
                        None
                    }
                };
            }
            let outcome = match sender.as_mut() {
                Some(s) => {
                    result.requests += 1;
                    post(s, &target, body.clone(), timeout).await
                }
                None => Outcome::Failed("connect-retry"),
            };
            let wait = match outcome {
                Outcome::Ok { accepted, duplicates, rejected } => {
                    // With --rate, latency counts from when the batch was due (no coordinated omission).
                    let from = due.unwrap_or(sent_at);
                    result.latency_us.saturating_record(from.elapsed().as_micros().max(1) as u64);
                    let kept = n as u64 - rejected.len() as u64;
                    result.accepted += if accepted == u64::MAX { kept } else { accepted };
                    result.duplicates += duplicates;
                    result.rejected += rejected.len() as u64;
                    live.accepted.fetch_add(kept, Relaxed);
                    if rejected.is_empty() {
                        result.acked.push((index, seq, seq + n as u64));
                    } else {
                        for i in 0..n {
                            if !rejected.contains(&i) {
                                result.acked.push((index, seq + i as u64, seq + i as u64 + 1));
                            }
                        }
                    }
                    break;
                }
                Outcome::Status { code, retry_after } => {
                    *result.errors.entry(code.to_string()).or_default() += 1;
                    live.error();
                    if code == 429 || code == 503 {
                        retry_after.unwrap_or(Duration::from_millis(100)).min(Duration::from_secs(1))
                    } else {
                        Duration::from_millis(100 << attempt.min(4))
                    }
                }
                Outcome::Failed(kind) => {
                    if kind != "connect-retry" {
                        *result.errors.entry(kind.into()).or_default() += 1;
                        live.error();
                    }
                    sender = None;
                    Duration::from_millis(100 << attempt.min(4))
                }
            };
            attempt += 1;
            if attempt > args.retries {
                break;
            }
            tokio::time::sleep(wait).await;
        }
        seq += n as u64;
    }
    result
}

/// What one gRPC producer did.
struct ProducerResult {
    sent: u64,
    accepted: u64,
    errors: BTreeMap<String, u64>,
    acked: Acked,
}

async fn grpc_producer(
    index: u32,
    run: u32,
    args: Arc<Args>,
    live: Arc<Live>,
    start: Instant,
    deadline: Instant,
) -> ProducerResult {
    let session = args.sessions + index;
    let mut result = ProducerResult { sent: 0, accepted: 0, errors: BTreeMap::new(), acked: Vec::new() };
    let template: Vec<pb::Event> = {
        let batch = LoadBatch::new(run, session, true, args.batch);
        jimbus_core::ingest::decode_body(&batch.body, jimbus_core::ingest::Endpoint::Batch)
            .expect("the load batch decodes")
            .events
            .into_iter()
            .map(|d| {
                let mut e = d.event;
                e.session_id = load_session_id(run, session);
                e
            })
            .collect()
    };
    let grpc = args.grpc.clone().expect("--grpc");
    let mut client = match EventBusServiceClient::connect(format!("http://{grpc}")).await {
        Ok(c) => c.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20),
        Err(_) => {
            result.errors.insert("connect".into(), 1);
            live.error();
            return result;
        }
    };
    let interval = (args.grpc_rate > 0)
        .then(|| Duration::from_secs_f64(args.batch as f64 * args.grpc_producers as f64 / args.grpc_rate as f64));
    let mut seq = 0u64;
    let mut k = 0u32;
    let mut done = false;
    while !done {
        let (tx, rx) = tokio::sync::mpsc::channel::<bus::PublishBatchRequest>(4);
        let first_seq = seq;
        let call = {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish_batch(tokio_stream::wrappers::ReceiverStream::new(rx)).await })
        };
        let mut ranges = Vec::new();
        for _ in 0..args.grpc_stream_messages {
            if let Some(i) = interval {
                tokio::time::sleep_until((start + i * k).into()).await;
            }
            if Instant::now() >= deadline {
                done = true;
                break;
            }
            let n = live.claim(args.batch, args.events);
            if n == 0 {
                done = true;
                break;
            }
            k += 1;
            let now_ms = ms_since(start);
            let events: Vec<pb::Event> = template[..n]
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    let mut e = e.clone();
                    e.event_id = load_event_id(run, session, seq + j as u64);
                    if let Some(t) = e.timing.as_mut() {
                        t.client_timestamp_ms = now_ms;
                    }
                    e
                })
                .collect();
            ranges.push((seq, n as u64));
            seq += n as u64;
            result.sent += n as u64;
            if tx.send(bus::PublishBatchRequest { events }).await.is_err() {
                break;
            }
        }
        drop(tx);
        match call.await.expect("publish task") {
            Ok(response) => {
                let response = response.into_inner();
                result.accepted += response.accepted as u64;
                live.accepted.fetch_add(response.accepted as u64, Relaxed);
                let rejected: Vec<u64> = response.rejected.iter().map(|r| r.index as u64).collect();
                let mut index = 0u64;
                for (s, n) in ranges {
                    for j in 0..n {
                        if !rejected.contains(&(index + j)) {
                            result.acked.push((session, s + j, s + j + 1));
                        }
                    }
                    index += n;
                }
                let _ = first_seq;
            }
            Err(status) => {
                *result.errors.entry(format!("grpc-{:?}", status.code())).or_default() += 1;
                live.error();
                if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::ResourceExhausted {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                match EventBusServiceClient::connect(format!("http://{grpc}")).await {
                    Ok(c) => client = c.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    result
}

/// Received event ids of one subscriber, per session, as bitsets.
#[derive(Default)]
struct Seen {
    bits: Vec<Vec<u64>>,
    unique: u64,
}

impl Seen {
    /// Marks (session, seq); true when it was new.
    fn insert(&mut self, session: u32, seq: u64) -> bool {
        let s = session as usize;
        if self.bits.len() <= s {
            self.bits.resize_with(s + 1, Vec::new);
        }
        let words = &mut self.bits[s];
        let w = (seq / 64) as usize;
        if words.len() <= w {
            words.resize((w + 1).max(words.len() * 2), 0);
        }
        let mask = 1u64 << (seq % 64);
        let new = words[w] & mask == 0;
        words[w] |= mask;
        if new {
            self.unique += 1;
        }
        new
    }

    fn contains(&self, session: u32, seq: u64) -> bool {
        self.bits
            .get(session as usize)
            .and_then(|w| w.get((seq / 64) as usize))
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }
}

struct Subscriber {
    raw: bool,
    deliveries: AtomicU64,
    aggregated: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    seen: Mutex<Seen>,
    unique: AtomicU64,
    probe_seen: AtomicBool,
    latencies: Mutex<Latencies>,
}

/// One subscriber's latency histograms (µs).
struct Latencies {
    /// End to end, raw events posted over HTTP.
    raw: Histogram<u64>,
    /// End to end, events published by gRPC producers.
    grpc: Histogram<u64>,
    /// From the send time of a hand's last trigger to its aggregated message.
    aggregated: Histogram<u64>,
    /// From the server's arrival stamp (`received_at`) of a hand's last trigger
    /// to its aggregated message: the aggregation target's own measure. The
    /// generator and the server must share a clock (one machine).
    aggregated_from_arrival: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        Self { raw: histogram(), grpc: histogram(), aggregated: histogram(), aggregated_from_arrival: histogram() }
    }

    fn len(&self) -> u64 {
        self.raw.len() + self.grpc.len() + self.aggregated.len() + self.aggregated_from_arrival.len()
    }

    /// Moves `other`'s samples into these.
    fn take(&mut self, other: &mut Latencies) {
        for (mine, theirs) in [
            (&mut self.raw, &mut other.raw),
            (&mut self.grpc, &mut other.grpc),
            (&mut self.aggregated, &mut other.aggregated),
            (&mut self.aggregated_from_arrival, &mut other.aggregated_from_arrival),
        ] {
            mine.add(&*theirs).ok();
            theirs.reset();
        }
    }
}

/// The part of a `SubscribeResponse` the generator reads. Decoding only these
/// fields (prost skips the rest) keeps the subscribers' CPU off the server's
/// cores: a full `Event` decode costs several times more.
#[derive(Clone, PartialEq, prost::Message)]
struct SlimDelivery {
    /// `SubscribeResponse.event` (a oneof member is an ordinary field on the wire).
    #[prost(message, optional, tag = "5")]
    event: Option<SlimEvent>,
    /// `SubscribeResponse.aggregated`.
    #[prost(message, optional, tag = "6")]
    aggregated: Option<SlimAggregated>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlimEvent {
    #[prost(string, tag = "1")]
    event_id: String,
    #[prost(message, optional, tag = "9")]
    timing: Option<SlimTiming>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlimTiming {
    #[prost(double, tag = "1")]
    client_timestamp_ms: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlimAggregated {
    #[prost(message, repeated, tag = "2")]
    triggers: Vec<SlimTrigger>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlimTrigger {
    #[prost(double, tag = "10")]
    client_timestamp_ms: f64,
    #[prost(message, optional, tag = "11")]
    received_at: Option<prost_types::Timestamp>,
}

fn unix_micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn unix_micros_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

async fn subscribe(grpc: &str, pattern: &str) -> Result<tonic::Streaming<SlimDelivery>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .context("--grpc")?
        .connect()
        .await
        .with_context(|| format!("gRPC connect to {grpc}"))?;
    let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    client.ready().await.context("gRPC channel")?;
    let request = bus::SubscribeRequest {
        pattern: pattern.into(),
        start: bus::StartPosition::Latest as i32,
        ..Default::default()
    };
    let codec = tonic_prost::ProstCodec::<bus::SubscribeRequest, SlimDelivery>::default();
    let path = http::uri::PathAndQuery::from_static("/jimbot.bus.v1.EventBusService/Subscribe");
    Ok(client.server_streaming(tonic::Request::new(request), path, codec).await.context("Subscribe")?.into_inner())
}

async fn run_subscriber(
    mut stream: tonic::Streaming<SlimDelivery>,
    sub: Arc<Subscriber>,
    run: u32,
    start: Instant,
    finished: Arc<AtomicBool>,
    http_sessions: u32,
) {
    let mut local = Latencies::new();
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if finished.load(Relaxed) { break; }
                continue;
            }
        };
        let delivery = match message {
            Ok(Some(d)) => d,
            Ok(None) => {
                *sub.errors.lock().unwrap().entry("stream-ended".into()).or_default() += 1;
                break;
            }
            Err(status) => {
                *sub.errors.lock().unwrap().entry(format!("grpc-{:?}", status.code())).or_default() += 1;
                break;
            }
        };
        sub.deliveries.fetch_add(1, Relaxed);
        let now_ms = ms_since(start);
        match (delivery.event, delivery.aggregated) {
            (Some(event), _) => {
                let Some((session, seq)) = parse_load_event_id(&event.event_id, run) else { continue };
                if session == PROBE_SESSION {
                    sub.probe_seen.store(true, Relaxed);
                    continue;
                }
                if sub.seen.lock().unwrap().insert(session, seq) {
                    sub.unique.fetch_add(1, Relaxed);
                    if let Some(t) = event.timing {
                        let us = ((now_ms - t.client_timestamp_ms) * 1000.0).max(1.0);
                        if us.is_finite() && us < 3.6e9 {
                            if session < http_sessions { &mut local.raw } else { &mut local.grpc }
                                .saturating_record(us as u64);
                        }
                    }
                }
            }
            (None, Some(agg)) => {
                sub.aggregated.fetch_add(1, Relaxed);
                let last = agg.triggers.iter().map(|t| t.client_timestamp_ms).fold(f64::NAN, f64::max);
                if last.is_finite() && last > 0.0 && last <= now_ms {
                    local.aggregated.saturating_record(((now_ms - last) * 1000.0).max(1.0) as u64);
                }
                let arrived = agg.triggers.iter().filter_map(|t| t.received_at.as_ref()).map(unix_micros).max();
                if let Some(arrived) = arrived {
                    local.aggregated_from_arrival.saturating_record((unix_micros_now() - arrived).max(1) as u64);
                }
            }
            _ => {}
        }
        if local.len() >= 4096 {
            sub.latencies.lock().unwrap().take(&mut local);
        }
    }
    sub.latencies.lock().unwrap().take(&mut local);
}

/// One subscriber's latencies, as the report shows them.
fn latency_report(l: &Latencies) -> serde_json::Value {
    json!({
        "e2e_latency_us": percentiles(&l.raw),
        "e2e_grpc_latency_us": percentiles(&l.grpc),
        "e2e_aggregated_latency_us": percentiles(&l.aggregated),
        "e2e_aggregated_from_arrival_us": percentiles(&l.aggregated_from_arrival),
    })
}

/// Finds the pid of the process listening on `port` (loopback or any address).
fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// A `/proc/<pid>/status` value in KiB.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time the process has used so far (user + system, from `/proc/PID/stat`),
/// in seconds: the server's own cost, whatever else shares the machine.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = args.threads {
        builder.worker_threads(t.max(1));
    }
    builder.build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    if args.batch == 0 || args.sessions == 0 && args.grpc_producers == 0 {
        bail!("nothing to send: --batch and --sessions (or --grpc-producers) must be positive");
    }
    if (args.subscribers > 0 || args.grpc_producers > 0) && args.grpc.is_none() {
        bail!("--subscribers and --grpc-producers need --grpc host:port");
    }
    if args.events == 0 && args.duration <= 0.0 {
        bail!("give --duration or --events");
    }
    let target = Arc::new(parse_url(&args.url)?);
    let run = {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (nanos.as_nanos() as u32) ^ (std::process::id().rotate_left(16))
    };
    let server_pid = args.server_pid.or_else(|| {
        let port: u16 = target.host_port.rsplit(':').next()?.parse().ok()?;
        find_listener_pid(port)
    });
    let args = Arc::new(args);
    let start = Instant::now();
    let raw = !args.pattern.ends_with(".aggregated");

    // Subscribers first, then a probe event proves they are attached before the load.
    let finished = Arc::new(AtomicBool::new(false));
    let mut subscribers = Vec::new();
    let mut subscriber_tasks = Vec::new();
    for _ in 0..args.subscribers {
        let stream = subscribe(args.grpc.as_deref().unwrap(), &args.pattern).await?;
        let sub = Arc::new(Subscriber {
            raw,
            deliveries: AtomicU64::new(0),
            aggregated: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(Seen::default()),
            unique: AtomicU64::new(0),
            probe_seen: AtomicBool::new(false),
            latencies: Mutex::new(Latencies::new()),
        });
        subscriber_tasks.push(tokio::spawn(run_subscriber(
            stream,
            sub.clone(),
            run,
            start,
            finished.clone(),
            args.sessions,
        )));
        subscribers.push(sub);
    }
    if args.subscribers > 0 && raw {
        let mut probe = LoadBatch::new(run, PROBE_SESSION, true, 1);
        let waited = Instant::now();
        let mut sender = None;
        let mut next_post = 0u32;
        let mut attempt = 0u64;
        while subscribers.iter().any(|s| !s.probe_seen.load(Relaxed)) {
            if waited.elapsed() > Duration::from_secs(15) {
                bail!("the subscribers did not see the probe event within 15 s (does --url reach the --grpc bus?)");
            }
            if next_post == 0 {
                next_post = 20;
                // A new id each time: events posted before the subscriptions opened are not delivered.
                probe.stamp(attempt, ms_since(start));
                if sender.as_ref().is_none_or(|s: &Sender| s.is_closed()) {
                    sender = connect(&target).await.ok();
                }
                if let Some(s) = sender.as_mut() {
                    let _ = post(s, &target, Bytes::copy_from_slice(&probe.body), Duration::from_secs(5)).await;
                }
            }
            attempt += 1;
            next_post -= 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let live = Arc::new(Live::new());
    let load_start = live.load_start;
    let duration =
        if args.duration > 0.0 { Duration::from_secs_f64(args.duration) } else { Duration::from_secs(1 << 30) };
    let deadline = load_start + duration;
    let stamp_start = start;
    let mut sessions = Vec::new();
    for i in 0..args.sessions {
        sessions.push(tokio::spawn(http_session(
            i,
            run,
            args.clone(),
            target.clone(),
            live.clone(),
            stamp_start,
            deadline,
        )));
    }
    let mut producers = Vec::new();
    for p in 0..args.grpc_producers {
        producers.push(tokio::spawn(grpc_producer(p, run, args.clone(), live.clone(), stamp_start, deadline)));
    }

    // Progress, RSS sampling.
    let bar = (std::io::stdout().is_terminal() && !args.quiet).then(|| {
        let bar = if args.events > 0 {
            indicatif::ProgressBar::new(args.events)
        } else {
            indicatif::ProgressBar::new(duration.as_secs().max(1))
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .expect("template"),
        );
        bar
    });
    let mut rss_peak_kib = server_pid.and_then(|p| proc_status_kib(p, "VmRSS:")).unwrap_or(0);
    let cpu_at_start = server_pid.and_then(proc_cpu_seconds);
    let all_done = || sessions.iter().all(|h| h.is_finished()) && producers.iter().all(|h| h.is_finished());
    let mut last = (Instant::now(), 0u64);
    while !all_done() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(pid) = server_pid {
            rss_peak_kib = rss_peak_kib.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
        }
        if let Some(bar) = &bar {
            let accepted = live.accepted.load(Relaxed);
            let rate = (accepted - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), accepted);
            bar.set_position(if args.events > 0 {
                accepted
            } else {
                load_start.elapsed().as_secs().min(bar.length().unwrap_or(0))
            });
            let delivered: u64 = subscribers.iter().map(|s| s.unique.load(Relaxed)).sum();
            bar.set_message(format!(
                "{:.0} ev/s, {} accepted, {} errors, {} delivered, RSS {} MiB",
                rate,
                accepted,
                live.errors.load(Relaxed),
                delivered,
                rss_peak_kib / 1024
            ));
        }
    }
    let load_elapsed = load_start.elapsed();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let mut http_latency = histogram();
    let (mut requests, mut sent, mut accepted, mut duplicates, mut rejected) = (0, 0, 0, 0, 0);
    let mut http_errors = BTreeMap::new();
    let mut acked: Acked = Vec::new();
    for s in sessions {
        let r = s.await?;
        http_latency.add(&r.latency_us).ok();
        requests += r.requests;
        sent += r.sent;
        accepted += r.accepted;
        duplicates += r.duplicates;
        rejected += r.rejected;
        merge_counts(&mut http_errors, &r.errors);
        acked.extend(r.acked);
    }
    let (mut grpc_sent, mut grpc_accepted) = (0, 0);
    let mut grpc_errors = BTreeMap::new();
    for p in producers {
        let r = p.await?;
        grpc_sent += r.sent;
        grpc_accepted += r.accepted;
        merge_counts(&mut grpc_errors, &r.errors);
        acked.extend(r.acked);
    }
    let acked_total: u64 = acked.iter().map(|(_, a, b)| b - a).sum();

    // Drain: wait until every raw subscriber holds every acked id, or the timeout.
    let drain_start = Instant::now();
    let missing_of = |sub: &Subscriber| -> u64 {
        let seen = sub.seen.lock().unwrap();
        acked.iter().map(|&(s, a, b)| (a..b).filter(|&q| !seen.contains(s, q)).count() as u64).sum()
    };
    let checked: Vec<&Arc<Subscriber>> = subscribers.iter().filter(|s| s.raw).collect();
    let mut lost: Vec<u64> = vec![0; checked.len()];
    loop {
        let counts_match = checked.iter().all(|s| s.unique.load(Relaxed) >= acked_total);
        if counts_match || drain_start.elapsed() >= Duration::from_secs_f64(args.drain_timeout) {
            lost = checked.iter().map(|s| missing_of(s)).collect();
            if lost.iter().all(|&l| l == 0) || drain_start.elapsed() >= Duration::from_secs_f64(args.drain_timeout) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_elapsed = drain_start.elapsed();
    if !checked.is_empty() {
        // Aggregated streams have nothing to count; give them the same grace anyway.
    } else if args.subscribers > 0 {
        tokio::time::sleep(Duration::from_secs_f64(args.drain_timeout.min(1.0))).await;
    }
    finished.store(true, Relaxed);
    for t in subscriber_tasks {
        let _ = t.await;
    }
    if let Some(pid) = server_pid {
        rss_peak_kib = rss_peak_kib.max(proc_status_kib(pid, "VmRSS:").unwrap_or(0));
    }
    let vm_hwm_kib = server_pid.and_then(|p| proc_status_kib(p, "VmHWM:"));
    // From the load's start to the end of the drain: ingest and delivery alike.
    let server_cpu_s = cpu_at_start.zip(server_pid.and_then(proc_cpu_seconds)).map(|(a, b)| b - a);

    // Report.
    let mut all = Latencies::new();
    let mut sub_reports = Vec::new();
    let mut sub_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut checked_index = 0;
    for s in &subscribers {
        let mut mine = s.latencies.lock().unwrap();
        let report = latency_report(&mine);
        all.take(&mut mine);
        let errors = s.errors.lock().unwrap().clone();
        merge_counts(&mut sub_errors, &errors);
        let lost_here = if s.raw {
            checked_index += 1;
            Some(lost[checked_index - 1])
        } else {
            None
        };
        sub_reports.push(json!({
            "pattern": args.pattern,
            "deliveries": s.deliveries.load(Relaxed),
            "unique_load_events": s.unique.load(Relaxed),
            "aggregated": s.aggregated.load(Relaxed),
            "lost": lost_here,
            "latency": report,
            "errors": errors,
        }));
    }
    // Subscribers stop reading on their own when the run is over, so a stream the
    // server ended ("stream-ended") is an error like any other.
    let secs = load_elapsed.as_secs_f64();
    let total_accepted = accepted + grpc_accepted;
    let error_count: u64 =
        http_errors.values().sum::<u64>() + grpc_errors.values().sum::<u64>() + sub_errors.values().sum::<u64>();
    let lost_total: u64 = lost.iter().sum();
    let report = json!({
        "run_id": format!("{run:08x}"),
        "url": args.url,
        "grpc": args.grpc,
        "config": {
            "sessions": args.sessions, "batch": args.batch, "rate": args.rate, "duration_s": args.duration,
            "events_limit": args.events, "field_mod_share": args.field_mod_share, "subscribers": args.subscribers,
            "pattern": args.pattern, "strict_json": args.strict_json, "grpc_producers": args.grpc_producers, "grpc_rate": args.grpc_rate,
        },
        "elapsed_s": secs,
        "accepted": total_accepted,
        "events_per_s": total_accepted as f64 / secs,
        "errors": error_count,
        "first_error_s": match live.first_error_us.load(Relaxed) {
            u64::MAX => Value::Null,
            us => json!(us as f64 / 1e6),
        },
        "lost": if checked.is_empty() { Value::Null } else { json!(lost_total) },
        "acked_ids": acked_total,
        "http": {
            "requests": requests,
            "events_sent": sent,
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": rejected,
            "events_per_s": accepted as f64 / secs,
            "latency_us": percentiles(&http_latency),
            "errors": http_errors,
        },
        "grpc_publish": {
            "producers": args.grpc_producers,
            "events_sent": grpc_sent,
            "accepted": grpc_accepted,
            "events_per_s": grpc_accepted as f64 / secs,
            "errors": grpc_errors,
        },
        "subscribers": sub_reports,
        "deliveries_per_s": subscribers.iter().map(|s| s.deliveries.load(Relaxed)).sum::<u64>() as f64
            / (secs + drain_elapsed.as_secs_f64()),
        "e2e_latency_us": percentiles(&all.raw),
        "e2e_grpc_latency_us": percentiles(&all.grpc),
        "e2e_aggregated_latency_us": percentiles(&all.aggregated),
        "e2e_aggregated_from_arrival_us": percentiles(&all.aggregated_from_arrival),
        "drain_s": drain_elapsed.as_secs_f64(),
        "server": {
            "pid": server_pid,
            "vm_hwm_kib": vm_hwm_kib,
            "rss_peak_sampled_kib": server_pid.map(|_| rss_peak_kib),
            "cpu_s": server_cpu_s,
            "cpu_us_per_event": server_cpu_s.filter(|_| total_accepted > 0).map(|c| c * 1e6 / total_accepted as f64),
        },
    });
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(r: &Value) {
    let lat = |v: &Value| {
        if v["count"].as_u64().unwrap_or(0) == 0 {
            "n/a".to_string()
        } else {
            format!("p50 {} µs, p99 {} µs, p999 {} µs, max {} µs", v["p50"], v["p99"], v["p999"], v["max"])
        }
    };
    println!("jimbus-load run {} against {}", r["run_id"].as_str().unwrap_or(""), r["url"].as_str().unwrap_or(""));
    println!(
        "accepted      {} events in {:.2} s = {:.0} events/s (HTTP {:.0}/s, gRPC publish {:.0}/s)",
        r["accepted"],
        r["elapsed_s"].as_f64().unwrap_or(0.0),
        r["events_per_s"].as_f64().unwrap_or(0.0),
        r["http"]["events_per_s"].as_f64().unwrap_or(0.0),
        r["grpc_publish"]["events_per_s"].as_f64().unwrap_or(0.0),
    );
    println!("HTTP latency  {}", lat(&r["http"]["latency_us"]));
    println!("end to end    {} (HTTP POST to delivery)", lat(&r["e2e_latency_us"]));
    if r["e2e_grpc_latency_us"]["count"].as_u64().unwrap_or(0) > 0 {
        println!("end to end    {} (gRPC PublishBatch to delivery)", lat(&r["e2e_grpc_latency_us"]));
    }
    if r["e2e_aggregated_latency_us"]["count"].as_u64().unwrap_or(0) > 0 {
        println!("end to end    {} (last trigger sent to aggregated message)", lat(&r["e2e_aggregated_latency_us"]));
        println!(
            "              {} (last trigger's arrival to aggregated message)",
            lat(&r["e2e_aggregated_from_arrival_us"])
        );
    }
    let first_error = match r["first_error_s"].as_f64() {
        Some(t) => format!("; the first {t:.2} s into the load"),
        None => String::new(),
    };
    println!(
        "errors        {} (HTTP {}, gRPC {}){first_error}",
        r["errors"], r["http"]["errors"], r["grpc_publish"]["errors"]
    );
    let sub_errors: Vec<String> =
        r["subscribers"].as_array().into_iter().flatten().map(|s| s["errors"].to_string()).collect();
    if r["lost"].is_null() {
        println!(
            "lost          not checked (no raw subscriber); deliveries {:.0}/s",
            r["deliveries_per_s"].as_f64().unwrap_or(0.0)
        );
    } else {
        println!(
            "lost          {} of {} acked ids (drain {:.2} s); deliveries {:.0}/s; subscriber errors {}",
            r["lost"],
            r["acked_ids"],
            r["drain_s"].as_f64().unwrap_or(0.0),
            r["deliveries_per_s"].as_f64().unwrap_or(0.0),
            sub_errors.join(" ")
        );
    }
    println!(
        "server        pid {} VmHWM {} KiB, sampled peak RSS {} KiB",
        r["server"]["pid"], r["server"]["vm_hwm_kib"], r["server"]["rss_peak_sampled_kib"]
    );
    if let Some(cpu) = r["server"]["cpu_us_per_event"].as_f64() {
        println!(
            "server CPU    {:.2} s = {cpu:.2} µs per accepted event, at {:.0} events/s",
            r["server"]["cpu_s"].as_f64().unwrap_or(0.0),
            r["events_per_s"].as_f64().unwrap_or(0.0)
        );
    }
}

//! The gRPC subscribers: each holds one `Subscribe` stream on `--pattern`,
//! decodes only the fields it needs, marks every load event id it receives,
//! and times end-to-end latency (raw, gRPC-published and aggregated). After the
//! load, [`Subscribers::drain`] waits until each raw subscriber holds every
//! acknowledged id and counts what is missing. It only reads: it must never
//! publish, and never count an id as delivered twice.

use crate::args::Args;
use crate::sessions::PROBE_SESSION;
use crate::stats::{histogram, ms_since, percentiles, Acked};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use jimbus_perf::parse_load_event_id;
use jimbus_proto::bus;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Received event ids of one subscriber, per session, as bitsets.
#[derive(Default)]
pub struct Seen {
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

pub struct Subscriber {
    pub raw: bool,
    pub deliveries: AtomicU64,
    pub aggregated: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub seen: Mutex<Seen>,
    pub unique: AtomicU64,
    pub probe_seen: AtomicBool,
    pub latencies: Mutex<Latencies>,
}

/// One subscriber's latency histograms (µs).
pub struct Latencies {
    /// End to end, raw events posted over HTTP.
    pub raw: Histogram<u64>,
    /// End to end, events published by gRPC producers.
    pub grpc: Histogram<u64>,
    /// From the send time of a hand's last trigger to its aggregated message.
    pub aggregated: Histogram<u64>,
    /// From the server's arrival stamp (`received_at`) of a hand's last trigger
    /// to its aggregated message: the aggregation target's own measure. The
    /// generator and the server must share a clock (one machine).
    pub aggregated_from_arrival: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Self { raw: histogram(), grpc: histogram(), aggregated: histogram(), aggregated_from_arrival: histogram() }
    }

    fn len(&self) -> u64 {
        self.raw.len() + self.grpc.len() + self.aggregated.len() + self.aggregated_from_arrival.len()
    }

    /// Moves `other`'s samples into these.
    pub fn take(&mut self, other: &mut Latencies) {
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

/// What a subscriber task needs besides its stream.
struct Reader {
    sub: Arc<Subscriber>,
    run: u32,
    start: Instant,
    http_sessions: u32,
    local: Latencies,
}

async fn run_subscriber(mut stream: tonic::Streaming<SlimDelivery>, mut reader: Reader, finished: Arc<AtomicBool>) {
    let sub = reader.sub.clone();
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
        reader.record(delivery);
        if reader.local.len() >= 4096 {
            sub.latencies.lock().unwrap().take(&mut reader.local);
        }
    }
    sub.latencies.lock().unwrap().take(&mut reader.local);
}

impl Reader {
    /// Marks one delivery's id and records its latency.
    fn record(&mut self, delivery: SlimDelivery) {
        let (sub, local) = (&self.sub, &mut self.local);
        let now_ms = ms_since(self.start);
        match (delivery.event, delivery.aggregated) {
            (Some(event), _) => {
                let Some((session, seq)) = parse_load_event_id(&event.event_id, self.run) else { return };
                if session == PROBE_SESSION {
                    sub.probe_seen.store(true, Relaxed);
                    return;
                }
                if sub.seen.lock().unwrap().insert(session, seq) {
                    sub.unique.fetch_add(1, Relaxed);
                    if let Some(t) = event.timing {
                        let us = ((now_ms - t.client_timestamp_ms) * 1000.0).max(1.0);
                        if us.is_finite() && us < 3.6e9 {
                            if session < self.http_sessions { &mut local.raw } else { &mut local.grpc }
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
    }
}

/// One subscriber's latencies, as the report shows them.
pub fn latency_report(l: &Latencies) -> serde_json::Value {
    json!({
        "e2e_latency_us": percentiles(&l.raw),
        "e2e_grpc_latency_us": percentiles(&l.grpc),
        "e2e_aggregated_latency_us": percentiles(&l.aggregated),
        "e2e_aggregated_from_arrival_us": percentiles(&l.aggregated_from_arrival),
    })
}

/// Every subscriber of the run and their tasks.
pub struct Subscribers {
    pub all: Vec<Arc<Subscriber>>,
    /// Whether they read raw events (checked for loss) rather than aggregated messages.
    pub raw: bool,
    tasks: Vec<JoinHandle<()>>,
    finished: Arc<AtomicBool>,
}

/// What the drain found: ids missing per raw subscriber, and how long it took.
pub struct Drain {
    /// One count per raw subscriber, in order.
    pub lost: Vec<u64>,
    pub elapsed: Duration,
}

impl Subscribers {
    /// Opens `--subscribers` streams on `--pattern`, each read by its own task.
    pub async fn open(args: &Args, run: u32, start: Instant) -> Result<Self> {
        let raw = args.raw_pattern();
        let finished = Arc::new(AtomicBool::new(false));
        let (mut all, mut tasks) = (Vec::new(), Vec::new());
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
            let reader = Reader { sub: sub.clone(), run, start, http_sessions: args.sessions, local: Latencies::new() };
            tasks.push(tokio::spawn(run_subscriber(stream, reader, finished.clone())));
            all.push(sub);
        }
        Ok(Self { all, raw, tasks, finished })
    }

    /// True once every subscriber has received a probe event.
    pub fn all_saw_probe(&self) -> bool {
        self.all.iter().all(|s| s.probe_seen.load(Relaxed))
    }

    /// Distinct load events received, summed over the subscribers.
    pub fn delivered(&self) -> u64 {
        self.all.iter().map(|s| s.unique.load(Relaxed)).sum()
    }

    /// Waits until every raw subscriber holds every acked id, or `timeout`.
    pub async fn drain(&self, acked: &Acked, acked_total: u64, timeout: Duration) -> Drain {
        let drain_start = Instant::now();
        let missing_of = |sub: &Subscriber| -> u64 {
            let seen = sub.seen.lock().unwrap();
            acked.iter().map(|&(s, a, b)| (a..b).filter(|&q| !seen.contains(s, q)).count() as u64).sum()
        };
        let checked: Vec<&Arc<Subscriber>> = self.all.iter().filter(|s| s.raw).collect();
        let mut lost: Vec<u64> = vec![0; checked.len()];
        loop {
            let counts_match = checked.iter().all(|s| s.unique.load(Relaxed) >= acked_total);
            if counts_match || drain_start.elapsed() >= timeout {
                lost = checked.iter().map(|s| missing_of(s)).collect();
                if lost.iter().all(|&l| l == 0) || drain_start.elapsed() >= timeout {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Drain { lost, elapsed: drain_start.elapsed() }
    }

    /// Stops every subscriber task (after a short grace for aggregated streams,
    /// which have nothing to count) and waits for them.
    pub async fn stop(&mut self, drain_timeout: f64) {
        let checked = self.all.iter().any(|s| s.raw);
        if !checked && !self.all.is_empty() {
            tokio::time::sleep(Duration::from_secs_f64(drain_timeout.min(1.0))).await;
        }
        self.finished.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

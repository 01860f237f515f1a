//! The HTTP sessions: each one keep-alive connection with one request in
//! flight, posting cascade batches in the mod's dialect (open loop at `--rate`,
//! or as fast as the server answers), retrying as the field mod does, and
//! recording what the server acknowledged; also the probe event that proves the
//! subscribers are attached. It speaks only the mod's HTTP API and must never
//! count an event as acknowledged without a 2xx that covers it.

use crate::args::Args;
use crate::stats::{histogram, ms_since, Acked, Live};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jimbus_perf::LoadBatch;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Session index of the readiness probe (outside any real session's range).
pub const PROBE_SESSION: u32 = 99_999;

/// What one HTTP session did.
pub struct SessionResult {
    pub latency_us: Histogram<u64>,
    pub requests: u64,
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub errors: BTreeMap<String, u64>,
    pub acked: Acked,
}

pub struct Target {
    authority: String,
    pub host_port: String,
    path: String,
}

pub fn parse_url(url: &str) -> Result<Target> {
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
        success(&body)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed("timeout"),
    }
}

/// A 2xx is success (the mod never reads the body); jimbus also says what it kept.
fn success(body: &[u8]) -> Outcome {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
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
}

/// One session's connection and tally, between batches.
struct Session {
    index: u32,
    args: Arc<Args>,
    target: Arc<Target>,
    live: Arc<Live>,
    timeout: Duration,
    sender: Option<Sender>,
    result: SessionResult,
}

pub async fn http_session(
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
    // Open loop at a fixed rate: batch k of this session is due at `phase + k * interval`.
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.batch as f64 * args.sessions as f64 / args.rate as f64));
    let phase = interval.map(|i| i.mul_f64(index as f64 / args.sessions as f64));
    let mut session = Session::new(index, args, target, live);
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
        let n = session.live.claim(session.args.batch, session.args.events);
        if n == 0 {
            break;
        }
        if n != batch.len() {
            batch = LoadBatch::with_quirks(run, index, explicit, n, quirky);
        }
        k += 1;
        let sent_at = Instant::now();
        batch.stamp(seq, ms_since(start));
        session.result.sent += n as u64;
        // With --rate, latency counts from when the batch was due (no coordinated omission).
        session.send(Bytes::copy_from_slice(&batch.body), n, seq, due.unwrap_or(sent_at)).await;
        seq += n as u64;
    }
    session.result
}

impl Session {
    fn new(index: u32, args: Arc<Args>, target: Arc<Target>, live: Arc<Live>) -> Self {
        let result = SessionResult {
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
        Self { index, args, target, live, timeout, sender: None, result }
    }

    /// Posts one batch (events `seq..seq + n`), retrying up to --retries times.
    async fn send(&mut self, body: Bytes, n: usize, seq: u64, from: Instant) {
        let mut attempt = 0;
        loop {
            let wait = match self.attempt(body.clone()).await {
                Outcome::Ok { accepted, duplicates, rejected } => {
                    self.result.latency_us.saturating_record(from.elapsed().as_micros().max(1) as u64);
                    self.acknowledge(n, seq, accepted, duplicates, &rejected);
                    break;
                }
                Outcome::Status { code, retry_after } => {
                    self.count_error(code.to_string());
                    if matches!(code, 429 | 503 | 507) {
                        retry_after.unwrap_or(Duration::from_millis(100)).min(Duration::from_secs(1))
                    } else {
                        Duration::from_millis(100 << attempt.min(4))
                    }
                }
                Outcome::Failed(kind) => {
                    if kind != "connect-retry" {
                        self.count_error(kind.into());
                    }
                    self.sender = None;
                    Duration::from_millis(100 << attempt.min(4))
                }
            };
            attempt += 1;
            if attempt > self.args.retries {
                break;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One request, on the open connection or a new one.
    async fn attempt(&mut self, body: Bytes) -> Outcome {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = match connect(&self.target).await {
                Ok(s) => Some(s),
                Err(_) => {
                    self.count_error("connect".into());
                    None
                }
            };
        }
        match self.sender.as_mut() {
            Some(s) => {
                self.result.requests += 1;
                post(s, &self.target, body, self.timeout).await
            }
            None => Outcome::Failed("connect-retry"),
        }
    }

    fn count_error(&mut self, kind: String) {
        *self.result.errors.entry(kind).or_default() += 1;
        self.live.error();
    }

    /// Records a 2xx: every event of the batch but the `rejected` indexes is acked.
    fn acknowledge(&mut self, n: usize, seq: u64, accepted: u64, duplicates: u64, rejected: &[usize]) {
        let result = &mut self.result;
        let kept = n as u64 - rejected.len() as u64;
        result.accepted += if accepted == u64::MAX { kept } else { accepted };
        result.duplicates += duplicates;
        result.rejected += rejected.len() as u64;
        self.live.accepted.fetch_add(kept, Relaxed);
        if rejected.is_empty() {
            result.acked.push((self.index, seq, seq + n as u64));
        } else {
            for i in 0..n {
                if !rejected.contains(&i) {
                    result.acked.push((self.index, seq + i as u64, seq + i as u64 + 1));
                }
            }
        }
    }
}

/// Posts a probe event every 500 ms until `seen()` says every subscriber got
/// one; fails after 15 s.
pub async fn probe_until(target: &Target, run: u32, start: Instant, seen: impl Fn() -> bool) -> Result<()> {
    let mut probe = LoadBatch::new(run, PROBE_SESSION, true, 1);
    let waited = Instant::now();
    let mut sender = None;
    let mut next_post = 0u32;
    let mut attempt = 0u64;
    while !seen() {
        if waited.elapsed() > Duration::from_secs(15) {
            bail!("the subscribers did not see the probe event within 15 s (does --url reach the --grpc bus?)");
        }
        if next_post == 0 {
            next_post = 20;
            // A new id each time: events posted before the subscriptions opened are not delivered.
            probe.stamp(attempt, ms_since(start));
            if sender.as_ref().is_none_or(|s: &Sender| s.is_closed()) {
                sender = connect(target).await.ok();
            }
            if let Some(s) = sender.as_mut() {
                let _ = post(s, target, Bytes::copy_from_slice(&probe.body), Duration::from_secs(5)).await;
            }
        }
        attempt += 1;
        next_post -= 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

//! The whole ingest path without sockets, for the criterion bench
//! (`benches/ingest.rs`), the allocation count and callgrind
//! (`examples/ingest_count.rs`): body bytes in, records staged and written by
//! a real shard, answers ready out. Each request runs what the HTTP edge runs
//! after its socket read — the dialect decoder with the memory charge, the one
//! admission step, the router's split and the shard's flume queue — and the
//! shard's pump applies it as it applies any append: dedup, sequences, stamps,
//! the record encoding, a group commit through io_uring. The log lives on
//! tmpfs with `--fsync never`, so the figure is CPU, not the disk. This module
//! must never assert on what it measures.

use bytes::Bytes;
use jimbus_core::aggregate::{AggregateConfig, Aggregated, Aggregator, Stamped};
use jimbus_core::budget::MemoryBudget;
use jimbus_core::ingest::{decode_body_within, Endpoint, Limits, MAX_EVENTS};
use jimbus_core::record::{self, RecordKind};
use jimbus_core::stamps::{RecordMessage, RequestStamps, StampEncoder};
use jimbus_core::topic::TopicWriter;
use jimbus_net::bus::{AppendItem, Bus, ItemOutcome};
use jimbus_net::embedded::{self, DurableLimits, FsyncMode, LogOptions, PumpOptions, Retention, ShardRouter};
use jimbus_proto::events::Event;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct IngestRun {
    /// Requests each client task sends, one after the other.
    pub requests_per_client: usize,
    /// Client tasks with a request in flight at once (wrk's connections).
    pub clients: usize,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct IngestReport {
    pub events: u64,
    pub elapsed: Duration,
}

/// Runs `run` with `body` (a batch in the field mod's dialect) on one glommio
/// executor that also holds the shard: one core does everything.
pub fn ingest(body: &[u8], run: IngestRun) -> IngestReport {
    let body = Bytes::copy_from_slice(body);
    let dir = tempfile::Builder::new().prefix("jimbus-ingest-").tempdir_in(tmpfs()).expect("a temporary directory");
    let data_dir = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let budget = MemoryBudget::new(1 << 30);
            let (router, mut queues) = embedded::queues(1, 4096);
            let shard = embedded::open(0, &data_dir, log_options(), pump_options(), router.clone(), &budget)
                .await
                .expect("the shard opens");
            let pump = glommio::spawn_local(embedded::run(shard, queues.remove(0)));
            let report = drive(&router, &body, &budget, run).await;
            // Awaited, not `embedded::stop`, which would block the thread the pump shares.
            let stopped = embedded::shutdown(&router);
            let _ = stopped.recv_async().await;
            pump.await;
            report
        })
        .expect("an executor")
        .join()
        .expect("the executor ran")
}

/// The clients' requests, each awaited to its answer.
async fn drive(
    router: &ShardRouter,
    body: &Bytes,
    budget: &std::sync::Arc<MemoryBudget>,
    run: IngestRun,
) -> IngestReport {
    let started = Instant::now();
    let clients: Vec<_> = (0..run.clients)
        .map(|client| {
            let (router, body, budget) = (router.clone(), body.clone(), budget.clone());
            glommio::spawn_local(async move {
                let mut stored = 0u64;
                for request in 0..run.requests_per_client {
                    stored +=
                        one_request(&router, &body, &budget, (client * run.requests_per_client + request) as u64).await;
                }
                stored
            })
        })
        .collect();
    let mut events = 0;
    for client in clients {
        events += client.await;
    }
    IngestReport { events, elapsed: started.elapsed() }
}

/// One request as the HTTP edge handles it after the socket read; returns the
/// events stored.
pub async fn one_request(router: &ShardRouter, body: &Bytes, budget: &std::sync::Arc<MemoryBudget>, n: u64) -> u64 {
    let Some(items) = admitted(body, budget, n) else { return 0 };
    let Ok(appending) = router.try_append(items) else { return 0 };
    match appending.await {
        Ok(outcomes) => outcomes.iter().filter(|o| matches!(o, ItemOutcome::Stored { .. })).count() as u64,
        Err(_) => 0,
    }
}

/// What the HTTP edge hands the bus for request `n`: the body decoded within
/// its memory grant, then admitted.
fn admitted(body: &Bytes, budget: &std::sync::Arc<MemoryBudget>, n: u64) -> Option<Vec<AppendItem>> {
    let mut grant = budget.request(body.len() as u64 * 8, body.len() as u64)?;
    // The body and its decoded events, as the HTTP edge asks.
    let mut reserve = |total: usize| grant.grow_to((body.len() + total) as u64);
    let limits = Limits { max_events: MAX_EVENTS, reserve: &mut reserve };
    let decoded = decode_body_within(body, Endpoint::Batch, limits).ok()?;
    let request_id = format!("bench-{n}");
    let received = jimbus_net::clock::now_micros();
    let peer = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let letter = |reason: String, _raw: Bytes, _session: String| {
        AppendItem::DeadLetter(Box::new(jimbus_proto::bus::DeadLetter { reason, ..Default::default() }))
    };
    let (items, _rejected) = jimbus_net::http::prepare(decoded, body, &request_id, received, peer, &letter);
    Some(items)
}

/// The CPU-bound part of the path on this thread, without a runtime, for
/// callgrind (which cannot run glommio's io_uring waits): what the edge does
/// ([`admitted`]) and what the pump does to each event — the client's view
/// and its dedup key, the session's sequence, the stamps, the topic and the
/// record's framing, encoded in place into one reused buffer as the shard
/// encodes into its commit buffer, then aggregation and the records of the
/// messages it emits. Returns the events staged.
///
/// Aggregation runs on a simulated clock, a request every 125 µs (wrk's pace
/// at 400 K events/s), so that its windows end after the same events under
/// callgrind, which runs fifty times slower, as they do at full speed.
pub fn cpu_path(body: &[u8], requests: usize) -> u64 {
    let body = Bytes::copy_from_slice(body);
    let budget = MemoryBudget::new(1 << 30);
    let mut shard = CpuShard::default();
    for n in 0..requests {
        let now = jimbus_net::clock::now_micros();
        let simulated = Duration::from_micros(125 * n as u64);
        let from = shard.log.len();
        for item in admitted(&body, &budget, n as u64).unwrap_or_default() {
            if let AppendItem::Event(event, request) = item {
                shard.stage(event, &request, now, simulated);
            }
        }
        shard.tick(now, simulated);
        shard.seal(from);
        if shard.log.len() > 1 << 20 {
            shard.log.clear();
        }
    }
    shard.staged
}

/// What [`cpu_path`] keeps from one event to the next, as a shard does.
struct CpuShard {
    /// The records, as a commit buffer holds them.
    log: Vec<u8>,
    /// Where each record of the request ends in `log`, to be sealed with
    /// their checksums as a commit seals its records.
    ends: Vec<usize>,
    /// Writes each event's topic, as the shard's one does.
    topics: TopicWriter,
    /// Completes each record after its client view.
    stamper: StampEncoder,
    /// The next sequence of each session.
    sequences: jimbus_core::recent_map::RecentKeyMap<u64>,
    /// The shard's aggregation, with its default configuration.
    aggregator: Aggregator,
    /// Messages the aggregator emitted, staged at the next tick.
    aggregated: Vec<Aggregated>,
    /// Events staged so far, also the next record's offset.
    staged: u64,
}

impl Default for CpuShard {
    fn default() -> Self {
        Self {
            log: Vec::with_capacity(1 << 20),
            ends: Vec::new(),
            topics: TopicWriter::default(),
            stamper: StampEncoder::default(),
            sequences: Default::default(),
            aggregator: Aggregator::new(AggregateConfig::default()).expect("the default configuration is valid"),
            aggregated: Vec::new(),
            staged: 0,
        }
    }
}

impl CpuShard {
    /// Stages `event`'s record received at `now` (µs), then offers it to
    /// aggregation at `simulated`.
    fn stage(&mut self, mut event: Box<Event>, request: &Arc<RequestStamps>, now: u64, simulated: Duration) {
        let (sequences, stamper) = (&mut self.sequences, &mut self.stamper);
        let topic = self.topics.write(&event.session_id, &event.event_type);
        let published = jimbus_net::clock::timestamp(now);
        let stored = record::frame_with(self.staged, now, RecordKind::Event, topic, &mut self.log, |out| {
            // The pump's staging, with a dedup window that never holds the key.
            let is_retry = |key| {
                std::hint::black_box(key);
                false
            };
            let sequence_of = |session: &str| jimbus_core::recent_map::take_sequence(sequences, session);
            stamper.append_record(&mut event, request, published, out, is_retry, sequence_of)
        });
        self.staged += 1;
        self.ends.push(self.log.len());
        let session = std::mem::take(&mut event.session_id);
        let RecordMessage { sequence, len: encoded_len, .. } = stored.expect("nothing is refused");
        let stamped = Stamped::of_stored(request, encoded_len);
        let offered = self.aggregator.offer_arrived(
            &session,
            sequence,
            &mut event,
            stamped,
            simulated,
            simulated,
            &mut self.aggregated,
        );
        std::hint::black_box(offered.is_ok());
        event.session_id = session;
        // As the edge does with the events the shard hands back.
        jimbus_core::spare_events::give_back([event]);
    }

    /// Writes the checksums of the records framed since `log` was `from`
    /// long, as a commit does.
    fn seal(&mut self, from: usize) {
        record::seal(&mut self.log[from..], self.ends.drain(..).map(|end| end - from));
    }

    /// Runs aggregation's timers at `simulated` and stages what it emitted.
    fn tick(&mut self, now: u64, simulated: Duration) {
        self.aggregator.tick(simulated, &mut self.aggregated);
        for message in self.aggregated.drain(..) {
            let topic = jimbus_core::topic::aggregated_topic(&message.session);
            let encode = |out: &mut Vec<u8>| {
                jimbus_proto::wire::Write::write(&message.message, out);
                Some(())
            };
            record::frame_with(0, now, RecordKind::Aggregated, &topic, &mut self.log, encode);
            self.ends.push(self.log.len());
            // As the pump does once the commit that carries it is durable.
            self.aggregator.take_back([message]);
        }
    }
}

fn log_options() -> LogOptions {
    LogOptions {
        fsync: FsyncMode::Never,
        segment_bytes: 256 << 20,
        tail_cache_bytes: 8 << 20,
        retention: Retention::default(),
        prepare_ahead: false,
    }
}

fn pump_options() -> PumpOptions {
    PumpOptions {
        dedup_window: 65_536,
        linger: Duration::ZERO,
        max_batch: 1024,
        aggregate: Default::default(),
        durables: DurableLimits::default(),
    }
}

/// Where the log goes: tmpfs when the machine has one, so no disk is measured.
fn tmpfs() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

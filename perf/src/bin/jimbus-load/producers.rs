//! The gRPC producers: each streams `PublishBatch` requests of `--batch` events
//! (as fast as possible or at `--grpc-rate`), `--grpc-stream-messages` per
//! stream, and counts as acknowledged what the stream's summary accepted. It
//! must never count a request the summary rejected, nor retry a stream whose
//! outcome it does not know (a failed stream's events are simply not acked).

use crate::args::Args;
use crate::stats::{ms_since, Acked, Live};
use jimbus_perf::{load_event_id, load_session_id, LoadBatch};
use jimbus_proto::bus;
use jimbus_proto::bus::event_bus_service_client::EventBusServiceClient;
use jimbus_proto::events as pb;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Client = EventBusServiceClient<tonic::transport::Channel>;

/// What one gRPC producer did.
pub struct ProducerResult {
    pub sent: u64,
    pub accepted: u64,
    pub errors: BTreeMap<String, u64>,
    pub acked: Acked,
}

/// One producer's state between streams.
struct Producer {
    session: u32,
    run: u32,
    args: Arc<Args>,
    live: Arc<Live>,
    start: Instant,
    deadline: Instant,
    template: Vec<pb::Event>,
    interval: Option<Duration>,
    seq: u64,
    k: u32,
    result: ProducerResult,
}

async fn connect(grpc: &str) -> Result<Client, tonic::transport::Error> {
    let client = EventBusServiceClient::connect(format!("http://{grpc}")).await?;
    Ok(client.max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// The load batch of `session` as protobuf events.
fn template(run: u32, session: u32, batch: usize) -> Vec<pb::Event> {
    let batch = LoadBatch::new(run, session, true, batch);
    jimbus_core::ingest::decode_body(&batch.body, jimbus_core::ingest::Endpoint::Batch)
        .expect("the load batch decodes")
        .events
        .into_iter()
        .map(|d| {
            let mut e = *d.event;
            e.session_id = load_session_id(run, session);
            e
        })
        .collect()
}

pub async fn grpc_producer(
    index: u32,
    run: u32,
    args: Arc<Args>,
    live: Arc<Live>,
    start: Instant,
    deadline: Instant,
) -> ProducerResult {
    let session = args.sessions + index;
    let result = ProducerResult { sent: 0, accepted: 0, errors: BTreeMap::new(), acked: Vec::new() };
    let template = template(run, session, args.batch);
    let interval = (args.grpc_rate > 0)
        .then(|| Duration::from_secs_f64(args.batch as f64 * args.grpc_producers as f64 / args.grpc_rate as f64));
    let grpc = args.grpc.clone().expect("--grpc");
    let mut p = Producer { session, run, args, live, start, deadline, template, interval, seq: 0, k: 0, result };
    let mut client = match connect(&grpc).await {
        Ok(c) => c,
        Err(_) => {
            p.result.errors.insert("connect".into(), 1);
            p.live.error();
            return p.result;
        }
    };
    let mut done = false;
    while !done {
        let (tx, rx) = tokio::sync::mpsc::channel::<bus::PublishBatchRequest>(4);
        let call = {
            let mut client = client.clone();
            tokio::spawn(async move { client.publish_batch(tokio_stream::wrappers::ReceiverStream::new(rx)).await })
        };
        let (ranges, over) = p.fill(&tx).await;
        done = over;
        drop(tx);
        match call.await.expect("publish task") {
            Ok(response) => p.acknowledge(&response.into_inner(), ranges),
            Err(status) => {
                *p.result.errors.entry(format!("grpc-{:?}", status.code())).or_default() += 1;
                p.live.error();
                if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::ResourceExhausted {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                match connect(&grpc).await {
                    Ok(c) => client = c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    p.result
}

impl Producer {
    /// Sends one stream's requests; the (first seq, count) of each, and whether
    /// the run is over for this producer (deadline or --events reached).
    async fn fill(&mut self, tx: &tokio::sync::mpsc::Sender<bus::PublishBatchRequest>) -> (Vec<(u64, u64)>, bool) {
        let mut ranges = Vec::new();
        for _ in 0..self.args.grpc_stream_messages {
            if let Some(i) = self.interval {
                tokio::time::sleep_until((self.start + i * self.k).into()).await;
            }
            if Instant::now() >= self.deadline {
                return (ranges, true);
            }
            let n = self.live.claim(self.args.batch, self.args.events);
            if n == 0 {
                return (ranges, true);
            }
            self.k += 1;
            let events = self.events(n);
            ranges.push((self.seq, n as u64));
            self.seq += n as u64;
            self.result.sent += n as u64;
            if tx.send(bus::PublishBatchRequest { events }).await.is_err() {
                break;
            }
        }
        (ranges, false)
    }

    /// The next `n` events: the template with fresh ids and send time.
    fn events(&self, n: usize) -> Vec<pb::Event> {
        let now_ms = ms_since(self.start);
        self.template[..n]
            .iter()
            .enumerate()
            .map(|(j, e)| {
                let mut e = e.clone();
                e.event_id = load_event_id(self.run, self.session, self.seq + j as u64);
                if let Some(t) = e.timing.as_mut() {
                    t.client_timestamp_ms = now_ms;
                }
                e
            })
            .collect()
    }

    /// Records a stream's summary: every event but the rejected indexes is acked.
    fn acknowledge(&mut self, response: &bus::PublishBatchResponse, ranges: Vec<(u64, u64)>) {
        self.result.accepted += response.accepted as u64;
        self.live.accepted.fetch_add(response.accepted as u64, Relaxed);
        let rejected: Vec<u64> = response.rejected.iter().map(|r| r.index as u64).collect();
        let mut index = 0u64;
        for (s, n) in ranges {
            for j in 0..n {
                if !rejected.contains(&(index + j)) {
                    self.result.acked.push((self.session, s + j, s + j + 1));
                }
            }
            index += n;
        }
    }
}

//! A bare async-nats consumer of the `JIMBUS` stream, for a `nats bench`-style
//! ceiling of what one JetStream subscriber can receive on this machine without
//! jimbus in the path: it reads every message the stream holds, from the first,
//! and prints messages/s. It only reads (no acks, nothing published).
//!
//! ```sh
//! cargo run --release -p jimbus-perf --example js_consume -- nats://127.0.0.1:4222 [ordered|pull|fetch] [BATCH]
//! ```
//!
//! `ordered` is async-nats's ordered consumer (500 messages per pull), `pull`
//! an ephemeral pull consumer's `messages()` with `BATCH` messages per pull
//! request, `fetch` a loop of `batch()` requests of `BATCH` messages.
//!
//! The same read through jimbus (`jimbus serve --bus nats://…`), a gRPC
//! subscriber of `balatro.>` from the earliest event that decodes nothing:
//!
//! ```sh
//! cargo run --release -p jimbus-perf --example js_consume -- grpc 127.0.0.1:50051 COUNT
//! ```

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("grpc") {
        let count: u64 = args.get(3).ok_or("grpc HOST:PORT COUNT")?.parse()?;
        return through_jimbus(args.get(2).ok_or("grpc HOST:PORT COUNT")?, count).await;
    }
    let url = args.get(1).map_or("nats://127.0.0.1:4222", String::as_str);
    let mode = args.get(2).map_or("pull", String::as_str);
    let batch: usize = args.get(3).map_or(Ok(2_000), |b| b.parse())?;
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let mut stream = js.get_stream("JIMBUS").await?;
    let total = stream.info().await?.state.messages;
    let started = Instant::now();
    let mut seen = 0u64;
    let mut bytes = 0usize;
    match mode {
        "ordered" => {
            let config = pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() };
            let mut messages = stream.create_consumer(config).await?.messages().await?;
            while seen < total {
                let message = messages.next().await.ok_or("stream ended")??;
                bytes += message.payload.len();
                seen += 1;
            }
        }
        "pull" | "fetch" => {
            let config = pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            };
            let consumer = stream.create_consumer(config).await?;
            if mode == "pull" {
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(Duration::from_secs(5))
                    .messages()
                    .await?;
                while seen < total {
                    let message = messages.next().await.ok_or("stream ended")??;
                    bytes += message.payload.len();
                    seen += 1;
                }
            } else {
                while seen < total {
                    let mut messages =
                        consumer.batch().max_messages(batch).expires(Duration::from_secs(5)).messages().await?;
                    while let Some(message) = messages.next().await {
                        bytes += message?.payload.len();
                        seen += 1;
                    }
                }
            }
        }
        other => return Err(format!("unknown mode {other:?}: ordered, pull or fetch").into()),
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{mode} batch {batch}: {seen} messages ({:.1} MB payload) in {seconds:.2} s = {:.0} messages/s",
        bytes as f64 / 1e6,
        seen as f64 / seconds
    );
    Ok(())
}

/// A delivery read as nothing: prost skips every field.
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

/// Subscribes to `balatro.>` from the earliest event through jimbus's gRPC
/// edge and times the arrival of `count` deliveries.
async fn through_jimbus(grpc: &str, count: u64) -> Result<(), async_nats::Error> {
    use jimbus_proto::bus;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?.connect().await?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await?;
    let request = bus::SubscribeRequest {
        pattern: "balatro.>".into(),
        start: bus::StartPosition::Earliest as i32,
        ..Default::default()
    };
    let codec = tonic_prost::ProstCodec::<bus::SubscribeRequest, Skipped>::default();
    let path = http::uri::PathAndQuery::from_static("/jimbot.bus.v1.EventBusService/Subscribe");
    let mut stream = client.server_streaming(tonic::Request::new(request), path, codec).await?.into_inner();
    let mut started = None;
    let mut seen = 0u64;
    while seen < count {
        stream.message().await?.ok_or("the subscription ended")?;
        // From the first delivery: the subscription's setup is not throughput.
        started.get_or_insert_with(Instant::now);
        seen += 1;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!("grpc via jimbus: {seen} deliveries in {seconds:.2} s = {:.0} deliveries/s", seen as f64 / seconds);
    Ok(())
}

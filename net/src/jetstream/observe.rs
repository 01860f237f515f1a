//! The backlog gauges of a durable consumer on JetStream, the same two the
//! embedded log exports (`jimbus_consumer_backlog_records` and
//! `jimbus_consumer_oldest_unacked_age_seconds`, shard "0"), read from the
//! consumer's info once a second. It must never change what it observes: it
//! only reads, and a failed read keeps the last values.

use crate::clock::now_micros;
use async_nats::jetstream;
use std::time::Duration;

/// How often a consumer's info is read.
const CONSUMER_EVERY: Duration = Duration::from_secs(1);

/// The messages `name` has not had acknowledged (not yet delivered, or in
/// flight), and the age of the message after its ack floor, every second, as
/// long as the tokio runtime runs.
pub(super) async fn watch_jetstream_consumer(js: jetstream::Context, stream: &'static str, name: String) {
    let backlog = metrics::gauge!("jimbus_consumer_backlog_records", "consumer" => name.clone(), "shard" => "0");
    let age = metrics::gauge!("jimbus_consumer_oldest_unacked_age_seconds", "consumer" => name.clone(), "shard" => "0");
    loop {
        // A failed look-up (no leader right now) leaves the last values.
        if let Some((pending, oldest)) = jetstream_backlog(&js, stream, &name).await {
            backlog.set(pending as f64);
            age.set(oldest.map_or(0.0, |t| now_micros().saturating_sub(t) as f64 / 1e6));
        }
        tokio::time::sleep(CONSUMER_EVERY).await;
    }
}

/// (messages not acknowledged, storage time of the one after the ack floor).
async fn jetstream_backlog(js: &jetstream::Context, stream: &str, name: &str) -> Option<(u64, Option<u64>)> {
    let stream = js.get_stream(stream).await.ok()?;
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(name).await.ok()?;
    let info = consumer.info().await.ok()?;
    let pending = info.num_pending + info.num_ack_pending as u64;
    if pending == 0 {
        return Some((0, None));
    }
    let oldest = stream.get_raw_message(info.ack_floor.stream_sequence + 1).await.ok()?;
    Some((pending, Some((oldest.time.unix_timestamp_nanos() / 1000).max(0) as u64)))
}

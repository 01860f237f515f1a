//! The JetStream backend's connection: its tokio runtime thread, connecting
//! (retried until the startup deadline), creating the `JIMBUS` stream when it
//! is missing, and the probe that reports, once a second, whether the stream
//! has a leader. It must never change an existing stream's configuration: an
//! operator may have changed its replicas or limits on purpose.

use super::{
    aggregation::NatsAggregation, JetStreamError, JetStreamOptions, Shared, EVENT_SUBJECTS, MAX_EVENTS_IN_FLIGHT,
    STREAM,
};
use crate::lock::lock;
use async_nats::jetstream::{self, stream};
use jimbus_core::topic;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a retried event is recognised as a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The runtime thread: a small multi-threaded tokio runtime kept until `stop`.
pub(super) fn spawn_runtime() -> Result<(tokio::runtime::Handle, std::sync::mpsc::Sender<()>), JetStreamError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jetstream")
        .enable_all()
        .build()
        .map_err(|e| JetStreamError::Runtime(e.to_string()))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("jetstream-runtime".into())
        .spawn(move || {
            let _ = stopped.recv();
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| JetStreamError::Runtime(e.to_string()))?;
    Ok((handle, stop))
}

/// Connects and ensures the stream, retrying until `startup_timeout`: a cluster
/// that is still electing at startup is not an error yet.
pub(super) async fn connect_until(
    options: &JetStreamOptions,
    aggregation: Arc<NatsAggregation>,
) -> Result<Shared, JetStreamError> {
    let started = tokio::time::Instant::now();
    loop {
        let reason = match connect(options, aggregation.clone()).await {
            Ok(shared) => return Ok(shared),
            Err(reason) => reason,
        };
        if started.elapsed() >= options.startup_timeout {
            let urls = options.urls.join(",");
            return Err(JetStreamError::Unreachable { urls, waited: started.elapsed(), reason });
        }
        tracing::warn!(reason = %reason, "JetStream not reachable yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn connect(options: &JetStreamOptions, aggregation: Arc<NatsAggregation>) -> Result<Shared, String> {
    let client = async_nats::ConnectOptions::new()
        .name("jimbus")
        .connection_timeout(Duration::from_secs(2))
        .event_callback(|event| async move { on_connection_event(event) })
        .connect(options.urls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(options.publish_timeout)
        .max_ack_inflight(MAX_EVENTS_IN_FLIGHT)
        .build(client.clone());
    ensure_stream(&js, options).await?;
    tracing::info!(urls = %options.urls.join(","), replicas = options.replicas, "JetStream bus connected");
    Ok(Shared {
        client,
        js,
        events_in_flight: AtomicUsize::new(0),
        available: AtomicBool::new(true),
        pending: Mutex::default(),
        watched: Mutex::default(),
        next_member: AtomicU64::new(0),
        reporters: Mutex::default(),
        aggregation,
    })
}

fn on_connection_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => {
            metrics::counter!("jimbus_bus_disconnects_total").increment(1);
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        async_nats::Event::Connected => tracing::info!("connected to NATS"),
        other => tracing::info!(event = %other, "NATS connection event"),
    }
}

/// Creates the stream, or keeps the existing one (whose replica count an
/// operator may have changed on purpose).
async fn ensure_stream(js: &jetstream::Context, options: &JetStreamOptions) -> Result<(), String> {
    if let Ok(mut existing) = js.get_stream(STREAM).await {
        let info = existing.info().await.map_err(|e| e.to_string())?;
        if info.config.num_replicas != options.replicas {
            tracing::warn!(
                configured = options.replicas,
                actual = info.config.num_replicas,
                "the stream keeps its replica count"
            );
        }
        return Ok(());
    }
    let config = stream::Config {
        name: STREAM.into(),
        subjects: vec![EVENT_SUBJECTS.into(), topic::DEADLETTER.into()],
        storage: stream::StorageType::File,
        num_replicas: options.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: options.max_age.unwrap_or_default(),
        max_bytes: options.max_bytes.map_or(-1, |b| b as i64),
        allow_direct: true,
        ..Default::default()
    };
    js.create_stream(config).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Asks for the stream's info every second: available means the stream has a
/// leader (a quorum of its replicas), not merely a connection.
pub(super) async fn probe(shared: Arc<Shared>) {
    loop {
        let info = tokio::time::timeout(Duration::from_secs(2), shared.js.get_stream(STREAM)).await;
        // Without a leader a replica still answers, later and naming no leader.
        let up = match info {
            Ok(Ok(stream)) => {
                tracing::debug!(cluster = ?stream.cached_info().cluster, "stream info");
                stream.cached_info().cluster.as_ref().is_none_or(|c| c.leader.as_ref().is_some_and(|l| !l.is_empty()))
            }
            _ => false,
        };
        note_availability(&shared, up);
        for report in lock(&shared.reporters).iter() {
            report(up);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn note_availability(shared: &Shared, up: bool) {
    let was = shared.available.swap(up, Ordering::AcqRel);
    metrics::gauge!("jimbus_bus_available").set(if up { 1.0 } else { 0.0 });
    if was && !up {
        metrics::counter!("jimbus_bus_outages_total").increment(1);
        tracing::error!("JetStream unavailable: no stream leader answers");
    } else if !was && up {
        tracing::info!("JetStream available again");
    }
}

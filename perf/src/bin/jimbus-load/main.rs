//! `jimbus-load`: a self-play farm in one process, to measure a bus.
//!
//! N HTTP sessions post 50-event cascade batches in the mod's dialect over
//! keep-alive connections (at a fixed total rate or as fast as possible), M gRPC
//! subscribers check that every acknowledged event arrives, and gRPC
//! PublishBatch producers add streamed load. It reports accepted events/s, HTTP
//! latency percentiles (HDR histogram), end-to-end latency from POST to delivery,
//! errors by status, lost events and the server's peak RSS and CPU time per
//! event. See `perf/README.md`.
//!
//! This file only sequences the run (subscribers, probe, load, drain, report);
//! each role lives in its own module. It never starts a server: it measures the
//! one at `--url`/`--grpc`, found through the shared harness (`jimbus-harness`).

mod args;
mod monitor;
mod producers;
mod report;
mod sessions;
mod stats;
mod subscribers;

use anyhow::{Context, Result};
use args::Args;
use clap::Parser;
use jimbus_harness::ServerProcess;
use monitor::ServerWatch;
use std::sync::Arc;
use std::time::Instant;
use subscribers::Subscribers;

fn main() -> Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = args.threads {
        builder.worker_threads(t.max(1));
    }
    builder.build()?.block_on(run(args))
}

/// A run id that differs between runs and between concurrent generators.
fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (nanos.as_nanos() as u32) ^ (std::process::id().rotate_left(16))
}

/// The server to measure: `--server-pid`, or the process listening on the URL's port.
fn server_process(args: &Args, target: &sessions::Target) -> Option<ServerProcess> {
    args.server_pid.map(ServerProcess::new).or_else(|| {
        let port: u16 = target.host_port.rsplit(':').next()?.parse().ok()?;
        ServerProcess::listening_on(port)
    })
}

async fn run(args: Args) -> Result<()> {
    args.validate()?;
    let target = Arc::new(sessions::parse_url(&args.url)?);
    let run = run_id();
    let server = server_process(&args, &target);
    let args = Arc::new(args);
    let start = Instant::now();

    // Subscribers first, then a probe event proves they are attached before the load.
    let mut subscribers = Subscribers::open(&args, run, start).await?;
    if args.subscribers > 0 && subscribers.raw {
        sessions::probe_until(&target, run, start, || subscribers.all_saw_probe()).await?;
    }

    let live = Arc::new(stats::Live::new());
    let duration = args.load_duration();
    let deadline = live.load_start + duration;
    let sessions: Vec<_> = (0..args.sessions)
        .map(|i| {
            let (args, target, live) = (args.clone(), target.clone(), live.clone());
            tokio::spawn(sessions::http_session(i, run, args, target, live, start, deadline))
        })
        .collect();
    let producers: Vec<_> = (0..args.grpc_producers)
        .map(|p| tokio::spawn(producers::grpc_producer(p, run, args.clone(), live.clone(), start, deadline)))
        .collect();

    let mut watch = ServerWatch::start(server);
    let tasks = (&sessions[..], &producers[..]);
    let load_elapsed = monitor::follow(&args, &live, duration, &mut watch, tasks, &subscribers).await;
    let totals = report::Totals::collect(sessions, producers).await?;

    // Drain: wait until every raw subscriber holds every acked id, or the timeout.
    let drain_timeout = std::time::Duration::from_secs_f64(args.drain_timeout);
    let drain = subscribers.drain(&totals.acked, totals.acked_total(), drain_timeout).await;
    subscribers.stop(args.drain_timeout).await;
    let server = watch.finish();

    let report = report::build(&report::Run {
        args: &args,
        run,
        live: &live,
        totals: &totals,
        subscribers: &subscribers,
        drain: &drain,
        load_elapsed,
        server: &server,
    });
    report::print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}

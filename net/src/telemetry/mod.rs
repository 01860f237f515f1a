//! Structured logs (tracing) and Prometheus metrics (the `metrics` crate).
//! This module must never decide what is logged or counted; it only installs
//! sinks, says how a compact line writes its fields (`fields.rs`), and keeps
//! out one message of glommio's that is expected (below).

mod fields;

use fields::PlainWordFields;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Pretty on a terminal, compact otherwise.
    Auto,
    Pretty,
    /// One line per record; a string field is quoted unless it is one plain word.
    Compact,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // glommio's reactor logs one thing only: an error when its probe of a
    // device's polling fails, which the log's write-only direct descriptors
    // make it do on purpose (`embedded::log::direct`).
    let filter = filter.add_directive("glommio::reactor=off".parse().expect("a valid directive"));
    // Colour codes only where a person reads them: a journal or a file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let format = match format {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Compact,
        other => other,
    };
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
        _ => builder.compact().fmt_fields(PlainWordFields).try_init(),
    };
}

/// Bucket bounds of every `*_seconds` histogram: 100 µs to 60 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Every other histogram counts things (records per commit, triggers per
/// cascade, events per aggregation window): powers of 4 up to 16,384.
const COUNTS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];
/// Bytes per group commit: powers of 4 from 256 B to 64 MiB.
const BYTES: &[f64] =
    &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];
/// How often recorded histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global metrics recorder and returns the handle `/metrics`
/// renders. Histograms are exported with buckets (not as summaries), so that
/// Prometheus can aggregate them and compute any quantile.
pub fn init_metrics() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(COUNTS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
        .expect("the bucket lists are not empty")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        // Without a scrape, samples would pile up until the next one.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("jimbus-metrics".into()).spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        });
    }
    handle
}

//! The report: sums what the sessions and producers did, builds the JSON
//! report (`--json`) and prints the summary lines. Its field names and the
//! summary's wording are an interface (scripts and docs/perf.md read them): it
//! must never rename a field or change a line's shape, and never measure
//! anything itself.

use crate::args::Args;
use crate::monitor::ServerFigures;
use crate::producers::ProducerResult;
use crate::sessions::SessionResult;
use crate::stats::{histogram, merge_counts, percentiles, Acked, Live};
use crate::subscribers::{latency_report, Drain, Latencies, Subscribers};
use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The sum of every HTTP session and gRPC producer.
pub struct Totals {
    http_latency: Histogram<u64>,
    requests: u64,
    sent: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    http_errors: BTreeMap<String, u64>,
    grpc_sent: u64,
    grpc_accepted: u64,
    grpc_errors: BTreeMap<String, u64>,
    pub acked: Acked,
}

impl Totals {
    /// Waits for every session and producer and adds up their results.
    pub async fn collect(
        sessions: Vec<JoinHandle<SessionResult>>,
        producers: Vec<JoinHandle<ProducerResult>>,
    ) -> Result<Self> {
        let mut t = Totals {
            http_latency: histogram(),
            requests: 0,
            sent: 0,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            http_errors: BTreeMap::new(),
            grpc_sent: 0,
            grpc_accepted: 0,
            grpc_errors: BTreeMap::new(),
            acked: Vec::new(),
        };
        for s in sessions {
            let r = s.await?;
            t.http_latency.add(&r.latency_us).ok();
            t.requests += r.requests;
            t.sent += r.sent;
            t.accepted += r.accepted;
            t.duplicates += r.duplicates;
            t.rejected += r.rejected;
            merge_counts(&mut t.http_errors, &r.errors);
            t.acked.extend(r.acked);
        }
        for p in producers {
            let r = p.await?;
            t.grpc_sent += r.sent;
            t.grpc_accepted += r.accepted;
            merge_counts(&mut t.grpc_errors, &r.errors);
            t.acked.extend(r.acked);
        }
        Ok(t)
    }

    /// Event ids acknowledged over HTTP and gRPC.
    pub fn acked_total(&self) -> u64 {
        self.acked.iter().map(|(_, a, b)| b - a).sum()
    }
}

/// Per-subscriber reports, every subscriber's latencies merged, and their errors.
fn subscriber_reports(
    args: &Args,
    subs: &Subscribers,
    drain: &Drain,
) -> (Vec<Value>, Latencies, BTreeMap<String, u64>) {
    let mut all = Latencies::new();
    let mut reports = Vec::new();
    let mut sub_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut checked_index = 0;
    for s in &subs.all {
        let mut mine = s.latencies.lock().unwrap();
        let report = latency_report(&mine);
        all.take(&mut mine);
        let errors = s.errors.lock().unwrap().clone();
        merge_counts(&mut sub_errors, &errors);
        let lost_here = if s.raw {
            checked_index += 1;
            Some(drain.lost[checked_index - 1])
        } else {
            None
        };
        reports.push(json!({
            "pattern": args.pattern,
            "deliveries": s.deliveries.load(Relaxed),
            "unique_load_events": s.unique.load(Relaxed),
            "aggregated": s.aggregated.load(Relaxed),
            "lost": lost_here,
            "latency": report,
            "errors": errors,
        }));
    }
    (reports, all, sub_errors)
}

/// Everything the run measured, for the report.
pub struct Run<'a> {
    pub args: &'a Args,
    pub run: u32,
    pub live: &'a Live,
    pub totals: &'a Totals,
    pub subscribers: &'a Subscribers,
    pub drain: &'a Drain,
    pub load_elapsed: Duration,
    pub server: &'a ServerFigures,
}

/// The whole report, as `--json` writes it.
pub fn build(m: &Run) -> Value {
    let (args, t, run) = (m.args, m.totals, m.run);
    let (sub_reports, all, sub_errors) = subscriber_reports(args, m.subscribers, m.drain);
    // Subscribers stop reading on their own when the run is over, so a stream the
    // server ended ("stream-ended") is an error like any other.
    let secs = m.load_elapsed.as_secs_f64();
    let total_accepted = t.accepted + t.grpc_accepted;
    let error_count: u64 =
        t.http_errors.values().sum::<u64>() + t.grpc_errors.values().sum::<u64>() + sub_errors.values().sum::<u64>();
    let lost_total: u64 = m.drain.lost.iter().sum();
    let server_cpu_s = m.server.cpu_s;
    json!({
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
        "first_error_s": match m.live.first_error_us.load(Relaxed) {
            u64::MAX => Value::Null,
            us => json!(us as f64 / 1e6),
        },
        "lost": if m.drain.lost.is_empty() { Value::Null } else { json!(lost_total) },
        "acked_ids": t.acked_total(),
        "http": {
            "requests": t.requests,
            "events_sent": t.sent,
            "accepted": t.accepted,
            "duplicates": t.duplicates,
            "rejected": t.rejected,
            "events_per_s": t.accepted as f64 / secs,
            "latency_us": percentiles(&t.http_latency),
            "errors": t.http_errors,
        },
        "grpc_publish": {
            "producers": args.grpc_producers,
            "events_sent": t.grpc_sent,
            "accepted": t.grpc_accepted,
            "events_per_s": t.grpc_accepted as f64 / secs,
            "errors": t.grpc_errors,
        },
        "subscribers": sub_reports,
        "deliveries_per_s": m.subscribers.all.iter().map(|s| s.deliveries.load(Relaxed)).sum::<u64>() as f64
            / (secs + m.drain.elapsed.as_secs_f64()),
        "e2e_latency_us": percentiles(&all.raw),
        "e2e_grpc_latency_us": percentiles(&all.grpc),
        "e2e_aggregated_latency_us": percentiles(&all.aggregated),
        "e2e_aggregated_from_arrival_us": percentiles(&all.aggregated_from_arrival),
        "drain_s": m.drain.elapsed.as_secs_f64(),
        "server": {
            "pid": m.server.pid,
            "vm_hwm_kib": m.server.vm_hwm_kib,
            "rss_peak_sampled_kib": m.server.rss_peak_sampled_kib,
            "cpu_s": server_cpu_s,
            "cpu_us_per_event": server_cpu_s.filter(|_| total_accepted > 0).map(|c| c * 1e6 / total_accepted as f64),
        },
    })
}

pub fn print_summary(r: &Value) {
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

//! Watching the run while the load goes on: the progress bar on a terminal and
//! the server process's memory (sampled every 250 ms) and CPU time, read
//! through the shared harness's [`ServerProcess`]. It only observes: it must
//! never stop the load, signal the server or change what the report counts.

use crate::args::Args;
use crate::stats::Live;
use crate::subscribers::Subscribers;
use jimbus_harness::ServerProcess;
use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The server's process and what has been read of it so far.
pub struct ServerWatch {
    pub process: Option<ServerProcess>,
    pub rss_peak_kib: u64,
    cpu_at_start: Option<f64>,
}

/// The server's figures for the report.
pub struct ServerFigures {
    pub pid: Option<u32>,
    pub vm_hwm_kib: Option<u64>,
    pub rss_peak_sampled_kib: Option<u64>,
    /// From the load's start to the end of the drain: ingest and delivery alike.
    pub cpu_s: Option<f64>,
}

impl ServerWatch {
    /// Starts watching: the first RSS sample and the CPU time used so far.
    pub fn start(process: Option<ServerProcess>) -> Self {
        let rss_peak_kib = process.and_then(|p| p.rss_kib()).unwrap_or(0);
        let cpu_at_start = process.and_then(|p| p.cpu_seconds());
        Self { process, rss_peak_kib, cpu_at_start }
    }

    pub fn sample(&mut self) {
        if let Some(p) = self.process {
            self.rss_peak_kib = self.rss_peak_kib.max(p.rss_kib().unwrap_or(0));
        }
    }

    /// The last sample, and the CPU time used since [`ServerWatch::start`].
    pub fn finish(mut self) -> ServerFigures {
        self.sample();
        let p = self.process;
        ServerFigures {
            pid: p.map(|p| p.pid),
            vm_hwm_kib: p.and_then(|p| p.peak_rss_kib()),
            rss_peak_sampled_kib: p.map(|_| self.rss_peak_kib),
            cpu_s: self.cpu_at_start.zip(p.and_then(|p| p.cpu_seconds())).map(|(a, b)| b - a),
        }
    }
}

fn progress_bar(args: &Args, duration: Duration) -> Option<indicatif::ProgressBar> {
    (std::io::stdout().is_terminal() && !args.quiet).then(|| {
        let bar = if args.events > 0 {
            indicatif::ProgressBar::new(args.events)
        } else {
            indicatif::ProgressBar::new(duration.as_secs().max(1))
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .expect("template"),
        );
        bar
    })
}

/// Samples the server and draws progress until every load task has finished;
/// returns how long the load lasted.
pub async fn follow<S, P>(
    args: &Args,
    live: &Live,
    duration: Duration,
    server: &mut ServerWatch,
    tasks: (&[JoinHandle<S>], &[JoinHandle<P>]),
    subscribers: &Subscribers,
) -> Duration {
    let bar = progress_bar(args, duration);
    let all_done = || tasks.0.iter().all(|h| h.is_finished()) && tasks.1.iter().all(|h| h.is_finished());
    let mut last = (Instant::now(), 0u64);
    while !all_done() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        server.sample();
        if let Some(bar) = &bar {
            let accepted = live.accepted.load(Relaxed);
            let rate = (accepted - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), accepted);
            bar.set_position(if args.events > 0 {
                accepted
            } else {
                live.load_start.elapsed().as_secs().min(bar.length().unwrap_or(0))
            });
            bar.set_message(format!(
                "{:.0} ev/s, {} accepted, {} errors, {} delivered, RSS {} MiB",
                rate,
                accepted,
                live.errors.load(Relaxed),
                subscribers.delivered(),
                server.rss_peak_kib / 1024
            ));
        }
    }
    let load_elapsed = live.load_start.elapsed();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    load_elapsed
}

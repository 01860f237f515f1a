//! The command line: every flag of `jimbus-load`, its default and its help text
//! (what `--help` prints), and the checks that reject a run with nothing to do.
//! It owns no state and must never change a flag's name, default or meaning:
//! scripts and the docs call it as it is.

use anyhow::{bail, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "jimbus-load", about = "Load generator for jimbus (or any bus speaking the mod's HTTP API)")]
pub struct Args {
    /// The batch endpoint to POST to.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/events/batch")]
    pub url: String,
    /// Concurrent HTTP sessions (one keep-alive connection each, one request in flight).
    #[arg(long, default_value_t = 64)]
    pub sessions: u32,
    /// Events per batch.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Total HTTP rate in events/s across all sessions; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many events in total (HTTP and gRPC producers); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub events: u64,
    /// Share of HTTP sessions that speak as the field mod (no session_id: the server
    /// derives one session from the peer and source); the rest send session_id.
    #[arg(long, default_value_t = 0.25)]
    pub field_mod_share: f64,
    /// Send strict JSON (finite numbers only), for servers that reject the mod's
    /// bare `inf`/`nan` tokens (the old bus, a bare serde_json server).
    #[arg(long)]
    pub strict_json: bool,
    /// gRPC address of the bus (host:port), for subscribers and producers.
    #[arg(long)]
    pub grpc: Option<String>,
    /// gRPC subscribers.
    #[arg(long, default_value_t = 0)]
    pub subscribers: u32,
    /// Subscription pattern: `balatro.>` (raw, checked for loss) or `balatro.*.aggregated`.
    #[arg(long, default_value = "balatro.>")]
    pub pattern: String,
    /// gRPC PublishBatch producers (as fast as possible unless --grpc-rate).
    #[arg(long, default_value_t = 0)]
    pub grpc_producers: u32,
    /// Total gRPC producer rate in events/s; 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub grpc_rate: u64,
    /// PublishBatch requests per stream; the stream's summary acknowledges them.
    #[arg(long, default_value_t = 100)]
    pub grpc_stream_messages: usize,
    /// Longest wait, after the load, for subscribers to receive every acked event.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Server process id, for its peak RSS (VmHWM); found from the URL's port when absent.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Retries of a batch answered with an error or a broken connection (the field
    /// mod makes 3 attempts); 429, 503 and 507 wait for Retry-After (at most 1 s).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Rejects flag combinations that cannot make a run.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.sessions == 0 && self.grpc_producers == 0 {
            bail!("nothing to send: --batch and --sessions (or --grpc-producers) must be positive");
        }
        if (self.subscribers > 0 || self.grpc_producers > 0) && self.grpc.is_none() {
            bail!("--subscribers and --grpc-producers need --grpc host:port");
        }
        if self.events == 0 && self.duration <= 0.0 {
            bail!("give --duration or --events");
        }
        Ok(())
    }

    /// How long the load lasts: --duration, or (with --duration 0) until --events.
    pub fn load_duration(&self) -> Duration {
        if self.duration > 0.0 {
            Duration::from_secs_f64(self.duration)
        } else {
            Duration::from_secs(1 << 30)
        }
    }

    /// Subscribers read raw events (checked for loss), not aggregated messages.
    pub fn raw_pattern(&self) -> bool {
        !self.pattern.ends_with(".aggregated")
    }
}

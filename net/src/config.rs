//! Server configuration: command-line flags, `JIMBUS_*` environment variables and
//! an optional TOML file, resolved in that order of precedence into [`ServeConfig`].
//! This module must never start anything.

use crate::embedded::{DurableLimits, FsyncMode, LogOptions, PumpOptions, Retention};
use crate::grpc::accept::GrpcLimits;
use crate::http::HttpOptions;
use crate::jetstream::JetStreamOptions;
use jimbus_core::aggregate::AggregateConfig;
use jimbus_core::pools::PoolCapacity;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `jimbus serve`. Each may also come from the environment or `--config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with `_` for `-`).
    #[arg(long, env = "JIMBUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for the mod API, health and metrics [default: 127.0.0.1:8080].
    #[arg(long, env = "JIMBUS_HTTP")]
    pub http: Option<SocketAddr>,
    /// gRPC address [default: 127.0.0.1:50051].
    #[arg(long, env = "JIMBUS_GRPC")]
    pub grpc: Option<SocketAddr>,
    /// Directory of the durable log [default: ./jimbus-data].
    #[arg(long, env = "JIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shards (executors pinned to cores) [default: every online core].
    #[arg(long, env = "JIMBUS_SHARDS")]
    pub shards: Option<usize>,
    /// When appends reach the disk: never, batch (one synced write per group commit) or always [default: batch].
    #[arg(long, env = "JIMBUS_FSYNC", value_enum)]
    pub fsync: Option<FsyncMode>,
    /// The mod's event_bus_url path [default: /api/v1/events].
    #[arg(long, env = "JIMBUS_INGEST_PATH")]
    pub ingest_path: Option<String>,
    /// Largest request body in bytes; larger bodies get 413 [default: 8388608].
    #[arg(long, env = "JIMBUS_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Open HTTP connections per shard; more get 503 [default: 4096].
    #[arg(long, env = "JIMBUS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open gRPC connections; more are closed at accept [default: 1024].
    #[arg(long, env = "JIMBUS_MAX_GRPC_CONNECTIONS")]
    pub max_grpc_connections: Option<usize>,
    /// Seconds a connection may stay silent between requests, or take none of an answer or event stream, before it is closed [default: 30].
    #[arg(long, env = "JIMBUS_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Seconds a request body may take to arrive before 408 [default: 30].
    #[arg(long, env = "JIMBUS_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Seconds a request's headers may take to arrive, from their first byte, before 408, and a new gRPC connection to begin HTTP/2 before it is closed [default: 10].
    #[arg(long, env = "JIMBUS_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Bytes of memory the server may grant to request bodies in flight, across
    /// all shards; when spent, requests get 503 with Retry-After [default: 268435456].
    #[arg(long, env = "JIMBUS_MEMORY_BUDGET")]
    pub memory_budget: Option<u64>,
    /// Length of a session's aggregation window, in milliseconds [default: 100].
    #[arg(long, env = "JIMBUS_AGGREGATE_WINDOW_MS")]
    pub aggregate_window_ms: Option<u64>,
    /// Bracketless joker triggers further apart than this many milliseconds are
    /// separate cascades [default: 50].
    #[arg(long, env = "JIMBUS_LEGACY_GAP_MS")]
    pub legacy_gap_ms: Option<u64>,
    /// A hand with no HAND_EVAL_COMPLETE and no event for this many milliseconds is
    /// published as incomplete [default: 5000].
    #[arg(long, env = "JIMBUS_CASCADE_TIMEOUT_MS")]
    pub cascade_timeout_ms: Option<u64>,
    /// Most commands a shard folds into one group commit; the batch grows toward
    /// it as the shard's queue deepens [default: 1024].
    #[arg(long, env = "JIMBUS_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Microseconds a group commit waits for more events once it has some, to
    /// make fewer, larger commits; 0 commits at once [default: 0].
    #[arg(long, env = "JIMBUS_COMMIT_LINGER_US")]
    pub commit_linger_us: Option<u64>,
    /// Capacity of the pools the `jimbot.ResourceCoordinator` gRPC service lends out:
    /// `gpu=N,cpu=N,claude_api=N,memory=BYTES` [default: every pool empty].
    #[arg(long, env = "JIMBUS_RESOURCE_POOLS")]
    pub resource_pools: Option<String>,
    /// Serve CPU profiles at GET /debug/pprof/profile?seconds=N[&format=svg].
    #[arg(long, env = "JIMBUS_ENABLE_PROFILING")]
    pub enable_profiling: bool,
    /// Do not serve the web view at GET /ui (the stream at /api/v1/stream stays).
    #[arg(long, env = "JIMBUS_NO_UI")]
    pub no_ui: bool,
    /// Lease the memory budget from this remote jimbot.ResourceCoordinator
    /// (http://host:port) instead of using --memory-budget alone; falls back to
    /// --memory-budget while it is unreachable [default: none].
    #[arg(long, env = "JIMBUS_RESOURCE_COORDINATOR")]
    pub resource_coordinator: Option<String>,
    /// Commands queued per shard before 503 [default: 4096].
    #[arg(long, env = "JIMBUS_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Segment size in bytes before a new segment starts [default: 67108864].
    #[arg(long, env = "JIMBUS_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Retried event ids remembered per shard: at least this many of the most
    /// recent, in two hash tables sized once for this many keys each (about
    /// 17 bytes per slot, rounded up to a power of two: 17 MiB per shard at the
    /// default) [default: 400000].
    #[arg(long, env = "JIMBUS_DEDUP_WINDOW")]
    pub dedup_window: Option<usize>,
    /// Delete closed segments whose newest record is older than this many seconds
    /// (never data a durable consumer has not acknowledged) [default: keep forever].
    #[arg(long, env = "JIMBUS_RETENTION_SECONDS")]
    pub retention_seconds: Option<u64>,
    /// Delete the oldest closed segments while a shard's log is larger than this
    /// many bytes (never data a durable consumer has not acknowledged) [default: no limit].
    #[arg(long, env = "JIMBUS_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Most durable consumer names the server keeps; a subscription that would
    /// create one more gets RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "JIMBUS_MAX_DURABLES")]
    pub max_durables: Option<usize>,
    /// Remove a durable consumer that has had no subscriber connected and no
    /// ack for this many seconds (counted from the server's start at the
    /// earliest); 0 keeps them forever [default: 0].
    #[arg(long, env = "JIMBUS_DURABLE_IDLE_EXPIRY_SECONDS")]
    pub durable_idle_expiry_seconds: Option<u64>,
    /// Run on NATS JetStream instead of the embedded log:
    /// `nats://host:port[,host:port...]` [default: the embedded log in --data-dir].
    #[arg(long, env = "JIMBUS_BUS")]
    pub bus: Option<String>,
    /// Replicas of the JetStream stream [default: 3 when several URLs are given, else 1].
    #[arg(long, env = "JIMBUS_BUS_REPLICAS")]
    pub bus_replicas: Option<usize>,
    /// Nice value (0-19) of the gRPC edge's threads: above 0, the shards pinned
    /// to the cores get the CPU first when both want it, so ingest answers
    /// sooner and subscribers and gRPC publishers fall behind at saturation
    /// (see docs/tuning.md); 0 shares it evenly [default: 0].
    #[arg(long, env = "JIMBUS_GRPC_NICE")]
    pub grpc_nice: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    fsync: Option<FsyncMode>,
    ingest_path: Option<String>,
    max_body: Option<usize>,
    max_connections: Option<usize>,
    max_grpc_connections: Option<usize>,
    idle_timeout: Option<u64>,
    body_timeout: Option<u64>,
    header_timeout: Option<u64>,
    memory_budget: Option<u64>,
    aggregate_window_ms: Option<u64>,
    legacy_gap_ms: Option<u64>,
    cascade_timeout_ms: Option<u64>,
    max_batch: Option<usize>,
    commit_linger_us: Option<u64>,
    resource_pools: Option<String>,
    enable_profiling: Option<bool>,
    no_ui: Option<bool>,
    resource_coordinator: Option<String>,
    queue_capacity: Option<usize>,
    segment_bytes: Option<u64>,
    dedup_window: Option<usize>,
    retention_seconds: Option<u64>,
    retention_bytes: Option<u64>,
    max_durables: Option<usize>,
    durable_idle_expiry_seconds: Option<u64>,
    grpc_nice: Option<i32>,
    bus: Option<String>,
    bus_replicas: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub queue_capacity: usize,
    pub log: LogOptions,
    pub pump: PumpOptions,
    pub http_options: HttpOptions,
    pub memory_budget: u64,
    pub resource_pools: PoolCapacity,
    /// A remote coordinator to lease the memory budget from.
    pub resource_coordinator: Option<String>,
    /// `Some` runs on NATS JetStream instead of the embedded log.
    pub bus: Option<JetStreamOptions>,
    /// Nice value of the gRPC edge's threads (0 to 19).
    pub grpc_nice: i32,
    /// The gRPC port's connection cap and handshake timeout.
    pub grpc_limits: GrpcLimits,
}

/// Checks `--grpc-nice`: a lower priority only, as a higher one needs privileges.
fn checked_nice(nice: i32) -> Result<i32, ConfigError> {
    if !(0..=19).contains(&nice) {
        return Err(ConfigError::Invalid(format!("--grpc-nice must be between 0 and 19, not {nice}")));
    }
    Ok(nice)
}

/// Parses `--bus`: comma-separated NATS URLs (`nats://` is added to a bare host:port).
fn jetstream_options(
    urls: &str,
    replicas: Option<usize>,
    retention: &Retention,
    aggregate: AggregateConfig,
) -> Result<JetStreamOptions, ConfigError> {
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| if u.contains("://") { u.to_string() } else { format!("nats://{u}") })
        .collect();
    if urls.is_empty() || urls.iter().any(|u| !(u.starts_with("nats://") || u.starts_with("tls://"))) {
        return Err(ConfigError::Invalid(format!("--bus takes nats://host:port[,host:port...], not {urls:?}")));
    }
    let replicas = replicas.unwrap_or(if urls.len() > 1 { 3 } else { 1 });
    if !(1..=5).contains(&replicas) {
        return Err(ConfigError::Invalid(format!("--bus-replicas must be between 1 and 5, not {replicas}")));
    }
    Ok(JetStreamOptions {
        urls,
        replicas,
        publish_timeout: Duration::from_secs(3),
        max_age: retention.max_age,
        max_bytes: retention.max_bytes,
        startup_timeout: Duration::from_secs(30),
        aggregate,
    })
}

/// Resolves a path setting against the working directory at start: glommio's
/// directory calls reject relative paths (EBADF), and a path that meant the
/// start directory must not change meaning later.
fn absolute_path(path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|e| {
        ConfigError::Invalid(format!("cannot resolve {} against the working directory: {e}", path.display()))
    })
}

impl ServeArgs {
    fn aggregate_config(&self, file: &FileConfig) -> AggregateConfig {
        let ms =
            |flag: Option<u64>, key: Option<u64>, default: u64| Duration::from_millis(flag.or(key).unwrap_or(default));
        let defaults = AggregateConfig::default();
        AggregateConfig {
            window: ms(self.aggregate_window_ms, file.aggregate_window_ms, 100),
            legacy_gap: ms(self.legacy_gap_ms, file.legacy_gap_ms, 50),
            cascade_timeout: ms(self.cascade_timeout_ms, file.cascade_timeout_ms, 5000),
            memory_budget: 16 << 20,
            ..defaults
        }
    }

    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => FileConfig::default(),
        };
        let aggregate = self.aggregate_config(&file);
        let shards =
            self.shards.or(file.shards).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if shards == 0 || shards > 1024 {
            return Err(ConfigError::Invalid(format!("--shards must be between 1 and 1024, not {shards}")));
        }
        let ingest_path = self.ingest_path.clone().or(file.ingest_path).unwrap_or_else(|| "/api/v1/events".into());
        if !ingest_path.starts_with('/') {
            return Err(ConfigError::Invalid(format!("--ingest-path must start with '/', not {ingest_path:?}")));
        }
        let retention = Retention {
            max_age: self.retention_seconds.or(file.retention_seconds).map(Duration::from_secs),
            max_bytes: self.retention_bytes.or(file.retention_bytes),
        };
        let bus = match self.bus.clone().or(file.bus.clone()) {
            Some(urls) => {
                Some(jetstream_options(&urls, self.bus_replicas.or(file.bus_replicas), &retention, aggregate.clone())?)
            }
            None => None,
        };
        let header_timeout = Duration::from_secs(self.header_timeout.or(file.header_timeout).unwrap_or(10).max(1));
        let fsync = self.fsync.or(file.fsync).unwrap_or(FsyncMode::Batch);
        let segment_bytes = self.segment_bytes.or(file.segment_bytes).unwrap_or(64 << 20).max(4096);
        Ok(ServeConfig {
            bus,
            grpc_nice: self.grpc_nice.or(file.grpc_nice).map_or(Ok(0), checked_nice)?,
            grpc_limits: GrpcLimits {
                max_connections: self.max_grpc_connections.or(file.max_grpc_connections).unwrap_or(1024).max(1),
                handshake_timeout: header_timeout,
            },
            http: self.http.or(file.http).unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal")),
            grpc: self.grpc.or(file.grpc).unwrap_or_else(|| "127.0.0.1:50051".parse().expect("literal")),
            data_dir: absolute_path(self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| "jimbus-data".into()))?,
            shards,
            queue_capacity: self.queue_capacity.or(file.queue_capacity).unwrap_or(4096).max(1),
            log: LogOptions {
                fsync,
                segment_bytes,
                tail_cache_bytes: 8 << 20,
                retention,
                prepare_ahead: LogOptions::prepares_ahead(fsync, segment_bytes),
            },
            pump: PumpOptions {
                max_batch: self.max_batch.or(file.max_batch).unwrap_or(1024),
                aggregate,
                dedup_window: self.dedup_window.or(file.dedup_window).unwrap_or(400_000),
                durables: DurableLimits {
                    max_names: self.max_durables.or(file.max_durables).unwrap_or(1024),
                    idle_expiry: self
                        .durable_idle_expiry_seconds
                        .or(file.durable_idle_expiry_seconds)
                        .filter(|&s| s > 0)
                        .map(Duration::from_secs),
                },
                linger: Duration::from_micros(
                    self.commit_linger_us.or(file.commit_linger_us).unwrap_or(0).min(1_000_000),
                ),
            },
            resource_coordinator: self.resource_coordinator.clone().or(file.resource_coordinator.clone()),
            resource_pools: PoolCapacity::parse(
                self.resource_pools.as_deref().or(file.resource_pools.as_deref()).unwrap_or(""),
            )
            .map_err(|e| ConfigError::Invalid(format!("--resource-pools: {e}")))?,
            memory_budget: self.memory_budget.or(file.memory_budget).unwrap_or(256 << 20),
            http_options: HttpOptions {
                ingest_path,
                body_limit: self.max_body.or(file.max_body).unwrap_or(8 << 20),
                idle_timeout: Duration::from_secs(self.idle_timeout.or(file.idle_timeout).unwrap_or(30).max(1)),
                header_timeout,
                body_timeout: Duration::from_secs(self.body_timeout.or(file.body_timeout).unwrap_or(30).max(1)),
                profiling: self.enable_profiling || file.enable_profiling.unwrap_or(false),
                ui: !(self.no_ui || file.no_ui.unwrap_or(false)),
                max_connections: self.max_connections.or(file.max_connections).unwrap_or(4096).max(1),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jimbus.toml");
        std::fs::write(&path, "shards = 3\nhttp = \"127.0.0.1:9000\"\nfsync = \"always\"\n").unwrap();
        let args = ServeArgs { config: Some(path), shards: Some(2), ..Default::default() };
        let config = args.resolve().unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.http.port(), 9000);
        assert_eq!(config.log.fsync, FsyncMode::Always);
        assert_eq!(config.grpc.port(), 50051);
    }

    #[test]
    fn the_bus_flag_selects_jetstream_with_replicas_by_cluster_size() {
        let one = ServeArgs { bus: Some("127.0.0.1:4222".into()), ..Default::default() }.resolve().unwrap();
        let one = one.bus.unwrap();
        assert_eq!((one.urls, one.replicas), (vec!["nats://127.0.0.1:4222".to_string()], 1));
        let three = ServeArgs { bus: Some("nats://a:1,nats://b:2,nats://c:3".into()), ..Default::default() };
        assert_eq!(three.resolve().unwrap().bus.unwrap().replicas, 3);
        let chosen = ServeArgs { bus: Some("nats://a:1,b:2".into()), bus_replicas: Some(1), ..Default::default() };
        assert_eq!(chosen.resolve().unwrap().bus.unwrap().replicas, 1);
        assert!(ServeArgs { bus: Some("http://a:1".into()), ..Default::default() }.resolve().is_err());
        assert!(ServeArgs::default().resolve().unwrap().bus.is_none());
    }

    #[test]
    fn a_relative_data_dir_is_resolved_against_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let default = ServeArgs::default().resolve().unwrap();
        assert_eq!(default.data_dir, cwd.join("jimbus-data"));
        let dotted = ServeArgs { data_dir: Some("./x/y".into()), ..Default::default() }.resolve().unwrap();
        assert!(dotted.data_dir.is_absolute() && dotted.data_dir.ends_with("x/y"), "{:?}", dotted.data_dir);
        let absolute = ServeArgs { data_dir: Some("/var/lib/jimbus".into()), ..Default::default() }.resolve().unwrap();
        assert_eq!(absolute.data_dir, PathBuf::from("/var/lib/jimbus"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jimbus.toml");
        std::fs::write(&path, "shard = 3\n").unwrap();
        let err = ServeArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        assert!(err.to_string().contains("shard"), "{err}");
    }
}

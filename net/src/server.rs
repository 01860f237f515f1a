//! Starts and stops a jimbus server: one pinned glommio executor per shard, each
//! with its log, its pump and its HTTP listener on the shared SO_REUSEPORT port,
//! and one thread with a small tokio runtime for the gRPC edge. With `--bus
//! nats://…` the shards run only their HTTP listeners, and every edge uses the
//! JetStream bus instead of the embedded log.
//!
//! Stopping is ordered so nothing acknowledged is lost: stop accepting, let open
//! HTTP requests finish, give gRPC calls a grace period, then let every pump apply
//! what is queued, commit, fsync and exit. This module must never handle a
//! request itself.

use crate::bus::Bus;
use crate::config::ServeConfig;
use crate::embedded::{self, ShardQueue, ShardRouter};
use crate::http::accept::HttpSocket;
use crate::http::{sse, EdgeContext, Listener};
use crate::jetstream::JetStreamBus;
use crate::shutdown::Shutdown;
use glommio::{LocalExecutorBuilder, Placement};
use jimbus_core::budget::MemoryBudget;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("shard {shard} failed to start: {reason}")]
    ShardStart { shard: usize, reason: String },
    #[error("cannot start the gRPC edge on {addr}: {reason}")]
    Grpc { addr: SocketAddr, reason: String },
    #[error("cannot spawn a thread: {0}")]
    Thread(String),
    #[error("{0}")]
    Bus(#[from] crate::jetstream::JetStreamError),
}

/// Where a running server listens.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The HTTP port every shard accepts on (SO_REUSEPORT).
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// A running server.
pub struct Server {
    /// Where it listens (the ports bound, when port 0 was asked).
    pub bound: Bound,
    /// Readiness and stopping, shared with every edge; only this module changes it.
    shutdown: Arc<Shutdown>,
    /// The embedded bus, stopped last (on JetStream it was never opened).
    router: ShardRouter,
    /// Each shard's executor thread.
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    /// A shard's id, once its HTTP listener has drained.
    drained: flume::Receiver<usize>,
    /// The gRPC edge's thread.
    grpc: JoinHandle<()>,
    /// Tells the gRPC edge to stop taking calls (then it has a grace period).
    grpc_stop: tokio::sync::oneshot::Sender<()>,
    /// The JetStream bus, when it replaces the embedded log.
    jetstream: Option<JetStreamBus>,
}

impl Server {
    /// Starts every shard, then the gRPC edge, and marks the server ready.
    pub fn start(
        config: ServeConfig,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Result<Self, ServerError> {
        let shutdown = Arc::new(Shutdown::default());
        let budget = MemoryBudget::new(config.memory_budget);
        let context = Arc::new(EdgeContext {
            shutdown: shutdown.clone(),
            metrics,
            budget: budget.clone(),
            streams: sse::stream_grants(budget.clone()),
        });
        let (router, receivers) = embedded::queues(config.shards, config.queue_capacity);
        let jetstream = config.bus.clone().map(JetStreamBus::start).transpose()?;
        let bus: Arc<dyn Bus> = match &jetstream {
            Some(jetstream) => Arc::new(jetstream.clone()),
            None => Arc::new(router.clone()),
        };
        let embedded = jetstream.is_none();
        crate::observe::register(embedded, config.queue_capacity);
        let (drained_tx, drained) = flume::unbounded();
        let mut shards = Vec::new();
        let mut http = config.http;
        for (id, queue) in receivers.into_iter().enumerate() {
            let (started_tx, started) = flume::bounded(1);
            let shard = ShardStart { id, http, queue, router: router.clone(), bus: bus.clone(), embedded };
            let handle = spawn_shard(shard, &config, context.clone(), started_tx, drained_tx.clone())?;
            match started.recv() {
                Ok(Ok(addr)) => http = addr,
                Ok(Err(reason)) => return Err(ServerError::ShardStart { shard: id, reason }),
                Err(_) => return Err(ServerError::ShardStart { shard: id, reason: "the executor exited".into() }),
            }
            shards.push(handle);
        }
        if embedded {
            // /ready follows the data directory's free space.
            crate::disk::watch_data_dir(&config.data_dir);
            // Once the shards have made the data directory.
            let shutdown = shutdown.clone();
            crate::observe::watch_data_dir(config.data_dir.clone(), move || shutdown.is_stopping());
        }
        let lease = remote_lease(&config, &budget);
        let (grpc, grpc_addr, grpc_stop) = spawn_grpc(&config, bus, lease, budget.clone())?;
        shutdown.set_ready(true);
        if let Some(jetstream) = &jetstream {
            // Ready follows the cluster: a bus without quorum is not ready.
            let shutdown = shutdown.clone();
            jetstream.on_availability(move |up| shutdown.set_ready(up));
        }
        let bound = Bound { http, grpc: grpc_addr };
        tracing::info!(http = %bound.http, grpc = %bound.grpc, shards = config.shards, data_dir = %config.data_dir.display(), "jimbus ready");
        Ok(Self { bound, shutdown, router, shards, drained, grpc, grpc_stop, jetstream })
    }

    /// Stops in order and waits until everything is durable.
    pub fn stop(self) {
        tracing::info!("stopping: no new connections, draining requests");
        self.shutdown.begin();
        for _ in 0..self.shards.len() {
            // A shard stops waiting for its connections at the drain timeout.
            let _ = self.drained.recv_timeout(crate::http::DRAIN_TIMEOUT + Duration::from_secs(1));
        }
        let _ = self.grpc_stop.send(());
        let _ = self.grpc.join();
        if let Some(jetstream) = self.jetstream {
            // Nothing is kept here: every acknowledged event is already in JetStream.
            jetstream.stop();
            drop(self.router);
            for shard in self.shards {
                let _ = shard.join();
            }
            tracing::info!("stopped");
            return;
        }
        if !embedded::stop(&self.router, Duration::from_secs(30)) {
            tracing::error!("a shard did not stop within 30 s");
        }
        drop(self.router);
        for shard in self.shards {
            let _ = shard.join();
        }
        tracing::info!("stopped; every acknowledged event is on disk");
    }
}

/// What one shard starts with.
struct ShardStart {
    id: usize,
    /// Where its HTTP listener binds (port 0 only for the first shard).
    http: SocketAddr,
    queue: ShardQueue,
    router: ShardRouter,
    /// What its HTTP listener appends to.
    bus: Arc<dyn Bus>,
    /// Whether it opens its log and runs its pump (false on the JetStream bus).
    embedded: bool,
}

fn spawn_shard(
    start: ShardStart,
    config: &ServeConfig,
    context: Arc<EdgeContext>,
    started: flume::Sender<Result<SocketAddr, String>>,
    drained: flume::Sender<usize>,
) -> Result<glommio::ExecutorJoinHandle<()>, ServerError> {
    let ShardStart { id, http, queue, router, bus, embedded } = start;
    let data_dir = config.data_dir.clone();
    let (log, pump, http_options) = (config.log.clone(), config.pump.clone(), config.http_options.clone());
    let budget = context.budget.clone();
    let cpus = allowed_cpus();
    let builder = LocalExecutorBuilder::new(Placement::Fixed(cpus[id % cpus.len()]))
        .name(&format!("shard-{id}"))
        .io_memory(2 << 20);
    let handle = builder
        .spawn(move || async move {
            let shard = if embedded {
                match embedded::open(id, &data_dir, log, pump, router.clone(), &budget).await {
                    Ok(shard) => Some(shard),
                    Err(e) => {
                        let dir = embedded::shard_dir(&data_dir, id);
                        let _ = started.send(Err(format!("cannot open the log in {}: {e}", dir.display())));
                        return;
                    }
                }
            } else {
                None
            };
            let socket = match HttpSocket::bind(id, http) {
                Ok(socket) => socket,
                Err(e) => {
                    let _ = started.send(Err(format!("cannot listen on {http}: {e}")));
                    return;
                }
            };
            let _ = started.send(socket.local_addr().map_err(|e| e.to_string()));
            let pump = shard.map(|shard| glommio::spawn_local(embedded::run(shard, queue)));
            Listener::new(id, bus, http_options, context).run(socket).await;
            let _ = drained.send(id);
            if let Some(pump) = pump {
                pump.await;
            }
        })
        .map_err(|e| ServerError::Thread(e.to_string()))?;
    Ok(handle)
}

type GrpcThread = (JoinHandle<()>, SocketAddr, tokio::sync::oneshot::Sender<()>);

/// Lowers the calling thread's priority to `nice` (Linux keeps one per
/// thread), so that the gRPC edge yields a core to the shard pinned there
/// when both want it (`--grpc-nice`; its trade-off is measured in
/// docs/tuning.md). Only ever lowered, which needs no privilege; a refusal
/// is logged, not fatal.
fn lower_priority(nice: i32) {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no memory of ours.
    let thread = unsafe { libc::gettid() } as libc::id_t;
    // Never raised: a server started niced keeps its edge at least as low.
    if nice <= unsafe { libc::getpriority(libc::PRIO_PROCESS, thread) } {
        return;
    }
    // SAFETY: as above.
    let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, nice) } != 0;
    if refused {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the gRPC edge's priority");
    }
}

/// The remote coordinator to lease the budget from, with the budget it sets.
fn remote_lease(config: &ServeConfig, budget: &Arc<MemoryBudget>) -> Option<(String, Arc<MemoryBudget>)> {
    config.resource_coordinator.clone().map(|url| (url, budget.clone()))
}

/// Starts the gRPC edge's thread and runtime on `config.grpc`.
fn spawn_grpc(
    config: &ServeConfig,
    bus: Arc<dyn Bus>,
    lease: Option<(String, Arc<MemoryBudget>)>,
    budget: Arc<MemoryBudget>,
) -> Result<GrpcThread, ServerError> {
    let (addr, pools, nice, limits) = (config.grpc, config.resource_pools, config.grpc_nice, config.grpc_limits);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = flume::bounded(1);
    let thread = std::thread::Builder::new()
        .name("grpc-edge".into())
        .spawn(move || {
            lower_priority(nice);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("grpc")
                .on_thread_start(move || lower_priority(nice))
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match crate::grpc::accept::GrpcListener::bind(addr).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                if let Some((url, budget)) = lease {
                    tokio::spawn(crate::grpc::remote_budget::lease_from(url, budget));
                }
                let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
                let serve = tokio::spawn(crate::grpc::serve(listener, bus, budget, pools, limits, async move {
                    let _ = stop_rx.await;
                    let _ = grace_tx.send(());
                }));
                // Subscriptions never end on their own: after the stop signal,
                // give unary calls a grace period, then close everything.
                tokio::select! {
                    result = serve => if let Ok(Err(e)) = result { tracing::error!(error = %e, "gRPC edge failed") },
                    _ = async { let _ = grace_rx.await; tokio::time::sleep(Duration::from_secs(2)).await } => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(|e| ServerError::Thread(e.to_string()))?;
    match bound_rx.recv() {
        Ok(Ok(bound)) => Ok((thread, bound, stop_tx)),
        Ok(Err(reason)) => Err(ServerError::Grpc { addr, reason }),
        Err(_) => Err(ServerError::Grpc { addr, reason: "the gRPC thread exited".into() }),
    }
}

/// The CPUs this process may run on (a container's cpuset may be smaller than
/// the machine), so each shard is pinned to one it is allowed to use.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set we pass for this process (pid 0).
    let cpus = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect::<Vec<_>>()
    };
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

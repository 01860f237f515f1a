//! The embedded bus: one process, its own durable log. Each shard is a
//! glommio task set pinned to one core, owning the sessions that hash to it:
//!
//! - `router`: the [`Bus`](crate::bus::Bus) the edges hold; sends each
//!   request to the owning shard's queue as a `command`.
//! - `pump`: the shard's single writer; applies commands in arrival order
//!   with one group commit per batch.
//! - `log` and `retention`: segment files, their in-memory index, and
//!   which closed segments go.
//! - `recovery`: opening a shard from its directory; `layout` names every
//!   file in it and fixes the order they are written and read.
//! - `subscription`, `consumer`, `consumer_task`, `consumer_store`:
//!   ephemeral subscriptions, and durable consumers' state (owned by the
//!   pump), their delivery tasks and their files.
//! - `aggregation`: windows and cascades of the events once durable.
//!
//! Outside this folder only the router, the options, and [`open`], [`run`],
//! [`shutdown`] and [`stop`] are used (plus `log` and [`delivery`] by the log
//! benchmark). Nothing here may import an edge (`http`, `grpc`) or the
//! JetStream backend.

mod aggregation;
mod command;
mod consumer;
mod consumer_store;
mod consumer_task;
mod layout;
pub mod log;
mod pump;
mod recovery;
mod retention;
mod router;
mod subscription;

pub use consumer::DurableLimits;
pub use log::{FsyncMode, LogOptions, Retention};
pub use pump::{PumpOptions, Shard};
pub use recovery::ShardOpenError;
pub use router::ShardRouter;
/// For the log benchmark, which measures deliveries as subscribers get them.
pub use subscription::delivery;

use jimbus_core::budget::MemoryBudget;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The receiving end of one shard's command queue, handed to [`run`].
pub struct ShardQueue(flume::Receiver<command::Command>);

/// The queues of a new embedded bus with `shards` shards of `capacity`
/// commands each: the router, and each shard's receiving end by id.
pub fn queues(shards: usize, capacity: usize) -> (ShardRouter, Vec<ShardQueue>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(capacity)).unzip();
    (ShardRouter::new(senders), receivers.into_iter().map(ShardQueue).collect())
}

/// Opens shard `id` from its directory under `data_dir` (on the shard's executor).
pub async fn open(
    id: usize,
    data_dir: &Path,
    log: LogOptions,
    pump: PumpOptions,
    router: ShardRouter,
    budget: &Arc<MemoryBudget>,
) -> Result<Shard, ShardOpenError> {
    Shard::open(id, &layout::shard_dir(data_dir, id), log, pump, router, budget).await
}

/// The directory shard `id` keeps its files in.
pub fn shard_dir(data_dir: &Path, id: usize) -> std::path::PathBuf {
    layout::shard_dir(data_dir, id)
}

/// Runs an opened shard's pump until [`stop`] or until every sender is gone.
pub async fn run(shard: Shard, queue: ShardQueue) {
    shard.run(queue.0).await
}

/// Asks every shard to apply what is queued, commit, sync and stop; the
/// receiver gets one message per shard that has stopped.
pub fn shutdown(router: &ShardRouter) -> flume::Receiver<()> {
    let (done_tx, done) = flume::unbounded();
    router.broadcast(|| command::Command::Shutdown { done: done_tx.clone() });
    done
}

/// [`shutdown`], waiting up to `timeout` for each shard from a thread that no
/// shard runs on; false if one did not answer in time.
pub fn stop(router: &ShardRouter, timeout: Duration) -> bool {
    let done = shutdown(router);
    (0..router.shards()).all(|_| done.recv_timeout(timeout).is_ok())
}

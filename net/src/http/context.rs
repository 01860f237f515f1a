//! What every HTTP listener of the process shares: readiness and stopping
//! (owned by the server), the metrics to render and the memory budget that
//! request bodies and event streams are granted from. It must never hold
//! anything of one connection or one shard.

use crate::shutdown::Shutdown;
use jimbus_core::budget::{MemoryBudget, StreamGrants};
use std::sync::Arc;

/// What every listener of the process shares.
pub struct EdgeContext {
    /// Readiness and stopping, owned by the server.
    pub shutdown: Arc<Shutdown>,
    /// What `/metrics` renders.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Every request body is granted memory here before it is read; when the
    /// budget is spent, requests get 503 with `Retry-After`.
    pub budget: Arc<MemoryBudget>,
    /// The live view's streams, each holding a fixed grant of `budget` (from
    /// `sse::stream_grants`).
    pub streams: StreamGrants,
}

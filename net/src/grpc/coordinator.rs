//! The `jimbot.ResourceCoordinator` gRPC service, wire-compatible with the
//! legacy coordinator, served on the tonic edge for the rest of the system
//! (trainers asking for GPUs, API quota, memory, CPU). The pools themselves are
//! [`ResourcePools`] in core; this module adds the clock, the lock and the
//! metrics. It must never block the tokio runtime beyond a short lock.

use crate::lock::lock;
use futures_util::StreamExt;
use jimbus_core::pools::{PoolCapacity, ResourcePools};
use jimbus_proto::coordinator as pb;
use jimbus_proto::coordinator::resource_coordinator_server::{ResourceCoordinator, ResourceCoordinatorServer};
use jimbus_proto::validate::Validate;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub struct CoordinatorService {
    pools: Arc<Mutex<ResourcePools>>,
    started: Instant,
}

/// The largest request decoded. The schema bounds a request to a few KiB (ids
/// of at most 128 bytes, at most 64 metadata entries); a 3.7 MB one of 350,000
/// empty metadata entries decoded to a map of them before its rule was read.
/// Past this, tonic answers OUT_OF_RANGE before decoding.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// How often StreamResourceStatus reports.
const STATUS_EVERY: Duration = Duration::from_secs(1);

type StatusStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::ResourceStatus, Status>> + Send>>;

impl CoordinatorService {
    pub fn server(capacity: PoolCapacity) -> ResourceCoordinatorServer<Self> {
        let pools = Arc::new(Mutex::new(ResourcePools::new(capacity)));
        ResourceCoordinatorServer::new(Self { pools, started: Instant::now() })
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    fn pools(&self) -> MutexGuard<'_, ResourcePools> {
        lock(&self.pools)
    }
}

fn now_ms() -> u64 {
    crate::clock::now_micros() / 1000
}

#[tonic::async_trait]
impl ResourceCoordinator for CoordinatorService {
    async fn request_resource(
        &self,
        request: Request<pb::ResourceRequest>,
    ) -> Result<Response<pb::ResourceResponse>, Status> {
        let request = request.into_inner();
        request.validate()?;
        let response = self.pools().request(&request, now_ms());
        let outcome = if response.status == pb::RequestStatus::Granted as i32 { "granted" } else { "denied" };
        metrics::counter!("jimbus_coordinator_requests_total", "outcome" => outcome).increment(1);
        tracing::debug!(request_id = %request.request_id, component = %request.component, outcome, "resource request");
        Ok(Response::new(response))
    }

    async fn release_resource(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(self.pools().release(&request.into_inner(), now_ms())))
    }

    async fn get_resource_status(
        &self,
        request: Request<pb::ResourceStatusRequest>,
    ) -> Result<Response<pb::ResourceStatusResponse>, Status> {
        Ok(Response::new(self.pools().status(request.into_inner().resource, now_ms())))
    }

    type StreamResourceStatusStream = StatusStream;

    /// The status of the asked pools now, then every `STATUS_EVERY`, until the client leaves.
    async fn stream_resource_status(
        &self,
        request: Request<pb::ResourceStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let resource = request.into_inner().resource;
        let pools = self.pools.clone();
        let reports = futures_util::stream::unfold(true, move |first| {
            let pools = pools.clone();
            async move {
                if !first {
                    tokio::time::sleep(STATUS_EVERY).await;
                }
                let statuses = lock(&pools).status(resource, now_ms()).statuses;
                Some((futures_util::stream::iter(statuses.into_iter().map(Ok)), false))
            }
        });
        Ok(Response::new(Box::pin(reports.flatten())))
    }

    async fn health_check(
        &self,
        _request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Ok(Response::new(pb::HealthCheckResponse {
            healthy: true,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs() as i64,
            metadata: [("server".to_string(), "jimbus".to_string())].into(),
        }))
    }
}

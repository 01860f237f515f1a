//! Borrowing the memory budget from a remote `jimbot.ResourceCoordinator`
//! (`--resource-coordinator URL`): a task on the gRPC edge's tokio runtime
//! leases the server's memory from the coordinator (RequestResource with a
//! lifetime, given back and asked again before it ends) and sets the local [`MemoryBudget`]'s limit
//! to what was granted, so ingest is shed with 503 when the coordinator says so.
//! A circuit breaker stops asking after three failed calls in a row and the
//! budget falls back to the local `--memory-budget`; after a pause one probe is
//! let through, and a success closes the breaker.
//!
//! It must never leave the budget at a remote grant once the coordinator is
//! unreachable: a lease it cannot renew is not relied on past the breaker.

use jimbus_core::budget::MemoryBudget;
use jimbus_proto::coordinator::resource_coordinator_client::ResourceCoordinatorClient;
use jimbus_proto::coordinator::{self as pb, RequestStatus, ResourceType};
use std::sync::Arc;
use std::time::Duration;

/// How long each lease lasts; it is renewed at a third of that.
const LEASE: Duration = Duration::from_secs(6);
/// Failed calls in a row that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// How long the breaker stays open before one probe.
const OPEN_FOR: Duration = Duration::from_secs(5);
/// Longest wait for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The breaker's state, exported as `jimbus_coordinator_breaker` (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed { failures: u32 },
    Open,
    HalfOpen,
}

impl Breaker {
    /// The state after a call's outcome.
    pub fn after(self, succeeded: bool) -> Self {
        match (self, succeeded) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if failures + 1 < FAILURES_TO_OPEN => {
                Breaker::Closed { failures: failures + 1 }
            }
            _ => Breaker::Open,
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Breaker::Closed { .. } => 0.0,
            Breaker::Open => 1.0,
            Breaker::HalfOpen => 2.0,
        }
    }
}

/// Leases the budget from `url` until the runtime stops.
pub async fn lease_from(url: String, budget: Arc<MemoryBudget>) {
    let local = budget.limit();
    let mut breaker = Breaker::Closed { failures: 0 };
    let mut token = String::new();
    loop {
        // Give the last lease back first: the coordinator's pool may hold only one.
        release(&url, std::mem::take(&mut token)).await;
        let asked = tokio::time::timeout(CALL_TIMEOUT, ask(&url, local)).await;
        let outcome = asked.unwrap_or_else(|_| Err("the coordinator did not answer in time".into()));
        breaker = breaker.after(outcome.is_ok());
        match outcome {
            Ok((granted, new_token)) => {
                budget.set_limit(granted);
                token = new_token;
            }
            Err(e) => tracing::warn!(error = %e, breaker = ?breaker, "resource coordinator call failed"),
        }
        metrics::gauge!("jimbus_coordinator_breaker").set(breaker.gauge());
        if breaker == Breaker::Open {
            // Rely on our own budget while the coordinator is away.
            budget.set_limit(local);
            metrics::counter!("jimbus_coordinator_fallbacks_total").increment(1);
            tokio::time::sleep(OPEN_FOR).await;
            breaker = Breaker::HalfOpen;
            metrics::gauge!("jimbus_coordinator_breaker").set(breaker.gauge());
        } else {
            tokio::time::sleep(LEASE / 3).await;
        }
    }
}

/// One lease request: the bytes granted (0 when denied) and the grant's token.
async fn ask(url: &str, bytes: u64) -> Result<(u64, String), String> {
    let mut client = ResourceCoordinatorClient::connect(url.to_string()).await.map_err(|e| e.to_string())?;
    let request = pb::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        component: "jimbus".into(),
        resource: ResourceType::Memory as i32,
        quantity_bytes: bytes as i64,
        allow_partial: true,
        priority: pb::Priority::High as i32,
        duration: Some(prost_types::Duration { seconds: LEASE.as_secs() as i64, nanos: 0 }),
        ..Default::default()
    };
    let response = client.request_resource(request).await.map_err(|e| e.to_string())?.into_inner();
    if response.status == RequestStatus::Granted as i32 {
        Ok((response.granted_bytes.max(0) as u64, response.token))
    } else {
        tracing::info!(message = %response.message, "the resource coordinator granted no memory");
        Ok((0, String::new()))
    }
}

/// Gives back a lease (best effort: it expires anyway).
async fn release(url: &str, token: String) {
    if token.is_empty() {
        return;
    }
    if let Ok(mut client) = ResourceCoordinatorClient::connect(url.to_string()).await {
        let request = pb::ReleaseRequest { token, component: "jimbus".into(), ..Default::default() };
        let _ = tokio::time::timeout(CALL_TIMEOUT, client.release_resource(request)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_open_the_breaker_and_a_success_closes_it() {
        let mut b = Breaker::Closed { failures: 0 };
        b = b.after(false).after(false);
        assert_eq!(b, Breaker::Closed { failures: 2 });
        b = b.after(false);
        assert_eq!(b, Breaker::Open);
        assert_eq!(Breaker::HalfOpen.after(false), Breaker::Open, "a failed probe opens it again");
        assert_eq!(Breaker::HalfOpen.after(true), Breaker::Closed { failures: 0 });
    }
}

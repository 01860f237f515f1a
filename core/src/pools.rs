//! The resource pools behind the `jimbot.ResourceCoordinator` service: GPU,
//! CPU, API-quota and memory capacity from config, lent out as allocations
//! with an optional lifetime, with the legacy service's semantics (grant,
//! partial grant when the caller allows it, deny; release by token or request
//! id; expiry).
//!
//! It owns the bookkeeping only. It must never read a clock (time is passed
//! in), wait for capacity, or perform I/O; the gRPC layer wraps it.

use jimbus_proto::coordinator::{self as pb, RequestStatus, ResourceType};
use std::collections::BTreeMap;

/// Memory quantities without `quantity_bytes` are in MiB.
const MIB: i64 = 1 << 20;

/// The capacity of each pool (memory in bytes, the rest in units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCapacity {
    pub gpu: i64,
    pub cpu: i64,
    pub api: i64,
    pub memory_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolsError {
    #[error("{0:?}: expected NAME=AMOUNT with NAME one of gpu, cpu, claude_api, memory")]
    Syntax(String),
}

impl PoolCapacity {
    /// Parses `gpu=1,cpu=8,claude_api=60,memory=1073741824`.
    pub fn parse(text: &str) -> Result<Self, PoolsError> {
        let mut capacity = Self::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || PoolsError::Syntax(item.to_string());
            let (name, amount) = item.split_once('=').ok_or_else(bad)?;
            let amount: i64 = amount.trim().parse().map_err(|_| bad())?;
            match name.trim() {
                "gpu" => capacity.gpu = amount,
                "cpu" => capacity.cpu = amount,
                "claude_api" | "api" => capacity.api = amount,
                "memory" => capacity.memory_bytes = amount,
                _ => return Err(bad()),
            }
        }
        Ok(capacity)
    }

    fn of(&self, resource: ResourceType) -> i64 {
        match resource {
            ResourceType::Gpu => self.gpu,
            ResourceType::Cpu => self.cpu,
            ResourceType::ClaudeApi => self.api,
            ResourceType::Memory => self.memory_bytes,
            ResourceType::Unspecified => 0,
        }
    }
}

/// One outstanding grant.
#[derive(Debug, Clone)]
struct Allocation {
    request_id: String,
    component: String,
    resource: ResourceType,
    amount: i64,
    allocated_at_ms: u64,
    expires_at_ms: Option<u64>,
}

/// Every pool and what is lent out of it, by token.
#[derive(Debug)]
pub struct ResourcePools {
    capacity: PoolCapacity,
    allocations: BTreeMap<String, Allocation>,
    next_token: u64,
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn millis(d: &prost_types::Duration) -> u64 {
    (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000
}

impl ResourcePools {
    pub fn new(capacity: PoolCapacity) -> Self {
        Self { capacity, allocations: BTreeMap::new(), next_token: 1 }
    }

    fn allocated(&self, resource: ResourceType) -> i64 {
        self.allocations.values().filter(|a| a.resource == resource).map(|a| a.amount).sum()
    }

    /// What the request asks for, in the pool's unit.
    fn wanted(request: &pb::ResourceRequest, resource: ResourceType) -> i64 {
        match resource {
            ResourceType::Memory if request.quantity_bytes > 0 => request.quantity_bytes,
            ResourceType::Memory => i64::from(request.quantity) * MIB,
            _ => i64::from(request.quantity),
        }
    }

    /// Grants all of the request, or what is free when `allow_partial` is set
    /// and something is, or denies it. `now_ms` is wall-clock milliseconds.
    pub fn request(&mut self, request: &pb::ResourceRequest, now_ms: u64) -> pb::ResourceResponse {
        self.expire(now_ms);
        let resource = ResourceType::try_from(request.resource).unwrap_or(ResourceType::Unspecified);
        let wanted = Self::wanted(request, resource);
        let denied = |message: String| pb::ResourceResponse {
            request_id: request.request_id.clone(),
            status: RequestStatus::Denied as i32,
            message,
            ..Default::default()
        };
        if resource == ResourceType::Unspecified || wanted <= 0 {
            return denied("resource and a positive quantity are required".into());
        }
        let free = self.capacity.of(resource) - self.allocated(resource);
        let amount = if wanted <= free {
            wanted
        } else if request.allow_partial {
            free
        } else {
            0
        };
        if amount <= 0 {
            return denied(format!("{} free of {wanted} asked", free.max(0)));
        }
        let token = format!("grant-{}", self.next_token);
        self.next_token += 1;
        let expires_at_ms = request.duration.as_ref().map(millis).filter(|&d| d > 0).map(|d| now_ms + d);
        self.allocations.insert(
            token.clone(),
            Allocation {
                request_id: request.request_id.clone(),
                component: request.component.clone(),
                resource,
                amount,
                allocated_at_ms: now_ms,
                expires_at_ms,
            },
        );
        let (granted_quantity, granted_bytes) = match resource {
            ResourceType::Memory => ((amount / MIB) as i32, amount),
            _ => (amount as i32, 0),
        };
        pb::ResourceResponse {
            request_id: request.request_id.clone(),
            status: RequestStatus::Granted as i32,
            message: if amount < wanted { format!("partial: {amount} of {wanted}") } else { String::new() },
            granted_at: Some(timestamp(now_ms)),
            expires_at: expires_at_ms.map(timestamp),
            token,
            granted_quantity,
            granted_bytes,
        }
    }

    /// Releases by token, or by request id when no token is given.
    pub fn release(&mut self, release: &pb::ReleaseRequest, now_ms: u64) -> pb::ReleaseResponse {
        self.expire(now_ms);
        let token = if release.token.is_empty() {
            self.allocations.iter().find(|(_, a)| a.request_id == release.request_id).map(|(t, _)| t.clone())
        } else {
            Some(release.token.clone())
        };
        match token.and_then(|t| self.allocations.remove(&t)) {
            Some(_) => pb::ReleaseResponse { success: true, message: String::new() },
            None => pb::ReleaseResponse { success: false, message: "no such grant (released or expired)".into() },
        }
    }

    /// Capacity, what is free, and every allocation, for one resource or all.
    pub fn status(&mut self, resource: i32, now_ms: u64) -> pb::ResourceStatusResponse {
        self.expire(now_ms);
        let wanted = ResourceType::try_from(resource).unwrap_or(ResourceType::Unspecified);
        let all = [ResourceType::Gpu, ResourceType::ClaudeApi, ResourceType::Memory, ResourceType::Cpu];
        let statuses = all
            .into_iter()
            .filter(|r| wanted == ResourceType::Unspecified || *r == wanted)
            .map(|r| self.status_of(r))
            .collect();
        pb::ResourceStatusResponse { statuses, timestamp: Some(timestamp(now_ms)) }
    }

    fn status_of(&self, resource: ResourceType) -> pb::ResourceStatus {
        // Memory is reported in MiB, like the legacy service's `quantity`.
        let unit = if resource == ResourceType::Memory { MIB } else { 1 };
        let total = self.capacity.of(resource) / unit;
        let allocated = self.allocated(resource) / unit;
        let allocations = self
            .allocations
            .values()
            .filter(|a| a.resource == resource)
            .map(|a| pb::AllocationInfo {
                request_id: a.request_id.clone(),
                component: a.component.clone(),
                quantity: (a.amount / unit) as i32,
                allocated_at: Some(timestamp(a.allocated_at_ms)),
                expires_at: a.expires_at_ms.map(timestamp),
            })
            .collect();
        pb::ResourceStatus {
            resource: resource as i32,
            total_capacity: total as i32,
            available: (total - allocated).max(0) as i32,
            allocated: allocated as i32,
            allocations,
        }
    }

    /// Drops grants whose lifetime is over; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.allocations.len();
        self.allocations.retain(|_, a| a.expires_at_ms.is_none_or(|end| end > now_ms));
        before - self.allocations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(resource: ResourceType, quantity: i32, partial: bool) -> pb::ResourceRequest {
        pb::ResourceRequest {
            request_id: format!("r-{quantity}"),
            component: "trainer".into(),
            resource: resource as i32,
            quantity,
            allow_partial: partial,
            ..Default::default()
        }
    }

    #[test]
    fn grants_partially_denies_and_releases() {
        let mut pools = ResourcePools::new(PoolCapacity::parse("gpu=2,memory=104857600").unwrap());
        let first = pools.request(&ask(ResourceType::Gpu, 1, false), 0);
        assert_eq!(first.status, RequestStatus::Granted as i32);
        let too_many = pools.request(&ask(ResourceType::Gpu, 2, false), 0);
        assert_eq!(too_many.status, RequestStatus::Denied as i32);
        let partial = pools.request(&ask(ResourceType::Gpu, 2, true), 0);
        assert_eq!((partial.status, partial.granted_quantity), (RequestStatus::Granted as i32, 1));
        let memory = pools.request(&ask(ResourceType::Memory, 60, false), 0);
        assert_eq!(memory.granted_bytes, 60 << 20);
        let release = pb::ReleaseRequest { token: first.token, ..Default::default() };
        assert!(pools.release(&release, 0).success);
        assert!(!pools.release(&release, 0).success, "a token releases once");
        let gpu = &pools.status(ResourceType::Gpu as i32, 0).statuses[0];
        assert_eq!((gpu.total_capacity, gpu.allocated, gpu.available), (2, 1, 1));
    }

    #[test]
    fn grants_with_a_duration_expire() {
        let mut pools = ResourcePools::new(PoolCapacity { cpu: 1, ..Default::default() });
        let mut request = ask(ResourceType::Cpu, 1, false);
        request.duration = Some(prost_types::Duration { seconds: 1, nanos: 0 });
        let grant = pools.request(&request, 10_000);
        assert_eq!(grant.expires_at.unwrap().seconds, 11);
        assert_eq!(pools.request(&request, 10_500).status, RequestStatus::Denied as i32);
        assert_eq!(pools.request(&request, 11_000).status, RequestStatus::Granted as i32, "the first expired");
    }

    #[test]
    fn bad_pool_specs_name_the_item() {
        assert_eq!(PoolCapacity::parse("gpu=two"), Err(PoolsError::Syntax("gpu=two".into())));
        assert!(PoolCapacity::parse("tpu=1").is_err());
    }
}

//! The hostile-client suite (issue 19): the real binary on loopback, attacked
//! as a hostile client would, one module per defect. The rule it checks: what is
//! accepted can be delivered to a default client, memory stays within the
//! budget, and every bad input gets an answer.

mod harness;

#[path = "hostile/delivery.rs"]
mod delivery;
#[path = "hostile/descriptors.rs"]
mod descriptors;
#[path = "hostile/disk.rs"]
mod disk;
#[path = "hostile/grpc.rs"]
mod grpc;
#[path = "hostile/grpc_connections.rs"]
mod grpc_connections;
#[path = "hostile/http.rs"]
mod http;
#[path = "hostile/memory.rs"]
mod memory;
#[path = "hostile/property.rs"]
mod property;

//! The jimbus server: glommio shards with their durable logs and the field mod's
//! HTTP API, and the tonic gRPC edge on a small tokio runtime, bridged by flume.
//! The binary (`src/main.rs`) only parses the command line and calls in here.

pub mod admit;
pub mod aggregation;
pub mod bus;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod coordinator;
pub mod grpc;
pub mod http;
pub mod http_conn;
pub mod http_frame;
pub mod http_guard;
pub mod jetstream;
pub mod lock;
pub mod log;
pub mod observe;
pub mod profile;
pub mod remote_budget;
pub mod server;
pub mod shard;
pub mod sse;
pub mod telemetry;
pub mod ui;

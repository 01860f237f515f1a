//! The jimbus server: glommio shards with their durable logs and the field mod's
//! HTTP API, and the tonic gRPC edge on a small tokio runtime, bridged by flume.
//! The binary (`src/main.rs`) only parses the command line and calls in here.
//!
//! It reads as three wings over a common floor (docs/architecture.md):
//! - edges, where clients come in: [`http`] (the field mod's API, the live
//!   view, metrics) and [`grpc`] (the bus service, the resource coordinator);
//! - backends, where events are kept: [`embedded`] (the default, its own log)
//!   and [`jetstream`] (NATS JetStream);
//! - the floor both use: [`bus`] (the interface between them), [`admit`],
//!   [`allocator`], [`clock`], [`disk`], [`lock`], [`observe`], [`shutdown`], [`telemetry`];
//! - and above them [`config`] and [`server`], which start and stop it all.

pub mod admit;
pub mod allocator;
pub mod bus;
pub mod clock;
pub mod config;
pub mod disk;
pub mod embedded;
pub mod grpc;
pub mod http;
pub mod jetstream;
pub mod lock;
pub mod observe;
pub mod server;
pub mod shutdown;
pub mod telemetry;

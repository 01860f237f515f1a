//! Test cases shared by the bus backends: each takes a running server, so the
//! same case runs on the embedded log and on NATS JetStream.

#![allow(dead_code)]

pub mod aggregation;
pub mod compat;
pub mod durable;

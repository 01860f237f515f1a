//! jimbus domain logic, free of sockets, files and runtimes so that it can be
//! tested and benchmarked on plain byte buffers.
//!
//! It owns the field mod's JSON dialect ([`json`]), its adaptation into protobuf
//! events ([`adapt`], [`ingest`]), topic names and patterns ([`topic`]),
//! deduplication ([`dedup`]) and the server's stamps beside the client's view
//! of an event ([`stamps`]), the on-disk record format ([`record`]), what a
//! closed segment leaves for a fast restart ([`checkpoint`]), what durable
//! consumers persist ([`consumer_state`]), the memory budget
//! ([`budget`]), aggregation ([`aggregate`]), the pump's adaptive batch size
//! ([`batch`]), a thread's spare decoded events ([`spare_events`]), the
//! sessions' sequences and topic counts ([`recent_map`]) and the
//! Resource Coordinator's pools ([`pools`]). It must never perform I/O or
//! depend on an async runtime.

pub mod adapt;
pub mod aggregate;
pub mod batch;
pub mod budget;
pub mod checkpoint;
pub mod checksum;
pub mod consumer_state;
pub mod dedup;
pub mod ingest;
pub mod json;
pub mod pools;
pub mod recent_map;
pub mod record;
pub mod spare_events;
pub mod stamps;
pub mod topic;

/// A hash map for the hot path (aggregation's sessions, a cascade's jokers):
/// foldhash, seeded per process, instead of SipHash. The keys are what the
/// server admitted (session ids, joker names), and the random seed keeps a
/// client from choosing colliding keys offline. [`recent_map`] uses the same
/// hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

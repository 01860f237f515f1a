//! The aggregator's configuration and the rules that make it usable.
//!
//! This file owns [`AggregateConfig`] (every knob of windows, cascades, eviction
//! and memory), its defaults, and
//! [`ConfigError`], the one place where a configuration is judged. It must never
//! hold state or act on events: it only describes limits, and
//! [`AggregateConfig::validate`] must reject every value that would make the
//! aggregator loop, never flush, or emit a message the schema refuses.

use std::time::Duration;

/// The most triggers one message may carry: the schema's `max_items` for `triggers`.
const MAX_CASCADE_SPLIT: usize = 10_000;

/// The most bytes of one part of a message: its cascade or its game state.
const MAX_PART_BYTES: usize = 2 << 20;

/// Everything the aggregator is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Length of a session's window.
    pub window: Duration,
    /// A window is flushed early once it held this many events.
    pub max_window_events: usize,
    /// Bracketless triggers further apart than this are separate legacy groups.
    pub legacy_gap: Duration,
    /// An open hand with no event for this long is flushed as incomplete.
    pub cascade_timeout: Duration,
    /// A cascade is emitted as a numbered part each time it holds this many triggers.
    pub cascade_split: usize,
    /// ... or as soon as its triggers encode to this many bytes, so that a part
    /// (with its base game state, itself at most 2 MiB as an accepted event)
    /// stays under the 4 MiB message limit of default gRPC clients.
    pub cascade_split_bytes: usize,
    /// A session with no event for this long is evicted.
    pub idle_timeout: Duration,
    /// At most this many sessions are held; the least recently active is evicted.
    pub max_sessions: usize,
    /// A session's merged game state restarts from the incoming state when
    /// merging it could make the state longer than this (its `extra` keys
    /// accumulate, so a client sending new keys would grow it without end,
    /// and every message carries it). At most 2 MiB, an accepted event's
    /// size, as `cascade_split_bytes` (validated), keeps a message under the
    /// 4 MiB above.
    pub max_state_bytes: usize,
    /// The initial memory budget in bytes (see
    /// [`Aggregator::set_memory_budget`](super::Aggregator::set_memory_budget)).
    pub memory_budget: usize,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(100),
            max_window_events: 4096,
            legacy_gap: Duration::from_millis(50),
            cascade_timeout: Duration::from_secs(5),
            cascade_split: MAX_CASCADE_SPLIT,
            cascade_split_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            max_sessions: 65_536,
            max_state_bytes: 1 << 20,
            memory_budget: 256 << 20,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration or count that must be positive is zero (a zero window or
    /// split would flush on every event or never make progress).
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// `cascade_split` exceeds what one message may carry.
    #[error("cascade_split must be at most 10000 (the schema's max_items for triggers)")]
    SplitTooLarge,
    /// A byte limit of one message's part exceeds 2 MiB, which together with
    /// the other part could pass default gRPC clients' 4 MiB.
    #[error("{0} must be at most 2 MiB (a message's two parts stay under gRPC's 4 MiB)")]
    PartTooLarge(&'static str),
}

impl AggregateConfig {
    /// Checks that every parameter is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero_durations = [
            (self.window, "window"),
            (self.legacy_gap, "legacy_gap"),
            (self.cascade_timeout, "cascade_timeout"),
            (self.idle_timeout, "idle_timeout"),
        ];
        for (value, name) in zero_durations {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        let zero_counts = [
            (self.max_window_events, "max_window_events"),
            (self.cascade_split, "cascade_split"),
            (self.cascade_split_bytes, "cascade_split_bytes"),
            (self.max_sessions, "max_sessions"),
            (self.max_state_bytes, "max_state_bytes"),
        ];
        for (value, name) in zero_counts {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.cascade_split > MAX_CASCADE_SPLIT {
            return Err(ConfigError::SplitTooLarge);
        }
        for (value, name) in
            [(self.cascade_split_bytes, "cascade_split_bytes"), (self.max_state_bytes, "max_state_bytes")]
        {
            if value > MAX_PART_BYTES {
                return Err(ConfigError::PartTooLarge(name));
            }
        }
        Ok(())
    }
}

//! The adaptive batch size of a shard's pump: how many queued commands it
//! drains into one group commit.
//!
//! This module owns [`BatchConfig`], its checks, and [`BatchSizer`], the
//! control law that turns an observed queue depth into the next batch size.
//! It knows nothing of events, aggregation or the log, and must never read a
//! clock or perform I/O: the pump observes its own queue and exports
//! `target()` and `queue_depth()` itself.

/// Parameters of the adaptive batch size (see [`BatchSizer`] for the law).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// The batch size under light load. At least 1.
    pub min_batch: usize,
    /// The cap the batch size grows toward under load.
    pub max_batch: usize,
    /// A queue this deep or shallower is light load.
    pub light_load: usize,
    /// The fraction of the gap between batch size and queue depth closed per
    /// observation, in (0, 1].
    pub grow_gain: f64,
}

/// A batch configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchConfigError {
    #[error("min_batch must be greater than zero")]
    ZeroMin,
    /// `max_batch` is below `min_batch`.
    #[error("max_batch must be at least min_batch")]
    Range,
    /// `grow_gain` is outside (0, 1] (or NaN).
    #[error("grow_gain must lie in (0, 1]")]
    Gain,
}

impl BatchConfig {
    /// Checks that every parameter is usable.
    pub fn validate(&self) -> Result<(), BatchConfigError> {
        if self.min_batch == 0 {
            return Err(BatchConfigError::ZeroMin);
        }
        if self.max_batch < self.min_batch {
            return Err(BatchConfigError::Range);
        }
        // Written as a positive test so that NaN is refused too.
        if !(self.grow_gain > 0.0 && self.grow_gain <= 1.0) {
            return Err(BatchConfigError::Gain);
        }
        Ok(())
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { min_batch: 1, max_batch: 4096, light_load: 1, grow_gain: 0.5 }
    }
}

/// The adaptive batch size.
///
/// # The control law
/// The pump observes its input queue depth `q` before draining a batch and asks
/// [`BatchSizer::observe`] for the batch size `b` (commands drained into one
/// group commit). With parameters
/// `min_batch`, `max_batch`, `light_load` and `grow_gain` ([`BatchConfig`]):
///
/// ```text
/// q <= light_load      : b' = min_batch                          (latency first)
/// q >  b               : b' = min(max_batch, b + ceil(grow_gain * (q - b)))
/// light_load < q <= b  : b' = max(min_batch, q)                  (never wait to fill)
/// ```
///
/// So under light load every event is handled at once; as the queue deepens the
/// batch grows geometrically toward the depth, capped at `max_batch` (throughput
/// first), and it drops back as soon as the queue drains. `b'` always lies in
/// `[min_batch, max_batch]`. The caller exports `target()` and `queue_depth()`.
#[derive(Debug, Clone)]
pub struct BatchSizer {
    /// The parameters, with `min_batch >= 1` and `max_batch >= min_batch`
    /// enforced here so that an unvalidated config cannot make `clamp` panic.
    config: BatchConfig,
    /// The batch size last returned by [`observe`](Self::observe).
    target: usize,
    /// The queue depth last observed, kept for the caller's metrics.
    depth: usize,
}

impl BatchSizer {
    pub fn new(config: BatchConfig) -> Self {
        let min = config.min_batch.max(1);
        Self {
            config: BatchConfig { min_batch: min, max_batch: config.max_batch.max(min), ..config },
            target: min,
            depth: 0,
        }
    }

    /// Takes the current queue depth and returns the next batch size.
    pub fn observe(&mut self, queue_depth: usize) -> usize {
        let c = &self.config;
        self.depth = queue_depth;
        self.target = if queue_depth <= c.light_load {
            c.min_batch
        } else if queue_depth > self.target {
            let gap = (queue_depth - self.target) as f64;
            // The clamp and `max(1)` keep growth positive even for a gain of 0 or
            // NaN from an unvalidated config.
            let step = (c.grow_gain.clamp(f64::MIN_POSITIVE, 1.0) * gap).ceil() as usize;
            self.target.saturating_add(step.max(1))
        } else {
            queue_depth
        }
        .clamp(c.min_batch, c.max_batch);
        self.target
    }

    /// The most commands a batch may take: the size the law grows toward.
    pub fn max_batch(&self) -> usize {
        self.config.max_batch
    }

    /// The current batch size.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The queue depth last observed.
    pub fn queue_depth(&self) -> usize {
        self.depth
    }
}

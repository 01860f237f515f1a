-- BalatroMCP settings. Steamodded loads this table as the mod's config and keeps
-- the player's changes in its own config file. The first six keys are the field
-- mod's, with its meaning and defaults; the rest are new. Every delay is in ms.
return {
  enabled = true,
  -- Where events go. Batches go to {url}/batch, health probes to {url}/health,
  -- the connection test at start to {url}.
  event_bus_url = "http://localhost:8080/api/v1/events",
  -- How long the first event of a batch may wait for company.
  batch_window_ms = 100,
  -- Events per HTTP request. Bigger cascades are split, never truncated.
  max_batch_size = 50,
  -- Attempts per batch before the breaker is forced open (the batch is kept).
  max_retries = 3,
  -- First retry delay: the base of the exponential backoff (backoff_base_ms,
  -- when set, takes its place).
  retry_delay_ms = 1000,
  heartbeat_interval_ms = 5000,

  -- New in this mod.
  connection_test = true,       -- post the field mod's connection_test at start
  request_timeout_ms = 5000,
  breaker_threshold = 3,        -- consecutive failed requests that open the breaker
  breaker_reset_ms = 5000,      -- open -> half-open (health probe) after this long
  backoff_max_ms = 30000,       -- retry_delay_ms * 2^(attempt-1), capped here ...
  backoff_jitter = 0.2,         -- ... minus up to this fraction at random
  memory_queue_cap = 10000,     -- events the worker holds in memory before spilling to disk
  channel_cap = 50000,          -- events waiting for the worker beyond this are dropped (counted)
  spill_dir = "BalatroMCP/spill", -- in the save folder (love.filesystem), one log per game instance
  spill_max_bytes = 64 * 1024 * 1024, -- per instance; beyond this (and a full memory queue) events are dropped, counted, logged
  write_ahead = true,           -- events go to the spill log as the worker takes them, and are sent from there
  lease_touch_ms = 5000,        -- how often a worker renews the lease on its spill logs
  lease_stale_ms = 30000,       -- a log whose lease is older belongs to a game that is gone: adopted
  claim_ms = 500,               -- a claimed log is adopted this long after the claim, if the claim still stands
  quit_wait_ms = 200,           -- the longest the game waits for the worker when it quits
  stats_interval_ms = 1000,     -- how often the worker reports its counters to the game thread
}

-- BalatroMCP settings. Steamodded loads this table as the mod's config and keeps
-- the player's changes in its own config file. The first six keys are the field
-- mod's, with its meaning and defaults; the rest are new. Every delay is in ms.
return {
  enabled = true,
  -- Where events go. Batches go to {url}/batch, health probes to {url}/health.
  event_bus_url = "http://localhost:8080/api/v1/events",
  -- How long the first event of a batch may wait for company.
  batch_window_ms = 100,
  -- Events per HTTP request. Bigger cascades are split, never truncated.
  max_batch_size = 50,
  -- Attempts per batch before the breaker is forced open (the batch is kept).
  max_retries = 3,
  -- First retry delay; the base of the exponential backoff.
  retry_delay_ms = 1000,
  heartbeat_interval_ms = 30000,

  -- New in this mod.
  request_timeout_ms = 5000,
  breaker_threshold = 3,        -- consecutive failed requests that open the breaker
  breaker_reset_ms = 5000,      -- open -> half-open (health probe) after this long
  backoff_base_ms = 1000,       -- base * 2^(attempt-1) ...
  backoff_max_ms = 30000,       -- ... capped here ...
  backoff_jitter = 0.2,         -- ... minus up to this fraction at random
  memory_queue_cap = 10000,     -- events held in memory before spilling to disk
  spill_file = "BalatroMCP/spill.jsonl", -- in the save folder (love.filesystem)
  spill_max_bytes = 64 * 1024 * 1024,    -- beyond this (and a full memory queue) events are dropped, counted, logged
  quit_flush_ms = 1000,         -- on quit, try this long to send; the rest stays in the spill file
  stats_interval_ms = 1000,     -- how often the worker reports its counters to the game thread
}

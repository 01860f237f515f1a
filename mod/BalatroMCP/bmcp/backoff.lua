-- Exponential backoff with jitter for the worker's retries.
--
-- Owns: the delay before retry number `attempt` (1-based): base * 2^(attempt-1),
-- capped at max, then reduced by up to `jitter` (a fraction, 0..1) at random so
-- that many game instances do not retry in lockstep after one server restart.
-- It must never sleep, never read a clock and never use the global math.random
-- of the game thread (the random source is injected; the worker owns its own).

local M = {}

--- opts: base_ms, max_ms, jitter (0..1), random() -> [0, 1).
function M.new(opts)
  local base, max, jitter = opts.base_ms or 250, opts.max_ms or 30000, opts.jitter or 0.2
  local random = opts.random or math.random
  return function(attempt)
    local raw = base * 2 ^ math.max(0, (attempt or 1) - 1)
    local capped = math.min(max, raw)
    return capped * (1 - jitter * random())
  end
end

return M

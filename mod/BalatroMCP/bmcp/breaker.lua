-- The circuit breaker of the worker's HTTP client.
--
-- Owns: the state machine closed -> open -> half_open -> closed. It opens after
-- `threshold` consecutive failed requests (or when forced), waits `reset_ms`, then
-- goes half-open: first a health probe ({url}/health), and only when that answers
-- 2xx one trial batch; the trial's success closes it, any failure re-opens it.
-- It must never perform a request, read a clock or sleep: callers pass `now` (ms)
-- and act on what allow() says, which keeps it a pure, testable function of time.

local M = {}

local Breaker = {}
Breaker.__index = Breaker

function M.new(opts)
  opts = opts or {}
  return setmetatable({
    threshold = opts.threshold or 3,
    reset_ms = opts.reset_ms or 5000,
    state = "closed",
    failures = 0,
    opened_at = nil,
    probe_ok = false,
    transitions = 0,
  }, Breaker)
end

function Breaker:_set(state, now)
  if state ~= self.state then self.transitions = self.transitions + 1 end
  self.state = state
  if state == "open" then self.opened_at, self.probe_ok = now, false end
  if state == "closed" then self.failures, self.probe_ok = 0, false end
end

--- What the caller may do now: "send", "probe", or "wait" plus ms to wait.
function Breaker:allow(now)
  if self.state == "closed" then return "send" end
  if self.state == "open" then
    local left = self.opened_at + self.reset_ms - now
    if left > 0 then return "wait", left end
    self:_set("half_open", now)
  end
  if self.probe_ok then return "send" end
  return "probe"
end

--- A request (a batch) succeeded.
function Breaker:success(now)
  self:_set("closed", now)
end

--- A request failed (connection error, timeout, 5xx, 429 ...).
function Breaker:failure(now)
  if self.state == "half_open" then return self:_set("open", now) end
  self.failures = self.failures + 1
  if self.failures >= self.threshold then self:_set("open", now) end
end

--- The health probe's outcome (only meaningful when half-open).
function Breaker:probe_result(ok, now)
  if ok then self.probe_ok = true else self:_set("open", now) end
end

--- Opens now, whatever the count (a batch used up its retries).
function Breaker:force_open(now)
  self:_set("open", now)
end

return M

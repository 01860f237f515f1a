-- The worker's send loop, one step at a time.
--
-- Owns: pulling encoded events from the inbox into the batcher, deciding each
-- step whether to send a batch, probe health or wait (batch window, backoff with
-- jitter, circuit breaker), classifying answers, spilling to disk while the server
-- is unreachable, and logging every failure with its batch id, event id range,
-- attempt, status and duration. Answers: 2xx = kept; 400 = the server could not
-- read the body and dead-lettered it whole (re-sending identical bytes can never
-- succeed, so the batch is acked and counted as dead_lettered); 413 = the batch
-- is split, and a single event that still gets 413 is dropped, logged and
-- counted (too_large) rather than holding back every event behind it; anything else (408, 429, 5xx, wrong URL, no connection) = retry.
-- Events are appended to the spill log as soon as they are taken from the
-- game's channel (write-ahead) and sent from there; memory holds them only
-- while the disk refuses them.
-- Events the server rejected inside a 2xx answer (its "rejected" list, kept on
-- its dead-letter topic) are logged one by one with their reasons. At start it
-- posts the field mod's connection_test to {url}; every lease_touch_ms it renews
-- the leases of its spill logs and adopts the logs of game instances that are gone.
-- It must never block except inside the one transport call per step, never run on
-- the game thread, and never drop or reorder an event (the queue enforces that).

local backoff = require("bmcp.backoff")
local breaker = require("bmcp.breaker")
local batcher = require("bmcp.batcher")
local spillq = require("bmcp.spillq")
local json = require("bmcp.json")

local M = {}

local S = {}
S.__index = S

--- The batch and health URLs, derived as the field mod derives them.
function M.urls(event_bus_url)
  local base = event_bus_url:gsub("/+$", "")
  return base, base .. "/batch", base .. "/health"
end

--- opts: config (see config.lua), transport(req) -> res, clock() -> ms,
--- random() -> [0,1), fs (bmcp.fs adapter), spill_dir, log(msg), inbox (has
--- pop() -> string|nil), instance (names this worker's batches and spill log),
--- epoch_ms().
function M.new(opts)
  local c = opts.config
  local self = setmetatable({
    config = c, transport = opts.transport, clock = opts.clock,
    log = opts.log or print, inbox = opts.inbox,
    next_attempt_at = 0, attempt = 0, split_to = nil, epoch_ms = opts.epoch_ms,
    conn_test = c.connection_test ~= false, next_touch = 0,
    stats = { received = 0, requests = 0, sent = 0, acked = 0, failures = 0,
              probes = 0, dead_lettered = 0, duplicates = 0, rejected = 0, too_large = 0 },
  }, S)
  local base_url, batch_url, health_url = M.urls(c.event_bus_url)
  self.base_url, self.batch_url, self.health_url = base_url, batch_url, health_url
  self.queue = spillq.new({
    fs = opts.fs, dir = opts.spill_dir or c.spill_dir, instance = opts.instance,
    mem_cap = c.memory_queue_cap, disk_max_bytes = c.spill_max_bytes,
    lease_stale_s = (c.lease_stale_ms or 30000) / 1000, claim_ms = c.claim_ms, clock = opts.clock, log = self.log,
  })
  self.batcher = batcher.new({
    queue = self.queue, window_ms = c.batch_window_ms, max_batch_size = c.max_batch_size,
    instance = opts.instance, epoch_ms = opts.epoch_ms,
  })
  self.breaker = breaker.new({ threshold = c.breaker_threshold, reset_ms = c.breaker_reset_ms })
  self.backoff = backoff.new({ base_ms = c.backoff_base_ms, max_ms = c.backoff_max_ms,
                               jitter = c.backoff_jitter, random = opts.random })
  return self
end

--- True while the last request failed or the breaker is not closed: pending
--- events are then kept on disk, so a game restart cannot lose them.
function S:unhealthy()
  return self.attempt > 0 or self.breaker.state ~= "closed"
end

--- Moves everything waiting in the inbox into the queue.
function S:intake(now)
  local n = 0
  while true do
    local line = self.inbox:pop()
    if line == nil then break end
    if line ~= "" then -- "" only wakes the worker (control commands)
      self.batcher:add(spillq.record(line, now))
      n = n + 1
    end
  end
  self.stats.received = self.stats.received + n
  -- Write-ahead: what the worker took is on disk at once (memory holds events
  -- only while the disk refuses them), so a game that quits while the worker
  -- is busy, or inside a request that hangs, loses nothing it handed over.
  if n > 0 and (self.config.write_ahead ~= false or self:unhealthy()) then self.queue:spill() end
  return n
end

local function post(self, url, body)
  local started = self.clock()
  local res = self.transport({
    method = "POST", url = url, body = body, timeout_ms = self.config.request_timeout_ms,
    headers = { ["Content-Type"] = "application/json", ["User-Agent"] = "BalatroMCP/2.0",
                ["Content-Length"] = tostring(#body) },
  }) or {}
  self.stats.requests = self.stats.requests + 1
  return res, self.clock() - started
end

local function is_2xx(res) return type(res.status) == "number" and res.status >= 200 and res.status < 300 end

function S:_probe(now)
  self.stats.probes = self.stats.probes + 1
  local res, ms = post(self, self.health_url, "{}")
  local ok = is_2xx(res)
  if not ok then
    self.log(string.format("health probe %s failed: status=%s err=%s duration=%dms",
      self.health_url, tostring(res.status), tostring(res.err), ms))
  end
  self.breaker:probe_result(ok, self.clock())
  return ok
end

function S:_log_failure(batch, res, ms, what)
  self.log(string.format("batch %s failed (%s): events %s..%s (%d), attempt %d, status=%s, err=%s, duration=%dms",
    batch.id, what, batch.first, batch.last, #batch.records, batch.attempt,
    tostring(res.status), tostring(res.err), ms))
end

-- Logs each event the server kept on its dead-letter topic instead of the bus.
function S:_log_rejected(batch, body)
  if not body or not body:find('"rejected"%s*:%s*%[%s*{') then return end
  local ok, answer = pcall(json.decode, body)
  if not ok or type(answer) ~= "table" or type(answer.rejected) ~= "table" then
    self.log(string.format("batch %s: the server rejected events but its answer could not be read: %s",
      batch.id, body:sub(1, 300)))
    return
  end
  for _, r in ipairs(answer.rejected) do
    local rec = type(r) == "table" and batch.records[(tonumber(r.index) or -1) + 1]
    self.stats.rejected = self.stats.rejected + 1
    self.log(string.format("batch %s: event %s (index %s) rejected by the server: %s",
      batch.id, rec and rec.id or "?", tostring(type(r) == "table" and r.index), tostring(type(r) == "table" and r.error)))
  end
end

function S:_on_success(batch, res)
  local n = #batch.records
  self.stats.sent = self.stats.sent + 1
  self.stats.acked = self.stats.acked + n
  local dups = res.body and tonumber(res.body:match('"duplicates"%s*:%s*(%d+)'))
  if dups then self.stats.duplicates = self.stats.duplicates + dups end
  self:_log_rejected(batch, res.body)
  self.batcher:ack()
  self.breaker:success(self.clock())
  self.attempt, self.split_to = 0, nil
end

function S:_on_failure(batch, res, ms)
  self.batcher:requeue()
  local now = self.clock()
  self.stats.failures = self.stats.failures + 1
  self.attempt = self.attempt + 1
  self:_log_failure(batch, res, ms, "retrying")
  self.breaker:failure(now)
  if self.attempt >= (self.config.max_retries or 3) then self.breaker:force_open(now) end
  local delay = self.backoff(self.attempt)
  local retry_after = res.headers and tonumber(res.headers["retry-after"] or "")
  if retry_after then delay = math.max(delay, retry_after * 1000) end
  self.next_attempt_at = now + delay
  self.queue:spill()
end

-- Sends one batch (or as much of it as split_to allows after a 413).
function S:_send(now)
  -- (write-ahead again: events the disk refused at intake get another chance)
  if self.config.write_ahead ~= false and not self.queue.inflight then self.queue:spill() end
  local batch = self.batcher:take()
  if not batch then return end
  if self.split_to and #batch.records > self.split_to then
    -- the queue hands out a prefix; shrink the in-flight batch to the split size
    self.queue:shrink(self.split_to)
    batch.last = batch.records[#batch.records].id
  end
  batch.attempt = batch.attempt + 1
  local res, ms = post(self, self.batch_url, self.batcher:body(batch))
  if is_2xx(res) then return self:_on_success(batch, res) end
  if res.status == 400 then
    self:_log_failure(batch, res, ms, "unreadable; the server dead-lettered the body")
    self.stats.dead_lettered = self.stats.dead_lettered + #batch.records
    return self:_on_success(batch, res)
  end
  if res.status == 413 and #batch.records > 1 then
    self:_log_failure(batch, res, ms, "too large; splitting")
    self.split_to = math.max(1, math.floor(#batch.records / 2))
    self.batcher:requeue()
    return
  end
  if res.status == 413 then
    -- one event larger than the server takes: it can never be sent, and
    -- retrying it would hold back everything behind it
    self:_log_failure(batch, res, ms, "one event larger than the server takes; it is dropped")
    self.stats.too_large = self.stats.too_large + 1
    return self:_on_success(batch, res)
  end
  self:_on_failure(batch, res, ms)
end

--- The field mod's connection test: one POST of its body to {url}, once.
function S:connection_test()
  self.conn_test = false
  local body = '{"type":"connection_test","timestamp":' .. json.encode_number(self.epoch_ms and self.epoch_ms() or os.time() * 1000)
    .. ',"source":"BalatroMCP","data":{"message":"Testing event bus connection"}}'
  local res, ms = post(self, self.base_url, body)
  if is_2xx(res) then
    self.log(string.format("connection test to %s: status %d in %dms", self.base_url, res.status, ms))
  else
    self.log(string.format("connection test to %s failed: status=%s err=%s duration=%dms",
      self.base_url, tostring(res.status), tostring(res.err), ms))
  end
end

-- Leases and orphans every lease_touch_ms; pending claims at every step.
function S:_housekeeping(now)
  if now < self.next_touch then
    if next(self.queue.claims) then self.queue:adopt_orphans() end
    return
  end
  self.next_touch = now + (self.config.lease_touch_ms or 5000)
  self.queue:touch()
  self.queue:adopt_orphans()
end

--- One step: intake, then at most one request. Returns ms until the next step
--- has something to do (nil: idle until an event arrives).
function S:step()
  local now = self.clock()
  if self.conn_test then self:connection_test() end
  self:_housekeeping(now)
  self:intake(now)
  local wait = self.batcher:wait_ms(now)
  if wait == nil then return nil end
  if wait > 0 then return wait end
  if now < self.next_attempt_at then return self.next_attempt_at - now end
  local action, left = self.breaker:allow(now)
  if action == "wait" then return left end
  if action == "probe" then
    if not self:_probe(now) then return self.breaker.reset_ms end
    return 0
  end
  self:_send(now)
  return 0
end

--- Counters for logs and the test harness.
function S:snapshot()
  local q = self.queue
  return {
    received = self.stats.received, requests = self.stats.requests, sent = self.stats.sent,
    acked = self.stats.acked, failures = self.stats.failures, probes = self.stats.probes,
    duplicates = self.stats.duplicates, dead_lettered = self.stats.dead_lettered,
    rejected = self.stats.rejected, too_large = self.stats.too_large,
    pending = q:len(), on_disk = q:disk_len(), in_memory = q:mem_len(),
    spilled = q.stats.spilled, replayed = q.stats.replayed, loaded = q.stats.loaded,
    dropped = q.stats.dropped, spill_failures = q.stats.spill_failures, adopted = q.stats.adopted,
    claims = q:claims_pending(),
    breaker = self.breaker.state,
  }
end

return M

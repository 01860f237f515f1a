-- The worker's pending-event queue: bounded memory, overflow to a spill log.
--
-- Owns: the order of every event not yet acknowledged by the server. The queue
-- is, in sending order: the logs other game instances left behind (adopted
-- orphans, each replayed whole, in order), this instance's own spill log
-- (bmcp.spillfile: framed, checksummed, per instance), then the memory part.
-- The disk part always holds the OLDEST of this instance's events, so spilling
-- is an append and order never changes. Events leave the queue only on commit()
-- (the server answered 2xx), so a failed batch stays at the front in its order.
-- What is on disk is known by reading it back, never by a counter: a log that
-- reads back nothing more is finished, whatever was counted.
-- Drop policy: only when memory is at its cap AND the spill log cannot take the
-- event (byte limit reached, or the disk refuses the write) is an incoming
-- event dropped (the newest one); every drop is counted and logged (the first,
-- then every 1000th). It must never reorder one instance's events, never drop
-- an event for any other reason, and never run on the game thread.

local events = require("bmcp.events")
local spillfile = require("bmcp.spillfile")

local M = {}

local Q = {}
Q.__index = Q

--- opts: fs (bmcp.fs adapter), dir, instance, mem_cap, disk_max_bytes,
--- seg_bytes, lease_stale_s, claim_ms, clock() ms (spill retry pacing, claims), log.
function M.new(opts)
  local self = setmetatable({
    fs = opts.fs, dir = opts.dir, instance = opts.instance,
    mem_cap = opts.mem_cap or 5000,
    disk_max = opts.disk_max_bytes or 64 * 1024 * 1024,
    lease_stale_s = opts.lease_stale_s or 30,
    clock = opts.clock or function() return os.time() * 1000 end,
    log = opts.log or function() end,
    mem = {}, head = 1, tail = 0,
    inflight = nil, orphans = {}, claims = {}, spill_retry_at = 0,
    claim_ms = opts.claim_ms or 500,
    stats = { spilled = 0, dropped = 0, replayed = 0, loaded = 0, spill_failures = 0, adopted = 0 },
  }, Q)
  if self.fs.mkdir then self.fs.mkdir(self.dir) end
  self.seg_bytes = opts.seg_bytes
  self.file = spillfile.open({ fs = self.fs, dir = self.dir, instance = self.instance,
                               seg_bytes = opts.seg_bytes, log = self.log })
  self.file:touch(self.instance)
  self.stats.loaded = self.file.count
  self:adopt_orphans()
  return self
end

--- A queue record from an event line built by bmcp.events.
function M.record(line, now)
  local id, session, seq = events.header(line)
  return { line = line, id = id or "?", session = session, seq = seq, t = now or 0 }
end

-- Claims a log: writes this instance's id into its lease.
function Q:_claim(inst)
  self.fs.write(self.dir .. "/" .. inst .. ".lease", self.instance .. "\n")
end

function Q:_owner(inst)
  return (self.fs.read_at(self.dir .. "/" .. inst .. ".lease", 0, 256) or ""):match("^(.-)\n")
end

function Q:_adopt(inst)
  local f = spillfile.open({ fs = self.fs, dir = self.dir, instance = inst, log = self.log })
  self.orphans[#self.orphans + 1] = f
  self.stats.loaded = self.stats.loaded + f.count
  self.stats.adopted = self.stats.adopted + 1
  self.log(string.format("spill log of %s adopted: %d events to replay", inst, f.count))
end

--- Takes over the logs of game instances that are gone (lease older than
--- lease_stale_s, or released on quit) in two steps, so that two instances
--- starting together do not both replay one log: it writes its id into the
--- log's lease (which also makes the lease fresh for everyone else), and only
--- claim_ms later, if the lease still names it, adopts the log; the last
--- writer wins. Returns how many logs it adopted.
function Q:adopt_orphans()
  local now, have, n = self.clock(), {}, 0
  for _, o in ipairs(self.orphans) do have[o.instance] = true end
  for _, inst in ipairs(spillfile.orphans(self.fs, self.dir, self.instance, self.fs.now(), self.lease_stale_s)) do
    if not have[inst] and not self.claims[inst] then
      self:_claim(inst)
      self.claims[inst] = now
    end
  end
  local claimed = {}
  for inst in pairs(self.claims) do claimed[#claimed + 1] = inst end
  table.sort(claimed) -- "<session>" before "<session>~q": replayed in the order written
  for _, inst in ipairs(claimed) do
    local at = self.claims[inst]
    if now - at >= self.claim_ms then
      self.claims[inst] = nil
      if self:_owner(inst) == self.instance then
        self:_adopt(inst)
        n = n + 1
      else
        self.log(string.format("spill log of %s is replayed by %s", inst, tostring(self:_owner(inst))))
      end
    end
  end
  return n
end

--- Logs claimed but not yet adopted.
function Q:claims_pending()
  local n = 0
  for _ in pairs(self.claims) do n = n + 1 end
  return n
end

--- Renews the leases of the logs this instance owns.
--- Renews the leases of the logs this instance owns. A lease that names
--- another instance means this one looked gone (stalled longer than
--- lease_stale_s) and its log was adopted: that log is left to the adopter,
--- whose replay keeps its order, and new events go to a new log
--- "<instance>+<n>", which sorts after it.
function Q:touch()
  local owner = self:_owner(self.file.instance)
  if owner and owner ~= self.instance then
    self.moves = (self.moves or 0) + 1
    local name = self.instance .. "+" .. self.moves
    self.log(string.format("spill log %s was adopted by %s (this game looked gone); new events go to %s",
      self.file.instance, owner, name))
    self.file = spillfile.open({ fs = self.fs, dir = self.dir, instance = name, seg_bytes = self.seg_bytes,
                                 log = self.log })
    self.own_since = nil
  end
  self.file:touch(self.instance)
  local kept = {}
  for _, o in ipairs(self.orphans) do
    local by = self:_owner(o.instance)
    if by and by ~= self.instance then
      self.log(string.format("spill log %s is replayed by %s now; this game leaves it", o.instance, by))
    else
      o:touch(self.instance)
      kept[#kept + 1] = o
    end
  end
  self.orphans = kept
end

--- On quit: the logs are left for the next start, which may take them at
--- once: every lease that still names this instance is removed, those of
--- claims not yet confirmed included (a stale claim would hold a log back).
function Q:release_leases()
  local names = { self.file.instance }
  for _, o in ipairs(self.orphans) do names[#names + 1] = o.instance end
  for inst in pairs(self.claims) do names[#names + 1] = inst end
  for _, inst in ipairs(names) do
    if self:_owner(inst) == self.instance then self.fs.remove(self.dir .. "/" .. inst .. ".lease") end
  end
  self.claims = {}
end

function Q:mem_len() return self.tail - self.head + 1 end

function Q:disk_len()
  local n = self.file.count
  for _, o in ipairs(self.orphans) do n = n + o.count end
  return n
end

function Q:len() return self:disk_len() + self:mem_len() end

function Q:has_disk()
  if #self.orphans > 0 then return true end
  return self.file:pending()
end

--- Arrival time of the oldest pending event (0 for spilled ones: they are due).
--- Arrival time of the oldest pending event: 0 for logs left by earlier games
--- (they are due), the arrival of the first event spilled since this
--- instance's log was last empty, or that of the oldest event in memory.
function Q:oldest_time()
  if #self.orphans > 0 then return 0 end
  if self.file:pending() then return self.own_since or 0 end
  self.own_since = nil
  local r = self.mem[self.head]
  return r and r.t or nil
end

function Q:_drop(rec)
  self.stats.dropped = self.stats.dropped + 1
  local n = self.stats.dropped
  if n == 1 or n % 1000 == 0 then
    self.log(string.format("DROP event %s: memory (%d) is full and the spill log cannot take it; %d dropped so far",
      rec.id, self.mem_cap, n))
  end
end

--- Adds an event at the back. Returns false if it had to be dropped.
function Q:push(rec)
  if self:mem_len() >= self.mem_cap then self:spill() end
  if self:mem_len() >= self.mem_cap then
    self:_drop(rec)
    return false
  end
  self.tail = self.tail + 1
  self.mem[self.tail] = rec
  return true
end

--- Moves memory events to the end of the spill log (as many as the byte limit
--- allows). A no-op while a memory batch is in flight (order depends on it) and
--- for a second after the disk refused a write.
function Q:spill()
  if self:mem_len() == 0 or (self.inflight and self.inflight.src == "mem") then return 0 end
  if self.clock() < self.spill_retry_at then return 0 end
  local lines, bytes = {}, 0
  local room = self.disk_max - self.file:pending_bytes()
  for i = self.head, self.tail do
    local n = #self.mem[i].line + 18
    if bytes + n > room then break end
    lines[#lines + 1] = self.mem[i].line
    bytes = bytes + n
  end
  if #lines == 0 then return 0 end
  local was_empty = not self.file:pending()
  local ok, err = self.file:append(lines)
  if ok and was_empty then self.own_since = self.mem[self.head].t end
  if not ok then
    self.stats.spill_failures = self.stats.spill_failures + 1
    self.spill_retry_at = self.clock() + 1000
    local n = self.stats.spill_failures
    if n == 1 or n % 100 == 0 then
      self.log(string.format("spill to %s failed (%d times): %s", self.dir, n, tostring(err)))
    end
    return 0
  end
  for i = self.head, self.head + #lines - 1 do self.mem[i] = nil end
  self.head = self.head + #lines
  self.stats.spilled = self.stats.spilled + #lines
  return #lines
end

-- Reads a batch from a log; a log that reads back nothing is finished.
function Q:_peek_log(f, n)
  if not f:pending() then
    if f.count ~= 0 then
      self.log(string.format("spill %s: %d events counted but none on disk; the count is reset", f.instance, f.count))
      f.count = 0
    end
    return nil
  end
  local recs = f:read(n)
  if #recs == 0 then
    self.log(string.format("spill %s: nothing readable is left (%d counted); the log is closed", f.instance, f.count))
    f:clear()
    return nil
  end
  for i, r in ipairs(recs) do
    local rec = M.record(r.line, 0)
    rec.seg, rec.off = r.seg, r.off
    recs[i] = rec
  end
  return recs
end

--- The first n pending events, oldest first; they stay queued until commit().
function Q:peek(n)
  if self.inflight then return self.inflight.recs end
  while #self.orphans > 0 do
    local o = self.orphans[1]
    local recs = self:_peek_log(o, n)
    if recs then
      self.inflight = { src = o, recs = recs }
      return recs
    end
    o:clear()
    o:release()
    table.remove(self.orphans, 1)
  end
  local recs = self:_peek_log(self.file, n)
  if recs then
    self.inflight = { src = self.file, recs = recs }
    return recs
  end
  recs = {}
  for i = self.head, math.min(self.tail, self.head + n - 1) do recs[#recs + 1] = self.mem[i] end
  if #recs == 0 then return recs end
  self.inflight = { src = "mem", recs = recs }
  return recs
end

--- Keeps only the first k events of the in-flight batch (after a 413).
function Q:shrink(k)
  local recs = self.inflight and self.inflight.recs
  if not recs then return end
  for i = #recs, k + 1, -1 do recs[i] = nil end
end

--- The in-flight events were acknowledged: they leave the queue.
function Q:commit()
  local f = self.inflight
  if not f then return end
  self.inflight = nil
  if f.src == "mem" then
    for i = self.head, self.head + #f.recs - 1 do self.mem[i] = nil end
    self.head = self.head + #f.recs
    return
  end
  local last = f.recs[#f.recs]
  f.src:ack(last.seg, last.off, #f.recs)
  self.stats.replayed = self.stats.replayed + #f.recs
end

--- The in-flight events were not acknowledged: they stay at the front, in order.
function Q:release()
  self.inflight = nil
end

return M

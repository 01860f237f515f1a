-- The worker's pending-event queue: bounded memory, overflow to a spill file.
--
-- Owns: the order of every event not yet acknowledged by the server. The queue
-- is a disk part followed by a memory part; the disk part (one JSON event per
-- line, in the mod's save folder) always holds the OLDEST events, so spilling is
-- an append and order never changes. Events leave the queue only on commit()
-- (the server answered 2xx), so a failed batch simply stays at the front in its
-- original order. Acked disk lines are skipped by a byte offset kept in
-- "<path>.pos"; a game restart re-reads the file from there. If a crash loses the
-- offset, events are re-sent with their original ids and the server drops the
-- duplicates, which is the safe direction.
-- Drop policy: only when memory is at its cap AND the spill file is at its byte
-- limit is an incoming event dropped (the newest one); every drop is counted
-- and logged. It must never reorder events, never drop an event for any other
-- reason, and never run on the game thread (it does file I/O).

local events = require("bmcp.events")

local M = {}

local Q = {}
Q.__index = Q

--- opts: fs (bmcp.fs adapter), path, mem_cap, disk_max_bytes, chunk_bytes, log.
function M.new(opts)
  local self = setmetatable({
    fs = opts.fs, path = opts.path, pos_path = opts.path .. ".pos",
    mem_cap = opts.mem_cap or 5000,
    disk_max = opts.disk_max_bytes or 64 * 1024 * 1024,
    chunk = opts.chunk_bytes or 256 * 1024,
    log = opts.log or function() end,
    mem = {}, head = 1, tail = 0,
    disk_off = 0, disk_size = 0, disk_count = 0,
    inflight = nil,
    stats = { spilled = 0, dropped = 0, replayed = 0, loaded = 0 },
  }, Q)
  self:_load()
  return self
end

--- A queue record from an event line built by bmcp.events.
function M.record(line, now)
  local id, session, seq = events.header(line)
  return { line = line, id = id or "?", session = session, seq = seq, t = now or 0 }
end

function Q:mem_len() return self.tail - self.head + 1 end
function Q:len() return self.disk_count + self:mem_len() end

--- Arrival time of the oldest pending event (0 for spilled ones: they are due).
function Q:oldest_time()
  if self.disk_count > 0 then return 0 end
  local r = self.mem[self.head]
  return r and r.t or nil
end

function Q:_drop(rec)
  self.stats.dropped = self.stats.dropped + 1
  local n = self.stats.dropped
  -- log the first drop of a run and then every 1000th, so a long outage cannot
  -- flood the log with one line per event
  if n == 1 or n % 1000 == 0 then
    self.log(string.format("DROP event %s: memory (%d) and spill file (%d bytes) are full; %d dropped so far",
      rec.id, self.mem_cap, self.disk_max, n))
  end
end

--- Adds an event at the back. Returns false if it had to be dropped.
function Q:push(rec)
  if self:mem_len() >= self.mem_cap then self:spill() end
  if self:mem_len() >= self.mem_cap and not self.inflight then
    self:_drop(rec)
    return false
  end
  self.tail = self.tail + 1
  self.mem[self.tail] = rec
  return true
end

-- Rewrites the file without its acked prefix. The offset is reset first: a crash
-- in between re-sends acked events (deduplicated) instead of skipping new ones.
function Q:_compact()
  if self.disk_off == 0 then return end
  local rest = self.disk_size > self.disk_off
    and self.fs.read_at(self.path, self.disk_off, self.disk_size - self.disk_off) or ""
  self.fs.write(self.pos_path, "0")
  self.fs.write(self.path, rest)
  self.disk_off, self.disk_size = 0, #rest
end

--- Moves every memory event to the end of the spill file (as many as fit).
--- A no-op while a batch is in flight: order depends on it.
function Q:spill()
  if self.inflight or self:mem_len() == 0 then return 0 end
  local lines, bytes = {}, 0
  local room = self.disk_max - self.disk_size
  if room < self:_mem_bytes() and self.disk_off > 0 then
    self:_compact()
    room = self.disk_max - self.disk_size
  end
  for i = self.head, self.tail do
    local n = #self.mem[i].line + 1
    if bytes + n > room then break end
    lines[#lines + 1] = self.mem[i].line
    bytes = bytes + n
  end
  if #lines == 0 then return 0 end
  local ok, err = self.fs.append(self.path, table.concat(lines, "\n") .. "\n")
  if not ok then
    self.log("spill to " .. self.path .. " failed: " .. tostring(err))
    return 0
  end
  for i = self.head, self.head + #lines - 1 do self.mem[i] = nil end
  self.head = self.head + #lines
  self.disk_size, self.disk_count = self.disk_size + bytes, self.disk_count + #lines
  self.stats.spilled = self.stats.spilled + #lines
  return #lines
end

function Q:_mem_bytes()
  local b = 0
  for i = self.head, self.tail do b = b + #self.mem[i].line + 1 end
  return b
end

-- Reads up to n complete lines from the acked offset on.
function Q:_read_disk(n)
  local recs, consumed, chunk = {}, 0, self.chunk
  while #recs < n and self.disk_off + consumed < self.disk_size do
    local start = self.disk_off + consumed
    local data = self.fs.read_at(self.path, start, math.min(chunk, self.disk_size - start))
    if not data or #data == 0 then break end
    local pos, got = 1, false
    while #recs < n do
      local nl = data:find("\n", pos, true)
      if not nl then break end
      recs[#recs + 1] = M.record(data:sub(pos, nl - 1), 0)
      consumed = consumed + (nl - pos + 1)
      pos, got = nl + 1, true
    end
    if not got then chunk = chunk * 2 end -- one line longer than the chunk
  end
  return recs, consumed
end

--- The first n pending events, oldest first; they stay queued until commit().
function Q:peek(n)
  if self.inflight then return self.inflight.recs end
  local recs, bytes, src = {}, 0, "mem"
  if self.disk_count > 0 then
    recs, bytes = self:_read_disk(n)
    src = "disk"
  else
    for i = self.head, math.min(self.tail, self.head + n - 1) do recs[#recs + 1] = self.mem[i] end
  end
  if #recs == 0 then return recs end
  self.inflight = { src = src, recs = recs, bytes = bytes }
  return recs
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
  self.disk_off = self.disk_off + f.bytes
  self.disk_count = self.disk_count - #f.recs
  self.stats.replayed = self.stats.replayed + #f.recs
  if self.disk_count == 0 then
    self.fs.remove(self.path)
    self.fs.remove(self.pos_path)
    self.disk_off, self.disk_size = 0, 0
  else
    self.fs.write(self.pos_path, tostring(self.disk_off))
  end
end

--- The in-flight events were not acknowledged: they stay at the front, in order.
function Q:release()
  self.inflight = nil
end

-- Counts the complete lines after the acked offset; drops a torn last line
-- (a crash during append) by rewriting the file without it.
function Q:_load()
  local size = self.fs.size(self.path)
  if not size or size == 0 then return end
  local off = tonumber(self.fs.read_at(self.pos_path, 0, 64) or "") or 0
  if off > size then off = 0 end
  local count, at, last_end = 0, off, off
  while at < size do
    local data = self.fs.read_at(self.path, at, math.min(self.chunk, size - at))
    if not data or #data == 0 then break end
    local pos = 1
    while true do
      local nl = data:find("\n", pos, true)
      if not nl then break end
      count, pos = count + 1, nl + 1
      last_end = at + nl
    end
    at = at + #data
  end
  self.disk_off, self.disk_size, self.disk_count = off, last_end, count
  if last_end < size then
    self.log(string.format("spill file had a torn tail of %d bytes; it is ignored", size - last_end))
    self:_compact()
    if self.disk_off == 0 and self.fs.size(self.path) ~= self.disk_size then
      self.fs.write(self.path, self.fs.read_at(self.path, 0, self.disk_size) or "")
    end
  end
  self.stats.loaded = count
  if count > 0 then
    self.log(string.format("spill file %s: %d events to replay", self.path, count))
  end
end

return M

-- One game instance's spill log on disk: framed records in numbered segments.
--
-- Owns: the on-disk format and everything that makes it trustworthy after a
-- crash, a full disk or a second game instance writing in the same folder.
--   * Files are per instance: "<dir>/<instance>.<segment>.q" (segments 1, 2, ...),
--     "<instance>.pos.a|b" (how far the server has acknowledged) and
--     "<instance>.lease" (who owns the files now). Two game instances never
--     write the same file.
--   * A record is "\30" .. 8 hex digits of length .. 8 hex digits of FNV-1a ..
--     the event line .. "\n". The encoder escapes every control character, so
--     \30 only ever starts a frame; a reader trusts only frames whose length and
--     checksum match and resynchronises at the next \30 after anything else (a
--     partial append on a full disk, a torn tail after a crash).
--   * The acknowledged position is written to two slots in turn, each line
--     "<generation> <segment> <offset> <checksum>"; a reader takes the valid slot
--     with the highest generation, so a torn write leaves the previous position
--     (at worst events are re-sent with their ids, and the server drops them).
--   * Nothing is ever rewritten in place: a segment is deleted once every record
--     in it is acknowledged, and appends go to the last segment until it holds
--     seg_bytes, then to a new one.
-- It must never trust a counter over what it reads back, never write another
-- instance's segments, and never run on the game thread (it does file I/O).

local M = {}

local function fnv_hex(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    h = bit.tobit(bit.lshift(h, 24) + h * 403) -- h * 16777619, kept exact
  end
  return bit.tohex(h, 8)
end
M.checksum = fnv_hex

--- The framed bytes of one event line.
function M.frame(line)
  return "\30" .. bit.tohex(#line, 8) .. fnv_hex(line) .. line .. "\n"
end

-- Parses one frame at i: returns line, next index; or nil, "short" / "bad".
local function parse(data, i)
  if data:byte(i) ~= 30 then return nil, "bad" end
  if #data < i + 16 then return nil, "short" end
  local len = tonumber(data:sub(i + 1, i + 8), 16)
  if not len or not data:sub(i + 1, i + 16):match("^%x+$") then return nil, "bad" end
  local stop = i + 17 + len
  if #data < stop then return nil, "short" end
  local line = data:sub(i + 17, stop - 1)
  if data:byte(stop) ~= 10 or fnv_hex(line) ~= data:sub(i + 9, i + 16) then return nil, "bad" end
  return line, stop + 1
end
M.parse = parse

local F = {}
F.__index = F

--- opts: fs (bmcp.fs adapter), dir, instance, seg_bytes, chunk_bytes, log.
function M.open(opts)
  local self = setmetatable({
    fs = opts.fs, dir = opts.dir, instance = opts.instance,
    seg_bytes = opts.seg_bytes or 1024 * 1024, chunk = opts.chunk_bytes or 256 * 1024,
    log = opts.log or function() end,
    gen = 0, first = 1, off = 0, last = 1, count = 0, garbage = 0,
  }, F)
  self:_load()
  return self
end

function F:seg_path(n) return self.dir .. "/" .. self.instance .. "." .. n .. ".q" end
function F:pos_path(slot) return self.dir .. "/" .. self.instance .. ".pos." .. slot end
function F:lease_path() return self.dir .. "/" .. self.instance .. ".lease" end

function F:_read_pos()
  local best
  for _, slot in ipairs({ "a", "b" }) do
    local text = self.fs.read_at(self:pos_path(slot), 0, 128) or ""
    local gen, seg, off, sum = text:match("^(%d+) (%d+) (%d+) (%x+)\n")
    if gen and fnv_hex(gen .. " " .. seg .. " " .. off) == sum then
      gen, seg, off = tonumber(gen), tonumber(seg), tonumber(off)
      if not best or gen > best.gen then best = { gen = gen, seg = seg, off = off } end
    end
  end
  return best
end

-- Finds the segments on disk, the acknowledged position, and counts the
-- readable records after it (which also measures any unreadable bytes).
function F:_load()
  local segs = {}
  local prefix = self.instance .. "."
  for _, name in ipairs(self.fs.list(self.dir) or {}) do
    local n = name:sub(1, #prefix) == prefix and name:sub(#prefix + 1):match("^(%d+)%.q$")
    if n then segs[#segs + 1] = tonumber(n) end
  end
  table.sort(segs)
  if #segs == 0 then return end
  self.first, self.last = segs[1], segs[#segs]
  local pos = self:_read_pos()
  if pos then
    self.gen = pos.gen
    if pos.seg >= self.first and pos.seg <= self.last then self.first, self.off = pos.seg, pos.off end
  end
  for _, n in ipairs(segs) do if n < self.first then self.fs.remove(self:seg_path(n)) end end
  local n = 0
  self:scan(function() n = n + 1 end)
  self.count = n
end

--- Calls each(line, seg, next_offset) for every readable record after the
--- acknowledged position, up to `limit` records. Returns how many it saw.
function F:scan(each, limit)
  local seen, garbage = 0, 0
  for seg = self.first, self.last do
    local path = self:seg_path(seg)
    local size = self.fs.size(path) or 0
    local at = seg == self.first and self.off or 0
    local want = self.chunk
    while at < size and not (limit and seen >= limit) do
      local data = self.fs.read_at(path, at, math.min(want, size - at)) or ""
      if #data == 0 then break end
      local eof, i = at + #data >= size, 1
      while i <= #data and not (limit and seen >= limit) do
        local line, nxt = parse(data, i)
        if line then
          seen, i = seen + 1, nxt
          each(line, seg, at + nxt - 1)
        elseif nxt == "short" and not eof then
          break -- the frame goes on past this chunk: read again from it
        else
          -- unreadable (or torn at the end): resynchronise at the next frame start
          local s = data:find("\30", i + 1, true)
          local skip = (s or #data + 1) - i
          garbage, i = garbage + skip, i + skip
        end
      end
      if i == 1 then want = want * 2 else want, at = self.chunk, at + i - 1 end
    end
  end
  if garbage > self.garbage then
    self.log(string.format("spill %s: %d unreadable bytes skipped", self.instance, garbage))
  end
  self.garbage = math.max(self.garbage, garbage)
  return seen
end

--- Up to n records after the acknowledged position: { line, seg, off } each,
--- where seg/off is the position just after the record.
function F:read(n)
  local recs = {}
  self:scan(function(line, seg, off) recs[#recs + 1] = { line = line, seg = seg, off = off } end, n)
  return recs
end

--- True when bytes remain after the acknowledged position.
function F:pending()
  if self.last > self.first then return true end
  return (self.fs.size(self:seg_path(self.first)) or 0) > self.off
end

--- Bytes after the acknowledged position (what the disk limit counts).
function F:pending_bytes()
  local b = 0
  for seg = self.first, self.last do b = b + (self.fs.size(self:seg_path(seg)) or 0) end
  return b - self.off
end

--- Appends framed records. On failure the segment may hold a partial frame:
--- the next append starts a new segment, so the partial frame sits at the end
--- of one and readers skip it.
function F:append(lines)
  local parts = {}
  for i, line in ipairs(lines) do parts[i] = M.frame(line) end
  local data = table.concat(parts)
  local path = self:seg_path(self.last)
  local size = self.fs.size(path) or 0
  if size > 0 and size + #data > self.seg_bytes then
    self.last = self.last + 1
    path = self:seg_path(self.last)
  end
  local ok, err = self.fs.append(path, data)
  if not ok then
    if (self.fs.size(path) or 0) > 0 then self.last = self.last + 1 end
    return nil, err
  end
  self.count = self.count + #lines
  return true
end

function F:_write_pos()
  self.gen = self.gen + 1
  local body = self.gen .. " " .. self.first .. " " .. self.off
  return self.fs.write(self:pos_path(self.gen % 2 == 0 and "a" or "b"), body .. " " .. fnv_hex(body) .. "\n")
end

--- Everything up to (seg, off) is acknowledged; n records left the log.
function F:ack(seg, off, n)
  self.count = math.max(0, self.count - (n or 0))
  for s = self.first, seg - 1 do self.fs.remove(self:seg_path(s)) end
  self.first, self.off = seg, off
  if self.off >= (self.fs.size(self:seg_path(seg)) or 0) and seg < self.last then
    self.fs.remove(self:seg_path(seg))
    self.first, self.off = seg + 1, 0
  end
  if not self:pending() then return self:clear() end
  self:_write_pos()
end

--- Removes every file of this log except the lease (nothing left to send).
function F:clear()
  for s = self.first, self.last do self.fs.remove(self:seg_path(s)) end
  self.fs.remove(self:pos_path("a"))
  self.fs.remove(self:pos_path("b"))
  self.first, self.last, self.off, self.count, self.gen = 1, 1, 0, 0, 0
end

--- Marks this log as owned by `owner` now (written every few seconds).
function F:touch(owner)
  return self.fs.write(self:lease_path(), tostring(owner) .. "\n")
end

function F:release() self.fs.remove(self:lease_path()) end

--- Instances with segments in dir, other than `except`, whose lease is older
--- than stale_s seconds or absent. `now_s` is the file system's clock (epoch s).
function M.orphans(fs, dir, except, now_s, stale_s)
  local found, out = {}, {}
  for _, name in ipairs(fs.list(dir) or {}) do
    local inst = name:match("^(.-)%.%d+%.q$")
    if inst and inst ~= except and not found[inst] then
      found[inst] = true
      local t = fs.modtime(dir .. "/" .. inst .. ".lease")
      if not t or now_s - t > stale_s then out[#out + 1] = inst end
    end
  end
  table.sort(out)
  return out
end

return M

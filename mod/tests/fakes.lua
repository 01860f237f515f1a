-- Test doubles for the unit tests: love.thread channels, love.timer, a clock,
-- an in-memory file system with the bmcp.fs interface, love.filesystem over a
-- temp directory, and a scripted HTTP transport that records every request.
-- They must never touch the network or the real save folder.

package.path = "mod/BalatroMCP/?.lua;mod/tests/?.lua;" .. package.path

local M = {}

function M.channel()
  local q, h, t = {}, 1, 0
  local c = { pushed = 0 }
  function c:push(v) t = t + 1; q[t] = v; self.pushed = self.pushed + 1 end
  function c:pop()
    if h > t then return nil end
    local v = q[h]; q[h] = nil; h = h + 1
    return v
  end
  function c:demand() return self:pop() end
  function c:peek() return q[h] end
  function c:getCount() return t - h + 1 end
  function c:clear() q, h, t = {}, 1, 0 end
  return c
end

--- A manual clock in ms; advance(ms) moves it.
function M.clock(start)
  local now = start or 1000
  local c = {}
  function c.now() return now end
  function c.advance(ms) now = now + ms end
  return c
end

--- In-memory files with the bmcp.fs interface. `fs.full_after` (bytes) makes
--- appends beyond that total fail after writing what fits, like a full disk;
--- fs.clock_s is the file clock (modtimes), advanced by the tests.
function M.memfs()
  local files, mtimes = {}, {}
  local fs = { files = files, mtimes = mtimes, clock_s = 1000 }
  local function used()
    local n = 0
    for _, d in pairs(files) do n = n + #d end
    return n
  end
  function fs.read_at(path, off, n)
    local d = files[path]
    if not d then return nil end
    return d:sub(off + 1, off + n)
  end
  function fs.append(path, data)
    mtimes[path] = fs.clock_s
    if fs.full_after and used() + #data > fs.full_after then
      local fit = math.max(0, fs.full_after - used())
      files[path] = (files[path] or "") .. data:sub(1, fit)
      return nil, "No space left on device"
    end
    files[path] = (files[path] or "") .. data
    return true
  end
  function fs.write(path, data)
    if fs.full_after and used() - #(files[path] or "") + #data > fs.full_after then return nil, "No space left on device" end
    files[path] = data; mtimes[path] = fs.clock_s; return true
  end
  function fs.remove(path) files[path] = nil; mtimes[path] = nil end
  function fs.size(path) return files[path] and #files[path] or nil end
  function fs.mkdir() end
  function fs.list(dir)
    local names = {}
    for path in pairs(files) do
      local name = path:sub(1, #dir + 1) == dir .. "/" and path:sub(#dir + 2)
      if name and not name:find("/") then names[#names + 1] = name end
    end
    table.sort(names)
    return names
  end
  function fs.modtime(path) return files[path] and mtimes[path] or nil end
  function fs.now() return fs.clock_s end
  return fs
end

--- A transport answering from `script` (a function(req, n) -> res, or a list of
--- results used in turn, the last one repeating). Records requests.
function M.transport(script)
  local t = { requests = {} }
  setmetatable(t, { __call = function(self, req)
    self.requests[#self.requests + 1] = req
    local n = #self.requests
    if type(script) == "function" then return script(req, n) end
    return script[math.min(n, #script)]
  end })
  return t
end

function M.ok(accepted) return { status = 200, body = '{"status":"ok","accepted":' .. (accepted or 0) .. ',"duplicates":0,"rejected":[]}', headers = {} } end
function M.down() return { err = "connection refused" } end

--- Events a batch request carried, as ids, in order.
function M.batch_ids(req)
  local ids = {}
  for id in req.body:gmatch('{"event_id":"(.-)"') do ids[#ids + 1] = id end
  return ids
end

--- Default config for tests, with small timings.
function M.config(over)
  local settings = require("bmcp.settings")
  local c = settings.resolve(dofile("mod/BalatroMCP/config.lua"), {
    event_bus_url = "http://test/api/v1/events", backoff_base_ms = 10, backoff_max_ms = 100,
    backoff_jitter = 0, breaker_reset_ms = 500, connection_test = false, claim_ms = 0,
  })
  for k, v in pairs(over or {}) do c[k] = v end
  return c
end

--- A sender wired to fakes. Returns sender, inbox channel, transport, clock, fs.
function M.sender(opts)
  opts = opts or {}
  local sender = require("bmcp.sender")
  local clock = opts.clock or M.clock()
  local inbox = opts.inbox or M.channel()
  local transport = opts.transport or M.transport({ M.ok() })
  local fs = opts.fs or M.memfs()
  local logs = {}
  local s = sender.new({
    config = M.config(opts.config), transport = transport, clock = clock.now,
    random = function() return 0.5 end, fs = fs, spill_dir = "spill",
    log = function(m) logs[#logs + 1] = m end, inbox = inbox, instance = opts.instance or "t",
    epoch_ms = function() return 1795531353000 end,
  })
  s.logs = logs
  return s, inbox, transport, clock, fs
end

--- An event builder + pushes n events into a channel; returns their ids.
function M.emit(inbox, n, builder, event_type)
  builder = builder or require("bmcp.events").new({ session_id = "s", epoch_ms = function() return 1 end })
  local ids = {}
  for i = 1, n do
    local line, id = builder:build(event_type or "GAME_STATE", nil, { money = i })
    inbox:push(line)
    ids[#ids + 1] = id
  end
  return ids, builder
end

--- Steps the sender until pred() or `limit` steps, advancing the clock by what
--- the sender asks to wait.
function M.run(s, clock, pred, limit)
  for _ = 1, limit or 10000 do
    if pred() then return true end
    local wait = s:step()
    clock.advance(wait and math.max(wait, 1) or 1)
  end
  return pred()
end

return M

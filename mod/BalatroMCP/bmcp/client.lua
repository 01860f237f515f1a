-- The game thread's side of the mod: build an event and hand it over.
--
-- Owns: turning a hook's observation into one encoded event line (through the
-- event builder) and pushing it onto the worker's channel, plus the heartbeat
-- timer. This is all the game thread pays per event: one encode and one push.
-- The push may refuse an event (the worker is gone, or its channel is full):
-- the event is then counted as dropped, and the first drop is logged once.
-- It must never do network or file I/O, never block, never raise into a game
-- function (an encoding failure becomes an ERROR event), and never drop an
-- event the push accepted.

local events = require("bmcp.events")

local M = {}

local C = {}
C.__index = C

--- opts: push(line) -> false when the event could not be handed over, builder
--- (bmcp.events builder) or builder options, heartbeat_interval_ms, mod_version, log(msg).
function M.new(opts)
  local self = setmetatable({
    push = opts.push,
    builder = opts.builder or events.new(opts.builder_opts),
    heartbeat_ms = opts.heartbeat_interval_ms or 5000,
    version = opts.mod_version or "2.0.0",
    log = opts.log or function() end,
    started_ms = nil, last_heartbeat_ms = nil,
    emitted = 0, encode_errors = 0, dropped = 0,
  }, C)
  return self
end

function C:session_id() return self.builder.session_id end

--- Emits one event. Returns its id and sequence, or nil when it could not be
--- encoded (then an ERROR event describing the failure is emitted instead).
function C:emit(event_type, subtype, payload, fields)
  local ok, line, id, seq = pcall(self.builder.build, self.builder, event_type, subtype, payload, fields)
  if not ok then
    self.encode_errors = self.encode_errors + 1
    self.log("could not encode " .. tostring(event_type) .. ": " .. tostring(line))
    if event_type ~= "ERROR" then
      self:emit("ERROR", nil, { message = "BalatroMCP could not encode a " .. tostring(event_type)
        .. " event: " .. tostring(line) })
    end
    return nil
  end
  self.emitted = self.emitted + 1
  if self.push(line) == false then
    self.dropped = self.dropped + 1
    if not self.drop_logged then
      self.drop_logged = true
      self.log("the network worker cannot take events (" .. tostring(self.drop_reason or "channel full")
        .. "): from " .. id .. " on, events are counted and dropped")
    end
    return nil
  end
  return id, seq, line
end

--- True when a heartbeat is due at now_ms (the first frame, then every interval).
function C:heartbeat_due(now_ms)
  return not self.last_heartbeat_ms or now_ms - self.last_heartbeat_ms >= self.heartbeat_ms
end

--- Sends a heartbeat now.
function C:heartbeat(now_ms, extra)
  self.started_ms = self.started_ms or now_ms
  self.last_heartbeat_ms = now_ms
  local payload = { version = self.version, uptime = (now_ms - self.started_ms) / 1000, headless = false }
  if extra then for k, v in pairs(extra) do payload[k] = v end end
  return self:emit("HEARTBEAT", nil, payload)
end

--- Called once per frame with the game clock in ms: sends heartbeats when due.
function C:update(now_ms, extra)
  if self:heartbeat_due(now_ms) then return self:heartbeat(now_ms, extra) end
end

return M

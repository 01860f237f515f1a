-- The event builder: one game event in, one strict JSON line out.
--
-- Owns: the session id (one per game instance), the per-session sequence number
-- (1, 2, 3, ... in emission order) and the event id ("<session>-<sequence>"),
-- which is fixed when the event is built and so stays the same across every retry,
-- spill and replay, because the worker only ever resends these exact bytes.
-- The header keys come first in a fixed order (event_id, session_id, sequence) so
-- the worker can read them back with one anchored match instead of a decode.
-- It must never do I/O, never call math.random (Balatro seeds and reads the global
-- generator; touching it could change a run), and never re-encode an event.

local json = require("bmcp.json")

local M = {}

local enc, num = json.encode_string, json.encode_number
local format, floor = string.format, math.floor

-- FNV-1a over a string, as 8 hex digits: mixes the entropy sources below.
local function fnv_hex(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    -- h * 16777619 (2^24 + 403) kept exact: a plain multiply would exceed 2^53.
    h = bit.tobit(bit.lshift(h, 24) + h * 403)
  end
  return bit.tohex(h, 8)
end

--- A session id that is unique per game instance without touching math.random:
--- wall clock, process CPU clock, a fine monotonic clock and a fresh table address.
function M.new_session_id(fine_clock)
  local seed = table.concat({
    tostring(os.time()), tostring(os.clock()),
    tostring(fine_clock and fine_clock() or 0), tostring({}),
  }, "|")
  return "mcp-" .. bit.tohex(os.time(), 8) .. "-" .. fnv_hex(seed) .. fnv_hex(seed .. "#2")
end

--- Reads the header back out of a built event line: id, session, sequence.
function M.header(line)
  local id, session, seq = line:match('^{"event_id":"(.-)","session_id":"(.-)","sequence":(%d+)')
  return id, session, tonumber(seq)
end

local Builder = {}
Builder.__index = Builder

--- opts: session_id (optional), source ("BalatroMCP"), epoch_ms(), game_ms(),
--- epoch_anchor_ms (with game_ms: the epoch time of game time 0, so that one
--- clock read gives both timestamps; epoch_ms is then not called),
--- first_sequence (default 1).
function M.new(opts)
  opts = opts or {}
  local self = setmetatable({}, Builder)
  self.session_id = opts.session_id or M.new_session_id(opts.game_ms)
  self.source = opts.source or "BalatroMCP"
  self.epoch_ms = opts.epoch_ms or function() return os.time() * 1000 end
  self.game_ms = opts.game_ms
  self.anchor = opts.game_ms and opts.epoch_anchor_ms
  self.next_sequence = opts.first_sequence or 1
  -- the parts every event shares, encoded once
  local id_open = enc(self.session_id .. "-")
  self.open = '{"event_id":' .. id_open:sub(1, -2)
  self.prefix = '","session_id":' .. enc(self.session_id) .. ',"sequence":'
  self.source_part = ',"source":' .. enc(self.source) .. ',"version":1,"timestamp":'
  return self
end

--- Builds one event. Returns the JSON line, its event id and its sequence.
--- `payload` may be nil (some field events carry none); `fields` adds top-level
--- keys such as priority. Raises if the payload cannot be encoded; the caller
--- decides what to do (the sequence is not consumed then).
function Builder:build(event_type, subtype, payload, fields)
  local seq = self.next_sequence
  local id = self.session_id .. "-" .. seq
  local seq_text = format("%d", seq)
  local parts = {
    self.open, seq_text, self.prefix, seq_text, ',"type":', enc(event_type),
  }
  if subtype then parts[#parts + 1] = ',"subtype":' .. enc(subtype) end
  local ms = self.game_ms and self.game_ms()
  parts[#parts + 1] = self.source_part .. num(self.anchor and floor(self.anchor + ms) or self.epoch_ms())
  if ms then
    -- to the microsecond, which needs no round trip check
    parts[#parts + 1] = ',"game_time_ms":' .. (ms == ms and ms < 1e15 and ms > -1e15 and format("%.3f", ms) or num(ms))
  end
  if fields then
    for k, v in pairs(fields) do parts[#parts + 1] = "," .. enc(k) .. ":" .. json.encode(v) end
  end
  if payload ~= nil then parts[#parts + 1] = ',"payload":' .. json.encode(payload) end
  parts[#parts + 1] = "}"
  local line = table.concat(parts)
  self.next_sequence = seq + 1
  return line, id, seq
end

return M

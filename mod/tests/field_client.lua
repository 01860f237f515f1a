-- An emulation of the OLD field BalatroMCP mod's networking, for compat tests.
--
-- Owns: reproducing, from core/tests/fixtures/compat/DIALECT.md, how the field mod talks:
-- its hand-written JSON encoder with all its quirks (arbitrary key order, arrays
-- of scalars as strings, `{}` for empty tables, Lua tostring numbers including
-- bare inf/-inf/nan, escaping only \\ \" \n \r \t, keys not escaped), its URLs
-- (POST {url}, {url}/batch, {url}/health), its headers, the connection test on
-- first use, and "any 2xx is success". It exists so tests can show that jimbus
-- still serves old mods; it must never be used by the new mod, and it must never
-- "fix" a quirk: its output has to stay as wrong as the field mod's.
--
-- Usage: luajit mod/tests/field_client.lua URL   (URL = {event_bus_url})
-- Commands on stdin, one JSON reply per request on stdout:
--   fixtures DIR  posts every *.json file of DIR as is, to the path the field mod
--                 uses for it (batch_* -> {url}/batch, health_* -> {url}/health,
--                 others -> {url}) -> {"posted":NAME,"status":N,"body":...} each
--   emit          encodes a few events with the old encoder and posts them, one
--                 single and one batch -> {"posted":"emit-...","status":N,"body":...}
--   quit

local http = require("socket.http")
local ltn12 = require("ltn12")

local url = assert(arg[1], "usage: field_client.lua URL")

-- The field mod's encoder, quirks included (see the README's numbered list).
local function old_encode(v)
  local t = type(v)
  if t == "nil" then return "null" end
  if t == "boolean" then return tostring(v) end
  if t == "number" then return tostring(v) end -- 1.2345678901235e+17, inf, -inf, nan
  if t == "string" then
    return '"' .. v:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub("\n", "\\n"):gsub("\r", "\\r"):gsub("\t", "\\t") .. '"'
  end
  if #v > 0 then
    local parts = {}
    for i = 1, #v do
      local item = v[i]
      -- arrays of scalars become arrays of strings
      parts[i] = type(item) == "table" and old_encode(item) or '"' .. tostring(item) .. '"'
    end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local parts = {}
  for k, val in pairs(v) do
    parts[#parts + 1] = '"' .. tostring(k) .. '":' .. old_encode(val) -- keys not escaped
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function post(path_suffix, body)
  local chunks = {}
  local ok, status = http.request({
    url = url .. path_suffix, method = "POST",
    headers = { ["Content-Type"] = "application/json", ["User-Agent"] = "BalatroMCP/1.0",
                ["Content-Length"] = tostring(#body) },
    source = ltn12.source.string(body), sink = ltn12.sink.table(chunks),
  })
  return ok and status or nil, table.concat(chunks), not ok and tostring(status) or nil
end

local function reply(name, status, body, err)
  -- the field mod never reads the body; the test does, so it is passed on raw
  io.stdout:write('{"posted":', old_encode(name), ',"status":', tostring(status or 0),
    ',"error":', old_encode(err or ""), ',"body":', body ~= "" and body or "null", "}\n")
  io.stdout:flush()
end

local function path_for(name)
  if name:match("^batch_") then return "/batch" end
  if name:match("^health_") then return "/health" end
  return ""
end

local function fixtures(dir)
  local names = {}
  for name in io.popen('ls "' .. dir .. '"'):lines() do
    if name:match("%.json$") then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local f = assert(io.open(dir .. "/" .. name, "rb"))
    local body = f:read("*a")
    f:close()
    reply(name, post(path_for(name), body))
  end
end

local connected = false
local counter = 0

local function event(type_, payload, subtype)
  counter = counter + 1
  return { type = type_, subtype = subtype, source = "BalatroMCP", version = 1,
           event_id = string.format("field-%08d", counter), timestamp = os.time() * 1000, payload = payload }
end

local function emit()
  if not connected then
    connected = true
    reply("emit-connection_test", post("", old_encode({ type = "connection_test", timestamp = os.time() * 1000,
      source = "BalatroMCP", data = { message = "Testing event bus connection" } })))
  end
  reply("emit-single", post("", old_encode(event("SCORE_CHANGED",
    { old_chips = 1e308, new_chips = math.huge, old_mult = 0, new_mult = 0 / 0 }))))
  local events = {
    event("SCORING", { hand_type = "Straight", cards = { 3, 4, 5, 6, 7 } }, "HAND_EVAL_START"),
    event("GAME_STATE", { ante = 1, jokers = {}, hand = {}, money = -0.0 }),
    event("ERROR", { message = "tab\there \"quoted\" back\\slash bell\7" }),
    event("SCORING", { duration_ms = 1.5, final_chips = 120, final_mult = 4, triggers = 0 }, "HAND_EVAL_COMPLETE"),
  }
  reply("emit-batch", post("/batch", old_encode({ batch_id = "field-batch-1", events = events,
    source = "BalatroMCP", timestamp = os.time() * 1000 })))
  reply("emit-health", post("/health", "{}"))
end

for line in io.stdin:lines() do
  local cmd, argument = line:match("^%s*(%S+)%s*(.-)%s*$")
  if cmd == "quit" then break end
  if cmd == "fixtures" then fixtures(argument) end
  if cmd == "emit" then emit() end
end

-- Strict JSON for everything the mod sends.
--
-- Owns: turning Lua values into strict RFC 8259 JSON text the server's reader
-- accepts without any of the field mod's quirks, and decoding (delegated,
-- unmodified, to the vendored rxi/json.lua, see vendor/LICENSE-rxi-json.txt).
-- The encoder follows rxi/json.lua's structure (escape table, type dispatch,
-- circular-reference check) with these deliberate changes, each one because the
-- schema (proto/jimbot/events/v1/events.proto) or the game needs it:
--   * non-finite numbers become the strings "Infinity", "-Infinity", "NaN", which
--     is how canonical protobuf JSON writes doubles and what the server's number
--     fields read (rxi raises an error, which would crash a hook mid-cascade);
--   * numbers round-trip exactly (shortest of %.14g / %.17g that reads back equal);
--   * an empty table is `{}` (payloads must be objects) unless marked with
--     json.array(), which makes it `[]`; a table whose keys are exactly 1..n is an
--     array; sparse or mixed tables become objects with string keys instead of an
--     error, so no element is lost;
--   * invalid UTF-8 bytes become U+FFFD, so the output is always valid UTF-8.
-- It must never emit bare inf/nan tokens, never emit an unescaped control
-- character, never turn a list of scalars into strings, and never touch globals.

local rxi = require("bmcp.vendor.rxi_json")

local json = {}

local huge = math.huge
local floor = math.floor
local format = string.format
local byte, char, concat = string.byte, string.char, table.concat

local array_mt = { __jsontype = "array" }

--- Marks a table as a list, so that an empty one encodes as `[]`.
function json.array(t)
  return setmetatable(t or {}, array_mt)
end

--- The JSON null, for places where an explicit null must be written.
json.null = setmetatable({}, { __tostring = function() return "null" end })

local escape_char_map = {
  ["\\"] = "\\\\", ['"'] = '\\"', ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
  return escape_char_map[c] or format("\\u%04x", byte(c))
end

-- Length of the valid UTF-8 sequence starting at i, or nil (RFC 3629: no
-- overlongs, no surrogates, nothing above U+10FFFF).
local function utf8_len(s, i)
  local c = byte(s, i)
  if c < 0x80 then return 1 end
  local n, lo, hi
  if c >= 0xC2 and c <= 0xDF then n = 2
  elseif c >= 0xE0 and c <= 0xEF then n = 3
  elseif c >= 0xF0 and c <= 0xF4 then n = 4
  else return nil end
  lo, hi = 0x80, 0xBF
  if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
  elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
  local c2 = byte(s, i + 1)
  if not c2 or c2 < lo or c2 > hi then return nil end
  for k = 2, n - 1 do
    local ck = byte(s, i + k)
    if not ck or ck < 0x80 or ck > 0xBF then return nil end
  end
  return n
end

--- Replaces every byte that is not part of valid UTF-8 with U+FFFD.
function json.valid_utf8(s)
  if not s:find("[\128-\255]") then return s end
  local out, i, n, start = {}, 1, #s, 1
  while i <= n do
    local len = utf8_len(s, i)
    if len then
      i = i + len
    else
      out[#out + 1] = s:sub(start, i - 1)
      out[#out + 1] = "\239\191\189"
      i = i + 1
      start = i
    end
  end
  if start == 1 then return s end
  out[#out + 1] = s:sub(start)
  return concat(out)
end

-- Short strings repeat (keys, joker names, contexts): their encodings are
-- kept, in a table that starts over once it holds 4096 of them.
local string_cache, cached = {}, 0

local function encode_string(s)
  local hit = string_cache[s]
  if hit then return hit end
  local out
  if not s:find('[%z\1-\31\\"\127-\255]') then
    out = '"' .. s .. '"' -- plain ASCII, nothing to escape
  else
    out = '"' .. json.valid_utf8(s):gsub('[%z\1-\31\\"\127]', escape_char) .. '"'
  end
  if #s <= 64 then
    if cached >= 4096 then string_cache, cached = {}, 0 end
    string_cache[s], cached = out, cached + 1
  end
  return out
end
json.encode_string = encode_string

local function encode_number(v)
  if v ~= v then return '"NaN"' end
  if v == huge then return '"Infinity"' end
  if v == -huge then return '"-Infinity"' end
  if v == floor(v) and v > -1e15 and v < 1e15 then
    -- %d would print -0 as 0; keep the sign of zero (proto Struct keeps it).
    if v == 0 and 1 / v < 0 then return "-0" end
    return format("%d", v)
  end
  local s = format("%.14g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end
json.encode_number = encode_number

local encode

-- Decides how a table is written: "array" with its length, or "object".
local function table_shape(t)
  if getmetatable(t) == array_mt then
    local n = 0
    for k in pairs(t) do
      if type(k) == "number" and k > n and k == floor(k) then n = k end
    end
    return "array", n
  end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  if count == 0 then return "object" end
  if count == #t and t[count] ~= nil then
    -- #t == count with t[1..count] present means exactly the keys 1..count.
    for i = 1, count do if t[i] == nil then return "object" end end
    return "array", count
  end
  return "object"
end

local function encode_key(k)
  local tk = type(k)
  if tk == "string" then return encode_string(k) end
  if tk == "number" then
    local s = encode_number(k)
    if byte(s) == 34 then return s end -- already quoted (non-finite)
    return '"' .. s .. '"'
  end
  if tk == "boolean" then return '"' .. tostring(k) .. '"' end
  error("invalid table key type '" .. tk .. "'")
end

local function encode_table(t, stack)
  if t == json.null then return "null" end
  if stack[t] then error("circular reference") end
  stack[t] = true
  local res = {}
  local shape, n = table_shape(t)
  if shape == "array" then
    for i = 1, n do res[i] = encode(t[i], stack) end
    stack[t] = nil
    return "[" .. concat(res, ",") .. "]"
  end
  for k, v in pairs(t) do
    res[#res + 1] = encode_key(k) .. ":" .. encode(v, stack)
  end
  stack[t] = nil
  return "{" .. concat(res, ",") .. "}"
end

local encoders = {
  ["nil"] = function() return "null" end,
  ["table"] = encode_table,
  ["string"] = encode_string,
  ["number"] = encode_number,
  ["boolean"] = tostring,
}

encode = function(v, stack)
  local f = encoders[type(v)]
  if f then return f(v, stack) end
  error("unexpected type '" .. type(v) .. "'")
end

--- Encodes a value as strict JSON; raises on cycles and unsupported types.
function json.encode(v)
  return (encode(v, {}))
end

--- Decodes strict JSON (rxi/json.lua, unmodified).
function json.decode(s)
  return rxi.decode(s)
end

return json

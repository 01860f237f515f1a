-- The strict encoder: arrays, escaping, numbers, non-finite values, and a
-- randomized round trip through a strict parser (lua-cjson).
local fakes = require("fakes") -- sets package.path
local json = require("bmcp.json")
local cjson = require("cjson.safe").new()
cjson.decode_invalid_numbers(false) -- strict: no bare inf/nan, no hex
cjson.decode_max_depth(1000)

local function deep_equal(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if a ~= a then return b ~= b end
    return a == b and (a ~= 0 or 1 / a == 1 / b)
  end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

describe("json.encode", function()
  it("writes lists of scalars as real arrays, not strings", function()
    assert.equal('[3,4,5]', json.encode({ 3, 4, 5 }))
    assert.equal('[true,false]', json.encode({ true, false }))
    assert.equal('["a","b"]', json.encode({ "a", "b" }))
  end)

  it("writes empty tables as {} and marked empty lists as []", function()
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.array()))
    assert.equal('{"jokers":[]}', json.encode({ jokers = json.array() }))
  end)

  it("keeps sparse and mixed tables whole, as objects", function()
    local d = cjson.decode(json.encode({ 1, 2, nil, 4 }))
    assert.same({ ["1"] = 1, ["2"] = 2, ["4"] = 4 }, d)
    d = cjson.decode(json.encode({ "a", x = 1 }))
    assert.same({ ["1"] = "a", x = 1 }, d)
  end)

  it("encodes non-finite numbers as the schema's strings", function()
    assert.equal('"Infinity"', json.encode(math.huge))
    assert.equal('"-Infinity"', json.encode(-math.huge))
    assert.equal('"NaN"', json.encode(0 / 0))
    assert.equal('{"s":"Infinity"}', json.encode({ s = math.huge }))
  end)

  it("writes numbers that read back exactly", function()
    for _, v in ipairs({ 0.1, 1 / 3, 1e308, 5e-324, 123456789012345678, -17, 42, 1.2345678901234567e17, 2 ^ 53 + 2 }) do
      assert.equal(v, tonumber(json.encode(v)))
    end
    assert.equal("-0", json.encode(-0.0))
    assert.equal("42", json.encode(42))
  end)

  it("escapes every control character, quotes and backslashes in values and keys", function()
    local s = json.encode({ ['k"\\\1'] = 'a"b\\c\0\1\8\12\27\31\127\n\r\t' })
    assert.equal('{"k\\"\\\\\\u0001":"a\\"b\\\\c\\u0000\\u0001\\b\\f\\u001b\\u001f\\u007f\\n\\r\\t"}', s)
    assert.is_nil(s:find("[%z\1-\31]"))
  end)

  it("replaces invalid UTF-8 and keeps valid UTF-8 as is", function()
    assert.equal('"Jöker ☺ 小丑 😀"', json.encode("Jöker ☺ 小丑 😀"))
    assert.equal('"a\239\191\189b"', json.encode("a\255b"))
    assert.equal('"' .. ("\239\191\189"):rep(3) .. '"', json.encode("\237\160\128")) -- a surrogate
  end)

  it("refuses cycles and functions instead of writing garbage", function()
    local t = {}; t.self = t
    assert.has_error(function() json.encode(t) end)
    assert.has_error(function() json.encode({ f = print }) end)
  end)
end)

describe("json property: strict parsers read back what we wrote", function()
  local seed = tonumber(os.getenv("JSON_SEED") or "") or os.time()
  math.randomseed(seed)
  local r = math.random

  local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end

  local specials = { '"', "\\", "/", "\0", "\1", "\8", "\12", "\n", "\r", "\t", "\27", "\127" }
  local function rand_string()
    local parts = {}
    for i = 1, r(0, 12) do
      local k = r(1, 4)
      if k == 1 then parts[i] = specials[r(#specials)]
      elseif k == 2 then parts[i] = string.char(r(32, 126))
      elseif k == 3 then
        local cp = r(0x80, 0xFFFF)
        if cp >= 0xD800 and cp <= 0xDFFF then cp = 0x263A end
        parts[i] = utf8_char(cp)
      else parts[i] = utf8_char(r(0x10000, 0x10FFFF)) end
    end
    return table.concat(parts)
  end

  local function rand_number()
    local k = r(1, 6)
    if k == 1 then return r(-1e9, 1e9) end
    if k == 2 then return (r() - 0.5) * 10 ^ r(-300, 300) end
    if k == 3 then return -0.0 end
    if k == 4 then return r() end
    if k == 5 then return 2 ^ r(0, 1023) end
    return r(-100, 100) / 8
  end

  local function rand_value(depth)
    local k = r(1, depth > 3 and 4 or 6)
    if k == 1 then return rand_string() end
    if k == 2 then return rand_number() end
    if k == 3 then return r() < 0.5 end
    if k == 4 then return rand_number() end
    if k == 5 then
      local t = json.array()
      for i = 1, r(1, 5) do t[i] = rand_value(depth + 1) end
      return t
    end
    local t = {}
    for _ = 1, r(1, 5) do t[rand_string() .. "k"] = rand_value(depth + 1) end
    return t
  end

  it("for 2000 random documents (seed " .. seed .. ")", function()
    for i = 1, 2000 do
      local v = { value = rand_value(0) }
      local text = json.encode(v)
      local back, err = cjson.decode(text)
      assert(back, "cjson rejected document " .. i .. ": " .. tostring(err) .. "\n" .. text)
      assert(deep_equal(v, back), "round trip differs for document " .. i .. ": " .. text)
      -- and the vendored decoder agrees
      assert(deep_equal(v, json.decode(text)), "rxi decode differs for document " .. i)
    end
  end)

  it("maps non-finite values to strings a strict parser accepts", function()
    local back = cjson.decode(json.encode({ a = math.huge, b = -math.huge, c = 0 / 0, d = json.array({ math.huge }) }))
    assert.same({ a = "Infinity", b = "-Infinity", c = "NaN", d = { "Infinity" } }, back)
  end)
end)

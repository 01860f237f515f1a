-- The event builder: session ids, sequences, event ids, header layout.
local fakes = require("fakes")
local events = require("bmcp.events")
local cjson = require("cjson")

describe("events", function()
  it("numbers events 1, 2, 3 within a session and derives stable unique ids", function()
    local b = events.new({ session_id = "s1", epoch_ms = function() return 5 end })
    local seen = {}
    for i = 1, 100 do
      local line, id, seq = b:build("GAME_STATE", nil, { ante = 1 })
      assert.equal(i, seq)
      assert.equal("s1-" .. i, id)
      assert.is_nil(seen[id]); seen[id] = true
      local e = cjson.decode(line)
      assert.equal(id, e.event_id); assert.equal("s1", e.session_id); assert.equal(i, e.sequence)
      assert.equal("BalatroMCP", e.source); assert.equal(1, e.version)
    end
  end)

  it("keeps one session id per builder and makes different ones per game instance", function()
    local a, b = events.new(), events.new()
    assert.not_equal(a.session_id, b.session_id)
    assert.truthy(a.session_id:match("^mcp%-%x+%-%x+$"))
    local l1 = a:build("HEARTBEAT"); local l2 = a:build("HEARTBEAT")
    assert.equal(cjson.decode(l1).session_id, cjson.decode(l2).session_id)
  end)

  it("puts the header first so the worker can read it without decoding", function()
    local b = events.new({ session_id = "s-x", epoch_ms = function() return 1 end, game_ms = function() return 2.5 end })
    local line = b:build("SCORING", "JOKER_TRIGGER", { trigger_index = 1 }, { priority = "low" })
    local id, session, seq = events.header(line)
    assert.same({ "s-x-1", "s-x", 1 }, { id, session, seq })
    local e = cjson.decode(line)
    assert.equal("JOKER_TRIGGER", e.subtype); assert.equal("low", e.priority); assert.equal(2.5, e.game_time_ms)
  end)

  it("does not consume a sequence number when the payload cannot be encoded", function()
    local b = events.new({ session_id = "s" })
    assert.has_error(function() b:build("X", nil, { f = print }) end)
    local _, _, seq = b:build("X")
    assert.equal(1, seq)
  end)

  it("never touches math.random (the game's RNG)", function()
    local orig = math.random
    math.random = function() error("math.random used") end
    local ok, err = pcall(function() events.new():build("HEARTBEAT") end)
    math.random = orig
    assert(ok, err)
  end)
end)

describe("client and scoring", function()
  local client_mod, scoring_mod = require("bmcp.client"), require("bmcp.scoring")

  it("brackets every scored hand with START and COMPLETE around each trigger", function()
    local ch = fakes.channel()
    local c = client_mod.new({ push = function(l) ch:push(l) end, builder_opts = { session_id = "s" } })
    local sc = scoring_mod.new(c, function() return 0 end)
    sc:hand_start("Flush", { "2", "3" })
    for i = 1, 5 do sc:trigger({ name = "J" .. i }, { mult = i }) end
    sc:hand_start("Pair", {}) -- the previous hand never completed: it is closed first
    sc:hand_complete(10, 2)
    local subtypes = {}
    while ch:getCount() > 0 do subtypes[#subtypes + 1] = cjson.decode(ch:pop()).subtype end
    assert.same({ "HAND_EVAL_START", "JOKER_TRIGGER", "JOKER_TRIGGER", "JOKER_TRIGGER", "JOKER_TRIGGER",
      "JOKER_TRIGGER", "HAND_EVAL_COMPLETE", "HAND_EVAL_START", "HAND_EVAL_COMPLETE" }, subtypes)
  end)

  it("turns an unencodable payload into an ERROR event instead of raising", function()
    local ch = fakes.channel()
    local c = client_mod.new({ push = function(l) ch:push(l) end, builder_opts = { session_id = "s" } })
    assert.is_nil(c:emit("GAME_STATE", nil, { bad = print }))
    local e = cjson.decode(ch:pop())
    assert.equal("ERROR", e.type); assert.equal(1, e.sequence)
  end)

  it("sends heartbeats on the configured interval", function()
    local ch = fakes.channel()
    local c = client_mod.new({ push = function(l) ch:push(l) end, heartbeat_interval_ms = 1000, builder_opts = { session_id = "s" } })
    for t = 0, 3500, 100 do c:update(t) end
    assert.equal(4, ch:getCount()) -- at 0, 1000, 2000, 3000
  end)
end)

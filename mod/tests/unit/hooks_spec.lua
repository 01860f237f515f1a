-- hooks.lua against a minimal game table under LuaJIT (the full game layout
-- runs under real LÖVE in mod/tests/game): each wrapper calls the original once
-- and returns all its results, scoring is bracketed, a copied effect is one
-- trigger with its parent, queued money changes get the right old value, a
-- hook error never reaches the game, and a refused quit does not stop the worker.
local cjson = require("cjson")

local function setup()
  local sent, logs, quits = {}, {}, 0
  local client = require("bmcp.client").new({ builder_opts = { session_id = "h", epoch_ms = function() return 1 end },
    push = function(line) sent[#sent + 1] = cjson.decode(line); return true end })
  local scoring = require("bmcp.scoring").new(client, function() return 0 end)
  local queue = {}
  local Card = {}
  Card.__index = Card
  function Card:calculate_joker(ctx) return self.calc and self.calc(self, ctx) end
  local function joker(name, calc)
    return setmetatable({ ability = { name = name, set = "Joker" }, config = { center = { key = "j_" .. name } }, calc = calc }, Card)
  end
  _G.Card = Card
  _G.G = { STATES = { SELECTING_HAND = 1, SHOP = 5 }, STATE = 1, FUNCS = {}, jokers = { cards = {} },
           play = { cards = {} }, hand = { cards = {}, highlighted = {} },
           GAME = { dollars = 4, round = 1, chips = 0, round_resets = { ante = 1 }, current_round = {} } }
  _G.love = { update = function() return "frame", 2 end, quit = function() return true end }
  function _G.ease_dollars(mod) queue[#queue + 1] = function() G.GAME.dollars = G.GAME.dollars + mod end end
  function _G.end_round() end
  local cascade = joker("Cavendish", function(_, ctx) if ctx.joker_main then return { Xmult_mod = 3 } end end)
  local blueprint = joker("Blueprint", function(self, ctx) return cascade:calculate_joker(ctx) end)
  G.jokers.cards = { blueprint, cascade }
  function G.FUNCS.evaluate_play()
    for _, j in ipairs(G.jokers.cards) do j:calculate_joker({ joker_main = true }) end
    _G.hand_chips, _G.mult = 10, 9
    return "scored", 1, nil, 3
  end
  G.FUNCS.play_cards_from_highlighted = function() end
  G.FUNCS.discard_cards_from_highlighted = function() end
  G.FUNCS.buy_from_shop = function() return false end
  local missing = assert(loadfile("mod/BalatroMCP/hooks.lua"))().install({
    client = client, scoring = scoring, log = function(m) logs[#logs + 1] = m end, clock = function() return 0 end,
    queue_idle = function() return #queue == 0 end, on_quit = function() quits = quits + 1 end,
  })
  return { sent = sent, logs = logs, missing = missing, queue = queue, quits = function() return quits end }
end

local function of(sent, t) local out = {} for _, e in ipairs(sent) do if e.type == t then out[#out + 1] = e end end return out end

describe("hooks", function()
  after_each(function() _G.G, _G.Card, _G.love, _G.ease_dollars, _G.end_round = nil, nil, nil, nil, nil end)

  it("finds every function it hooks, and wrappers return every result", function()
    local h = setup()
    assert.same({}, h.missing)
    assert.same({ "scored", 1, nil, 3 }, { G.FUNCS.evaluate_play() })
    assert.equal(4, select("#", G.FUNCS.evaluate_play()))
    assert.same({ "frame", 2 }, { love.update(0) })
  end)

  it("brackets a scored hand and sends a copied effect once, with its parent", function()
    local h = setup()
    G.FUNCS.evaluate_play()
    local subtypes, triggers = {}, {}
    for _, e in ipairs(of(h.sent, "SCORING")) do
      subtypes[#subtypes + 1] = e.subtype
      if e.subtype == "JOKER_TRIGGER" then triggers[#triggers + 1] = e.payload end
    end
    assert.same({ "HAND_EVAL_START", "JOKER_TRIGGER", "JOKER_TRIGGER", "HAND_EVAL_COMPLETE" }, subtypes)
    assert.same({ "Cavendish", 2, "Blueprint", 3, "joker_main" },
      { triggers[1].joker.name, triggers[1].joker.position, triggers[1].parent, triggers[1].x_mult, triggers[1].context })
    assert.same({ "Cavendish", 2 }, { triggers[2].joker.name, triggers[2].joker.position })
    assert.is_nil(triggers[2].parent)
    assert.equal(1, #of(h.sent, "SCORE_CHANGED"))
  end)

  it("gives queued money changes their true old values", function()
    local h = setup()
    ease_dollars(5); ease_dollars(3)
    for _, f in ipairs(h.queue) do f() end
    for i = #h.queue, 1, -1 do h.queue[i] = nil end
    love.update(0)
    ease_dollars(-2)
    local got = {}
    for _, e in ipairs(of(h.sent, "MONEY_CHANGED")) do got[#got + 1] = { e.payload.old_value, e.payload.new_value } end
    assert.same({ { 4, 9 }, { 9, 12 }, { 12, 10 } }, got)
  end)

  it("names phases and never lets an observation error reach the game", function()
    local h = setup()
    love.update(0)
    G.STATE = 5
    G.jokers.cards[3] = setmetatable({ ability = { set = "Joker" } }, { __index = function() error("odd card") end })
    assert.has_no.errors(function() love.update(0) end)
    local phases = of(h.sent, "PHASE_CHANGED")
    assert.equal("SHOP", phases[#phases].payload.new_phase)
    assert.equal("SELECTING_HAND", phases[#phases].payload.old_phase)
    assert.truthy(table.concat(h.logs, "\n"):match("hook error"))
  end)

  it("stops the worker only when the game really quits", function()
    local h = setup()
    assert.is_true(love.quit()) -- the game refused
    assert.equal(0, h.quits())
  end)
end)

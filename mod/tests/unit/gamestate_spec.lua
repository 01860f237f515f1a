-- Game tables to payloads: contexts, effects, GAME_STATE, the money ledger; and
-- the settings the field mod shares (retry_delay_ms, heartbeat interval).
local gs = require("bmcp.gamestate")
local cjson = require("cjson")
local json = require("bmcp.json")

describe("gamestate", function()
  it("names a calculate_joker context by the flag it sets", function()
    local jokers = {}
    assert.equal("repetition", gs.context_name({ repetition = true, cardarea = {}, other_card = {} }, jokers))
    assert.equal("individual", gs.context_name({ individual = true, other_card = {} }, jokers))
    assert.equal("other_joker", gs.context_name({ other_joker = {} }, jokers))
    assert.equal("joker_main", gs.context_name({ joker_main = true }, jokers))
    assert.equal("joker_main", gs.context_name({ cardarea = jokers }, jokers)) -- older versions: no flag
    assert.equal("before", gs.context_name(setmetatable({}, { __index = { before = true } }), jokers))
    assert.equal("after", gs.context_name({ after = true }, jokers))
    assert.equal("other", gs.context_name(nil, jokers))
  end)

  it("reads the effect tables jokers return", function()
    assert.same({ chips = 30 }, gs.effect({ chips = 30, card = {} }))
    assert.same({ mult = 4, message = "+4" }, gs.effect({ mult_mod = 4, message = "+4" }))
    assert.same({ x_mult = 3 }, gs.effect({ Xmult_mod = 3 }))
    assert.same({ x_mult = 1.5 }, gs.effect({ x_mult = 1.5 }))
    assert.same({ money = 4 }, gs.effect({ dollars = 4 }))
    assert.same({ repetitions = 1, message = "Again!" }, gs.effect({ repetitions = 1, message = "Again!" }))
  end)

  it("gives MONEY_CHANGED the value the game will have while eases are queued", function()
    local ledger = gs.money_ledger(10000)
    -- three ease_dollars queued before any applies: dollars stays 4 meanwhile
    assert.same({ 4, 9 }, { ledger.ease(4, 5, 0) })
    assert.same({ 9, 12 }, { ledger.ease(4, 3, 1) })
    ledger.settle(9, 2) -- one applied, two to go
    assert.same({ 12, 10 }, { ledger.ease(9, -2, 3) })
    ledger.settle(10, 4) -- all applied: back to reading the game
    assert.same({ 10, 11 }, { ledger.ease(10, 1, 5) })
    ledger.settle(11, 6)
    -- dollars changed another way and the expected value never came: it expires
    ledger.ease(50, 1, 10)
    ledger.settle(7, 20000)
    assert.same({ 7, 8 }, { ledger.ease(7, 1, 20001) })
  end)

  it("builds a GAME_STATE with the field mod's contents, JSON-safe", function()
    local function card(name, set, extra)
      return setmetatable({ ability = { name = name, set = set, extra = extra, mult = 4 },
        config = { center = { key = "j_" .. name:lower(), name = name, rarity = 2 } }, cost = 6, sell_cost = 3,
        base = { value = "Ace", suit = "Spades" } }, {})
    end
    local area = function(cards) return setmetatable({ cards = cards }, {}) end
    local G = {
      STATES = { SHOP = 5 }, STATE = 5,
      GAME = { dollars = 12, round = 2, chips = 300, round_resets = { ante = 1 },
               current_round = { hands_left = 3, discards_left = 2, reroll_cost = 5 },
               pseudorandom = { seed = "ABC" }, blind = setmetatable({ name = "Big Blind", chips = 450 }, {}) },
      jokers = area({ card("Joker", "Joker", { f = print, n = 2 }) }), hand = area({ card("A", "Default") }),
      deck = area({ card("B", "Default"), card("C", "Default") }), playing_cards = { 1, 2, 3 },
      consumeables = area({ card("Pluto", "Planet") }), shop_jokers = area({ card("Hack", "Joker") }),
    }
    local p = cjson.decode(json.encode(gs.game_state(G, { mult = 7, hand_chips = 40 })))
    assert.equal("SHOP", p.game_state)
    assert.equal(12, p.money); assert.equal(7, p.mult); assert.equal("ABC", p.seed)
    assert.same({ cards_remaining = 2, size = 3 }, p.deck)
    assert.equal("Pluto", p.consumables[1].name)
    assert.equal("Hack", p.shop.jokers[1].name); assert.equal(5, p.shop.reroll_cost)
    assert.equal("Joker", p.jokers[1].name); assert.equal(2, p.jokers[1].rarity)
    assert.equal(4, p.jokers[1].ability.mult); assert.same({ n = 2 }, p.jokers[1].ability.extra)
    assert.same({ name = "Big Blind", chips = 450 }, p.blind)
  end)
end)

describe("settings", function()
  local settings = require("bmcp.settings")
  local defaults = dofile("mod/BalatroMCP/config.lua")

  it("uses retry_delay_ms (the field mod's key) as the backoff base", function()
    assert.equal(1000, settings.resolve(defaults, {}).backoff_base_ms)
    assert.equal(250, settings.resolve(defaults, { retry_delay_ms = 250 }).backoff_base_ms)
    assert.equal(40, settings.resolve(defaults, { retry_delay_ms = 250, backoff_base_ms = 40 }).backoff_base_ms)
  end)

  it("sends heartbeats every 5 s by default, as the field mod", function()
    assert.equal(5000, settings.resolve(defaults, {}).heartbeat_interval_ms)
    local pushed = 0
    local c = require("bmcp.client").new({ push = function() pushed = pushed + 1 end, builder_opts = { session_id = "s" } })
    for t = 0, 12000, 100 do c:update(t) end
    assert.equal(3, pushed) -- at 0, 5000, 10000
  end)
end)

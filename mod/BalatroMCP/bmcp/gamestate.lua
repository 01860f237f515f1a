-- Reading Balatro's tables into plain event payloads.
--
-- Owns: how the game's objects (G, G.GAME, CardAreas, Cards, the effect tables
-- calculate_joker returns, calculate_joker contexts) become JSON-safe payload
-- tables: GAME_STATE (what the field mod sent: phase, ante, round, money, chips,
-- mult, hands, discards, blind, jokers with their properties, hand, deck,
-- consumables, shop, seed), joker and card descriptions, phase names, the
-- effect and context of a joker trigger, and the money ledger that gives
-- MONEY_CHANGED its old value while several ease_dollars are still queued.
-- Every function takes the game's tables as arguments (G is passed in), so it
-- runs under plain LuaJIT in the tests. It must never write to a game table,
-- never call a game function, and never raise on a value of an unexpected type
-- (mods put anything in these tables): unknown shapes are skipped.

local json = require("bmcp.json")

local M = {}

local function num(v)
  if type(v) == "number" then return v end
  if type(v) == "table" then -- big-number mods (Talisman) keep numbers as tables
    local ok, n = pcall(tonumber, v)
    if ok and type(n) == "number" then return n end
  end
  return nil
end
M.num = num

local function str(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  return nil
end

--- A JSON-safe copy of a value: numbers, strings, booleans and plain tables of
--- them, `depth` levels deep; tables with a metatable (game objects) are left out.
function M.plain(v, depth)
  local t = type(v)
  if t == "number" or t == "string" or t == "boolean" then return v end
  if t ~= "table" or getmetatable(v) ~= nil or (depth or 2) <= 0 then return nil end
  local out, n = {}, 0
  for k, x in pairs(v) do
    local tk = type(k)
    if tk == "string" or tk == "number" then
      local c = M.plain(x, (depth or 2) - 1)
      if c ~= nil then out[k] = c; n = n + 1 end
    end
    if n >= 64 then break end
  end
  return out
end

--- The name of a state number in G.STATES ("SELECTING_HAND"), or its text.
function M.phase_name(states, state)
  if state == nil then return "" end
  for name, value in pairs(states or {}) do
    if value == state then return name end
  end
  return tostring(state)
end

local function center_of(card)
  local config = type(card) == "table" and card.config
  return type(config) == "table" and type(config.center) == "table" and config.center or {}
end

--- A joker's description with its properties (the `joker properties` of GAME_STATE).
function M.joker(card, position, with_properties)
  local center, ability = center_of(card), type(card.ability) == "table" and card.ability or {}
  local j = { name = str(ability.name) or str(center.name) or "?", id = str(center.key) or "", position = position or 0 }
  if not with_properties then return j end
  j.rarity = num(center.rarity) or str(center.rarity)
  j.cost, j.sell_cost = num(card.cost), num(card.sell_cost)
  j.edition = type(card.edition) == "table" and (str(card.edition.type) or str(card.edition.key)) or nil
  j.debuffed = card.debuff and true or nil
  j.eternal, j.perishable, j.rental = ability.eternal or nil, ability.perishable or nil, ability.rental or nil
  j.ability = {
    mult = num(ability.mult), x_mult = num(ability.x_mult), t_mult = num(ability.t_mult),
    t_chips = num(ability.t_chips), h_size = num(ability.h_size), d_size = num(ability.d_size),
    extra = M.plain(ability.extra, 2), extra_value = num(ability.extra_value),
  }
  return j
end

--- A playing card: rank, suit, enhancements (the schema's Card) plus seal and edition.
function M.card(card)
  local base = type(card.base) == "table" and card.base or {}
  local ability = type(card.ability) == "table" and card.ability or {}
  local enh = json.array()
  if ability.set == "Enhanced" and str(ability.name) then enh[1] = ability.name end
  return { rank = str(base.value) or str(base.id) or "", suit = str(base.suit) or "", enhancements = enh,
           seal = str(card.seal),
           edition = type(card.edition) == "table" and (str(card.edition.type) or str(card.edition.key)) or nil }
end

local function cards_of(area)
  return type(area) == "table" and type(area.cards) == "table" and area.cards or {}
end

function M.cards(area)
  local list = json.array()
  for _, card in ipairs(cards_of(area)) do list[#list + 1] = M.card(card) end
  return list
end

function M.ranks(cards)
  local list = json.array()
  for _, card in ipairs(cards or {}) do
    local base = type(card) == "table" and type(card.base) == "table" and card.base or {}
    list[#list + 1] = str(base.value) or str(base.id) or ""
  end
  return list
end

function M.jokers(G, with_properties)
  local list = json.array()
  for i, card in ipairs(cards_of(G.jokers)) do list[#list + 1] = M.joker(card, i, with_properties) end
  return list
end

--- Consumables and shop items: name, key, set, cost.
local function item(card)
  local center, ability = center_of(card), type(card.ability) == "table" and card.ability or {}
  return { name = str(ability.name) or str(center.name) or "?", id = str(center.key) or "",
           set = str(ability.set) or str(center.set) or "", cost = num(card.cost) }
end

local function items(area)
  local list = json.array()
  for _, card in ipairs(cards_of(area)) do list[#list + 1] = item(card) end
  return list
end

function M.shop(G, g)
  if not (G.shop_jokers or G.shop_vouchers or G.shop_booster) then return nil end
  local round = type(g.current_round) == "table" and g.current_round or {}
  return { jokers = items(G.shop_jokers), vouchers = items(G.shop_vouchers), boosters = items(G.shop_booster),
           reroll_cost = num(round.reroll_cost) }
end

--- The GAME_STATE payload: everything the field mod's carried.
function M.game_state(G, globals)
  local g = type(G.GAME) == "table" and G.GAME or {}
  local round = type(g.current_round) == "table" and g.current_round or {}
  local resets = type(g.round_resets) == "table" and g.round_resets or {}
  local pseudo = type(g.pseudorandom) == "table" and g.pseudorandom or {}
  local blind = type(g.blind) == "table" and g.blind or nil
  local deck = G.deck and { cards_remaining = #cards_of(G.deck), size = #(G.playing_cards or cards_of(G.deck)) } or nil
  return {
    game_state = M.phase_name(G.STATES, G.STATE), ante = num(resets.ante), round = num(g.round),
    money = num(g.dollars), chips = num(g.chips), mult = num(globals and globals.mult),
    hand_chips = num(globals and globals.hand_chips),
    hands_remaining = num(round.hands_left), discards_remaining = num(round.discards_left),
    blind = blind and { name = str(blind.name) or "", chips = num(blind.chips) } or nil,
    jokers = M.jokers(G, true), hand = M.cards(G.hand), deck = deck,
    consumables = items(G.consumeables), shop = M.shop(G, g),
    seed = str(pseudo.seed) or str(g.pseudorandom_seed), stake = num(g.stake),
  }
end

local CONTEXTS = { "repetition", "individual", "other_joker", "joker_main", "before", "after",
                   "end_of_round", "discard", "pre_discard", "buying_card", "selling_card",
                   "setting_blind", "using_consumeable", "first_hand_drawn", "skip_blind",
                   "reroll_shop", "ending_shop", "open_booster", "playing_card_added",
                   "cards_destroyed", "remove_playing_cards",
                   -- Steamodded's scoring steps
                   "post_trigger", "initial_scoring_step", "final_scoring_step", "main_scoring",
                   "modify_scoring_hand", "debuffed_hand", "destroying_card", "press_play", "hand_drawn" }

--- The kind of a calculate_joker context: the first flag it sets, in Balatro's
--- scoring order. The joker_main pass of older versions has no flag: it is
--- the one on the jokers' area with no other card.
function M.context_name(context, jokers_area)
  if type(context) ~= "table" then return "other" end
  for _, name in ipairs(CONTEXTS) do
    if context[name] then return name end
  end
  if jokers_area and context.cardarea == jokers_area and context.other_card == nil then return "joker_main" end
  return "other"
end

--- The effect of a joker: what calculate_joker returned, in the schema's terms.
function M.effect(ret)
  local message = ret.message
  return {
    chips = num(ret.chip_mod) or num(ret.chips),
    mult = num(ret.mult_mod) or num(ret.mult) or num(ret.h_mult),
    x_mult = num(ret.Xmult_mod) or num(ret.x_mult) or num(ret.xmult) or num(ret.Xmult),
    x_chips = num(ret.x_chips) or num(ret.xchips) or num(ret.Xchip_mod),
    money = num(ret.dollars) or num(ret.p_dollars),
    repetitions = num(ret.repetitions),
    message = str(message),
  }
end

--- MONEY_CHANGED's old value. ease_dollars queues its change on the event manager
--- unless `instant`, so G.GAME.dollars lags behind while several are queued; the
--- ledger carries the value the game will have once the queued ones apply, and
--- falls back to G.GAME.dollars once that value is reached (or when it has not
--- been reached within `stale_ms`, if the game changed dollars another way).
function M.money_ledger(stale_ms)
  local L = { expected = nil, since = 0 }
  --- Returns old, new for a call ease_dollars(mod) with the current dollars.
  function L.ease(dollars, mod, now)
    local old = L.expected or dollars or 0
    local new = old + (mod or 0)
    L.expected, L.since = new, now or 0
    return old, new
  end
  --- Called at the end of a frame (and after an instant change).
  function L.settle(dollars, now)
    if L.expected == nil then return end
    if dollars == L.expected or (now or 0) - L.since > (stale_ms or 10000) then L.expected = nil end
  end
  return L
end

return M

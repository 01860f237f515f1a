-- The game hooks: where Balatro's functions are wrapped to observe events.
--
-- Owns: reading Balatro's globals (G, G.GAME, G.jokers, hand_chips, mult) into
-- plain payload tables and calling the client and scoring tracker, for the same
-- events as the field mod: game state and phase, money, score, hand played,
-- discards, jokers, rounds, scoring (HAND_EVAL_START / each joker trigger /
-- HAND_EVAL_COMPLETE per scored hand, from evaluate_play and Card:calculate_joker),
-- end of round, heartbeats. Each wrapper calls the original exactly once with all
-- its arguments and returns all its results. It must never raise into the game
-- (every observation runs under pcall), never block, and never hold logic that
-- can be tested without LÖVE: that lives in bmcp/*.

local json = require("bmcp.json")

local M = {}

local function safe(log, f, ...)
  local ok, err = pcall(f, ...)
  if not ok then log("hook error: " .. tostring(err)) end
end

local function pack(...) return { n = select("#", ...), ... } end

-- Wraps obj[name] so that before(...) runs first and after(results, ...) last.
local function wrap(obj, name, log, before, after)
  local orig = obj and obj[name]
  if type(orig) ~= "function" then
    log("cannot hook " .. name)
    return
  end
  obj[name] = function(...)
    if before then safe(log, before, ...) end
    local results = pack(orig(...))
    if after then safe(log, after, results, ...) end
    return unpack(results, 1, results.n)
  end
end

local function joker_info(card, position)
  local center = card and card.config and card.config.center or {}
  return { name = card and card.ability and card.ability.name or center.name or "?",
           id = center.key or "", position = position or 0 }
end

local function jokers()
  local list = json.array()
  for i, card in ipairs(G.jokers and G.jokers.cards or {}) do list[#list + 1] = joker_info(card, i) end
  return list
end

local function card_info(card)
  local base = card.base or {}
  local enh = json.array()
  if card.ability and card.ability.name and card.ability.set == "Enhanced" then enh[1] = card.ability.name end
  return { rank = tostring(base.value or base.id or ""), suit = base.suit or "", enhancements = enh }
end

local function cards_of(area)
  local list = json.array()
  for _, card in ipairs(area and area.cards or {}) do list[#list + 1] = card_info(card) end
  return list
end

local function state_name()
  for name, value in pairs(G.STATES or {}) do
    if value == G.STATE then return name end
  end
  return tostring(G.STATE)
end

local function game_state()
  local g = G.GAME or {}
  local round = g.current_round or {}
  return {
    game_state = state_name(), ante = g.round_resets and g.round_resets.ante, round = g.round,
    money = g.dollars, chips = g.chips, hands_remaining = round.hands_left,
    discards_remaining = round.discards_left, jokers = jokers(), hand = cards_of(G.hand),
    blind = g.blind and { name = g.blind.name, chips = g.blind.chips } or nil,
  }
end

local function effect_of(ret)
  if type(ret) ~= "table" then return {} end
  return { chips = ret.chip_mod or ret.chips, mult = ret.mult_mod or ret.mult or ret.x_mult or ret.Xmult_mod,
           money = ret.dollars, score_contribution = ret.mult_mod or ret.chip_mod or ret.Xmult_mod }
end

--- ctx: client, scoring, log, on_frame(), on_quit().
function M.install(ctx)
  local client, scoring, log = ctx.client, ctx.scoring, ctx.log
  local last = { state = nil, dollars = nil, jokers = nil, round = nil }

  wrap(love, "update", log, nil, function()
    client:update(love.timer.getTime() * 1000, { game_state = G and tostring(G.STATE) or "" })
    if ctx.on_frame then ctx.on_frame() end
    if not (G and G.GAME) then return end
    if G.STATE ~= last.state then
      client:emit("PHASE_CHANGED", nil, { old_phase = last.state and tostring(last.state) or "", new_phase = state_name() })
      client:emit("GAME_STATE", nil, game_state())
      last.state = G.STATE
    end
    local njokers = G.jokers and #G.jokers.cards or 0
    if njokers ~= last.jokers then
      client:emit("JOKERS_CHANGED", nil, { old_count = last.jokers or 0, new_count = njokers, jokers = jokers() })
      last.jokers = njokers
    end
    if G.GAME.round ~= last.round then
      client:emit("ROUND_CHANGED", nil, { round = G.GAME.round or 0, ante = G.GAME.round_resets and G.GAME.round_resets.ante or 0 })
      last.round = G.GAME.round
    end
  end)

  local old_dollars
  wrap(_G, "ease_dollars", log, function() old_dollars = G.GAME and G.GAME.dollars end, function(_, mod)
    client:emit("MONEY_CHANGED", nil, { old_value = old_dollars or 0, new_value = (old_dollars or 0) + (mod or 0), difference = mod or 0 })
  end)

  wrap(G.FUNCS, "play_cards_from_highlighted", log, function()
    local round = G.GAME.current_round or {}
    local played = cards_of(G.hand and { cards = G.hand.highlighted } or nil)
    local cards = json.array()
    for i, c in ipairs(played) do cards[i] = c.rank end
    client:emit("HAND_PLAYED", nil, { hands_remaining = math.max(0, (round.hands_left or 1) - 1),
      hand_number = (round.hands_played or 0) + 1, cards = cards })
  end)

  wrap(G.FUNCS, "discard_cards_from_highlighted", log, function()
    local round = G.GAME.current_round or {}
    client:emit("CARDS_DISCARDED", nil, { discards_remaining = math.max(0, (round.discards_left or 1) - 1) })
  end)

  -- Scoring: evaluate_play computes the whole hand synchronously; jokers fire
  -- inside it through Card:calculate_joker.
  wrap(_G, "evaluate_play", log, function()
    local text = G.FUNCS.get_poker_hand_info and G.FUNCS.get_poker_hand_info(G.play.cards) or ""
    local cards = json.array()
    for i, c in ipairs(cards_of(G.play)) do cards[i] = c.rank end
    scoring:hand_start(text, cards)
  end, function()
    scoring:hand_complete(rawget(_G, "hand_chips"), rawget(_G, "mult"))
    client:emit("SCORE_CHANGED", nil, { old_chips = 0, new_chips = rawget(_G, "hand_chips") or 0,
      old_mult = 0, new_mult = rawget(_G, "mult") or 0 })
  end)

  wrap(Card, "calculate_joker", log, nil, function(results, card, context)
    local ret = results[1]
    if ret == nil or not (card.ability and card.ability.set == "Joker") then return end
    local position = 0
    for i, c in ipairs(G.jokers and G.jokers.cards or {}) do if c == card then position = i end end
    local effect = effect_of(ret)
    effect.context = context and (context.joker_main and "joker_main" or context.individual and "individual"
      or context.end_of_round and "end_of_round" or context.before and "before" or "other") or nil
    scoring:trigger(joker_info(card, position), effect)
  end)

  wrap(_G, "end_round", log, function()
    local g = G.GAME
    client:emit("ROUND_COMPLETE", nil, { score = g.chips or 0, ante = g.round_resets and g.round_resets.ante or 0,
      round = g.round or 0, money = g.dollars or 0 })
  end)

  wrap(love, "quit", log, function() if ctx.on_quit then ctx.on_quit() end end)
end

return M

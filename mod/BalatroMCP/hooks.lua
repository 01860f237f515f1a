-- The game hooks: where Balatro's functions are wrapped to observe events.
--
-- Owns: which of Balatro's functions are wrapped and when each event is sent,
-- matching the game's own layout (functions/state_events.lua,
-- functions/button_callbacks.lua, functions/common_events.lua, card.lua):
--   * G.FUNCS.evaluate_play brackets each scored hand: HAND_EVAL_START before,
--     HAND_EVAL_COMPLETE and SCORE_CHANGED after (the game scores a hand inside
--     this one call; play_cards_from_highlighted queues it on the event manager);
--   * every Card:calculate_joker that returns an effect table is one trigger:
--     SCORING/JOKER_TRIGGER inside evaluate_play (joker, position, context,
--     chips/mult/x_mult/money), the field mod's legacy JOKER_TRIGGER outside. A
--     copying joker (Blueprint) returns the copied joker's table: that effect is
--     sent once, as the copied joker with the copier as `parent`;
--   * play, discard and buy_from_shop (HAND_PLAYED, CARDS_DISCARDED, and a
--     GAME_STATE once the game has applied them), ease_dollars (MONEY_CHANGED with
--     the ledger's old value), end_round (ROUND_COMPLETE);
--   * love.update: PHASE_CHANGED (names, not numbers) and GAME_STATE on every
--     state change, JOKERS_CHANGED, ROUND_CHANGED, heartbeats (each with a
--     GAME_STATE), the worker's log; love.quit stops the worker (bounded wait).
-- Each wrapper calls the original exactly once with all its arguments and returns
-- all its results. It must never raise into the game (every observation runs
-- under pcall), never block, and never change a game table.

local json = require("bmcp.json")
local gs = require("bmcp.gamestate")

local M = {}

local function safe(log, f, ...)
  local ok, err = pcall(f, ...)
  if not ok then log("hook error: " .. tostring(err)) end
end

local function pack(...) return { n = select("#", ...), ... } end

-- Wraps obj[name] so that before(...) runs first and after(results, ...) last.
local function wrap(obj, name, label, log, before, after)
  local orig = type(obj) == "table" and obj[name]
  if type(orig) ~= "function" then
    log("cannot hook " .. label)
    return false
  end
  obj[name] = function(...)
    if before then safe(log, before, ...) end
    local results = pack(orig(...))
    if after then safe(log, after, results, ...) end
    return unpack(results, 1, results.n)
  end
  return true
end

-- Why a GAME_STATE is sent; several reasons in one frame make one GAME_STATE.
local REASONS = { start = 1, purchase = 2, hand_scored = 3, discard = 4, state_change = 5, heartbeat = 6 }

local function want_state(st, reason)
  st.reasons = st.reasons or {}
  st.reasons[reason] = true
end

local function reason_text(reasons)
  local list = {}
  for r in pairs(reasons) do list[#list + 1] = r end
  table.sort(list, function(a, b) return (REASONS[a] or 9) < (REASONS[b] or 9) end)
  return table.concat(list, ",")
end

local function globals() return { mult = rawget(_G, "mult"), hand_chips = rawget(_G, "hand_chips") } end

-- Sends the GAME_STATE the pending reasons ask for.
local function send_state(client, st)
  if not st.reasons then return end
  local payload = gs.game_state(G, globals())
  payload.reason = reason_text(st.reasons)
  client:emit("GAME_STATE", nil, payload)
  st.reasons = nil
end

-- A new action while the last one's GAME_STATE still waits for the game to
-- settle (a bot can act in the very frame the queue empties): that state is
-- sent now, as it stands before the new action.
local function flush_settle(client, st)
  if not st.settle_reason then return end
  want_state(st, st.settle_reason)
  st.settle_reason = nil
  send_state(client, st)
end

local function position_of(card)
  for i, c in ipairs(G.jokers and G.jokers.cards or {}) do if c == card then return i end end
  return 0
end

local function is_joker(card)
  return type(card) == "table" and type(card.ability) == "table" and card.ability.set == "Joker"
end

-- The frame-driven part: state changes, counts, heartbeats, settled GAME_STATEs.
local function install_update(ctx, st)
  local client, clock = ctx.client, ctx.clock
  return wrap(love, "update", "love.update", ctx.log, nil, function()
    local now = clock()
    if ctx.on_frame then ctx.on_frame(now) end
    local phase = G and gs.phase_name(G.STATES, G.STATE) or ""
    if client:heartbeat_due(now) then
      client:heartbeat(now, { game_state = phase })
      want_state(st, "heartbeat")
    end
    if not (G and G.GAME) then return end
    if G.STATE ~= st.state then
      client:emit("PHASE_CHANGED", nil, { old_phase = st.phase or "", new_phase = phase })
      st.state, st.phase = G.STATE, phase
      want_state(st, st.started and "state_change" or "start")
      st.started = true
    end
    local njokers = G.jokers and #G.jokers.cards or 0
    if njokers ~= st.jokers then
      client:emit("JOKERS_CHANGED", nil, { old_count = st.jokers or 0, new_count = njokers, jokers = gs.jokers(G) })
      st.jokers = njokers
    end
    if G.GAME.round ~= st.round then
      client:emit("ROUND_CHANGED", nil, { round = G.GAME.round or 0,
        ante = G.GAME.round_resets and G.GAME.round_resets.ante or 0 })
      st.round = G.GAME.round
    end
    -- A play or a purchase is applied by queued events: its GAME_STATE waits
    -- until the game has no queued event left (or a second has passed).
    if st.settle_reason and (ctx.queue_idle() or now - st.settle_since > 1000) then
      want_state(st, st.settle_reason)
      st.settle_reason = nil
    end
    send_state(client, st)
    st.ledger.settle(G.GAME.dollars, now)
  end)
end

-- Scoring: evaluate_play scores the hand synchronously; jokers fire inside it.
local function install_scoring(ctx, st)
  local client, scoring, log = ctx.client, ctx.scoring, ctx.log
  local ok = wrap(G.FUNCS, "evaluate_play", "G.FUNCS.evaluate_play", log, function()
    flush_settle(client, st)
    st.depth, st.parents, st.sent = 0, {}, setmetatable({}, { __mode = "k" })
    local text = ""
    if G.FUNCS.get_poker_hand_info and G.play then
      local got, t = pcall(G.FUNCS.get_poker_hand_info, G.play.cards)
      if got and type(t) == "string" then text = t end
    end
    st.score_before = { chips = G.GAME.chips, mult = rawget(_G, "mult") or 0 }
    scoring:hand_start(text, gs.ranks(G.play and G.play.cards))
  end, function()
    local chips, mult = rawget(_G, "hand_chips"), rawget(_G, "mult")
    scoring:hand_complete(gs.num(chips), gs.num(mult))
    client:emit("SCORE_CHANGED", nil, { old_chips = gs.num(st.score_before.chips) or 0,
      new_chips = (gs.num(G.GAME.chips) or 0) + (gs.num(chips) or 0) * (gs.num(mult) or 0),
      old_mult = gs.num(st.score_before.mult) or 0, new_mult = gs.num(mult) or 0,
      hand_chips = gs.num(chips), hand_mult = gs.num(mult) })
    st.settle_reason, st.settle_since = "hand_scored", ctx.clock()
  end)

  local function on_effect(ret, card, context, parent)
    if type(ret) ~= "table" or next(ret) == nil or not is_joker(card) or st.sent[ret] then return end
    st.sent[ret] = true
    local effect = gs.effect(ret)
    effect.context = gs.context_name(context, G.jokers)
    if parent and parent ~= card then effect.parent = gs.joker(parent, 0).name end
    scoring:trigger(gs.joker(card, position_of(card)), effect)
  end

  local orig = type(Card) == "table" and Card.calculate_joker
  if type(orig) ~= "function" then log("cannot hook Card:calculate_joker"); return false end
  st.depth, st.parents, st.sent = 0, {}, setmetatable({}, { __mode = "k" })
  -- The game calls this for every joker in every context, mostly for nothing:
  -- the results pass through as varargs, with no table per call.
  local function finish(self, context, ...)
    st.parents[st.depth] = nil
    st.depth = st.depth > 0 and st.depth - 1 or 0
    local ret = ...
    if ret ~= nil then safe(log, on_effect, ret, self, context, st.parents[st.depth]) end
    return ...
  end
  Card.calculate_joker = function(self, context, ...)
    st.depth = st.depth + 1
    st.parents[st.depth] = self
    return finish(self, context, orig(self, context, ...))
  end
  return ok
end

local function install_actions(ctx, st)
  local client, log = ctx.client, ctx.log
  wrap(G.FUNCS, "play_cards_from_highlighted", "G.FUNCS.play_cards_from_highlighted", log, function()
    flush_settle(client, st)
    local round = G.GAME.current_round or {}
    client:emit("HAND_PLAYED", nil, { hands_remaining = math.max(0, (round.hands_left or 1) - 1),
      hand_number = (round.hands_played or 0) + 1, cards = gs.ranks(G.hand and G.hand.highlighted) })
  end)
  wrap(G.FUNCS, "discard_cards_from_highlighted", "G.FUNCS.discard_cards_from_highlighted", log, function()
    flush_settle(client, st)
    local round = G.GAME.current_round or {}
    client:emit("CARDS_DISCARDED", nil, { discards_remaining = math.max(0, (round.discards_left or 1) - 1),
      cards = gs.ranks(G.hand and G.hand.highlighted) })
  end, function()
    st.settle_reason, st.settle_since = "discard", ctx.clock()
  end)
  wrap(G.FUNCS, "buy_from_shop", "G.FUNCS.buy_from_shop", log, function()
    flush_settle(client, st)
  end, function(results, e)
    local card = type(e) == "table" and type(e.config) == "table" and e.config.ref_table or nil
    if results[1] == false or type(card) ~= "table" then return end -- no room: nothing bought
    local center = type(card.config) == "table" and type(card.config.center) == "table" and card.config.center or {}
    client:emit("CARD_PURCHASED", nil, { name = card.ability and card.ability.name or center.name or "?",
      id = center.key or "", set = card.ability and card.ability.set or center.set or "", cost = gs.num(card.cost) or 0,
      money = gs.num(G.GAME.dollars) })
    st.settle_reason, st.settle_since = "purchase", ctx.clock()
  end)
  wrap(_G, "ease_dollars", "ease_dollars", log, function(mod, instant)
    local old, new = st.ledger.ease(gs.num(G.GAME.dollars), gs.num(mod) or 0, ctx.clock())
    client:emit("MONEY_CHANGED", nil, { old_value = old, new_value = new, difference = gs.num(mod) or 0 })
  end, function(_, _, instant)
    if instant then st.ledger.settle(G.GAME.dollars, ctx.clock()) end
  end)
  wrap(_G, "end_round", "end_round", log, function()
    local g = G.GAME
    client:emit("ROUND_COMPLETE", nil, { score = gs.num(g.chips) or 0, ante = g.round_resets and g.round_resets.ante or 0,
      round = g.round or 0, money = gs.num(g.dollars) or 0 })
  end)
end

--- ctx: client, scoring, log, clock() ms, queue_idle() (true when the game's event
--- manager has nothing queued), on_frame(now), on_quit(). Returns the names of
--- the hooks that could not be installed (empty when all were).
function M.install(ctx)
  local st = { ledger = gs.money_ledger(10000) }
  local missing = json.array()
  local log = ctx.log
  ctx.log = function(msg)
    if msg:match("^cannot hook ") then missing[#missing + 1] = msg:sub(13) end
    log(msg)
  end
  install_update(ctx, st)
  install_scoring(ctx, st)
  install_actions(ctx, st)
  -- The game's love.quit may refuse to quit (returns true): stop the worker only
  -- when the game really quits. A game without one gets one.
  if love.quit == nil then love.quit = function() end end
  wrap(love, "quit", "love.quit", ctx.log, nil, function(results)
    if not results[1] and ctx.on_quit then ctx.on_quit() end
  end)
  return missing
end

return M

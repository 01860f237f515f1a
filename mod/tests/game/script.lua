-- The player: scripted games, one action per frame when the game is ready for
-- it, the way a player clicks buttons (G.FUNCS with a UI element `e`).
--
-- Owns: the scenarios (which run, which jokers, which actions), waiting for the
-- game to be ready for each action (its state, its event queue empty), and the
-- optional fault injection (crash the mod's worker after action N, and play
-- the rest once the mod has noticed). It must never call the mod except for the
-- test-only BalatroMCP.control("crash") and BalatroMCP.status().

local rules = require("rules")

local M = {}

local S -- G.STATES, once the game exists

local function ready(state) return G.STATE == S[state] and rules.idle() end

local function highlight(n)
  G.hand:unhighlight_all()
  for i = 1, math.min(n, #G.hand.cards) do G.hand:add_to_highlighted(G.hand.cards[i]) end
end

local LINEUP = { "j_green", "j_hack", "j_scary_face", "j_blueprint", "j_cavendish", "j_joker",
                 "j_baseball", "j_ice_cream", "j_faceless" }

-- One round: blind, play, discard, play (the round ends: hands run out),
-- cash out with several queued rewards, buy a joker, leave the shop.
local function round_actions(list)
  local n = #list
  list[n + 1] = { "BLIND_SELECT", function() G.FUNCS.select_blind({}) end }
  list[n + 2] = { "SELECTING_HAND", function() highlight(2); G.FUNCS.play_cards_from_highlighted({}) end }
  list[n + 3] = { "SELECTING_HAND", function() highlight(2); G.FUNCS.discard_cards_from_highlighted({}) end }
  list[n + 4] = { "SELECTING_HAND", function() highlight(3); G.FUNCS.play_cards_from_highlighted({}) end }
  list[n + 5] = { "ROUND_EVAL", function() G.FUNCS.cash_out({}) end }
  list[n + 6] = { "SHOP", function()
    local card = G.shop_jokers.cards[1]
    G.FUNCS.buy_from_shop({ config = { ref_table = card, id = "buy" } })
  end }
  list[n + 7] = { "SHOP", function() G.FUNCS.toggle_shop({}) end }
end

M.scenarios = {}

function M.scenarios.round(opts)
  return { jokers = LINEUP, dollars = 10, hands = 2, blind_chips = 1e300, joker_slots = 12,
           shop_stock = { "j_golden_ticket", "c_pluto" }, ante = tonumber(opts.ante) }, function(list) round_actions(list) end
end

function M.scenarios.game(opts)
  return { jokers = { "j_green", "j_hack", "j_scary_face", "j_blueprint", "j_cavendish", "j_joker" }, dollars = 10,
           hands = 2, blind_chips = 1e300, joker_slots = 40, shop_stock = { "j_joker", "c_pluto" } },
    function(list) for _ = 1, tonumber(opts.rounds or 3) do round_actions(list) end end
end

--- One scored hand with `triggers` joker effects (one joker retriggered in joker_main).
function M.scenarios.cascade(opts)
  return { jokers = { "j_cascade:" .. tonumber(opts.triggers or 500) }, dollars = 4, hands = 1, blind_chips = 1e300 },
    function(list)
      list[#list + 1] = { "BLIND_SELECT", function() G.FUNCS.select_blind({}) end }
      list[#list + 1] = { "SELECTING_HAND", function() highlight(1); G.FUNCS.play_cards_from_highlighted({}) end }
      list[#list + 1] = { "ROUND_EVAL", function() end }
    end
end

--- The benchmark: `runs` hands of `triggers` joker effects each, one hand per
--- scoring frame (the driver times those frames).
function M.scenarios.bench(opts)
  local runs = tonumber(opts.runs or 30)
  return { jokers = { "j_cascade:" .. tonumber(opts.triggers or 500) }, dollars = 4, hands = runs + 1, blind_chips = 1e300 },
    function(list)
      list[#list + 1] = { "BLIND_SELECT", function() G.FUNCS.select_blind({}) end }
      for _ = 1, runs do
        list[#list + 1] = { "SELECTING_HAND", function() highlight(1); G.FUNCS.play_cards_from_highlighted({}) end }
      end
    end
end

--- No game: the mod starts, replays what earlier games left, and idles.
function M.scenarios.replay()
  return nil, function() end
end

local actions, index, opts_g = {}, 1, nil

function M.start(opts)
  S = G.STATES
  opts_g = opts
  local scenario = assert(M.scenarios[opts.scenario or "round"], "unknown scenario " .. tostring(opts.scenario))
  local run, fill = scenario(opts)
  if run then rules.start_run(run) end
  fill(actions)
end

--- Runs the next action when the game is ready for it. Returns true once all ran.
function M.step()
  local a = actions[index]
  if not a then return true end
  if not ready(a[1]) then return false end
  -- after a crash, the rest of the game is played once the mod knows its worker is gone
  if opts_g.crash_after and index > tonumber(opts_g.crash_after) and BalatroMCP.status().worker_alive then
    return false
  end
  a[2]()
  if opts_g.crash_after and index == tonumber(opts_g.crash_after) and BalatroMCP then
    BalatroMCP.control("crash")
  end
  index = index + 1
  return index > #actions and rules.idle()
end

function M.done() return index > #actions and (rules.idle()) end
function M.actions_run() return index - 1 end

return M

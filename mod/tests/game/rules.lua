-- The game-logic part of the stand-in for Balatro's Lua layout
-- (functions/state_events.lua, functions/button_callbacks.lua,
-- functions/common_events.lua, functions/misc_functions.lua), written from the
-- game's public layout: the globals eval_card, ease_dollars, end_round,
-- hand_chips and mult; G.FUNCS.play_cards_from_highlighted (queues the scoring),
-- G.FUNCS.evaluate_play (scores a hand synchronously: before, each scoring card
-- with repetitions and individual joker effects, joker_main through eval_card,
-- other_joker, after), G.FUNCS.discard_cards_from_highlighted,
-- G.FUNCS.buy_from_shop (queued), G.FUNCS.cash_out, G.FUNCS.get_poker_hand_info;
-- the joker centers the scripts use; and a book of what the game did (every
-- joker effect per hand, every ease_dollars with its true before/after) that
-- the tests compare with what the server stored. It must never know about the mod.

local M = {}

M.book = { hands = {}, money = {}, purchases = {}, discards = 0, rounds = 0, legacy = 0 }
M.scored = 0 -- hands scored so far (the benchmark times the frames that score one)
local book = M.book
local current -- the hand being scored, in the book

-- Records one effect a joker returned during scoring (the game's own view). A
-- copied effect is the copied joker's, with the copier as its parent.
local function booked(card, context, ret)
  if ret and current and not current.seen[ret] then
    current.seen[ret] = true
    local parent
    if ret.copied_from then card, parent = ret.copied_from, card end
    local pos = 0
    for i, c in ipairs(G.jokers.cards) do if c == card then pos = i end end
    current.triggers[#current.triggers + 1] = { joker = card.ability.name, position = pos,
      context = context, parent = parent and parent.ability.name or nil }
  end
  return ret
end

-- Joker centers: each calc returns the game's effect tables for its contexts.
M.centers = {
  j_joker = { key = "j_joker", name = "Joker", set = "Joker", rarity = 1, cost = 2, config = { mult = 4 },
    calc = function(self, ctx) if ctx.joker_main then return { mult_mod = self.ability.mult, message = "+4" } end end },
  j_scary_face = { key = "j_scary_face", name = "Scary Face", set = "Joker", rarity = 1, cost = 4, config = { extra = 30 },
    calc = function(self, ctx)
      if ctx.individual and ctx.cardarea == G.play then return { chips = self.ability.extra, card = self } end
    end },
  j_hack = { key = "j_hack", name = "Hack", set = "Joker", rarity = 2, cost = 6, config = { extra = 1 },
    calc = function(self, ctx)
      if ctx.repetition and ctx.cardarea == G.play then return { message = "Again!", repetitions = self.ability.extra, card = self } end
    end },
  j_cavendish = { key = "j_cavendish", name = "Cavendish", set = "Joker", rarity = 1, cost = 4, config = { extra = 3 },
    calc = function(self, ctx) if ctx.joker_main then return { Xmult_mod = self.ability.extra, message = "X3" } end end },
  j_baseball = { key = "j_baseball", name = "Baseball Card", set = "Joker", rarity = 3, cost = 8, config = { extra = 1.5 },
    calc = function(self, ctx)
      if ctx.other_joker and ctx.other_joker ~= self then return { Xmult_mod = self.ability.extra, message = "X1.5" } end
    end },
  j_green = { key = "j_green", name = "Green Joker", set = "Joker", rarity = 1, cost = 4, config = { extra = { hand_add = 1, discard_sub = 1 }, mult = 0 },
    calc = function(self, ctx)
      if ctx.before then self.ability.mult = self.ability.mult + 1; return { message = "Upgrade!", card = self } end
      if ctx.joker_main then return { mult_mod = self.ability.mult } end
    end },
  j_golden_ticket = { key = "j_ticket", name = "Golden Ticket", set = "Joker", rarity = 1, cost = 5, config = { extra = 4 },
    calc = function(self, ctx)
      if ctx.individual and ctx.cardarea == G.play then return { dollars = self.ability.extra, card = self } end
    end },
  j_ice_cream = { key = "j_ice_cream", name = "Ice Cream", set = "Joker", rarity = 1, cost = 5, config = { extra = { chips = 100, chip_mod = 5 } },
    calc = function(self, ctx)
      if ctx.after then self.ability.extra.chips = self.ability.extra.chips - 5; return { message = "-5", card = self } end
      if ctx.joker_main then return { chip_mod = self.ability.extra.chips } end
    end },
  j_faceless = { key = "j_faceless", name = "Faceless Joker", set = "Joker", rarity = 1, cost = 4, config = { extra = 5 },
    calc = function(self, ctx)
      if ctx.discard and ctx.other_card == ctx.full_hand[#ctx.full_hand] then
        ease_dollars(self.ability.extra)
        return { message = "$5", card = self }
      end
    end },
  -- Copies the joker to its right, as Blueprint does: returns that joker's table.
  j_blueprint = { key = "j_blueprint", name = "Blueprint", set = "Joker", rarity = 3, cost = 10, config = {},
    calc = function(self, ctx)
      local other
      for i, c in ipairs(G.jokers.cards) do if c == self then other = G.jokers.cards[i + 1] end end
      if other and other ~= self then
        ctx.blueprint = (ctx.blueprint or 0) + 1
        ctx.blueprint_card = ctx.blueprint_card or self
        local ret = other:calculate_joker(ctx)
        ctx.blueprint, ctx.blueprint_card = nil, nil
        if ret then ret.card, ret.copied_from = self, other; return ret end
      end
    end },
  -- Fires `n` times in joker_main through the game's own loop of retriggers
  -- (one effect table per call), for the cascade scripts.
  j_cascade = { key = "j_cascade", name = "Cascade", set = "Joker", rarity = 4, cost = 20, config = { extra = 1 },
    calc = function(self, ctx) if ctx.joker_main then return { mult_mod = 1, chip_mod = 2 } end end },
  c_pluto = { key = "c_pluto", name = "Pluto", set = "Planet", cost = 3, config = {} },
}

function M.playing_card(value, suit, id, nominal)
  return Card({ key = "c_base", name = "Default Base", set = "Default", config = {} },
              { value = value, suit = suit, id = id, nominal = nominal })
end

--- The game's evaluate_poker_hand, reduced to what the scripts play.
local function get_poker_hand_info(cards)
  local counts = {}
  for _, c in ipairs(cards) do counts[c.base.id] = (counts[c.base.id] or 0) + 1 end
  local best = 1
  for _, n in pairs(counts) do best = math.max(best, n) end
  local text = best >= 4 and "Four of a Kind" or best == 3 and "Three of a Kind" or best == 2 and "Pair" or "High Card"
  local scoring = {}
  for _, c in ipairs(cards) do
    if counts[c.base.id] == best then scoring[#scoring + 1] = c end
  end
  return text, text, {}, scoring, text
end

function M.install()
  local F = G.FUNCS

  F.get_poker_hand_info = get_poker_hand_info

  -- functions/common_events.lua: the change is queued unless instant.
  function ease_dollars(mod, instant)
    local function _mod(m)
      book.money[#book.money + 1] = { old = G.GAME.dollars, new = G.GAME.dollars + m, mod = m }
      G.GAME.dollars = G.GAME.dollars + m
    end
    if instant then _mod(mod) else
      G.E_MANAGER:add_event(Event({ trigger = "immediate", func = function() _mod(mod); return true end }))
    end
  end

  -- A card's effects in a context: jokers through calculate_joker.
  function eval_card(card, context)
    local ret = {}
    if context.cardarea == G.play then ret.chips = card:get_chip_bonus() end
    if card.ability.set == "Joker" then
      local jokers = card:calculate_joker(context)
      if jokers then ret.jokers = jokers end
    end
    return ret
  end

  local function apply(effect)
    if not effect then return end
    hand_chips = hand_chips + (effect.chip_mod or effect.chips or 0)
    mult = mult + (effect.mult_mod or effect.mult or 0)
    if effect.Xmult_mod or effect.x_mult then mult = mult * (effect.Xmult_mod or effect.x_mult) end
    if effect.dollars then ease_dollars(effect.dollars) end
  end

  local function each_joker(context, kind)
    for _, j in ipairs(G.jokers.cards) do
      apply(booked(j, kind, j:calculate_joker(context)))
    end
  end

  -- functions/state_events.lua: scores the played hand within this one call.
  function F.evaluate_play(e)
    M.scored = M.scored + 1
    local text, _, poker_hands, scoring_hand = F.get_poker_hand_info(G.play.cards)
    current = { hand_type = text, triggers = {}, seen = setmetatable({}, { __mode = "k" }) }
    book.hands[#book.hands + 1] = current
    G.GAME.last_hand_played = text
    local base = G.GAME.hands[text]
    hand_chips, mult = base.chips, base.mult
    local ctx = { cardarea = G.jokers, full_hand = G.play.cards, scoring_hand = scoring_hand,
                  scoring_name = text, poker_hands = poker_hands }
    each_joker(setmetatable({ before = true }, { __index = ctx }), "before")
    for _, card in ipairs(scoring_hand) do
      local reps = 1
      for _, j in ipairs(G.jokers.cards) do
        local r = booked(j, "repetition", j:calculate_joker({ cardarea = G.play, full_hand = G.play.cards,
          scoring_hand = scoring_hand, other_card = card, repetition = true }))
        if r then reps = reps + (r.repetitions or 0) end
      end
      for _ = 1, reps do
        hand_chips = hand_chips + card:get_chip_bonus()
        for _, j in ipairs(G.jokers.cards) do
          apply(booked(j, "individual", j:calculate_joker({ cardarea = G.play, full_hand = G.play.cards,
            scoring_hand = scoring_hand, other_card = card, individual = true })))
        end
      end
    end
    for _, j in ipairs(G.jokers.cards) do
      local effects = eval_card(j, { cardarea = G.jokers, full_hand = G.play.cards, scoring_hand = scoring_hand,
        scoring_name = text, poker_hands = poker_hands, joker_main = true })
      apply(booked(j, "joker_main", effects.jokers))
      for _ = 2, (j.ability.set == "Joker" and j.config.center.key == "j_cascade") and (j.ability.extra or 1) or 1 do
        apply(booked(j, "joker_main", j:calculate_joker({ cardarea = G.jokers, joker_main = true, full_hand = G.play.cards })))
      end
      for _, other in ipairs(G.jokers.cards) do
        apply(booked(other, "other_joker", other:calculate_joker({ full_hand = G.play.cards, scoring_hand = scoring_hand,
          scoring_name = text, other_joker = j })))
      end
    end
    each_joker({ cardarea = G.jokers, full_hand = G.play.cards, scoring_hand = scoring_hand, after = true }, "after")
    current.chips, current.mult, current.seen = hand_chips, mult, nil
    current = nil
    local score = math.floor(hand_chips * mult)
    G.E_MANAGER:add_event(Event({ trigger = "after", delay = 0.4, func = function()
      G.GAME.chips = G.GAME.chips + score
      return true
    end }))
  end

  -- functions/button_callbacks.lua: the played cards move, the scoring is queued.
  function F.play_cards_from_highlighted(e)
    G.STATE = G.STATES.HAND_PLAYED
    G.GAME.current_round.hands_left = G.GAME.current_round.hands_left - 1
    G.GAME.current_round.hands_played = G.GAME.current_round.hands_played + 1
    local played = {}
    for _, c in ipairs(G.hand.highlighted) do played[#played + 1] = c end
    for _, c in ipairs(played) do G.play:emplace(c) end
    G.hand:unhighlight_all()
    G.E_MANAGER:add_event(Event({ trigger = "immediate", func = function() F.evaluate_play(); return true end }))
    G.E_MANAGER:add_event(Event({ trigger = "immediate", func = function()
      for _, c in ipairs(played) do G.discard:emplace(c) end
      return true
    end }))
  end

  -- Game:update_hand_played: once the hand's events are done, the round goes
  -- on or ends (end_round, from update_new_round).
  function M.update_hand_played()
    if G.STATE ~= G.STATES.HAND_PLAYED or not M.idle() then return end
    if G.GAME.chips >= G.GAME.blind.chips or G.GAME.current_round.hands_left < 1 then
      G.STATE = G.STATES.NEW_ROUND
      end_round()
    else
      M.draw_to_hand()
      G.STATE = G.STATES.SELECTING_HAND
    end
  end

  function F.discard_cards_from_highlighted(e, hook)
    G.STATE = G.STATES.DRAW_TO_HAND
    G.GAME.current_round.discards_left = G.GAME.current_round.discards_left - 1
    book.discards = book.discards + 1
    local cards = {}
    for _, c in ipairs(G.hand.highlighted) do cards[#cards + 1] = c end
    G.hand:unhighlight_all()
    G.E_MANAGER:add_event(Event({ trigger = "immediate", func = function()
      for _, c in ipairs(cards) do
        for _, j in ipairs(G.jokers.cards) do
          if j:calculate_joker({ discard = true, other_card = c, full_hand = cards }) then book.legacy = book.legacy + 1 end
        end
        G.discard:emplace(c)
      end
      M.draw_to_hand()
      G.STATE = G.STATES.SELECTING_HAND
      return true
    end }))
  end

  -- state_events.lua's end_round: rewards are several queued ease_dollars.
  function end_round()
    book.rounds = book.rounds + 1
    G.E_MANAGER:add_event(Event({ trigger = "after", delay = 0.2, func = function()
      for _, j in ipairs(G.jokers.cards) do j:calculate_joker({ end_of_round = true, cardarea = G.jokers }) end
      G.STATE = G.STATES.ROUND_EVAL
      ease_dollars(G.GAME.blind.dollars)
      ease_dollars(G.GAME.current_round.hands_left)
      ease_dollars(math.min(5, math.floor(G.GAME.dollars / 5))) -- interest on what is there now
      return true
    end }))
  end

  function F.cash_out(e)
    G.STATE = G.STATES.SHOP
    G.GAME.current_round.reroll_cost = 5
    for _, key in ipairs(G.GAME.shop_stock or { "j_golden_ticket", "c_pluto" }) do
      local c = Card(M.centers[key])
      if c.ability.set == "Joker" then G.shop_jokers:emplace(c) else G.shop_jokers:emplace(c) end
    end
  end

  function F.check_for_buy_space(card)
    if card.ability.set == "Joker" then return #G.jokers.cards < G.jokers.config.card_limit end
    return #G.consumeables.cards < G.consumeables.config.card_limit
  end

  -- button_callbacks.lua: the purchase is applied by a queued event.
  function F.buy_from_shop(e)
    local c1 = e.config.ref_table
    if not (c1 and c1:is(Card)) then return end
    if not F.check_for_buy_space(c1) or c1.cost > G.GAME.dollars then
      e.disable_button = nil
      return false
    end
    book.purchases[#book.purchases + 1] = { name = c1.ability.name, cost = c1.cost }
    G.E_MANAGER:add_event(Event({ trigger = "after", delay = 0.1, func = function()
      c1.area:remove_card(c1)
      c1:add_to_deck()
      if c1.ability.set == "Joker" then G.jokers:emplace(c1) else G.consumeables:emplace(c1) end
      for _, j in ipairs(G.jokers.cards) do j:calculate_joker({ buying_card = true, card = c1 }) end
      ease_dollars(-c1.cost)
      return true
    end }))
  end

  function F.toggle_shop(e)
    for _, c in ipairs(G.shop_jokers.cards) do G.shop_jokers:remove_card(c) end
    G.shop_jokers.cards = {}
    G.STATE = G.STATES.BLIND_SELECT
  end

  function F.select_blind(e)
    G.GAME.round = G.GAME.round + 1
    G.GAME.blind = Blind("Small Blind", G.GAME.blind_chips or 300, 3)
    G.GAME.chips = 0
    G.GAME.current_round.hands_left, G.GAME.current_round.discards_left = G.GAME.hands_per_round or 4, 3
    G.GAME.current_round.hands_played = 0
    G.STATE = G.STATES.DRAW_TO_HAND
    G.E_MANAGER:add_event(Event({ func = function()
      M.draw_to_hand()
      G.STATE = G.STATES.SELECTING_HAND
      return true
    end }))
  end
end

function M.idle()
  for _, q in pairs(G.E_MANAGER.queues) do if #q > 0 then return false end end
  return true
end

function M.draw_to_hand()
  while #G.hand.cards < 8 and #G.deck.cards > 0 do G.hand:emplace(G.deck.cards[#G.deck.cards]) end
end

--- A new run: G.GAME, the card areas, a deck of 52, the given jokers.
function M.start_run(opts)
  G.GAME = {
    dollars = opts.dollars or 4, round = 0, chips = 0, stake = 1,
    round_resets = { ante = opts.ante or 1, blind_ante = opts.ante or 1 },
    current_round = { hands_left = 4, discards_left = 3, hands_played = 0, reroll_cost = 5 },
    pseudorandom = { seed = opts.seed or "HARNESS1" },
    hands = { ["High Card"] = { chips = 5, mult = 1 }, ["Pair"] = { chips = 10, mult = 2 },
              ["Three of a Kind"] = { chips = 30, mult = 3 }, ["Four of a Kind"] = { chips = 60, mult = 7 } },
    blind_chips = opts.blind_chips, shop_stock = opts.shop_stock, hands_per_round = opts.hands,
  }
  G.deck, G.hand, G.play, G.discard = CardArea("deck"), CardArea("hand", 8), CardArea("play"), CardArea("discard")
  G.jokers, G.consumeables, G.shop_jokers = CardArea("jokers", opts.joker_slots or 5), CardArea("consumeables", 2), CardArea("shop_jokers")
  G.shop_vouchers, G.shop_booster = CardArea("shop_vouchers"), CardArea("shop_booster")
  G.playing_cards = {}
  local values = { "2", "3", "4", "5", "6", "7", "8", "9", "10", "Jack", "Queen", "King", "Ace" }
  for _, suit in ipairs({ "Spades", "Hearts", "Clubs", "Diamonds" }) do
    for id, value in ipairs(values) do
      local c = M.playing_card(value, suit, id + 1, math.min(10, id + 1))
      G.deck:emplace(c)
      G.playing_cards[#G.playing_cards + 1] = c
    end
  end
  for _, spec in ipairs(opts.jokers or {}) do
    local key, extra = spec:match("^([%w_]+):?(%d*)$")
    local c = Card(assert(M.centers[key], key))
    if extra ~= "" then c.ability.extra = tonumber(extra) end
    G.jokers:emplace(c)
  end
  G.STATE = G.STATES.BLIND_SELECT
end

return M

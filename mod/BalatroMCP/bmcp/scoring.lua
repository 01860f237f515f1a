-- Brackets each scored hand: HAND_EVAL_START, every trigger, HAND_EVAL_COMPLETE.
--
-- Owns: the state of the hand being scored (trigger count, start time) so that
-- every START gets exactly one COMPLETE, even if a hand starts before the last one
-- finished (an error in the game's scoring code), and triggers outside a hand go
-- out as the field mod's legacy JOKER_TRIGGER. It must never read game globals
-- (hooks pass plain values in) and never skip or merge a trigger.

local json = require("bmcp.json")

local M = {}

local T = {}
T.__index = T

--- client: bmcp.client; clock_ms(): game clock in ms.
function M.new(client, clock_ms)
  return setmetatable({ client = client, clock_ms = clock_ms, active = false, triggers = 0 }, T)
end

function T:hand_start(hand_type, cards)
  if self.active then self:hand_complete(nil, nil, "interrupted") end
  self.active, self.triggers, self.started = true, 0, self.clock_ms()
  return self.client:emit("SCORING", "HAND_EVAL_START",
    { hand_type = hand_type or "", cards = json.array(cards or {}) })
end

--- joker: {name, id, position}; effect: {chips, mult, x_mult, money, repetitions,
--- message, score_contribution, context, parent}.
function T:trigger(joker, effect)
  effect = effect or {}
  if not self.active then
    return self.client:emit("JOKER_TRIGGER", nil,
      { joker_name = joker and joker.name or "", context = effect.context, timestamp = self.clock_ms(),
        position = joker and joker.position, chips = effect.chips, mult = effect.mult,
        x_mult = effect.x_mult, money = effect.money },
      { priority = "low" })
  end
  self.triggers = self.triggers + 1
  return self.client:emit("SCORING", "JOKER_TRIGGER", {
    joker = joker, trigger_index = self.triggers, chips = effect.chips, mult = effect.mult,
    x_mult = effect.x_mult, x_chips = effect.x_chips, money = effect.money, repetitions = effect.repetitions,
    message = effect.message, score_contribution = effect.score_contribution,
    context = effect.context, parent = effect.parent,
  })
end

function T:hand_complete(final_chips, final_mult, note)
  if not self.active then return nil end
  self.active = false
  return self.client:emit("SCORING", "HAND_EVAL_COMPLETE", {
    duration_ms = self.clock_ms() - self.started, final_chips = final_chips or 0,
    final_mult = final_mult or 0, triggers = self.triggers, note = note,
  })
end

return M

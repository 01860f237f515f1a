-- The engine part of the stand-in for Balatro's Lua layout (engine/object.lua,
-- engine/event.lua, engine/node.lua, engine/moveable.lua, card.lua,
-- cardarea.lua, blind.lua, game.lua), written from the game's public layout.
--
-- Owns: the class tables as globals (Object, Node, Moveable, Card, CardArea,
-- Blind, Event, EventManager, Game), built with the same metatable scheme as
-- the game, so that `Card.calculate_joker` is reached through metatables and a
-- mod that wraps the class method sees every card's call; the event manager,
-- which runs queued events on later frames, in order, a blocking event holding
-- back those behind it, as the game's does. It must never know about the mod.

Object = {}
Object.__index = Object
function Object:init() end
function Object:extend()
  local cls = {}
  for k, v in pairs(self) do
    if k:find("__") == 1 then cls[k] = v end
  end
  cls.__index = cls
  cls.super = self
  setmetatable(cls, self)
  return cls
end
function Object:is(T)
  local mt = getmetatable(self)
  while mt do
    if mt == T then return true end
    mt = getmetatable(mt)
  end
  return false
end
function Object:__call(...)
  local obj = setmetatable({}, self)
  obj:init(...)
  return obj
end

Node = Object:extend()
function Node:init(args) self.T = args and args.T or { x = 0, y = 0, w = 1, h = 1 }; self.children = {} end
function Node:remove() self.REMOVED = true end

Moveable = Node:extend()
function Moveable:init(args) Node.init(self, args) end

--- A card: playing card (base = {value, suit, id, nominal}) or joker/consumable (center).
Card = Moveable:extend()
function Card:init(center, base)
  Moveable.init(self, {})
  self.config = { center = center }
  self.base = base or {}
  self.ability = { name = center.name, set = center.set, effect = center.effect or "" }
  for k, v in pairs(center.config or {}) do self.ability[k] = v end
  self.cost = center.cost or 0
  self.sell_cost = math.max(1, math.floor(self.cost / 2))
  self.edition = center.edition
  self.area = nil
end
function Card:get_id() return self.base.id end
function Card:get_chip_bonus() return self.base.nominal or 0 end
function Card:add_to_deck() self.added_to_deck = true end
--- The game's Card:calculate_joker: each joker's behaviour is its center's calc.
function Card:calculate_joker(context)
  if self.ability.set ~= "Joker" or self.debuff then return nil end
  local calc = self.config.center.calc
  if calc then return calc(self, context) end
  return nil
end

CardArea = Moveable:extend()
function CardArea:init(name, limit)
  Moveable.init(self, {})
  self.name, self.cards, self.highlighted = name, {}, {}
  self.config = { card_limit = limit or 1000 }
end
function CardArea:emplace(card)
  if card.area then card.area:remove_card(card) end
  self.cards[#self.cards + 1] = card
  card.area = self
end
function CardArea:remove_card(card)
  for i, c in ipairs(self.cards) do
    if c == card then table.remove(self.cards, i); break end
  end
  for i, c in ipairs(self.highlighted) do
    if c == card then table.remove(self.highlighted, i); break end
  end
  card.area = nil
  return card
end
function CardArea:add_to_highlighted(card) self.highlighted[#self.highlighted + 1] = card end
function CardArea:unhighlight_all() self.highlighted = {} end

Blind = Moveable:extend()
function Blind:init(name, chips, dollars)
  Moveable.init(self, {})
  self.name, self.chips, self.dollars = name, chips, dollars
end

Event = Object:extend()
function Event:init(config)
  self.trigger = config.trigger or "immediate"
  self.blocking = config.blocking ~= false
  self.delay = config.delay or 0
  self.func = config.func or function() return true end
  self.complete = false
end

EventManager = Object:extend()
function EventManager:init()
  self.queues = { unlock = {}, base = {}, tutorial = {}, achievement = {}, other = {} }
  self.frame = 0
end
function EventManager:add_event(event, queue, front)
  event.added_frame = self.frame
  local q = self.queues[queue or "base"]
  if front then table.insert(q, 1, event) else q[#q + 1] = event end
end
function EventManager:clear_queue() for k in pairs(self.queues) do self.queues[k] = {} end end
--- Runs the events queued before this frame, in order; an incomplete blocking
--- event holds back everything behind it until a later frame.
function EventManager:update(dt)
  self.frame = self.frame + 1
  for _, q in pairs(self.queues) do
    local i = 1
    while i <= #q do
      local e = q[i]
      if e.added_frame >= self.frame then break end
      if e.func() then
        table.remove(q, i)
      elseif e.blocking then
        break
      else
        i = i + 1
      end
    end
  end
end

Game = Object:extend()
function Game:init()
  G = self
  self.STATES = {
    SELECTING_HAND = 1, HAND_PLAYED = 2, DRAW_TO_HAND = 3, GAME_OVER = 4, SHOP = 5, PLAY_TAROT = 6,
    BLIND_SELECT = 7, ROUND_EVAL = 8, TAROT_PACK = 9, PLANET_PACK = 10, MENU = 11, TUTORIAL = 12,
    SPLASH = 13, SANDBOX = 14, SPECTRAL_PACK = 15, DEMO_CTA = 16, STANDARD_PACK = 17,
    BUFFOON_PACK = 18, NEW_ROUND = 19,
  }
  self.STATE = self.STATES.SPLASH
  self.FUNCS = {}
  self.SETTINGS = { GAMESPEED = 1 }
  self.E_MANAGER = EventManager()
  self.frames = 0
end
function Game:start_up()
  self.STATE = self.STATES.MENU
end
function Game:update(dt)
  self.frames = self.frames + 1
  self.E_MANAGER:update(dt)
end

-- Test harness: the mod's real game-side and worker code under plain LuaJIT,
-- talking HTTP (LuaSocket) to a real jimbus. Driven line by line on stdin, so a
-- test in another language can script scenarios without sleeping.
--
-- Usage: luajit mod/tests/harness.lua [URL] [SPILL_DIR] [key=value ...]
--   URL defaults to $JIMBUS_URL, then http://127.0.0.1:8080/api/v1/events;
--   SPILL_DIR defaults to a temp directory; key=value overrides config.lua keys
--   (numbers are converted), e.g. breaker_reset_ms=200 backoff_base_ms=20.
--
-- Commands (one per line) and replies (one JSON object per line on stdout):
--   session NAME   new game session NAME (sequence restarts at 1)
--                  -> {"session":NAME}
--   round          emits a normal round's events (phase, state, hand played, a
--                  scored hand with 3 triggers, score, money, discard, jokers,
--                  round complete, heartbeat; values include inf, unicode,
--                  control characters and empty lists)
--   cascade N      one scored hand: HAND_EVAL_START, N joker triggers, HAND_EVAL_COMPLETE
--   burst N        N GAME_STATE events, as if emitted in one frame
--   emit TYPE      one event of TYPE with a small payload
--                  every emitted event -> {"emitted":ID,"session":S,"sequence":N}
--   drain MS       runs the worker until nothing is pending (inbox and queue empty)
--                  or MS pass -> {"drain":"empty"|"timeout", <stats>}
--   until_open MS  runs the worker until the breaker is open and every pending
--                  event is in the spill file, or MS pass
--                  -> {"until_open":"open"|"timeout", <stats>}
--   restart        simulates a game crash and restart: the inbox, the worker and
--                  every in-memory event are discarded, the old worker's lease
--                  is let go (as if it had gone stale); a new worker adopts its
--                  spill log; a new session NAME-rK starts -> {"restarted":true,"session":...}
--   stats          -> {"stats":true, <stats>}
--   quit           exits 0
-- <stats> = sent (requests answered 2xx), acked (events), pending, spilled,
-- replayed, loaded, dropped, failures, probes, breaker, events_emitted, ...
-- Logs of the worker go to stderr.

package.path = arg[0]:gsub("[^/]*$", "") .. "../BalatroMCP/?.lua;" .. package.path

local socket = require("socket")
local json = require("bmcp.json")
local settings = require("bmcp.settings")
local events = require("bmcp.events")
local client_mod = require("bmcp.client")
local scoring_mod = require("bmcp.scoring")
local sender_mod = require("bmcp.sender")
local worker_loop = require("bmcp.worker_loop")

local url = arg[1] or os.getenv("JIMBUS_URL") or "http://127.0.0.1:8080/api/v1/events"
local spill_dir = arg[2] or os.tmpname() .. ".d"
local overrides = {}
for i = 3, #arg do
  local k, v = arg[i]:match("^([%w_]+)=(.*)$")
  if k then overrides[k] = tonumber(v) or v end
end
overrides.event_bus_url = url
-- one worker at a time here: a restarted worker adopts the last one's log at once
if overrides.claim_ms == nil then overrides.claim_ms = 0 end
local defaults = dofile(arg[0]:gsub("[^/]*$", "") .. "../BalatroMCP/config.lua")
local config = settings.resolve(defaults, overrides)

local function clock() return socket.gettime() * 1000 end
local function out(t) io.stdout:write(json.encode(t), "\n"); io.stdout:flush() end
local function log(msg) io.stderr:write("[worker] ", msg, "\n"); io.stderr:flush() end

-- A love.thread channel stand-in. Single-threaded, so demand() can only wait.
local function channel()
  local q, h, t = {}, 1, 0
  local c = {}
  function c:push(v) t = t + 1; q[t] = v end
  function c:pop()
    local v = q[h]
    if v ~= nil then q[h] = nil; h = h + 1 end
    return v
  end
  function c:demand(timeout)
    local v = self:pop()
    if v == nil and timeout and timeout > 0 then socket.sleep(timeout); v = self:pop() end
    return v
  end
  function c:getCount() return t - h + 1 end
  function c:clear() q, h, t = {}, 1, 0 end
  return c
end

local state = { restarts = 0 }

local function new_worker()
  if state.sender then state.sender.queue:release_leases() end
  state.channel = channel()
  state.inbox = worker_loop.held_inbox(state.channel)
  state.sender = sender_mod.new({
    config = config, transport = require("bmcp.transport").keepalive(), clock = clock,
    random = math.random, fs = require("bmcp.fs").io(), spill_dir = spill_dir, log = log,
    inbox = state.inbox, instance = string.format("h%x-%d", os.time(), state.restarts),
    epoch_ms = function() return math.floor(clock()) end,
  })
end

local function new_session(name)
  state.session = name
  local builder = events.new({ session_id = name, epoch_ms = function() return math.floor(clock()) end,
                               game_ms = function() return os.clock() * 1000 end })
  state.client = client_mod.new({ push = function(line) state.channel:push(line) end, builder = builder, log = log })
  state.scoring = scoring_mod.new(state.client, function() return os.clock() * 1000 end)
end

local function emitted(id, seq)
  if id then out({ emitted = id, session = state.session, sequence = seq }) end
end

local function emit(...) emitted(state.client:emit(...)) end

local function stats(extra)
  local s = state.sender:snapshot()
  s.events_emitted = state.client and state.client.emitted or 0
  s.inbox = state.channel:getCount()
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local function joker(i) return { name = "Joker " .. i, id = "j_" .. i, position = (i - 1) % 5 + 1 } end

local function cascade(n)
  emitted(state.scoring:hand_start("Flush", json.array({ "2", "5", "9", "11", "13" })))
  for i = 1, n do
    emitted(state.scoring:trigger(joker(i), { chips = i, mult = i * 2, score_contribution = i, context = "joker_main" }))
  end
  emitted(state.scoring:hand_complete(120 * n, 40, nil))
end

local function round()
  emit("PHASE_CHANGED", nil, { old_phase = "BLIND_SELECT", new_phase = "SELECTING_HAND" })
  emit("GAME_STATE", nil, { game_state = "SELECTING_HAND", ante = 1, round = 1, money = 4, chips = 0,
    hands_remaining = 4, discards_remaining = 3, jokers = json.array({ joker(1) }),
    hand = json.array({ { rank = "Ace", suit = "Spades", enhancements = json.array() } }),
    consumables = json.array() })
  emit("ROUND_CHANGED", nil, { round = 1, ante = 1 })
  emit("HAND_PLAYED", nil, { hands_remaining = 3, hand_number = 1, cards = json.array({ "3", "4", "5", "6", "7" }) })
  cascade(3)
  emit("SCORE_CHANGED", nil, { old_chips = 1e308, new_chips = math.huge, old_mult = -0.0, new_mult = 0 / 0 })
  emit("MONEY_CHANGED", nil, { old_value = 4, new_value = 9, difference = 5 })
  emit("CARDS_DISCARDED", nil, { discards_remaining = 2 })
  emit("JOKERS_CHANGED", nil, { old_count = 1, new_count = 2,
    jokers = json.array({ joker(1), { name = "Jöker ☺ 小丑", id = "j\"q\\", position = 2 } }) })
  emit("ERROR", nil, { message = "bell \7 backspace \8 formfeed \12 esc \27 newline \n tab \t end" })
  emit("ROUND_COMPLETE", nil, { score = 3400, ante = 1, round = 1, money = 9 })
  emit("HEARTBEAT", nil, { version = "2.0.0", uptime = 12.5, headless = true })
end

-- Runs the worker loop until stop() or ms pass.
local function run_for(ms, stop)
  local deadline = clock() + ms
  local reason = worker_loop.run({
    sender = state.sender, inbox = state.inbox, clock = clock, idle_ms = 20,
    stop = function(s) return stop(s) or clock() >= deadline end,
  })
  return reason, stop(state.sender)
end

local function idle(s) return state.channel:getCount() == 0 and s.queue:len() == 0 end
local function parked(s)
  return state.channel:getCount() == 0 and s.breaker.state == "open" and s.queue:mem_len() == 0
end

local commands = {}
function commands.session(name) new_session(name); out({ session = name }) end
function commands.round() round() end
function commands.cascade(n) cascade(tonumber(n)) end
function commands.burst(n)
  for i = 1, tonumber(n) do emit("GAME_STATE", nil, { ante = 1, round = 1, money = i, game_state = "SELECTING_HAND" }) end
end
function commands.emit(t) emit(t, nil, { note = "harness" }) end
function commands.drain(ms)
  local _, done = run_for(tonumber(ms), idle)
  out(stats({ drain = done and "empty" or "timeout" }))
end
function commands.until_open(ms)
  local _, done = run_for(tonumber(ms), parked)
  out(stats({ until_open = done and "open" or "timeout" }))
end
function commands.restart()
  state.restarts = state.restarts + 1
  new_worker()
  new_session(state.base .. "-r" .. state.restarts)
  out(stats({ restarted = true, session = state.session }))
end
function commands.stats() out(stats({ stats = true })) end

math.randomseed(os.time())
new_worker()
state.base = "harness-" .. os.time()
new_session(state.base)

for line in io.stdin:lines() do
  local cmd, argument = line:match("^%s*(%S+)%s*(.-)%s*$")
  if cmd == "quit" then break end
  if cmd == "session" then state.base = argument end
  local f = cmd and commands[cmd]
  if f then
    local ok, err = pcall(f, argument)
    if not ok then out({ error = tostring(err), command = line }) end
  elseif cmd then
    out({ error = "unknown command", command = line })
  end
end
os.exit(0)

-- Benchmark: what the game thread pays for events during a 500-trigger cascade.
--
-- Owns: measuring, under plain LuaJIT, the mod's real game-side path (hooks'
-- payload table -> bmcp.scoring -> bmcp.client -> bmcp.events build + strict JSON
-- encode -> channel push) per enqueued event and per frame. Balatro scores a
-- hand inside one frame (evaluate_play is synchronous), so the whole cascade
-- lands in one frame; the report shows that frame's cost. The channel here is a
-- Lua queue standing in for love.thread's Channel:push (a mutex and a string
-- copy in C, not measured here). It must never print a number it did not measure.
--
-- Usage: luajit mod/bench/game_thread_cost.lua [TRIGGERS=500] [RUNS=30]

package.path = arg[0]:gsub("[^/]*$", "") .. "../BalatroMCP/?.lua;" .. package.path
local socket = require("socket")
local client_mod = require("bmcp.client")
local scoring_mod = require("bmcp.scoring")

local triggers = tonumber(arg[1]) or 500
local runs = tonumber(arg[2]) or 30

local function channel()
  local q, n = {}, 0
  return { push = function(v) n = n + 1; q[n] = v end, count = function() return n end }
end

local function one_frame()
  local ch = channel()
  local c = client_mod.new({ push = ch.push, builder_opts = { session_id = "bench",
    epoch_ms = function() return 1795531353000 end, game_ms = function() return 1234.5 end } })
  local sc = scoring_mod.new(c, function() return 1234.5 end)
  local w0, c0 = socket.gettime(), os.clock()
  sc:hand_start("Flush", { "2", "5", "9", "11", "13" })
  for i = 1, triggers do
    sc:trigger({ name = "Blueprint", id = "j_blueprint", position = i % 5 + 1 },
      { chips = i, mult = i * 1.5, score_contribution = i, context = "joker_main" })
  end
  sc:hand_complete(1e308, math.huge)
  local w1, c1 = socket.gettime(), os.clock()
  return (w1 - w0) * 1000, (c1 - c0) * 1000, ch.count()
end

for _ = 1, 3 do one_frame() end -- warm up the JIT
local walls, cpus, events = {}, {}, 0
for i = 1, runs do walls[i], cpus[i], events = one_frame() end
table.sort(walls); table.sort(cpus)
local function pct(t, p) return t[math.max(1, math.ceil(#t * p))] end

print(string.format("game-thread cost, %d-trigger cascade (%d events enqueued in one frame), %d runs, %s",
  triggers, events, runs, jit and jit.version or _VERSION))
print(string.format("per frame  : median %.3f ms wall (%.3f ms CPU), p90 %.3f ms wall, max %.3f ms",
  pct(walls, 0.5), pct(cpus, 0.5), pct(walls, 0.9), walls[#walls]))
print(string.format("per event  : median %.2f us wall (%.2f us CPU)",
  pct(walls, 0.5) * 1000 / events, pct(cpus, 0.5) * 1000 / events))
print(string.format("frame budget at 60 fps is 16.7 ms; the cascade frame uses %.1f%% of it",
  pct(walls, 0.5) / 16.667 * 100))

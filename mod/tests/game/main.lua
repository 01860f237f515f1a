-- The game-layout harness: a LÖVE 11.4 game folder that stands in for Balatro
-- (engine.lua, rules.lua), loads a mod the way Steamodded does
-- (steamodded.lua) and plays a scripted game (script.lua) headless.
--
-- Usage: love mod/tests/game [key=value ...]
--   mod=PATH          the mod folder (default: ../../BalatroMCP beside this folder);
--                     mod=none runs the game without it (the benchmark's baseline)
--   url=URL           the mod's event_bus_url (default http://127.0.0.1:8080/api/v1/events)
--   scenario=NAME     round | game (rounds=N) | cascade (triggers=N) | replay |
--                     bench (runs=N triggers=N: prints the scoring frames' times)
--   wait=MODE         drain (default): after the script, until the worker has
--                     sent everything; none: quit at once; dropped: until the
--                     worker reports a drop; dead: until the worker is gone
--   crash_after=N     tells the worker to crash after action N (test only)
--   timeout_s=S       give up waiting after S seconds (default 60; exit 3)
--   cfg.KEY=VALUE     a mod config key (numbers converted), e.g. cfg.breaker_reset_ms=200
--   profile=FILE      LuaJIT's profiler (jit.p, by function) over the game thread, into FILE
-- Output: the mod's log (Steamodded's console format) and, for the tests, lines
-- starting with "@@ " holding one JSON object each: {"event":"played"} when the
-- script is done, {"event":"report", ...} before quitting (the game's book of
-- what happened, the mod's counters, frame times), {"event":"quit","quit_ms":..}
-- after the mod's love.quit ran. Exit status 0, or 3 when a wait timed out.
-- The save folder is $XDG_DATA_HOME/love/BalatroHarness.

require("engine")
local rules = require("rules")
local script = require("script")
local steamodded = require("steamodded")

local opts = {}
local json -- the mod's encoder (or the vendored rxi one when the mod is not loaded)
local function emit(t)
  io.stdout:write("@@ ", json.encode(t), "\n")
  io.stdout:flush()
end

-- The game thread's own CPU time (the worker thread runs beside it); on a
-- system without CLOCK_THREAD_CPUTIME_ID (Linux: 3), the process's CPU time.
local thread_cpu = os.clock
pcall(function()
  local ffi = require("ffi")
  ffi.cdef("typedef struct { long tv_sec; long tv_nsec; } bmcp_timespec; int clock_gettime(int, bmcp_timespec *);")
  local ts = ffi.new("bmcp_timespec")
  assert(ffi.os == "Linux" and ffi.C.clock_gettime(3, ts) == 0)
  thread_cpu = function()
    ffi.C.clock_gettime(3, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
  end
end)

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  return s[math.max(1, math.ceil(#s / 2))] or 0
end

Game()
rules.install() -- G.FUNCS and the game's global functions, as the game's files define them

-- The game's own love.update and love.quit, defined before any mod loads.
function love.update(dt)
  G:update(dt)
  rules.update_hand_played()
  script.step()
end

function love.draw() end

function love.quit()
  return false
end

local function parse(args)
  local o, cfg = {}, {}
  for _, a in ipairs(args or {}) do
    local k, v = a:match("^([%w_.]+)=(.*)$")
    if k then
      local ck = k:match("^cfg%.(.+)$")
      if ck then cfg[ck] = tonumber(v) or (v == "true" and true) or (v ~= "false" and v) or false
      else o[k] = v end
    end
  end
  o.cfg = cfg
  return o
end

local function here()
  local src = love.filesystem.getSource()
  if src:sub(1, 1) ~= "/" then src = love.filesystem.getWorkingDirectory() .. "/" .. src end
  return src
end

-- Frame timing and the waiting after the script, outermost (installed after the
-- mod, like a mod loaded after it).
local function install_driver()
  local update, started = love.update, love.timer.getTime()
  local frames, max_ms, total_ms, played_at = 0, 0, 0, nil
  local scoring_ms, scoring_cpu = {}, {} -- the frames that scored a hand: wall and CPU ms
  local timeout = tonumber(opts.timeout_s or 60)
  local function report(extra)
    local status = BalatroMCP and BalatroMCP.status() or {}
    local r = { event = "report", status = status, book = rules.book, frames = frames,
                max_frame_ms = max_ms, mean_frame_ms = frames > 0 and total_ms / frames or 0,
                scoring_frames = #scoring_ms, scoring_frame_median_ms = median(scoring_ms),
                scoring_frame_median_cpu_ms = median(scoring_cpu),
                actions = script.actions_run(), script_done = script.done(),
                missing_hooks = BalatroMCP and BalatroMCP.missing_hooks or {} }
    for k, v in pairs(extra or {}) do r[k] = v end
    emit(r)
  end
  local function finished()
    local st = BalatroMCP and BalatroMCP.status() or {}
    local w = st.worker
    if opts.wait == "none" then return true end
    if opts.wait == "dropped" then return w and (w.dropped or 0) > 0 end
    if opts.wait == "dead" then return st.worker_alive == false end
    return w and w.pending == 0 and (w.claims or 0) == 0 and w.received == st.emitted - st.dropped
  end
  love.update = function(dt)
    local scored, t0, c0 = rules.scored, love.timer.getTime(), thread_cpu()
    update(dt)
    local ms = (love.timer.getTime() - t0) * 1000
    if rules.scored > scored then
      scoring_ms[#scoring_ms + 1] = ms
      scoring_cpu[#scoring_cpu + 1] = (thread_cpu() - c0) * 1000
    end
    frames, total_ms, max_ms = frames + 1, total_ms + ms, math.max(max_ms, ms)
    if script.done() and not played_at then
      played_at = love.timer.getTime()
      emit({ event = "played", session = BalatroMCP and BalatroMCP.session_id, frames = frames })
    end
    if played_at and finished() then
      report({ timed_out = false })
      love.event.quit(0)
    elseif love.timer.getTime() - started > timeout then
      report({ timed_out = true })
      love.event.quit(3)
    end
  end
  local quit = love.quit
  love.quit = function()
    local t0 = love.timer.getTime()
    local r = quit()
    emit({ event = "quit", quit_ms = (love.timer.getTime() - t0) * 1000,
           status = BalatroMCP and BalatroMCP.status() or {} })
    return r
  end
end

function love.load(args)
  opts = parse(args)
  if opts.profile then
    package.path = package.path .. ";/usr/share/luajit-2.1.0-beta3/?.lua"
    local p = require("jit.p")
    p.start("fl", opts.profile)
    local quit = love.quit
    love.quit = function() p.stop(); return quit() end
  end
  G:start_up()
  local config = { event_bus_url = opts.url or "http://127.0.0.1:8080/api/v1/events" }
  for k, v in pairs(opts.cfg) do config[k] = v end
  local default_path = here():gsub("/+$", "") .. "/../../BalatroMCP"
  if opts.mod ~= "none" then steamodded.load_mod("BalatroMCP", opts.mod or default_path, config) end
  json = package.loaded["bmcp.json"] or steamodded.rxi_json(default_path)
  install_driver()
  script.start(opts)
end

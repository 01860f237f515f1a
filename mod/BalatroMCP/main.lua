--- STEAMODDED HEADER
--- MOD_NAME: BalatroMCP
--- MOD_ID: BalatroMCP
--- MOD_AUTHOR: [jimbot]
--- MOD_DESCRIPTION: Streams game events to jimbus, batched and off the game thread.
--- PREFIX: bmcp
--- VERSION: 2.0.0

-- The mod's entry point (Steamodded runs this file on the game thread).
--
-- Owns: loading the mod's modules, resolving the config, starting the network
-- worker thread with its module sources, creating the game-side client and
-- installing the hooks, watching the worker (its log, its counters, its death),
-- and stopping it on quit. It must never send HTTP or touch files after
-- start-up (the worker does that, off the game thread), never wait on the
-- worker except at quit (at most quit_wait_ms), and never let the worker's
-- failure reach the game: a dead worker means events are counted and dropped.

local mod = SMODS and SMODS.current_mod or {}
local base = mod.path or ""
local NFS = rawget(_G, "NFS") or (SMODS and SMODS.NFS)

local MODULES = {
  "bmcp.vendor.rxi_json", "bmcp.json", "bmcp.events", "bmcp.settings", "bmcp.backoff",
  "bmcp.breaker", "bmcp.fs", "bmcp.spillfile", "bmcp.spillq", "bmcp.batcher", "bmcp.transport",
  "bmcp.sender", "bmcp.worker_loop", "bmcp.client", "bmcp.scoring", "bmcp.gamestate",
}

local function read(rel)
  local full = base .. rel
  local src = NFS and NFS.read(full) or love.filesystem.read(full)
  return assert(src, "BalatroMCP: cannot read " .. full)
end

-- Every module is registered as a preload so that `require("bmcp.x")` works the
-- same here, in the worker thread and under plain LuaJIT in the tests.
local sources = {}
for _, name in ipairs(MODULES) do
  local rel = name:gsub("%.", "/") .. ".lua"
  local src = read(rel)
  sources[#sources + 1] = name
  sources[#sources + 1] = src
  package.preload[name] = package.preload[name] or assert(loadstring(src, "=" .. rel))
end

local json = require("bmcp.json")
local settings = require("bmcp.settings")
local defaults = assert(loadstring(read("config.lua"), "=config.lua"))()
local config = settings.resolve(defaults, mod.config)
if config.enabled == false then return end

local function log(msg)
  if sendInfoMessage then return sendInfoMessage(tostring(msg), "BalatroMCP") end
  print("[BalatroMCP] " .. tostring(msg))
end

local function game_ms() return love.timer.getTime() * 1000 end
local events = require("bmcp.events")
local session_id = events.new_session_id(game_ms)
config.session_id = session_id

-- Start the worker; logs other game instances left behind are replayed by it.
local worker = love.thread.newThread(love.filesystem.newFileData(read("worker.lua"), "BalatroMCP/worker.lua"))
local channels = {}
for k, name in pairs(settings.channels) do channels[k] = love.thread.getChannel(name) end
worker:start(json.encode(config), unpack(sources))

local state = { dead = nil, quitting = false, stats = nil }
local channel_cap = config.channel_cap or 50000
local client
client = require("bmcp.client").new({
  push = function(line)
    if state.dead then return false end
    if channels.events:getCount() >= channel_cap then
      client.drop_reason = "its channel holds " .. channel_cap .. " events"
      return false
    end
    channels.events:push(line)
    return true
  end,
  heartbeat_interval_ms = config.heartbeat_interval_ms, log = log,
  builder_opts = {
    session_id = session_id, game_ms = game_ms,
    -- epoch ms with sub-second resolution: os.time() anchors the monotonic clock
    epoch_anchor_ms = os.time() * 1000 - game_ms(),
  },
})
local scoring = require("bmcp.scoring").new(client, game_ms)
log("session " .. session_id .. " -> " .. config.event_bus_url)

local function worker_died(err)
  if state.dead then return end
  state.dead = tostring(err or "stopped")
  client.drop_reason = "the worker stopped"
  log("network worker stopped: " .. state.dead .. "; the game goes on, events are counted and dropped")
  -- whatever it had not taken yet is dropped too, and counted
  local n = 0
  for _ = 1, channels.events:getCount() do
    local v = channels.events:pop()
    if v == nil then break end
    if v ~= "" then n = n + 1 end
  end
  client.dropped = client.dropped + n
end

-- A thread error reaches the game as love.threaderror, whose default raises:
-- the worker's is caught here, every other thread's goes to the game's handler.
local game_threaderror = love.threaderror
love.threaderror = function(thread, err)
  if thread == worker then return worker_died(err) end
  if game_threaderror then return game_threaderror(thread, err) end
end

local function on_frame()
  for _ = 1, 20 do
    local line = channels.log:pop()
    if not line then break end
    log(line)
  end
  local stats = channels.stats:pop()
  if stats then
    local ok, t = pcall(json.decode, stats)
    if ok then state.stats = t end
  end
  if not state.dead and not state.quitting and not worker:isRunning() then
    worker_died(worker:getError() or "the worker thread ended")
  end
end

-- At quit the worker writes what it took to disk and stops taking: the events
-- still in the channel are written here, to a log of their own ("<session>~q",
-- which sorts after the worker's, so a replay keeps their order). If the worker
-- did not answer in time, its lease is let go here too, so the next start
-- adopts both at once. The only file I/O of the game thread, and only at quit.
local function save_unsent(answered)
  local lines = {}
  channels.events:performAtomic(function(ch)
    while true do
      local v = ch:pop()
      if v == nil then break end
      if v ~= "" then lines[#lines + 1] = v end
    end
  end)
  state.quit = { answered = answered, saved = #lines }
  if answered and #lines == 0 then return end
  local ok, err = pcall(function()
    local fs = require("bmcp.fs").love(love.filesystem)
    fs.mkdir(config.spill_dir)
    local lease = config.spill_dir .. "/" .. session_id .. ".lease"
    if not answered and (fs.read_at(lease, 0, 256) or ""):match("^(.-)\n") == session_id then fs.remove(lease) end
    if #lines == 0 then return end
    local f = require("bmcp.spillfile").open({ fs = fs, dir = config.spill_dir, instance = session_id .. "~q" })
    assert(f:append(lines))
  end)
  log(string.format("quit: %s; %d events still in the channel %s", answered and "the worker stopped"
    or ("the worker did not answer within " .. (config.quit_wait_ms or 200) .. " ms"),
    #lines, ok and "are saved for the next start" or ("could not be saved: " .. tostring(err))))
end

-- Quit: the worker writes what it holds to disk and says "done"; the game
-- waits for that at most quit_wait_ms, saves what the worker did not take, and
-- the next start sends the rest.
local function quit()
  if state.quitting then return end
  state.quitting = true
  if not state.dead then
    channels.control:push("quit")
    channels.events:push("") -- wakes a worker waiting for events; not an event
    local answered = channels.done:demand((config.quit_wait_ms or 200) / 1000) ~= nil
    save_unsent(answered)
  end
  on_frame()
end

local function queue_idle()
  local queues = G and G.E_MANAGER and G.E_MANAGER.queues
  if type(queues) ~= "table" then return true end
  for _, q in pairs(queues) do
    if type(q) == "table" and #q > 0 then return false end
  end
  return true
end

BalatroMCP = {
  client = client, scoring = scoring, config = config, worker = worker, quit = quit,
  session_id = session_id,
  --- The counters: game side (emitted, dropped, worker state, what quit saved)
  --- and the worker's last report.
  status = function()
    return { session = session_id, emitted = client.emitted, dropped = client.dropped,
             worker_alive = not state.dead, worker_error = state.dead, worker = state.stats, quit = state.quit }
  end,
  --- Sends a command to the worker ("flush"; "crash" kills it, for the tests).
  control = function(cmd) channels.control:push(cmd); channels.events:push("") end,
}

BalatroMCP.missing_hooks = assert(loadstring(read("hooks.lua"), "=hooks.lua"))().install({
  client = client, scoring = scoring, log = log, clock = game_ms, queue_idle = queue_idle,
  on_frame = on_frame, on_quit = quit,
})

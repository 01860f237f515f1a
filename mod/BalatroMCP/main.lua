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
-- installing the hooks, and stopping the worker on quit. It must never send
-- HTTP or touch files after start-up: the worker does that, off the game thread.

local mod = SMODS and SMODS.current_mod or {}
local base = mod.path or ""
local NFS = rawget(_G, "NFS") or (SMODS and SMODS.NFS)

local MODULES = {
  "bmcp.vendor.rxi_json", "bmcp.json", "bmcp.events", "bmcp.settings", "bmcp.backoff",
  "bmcp.breaker", "bmcp.fs", "bmcp.spillq", "bmcp.batcher", "bmcp.transport",
  "bmcp.sender", "bmcp.worker_loop", "bmcp.client", "bmcp.scoring",
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
  local line = "[BalatroMCP] " .. tostring(msg)
  if sendInfoMessage then sendInfoMessage(line, "BalatroMCP") else print(line) end
end

-- Start the worker; a leftover spill file from the last run is replayed by it.
local worker = love.thread.newThread(love.filesystem.newFileData(read("worker.lua"), "BalatroMCP/worker.lua"))
worker:start(json.encode(config), unpack(sources))

local events_channel = love.thread.getChannel(settings.channels.events)
local client = require("bmcp.client").new({
  push = function(line) events_channel:push(line) end,
  heartbeat_interval_ms = config.heartbeat_interval_ms, log = log,
  builder_opts = {
    game_ms = function() return love.timer.getTime() * 1000 end,
    epoch_ms = (function()
      -- epoch ms with sub-second resolution: os.time() anchors the monotonic clock
      local t0, g0 = os.time() * 1000, love.timer.getTime()
      return function() return math.floor(t0 + (love.timer.getTime() - g0) * 1000) end
    end)(),
  },
})
local scoring = require("bmcp.scoring").new(client, function() return love.timer.getTime() * 1000 end)
log("session " .. client:session_id() .. " -> " .. config.event_bus_url)

local log_channel = love.thread.getChannel(settings.channels.log)
local function pump_worker_log()
  for _ = 1, 20 do
    local line = log_channel:pop()
    if not line then break end
    log(line)
  end
  local err = worker:getError()
  if err then log("worker error: " .. err) end
end

local function quit()
  love.thread.getChannel(settings.channels.control):push("quit")
  worker:wait()
  pump_worker_log()
end

BalatroMCP = { client = client, scoring = scoring, config = config, worker = worker, quit = quit }

assert(loadstring(read("hooks.lua"), "=hooks.lua"))().install({
  client = client, scoring = scoring, log = log, on_frame = pump_worker_log, on_quit = quit,
})

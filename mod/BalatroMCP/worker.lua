-- The love.thread entry of the network worker.
--
-- Owns: wiring the worker loop to LÖVE in its own thread: its modules arrive as
-- source strings in the start arguments (a thread has its own Lua state and no
-- Steamodded loader), events arrive on a love.thread channel, HTTP goes through
-- LuaSocket or lua-https, the spill file lives in the save folder via
-- love.filesystem. Arguments: config JSON, then module name/source pairs.
-- The worker's instance id is the game's session id (config.session_id): it
-- names this worker's spill log. It must never touch game state and never let
-- an error pass silently: errors go to the log channel and the thread's error
-- (the game side catches it in love.threaderror and goes on without a worker).

local args = { ... }
local config_json = args[1]
for i = 2, #args - 1, 2 do
  package.preload[args[i]] = assert(loadstring(args[i + 1], "=" .. args[i]))
end

require("love.timer")
require("love.filesystem")

local json = require("bmcp.json")
local settings = require("bmcp.settings")
local config = json.decode(config_json)
local log_channel = love.thread.getChannel(settings.channels.log)
local function log(msg) log_channel:push(tostring(msg)) end

local ok, err = xpcall(function()
  local sender = require("bmcp.sender")
  local fs = require("bmcp.fs").love(love.filesystem)
  local clock = function() return love.timer.getTime() * 1000 end
  math.randomseed(os.time() + math.floor(love.timer.getTime() * 1e6) % 1e6)
  local s = sender.new({
    config = config, transport = require("bmcp.transport").for_url(config.event_bus_url),
    clock = clock, random = math.random, fs = fs, spill_dir = config.spill_dir, log = log,
    inbox = nil, instance = config.session_id or string.format("w%x%04x", os.time(), math.random(0, 0xffff)),
    epoch_ms = function() return os.time() * 1000 end,
  })
  local inbox = require("bmcp.worker_loop").held_inbox(love.thread.getChannel(settings.channels.events))
  s.inbox = inbox
  require("bmcp.worker_loop").run({
    sender = s, inbox = inbox, control = love.thread.getChannel(settings.channels.control),
    stats = love.thread.getChannel(settings.channels.stats), clock = clock,
    done = love.thread.getChannel(settings.channels.done),
    idle_ms = 250, stats_interval_ms = config.stats_interval_ms,
  })
end, debug.traceback)
if not ok then
  log("worker stopped: " .. tostring(err))
  error(err, 0)
end

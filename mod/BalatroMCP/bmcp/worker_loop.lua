-- The worker thread's main loop, independent of LÖVE.
--
-- Owns: alternating sender steps with waiting for new events (a blocking
-- demand on the inbox with a timeout, so an idle worker costs nothing), reading
-- control commands ("flush", "quit"), publishing counters, and the shutdown
-- sequence: try to send for quit_flush_ms, then write whatever is still pending
-- to the spill file so the next start replays it. It must never touch the game
-- state and never exit while events are only in memory.

local json = require("bmcp.json")

local M = {}

-- An inbox whose demand() result is handed back by the next pop(), so the
-- sender can keep pulling with pop() alone.
local function held_inbox(channel)
  local held
  return {
    pop = function()
      if held ~= nil then local v = held; held = nil; return v end
      return channel:pop()
    end,
    wait = function(seconds)
      if held == nil then held = channel:demand(seconds) end
    end,
  }
end
M.held_inbox = held_inbox

--- Runs until "quit" arrives on control or stop(sender) returns true.
--- opts: sender, inbox (held_inbox), control (pop), stats (push/clear or nil),
--- clock() ms, idle_ms, stats_interval_ms, quit_flush_ms, stop(sender).
function M.run(opts)
  local s, clock = opts.sender, opts.clock
  local last_stats = -math.huge
  while true do
    local wait = s:step()
    local cmd = opts.control and opts.control:pop()
    if cmd == "flush" then s.batcher:flush() end
    if cmd == "quit" then return M.shutdown(opts) end
    if opts.stop and opts.stop(s) then return "stopped" end
    local now = clock()
    if opts.stats and now - last_stats >= (opts.stats_interval_ms or 1000) then
      last_stats = now
      opts.stats:clear()
      opts.stats:push(json.encode(s:snapshot()))
    end
    if wait ~= 0 then
      -- wake for new events at once, for timers when they fall due
      local ms = math.min(wait or opts.idle_ms or 250, opts.idle_ms or 250)
      opts.inbox.wait(ms / 1000)
    end
  end
end

function M.shutdown(opts)
  local s, clock = opts.sender, opts.clock
  local deadline = clock() + (opts.quit_flush_ms or 1000)
  s.batcher:flush()
  while clock() < deadline do
    local wait = s:step()
    if s.queue:len() == 0 or s:unhealthy() then break end
    if wait and wait > 0 then opts.inbox.wait(math.min(wait, 50) / 1000) end
  end
  s:intake(clock())
  s.queue:spill()
  return "quit"
end

return M

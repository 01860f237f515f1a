-- The worker thread's main loop, independent of LÖVE.
--
-- Owns: alternating sender steps with waiting for new events (a blocking
-- demand on the inbox with a timeout, so an idle worker costs nothing), reading
-- control commands ("flush", "quit", and "crash", which raises outside the
-- guard so the tests can kill a worker), publishing counters, surviving its own
-- errors (a step that raises is logged and retried after a pause: the worker
-- never stops sending because of one bad event or one bug), and the shutdown
-- sequence: what it holds goes to the spill log, then it says "done" (the game
-- waits for that at most quit_wait_ms, then writes what is left in the channel
-- itself). It must never touch the game state and never finish while events
-- are only in memory.

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

-- One guarded sender step: returns the wait it asks for, or a pause after an error.
local function guarded_step(s, opts, st)
  local ok, wait = xpcall(function() return s:step() end, debug.traceback)
  if ok then
    st.errors = 0
    return wait
  end
  st.errors, st.total_errors = st.errors + 1, (st.total_errors or 0) + 1
  if st.total_errors <= 10 or st.total_errors % 100 == 0 then
    s.log("worker step failed (" .. st.total_errors .. " so far), retrying: " .. tostring(wait))
  end
  pcall(function() s.queue:release() end)
  return math.min(5000, 100 * 2 ^ math.min(st.errors, 6))
end

--- Runs until "quit" arrives on control or stop(sender) returns true.
--- opts: sender, inbox (held_inbox), control (pop), stats (push/clear or nil),
--- done (push or nil), clock() ms, idle_ms, stats_interval_ms, stop(sender).
function M.run(opts)
  local s, clock = opts.sender, opts.clock
  local last_stats, st = -math.huge, { errors = 0 }
  while true do
    local wait = guarded_step(s, opts, st)
    local cmd = opts.control and opts.control:pop()
    if cmd == "flush" then s.batcher:flush() end
    if cmd == "quit" then return M.shutdown(opts) end
    if cmd == "crash" then error("worker crashed on request (control: crash)", 0) end
    if opts.stop and opts.stop(s) then return "stopped" end
    local now = clock()
    if opts.stats and now - last_stats >= (opts.stats_interval_ms or 1000) then
      last_stats = now
      local snap = s:snapshot()
      snap.step_errors = st.total_errors or 0
      opts.stats:clear()
      opts.stats:push(json.encode(snap))
    end
    if wait ~= 0 then
      -- wake for new events at once, for timers when they fall due
      local ms = math.min(wait or opts.idle_ms or 250, opts.idle_ms or 250)
      opts.inbox.wait(ms / 1000)
    end
  end
end

--- Quit: what the worker holds goes to disk, its leases are let go, "done".
--- It sends nothing more and takes nothing more from the channel: the game
--- writes what is left there itself, so nothing waits on the network here.
function M.shutdown(opts)
  local s = opts.sender
  pcall(function()
    s.queue.spill_retry_at = 0
    s.queue:spill()
    s.queue:release_leases()
  end)
  if opts.stats then
    opts.stats:clear()
    opts.stats:push(json.encode(s:snapshot()))
  end
  if opts.done then opts.done:push("done") end
  return "quit"
end

return M

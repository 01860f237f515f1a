-- The real love.thread entry (worker.lua) under fake love.thread / love.timer /
-- love.filesystem: modules arrive as start arguments, events on a channel, and
-- on "quit" with the server unreachable every event ends up in the spill log,
-- the worker says "done", and a step that raises does not end the worker.
local fakes = require("fakes")
local json = require("bmcp.json")
local settings = require("bmcp.settings")

local function fake_love(dir)
  local channels = {}
  local lfs = {}
  local function p(path) return dir .. "/" .. path end
  function lfs.newFile(path)
    local f
    return { open = function() f = io.open(p(path), "rb"); return f ~= nil end,
             seek = function(_, off) f:seek("set", off) end, read = function(_, n) return f:read(n) end,
             close = function() f:close() end }
  end
  function lfs.append(path, data) local f = assert(io.open(p(path), "ab")); f:write(data); f:close(); return true end
  function lfs.write(path, data) local f = assert(io.open(p(path), "wb")); f:write(data); f:close(); return true end
  function lfs.remove(path) os.remove(p(path)) end
  function lfs.getInfo(path)
    local f = io.open(p(path), "rb"); if not f then return nil end
    local size = f:seek("end"); f:close(); return { size = size, modtime = os.time() }
  end
  function lfs.getDirectoryItems(path)
    local names, h = {}, io.popen("ls -1 '" .. p(path) .. "' 2>/dev/null")
    for name in h:lines() do names[#names + 1] = name end
    h:close()
    return names
  end
  function lfs.createDirectory(path) os.execute("mkdir -p '" .. p(path) .. "'") end
  return {
    thread = { getChannel = function(name) channels[name] = channels[name] or fakes.channel(); return channels[name] end },
    timer = { getTime = function() return require("socket").gettime() end },
    filesystem = lfs,
  }
end

-- The event ids in the worker's spill log, read back through spillfile.
local function spillfile_reader(dir, config)
  local f = require("bmcp.spillfile").open({ fs = require("bmcp.fs").io(), dir = dir .. "/" .. config.spill_dir,
                                             instance = config.session_id })
  local ids = {}
  for _, r in ipairs(f:read(1000)) do ids[#ids + 1] = r.line:match('^{"event_id":"(.-)"') end
  return ids
end

describe("worker loop", function()
  it("survives a step that raises, logs it, and goes on", function()
    local worker_loop = require("bmcp.worker_loop")
    local logs, calls = {}, 0
    local s = { log = function(m) logs[#logs + 1] = m end, queue = { release = function() end } }
    function s:step()
      calls = calls + 1
      if calls <= 3 then error("boom " .. calls) end
      return nil
    end
    local reason = worker_loop.run({ sender = s, inbox = { wait = function() end }, clock = function() return 0 end,
      stop = function() return calls >= 5 end })
    assert.equal("stopped", reason)
    assert.equal(3, #logs)
    assert.truthy(logs[1]:match("worker step failed %(1 so far%), retrying: .*boom 1"))
  end)
end)

describe("worker.lua (the love.thread entry)", function()
  it("spills every pending event on quit while the server is unreachable", function()
    local dir = os.tmpname(); os.remove(dir); os.execute("mkdir -p '" .. dir .. "'")
    local old_love = rawget(_G, "love")
    _G.love = fake_love(dir)
    package.preload["love.timer"] = function() return love.timer end
    package.preload["love.filesystem"] = function() return love.filesystem end
    local config = fakes.config({ event_bus_url = "http://127.0.0.1:1/api/v1/events", quit_wait_ms = 200,
                                  session_id = "w1", connection_test = true })
    local args = { json.encode(config) }
    for _, name in ipairs({ "bmcp.settings", "bmcp.sender", "bmcp.fs", "bmcp.transport", "bmcp.worker_loop",
                            "bmcp.spillq", "bmcp.spillfile" }) do
      local f = assert(io.open("mod/BalatroMCP/" .. name:gsub("%.", "/") .. ".lua")); args[#args + 1] = name
      args[#args + 1] = f:read("*a"); f:close()
      package.loaded[name] = nil
    end
    local ids = fakes.emit(love.thread.getChannel(settings.channels.events), 3)
    love.thread.getChannel(settings.channels.control):push("quit")
    assert(loadfile("mod/BalatroMCP/worker.lua"))(unpack(args))
    local log = spillfile_reader(dir, config)
    assert.same(ids, log)
    assert.equal("done", love.thread.getChannel(settings.channels.done):pop())
    local lines = {}
    local logc = love.thread.getChannel(settings.channels.log)
    while logc:getCount() > 0 do lines[#lines + 1] = logc:pop() end
    local all = table.concat(lines, "\n")
    assert.truthy(all:match("connection test to http://127.0.0.1:1/api/v1/events failed"), all)

    _G.love = old_love
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

-- The real love.thread entry (worker.lua) under fake love.thread / love.timer /
-- love.filesystem: modules arrive as start arguments, events on a channel, and
-- on "quit" with the server unreachable every event ends up in the spill file.
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
    local size = f:seek("end"); f:close(); return { size = size }
  end
  function lfs.createDirectory(path) os.execute("mkdir -p '" .. p(path) .. "'") end
  return {
    thread = { getChannel = function(name) channels[name] = channels[name] or fakes.channel(); return channels[name] end },
    timer = { getTime = function() return require("socket").gettime() end },
    filesystem = lfs,
  }
end

describe("worker.lua (the love.thread entry)", function()
  it("spills every pending event on quit while the server is unreachable", function()
    local dir = os.tmpname(); os.remove(dir); os.execute("mkdir -p '" .. dir .. "'")
    local old_love = rawget(_G, "love")
    _G.love = fake_love(dir)
    package.preload["love.timer"] = function() return love.timer end
    package.preload["love.filesystem"] = function() return love.filesystem end
    local config = fakes.config({ event_bus_url = "http://127.0.0.1:1/api/v1/events", quit_flush_ms = 200 })
    local args = { json.encode(config) }
    for _, name in ipairs({ "bmcp.settings", "bmcp.sender", "bmcp.fs", "bmcp.transport", "bmcp.worker_loop" }) do
      local f = assert(io.open("mod/BalatroMCP/" .. name:gsub("%.", "/") .. ".lua")); args[#args + 1] = name
      args[#args + 1] = f:read("*a"); f:close()
      package.loaded[name] = nil
    end
    local ids = fakes.emit(love.thread.getChannel(settings.channels.events), 3)
    love.thread.getChannel(settings.channels.control):push("quit")
    assert(loadfile("mod/BalatroMCP/worker.lua"))(unpack(args))
    local f = assert(io.open(dir .. "/" .. config.spill_file, "rb"))
    local got = {}
    for line in f:lines() do got[#got + 1] = line:match('^{"event_id":"(.-)"') end
    f:close()
    assert.same(ids, got)
    local log = love.thread.getChannel(settings.channels.log)
    assert.truthy((log:pop() or ""):match("batch .* failed"))
    _G.love = old_love
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

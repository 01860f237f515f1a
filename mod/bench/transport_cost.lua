-- Benchmark client: small batches posted one after the other, as one game's
-- worker posts them, either the field mods' way or ours.
--
-- Owns: sending REQUESTS one-event batches (the body of
-- perf/wrk/fair-batch1.lua, read from it) to URL and printing `answered N of M`. MODE `field`
-- posts with socket.http, which opens a connection per request as the field
-- mods do; MODE `mod` posts with bmcp.transport.keepalive(), which the mod's
-- worker uses. It measures nothing itself: perf/mod-transport.sh reads the
-- server's CPU time around a set of these clients. It must never count an
-- answer other than 2xx as answered.
--
-- Usage: luajit mod/bench/transport_cost.lua URL REQUESTS field|mod

local here = arg[0]:gsub("[^/]*$", "")
package.path = here .. "../BalatroMCP/?.lua;" .. package.path
local url, requests, mode = arg[1], tonumber(arg[2]), arg[3]
assert(url and requests and (mode == "field" or mode == "mod"), "usage: transport_cost.lua URL REQUESTS field|mod")

-- The body wrk sends in perf/compare-old-bus.sh, read from its script.
local wrk = { headers = {} }
setfenv(assert(loadfile(here .. "../../perf/wrk/fair-batch1.lua")), { wrk = wrk })()
local body = assert(wrk.body, "perf/wrk/fair-batch1.lua sets no wrk.body")
local headers = { ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) }

local send
if mode == "mod" then
  local transport = require("bmcp.transport").keepalive()
  send = function() return transport({ method = "POST", url = url, body = body, headers = headers }).status end
else
  local http, ltn12 = require("socket.http"), require("ltn12")
  send = function()
    local _, status = http.request({ url = url, method = "POST", headers = headers,
                                     source = ltn12.source.string(body), sink = ltn12.sink.null() })
    return status
  end
end

local answered = 0
for _ = 1, requests do
  local status = send()
  if type(status) == "number" and status >= 200 and status < 300 then answered = answered + 1 end
end
print(string.format("answered %d of %d", answered, requests))

-- HTTP transports for the worker: req -> { status, body, headers, err }.
--
-- Owns: adapting one POST to LuaSocket's socket.http (plain http://, which LÖVE
-- bundles and which also runs under plain LuaJIT in the tests) or to lua-https
-- (the `https` module Steamodded's SMODS.https uses, for https:// URLs).
-- `status` is a number when the server answered, nil with `err` when it did not.
-- Header names in `headers` are lower-case. It must never retry, never sleep and
-- never be called on the game thread: both libraries block until the answer.

local M = {}

--- LuaSocket transport. `http` and `ltn12` may be injected (tests use the real ones).
function M.luasocket(http, ltn12)
  http = http or require("socket.http")
  ltn12 = ltn12 or require("ltn12")
  return function(req)
    http.TIMEOUT = (req.timeout_ms or 5000) / 1000
    local chunks = {}
    local ok, status, headers = http.request({
      url = req.url, method = req.method, headers = req.headers,
      source = ltn12.source.string(req.body), sink = ltn12.sink.table(chunks),
    })
    if not ok or type(status) ~= "number" then
      return { err = tostring(status or "request failed") }
    end
    return { status = status, body = table.concat(chunks), headers = headers or {} }
  end
end

--- lua-https transport (https.request(url, {method, headers, data})).
function M.luahttps(https)
  return function(req)
    local ok, status, body, headers = pcall(https.request, req.url,
      { method = req.method, headers = req.headers, data = req.body })
    if not ok or type(status) ~= "number" or status == 0 then
      return { err = tostring(ok and (body or "no answer") or status) }
    end
    local lower = {}
    for k, v in pairs(headers or {}) do lower[string.lower(k)] = v end
    return { status = status, body = body, headers = lower }
  end
end

--- The transport for a URL: lua-https for https://, LuaSocket otherwise.
function M.for_url(url)
  if url:match("^https://") then
    local ok, https = pcall(require, "https")
    if ok then return M.luahttps(https) end
    ok, https = pcall(require, "SMODS.https")
    if ok then return M.luahttps(https) end
    error("no https module for " .. url)
  end
  return M.luasocket()
end

return M

-- HTTP transports for the worker: req -> { status, body, headers, err }.
--
-- Owns: sending one POST over a kept-alive HTTP/1.1 connection (plain http://,
-- over LuaSocket's TCP, which LÖVE bundles and which also runs under plain
-- LuaJIT in the tests), or through lua-https (the `https` module Steamodded's
-- SMODS.https uses, for https:// URLs). `status` is a number when the server
-- answered, nil with `err` when it did not. Header names in `headers` are
-- lower-case. It must never sleep, never be called on the game thread (both
-- libraries block until the answer) and never retry a request: the sender owns
-- retries and their backoff. The one resend it makes is connection upkeep: a
-- request written into a kept connection that the server had closed while it
-- sat idle, and that got no byte of an answer, goes once more on a new one.
--
-- Why a kept connection: socket.http opens one per request, and a new
-- connection costs the server more CPU than the request on it (docs/perf.md,
-- "Twenty-first pass").

local M = {}

-- The parts of a URL a request needs, cached per URL (the sender uses two).
-- `Host` and, for a URL with a user and password, `Authorization` are what
-- socket.http sends, so a URL that worked with it still does.
local function target_of(url, cache)
  local t = cache[url]
  if t then return t end
  local urls = require("socket.url")
  local u = urls.parse(url)
  if not u or not u.host then return nil end
  local port = tonumber(u.port) or 80
  local path = (u.path and u.path ~= "") and u.path or "/"
  if u.query then path = path .. "?" .. u.query end
  local host = u.host:find(":", 1, true) and ("[" .. u.host .. "]") or u.host
  t = { host = u.host, port = port, path = path, key = u.host .. ":" .. port,
        authority = port == 80 and host or (host .. ":" .. port) }
  if u.user and u.password then
    t.authorization = "Basic " .. require("mime").b64(u.user .. ":" .. urls.unescape(u.password))
  end
  cache[url] = t
  return t
end

local function request_bytes(req, t)
  local lines = { string.format("%s %s HTTP/1.1", req.method or "POST", t.path), "Host: " .. t.authority }
  local given = {}
  for name, value in pairs(req.headers or {}) do
    local lower = string.lower(name)
    given[lower] = true
    if lower ~= "host" and lower ~= "connection" then lines[#lines + 1] = name .. ": " .. tostring(value) end
  end
  local body = req.body or ""
  if not given["content-length"] then lines[#lines + 1] = "Content-Length: " .. #body end
  if t.authorization and not given.authorization then lines[#lines + 1] = "Authorization: " .. t.authorization end
  lines[#lines + 1] = "\r\n"
  return table.concat(lines, "\r\n") .. body
end

-- Reads a chunked body; nil, err when the connection fails inside it.
local function read_chunked(conn)
  local parts = {}
  while true do
    local line, err = conn:receive("*l")
    if not line then return nil, err end
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size line: " .. line:sub(1, 40) end
    if size == 0 then
      repeat -- trailer fields, up to the empty line
        line, err = conn:receive("*l")
        if not line then return nil, err end
      until line == ""
      return table.concat(parts)
    end
    local data, derr = conn:receive(size)
    if not data then return nil, derr end
    parts[#parts + 1] = data
    local crlf, cerr = conn:receive("*l")
    if crlf ~= "" then return nil, cerr or "bad chunk end" end
  end
end

-- Reads a status line and the header fields after it.
local function read_head(conn)
  local line, err, partial = conn:receive("*l")
  if not line then return nil, err, partial == nil or partial == "" end
  local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
  if not status then return nil, "not an HTTP answer: " .. line:sub(1, 60) end
  local headers = {}
  while true do
    line, err = conn:receive("*l")
    if not line then return nil, err end
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = string.lower(name)
      headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
    end
  end
  return { status = status, headers = headers }
end

-- Reads one answer. Returns the answer and whether the connection may carry
-- the next request, or nil, err and whether nothing at all was read.
local function read_answer(conn, method)
  local head, err, nothing = read_head(conn)
  while head and head.status >= 100 and head.status < 200 do head, err, nothing = read_head(conn) end
  if not head then return nil, err, nothing end
  local h, body, keep = head.headers, "", true
  if method == "HEAD" or head.status == 204 or head.status == 304 then
    body = ""
  elseif h["transfer-encoding"] and h["transfer-encoding"]:lower():find("chunked", 1, true) then
    body, err = read_chunked(conn)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"])
    if not n or n < 0 then return nil, "bad Content-Length: " .. h["content-length"] end
    if n > 0 then body, err = conn:receive(n) end
  else
    body, err = conn:receive("*a") -- the body ends where the connection does
    keep = false
  end
  if not body then return nil, err end
  if h.connection and h.connection:lower():find("close", 1, true) then keep = false end
  return { status = head.status, body = body, headers = h }, keep
end

--- Kept-alive HTTP/1.1 over LuaSocket: one connection, reused while the server
--- keeps it.
function M.keepalive()
  local socket = require("socket")
  local targets, conn, conn_key = {}, nil, nil

  local function drop()
    if conn then conn:close() end
    conn, conn_key = nil, nil
  end

  -- A kept connection is usable when nothing is waiting to be read on it: an
  -- idle connection the server closed (its idle timeout) reads as EOF.
  local function usable(key)
    if not conn or conn_key ~= key then return false end
    local readable = socket.select({ conn }, nil, 0)
    return not (readable and readable[1])
  end

  local function connect(t, timeout)
    local c = socket.tcp()
    c:settimeout(timeout)
    local ok, err = c:connect(t.host, t.port)
    if not ok then c:close(); return nil, err end
    c:setoption("tcp-nodelay", true)
    conn, conn_key = c, t.key
    return c
  end

  -- One request on `conn`: the answer and whether to keep the connection,
  -- or nil, err and whether the server closed it without a byte of answer.
  local function exchange(bytes, method)
    local sent, err = conn:send(bytes)
    if not sent then return nil, err, true end
    return read_answer(conn, method)
  end

  local function finish(res, keep_or_err)
    if not res then drop(); return { err = tostring(keep_or_err or "request failed") } end
    if not keep_or_err then drop() end
    return res
  end

  return function(req)
    local t = target_of(req.url, targets)
    if not t then return { err = "bad URL " .. tostring(req.url) } end
    local timeout = (req.timeout_ms or 5000) / 1000
    local bytes = request_bytes(req, t)
    if usable(t.key) then
      conn:settimeout(timeout)
      local res, keep_or_err, unanswered = exchange(bytes, req.method)
      if res or not unanswered or keep_or_err == "timeout" then return finish(res, keep_or_err) end
      -- The server closed the kept connection as the request went out: once
      -- more on a new one.
    end
    drop()
    local connected, err = connect(t, timeout)
    if not connected then return { err = tostring(err) } end
    return finish(exchange(bytes, req.method))
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

--- The transport for a URL: lua-https for https://, a kept-alive LuaSocket
--- connection otherwise.
function M.for_url(url)
  if url:match("^https://") then
    local ok, https = pcall(require, "https")
    if ok then return M.luahttps(https) end
    ok, https = pcall(require, "SMODS.https")
    if ok then return M.luahttps(https) end
    error("no https module for " .. url)
  end
  return M.keepalive()
end

return M

-- A real HTTP/1.1 server on loopback for the transport's tests, run as its own
-- LuaJIT process: `luajit mod/tests/scripted_server.lua ANSWER...`.
--
-- It prints `port N` once it listens, then answers the requests it reads, in
-- order and whatever connection they come on, with the ANSWERs named on its
-- command line, and prints one line per request: `request C METHOD PATH BODY`
-- (C counts connections from 1). It exits when every ANSWER is used. Answers:
--   length   200 with a Content-Length body `{"n":K}` (K counts requests from 1)
--   chunked  200 with the same body in two chunks, after a 100 Continue
--   close    200 with a Content-Length body and `Connection: close`, then closes
--   eof      200 with no length: the body ends where the connection is closed
--   idle     200 like `length`, then closes the idle connection and prints `closed C`
--   drop     closes the connection without answering
--   echo     200 with the request's Host and Authorization as the body: `HOST|AUTHORIZATION`
-- The test reads its output to wait for it: no sleeps. A client that stops
-- short (a failing test) leaves it waiting; it gives up after 20 s of that and
-- prints `gave up`, so the test fails rather than hangs.
local socket = require("socket")
io.stdout:setvbuf("line")

local answers = arg
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(20)
print("port " .. select(2, server:getsockname()))

local function read_request(conn)
  local line = conn:receive("*l")
  if not line then return nil end
  local method, path = line:match("^(%u+) (%S+) HTTP/1%.1$")
  local headers = {}
  repeat
    line = conn:receive("*l")
    if not line then return nil end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  until line == ""
  local length = tonumber(headers["content-length"]) or 0
  local body = length > 0 and conn:receive(length) or ""
  return { method = method, path = path, body = body, headers = headers }
end

-- Writes the answer `kind`; returns whether the connection stays open.
local function answer(conn, kind, n, req)
  local body = string.format('{"n":%d}', n)
  if kind == "echo" then body = (req.headers.host or "") .. "|" .. (req.headers.authorization or "") end
  if kind == "chunked" then
    conn:send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. string.format("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n", 3, body:sub(1, 3), #body - 3, body:sub(4)))
  elseif kind == "eof" then
    conn:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" .. body)
    return false
  elseif kind == "drop" then
    return false
  else
    local close = kind == "close" and "Connection: close\r\n" or ""
    conn:send(string.format("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s", #body, close, body))
    return kind == "length" or kind == "echo"
  end
  return true
end

local used, connections = 0, 0
while used < #answers do
  local conn = server:accept()
  if not conn then print("gave up"); os.exit(1) end
  conn:settimeout(20)
  connections = connections + 1
  local keep = true
  while keep and used < #answers do
    local req = read_request(conn)
    if not req then break end
    used = used + 1
    print(string.format("request %d %s %s %s", connections, req.method, req.path, req.body))
    keep = answer(conn, answers[used], used, req)
  end
  conn:close()
  if answers[used] == "idle" then print("closed " .. connections) end
end

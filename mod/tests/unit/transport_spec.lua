-- The kept-alive transport against a real HTTP server on loopback
-- (mod/tests/scripted_server.lua, its own process): what it sends, how it reads
-- each framing of an answer, when it keeps the connection and when it opens a
-- new one. Synchronisation is the server's printed lines, never a sleep.
package.path = "mod/BalatroMCP/?.lua;mod/tests/?.lua;" .. package.path
local transport = require("bmcp.transport")

-- Starts the server with `answers`; returns its base URL and its output pipe.
local function serve(...)
  local pipe = assert(io.popen("luajit mod/tests/scripted_server.lua " .. table.concat({ ... }, " ")))
  local port = assert(pipe:read("*l"):match("^port (%d+)$"))
  return "http://127.0.0.1:" .. port, pipe
end

-- The rest of the server's output, once it has used every answer and exited.
local function lines_of(pipe)
  local lines = {}
  for line in pipe:lines() do lines[#lines + 1] = line end
  pipe:close()
  return lines
end

local function post(send, url, body)
  return send({ method = "POST", url = url, body = body, timeout_ms = 5000,
                headers = { ["Content-Type"] = "application/json", ["Content-Length"] = tostring(#body) } })
end

describe("the kept-alive transport", function()
  it("sends every request on one connection while the server keeps it", function()
    local base, pipe = serve("length", "chunked", "length")
    local send = transport.keepalive()
    for n = 1, 3 do
      local res = post(send, base .. "/api/v1/events/batch?x=" .. n, "[" .. n .. "]")
      assert.is_nil(res.err)
      assert.equal(200, res.status)
      assert.equal(string.format('{"n":%d}', n), res.body)
    end
    assert.same({ "request 1 POST /api/v1/events/batch?x=1 [1]", "request 1 POST /api/v1/events/batch?x=2 [2]",
                  "request 1 POST /api/v1/events/batch?x=3 [3]" }, lines_of(pipe))
  end)

  it("opens a new connection after an answer that closes it, by header or by its end", function()
    local base, pipe = serve("close", "eof", "length")
    local send = transport.keepalive()
    for n = 1, 3 do
      local res = post(send, base .. "/e", "{}")
      assert.equal(200, res.status)
      assert.equal(string.format('{"n":%d}', n), res.body)
    end
    assert.same({ "request 1 POST /e {}", "request 2 POST /e {}", "request 3 POST /e {}" }, lines_of(pipe))
  end)

  it("goes on a new connection, without an error, after the server closed an idle kept one", function()
    local base, pipe = serve("idle", "length")
    local send = transport.keepalive()
    assert.equal(200, post(send, base .. "/e", "a").status)
    assert.equal("request 1 POST /e a", pipe:read("*l"))
    assert.equal("closed 1", pipe:read("*l")) -- the FIN is on its way before the next request
    local res = post(send, base .. "/e", "b")
    assert.is_nil(res.err)
    assert.equal('{"n":2}', res.body)
    assert.same({ "request 2 POST /e b" }, lines_of(pipe))
  end)

  it("sends once more on a new connection a request a kept one closed unanswered", function()
    local base, pipe = serve("length", "drop", "length")
    local send = transport.keepalive()
    assert.equal(200, post(send, base .. "/e", "a").status)
    local res = post(send, base .. "/e", "b")
    assert.is_nil(res.err)
    assert.equal('{"n":3}', res.body)
    assert.same({ "request 1 POST /e a", "request 1 POST /e b", "request 2 POST /e b" }, lines_of(pipe))
  end)

  it("reports, and does not resend, a request a new connection closed unanswered", function()
    local base, pipe = serve("drop", "length")
    local send = transport.keepalive()
    local res = post(send, base .. "/e", "a")
    assert.is_nil(res.status)
    assert.equal("closed", res.err)
    assert.equal(200, post(send, base .. "/e", "b").status) -- the sender's retry, not the transport's
    assert.same({ "request 1 POST /e a", "request 2 POST /e b" }, lines_of(pipe))
  end)

  it("sends the Host and, for a URL with a user and password, the Authorization socket.http sent", function()
    local base, pipe = serve("echo", "echo")
    local send = transport.keepalive()
    local authority = base:match("^http://(.*)$")
    assert.equal(authority .. "|", post(send, base .. "/e", "a").body)
    local with_user = "http://jim:pa%20ss@" .. authority .. "/e"
    assert.equal(authority .. "|Basic " .. require("mime").b64("jim:pa ss"), post(send, with_user, "b").body)
    lines_of(pipe)
  end)

  it("reports a refused connection as an error, not a status", function()
    local base, pipe = serve("length")
    assert.equal(200, post(transport.keepalive(), base .. "/e", "x").status)
    lines_of(pipe) -- the server has exited: its port is closed
    local res = post(transport.keepalive(), base .. "/e", "y")
    assert.is_nil(res.status)
    assert.truthy(res.err)
  end)
end)

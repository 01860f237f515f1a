-- Batching, ordering, retries and the breaker in the worker's send loop,
-- against a fake clock and a scripted fake HTTP transport.
local fakes = require("fakes")

local function all_ids(transport, ok_only)
  local ids = {}
  for _, req in ipairs(transport.requests) do
    if req.url:match("/batch$") and (not ok_only or req.ok) then
      for _, id in ipairs(fakes.batch_ids(req)) do ids[#ids + 1] = id end
    end
  end
  return ids
end

describe("batching", function()
  it("waits for the window, then makes exactly one request for the batch", function()
    local s, inbox, t, clock = fakes.sender()
    local ids = fakes.emit(inbox, 7)
    assert.equal(100, s:step()) -- window not over yet
    assert.equal(0, #t.requests)
    clock.advance(100)
    s:step()
    assert.equal(1, #t.requests)
    assert.equal("http://test/api/v1/events/batch", t.requests[1].url)
    assert.same(ids, fakes.batch_ids(t.requests[1]))
    assert.is_nil(s:step()) -- idle
  end)

  it("sends a full batch at once and splits a 5,000-trigger cascade without dropping", function()
    local s, inbox, t, clock = fakes.sender({ config = { max_batch_size = 50 } })
    local ids = fakes.emit(inbox, 5000, nil, "SCORING")
    assert.is_true(fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end))
    assert.equal(100, #t.requests)
    assert.same(ids, all_ids(t))
    assert.equal(5000, s.stats.acked)
  end)

  it("keeps two GAME_STATE events of one frame as two events", function()
    local s, inbox, t, clock = fakes.sender()
    fakes.emit(inbox, 2, nil, "GAME_STATE")
    fakes.run(s, clock, function() return #t.requests == 1 end)
    assert.equal(2, #fakes.batch_ids(t.requests[1]))
  end)

  it("puts a failed batch back at the front in its original order, with the same batch id", function()
    local script = { fakes.down(), fakes.ok() }
    local s, inbox, t, clock = fakes.sender({ transport = fakes.transport(script), config = { max_batch_size = 5 } })
    local ids = fakes.emit(inbox, 12)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    local first, retry = t.requests[1], t.requests[2]
    assert.same(fakes.batch_ids(first), fakes.batch_ids(retry))
    assert.equal(first.body:match('"batch_id":"(.-)"'), retry.body:match('"batch_id":"(.-)"'))
    local sent = {}
    for i = 2, #t.requests do for _, id in ipairs(fakes.batch_ids(t.requests[i])) do sent[#sent + 1] = id end end
    assert.same(ids, sent)
    assert.truthy(s.logs[1]:match("batch b%-t%-1 failed.*events s%-1%.%.s%-5 %(5%), attempt 1, status=nil, err=connection refused, duration=%d+ms"))
  end)

  it("backs off exponentially between retries and honours Retry-After", function()
    local at, clock = {}, fakes.clock(0)
    local answers = { { status = 503, headers = { ["retry-after"] = "2" } }, fakes.down(), fakes.down(), fakes.ok() }
    local s, inbox, t = fakes.sender({ clock = clock, config = { breaker_threshold = 10, max_retries = 10 },
      transport = fakes.transport(function(_, n) at[n] = clock.now(); return answers[n] end) })
    fakes.emit(inbox, 1)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    assert.equal(4, #t.requests)
    assert.is_true(at[2] - at[1] >= 2000) -- Retry-After: 2 beats the 10 ms backoff
    assert.is_true(at[3] - at[2] >= 20 and at[3] - at[2] < 40) -- base 10 * 2^1, no jitter
    assert.is_true(at[4] - at[3] >= 40 and at[4] - at[3] < 60)
  end)

  it("treats 400 as dead-lettered by the server and splits on 413", function()
    local s, inbox, t, clock = fakes.sender({ transport = fakes.transport(function(req, n)
      if n == 1 then return { status = 413 } end
      if n == 2 then return { status = 400 } end
      return fakes.ok()
    end), config = { max_batch_size = 10 } })
    local ids = fakes.emit(inbox, 10)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    assert.equal(10, #fakes.batch_ids(t.requests[1]))
    assert.equal(5, #fakes.batch_ids(t.requests[2]))
    assert.equal(5, s.stats.dead_lettered)
    assert.same({ unpack(ids, 6, 10) }, fakes.batch_ids(t.requests[3]))
  end)
end)

describe("an event the server can never take", function()
  it("is dropped, logged and counted instead of holding back the events behind it", function()
    local s, inbox, t, clock = fakes.sender({ transport = fakes.transport(function(req)
      if req.body:find('"money":2}', 1, true) then return { status = 413 } end
      return fakes.ok()
    end), config = { max_batch_size = 4 } })
    local ids = fakes.emit(inbox, 4)
    assert.is_true(fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end, 200))
    assert.equal(1, s.stats.too_large)
    assert.equal(4, s.stats.acked)
    local last = t.requests[#t.requests]
    assert.same({ ids[3], ids[4] }, fakes.batch_ids(last))
    assert.truthy(table.concat(s.logs, "\n"):match("one event larger than the server takes"))
  end)
end)

describe("breaker in the send loop", function()
  it("opens after 3 failed requests, probes {url}/health, and closes on success", function()
    local up = false
    local s, inbox, t, clock = fakes.sender({ transport = fakes.transport(function(req)
      if up then return fakes.ok() end
      return fakes.down()
    end), config = { max_retries = 99, breaker_reset_ms = 500 } })
    fakes.emit(inbox, 3)
    fakes.run(s, clock, function() return s.breaker.state == "open" end)
    assert.equal(3, #t.requests)
    -- while open: no requests until the reset timeout
    local n = #t.requests
    s:step()
    assert.equal(n, #t.requests)
    clock.advance(500)
    s:step() -- half-open: health probe, still down -> open again
    assert.equal("http://test/api/v1/events/health", t.requests[n + 1].url)
    assert.equal("{}", t.requests[n + 1].body)
    assert.equal("open", s.breaker.state)
    up = true
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    assert.equal("closed", s.breaker.state)
    assert.equal(3, s.stats.acked)
  end)

  it("keeps pending events on disk while unhealthy", function()
    local s, inbox, t, clock = fakes.sender({ transport = fakes.transport({ fakes.down() }) })
    fakes.emit(inbox, 20)
    fakes.run(s, clock, function() return s.breaker.state == "open" end)
    fakes.emit(inbox, 5)
    s:step()
    assert.equal(25, s.queue:disk_len())
    assert.equal(0, s.queue:mem_len())
  end)
end)

describe("answers and start-up", function()
  it("logs each event the server rejected inside a 2xx answer, with its reason", function()
    local body = '{"status":"ok","accepted":2,"duplicates":0,"rejected":[{"index":1,"error":"payload.ante: below 0"}]}'
    local s, inbox, _, clock = fakes.sender({ transport = fakes.transport({ { status = 200, body = body, headers = {} } }) })
    local ids = fakes.emit(inbox, 3)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    assert.equal(1, s.stats.rejected)
    assert.truthy(s.logs[1]:match("event " .. ids[2]:gsub("%-", "%%-") .. " %(index 1%) rejected by the server: payload.ante: below 0"))
  end)

  it("waits retry_delay_ms before the first retry", function()
    local at, clock = {}, fakes.clock(0)
    local settings = require("bmcp.settings")
    local c = settings.resolve(dofile("mod/BalatroMCP/config.lua"), { retry_delay_ms = 300, backoff_jitter = 0,
      event_bus_url = "http://test/api/v1/events", connection_test = false, claim_ms = 0 })
    local s, inbox = fakes.sender({ clock = clock, config = c,
      transport = fakes.transport(function(_, n) at[n] = clock.now(); return n == 1 and fakes.down() or fakes.ok() end) })
    fakes.emit(inbox, 1)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    local gap = at[2] - at[1]
    assert.is_true(gap >= 300 and gap < 310, "first retry after " .. gap .. " ms")
  end)

  it("posts the field mod's connection_test to {url} once, at start", function()
    local s, inbox, t, clock = fakes.sender({ config = { connection_test = true } })
    fakes.emit(inbox, 1)
    fakes.run(s, clock, function() return s.queue:len() == 0 and inbox:getCount() == 0 end)
    assert.equal("http://test/api/v1/events", t.requests[1].url)
    local body = require("cjson").decode(t.requests[1].body)
    assert.same({ type = "connection_test", source = "BalatroMCP", data = { message = "Testing event bus connection" },
                  timestamp = body.timestamp }, body)
    assert.equal(2, #t.requests)
  end)
end)

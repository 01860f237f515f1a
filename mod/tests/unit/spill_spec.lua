-- Spilling to the file and replaying it after a game restart.
local fakes = require("fakes")
local spillq = require("bmcp.spillq")

local function lines(n, from)
  local b = require("bmcp.events").new({ session_id = "s", first_sequence = from or 1, epoch_ms = function() return 1 end })
  local out = {}
  for i = 1, n do out[i] = spillq.record((b:build("GAME_STATE", nil, { i = i }))) end
  return out
end

describe("spill queue", function()
  it("spills beyond the memory cap and hands events out oldest first", function()
    local fs = fakes.memfs()
    local q = spillq.new({ fs = fs, path = "p", mem_cap = 10 })
    for _, r in ipairs(lines(25)) do q:push(r) end
    assert.equal(25, q:len())
    assert.is_true(q.disk_count >= 10)
    local got = {}
    while q:len() > 0 do
      for _, r in ipairs(q:peek(7)) do got[#got + 1] = r.seq end
      q:commit()
    end
    for i = 1, 25 do assert.equal(i, got[i]) end
    assert.is_nil(fs.files["p"]) -- removed once drained
  end)

  it("survives a restart: a new queue on the same file replays from the acked offset", function()
    local fs = fakes.memfs()
    local q = spillq.new({ fs = fs, path = "p", mem_cap = 100 })
    for _, r in ipairs(lines(30)) do q:push(r) end
    q:spill()
    q:peek(10); q:commit() -- 1..10 acked
    q:peek(5); q:release() -- 11..15 failed: stay
    for _, r in ipairs(lines(5, 31)) do q:push(r) end -- in memory only: lost by a crash
    local q2 = spillq.new({ fs = fs, path = "p", mem_cap = 100 })
    assert.equal(20, q2:len())
    assert.equal(20, q2.stats.loaded)
    local recs = q2:peek(100)
    assert.equal(11, recs[1].seq); assert.equal(30, recs[20].seq)
    assert.equal("s-11", recs[1].id)
  end)

  it("ignores a torn last line", function()
    local fs = fakes.memfs()
    local q = spillq.new({ fs = fs, path = "p" })
    for _, r in ipairs(lines(3)) do q:push(r) end
    q:spill()
    fs.files["p"] = fs.files["p"] .. '{"event_id":"s-4","sess'
    local q2 = spillq.new({ fs = fs, path = "p" })
    assert.equal(3, q2:len())
    assert.equal(3, #q2:peek(10))
  end)

  it("drops only when memory and disk are both full, and counts and logs it", function()
    local fs, logs = fakes.memfs(), {}
    local recs = lines(40)
    local q = spillq.new({ fs = fs, path = "p", mem_cap = 5, disk_max_bytes = #recs[1].line * 10 + 12,
      log = function(m) logs[#logs + 1] = m end })
    local kept = 0
    for _, r in ipairs(recs) do if q:push(r) then kept = kept + 1 end end
    assert.equal(40 - kept, q.stats.dropped)
    assert.is_true(q.stats.dropped > 0)
    assert.equal(kept, q:len())
    assert.truthy(logs[1]:match("^DROP event s%-%d+"))
    -- what was kept is a contiguous, ordered prefix
    local got = q:peek(100)
    for i, r in ipairs(got) do assert.equal(i, r.seq) end
  end)

  it("works on real files through the io adapter", function()
    local path = os.tmpname()
    os.remove(path)
    local fs = require("bmcp.fs").io()
    local q = spillq.new({ fs = fs, path = path, mem_cap = 100 })
    for _, r in ipairs(lines(50)) do q:push(r) end
    q:spill(); q:peek(20); q:commit()
    local q2 = spillq.new({ fs = fs, path = path })
    assert.equal(30, q2:len())
    assert.equal(21, q2:peek(1)[1].seq)
    q2:commit()
    os.remove(path); os.remove(path .. ".pos")
  end)
end)

describe("sender across a game restart", function()
  it("replays the spill file first, then new events, all in order", function()
    local fs = fakes.memfs()
    local s1, inbox1, _, clock = fakes.sender({ fs = fs, transport = fakes.transport({ fakes.down() }) })
    local old = fakes.emit(inbox1, 30)
    fakes.run(s1, clock, function() return s1.breaker.state == "open" end)
    -- restart: s1 and its memory are gone
    local t2 = fakes.transport({ fakes.ok() })
    local s2, inbox2 = fakes.sender({ fs = fs, transport = t2, clock = clock })
    local new = fakes.emit(inbox2, 5, require("bmcp.events").new({ session_id = "s2" }))
    fakes.run(s2, clock, function() return s2.queue:len() == 0 and inbox2:getCount() == 0 end)
    local sent = {}
    for _, req in ipairs(t2.requests) do for _, id in ipairs(fakes.batch_ids(req)) do sent[#sent + 1] = id end end
    local want = {}
    for _, id in ipairs(old) do want[#want + 1] = id end
    for _, id in ipairs(new) do want[#want + 1] = id end
    assert.same(want, sent)
    assert.is_nil(fs.files["spill.jsonl"])
  end)
end)

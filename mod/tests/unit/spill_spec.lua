-- Spilling to the per-instance log and replaying it after a game restart; what a
-- reload trusts (only frames it can read back), full disks, shared save folders.
local fakes = require("fakes")
local spillq = require("bmcp.spillq")
local spillfile = require("bmcp.spillfile")

local function lines(n, from, session)
  local b = require("bmcp.events").new({ session_id = session or "s", first_sequence = from or 1,
                                         epoch_ms = function() return 1 end })
  local out = {}
  for i = 1, n do out[i] = spillq.record((b:build("GAME_STATE", nil, { i = i }))) end
  return out
end

local function queue(fs, over)
  local opts = { fs = fs, dir = "d", instance = "a", mem_cap = 100, clock = function() return 0 end, claim_ms = 0 }
  for k, v in pairs(over or {}) do opts[k] = v end
  return spillq.new(opts)
end

-- Drains a queue, returning the sequences in the order handed out.
local function drain(q, n)
  local got = {}
  while q:len() > 0 or q:has_disk() do
    local recs = q:peek(n or 7)
    if #recs == 0 then break end
    for _, r in ipairs(recs) do got[#got + 1] = r.seq end
    q:commit()
  end
  return got
end

local function range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  return t
end

describe("spill queue", function()
  it("spills beyond the memory cap and hands events out oldest first", function()
    local fs = fakes.memfs()
    local q = queue(fs, { mem_cap = 10 })
    for _, r in ipairs(lines(25)) do q:push(r) end
    assert.equal(25, q:len())
    assert.is_true(q:disk_len() >= 10)
    assert.same(range(1, 25), drain(q))
    assert.same({ "a.lease" }, fs.list("d")) -- the log is removed once drained
  end)

  it("survives a restart: a new queue on the same log replays from the acked position", function()
    local fs = fakes.memfs()
    local q = queue(fs)
    for _, r in ipairs(lines(30)) do q:push(r) end
    q:spill()
    q:peek(10); q:commit() -- 1..10 acked
    q:peek(5); q:release() -- 11..15 failed: stay
    for _, r in ipairs(lines(5, 31)) do q:push(r) end -- in memory only: lost by a crash
    local q2 = queue(fs)
    assert.equal(20, q2:len())
    assert.equal(20, q2.stats.loaded)
    local recs = q2:peek(100)
    assert.equal(11, recs[1].seq); assert.equal(30, recs[20].seq)
    assert.equal("s-11", recs[1].id)
  end)

  it("trusts only frames it can read back: a torn tail and garbage in the middle are skipped", function()
    local fs = fakes.memfs()
    local q = queue(fs)
    for _, r in ipairs(lines(3)) do q:push(r) end
    q:spill()
    local seg = "d/a.1.q"
    local frame4 = spillfile.frame(lines(1, 4)[1].line)
    fs.files[seg] = fs.files[seg] .. frame4:sub(1, 40) .. spillfile.frame(lines(1, 5)[1].line) .. frame4:sub(1, 30)
    local logs = {}
    local q2 = queue(fs, { log = function(m) logs[#logs + 1] = m end })
    assert.equal(4, q2:len()) -- 1, 2, 3 and 5
    assert.same({ 1, 2, 3, 5 }, drain(q2))
    assert.truthy(table.concat(logs, "\n"):match("unreadable bytes skipped"))
  end)

  it("never stalls when counters and the file disagree", function()
    local fs = fakes.memfs()
    local q = queue(fs)
    for _, r in ipairs(lines(5)) do q:push(r) end
    q:spill()
    q.file.count = 50 -- the counter says more than the file holds
    assert.same(range(1, 5), drain(q))
    assert.is_false(q:has_disk())
    assert.same({}, q:peek(10))
    assert.equal(0, q:len()) -- nothing left to wait for
    fs.files["d/a.1.q"] = "not a frame at all" -- bytes on disk, nothing readable
    assert.same({}, q:peek(10))
    assert.is_false(q:has_disk())
  end)

  it("a torn position slot falls back to the other one", function()
    local fs = fakes.memfs()
    local q = queue(fs)
    for _, r in ipairs(lines(20)) do q:push(r) end
    q:spill()
    q:peek(5); q:commit()
    q:peek(5); q:commit() -- acked 1..10; the newest slot says so
    local newest = q.file.gen % 2 == 0 and "d/a.pos.a" or "d/a.pos.b"
    fs.files[newest] = fs.files[newest]:sub(1, 5) -- torn
    local q2 = queue(fs)
    assert.equal(6, q2:peek(1)[1].seq) -- the previous position: 6..10 re-sent, never skipped
  end)

  it("a partial append on a full disk keeps the events in memory; later appends read back in order", function()
    local fs = fakes.memfs()
    local q = queue(fs, { mem_cap = 1000 })
    for _, r in ipairs(lines(10)) do q:push(r) end
    q:spill()
    fs.full_after = #fs.files["d/a.1.q"] + 100 + #"a\n" * 2
    for _, r in ipairs(lines(10, 11)) do q:push(r) end
    assert.equal(0, q:spill()) -- partial write: nothing counted as spilled
    assert.equal(1, q.stats.spill_failures)
    assert.equal(10, q:mem_len())
    fs.full_after = nil
    q.spill_retry_at = 0
    assert.equal(10, q:spill())
    local q2 = queue(fs)
    assert.same(range(1, 20), drain(q2))
  end)

  it("drops only when memory is full and the disk refuses, and counts and logs it", function()
    local fs, logs = fakes.memfs(), {}
    fs.full_after = 0
    local q = queue(fs, { mem_cap = 5, log = function(m) logs[#logs + 1] = m end })
    local kept = 0
    for _, r in ipairs(lines(40)) do if q:push(r) then kept = kept + 1 end end
    assert.equal(5, kept)
    assert.equal(35, q.stats.dropped)
    assert.truthy(table.concat(logs, "\n"):match("DROP event s%-6"))
    assert.same(range(1, 5), drain(q)) -- what was kept is the contiguous oldest part
  end)

  it("drops beyond the byte limit too", function()
    local fs = fakes.memfs()
    local recs = lines(40)
    local q = queue(fs, { mem_cap = 5, disk_max_bytes = (#recs[1].line + 18) * 10 })
    local kept = 0
    for _, r in ipairs(recs) do if q:push(r) then kept = kept + 1 end end
    assert.is_true(kept >= 13 and kept <= 15, "kept " .. kept)
    assert.equal(40 - kept, q.stats.dropped)
    assert.same(range(1, kept), drain(q, 3))
  end)

  it("rolls segments and deletes each one once acknowledged", function()
    local fs = fakes.memfs()
    local q = queue(fs, { seg_bytes = 1000 })
    for i, r in ipairs(lines(60)) do q:push(r); if i % 10 == 0 then q:spill() end end
    assert.is_true(q.file.last > 2)
    q:peek(30); q:commit()
    assert.is_nil(fs.files["d/a.1.q"])
    local q2 = queue(fs)
    assert.same(range(31, 60), drain(q2))
  end)

  it("two game instances in one save folder keep separate logs", function()
    local fs = fakes.memfs()
    local a, b = queue(fs, { instance = "a" }), queue(fs, { instance = "b" })
    for i, r in ipairs(lines(30, 1, "sa")) do a:push(r); b:push(lines(1, i, "sb")[1]); if i % 7 == 0 then a:spill(); b:spill() end end
    a:spill(); b:spill()
    assert.equal(0, #a.orphans); assert.equal(0, #b.orphans) -- both leases are fresh
    assert.same(range(1, 30), drain(a, 4))
    assert.same(range(1, 30), drain(b, 6))
  end)

  it("adopts the log of an instance that quit or whose lease went stale", function()
    local fs = fakes.memfs()
    local a = queue(fs, { instance = "a" })
    for _, r in ipairs(lines(12, 1, "old")) do a:push(r) end
    a:spill()
    local b = queue(fs, { instance = "b" })
    assert.equal(0, #b.orphans) -- a is alive
    fs.clock_s = fs.clock_s + 31
    local c = queue(fs, { instance = "c" })
    assert.equal(1, #c.orphans)
    for _, r in ipairs(lines(3, 1, "new")) do c:push(r) end
    local got = {}
    while c:len() > 0 do
      for _, r in ipairs(c:peek(5)) do got[#got + 1] = r.id end
      c:commit()
    end
    assert.equal("old-1", got[1]); assert.equal("old-12", got[12]); assert.equal("new-3", got[15])
    assert.is_nil(fs.files["d/a.1.q"])
    -- a released lease (the game quit) is adopted at once
    local d = queue(fs, { instance = "d" })
    for _, r in ipairs(lines(2, 1, "q")) do d:push(r) end
    d:spill(); d:release_leases()
    local e = queue(fs, { instance = "e" })
    assert.equal(1, #e.orphans)
  end)

  it("a game whose log was adopted while it stalled leaves that log and writes a new one", function()
    local fs = fakes.memfs()
    local a = queue(fs, { instance = "a" })
    for _, r in ipairs(lines(5, 1, "sa")) do a:push(r) end
    a:spill()
    fs.clock_s = fs.clock_s + 31 -- a stalled: its lease went stale
    local b = queue(fs, { instance = "b" })
    assert.equal(1, #b.orphans)
    a:touch() -- a wakes up
    assert.equal("a+1", a.file.instance)
    for _, r in ipairs(lines(3, 6, "sa")) do a:push(r) end
    a:spill()
    local got = {}
    while b:len() > 0 do
      for _, r in ipairs(b:peek(10)) do got[#got + 1] = r.seq end
      b:commit()
    end
    assert.same(range(1, 5), got) -- b replays the old log
    assert.same(range(6, 8), drain(a)) -- a sends only its new one
    a:release_leases()
    assert.is_nil(fs.files["d/a+1.lease"])
  end)

  it("works on real files through the io adapter", function()
    local dir = os.tmpname()
    os.remove(dir)
    local fs = require("bmcp.fs").io()
    local q = queue(fs, { dir = dir })
    for _, r in ipairs(lines(50)) do q:push(r) end
    q:spill(); q:peek(20); q:commit()
    local q2 = queue(fs, { dir = dir })
    assert.equal(30, q2:len())
    assert.equal(21, q2:peek(1)[1].seq)
    q2:release()
    assert.same(range(21, 50), drain(q2))
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

describe("sender across a game restart", function()
  it("replays the log the last game left first, then new events, all in order", function()
    local fs = fakes.memfs()
    local s1, inbox1, _, clock = fakes.sender({ fs = fs, transport = fakes.transport({ fakes.down() }), instance = "g1" })
    local old = fakes.emit(inbox1, 30)
    fakes.run(s1, clock, function() return s1.breaker.state == "open" end)
    s1.queue:release_leases() -- the game quit; s1 and its memory are gone
    local t2 = fakes.transport({ fakes.ok() })
    local s2, inbox2 = fakes.sender({ fs = fs, transport = t2, clock = clock, instance = "g2" })
    local new = fakes.emit(inbox2, 5, require("bmcp.events").new({ session_id = "s2" }))
    fakes.run(s2, clock, function() return s2.queue:len() == 0 and inbox2:getCount() == 0 end)
    local sent = {}
    for _, req in ipairs(t2.requests) do for _, id in ipairs(fakes.batch_ids(req)) do sent[#sent + 1] = id end end
    local want = {}
    for _, id in ipairs(old) do want[#want + 1] = id end
    for _, id in ipairs(new) do want[#want + 1] = id end
    assert.same(want, sent)
    assert.is_nil(fs.files["spill/g1.1.q"])
  end)
end)

-- The batcher: when to send, and what one batch is.
--
-- Owns: the batch window (a batch is due once its oldest event has waited
-- window_ms, or as soon as max_batch_size events are pending, or at once when
-- spilled events are waiting), batch ids, and the batch body. Exactly one HTTP
-- request carries one batch; a retry re-sends the same batch id and the same
-- event bytes. Order is the queue's order: nothing is sorted, merged or
-- collapsed (two GAME_STATE events in one frame are two events). There is no
-- cap that drops events: a 5,000-trigger cascade is simply many batches.
-- It must never do I/O or talk to the network; it must never re-encode events.

local json = require("bmcp.json")

local M = {}

local B = {}
B.__index = B

--- opts: queue (bmcp.spillq), window_ms, max_batch_size, source, instance (a
--- token that makes batch ids unique across game restarts), epoch_ms().
function M.new(opts)
  return setmetatable({
    queue = opts.queue,
    window_ms = opts.window_ms or 100,
    max = opts.max_batch_size or 50,
    source = opts.source or "BalatroMCP",
    instance = opts.instance or tostring(os.time()),
    epoch_ms = opts.epoch_ms or function() return os.time() * 1000 end,
    count = 0,
    flush_requested = false,
  }, B)
end

function B:add(rec) return self.queue:push(rec) end
function B:pending() return self.queue:len() end

--- Makes the next batch due now, whatever the window says (e.g. on quit).
function B:flush() self.flush_requested = true end

--- Milliseconds until a batch is due: 0 means now, nil means nothing pending.
function B:wait_ms(now)
  local n = self.queue:len()
  if n == 0 then self.flush_requested = false; return nil end
  if n >= self.max or self.flush_requested then return 0 end
  local oldest = self.queue:oldest_time() or now
  return math.max(0, oldest + self.window_ms - now)
end

function B:due(now) return self:wait_ms(now) == 0 end

--- The next batch: the oldest pending events, at most max_batch_size of them.
function B:take()
  local recs = self.queue:peek(self.max)
  if #recs == 0 then return nil end
  if not self.current then
    self.count = self.count + 1
    self.current = { id = "b-" .. self.instance .. "-" .. self.count, attempt = 0 }
  end
  local batch = self.current
  batch.records, batch.first, batch.last = recs, recs[1].id, recs[#recs].id
  return batch
end

--- The request body of a batch (the field mod's envelope, strict JSON).
function B:body(batch)
  local lines = {}
  for i, r in ipairs(batch.records) do lines[i] = r.line end
  return '{"batch_id":' .. json.encode_string(batch.id) .. ',"source":' .. json.encode_string(self.source)
    .. ',"timestamp":' .. json.encode_number(self.epoch_ms()) .. ',"events":[' .. table.concat(lines, ",") .. "]}"
end

--- The server kept the batch: its events leave the queue.
function B:ack()
  self.queue:commit()
  self.current = nil
  if self.queue:len() == 0 then self.flush_requested = false end
end

--- The batch failed: it stays at the front, same events, same order, same id.
function B:requeue()
  self.queue:release()
end

return M

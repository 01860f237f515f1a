-- Resolves the mod's configuration.
--
-- Owns: merging the player's config over the defaults in config.lua, filling the
-- keys whose default depends on another key, and the names of the channels that
-- join the game thread and the worker. It must never read files or touch the game.

local M = {}

M.channels = { events = "balatromcp.events", control = "balatromcp.control",
               stats = "balatromcp.stats", log = "balatromcp.log", done = "balatromcp.done" }

--- defaults: the table config.lua returns; user: overrides (may be nil).
function M.resolve(defaults, user)
  local c = {}
  for k, v in pairs(defaults or {}) do c[k] = v end
  for k, v in pairs(user or {}) do c[k] = v end
  -- retry_delay_ms (the field mod's key) is the backoff base unless
  -- backoff_base_ms is set explicitly.
  c.backoff_base_ms = (user and user.backoff_base_ms) or c.retry_delay_ms or 1000
  c.event_bus_url = (c.event_bus_url or "http://localhost:8080/api/v1/events"):gsub("/+$", "")
  return c
end

return M

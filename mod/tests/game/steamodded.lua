-- The part of Steamodded a mod sees, as Steamodded provides it: NFS (nativefs:
-- file access outside the save folder), SMODS.current_mod (the mod's absolute
-- path with a trailing slash, and its config table) while its main file runs,
-- sendInfoMessage (the console logger), and loading a mod's main file during
-- love.load. It must never know what the mod does.

local M = {}

NFS = {}
function NFS.read(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot open " .. path end
  local data = f:read("*a")
  f:close()
  return data
end
function NFS.getInfo(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:close()
  return { type = "file", size = size }
end

SMODS = { NFS = NFS, Mods = {} }

function sendInfoMessage(message, logger)
  print(string.format("INFO - [%s] %s", logger or "DefaultLogger", tostring(message)))
end

--- Runs a mod's main file as Steamodded does: path ends with "/", config is
--- the mod's config table (Steamodded's saved settings over its config.lua).
function M.load_mod(id, path, config)
  if path:sub(-1) ~= "/" then path = path .. "/" end
  local mod = { id = id, path = path, config = config or {} }
  SMODS.Mods[id] = mod
  SMODS.current_mod = mod
  local src = assert(NFS.read(path .. "main.lua"))
  local chunk = assert(loadstring(src, '=[SMODS ' .. id .. ' "main.lua"]'))
  chunk()
  SMODS.current_mod = nil
  return mod
end

--- A JSON encoder for the harness's own output when no mod is loaded.
function M.rxi_json(mod_path)
  local path = mod_path:gsub("/+$", "") .. "/bmcp/vendor/rxi_json.lua"
  return assert(loadstring(assert(NFS.read(path)), "=rxi_json"))()
end

return M

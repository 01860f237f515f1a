-- File access for the spill log, behind a few small functions.
--
-- Owns: two adapters with the same interface, one over Lua's io (tests, tools)
-- and one over love.filesystem (in game: paths are relative to the save folder,
-- which also works for non-ASCII user names on Windows where io.open fails).
--   read_at(path, offset, n) -> string or nil   append(path, data) -> ok, err
--   write(path, data) -> ok, err                 remove(path)
--   size(path) -> bytes or nil                   mkdir(path)
--   list(dir) -> { names }                       modtime(path) -> epoch s or nil
--   now() -> epoch s (the clock modtime is compared with)
-- It must never interpret the data and never be called from the game thread.

local M = {}

function M.io()
  local fs = {}
  function fs.read_at(path, offset, n)
    local f = io.open(path, "rb")
    if not f then return nil end
    f:seek("set", offset)
    local data = f:read(n)
    f:close()
    return data
  end
  function fs.append(path, data)
    local f, err = io.open(path, "ab")
    if not f then return nil, err end
    local ok, werr = f:write(data)
    f:close()
    return ok and true or nil, werr
  end
  function fs.write(path, data)
    local tmp = path .. ".tmp"
    local f, err = io.open(tmp, "wb")
    if not f then return nil, err end
    f:write(data)
    f:close()
    -- rename over the old file so a crash leaves either version, not half of one
    os.remove(path)
    return os.rename(tmp, path)
  end
  function fs.remove(path) os.remove(path) end
  function fs.mkdir(path) os.execute("mkdir -p '" .. path .. "'") end
  function fs.list(dir)
    local names, p = {}, io.popen("ls -1 '" .. dir .. "' 2>/dev/null")
    for name in p:lines() do names[#names + 1] = name end
    p:close()
    return names
  end
  function fs.modtime(path)
    local p = io.popen("stat -c %Y '" .. path .. "' 2>/dev/null")
    local t = tonumber(p:read("*l") or "")
    p:close()
    return t
  end
  function fs.now() return os.time() end
  function fs.size(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local n = f:seek("end")
    f:close()
    return n
  end
  return fs
end

function M.love(lfs)
  local fs = {}
  function fs.read_at(path, offset, n)
    local f = lfs.newFile(path)
    if not f:open("r") then return nil end
    f:seek(offset)
    local data = f:read(n)
    f:close()
    return data
  end
  function fs.append(path, data) return lfs.append(path, data) end
  function fs.write(path, data) return lfs.write(path, data) end
  function fs.list(dir) return lfs.getDirectoryItems(dir) end
  function fs.modtime(path)
    local info = lfs.getInfo(path)
    return info and info.modtime or nil
  end
  function fs.now() return os.time() end
  function fs.remove(path) lfs.remove(path) end
  function fs.size(path)
    local info = lfs.getInfo(path)
    return info and info.size or nil
  end
  function fs.mkdir(path) lfs.createDirectory(path) end
  return fs
end

return M

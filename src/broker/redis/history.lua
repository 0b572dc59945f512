-- A history read of one channel, atomically with its position (see the module doc of
-- src/broker/redis). Creates nothing.
--
-- KEYS[1] rpchub:{CH}:meta   KEYS[2] rpchub:{CH}:stream
-- ARGV[1] "n" (the newest LIMIT) or "a" (the first LIMIT after OFFSET)
-- ARGV[2] OFFSET   ARGV[3] LIMIT (-1: all kept)   ARGV[4] history size   ARGV[5] history ttl in ms
-- Returns {} when the channel has no meta, else {epoch, offset, entries oldest first}, each entry
-- as XRANGE gives it: {id, {field, value, ...}}.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] or not meta[2] then
  return {}
end
local offset, size, limit = tonumber(meta[2]), tonumber(ARGV[4]), tonumber(ARGV[3])
if limit < 0 or limit > size then
  limit = size
end
local out = {}
if limit == 0 then
  return {meta[1], meta[2], out}
end
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[5])
-- The newest `size` only, whatever the stream still holds (the size may have been lowered).
local first = math.max(offset - size + 1, 1)
local function fresh(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then
      return tonumber(fields[i + 1]) > oldest
    end
  end
  return false
end
if ARGV[1] == 'n' then
  local got = redis.call('XREVRANGE', KEYS[2], '+', first .. '-0', 'COUNT', limit)
  for i = #got, 1, -1 do
    if fresh(got[i]) then
      out[#out + 1] = got[i]
    end
  end
else
  local from = math.max(tonumber(ARGV[2]) + 1, first)
  -- Publications older than the ttl are the oldest ones: skip them and read on.
  while #out < limit do
    local want = limit - #out
    local got = redis.call('XRANGE', KEYS[2], from .. '-0', '+', 'COUNT', want)
    for i = 1, #got do
      if fresh(got[i]) then
        out[#out + 1] = got[i]
      end
    end
    if #got < want then
      break
    end
    from = tonumber(string.match(got[#got][1], '^(%d+)')) + 1
  end
end
return {meta[1], meta[2], out}

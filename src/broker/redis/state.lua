-- A state channel's state, atomically with its position (see the module doc of
-- src/broker/redis). Creates nothing.
--
-- KEYS[1] rpchub:{CH}:meta   KEYS[2] rpchub:{CH}:state
-- ARGV[1] history ttl in ms
-- Returns {} when the channel has no meta, else {epoch, offset, {key, entry, key, entry, ...}}
-- with each key's entry "OFFSET TS DATA_AT JSON" no older than the ttl.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] or not meta[2] then
  return {}
end
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #all, 2 do
  local ts = tonumber(string.match(all[i + 1], '^%d+ (%d+) '))
  if ts and ts > oldest then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return {meta[1], meta[2], out}

-- Interest in one channel: makes its stream's meta if it has none (a new epoch at offset 0) and
-- keeps it for another ttl. Returns {epoch, offset}.
--
-- KEYS[1] rpchub:{CH}:meta   KEYS[2] rpchub:{CH}:stream   KEYS[3] rpchub:{CH}:state
-- ARGV[1] the epoch to start if the channel has no meta   ARGV[2] history ttl in ms
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] or not meta[2] then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0)
  meta = {ARGV[1], '0'}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return meta

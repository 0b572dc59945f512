-- One publication to one channel, atomically (see the module doc of src/broker/redis).
--
-- KEYS[1] rpchub:{CH}:meta    hash: epoch, offset
-- KEYS[2] rpchub:{CH}:stream  stream: entry id OFFSET-0, fields t (ts), a (where data starts), j (JSON)
-- KEYS[3] rpchub:{CH}:key:K   the idempotency key's "EPOCH OFFSET" (KEYS[1] again when there is none)
-- KEYS[4] rpchub:{CH}:state   a state channel's hash: state key -> "OFFSET TS DATA_AT JSON"
-- ARGV[1] the epoch to start if the channel has no meta (random, made by the caller)
-- ARGV[2] history size   ARGV[3] history ttl in ms
-- ARGV[4] the event fragment: "" or ,"event":"..." (JSON-encoded by the caller)
-- ARGV[5] the data (JSON)   ARGV[6] "1" when KEYS[3] is an idempotency key
-- ARGV[7] the pub/sub channel   ARGV[8] PUBLISH or SPUBLISH
-- ARGV[9] the namespace's creation notice channel   ARGV[10] the channel's name
-- ARGV[11] "" (not a state channel), "s" (sets the state key) or "d" (deletes it)
-- ARGV[12] the state key ("" : the whole value)
-- Returns {epoch, offset, duplicate (0 or 1)}.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local epoch, offset = meta[1], tonumber(meta[2])
local size, ttl = tonumber(ARGV[2]), ARGV[3]
if not epoch or not offset then
  -- No meta: the stream is new, or it was lost (expired, evicted, flushed). A new epoch, from 0,
  -- and nothing of an older one is kept.
  epoch, offset = ARGV[1], 0
  redis.call('DEL', KEYS[2], KEYS[4])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local keyed = ARGV[6] == '1' and size > 0
if keyed then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local e, o = string.match(seen, '^(%S+) (%d+)$')
    o = tonumber(o)
    -- Only while its publication is in history (this epoch, not trimmed by size).
    if e == epoch and o and o <= offset and o > offset - size then
      return {epoch, o, 1}
    end
  end
end
offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local now = redis.call('TIME')
local ts = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local head = '{"offset":' .. offset .. ',"ts":' .. ts .. ARGV[4] .. ',"data":'
local json = head .. ARGV[5] .. '}'
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, offset .. '-0', 't', ts, 'a', #head, 'j', json)
  redis.call('PEXPIRE', KEYS[2], ttl)
  if keyed then
    redis.call('SET', KEYS[3], epoch .. ' ' .. offset, 'PX', ttl)
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
local entry = offset .. ' ' .. ts .. ' ' .. #head .. ' ' .. json
if ARGV[11] == 's' then
  redis.call('HSET', KEYS[4], ARGV[12], entry)
  redis.call('PEXPIRE', KEYS[4], ttl)
elseif ARGV[11] == 'd' then
  redis.call('HDEL', KEYS[4], ARGV[12])
end
redis.call(ARGV[8], ARGV[7], epoch .. ' ' .. entry)
if offset == 1 then
  -- The channel's first publication in this epoch: nodes watching its namespace for pattern
  -- subscriptions learn of it (plain PUBLISH: on a cluster it reaches every node).
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
return {epoch, offset, 0}

-- Raises a user's read cursor of one channel: the stored value is the highest ever set. When it
-- changed, the move is published (plain PUBLISH, which reaches every node of a cluster too).
--
-- KEYS[1] rpchub:cursors:{USER} (hash channel -> offset)
-- ARGV[1] channel   ARGV[2] offset   ARGV[3] the most cursors a user holds
-- ARGV[4] the move's message   ARGV[5] the pub/sub channel of moves
-- Returns the stored value, or -1 when the user holds the most cursors and this is a new one.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local offset = tonumber(ARGV[2])
if stored then
  stored = tonumber(stored)
  if stored >= offset then
    return stored
  end
elseif offset == 0 then
  return 0
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return offset

-- A channel's presence: entries of client -> user, each kept until its expiry. Every call first
-- removes the expired entries; with signal, every entry added that was not there and every
-- entry removed is published once on the channel's fan-out pub/sub channel as
-- `!{"t":"join"|"leave","c":CLIENT,"u":USER}`, by the call that made the change.
--
-- KEYS[1] rpchub:{CH}:presence (hash client -> user)
-- KEYS[2] rpchub:{CH}:presence_at (sorted set client -> expiry, Unix ms)
-- ARGV[1] "u" (update) or "r" (read)   ARGV[2] ttl in ms (update) or the most listed (read)
-- ARGV[3] "1" to signal   ARGV[4] the fan-out pub/sub channel   ARGV[5] PUBLISH or SPUBLISH
-- update: ARGV[6] the number N of joins, ARGV[7..6+2N] client, user pairs, then the clients
-- leaving. Returns 1.
-- read: returns {clients, users, {client, user, ...}} (at most ARGV[2] pairs listed).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local signal = ARGV[3] == '1'
local function tell(kind, client, user)
  if signal then
    redis.call(ARGV[5], ARGV[4], '!' .. cjson.encode({t = kind, c = client, u = user}))
  end
end
local function remove(client)
  local user = redis.call('HGET', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
  redis.call('HDEL', KEYS[1], client)
  tell('leave', client, user or '')
end
for _, client in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  remove(client)
end
if ARGV[1] == 'r' then
  local all = redis.call('HGETALL', KEYS[1])
  local max = tonumber(ARGV[2])
  local users, nusers, listed = {}, 0, {}
  for k = 1, #all, 2 do
    local user = all[k + 1]
    if not users[user] then
      users[user] = true
      nusers = nusers + 1
    end
    if #listed < 2 * max then
      listed[#listed + 1] = all[k]
      listed[#listed + 1] = user
    end
  end
  return {#all / 2, nusers, listed}
end
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[6])
for i = 7 + 2 * n, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    remove(ARGV[i])
  end
end
for j = 0, n - 1 do
  local client, user = ARGV[7 + 2 * j], ARGV[8 + 2 * j]
  if redis.call('ZADD', KEYS[2], now + ttl, client) == 1 then
    redis.call('HSET', KEYS[1], client, user)
    tell('join', client, user)
  end
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
end
return 1

-- heartbeat-1: renew this worker's lease and list the workers whose lease has run out.
-- KEYS[1] {Q}:workers   sorted set of worker ids, score = lease expiry in ms (server clock)
-- ARGV[1] this worker's id
-- ARGV[2] lease in milliseconds
-- Returns the ids of up to 16 expired workers (not this one).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 16)

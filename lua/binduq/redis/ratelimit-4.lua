-- ratelimit-4: admit an operation under "at most LIMIT per PERIOD" for one key, or defer it.
-- KEYS[1] {Q}:rl:<key>  sorted set of admission times (ms, server clock) in the last period
-- KEYS[2] {Q}:wip:<id>  the in-flight list holding the operation (released when deferred)
-- KEYS[3] {Q}:delayed   where a deferred operation waits
-- KEYS[4] {Q}:seals     see checkseal-1: a deferral releases the leased message's seal and
--                       seals the deferred form
-- ARGV[1] LIMIT
-- ARGV[2] PERIOD in milliseconds
-- ARGV[3] a unique id for this admission
-- ARGV[4] the operation as leased
-- ARGV[5] the operation to queue again when deferred (its "#bq" header, then the original)
-- ARGV[6] "1" if the lease must still be held, "0" otherwise
-- A sliding-window log: exactly "at most LIMIT admissions in any window of PERIOD", by the
-- server's clock, so workers on different machines share one clock.
-- Returns {1, now_ms} when admitted; {0, wait_ms} when deferred until the oldest admission
-- leaves the window; {-1, 0} if the lease was lost meanwhile.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], period)
    return { 1, now }
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = math.max(1, tonumber(oldest[2]) + period - now)
if ARGV[6] == '1' and redis.call('LREM', KEYS[2], -1, ARGV[4]) == 0 then return { -1, 0 } end
if string.sub(ARGV[4], 1, 4) == '#bq ' then
    local f = redis.sha1hex(ARGV[4])
    if redis.call('HINCRBY', KEYS[4], f, -1) <= 0 then redis.call('HDEL', KEYS[4], f) end
end
redis.call('ZADD', KEYS[3], now + wait, ARGV[5])
redis.call('HINCRBY', KEYS[4], redis.sha1hex(ARGV[5]), 1)
return { 0, wait }

-- retry-3: schedule a failed operation for another attempt, releasing its lease.
-- KEYS[1] {Q}:wip:<id>  the in-flight list holding the operation
-- KEYS[2] {Q}:delayed   operations waiting for a time (sorted set, score = due time in ms)
-- KEYS[3] {Q}:seals     see checkseal-1: the leased message's seal is released, the retry's
--                       written (its header line has a fresh id, so it is unique)
-- ARGV[1] the message as leased (removed from KEYS[1])
-- ARGV[2] the message to retry (a "#bq {...}" header line, then the original bytes)
-- ARGV[3] delay in milliseconds, from the server's clock
-- ARGV[4] "1" if the lease must still be held (at-least-once), "0" otherwise
-- Returns 1, or 0 if the lease was lost (the operation went back to the queue meanwhile and
-- nothing was scheduled, so it is not run twice).
if ARGV[4] == '1' and redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
-- Its seal, if it has one: a "#bq" line's, or a Bindu-format message's embedded header's.
local f = redis.sha1hex(ARGV[1])
local c = tonumber(redis.call('HGET', KEYS[3], f) or '0')
if c > 1 then redis.call('HINCRBY', KEYS[3], f, -1) elseif c == 1 then redis.call('HDEL', KEYS[3], f) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
redis.call('HINCRBY', KEYS[3], redis.sha1hex(ARGV[2]), 1)
return 1

-- bury-3: move an operation to the dead-letter list, releasing its lease.
-- KEYS[1] {Q}:wip:<id>  the in-flight list holding the operation
-- KEYS[2] {Q}:dlq       the dead-letter list (newest first)
-- KEYS[3] {Q}:seals     see checkseal-1: the message's seal, if it has one, is released
-- ARGV[1] the message as leased (removed from KEYS[1])
-- ARGV[2] the dead-letter entry (a JSON line, a newline, the original bytes)
-- ARGV[3] "1" if the lease must still be held (at-least-once), "0" otherwise
-- Returns 1, or 0 if the lease was lost (then nothing is written).
if ARGV[3] == '1' and redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
-- Its seal, if it has one: a "#bq" line's, or a Bindu-format message's embedded header's.
local f = redis.sha1hex(ARGV[1])
local c = tonumber(redis.call('HGET', KEYS[3], f) or '0')
if c > 1 then redis.call('HINCRBY', KEYS[3], f, -1) elseif c == 1 then redis.call('HDEL', KEYS[3], f) end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1

-- bury-3: move an operation to the dead-letter list, releasing its lease.
-- KEYS[1] {Q}:wip:<id>  the in-flight list holding the operation
-- KEYS[2] {Q}:dlq       the dead-letter list (newest first)
-- KEYS[3] {Q}:seals     see checkseal-1: the seal of a message with a "#bq" header is released
-- ARGV[1] the message as leased (removed from KEYS[1])
-- ARGV[2] the dead-letter entry (a JSON line, a newline, the original bytes)
-- ARGV[3] "1" if the lease must still be held (at-least-once), "0" otherwise
-- Returns 1, or 0 if the lease was lost (then nothing is written).
if ARGV[3] == '1' and redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
if string.sub(ARGV[1], 1, 4) == '#bq ' then
    local f = redis.sha1hex(ARGV[1])
    if redis.call('HINCRBY', KEYS[3], f, -1) <= 0 then redis.call('HDEL', KEYS[3], f) end
end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1

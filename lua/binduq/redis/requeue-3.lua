-- requeue-3: move one dead-letter entry back to the queue as a fresh operation.
-- The original bytes get a "#bq" header line marking them requeued: attempts start again,
-- and the worker runs the task even if it had recorded it as failed.
-- KEYS[1] {Q}:dlq  the dead-letter list
-- KEYS[2] Q        the queue (the operation joins the back of the line)
-- KEYS[3] {Q}:seals  see checkseal-1: the requeued message is sealed
-- ARGV[1] the entry, exactly as stored (a JSON line, a newline, the original bytes)
-- ARGV[2] the queue's front: "R" (producers LPUSH) or "L" (they RPUSH)
-- Returns 1, or 0 if the entry is no longer there (someone else requeued or purged it).
local nl = string.find(ARGV[1], '\n', 1, true)
if not nl then return redis.error_reply('ERR not a binduq dead-letter entry') end
if string.find(string.sub(ARGV[1], 1, nl), '"truncated":true', 1, true) then
    return redis.error_reply('ERR a truncated dead-letter entry (a message too large to keep) cannot be requeued')
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local body = string.sub(ARGV[1], nl + 1)
local m
if string.sub(body, 1, 12) == '{"operation"' and string.sub(body, -1) == '}' then
    -- Bindu's format keeps the header inside, where Bindu's worker ignores it (broker.h)
    m = string.sub(body, 1, -2) .. ',"binduq":{"attempt":1,"requeued":1}}'
else
    m = '#bq {"attempt":1,"requeued":1}\n' .. body
end
redis.call(ARGV[2] == 'L' and 'RPUSH' or 'LPUSH', KEYS[2], m)
redis.call('HINCRBY', KEYS[3], redis.sha1hex(m), 1)
return 1

-- enqueue-N: push operations unless their deduplication key is already taken.
-- KEYS[1]  Q, the queue
-- KEYS[2]  {Q}:bell, woken by every push (workers fetching from several queues block on it)
-- KEYS[3..] one deduplication key {Q}:dedup:<key> per operation
-- ARGV[1]  the keys' time to live in seconds
-- ARGV[2]  the queue's front: "R" (producers LPUSH, the default) or "L" (they RPUSH)
-- ARGV[3..] the operations, in the order of their keys
-- Checking a key and pushing its operation is one step: two producers can never both push.
-- The operations whose key was free go in one push, in order. (Batches of 64 or more are
-- pushed natively in a MULTI and checked by dedup-N instead, where MULTI is allowed.)
-- Returns one 1 (pushed) or 0 (duplicate) per operation.
local ttl = ARGV[1] -- as sent: a number would be formatted again for every SET
local push = ARGV[2] == 'L' and 'RPUSH' or 'LPUSH'
redis.call('LLEN', KEYS[1]) -- a queue that is not a list raises WRONGTYPE here, before any key is taken
local out, msgs, pushed = {}, {}, 0
for i = 3, #KEYS do
    if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
        pushed = pushed + 1
        msgs[pushed] = ARGV[i]
        out[#out + 1] = 1
    else
        out[#out + 1] = 0
    end
end
if pushed > 0 then
    redis.call(push, KEYS[1], unpack(msgs))
    -- a bell that is not a list is left as it is (see dedup-N): the operations stay queued
    if type(redis.pcall('LPUSH', KEYS[2], '1')) == 'number' then redis.call('LTRIM', KEYS[2], 0, 63) end
end
return out

-- dedup-N: take the deduplication keys of operations just pushed, and take back the
-- operations whose key was already taken.
-- It runs inside the producer's MULTI ... EXEC, right after the LPUSH (RPUSH) Q of the same
-- operations in the same order, so the push and this script are one atomic step: no worker
-- and no other producer sees the queue in between, and two producers can never both push.
-- The messages travel once, to the native push; this script gets only their keys. (The
-- producer sends the rest of the MULTI only once Redis accepted the MULTI itself, so the
-- push never runs outside it; where MULTI is not allowed, it uses enqueue-N.)
-- KEYS[1]  Q, the queue
-- KEYS[2]  {Q}:bell, woken by every push (workers fetching from several queues block on it)
-- KEYS[3..] one deduplication key {Q}:dedup:<key> per operation, in the order pushed
-- ARGV[1]  the keys' time to live in seconds
-- ARGV[2]  the queue's front: "R" (producers LPUSH, the default) or "L" (they RPUSH)
-- ARGV[3]  a placeholder no pushed operation equals (the producer checks): a duplicate's copy
--          is overwritten with it (LSET), then the placeholders are removed (one LREM)
-- Operation i of n is at index n - i after LPUSH (at i - n - 1 after RPUSH). A queue that is
-- not a list (the push failed with WRONGTYPE) takes no key.
-- Returns one 1 (pushed) or 0 (duplicate, taken back) per operation.
local q, n = KEYS[1], #KEYS - 2
if redis.call('LLEN', q) < n then -- raises WRONGTYPE for a queue that is not a list
    return redis.error_reply('ERR dedup-N: ' .. q .. ' holds fewer than the operations pushed: nothing was enqueued')
end
local ttl, rpush, hole = ARGV[1], ARGV[2] == 'L', ARGV[3] -- ttl as sent: a number would be
-- formatted again for every SET
local out, dups = {}, 0
for i = 1, n do
    if redis.call('SET', KEYS[2 + i], '1', 'NX', 'EX', ttl) then
        out[i] = 1
    else
        out[i] = 0
        dups = dups + 1
        redis.call('LSET', q, rpush and (i - n - 1) or (n - i), hole)
    end
end
if dups > 0 then redis.call('LREM', q, rpush and -dups or dups, hole) end
-- A bell that is not a list is left as it is: it is a wake-up, not data, and the operations
-- stay queued (an error now would report queued operations as not enqueued, and taken keys
-- would call their retry a duplicate); a worker blocking on it reports it.
if dups < n and type(redis.pcall('LPUSH', KEYS[2], '1')) == 'number' then
    redis.call('LTRIM', KEYS[2], 0, 63)
end
return out

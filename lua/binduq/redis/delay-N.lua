-- delay-N: queue operations for later: each waits in the delayed set until its due time (by
-- the server's clock), when promote-2 moves it to the queue as it moves a retry.
-- KEYS[1]  Q, the queue
-- KEYS[2]  {Q}:bell, rung when the earliest due time moves earlier (multi-queue workers)
-- KEYS[3]  {Q}:delayed, sorted set, score = due time in ms
-- KEYS[4..] the deduplication keys {Q}:dedup:<key> of the operations that have one, in order
-- ARGV[1]  the keys' time to live in seconds, counted from each operation's due time
-- ARGV[2]  the queue's front: "R" (producers LPUSH, the default) or "L" (they RPUSH)
-- ARGV[3]  Q's control channel, {Q}:control
-- ARGV[4..] three per operation: when ("+<ms>": that long after now; "@<ms>": since the
--          epoch), "1" if it has a deduplication key (the next of KEYS) else "0", the message
-- An operation already due (+0, or a time past) is pushed to Q at once, as enqueue-N pushes.
-- When the earliest due time in the set moves earlier, "due <ms from now>" is published on
-- the control channel and the bell rung, so a worker blocked on Q promotes it on time.
-- Returns one 1 (queued) or 0 (a duplicate: its key was taken, or the same bytes already
-- wait in the set) per operation.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local push = ARGV[2] == 'L' and 'RPUSH' or 'LPUSH'
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2]) or nil
local out, k, rang, pushed, sooner = {}, 4, false, 0, nil
for i = 4, #ARGV, 3 do
    local when, msg = ARGV[i], ARGV[i + 2]
    local due = tonumber(string.sub(when, 2))
    if string.sub(when, 1, 1) == '+' then due = now + due end
    local ok, key = true, nil
    if ARGV[i + 1] == '1' then
        key = KEYS[k]
        k = k + 1
        local life = ttl + math.ceil(math.max(0, due - now) / 1000)
        ok = redis.call('SET', key, '1', 'NX', 'EX', life) and true or false
    end
    if ok and due <= now then
        redis.call(push, KEYS[1], msg)
        pushed = pushed + 1
    elseif ok then
        ok = redis.call('ZADD', KEYS[3], 'NX', due, msg) == 1
        if not ok and key then redis.call('DEL', key) end
        if ok and (earliest == nil or due < earliest) then
            earliest, sooner = due, due
        end
    end
    out[#out + 1] = ok and 1 or 0
end
if sooner then
    redis.call('PUBLISH', ARGV[3], 'due ' .. (sooner - now))
    rang = true
end
if pushed > 0 or rang then
    redis.call('LPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 63)
end
return out

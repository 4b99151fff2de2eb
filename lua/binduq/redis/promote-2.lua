-- promote-2: move operations whose time has come from the delayed set to the queue.
-- KEYS[1] {Q}:delayed   sorted set, score = due time in ms
-- KEYS[2] Q             the queue; due operations are pushed where workers take next
-- ARGV[1] at most this many
-- ARGV[2] the queue's front: "R" (producers LPUSH) or "L" (they RPUSH)
-- Returns {moved, next_due_in_ms}: next_due_in_ms is -1 when nothing else waits.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
-- Latest first onto the front, so the one due earliest is taken first.
local push = ARGV[2] == 'L' and 'LPUSH' or 'RPUSH'
for i = #due, 1, -1 do
    redis.call('ZREM', KEYS[1], due[i])
    redis.call(push, KEYS[2], due[i])
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return { #due, wait }

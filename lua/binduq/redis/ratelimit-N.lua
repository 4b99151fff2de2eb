-- ratelimit-N: admit operations under "at most LIMIT per PERIOD" for their keys; a batch in
-- one call, decided in order.
-- KEYS[i]   {Q}:rl:<key> of operation i: a sorted set of admission times (ms, server clock)
--           (several operations may share one)
-- ARGV[1]   LIMIT
-- ARGV[2]   PERIOD in milliseconds
-- ARGV[2+i] a unique id for operation i's admission
-- A sliding-window log: exactly "at most LIMIT admissions in any window of PERIOD", by the
-- server's clock, so workers on different machines share one clock. One clock reading
-- serves the batch: its operations are admitted at the same instant, in order. Each key is
-- read once and written once per call, however many of the batch's operations share it.
-- Admissions older than the window are removed when a key is read, except from a key that
-- holds fewer than KEEP entries and has room for all of this call's operations even
-- counting them: stale entries only make the count larger, so room counted with them is
-- room; a key keeps at most KEEP entries that left the window, and dies PERIOD after its
-- last admission. (That spares the removal on keys of a few entries.) A batch whose keys
-- all do not exist yet (a key per task, say) is known to be empty with one EXISTS.
-- An operation not admitted is left alone: its worker queues it again for the time named
-- (retry-3), like a retry. A worker that dies in between leaves it leased, and the reaper
-- gives it back.
-- Returns, per operation, two numbers: 1, now_ms when admitted; 0, wait_ms when not, until
-- the oldest admission leaves the window.
local KEEP = 64
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, order = {}, {}
for i = 1, #KEYS do -- how many of this call's operations each key has
    local rl = KEYS[i]
    local w = want[rl]
    if not w then
        order[#order + 1] = rl
        want[rl] = 1
    else
        want[rl] = w + 1
    end
end
-- Keys none of which exists (a key per task, say) need no read each: one EXISTS for all.
local fresh = redis.call('EXISTS', unpack(order)) == 0
local count, adds, oldest, out = {}, {}, {}, {}
for _, rl in ipairs(order) do
    local n = 0
    if not fresh then
        n = redis.call('ZCARD', rl)
        if n > 0 and (n >= KEEP or n + want[rl] > limit) then
            n = n - redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - period)
        end
    end
    count[rl] = n
end
for i = 1, #KEYS do
    local rl = KEYS[i]
    local n = count[rl]
    if n < limit then
        count[rl] = n + 1
        local a = adds[rl]
        if not a then
            a = {}
            adds[rl] = a
        end
        a[#a + 1] = now
        a[#a + 1] = ARGV[2 + i]
        out[#out + 1], out[#out + 2] = 1, now
    else
        local o = oldest[rl]
        if not o then -- the earliest admission in the window: stored, else this call's
            local first = redis.call('ZRANGE', rl, 0, 0, 'WITHSCORES')
            o = first[2] and tonumber(first[2]) or now
            oldest[rl] = o
        end
        out[#out + 1], out[#out + 2] = 0, math.max(1, o + period - now)
    end
end
for _, rl in ipairs(order) do
    local a = adds[rl]
    if a then
        redis.call('ZADD', rl, unpack(a))
        redis.call('PEXPIRE', rl, period)
    end
end
return out

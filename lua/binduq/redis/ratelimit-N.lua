-- ratelimit-N: admit operations under "at most LIMIT per PERIOD" for their keys; a batch in
-- one call, decided in order.
-- KEYS[i]   {Q}:rl:<key> of operation i: a sorted set of admission times (ms, server clock)
--           in the last period (several operations may share one)
-- ARGV[1]   LIMIT
-- ARGV[2]   PERIOD in milliseconds
-- ARGV[2+i] a unique id for operation i's admission
-- A sliding-window log: exactly "at most LIMIT admissions in any window of PERIOD", by the
-- server's clock, so workers on different machines share one clock. One clock reading
-- serves the batch: its operations are admitted at the same instant, in order. Each key is
-- read once and written once per call, however many of the batch's operations share it.
-- An operation not admitted is left alone: its worker queues it again for the time named
-- (retry-3), like a retry. A worker that dies in between leaves it leased, and the reaper
-- gives it back.
-- Returns, per operation, two numbers: 1, now_ms when admitted; 0, wait_ms when not, until
-- the oldest admission leaves the window.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local seen, order, out = {}, {}, {}
for i = 1, #KEYS do
    local rl = KEYS[i]
    local s = seen[rl]
    if not s then
        redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - period)
        s = { n = redis.call('ZCARD', rl), add = {} }
        seen[rl] = s
        order[#order + 1] = rl
    end
    if s.n < limit then
        s.n = s.n + 1
        s.add[#s.add + 1] = now
        s.add[#s.add + 1] = ARGV[2 + i]
        out[#out + 1], out[#out + 2] = 1, now
    else
        if not s.oldest then -- the earliest admission in the window: stored, else this call's
            local first = redis.call('ZRANGE', rl, 0, 0, 'WITHSCORES')
            s.oldest = first[2] and tonumber(first[2]) or now
        end
        out[#out + 1], out[#out + 2] = 0, math.max(1, s.oldest + period - now)
    end
end
for _, rl in ipairs(order) do
    local s = seen[rl]
    if #s.add > 0 then
        redis.call('ZADD', rl, unpack(s.add))
        redis.call('PEXPIRE', rl, period)
    end
end
return out

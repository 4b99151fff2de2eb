-- ratelimit-N: admit operations under "at most LIMIT per PERIOD" for their keys; a batch in
-- one call, decided in order.
-- KEYS[i]   {Q}:rlog:<key> of operation i (several may share one): a sorted set, the log of
--           its admissions by time (ms, server clock)
-- ARGV[1]   LIMIT     ARGV[2] PERIOD in milliseconds     ARGV[3] a tag unique to this call
-- A sliding-window log: exactly "at most LIMIT admissions in any window of PERIOD", on the
-- server's clock, shared by all workers. A batch is admitted at one instant, in order. Each
-- key is read and written once per call and gets one entry: the tag for one admission, the
-- tag, '*' and k for k; a key with an entry of several holds '#', scored minus its entries'
-- admissions in all (without '#' each counts one). Entries out of the window are removed
-- when a key is read, unless it has under KEEP admissions and room for this call's even
-- counting them; a key dies PERIOD after its last admission. A batch of keys none of which
-- exists (a key per task, say) is read with one EXISTS. One not admitted: see retry-3.
-- Returns { now_ms } when every operation was admitted, else two numbers per operation:
-- 1, now_ms when admitted; 0, wait_ms when not, until the oldest admission leaves the window.
local KEEP = 64
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, period, tag = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local nows = tostring(now) -- formatted once
local want, order = {}, {}
for i = 1, #KEYS do -- each key's operations
    local rl = KEYS[i]
    local w = want[rl]
    if not w then
        order[#order + 1] = rl
        want[rl] = 1
    else
        want[rl] = w + 1
    end
end
local fresh = redis.call('EXISTS', unpack(order)) == 0
local count, counted, got, cut_some = {}, {}, {}, {}
local cut = now - period
for _, rl in ipairs(order) do -- every key read before any is trimmed (a WRONGTYPE stops all)
    local n, c = 0, false
    if not fresh then
        c = redis.call('ZSCORE', rl, '#')
        if c then n = -tonumber(c) else n = redis.call('ZCARD', rl) end
    end
    count[rl], counted[rl], got[rl] = n, c and true or false, 0
end
for _, rl in ipairs(order) do
    local n, c = count[rl], counted[rl]
    if n > 0 and (n >= KEEP or n + want[rl] > limit) then
        if c then -- the stale entries' admissions, each entry's own count
            local old = redis.call('ZRANGEBYSCORE', rl, '(0', cut)
            for j = 1, #old do n = n - (tonumber(string.match(old[j], '%*(%d+)$')) or 1) end
            if #old > 0 then
                redis.call('ZREMRANGEBYSCORE', rl, '(0', cut)
                cut_some[rl] = true
            end
        else
            n = n - redis.call('ZREMRANGEBYSCORE', rl, '(0', cut)
        end
        count[rl] = n
    end
end
local out, oldest, all = {}, {}, true
for i = 1, #KEYS do
    local rl = KEYS[i]
    local n = count[rl]
    if n < limit then
        count[rl], got[rl] = n + 1, got[rl] + 1
        out[#out + 1], out[#out + 2] = 1, now
    else
        all = false
        local o = oldest[rl]
        if not o then -- the earliest admission in the window: stored, else this call's
            local first = redis.call('ZRANGEBYSCORE', rl, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
            o = first[2] and tonumber(first[2]) or now
            oldest[rl] = o
        end
        out[#out + 1], out[#out + 2] = 0, math.max(1, o + period - now)
    end
end
for _, rl in ipairs(order) do
    local g = got[rl]
    if g == 1 and not counted[rl] then
        redis.call('ZADD', rl, nows, tag)
        redis.call('PEXPIRE', rl, ARGV[2])
    elseif g > 0 then
        redis.call('ZADD', rl, -count[rl], '#', nows, g == 1 and tag or tag .. '*' .. g)
        redis.call('PEXPIRE', rl, ARGV[2])
    elseif cut_some[rl] then -- trimmed, nothing admitted (a lowered limit): '#' follows
        redis.call('ZADD', rl, -count[rl], '#')
    end
end
if all then return { now } end
return out

-- cron-4: a recurring schedule's state (docs/recurring.md): claim its ticks, each exactly once
-- across every worker, and queue each claimed tick's run; or pause, resume or remove it.
-- KEYS[1]  Q, the queue
-- KEYS[2]  {Q}:bell, rung when a run is queued or the earliest due time moves earlier
-- KEYS[3]  {Q}:delayed, sorted set, score = due time in ms (see delay-N)
-- KEYS[4]  {Q}:cron, hash: <name> -> the last tick claimed (epoch s); <name>:spec -> its
--          declaration (JSON); <name>:paused -> "1"; <name>:removed -> "1"
-- ARGV[1]  the schedule's name
-- ARGV[2]  the action: "fire", "pause", "resume" or "remove"
-- ARGV[3]  fire: "" or the declaration (JSON), stored first (a removal is then forgotten)
-- ARGV[4]  the queue's front: "R" (producers LPUSH, the default) or "L" (they RPUSH)
-- ARGV[5]  Q's control channel, {Q}:control
-- ARGV[6..] fire: three per tick, ascending: the tick (epoch s), its run's due time (epoch
--          ms), the run's message
-- fire: a tick later than the last claimed is claimed (the last becomes it) and its run
-- queued as delay-N queues one (due: pushed to Q at once; else into {Q}:delayed, announced
-- when it moves the earliest due time earlier); an earlier tick was claimed by someone else
-- and is left. A paused schedule's ticks are claimed and dropped (a resume does not run
-- them late); a removed one's are left alone.
-- Returns {fired, last, state}: the runs queued, the last tick claimed (-1: none), and the
-- state after the action: 0 active, 1 paused, 2 removed, 3 unknown (pause, resume and
-- remove of a schedule never declared change nothing).
local name, action = ARGV[1], ARGV[2]
local f_spec, f_paused, f_removed = name .. ':spec', name .. ':paused', name .. ':removed'
local function state()
    if redis.call('HEXISTS', KEYS[4], f_removed) == 1 then return 2 end
    if redis.call('HEXISTS', KEYS[4], f_spec) == 0 then return 3 end
    if redis.call('HEXISTS', KEYS[4], f_paused) == 1 then return 1 end
    return 0
end
local function last()
    return tonumber(redis.call('HGET', KEYS[4], name) or '-1')
end
if action ~= 'fire' then
    local st = state()
    if st == 3 or (st == 2 and action ~= 'remove') then return { 0, last(), st } end
    if action == 'pause' then
        redis.call('HSET', KEYS[4], f_paused, '1')
        st = 1
    elseif action == 'resume' then
        redis.call('HDEL', KEYS[4], f_paused)
        st = 0
    elseif action == 'remove' then
        redis.call('HDEL', KEYS[4], name, f_spec, f_paused)
        redis.call('HSET', KEYS[4], f_removed, '1')
        st = 2
    else
        return redis.error_reply('cron-4: unknown action ' .. action)
    end
    return { 0, last(), st }
end
if ARGV[3] ~= '' then
    redis.call('HDEL', KEYS[4], f_removed)
    redis.call('HSET', KEYS[4], f_spec, ARGV[3])
end
local st = state()
local prev = last()
if st == 2 or st == 3 then return { 0, prev, st } end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local push = ARGV[4] == 'L' and 'RPUSH' or 'LPUSH'
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2]) or nil
local fired, pushed, sooner, claimed = 0, 0, nil, false
for i = 6, #ARGV, 3 do
    local tick, due, msg = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
    if tick > prev then
        prev, claimed = tick, true
        if st == 0 then
            fired = fired + 1
            if due <= now then
                redis.call(push, KEYS[1], msg)
                pushed = pushed + 1
            elseif redis.call('ZADD', KEYS[3], 'NX', due, msg) == 1 and (earliest == nil or due < earliest) then
                earliest, sooner = due, due
            end
        end
    end
end
if claimed then redis.call('HSET', KEYS[4], name, prev) end
if sooner then redis.call('PUBLISH', ARGV[5], 'due ' .. (sooner - now)) end
if pushed > 0 or sooner then
    redis.call('LPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 63)
end
return { fired, prev, st }

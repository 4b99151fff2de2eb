-- create-N: record new tasks, each unless its id exists (storage.h, create).
-- KEYS[1]    {Q}:tasks      every task of Q's storage, scored by created_at
-- KEYS[1+i]  {Q}:task:<id>  task i's hash, for i = 1..n
-- ARGV[1] the key prefix "{Q}:" (the state indexes {Q}:tasks:<state>, {Q}:expiring and the
--         other tasks' hashes share KEYS' slot)
-- ARGV[2] seconds a finished task is kept (0: for ever)
-- then 9 for each task i, from ARGV[3 + 9 * (i - 1)]:
--   the id, the state, history (JSON), metadata (JSON), attempts, then context_id, queue,
--   worker and requested: "" for none, else "=" and the value
-- Returns {created (0|1), state, requested ("" none), attempts} for each task, one after the
-- other: the new task's, or those of the task that was there.
local idx, p, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
local TERMINAL = {completed = true, failed = true, canceled = true, rejected = true}
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local out = {}
local opt = {'context_id', 'queue', 'worker', 'requested'}
for i = 1, #KEYS - 1 do
    local k, a = KEYS[1 + i], 2 + 9 * (i - 1)
    local id, state = ARGV[a + 1], ARGV[a + 2]
    local v = redis.call('HMGET', k, 'state', 'requested', 'attempts')
    local o = 4 * (i - 1)
    if v[1] then
        out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, v[1], v[2] or '', tonumber(v[3] or '0')
    else
        local set = {'id', id, 'state', state, 'history', ARGV[a + 3], 'artifacts', '[]',
                     'metadata', ARGV[a + 4], 'attempts', ARGV[a + 5], 'created_at', now,
                     'updated_at', now, 'state_at', now}
        for j = 1, 4 do
            local given = ARGV[a + 5 + j]
            if given ~= '' then set[#set + 1], set[#set + 2] = opt[j], string.sub(given, 2) end
        end
        redis.call('HSET', k, unpack(set)) -- one call: it costs about as much as the command
        -- created_at's own text as the score, so the index and the record say the same time
        redis.call('ZADD', idx, now, id)
        redis.call('ZADD', p .. 'tasks:' .. state, now, id)
        if TERMINAL[state] and ttl > 0 then
            redis.call('EXPIRE', k, ttl)
            redis.call('ZADD', p .. 'expiring', tonumber(t[1]) + ttl, id)
        end
        local req = ARGV[a + 9] ~= '' and string.sub(ARGV[a + 9], 2) or ''
        out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 1, state, req, tonumber(ARGV[a + 5])
    end
end
-- Finished tasks' hashes expire, and {Q}:expiring holds when each will: every call removes
-- the index entries of up to 8 hashes that have expired, or twice as many as it records (a
-- batch of 64 that swept 8 left 56 behind for ever), so the indexes keep only about the live
-- records.
local function sweep()
    local exp = p .. 'expiring'
    local most = math.max(8, 2 * (#KEYS - 1))
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', t[1], 'LIMIT', 0, most)) do
        local left = redis.call('PTTL', p .. 'task:' .. id)
        if left == -2 then -- gone
            redis.call('ZREM', KEYS[1], id)
            for s in pairs(TERMINAL) do redis.call('ZREM', p .. 'tasks:' .. s, id) end
            redis.call('ZREM', exp, id)
        elseif left == -1 then -- kept for ever now
            redis.call('ZREM', exp, id)
        else -- finished again since: expires later
            redis.call('ZADD', exp, tonumber(t[1]) + math.ceil(left / 1000), id)
        end
    end
end
sweep()
return out

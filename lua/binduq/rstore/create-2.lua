-- create-2: record a new task unless its id exists (storage.h, create).
-- KEYS[1] {Q}:task:<id>  the task's hash
-- KEYS[2] {Q}:tasks      every task of Q's storage, scored by created_at
-- ARGV[1] the key prefix "{Q}:" (the state indexes {Q}:tasks:<state> and the other tasks'
--         hashes, pruned here, share KEYS' slot)
-- ARGV[2] the id   ARGV[3] the state   ARGV[4] history (JSON)   ARGV[5] metadata (JSON)
-- ARGV[6] attempts
-- ARGV[7] context_id, ARGV[8] queue, ARGV[9] worker, ARGV[10] requested: "" for none, else
--         "=" and the value
-- ARGV[11] seconds a finished task is kept (0: for ever)
-- Returns {created (0|1), state, requested ("" none), attempts}: the new task's, or those of
-- the task that was there.
local k, idx, p = KEYS[1], KEYS[2], ARGV[1]
local v = redis.call('HMGET', k, 'state', 'requested', 'attempts')
if v[1] then return {0, v[1], v[2] or '', tonumber(v[3] or '0')} end
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
redis.call('HSET', k, 'id', ARGV[2], 'state', ARGV[3], 'history', ARGV[4], 'artifacts', '[]',
           'metadata', ARGV[5], 'attempts', ARGV[6], 'created_at', now, 'updated_at', now,
           'state_at', now)
local opt = {'context_id', 'queue', 'worker', 'requested'}
for i = 1, 4 do
    local a = ARGV[6 + i]
    if a ~= '' and not (i == 4 and a == '=') then redis.call('HSET', k, opt[i], string.sub(a, 2)) end
end
-- created_at's own text as the score, so the index and the record say the same time
redis.call('ZADD', idx, now, ARGV[2])
redis.call('ZADD', p .. 'tasks:' .. ARGV[3], now, ARGV[2])
local TERMINAL = {completed = true, failed = true, canceled = true, rejected = true}
local ttl = tonumber(ARGV[11])
if TERMINAL[ARGV[3]] and ttl > 0 then redis.call('EXPIRE', k, ttl) end
-- The indexes outlive the hashes that expire: each create drops the oldest entries whose
-- hash is gone, a few per index, so they stay about as long as the live records.
local function prune(key, n)
    for _, id in ipairs(redis.call('ZRANGE', key, 0, n - 1)) do
        if redis.call('EXISTS', p .. 'task:' .. id) == 0 then redis.call('ZREM', key, id) end
    end
end
prune(idx, 3)
for s in pairs(TERMINAL) do prune(p .. 'tasks:' .. s, 2) end
local req = ARGV[10] ~= '' and string.sub(ARGV[10], 2) or ''
return {1, ARGV[3], req, tonumber(ARGV[6])}

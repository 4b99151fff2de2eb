-- change-2: a compare-and-set change of one task (storage.h, change).
-- KEYS[1] {Q}:task:<id>  the task's hash
-- KEYS[2] {Q}:tasks      the index of every task (unchanged here; named for the slot)
-- ARGV[1] the key prefix "{Q}:" (the state indexes {Q}:tasks:<state>)
-- ARGV[2] the id
-- ARGV[3] from: "" for any open state, else "=" and comma-separated states
-- ARGV[4] to: the new state, "" for unchanged
-- ARGV[5] append_history, ARGV[6] append_artifacts: JSON arrays to append, "" for none
-- ARGV[7] checkpoint, ARGV[8] error, ARGV[9] requested, ARGV[10] worker: "" unchanged, "="
--         clears, "=" and a value sets
-- ARGV[11] "1" to count an attempt
-- ARGV[12] if_requested: "" for no condition, else "=" and what `requested` must be
-- ARGV[13] seconds a finished task is kept (0: for ever)
-- Returns {found (0|1), changed (0|1), state, requested ("" none), attempts}: after the change,
-- or as found when it refused.
local k, p = KEYS[1], ARGV[1]
local v = redis.call('HMGET', k, 'state', 'requested', 'attempts', 'history', 'artifacts',
                     'created_at')
local state, req, att = v[1], v[2] or '', tonumber(v[3] or '0')
if not state then return {0, 0, '', '', 0} end
local OPEN = {submitted = true, working = true, ['input-required'] = true,
              ['auth-required'] = true, paused = true}
local ok = false
if ARGV[3] == '' then
    ok = OPEN[state] == true
else
    for s in string.gmatch(string.sub(ARGV[3], 2), '[^,]+') do
        if s == state then ok = true end
    end
end
if ok and ARGV[12] ~= '' and string.sub(ARGV[12], 2) ~= req then ok = false end
if not ok then return {1, 0, state, req, att} end
local function trim(s)
    return (string.gsub(string.gsub(s, '^%s+', ''), '%s+$', ''))
end
-- a's elements then b's, as text: both are JSON arrays (the caller checked b; a is stored)
local function append(a, b)
    a, b = trim(a or '[]'), trim(b)
    if string.find(b, '^%[%s*%]$') then return a end
    if string.find(a, '^%[%s*%]$') then return b end
    return string.sub(a, 1, -2) .. ',' .. string.sub(b, 2)
end
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
if ARGV[5] ~= '' then redis.call('HSET', k, 'history', append(v[4], ARGV[5])) end
if ARGV[6] ~= '' then redis.call('HSET', k, 'artifacts', append(v[5], ARGV[6])) end
local fields = {'checkpoint', 'error', 'requested', 'worker'}
for i = 1, 4 do
    local a = ARGV[6 + i]
    if a == '=' then
        redis.call('HDEL', k, fields[i])
    elseif a ~= '' then
        redis.call('HSET', k, fields[i], string.sub(a, 2))
    end
end
if ARGV[9] ~= '' then req = string.sub(ARGV[9], 2) end
local to = ARGV[4]
if to ~= '' and to ~= state then
    redis.call('ZREM', p .. 'tasks:' .. state, ARGV[2])
    redis.call('ZADD', p .. 'tasks:' .. to, v[6] or now, ARGV[2]) -- created_at, as text
    redis.call('HSET', k, 'state', to, 'state_at', now)
    state = to
end
if ARGV[11] == '1' then att = redis.call('HINCRBY', k, 'attempts', 1) end
redis.call('HSET', k, 'updated_at', now)
local ttl = tonumber(ARGV[13])
if OPEN[state] then
    redis.call('PERSIST', k)
elseif ttl > 0 then
    redis.call('EXPIRE', k, ttl)
end
return {1, 1, state, req, att}

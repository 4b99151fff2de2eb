-- change-N: compare-and-set changes of tasks, each on its own (storage.h, change and
-- change_many).
-- KEYS[1]    {Q}:tasks      the index of every task (unchanged here; it names the slot)
-- KEYS[1+i]  {Q}:task:<id>  task i's hash, for i = 1..n
-- ARGV[1] the key prefix "{Q}:" (the state indexes {Q}:tasks:<state>, {Q}:expiring)
-- ARGV[2] seconds a finished task is kept (0: for ever)
-- then 11 for each task i, from ARGV[3 + 11 * (i - 1)]:
--   the id;
--   from: "" for any open state, else "=" and comma-separated states;
--   to: the new state, "" for unchanged;
--   append_history, append_artifacts: JSON arrays to append, "" for none;
--   checkpoint, error, requested, worker: "" unchanged, "=" clears, "=" and a value sets;
--   "1" to count an attempt;
--   if_requested: "" for no condition, else "=" and what `requested` must be
-- Returns {found (0|1), changed (0|1), state, requested ("" none), attempts} for each task,
-- one after the other: after its change, or as found when it refused.
local p, ttl = ARGV[1], tonumber(ARGV[2])
local OPEN = {submitted = true, working = true, ['input-required'] = true,
              ['auth-required'] = true, paused = true}
local TERMINAL = {completed = true, failed = true, canceled = true, rejected = true}
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
local fields = {'checkpoint', 'error', 'requested', 'worker'}

local function change(k, a)
    local id = ARGV[a + 1]
    local v = redis.call('HMGET', k, 'state', 'requested', 'attempts', 'history', 'artifacts',
                         'created_at')
    local state, req, att = v[1], v[2] or '', tonumber(v[3] or '0')
    if not state then return 0, 0, '', '', 0 end
    local ok = false
    if ARGV[a + 2] == '' then
        ok = OPEN[state] == true
    else
        for s in string.gmatch(string.sub(ARGV[a + 2], 2), '[^,]+') do
            if s == state then ok = true end
        end
    end
    if ok and ARGV[a + 11] ~= '' and string.sub(ARGV[a + 11], 2) ~= req then ok = false end
    if not ok then return 1, 0, state, req, att end
    if ARGV[a + 4] ~= '' then redis.call('HSET', k, 'history', append(v[4], ARGV[a + 4])) end
    if ARGV[a + 5] ~= '' then redis.call('HSET', k, 'artifacts', append(v[5], ARGV[a + 5])) end
    for j = 1, 4 do
        local o = ARGV[a + 5 + j]
        if o == '=' then
            redis.call('HDEL', k, fields[j])
        elseif o ~= '' then
            redis.call('HSET', k, fields[j], string.sub(o, 2))
        end
    end
    if ARGV[a + 8] ~= '' then req = string.sub(ARGV[a + 8], 2) end
    local to = ARGV[a + 3]
    if to ~= '' and to ~= state then
        redis.call('ZREM', p .. 'tasks:' .. state, id)
        redis.call('ZADD', p .. 'tasks:' .. to, v[6] or now, id) -- created_at, as text
        redis.call('HSET', k, 'state', to, 'state_at', now)
        state = to
    end
    if ARGV[a + 10] == '1' then att = redis.call('HINCRBY', k, 'attempts', 1) end
    redis.call('HSET', k, 'updated_at', now)
    if TERMINAL[state] and ttl > 0 then
        redis.call('EXPIRE', k, ttl)
        redis.call('ZADD', p .. 'expiring', tonumber(t[1]) + ttl, id)
    else -- open, or finished here where finished tasks are kept
        redis.call('PERSIST', k)
        redis.call('ZREM', p .. 'expiring', id)
    end
    return 1, 1, state, req, att
end

local out = {}
for i = 1, #KEYS - 1 do
    local found, changed, state, req, att = change(KEYS[1 + i], 2 + 11 * (i - 1))
    local o = 5 * (i - 1)
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = found, changed, state, req, att
end
return out

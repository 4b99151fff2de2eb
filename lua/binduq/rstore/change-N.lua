-- change-N: compare-and-set changes of tasks (storage.h, change, change_many).
-- KEYS[1] {Q}:tasks (names the slot); KEYS[1+i] {Q}:task:<id>, task i's hash
-- ARGV[1] the key prefix "{Q}:" ({Q}:tasks:<state>, {Q}:expiring)
-- ARGV[2] seconds a finished task is kept (0: for ever)
-- then 11 for each task i, from ARGV[3 + 11 * (i - 1)]: the id; from ("" any open state,
-- else "=" and comma-separated states); to ("" unchanged); append_history, append_artifacts
-- (JSON arrays, "" none); checkpoint, error, requested, worker ("" unchanged, "=" clears,
-- "=" and a value sets); "1" to count an attempt; if_requested ("" none, else "=" and what
-- `requested` must be).
-- Returns for each task in turn: found (0|1), changed (0|1), state, requested ("" none),
-- attempts; after its change, or as found when it refused.
local p, ttl = ARGV[1], tonumber(ARGV[2])
local OPEN = {submitted = true, working = true, ['input-required'] = true,
              ['auth-required'] = true, paused = true}
local TERMINAL = {completed = true, failed = true, canceled = true, rejected = true}
local function trim(s)
    return (string.gsub(string.gsub(s, '^%s+', ''), '%s+$', ''))
end
-- a's elements then b's: JSON arrays (b checked by the caller, a stored)
local function append(a, b)
    a, b = trim(a or '[]'), trim(b)
    if string.find(b, '^%[%s*%]$') then return a end
    if string.find(a, '^%[%s*%]$') then return b end
    return string.sub(a, 1, -2) .. ',' .. string.sub(b, 2)
end
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local fields = {'checkpoint', 'error', 'requested', 'worker'}

local function change(k, a) -- one HMGET, one HSET, one HDEL at most
    local id = ARGV[a + 1]
    local hist, arts = ARGV[a + 4] ~= '', ARGV[a + 5] ~= ''
    local v = redis.call('HMGET', k, 'state', 'requested', 'attempts', 'created_at',
                         hist and 'history' or 'id', arts and 'artifacts' or 'id')
    local state, req, att = v[1], v[2] or '', tonumber(v[3] or '0')
    if not state then return 0, 0, '', '', 0 end
    local ok = ARGV[a + 2] == '' and OPEN[state] == true
    for s in string.gmatch(string.sub(ARGV[a + 2], 2), '[^,]+') do
        if s == state then ok = true end
    end
    if ok and ARGV[a + 11] ~= '' and string.sub(ARGV[a + 11], 2) ~= req then ok = false end
    if not ok then return 1, 0, state, req, att end
    local set, del = {'updated_at', now}, {}
    if hist then set[#set + 1], set[#set + 2] = 'history', append(v[5], ARGV[a + 4]) end
    if arts then set[#set + 1], set[#set + 2] = 'artifacts', append(v[6], ARGV[a + 5]) end
    for j = 1, 4 do
        local o = ARGV[a + 5 + j]
        if o == '=' then
            del[#del + 1] = fields[j]
        elseif o ~= '' then
            set[#set + 1], set[#set + 2] = fields[j], string.sub(o, 2)
        end
    end
    if ARGV[a + 8] ~= '' then req = string.sub(ARGV[a + 8], 2) end
    local was, to = state, ARGV[a + 3]
    if to ~= '' and to ~= state then
        redis.call('ZREM', p .. 'tasks:' .. state, id)
        redis.call('ZADD', p .. 'tasks:' .. to, v[4] or now, id) -- created_at
        set[#set + 1], set[#set + 2], set[#set + 3], set[#set + 4] = 'state', to, 'state_at', now
        state = to
    end
    if ARGV[a + 10] == '1' then
        att = att + 1
        set[#set + 1], set[#set + 2] = 'attempts', att
    end
    if #del > 0 then redis.call('HDEL', k, unpack(del)) end
    redis.call('HSET', k, unpack(set))
    if TERMINAL[state] and ttl > 0 then
        redis.call('EXPIRE', k, ttl)
        redis.call('ZADD', p .. 'expiring', tonumber(t[1]) + ttl, id)
    elseif TERMINAL[was] then -- a requeued failure
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

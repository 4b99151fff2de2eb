-- list-1: the tasks of an index, newest first, filtered (storage.h, list).
-- KEYS[1] {Q}:tasks (every task) or {Q}:tasks:<state> (the tasks in one state), scored by
--         created_at
-- ARGV[1] the key prefix "{Q}:" (the tasks' hashes {Q}:task:<id>, in KEYS[1]'s slot)
-- ARGV[2] context_id: "" for any, else "=" and the context
-- ARGV[3] state: "" for any
-- ARGV[4] cut: > 0 for only the tasks whose state_at is before it (epoch seconds)
-- ARGV[5] the most to return
-- ARGV[6] how many matching tasks to skip first (paging; "0": none)
-- Returns an array of records, each the flat field/value array of HGETALL. Entries whose
-- hash has expired are removed from KEYS[1] on the way.
local idx, p = KEYS[1], ARGV[1]
local ctx = ARGV[2] ~= '' and string.sub(ARGV[2], 2) or nil
local want, cut, limit, skip = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]) or 0
-- state_at >= created_at, so a cut skips the newer entries by score alone
local max = cut > 0 and ('(' .. ARGV[4]) or '+inf'
local out, stale, offset = {}, {}, 0
while #out < limit do
    local ids = redis.call('ZREVRANGEBYSCORE', idx, max, '-inf', 'LIMIT', offset, 200)
    if #ids == 0 then break end
    offset = offset + #ids
    for _, id in ipairs(ids) do
        local h = redis.call('HGETALL', p .. 'task:' .. id)
        if #h == 0 then
            stale[#stale + 1] = id
        else
            local r = {}
            for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
            if (ctx == nil or r.context_id == ctx) and (want == '' or r.state == want) and
                (cut <= 0 or tonumber(r.state_at) < cut) then
                if skip > 0 then
                    skip = skip - 1
                else
                    out[#out + 1] = h
                    if #out >= limit then break end
                end
            end
        end
    end
end
for _, id in ipairs(stale) do redis.call('ZREM', idx, id) end
return out

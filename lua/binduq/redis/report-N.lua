-- report-N: a worker's report (every few seconds, from its heartbeat thread): what it is, for
-- the dashboard and `binduq-lua workers`, and the tasks it finished since its last report,
-- counted per minute so that the last hour's rates live in Redis whatever the load.
-- KEYS    for each queue i the worker fetches from: KEYS[2i-1] {Qi}:worker:<id> (a string:
--         the worker's JSON description), KEYS[2i] {Qi}:rates (a hash: "d:<minute>" and
--         "f:<minute>" -> tasks completed and failed in that minute, by the server's clock,
--         minute = epoch seconds / 60; "trim" -> the minute it was last trimmed)
-- ARGV[1] the description (JSON)
-- ARGV[2] how long it lives, in ms ("0": delete it: the worker is leaving)
-- ARGV[2+2i-1], ARGV[2+2i]  completed and failed on queue i since the last report
-- Minutes older than an hour and a minute are deleted once a minute; the hash itself
-- expires two hours after the last report that counted something. Returns the minute.
local m = math.floor(tonumber(redis.call('TIME')[1]) / 60)
for i = 1, #KEYS / 2 do
    local info, rates = KEYS[2 * i - 1], KEYS[2 * i]
    if ARGV[2] == '0' then
        redis.call('DEL', info)
    else
        redis.call('SET', info, ARGV[1], 'PX', ARGV[2])
    end
    local d, f = tonumber(ARGV[1 + 2 * i]) or 0, tonumber(ARGV[2 + 2 * i]) or 0
    if d > 0 or f > 0 then
        if d > 0 then redis.call('HINCRBY', rates, 'd:' .. m, d) end
        if f > 0 then redis.call('HINCRBY', rates, 'f:' .. m, f) end
        if tonumber(redis.call('HGET', rates, 'trim') or '0') ~= m then
            for _, k in ipairs(redis.call('HKEYS', rates)) do
                local km = tonumber(string.sub(k, 3))
                if k ~= 'trim' and (km == nil or km < m - 61) then redis.call('HDEL', rates, k) end
            end
            redis.call('HSET', rates, 'trim', m)
        end
        redis.call('EXPIRE', rates, 7200)
    end
end
return m

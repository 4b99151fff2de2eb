-- burybig-3: dead-letter a message too large to bring to the worker, without sending it back.
-- The worker knows only its length and first bytes (net/bulkcap.h); this finds it in the
-- in-flight list by both, removes it, and writes an entry with its first bytes and its SHA1.
-- KEYS[1] {Q}:wip:<id>  the in-flight list holding the message
-- KEYS[2] {Q}:dlq       the dead-letter list (newest first)
-- KEYS[3] {Q}:seals     the message's seal, if it has one ("#bq" line or embedded header), is released
-- ARGV[1] the message's length in bytes
-- ARGV[2] its first bytes (as many as the entry keeps)
-- ARGV[3] the entry: its JSON line (ending in '}'), a newline, the first bytes
-- ARGV[4] "1" if the message is in KEYS[1] (at-least-once), "0" if it was popped
-- Returns 1, or 0 if the lease was lost (then nothing is written).
local size, prefix, entry = tonumber(ARGV[1]), ARGV[2], ARGV[3]
if ARGV[4] ~= '1' then
    redis.call('LPUSH', KEYS[2], entry)
    return 1
end
local n = redis.call('LLEN', KEYS[1])
for i = 0, math.min(n, 100000) - 1 do
    local m = redis.call('LINDEX', KEYS[1], i)
    if m and #m == size and string.sub(m, 1, #prefix) == prefix then
        redis.call('LREM', KEYS[1], 1, m)
        local f = redis.sha1hex(m)
        local c = tonumber(redis.call('HGET', KEYS[3], f) or '0') -- its seal, if it has one
        if c > 1 then redis.call('HINCRBY', KEYS[3], f, -1) elseif c == 1 then redis.call('HDEL', KEYS[3], f) end
        local nl = string.find(entry, '\n', 1, true)
        redis.call('LPUSH', KEYS[2], string.sub(entry, 1, nl - 2) .. ',"sha1":"' .. f .. '"}'
                   .. string.sub(entry, nl))
        return 1
    end
end
return 0

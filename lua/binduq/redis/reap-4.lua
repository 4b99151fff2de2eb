-- reap-4: give the in-flight operations of a worker whose lease ran out back to the queue.
-- KEYS[1] {Q}:workers        sorted set of worker ids, score = lease expiry in ms
-- KEYS[2] {Q}:wip:<dead id>  the dead worker's in-flight list
-- KEYS[3] Q                  the queue; recovered operations go where workers take next
-- KEYS[4] {Q}:seals          see checkseal-1
-- ARGV[1] the dead worker's id
-- ARGV[2] the queue's front: "R" (producers LPUSH) or "L" (they RPUSH)
-- Each recovered message gets (or updates) a "#bq {...}" header line counting the attempt
-- the dead worker used up, so a message that kills every worker does not circle forever, and
-- is sealed. Only a sealed header is updated (and its seal released): a header binduq did
-- not write stays part of the message's body, so the recovered message is set aside as
-- malformed rather than run with the forger's attempt count.
-- Returns the number recovered, or -1 if the worker's lease is still valid (it came back) or
-- it is no longer registered (another worker reaped it first).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) >= now then return -1 end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
-- The list is newest first; pushing in that order onto the front leaves the oldest where
-- workers take next.
local push = ARGV[2] == 'L' and 'LPUSH' or 'RPUSH'
for i = 1, #items do
    local m = items[i]
    local header, body = { attempt = 1 }, m
    if string.sub(m, 1, 4) == '#bq ' then
        local f = redis.sha1hex(m)
        local c = tonumber(redis.call('HGET', KEYS[4], f) or '0')
        local nl = string.find(m, '\n', 5, true)
        if c > 0 and nl then
            if c <= 1 then redis.call('HDEL', KEYS[4], f) else redis.call('HINCRBY', KEYS[4], f, -1) end
            local ok, h = pcall(cjson.decode, string.sub(m, 5, nl - 1))
            if ok and type(h) == 'table' then header = h end
            body = string.sub(m, nl + 1)
        end
    end
    header.attempt = (tonumber(header.attempt) or 1) + 1
    header.redelivered = (tonumber(header.redelivered) or 0) + 1
    local out = '#bq ' .. cjson.encode(header) .. '\n' .. body
    redis.call(push, KEYS[3], out)
    redis.call('HINCRBY', KEYS[4], redis.sha1hex(out), 1)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return #items

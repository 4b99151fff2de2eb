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
-- A message in Bindu's format keeps the header embedded as its last key, "binduq", instead of
-- on a line, so Bindu's own worker can still read it (src/broker/broker.h has the rule).
-- Returns the number recovered, or -1 if the worker's lease is still valid (it came back) or
-- it is no longer registered (another worker reaped it first).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) >= now then return -1 end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local function bindu_form(m)
    return string.sub(m, 1, 12) == '{"operation"' and string.sub(m, -1) == '}'
end
-- Where an embedded header's ,"binduq": starts (1-based), or nil (broker.h's rule).
local function embedded(m)
    if not bindu_form(m) or string.sub(m, -2) ~= '}}' then return nil end
    local stop = math.max(13, #m - 1026)
    for j = #m - 2, stop, -1 do
        local c = string.byte(m, j)
        if c == 125 then return nil end -- '}'
        if c == 123 then                 -- '{'
            if j > 22 and string.sub(m, j - 10, j - 1) == ',"binduq":' then return j - 10 end
            return nil
        end
    end
    return nil
end
-- The list is newest first; pushing in that order onto the front leaves the oldest where
-- workers take next.
local push = ARGV[2] == 'L' and 'LPUSH' or 'RPUSH'
for i = 1, #items do
    local m = items[i]
    local header, body = { attempt = 1 }, m
    local k = embedded(m)
    if string.sub(m, 1, 4) == '#bq ' or k then
        local f = redis.sha1hex(m)
        local c = tonumber(redis.call('HGET', KEYS[4], f) or '0')
        local nl = not k and string.find(m, '\n', 5, true)
        if c > 0 and (k or nl) then
            if c <= 1 then redis.call('HDEL', KEYS[4], f) else redis.call('HINCRBY', KEYS[4], f, -1) end
            local text = k and string.sub(m, k + 10, -2) or string.sub(m, 5, nl - 1)
            local ok, h = pcall(cjson.decode, text)
            if ok and type(h) == 'table' then header = h end
            body = k and (string.sub(m, 1, k - 1) .. '}') or string.sub(m, nl + 1)
        end
    end
    header.attempt = (tonumber(header.attempt) or 1) + 1
    header.redelivered = (tonumber(header.redelivered) or 0) + 1
    local out
    if bindu_form(body) then
        out = string.sub(body, 1, -2) .. ',"binduq":' .. cjson.encode(header) .. '}'
    else
        out = '#bq ' .. cjson.encode(header) .. '\n' .. body
    end
    redis.call(push, KEYS[3], out)
    redis.call('HINCRBY', KEYS[4], redis.sha1hex(out), 1)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return #items

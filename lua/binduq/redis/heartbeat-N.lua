-- heartbeat-N: renew this worker's lease on each of its queues and list the workers whose
-- lease ran out.
-- KEYS    {Qi}:workers for each queue i the worker fetches from (sorted sets of worker ids,
--         score = lease expiry in ms by the server's clock)
-- ARGV[1] this worker's id
-- ARGV[2] lease in milliseconds
-- Returns a flat array {i, id, i, id, ...}: up to 16 expired workers (not this one) per queue,
-- each with the index of its queue in KEYS.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
    redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
    local dead = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '(' .. now, 'LIMIT', 0, 16)
    for _, id in ipairs(dead) do
        out[#out + 1] = i
        out[#out + 1] = id
    end
end
return out

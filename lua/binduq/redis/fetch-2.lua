-- fetch-2: take up to N waiting operations in one step, leased or not.
-- KEYS[1] Q             the queue (list)
-- KEYS[2] {Q}:wip:<id>  this worker's in-flight list (its lease is the worker's heartbeat)
-- ARGV[1] N             how many to take, at most
-- ARGV[2] the queue's front, where workers take: "R" (producers LPUSH) or "L" (they RPUSH)
-- ARGV[3] the most bytes to take (0: no limit): once the messages taken pass it, the rest
--         go back to the front, in order; the first is taken whatever its size
-- ARGV[4] "1" to lease them (move into the in-flight list), "0" for a plain pop
-- Returns the messages taken, oldest first (an empty array when Q is empty).
local left = ARGV[2] == 'L'
local items = redis.call(left and 'LPOP' or 'RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {} end
local budget = tonumber(ARGV[3])
if budget > 0 and #items > 1 then
    local total, keep = 0, #items
    for i = 1, #items do
        total = total + #items[i]
        if total > budget and i > 1 then
            keep = i - 1
            break
        end
    end
    for i = #items, keep + 1, -1 do
        redis.call(left and 'LPUSH' or 'RPUSH', KEYS[1], items[i])
        items[i] = nil
    end
end
if ARGV[4] == '1' then -- in pieces: unpack stops at about 8,000 values, and an error here
    -- would leave the messages popped and leased nowhere
    for i = 1, #items, 1000 do redis.call('LPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items))) end
end
return items

-- fetchm-N: take up to N operations from several queues at once, by priority, and lease them.
-- KEYS    Q1, {Q1}:wip:<id>, Q2, {Q2}:wip:<id>, ... (a queue, then its in-flight list for this
--         worker; queues in priority order)
-- ARGV[1] N, how many to take at most
-- ARGV[2] "1" to lease (move into the in-flight lists), "0" for a plain pop (at-most-once)
-- ARGV[3] each queue's front, one letter a queue: "R" (producers LPUSH) or "L" (they RPUSH)
-- ARGV[4] the most bytes to take (0: no limit): once the messages taken pass it, the rest go
--         back to the front of their queue, in order, and nothing more is taken; the first
--         is taken whatever its size
-- ARGV[5..] for weighted mode: one weight per queue, then one credit per queue (the state of
--          the smooth weighted round robin, kept by the worker between calls); nothing for
--          strict priority
-- Strict priority takes from Q1 while it has any, then Q2, ... Weighted takes in the
-- proportion of the weights among the queues that are not empty, deterministically: in every
-- run of sum(weights) takes from non-empty queues, queue i gets exactly weight(i) (nginx's
-- smooth weighted round robin), so a low priority never starves.
-- Returns {credits, {i, message, i, message, ...}}: the new credits (empty in strict mode) and
-- the messages with the index of their queue.
local n = tonumber(ARGV[1])
local lease = ARGV[2] == '1'
local fronts = ARGV[3]
local budget, total, spent = tonumber(ARGV[4]), 0, false
local k = #KEYS / 2
local out = {}
local function take(i, count)
    local left = string.sub(fronts, i, i) == 'L'
    local items = redis.call(left and 'LPOP' or 'RPOP', KEYS[2 * i - 1], count)
    if not items then return 0 end
    if budget > 0 then
        local keep = #items
        for j = 1, #items do
            total = total + #items[j]
            if total > budget and (j > 1 or #out > 0) then
                keep = j - 1
                break
            end
        end
        for j = #items, keep + 1, -1 do
            redis.call(left and 'LPUSH' or 'RPUSH', KEYS[2 * i - 1], items[j])
            items[j] = nil
            spent = true
        end
        if keep == 0 then return 0 end
    end
    if lease then -- in pieces: unpack stops at about 8,000 values (the messages are popped)
        for j = 1, #items, 1000 do
            redis.call('LPUSH', KEYS[2 * i], unpack(items, j, math.min(j + 999, #items)))
        end
    end
    for _, m in ipairs(items) do
        out[#out + 1] = i
        out[#out + 1] = m
    end
    return #items
end
if #ARGV < 4 + 2 * k then
    for i = 1, k do
        if n <= 0 or spent then break end
        n = n - take(i, n)
    end
    return { {}, out }
end
local len, weight, credit = {}, {}, {}
for i = 1, k do
    len[i] = redis.call('LLEN', KEYS[2 * i - 1])
    weight[i] = tonumber(ARGV[4 + i])
    credit[i] = tonumber(ARGV[4 + k + i])
end
while n > 0 and not spent do
    local sum, pick = 0, nil
    for i = 1, k do
        if len[i] > 0 then
            credit[i] = credit[i] + weight[i]
            sum = sum + weight[i]
            if pick == nil or credit[i] > credit[pick] then pick = i end
        end
    end
    if pick == nil then break end
    credit[pick] = credit[pick] - sum
    take(pick, 1)
    len[pick] = len[pick] - 1
    n = n - 1
end
return { credit, out }

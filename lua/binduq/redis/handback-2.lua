-- handback-2: return leased operations to the queue at once (graceful shutdown).
-- KEYS[1] {Q}:wip:<id>  this worker's in-flight list
-- KEYS[2] Q             the queue; handed-back operations go where workers take next
-- ARGV[1] the queue's front: "R" (producers LPUSH) or "L" (they RPUSH)
-- ARGV[2..] the messages as leased, oldest first
-- Returns the number handed back (a message no longer leased is skipped).
local push = ARGV[1] == 'L' and 'LPUSH' or 'RPUSH'
local n = 0
for i = #ARGV, 2, -1 do
    if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
        redis.call(push, KEYS[2], ARGV[i])
        n = n + 1
    end
end
return n

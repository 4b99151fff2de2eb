-- handback-2: return leased operations to the queue at once (graceful shutdown).
-- KEYS[1] {Q}:wip:<id>  this worker's in-flight list
-- KEYS[2] Q             the queue; handed-back operations go where workers take next
-- ARGV    the messages as leased, oldest first
-- Returns the number handed back (a message no longer leased is skipped).
local n = 0
for i = #ARGV, 1, -1 do
    if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
        redis.call('RPUSH', KEYS[2], ARGV[i])
        n = n + 1
    end
end
return n

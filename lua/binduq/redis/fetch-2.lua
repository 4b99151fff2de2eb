-- fetch-2: lease up to N waiting operations in one step.
-- KEYS[1] Q             the queue (list)
-- KEYS[2] {Q}:wip:<id>  this worker's in-flight list (its lease is the worker's heartbeat)
-- ARGV[1] N             how many to take, at most
-- ARGV[2] the queue's front, where workers take: "R" (producers LPUSH) or "L" (they RPUSH)
-- Returns the messages taken, oldest first (an empty array when Q is empty).
local items = redis.call(ARGV[2] == 'L' and 'LPOP' or 'RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {} end
redis.call('LPUSH', KEYS[2], unpack(items))
return items

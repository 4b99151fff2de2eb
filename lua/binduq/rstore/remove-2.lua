-- remove-2: forget a task (storage.h, remove).
-- KEYS[1] {Q}:task:<id>  the task's hash
-- KEYS[2] {Q}:tasks      the index of every task
-- ARGV[1] the key prefix "{Q}:" (the state indexes, {Q}:expiring)   ARGV[2] the id
-- Returns 1, or 0 when there was no such task.
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', ARGV[1] .. 'expiring', ARGV[2])
if not state then return 0 end
redis.call('ZREM', ARGV[1] .. 'tasks:' .. state, ARGV[2])
redis.call('DEL', KEYS[1])
return 1

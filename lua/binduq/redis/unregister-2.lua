-- unregister-2: a worker leaving cleanly drops its lease record and its empty in-flight list.
-- KEYS[1] {Q}:workers
-- KEYS[2] {Q}:wip:<id>
-- ARGV[1] this worker's id
-- Returns 1, or 0 if the in-flight list still holds operations (left for the reaper).
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1

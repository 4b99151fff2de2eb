-- ack-2: acknowledge a message that carries a "#bq" header line and release its seal.
-- KEYS[1] {Q}:wip:<id>  the in-flight list holding the message
-- KEYS[2] {Q}:seals     see checkseal-1
-- ARGV[1] the message as leased
-- ARGV[2] "1" if the lease must still be held (at-least-once), "0" otherwise
-- (Messages without a header are acknowledged with a plain LREM.)
-- Returns 1, or 0 if the lease was lost (the message went back to Q meanwhile and keeps its
-- seal: the recovery released it and sealed the recovered form).
if ARGV[2] == '1' and redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
local f = redis.sha1hex(ARGV[1])
if redis.call('HINCRBY', KEYS[2], f, -1) <= 0 then redis.call('HDEL', KEYS[2], f) end
return 1

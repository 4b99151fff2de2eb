-- checkseal-1: which fetched messages with a "#bq" header binduq itself queued again.
-- KEYS[1] {Q}:seals   hash: SHA1 of a message binduq queued with a "#bq" header line (a
--                     retry, a deferral, a recovery, a requeue) -> copies of it outstanding
-- ARGV    the messages (each starts with "#bq ")
-- Anyone who can push to Q can write a "#bq" line; only binduq's scripts write seals, so a
-- header without one was forged and must change nothing. A seal is released when binduq is
-- done with its message (acknowledged, retried, deferred, dead-lettered or recovered), not
-- here: a message handed back or recovered stays sealed.
-- Returns one 1 (sealed) or 0 (not queued by binduq) per message.
local out = {}
for i = 1, #ARGV do
    local c = redis.call('HGET', KEYS[1], redis.sha1hex(ARGV[i]))
    out[i] = (c and tonumber(c) > 0) and 1 or 0
end
return out

-- dedup.lua -- scheduling is idempotent per task: a second run of the same task_id within the
-- deduplication TTL is reported as a duplicate, not pushed.
--
--   build/binduq-lua examples/dedup.lua
local bq = require("binduq")

local s = bq.scheduler{ dedup_ttl = 3600 }
for _, id in ipairs({ "order-1", "order-2", "order-1", "order-3", "order-2" }) do
    local ok, status = s:run{ task_id = id, messages = { "process " .. id } }
    print(id, ok and status)
end
-- dedup_key chooses another key: one task per conversation, whatever its id.
local per_conversation = bq.scheduler{ queue_name = "bindu:chat",
                                       dedup_key = function(op) return op.conversation_id end }
print(select(2, per_conversation:run{ task_id = "a", conversation_id = "c-1", messages = { "hi" } }))
print(select(2, per_conversation:run{ task_id = "b", conversation_id = "c-1", messages = { "hi again" } }))
print(("queued: %d; duplicates counted: %d"):format(s:queue_length(), s.stats.deduplicated))

-- dedup.lua -- scheduling is idempotent per task: a second run of the same task_id within the
-- deduplication TTL is reported as a duplicate, not pushed.
--
--   build/binduq-lua examples/dedup.lua
--
-- In memory, or with REDIS_URL on its own queue, examples:dedup; a worker takes what is
-- queued, so the queue is empty when it ends.
local bq = require("binduq")
bq.log_configure{ level = "warn" }

local worker = bq.worker{
    scheduler = { queue_name = "examples:dedup", dedup_ttl = 3600 },
    handlers = { run = function(task) return "processed " .. task.task_id end },
}
worker:start()

-- The ids of this run (the keys hold for an hour: the same ids in the next run would be
-- duplicates from the start).
local run = bq.uuid():sub(1, 8)
local s = worker.scheduler
for _, name in ipairs({ "order-1", "order-2", "order-1", "order-3", "order-2" }) do
    local ok, status = s:run{ task_id = name .. "-" .. run, messages = { "process " .. name } }
    print(name, ok and status)
end
-- dedup_key chooses another key: one task per conversation, whatever its id.
local per_conversation = bq.scheduler{ queue_name = "examples:dedup",
                                       dedup_key = function(op) return op.conversation_id end }
local chat = "chat-" .. run
print(select(2, per_conversation:run{ task_id = "a-" .. run, conversation_id = chat, messages = { "hi" } }))
print(select(2, per_conversation:run{ task_id = "b-" .. run, conversation_id = chat, messages = { "hi again" } }))
print(("scheduled: %d; duplicates counted: %d"):format(s.stats.scheduled, s.stats.deduplicated))
local stats = worker:drain()
print(("done: %d completed"):format(stats.completed))

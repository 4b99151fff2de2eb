-- worker.lua -- a worker that echoes the text of each task's last message.
--
--   REDIS_URL=redis://127.0.0.1:6379/0 build/binduq-lua examples/worker.lua [concurrency]
--
-- It waits on REDIS_QUEUE_NAME (default examples:echo, where examples/producer.lua schedules;
-- examples/bindu_worker.lua takes Bindu's own queue) with a blocking pop, runs until SIGINT or
-- SIGTERM, and logs one line per completed task. A message text "sleep:<ms>" makes the
-- handler wait that long first: it stands in for a slow agent call in demos and tests.

local bq = require("binduq")

local function echo(task, ctx)
    local text = task.messages[#task.messages].content
    local ms = text:match("^sleep:(%d+)$")
    if ms then ctx:sleep(tonumber(ms) / 1000) end
    return text
end

local worker = bq.worker{
    scheduler = { queue_name = os.getenv("REDIS_QUEUE_NAME") or "examples:echo" },
    concurrency = tonumber(arg[1]) or tonumber(os.getenv("BINDUQ_CONCURRENCY")) or 1,
    handlers = { run = echo, resume = echo },
}
worker:run()

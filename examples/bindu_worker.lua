-- bindu_worker.lua -- a binduq worker in place of Bindu's Python workers.
--
--   build/binduq-lua examples/bindu_worker.lua
--
-- Run it with the environment Bindu's processes already have (SCHEDULER_TYPE=redis,
-- REDIS_URL or REDIS_HOST/REDIS_PORT/..., QUEUE_NAME, a .env file in the working directory):
-- binduq reads Bindu's names. Bindu's producers RPUSH, so the queue's order is "rpush"
-- (taken oldest first). With STORAGE_TYPE=postgres the tasks live in Bindu's own tables, in
-- the schema of the agent's DID (POSTGRES_DID), where Bindu's API reads them. Each task's
-- messages arrive with their text parts joined as Bindu joins them (task.messages[i].content), the A2A parts kept (task.messages[i].parts).

local bq = require("binduq")

local function agent(task, ctx)
    local last = task.messages[#task.messages]
    ctx:log("info", "answering", { parts = last.parts and #last.parts or 0 })
    return "You said: " .. last.content
end

bq.worker{
    scheduler = { order = "rpush" },
    storage = { layout = "bindu" },
    concurrency = tonumber(os.getenv("BINDUQ_CONCURRENCY")) or 4,
    handlers = { run = agent, resume = agent },
}:run()

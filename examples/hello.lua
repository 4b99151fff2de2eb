-- hello.lua -- the first run: a worker and a few tasks on the in-memory scheduler.
--
--   build/binduq-lua examples/hello.lua
--
-- No Redis needed: without REDIS_URL binduq uses the in-memory scheduler of this process.
-- With REDIS_URL set, the same script goes through Redis, on its own queue, examples:hello.

local bq = require("binduq")
io.stdout:setvbuf("line")

local worker = bq.worker{
    scheduler = { queue_name = "examples:hello" },
    concurrency = 2,
    handlers = {
        run = function(task, ctx)
            local last = task.messages[#task.messages]
            return ("Hello, %s! (handled by slot %d)"):format(last.content, ctx.slot)
        end,
    },
    on_result = function(r)
        print(("%-17s %-10s %s"):format(r.task_id, r.state, r.result or r.reason))
    end,
}

-- Handler states (one per unit of concurrency) load this script too, and stop here.
worker:start()

-- A task id is scheduled once (a second run of it within an hour is a duplicate): fresh
-- ids each time the script runs.
local run = bq.uuid():sub(1, 8)
for i, name in ipairs({ "Ada", "Grace", "Edsger", "Barbara", "Ken" }) do
    assert(worker:schedule{ type = "run", task_id = ("hello-%d-%s"):format(i, run), messages = { name } })
end

-- Returns once the queue is empty and nothing is running.
local stats = worker:drain()
print(("done: %d completed, %d failed"):format(stats.completed, stats.failed))

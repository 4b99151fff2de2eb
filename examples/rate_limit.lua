-- rate_limit.lua -- at most 5 tasks per second per user, enforced by binduq; tasks over the
-- limit wait (nothing is lost) while other users keep flowing.
--
--   build/binduq-lua examples/rate_limit.lua
--
-- In memory, or with REDIS_URL on its own queue, examples:rate_limit, where the limit holds
-- across processes (and across runs of this script: a user's limit is the user's).
local bq = require("binduq")
io.stdout:setvbuf("line")

local t0 = bq.now()
local worker = bq.worker{
    scheduler = { queue_name = "examples:rate_limit" },
    concurrency = 2,
    rate_limit = { limit = 5, period = 1 },
    rate_key = function(task) return task.metadata.user end, -- the policy: per user
    handlers = { run = function(task, ctx) return ("%s at +%.2f s"):format(task.metadata.user, ctx.admitted_at - t0) end },
    on_result = function(r) if r.state == "completed" then print(r.task_id, r.result) end end,
}
worker:start()
local run = bq.uuid():sub(1, 8) -- fresh task ids each run: a task id is scheduled once
local function task(user, i)
    return { type = "run", task_id = ("%s-%d-%s"):format(user, i, run), messages = { "x" }, metadata = { user = user } }
end
for i = 1, 12 do worker:schedule(task("alice", i)) end
for i = 1, 3 do worker:schedule(task("bob", i)) end
local stats = worker:drain()
print(("done: %d completed, %d times a task waited for its user's limit"):format(stats.completed, stats.rate_limited))

-- priority.lua -- routing by priority: the script's route() picks a level per task; the
-- worker takes strictly by level (or by weight with `weights`).
--
--   build/binduq-lua examples/priority.lua [strict|weighted]
--
-- Runs on the in-memory scheduler unless REDIS_URL is set. Queues fetched together share the
-- hash tag {examples:priority}, as Redis Cluster requires.
local bq = require("binduq")
io.stdout:setvbuf("line")

local mode = arg[1] or "strict"
local levels = { high = "{examples:priority}:high", normal = "{examples:priority}:normal",
                 low = "{examples:priority}:low" }
local first, taken = { high = 0, normal = 0, low = 0 }, 0

local worker = bq.worker{
    queues = { levels.high, levels.normal, levels.low },
    weights = mode == "weighted" and { 6, 3, 1 } or nil,
    handlers = { run = function(task) return task.queue:match(":(%a+)$") end },
    on_result = function(r)
        taken = taken + 1
        if taken <= 100 then first[r.result] = first[r.result] + 1 end
    end,
}

-- Fill the queues before the worker starts. Handler states run this script up to drain()
-- too, so the one-time work is guarded (see "How handlers run" in the README).
if bq.role == "main" then
    local s = bq.scheduler{
        queue_name = levels.normal,
        levels = levels,
        route = function(op) return op.metadata.level end, -- the policy: the task says
    }
    local run = bq.uuid():sub(1, 8) -- fresh task ids each run: a task id is scheduled once
    for i = 1, 300 do
        local level = ({ "low", "normal", "high" })[i % 3 + 1]
        assert(s:run{ task_id = ("prio-%d-%s"):format(i, run), messages = { "x" }, metadata = { level = level } })
    end
end
-- The first 100 taken show the policy: strict takes all "high" first; weighted about 6:3:1.
worker:drain()
print(("%s: of the first 100 taken, high %d, normal %d, low %d; all %d done")
    :format(mode, first.high, first.normal, first.low, taken))

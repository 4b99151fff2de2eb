-- The benchmark's worker: a no-op handler, and a latency probe. A message whose text is
-- "t=<monotonic seconds>" returns how long ago that was (producer LPUSH to handler start).
local bq = require("binduq")
local core = require("binduq.core")

local function handler(task)
    local sent = task.messages[1].content:match("^t=([%d.]+)")
    if sent then return core.monotonic() - tonumber(sent) end
    return true
end

-- opts.variant: nil (plain), "routing" (3 queues, strict), "ratelimit" (a key per task)
local function make(opts)
    opts = opts or {}
    local q = opts.queue
    local routing = opts.variant == "routing" and q
    return bq.worker{
        name = "bench-worker",
        script = "tests/bench/noop_worker.lua",
        args = { [0] = "noop_worker.lua", opts.variant },
        scheduler = { url = opts.url, queue_name = q, tls = opts.tls },
        storage = opts.storage,
        queues = routing and { q .. ":high", q .. ":normal", q .. ":low" } or nil,
        rate_limit = opts.variant == "ratelimit" and { limit = 1000000, period = 1 } or nil,
        rate_key = function(task) return task.task_id end,
        concurrency = opts.concurrency or 1,
        prefetch = opts.prefetch,
        delivery = opts.delivery,
        handlers = { run = handler },
        on_result = opts.on_result,
    }
end

if bq.role == "handler" then make{ variant = arg[1] }:start() end
return make

-- The benchmark's worker: a no-op handler, and a latency probe. A message whose text is
-- "t=<monotonic seconds>" returns how long ago that was (producer LPUSH to handler start).
local bq = require("binduq")
local core = require("binduq.core")

local function handler(task)
    local sent = task.messages[1].content:match("^t=([%d.]+)")
    if sent then return core.monotonic() - tonumber(sent) end
    return true
end

local function make(opts)
    return bq.worker{
        name = "bench-worker",
        script = "tests/bench/noop_worker.lua",
        scheduler = { url = opts and opts.url, queue_name = opts and opts.queue },
        concurrency = opts and opts.concurrency or 1,
        delivery = opts and opts.delivery,
        handlers = { run = handler },
        on_result = opts and opts.on_result,
    }
end

if bq.role == "handler" then make():start() end
return make

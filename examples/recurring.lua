-- recurring.lua -- a worker that runs a task on a schedule (docs/recurring.md): every second
-- here, and a cron expression with seconds and a time zone beside it. With REDIS_URL, start it
-- in several terminals: each tick still runs once, whichever of them are alive.
--
--   build/binduq-lua examples/recurring.lua [ticks]      (default 3, then it stops)
--
-- In memory the worker fires its schedules in its own process; the runs' task ids are
-- "<schedule>:<tick>", the tick in seconds since the epoch.
local bq = require("binduq")
bq.log_configure{ level = "warn" }

local want = math.tointeger(tonumber(arg[1] or "")) or 3
local seen = 0
local worker
worker = bq.worker{
    scheduler = { queue_name = "examples:recurring" },
    schedules = {
        { name = "heartbeat", every = 1, op = { messages = { "beat" } } },
        -- 09:00 on weekdays in Berlin, daylight saving included; a run missed while every
        -- worker was down runs once when one comes back.
        { name = "digest", cron = "0 0 9 * * MON-FRI", tz = "Europe/Berlin", missed = "once",
          jitter = 30, op = { messages = { "make the digest" } } },
    },
    handlers = { run = function(task) return task.messages[1].content .. " at " .. task.task_id end },
    on_result = function(r)
        print(r.state, r.result)
        seen = seen + 1
        if seen >= want then worker:stop() end
    end,
}
worker:run()
print(("done: %d runs"):format(seen))

-- lifecycle.lua -- a task's life: a question that needs more input, a resume that
-- continues the conversation, a long task paused and resumed from its checkpoint, and a
-- cancel that stops a running handler.
--
--   build/binduq-lua examples/lifecycle.lua
--
-- In memory by default. With REDIS_URL and DATABASE_URL set the same script goes through
-- Redis (its own queue, examples:lifecycle) and keeps task state in PostgreSQL, where any
-- worker can continue a task.

local bq = require("binduq")
io.stdout:setvbuf("line")
bq.log_configure{ level = "warn" }

local worker = bq.worker{
    scheduler = { queue_name = "examples:lifecycle" },
    concurrency = 2,
    handlers = {
        run = function(task, ctx)
            local text = task.messages[#task.messages].content
            if text == "weather?" then
                -- Not enough to go on: ask, and keep the task open.
                return { state = "input-required", prompt = "Which city?" }
            end
            if text == "count" then
                -- A long job that can be paused: it checkpoints its progress.
                local i = math.tointeger(ctx.saved or 0)
                while i < 30 do
                    i = i + 1
                    ctx:checkpoint(i)
                    ctx:sleep(0.01)
                end
                return ("counted to %d (%s)"):format(i, ctx.resumed and "resumed" or "in one go")
            end
            if text == "forever" then
                while true do end -- only a cancel stops this one
            end
            -- The whole conversation so far is in task.messages.
            return ("Sunny in %s (after %d messages)"):format(text, #task.messages)
        end,
    },
}
worker:start()
local s = worker.scheduler

-- Task ids are fresh each run ("ask-1b2c3d4e"): a task id is scheduled once, and a finished
-- task stays finished.
local run = bq.uuid():sub(1, 8)
local function id(name) return name .. "-" .. run end

local function wait_for(name, state)
    for _ = 1, 500 do
        local t = s:get_task(id(name))
        if t and t.state == state then return t end
        worker:poll(0.01)
    end
    error(name .. " never reached " .. state)
end

local function show(name)
    local t = s:get_task(id(name))
    print(("%-8s %-15s %s"):format(name, t.state, t.history[#t.history].content))
end

s:run{ task_id = id("ask"), messages = { "weather?" } }
wait_for("ask", "input-required")
show("ask")
s:resume(id("ask"), { "Lisbon" })
wait_for("ask", "completed")
show("ask")

s:run{ task_id = id("count"), messages = { "count" } }
wait_for("count", "working")
bq.sleep(0.1)
s:pause(id("count"))
local t = wait_for("count", "paused")
print(("%-8s %-15s checkpoint %d"):format("count", t.state, math.tointeger(t.checkpoint)))
s:resume(id("count"))
wait_for("count", "completed")
show("count")

s:run{ task_id = id("spin"), messages = { "forever" } }
wait_for("spin", "working")
local t0 = bq.monotonic()
s:cancel(id("spin"))
worker:drain()
print(("%-8s %-15s stopped %.1f ms after the cancel"):format("spin", s:get_task(id("spin")).state,
                                                           (bq.monotonic() - t0) * 1000))

--- helpers.cluster: worker processes and their logs, for the integration tests.

local proc = require("helpers.proc")

local M = {}

--- Starts a worker process running `script` with env (merged with REDIS_URL/QUEUE), waits
-- for its "worker_started" line (unless `nowait`) and returns the process.
function M.worker(server, queue, env, script, dir, nowait)
    local e = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "info",
                BINDUQ_LOG_FORMAT = "text" }
    for k, v in pairs(env or {}) do e[k] = tostring(v) end
    local p = proc.spawn("build/binduq-lua " .. (script or "tests/integration/fixtures/test_worker.lua"),
                         { env = e, dir = dir })
    if nowait then return p end
    assert(proc.wait_for(function()
        local log = proc.read(p.log) or ""
        return log:find("worker_started", 1, true) or not proc.alive(p)
    end, 20), "worker did not start")
    assert(proc.alive(p), "worker exited at start: " .. tostring(proc.read(p.log)))
    return p
end

--- Schedules n run tasks "<prefix>-<i>" whose message is `text` (a string, or a function of
-- i), through binduq's producer in this process.
function M.schedule(server, queue, n, prefix, text)
    local bq = require("binduq")
    local s = bq.scheduler{ url = server.url, queue_name = queue }
    local batch = {}
    for i = 1, n do
        batch[#batch + 1] = { type = "run", task_id = prefix .. "-" .. i,
                              messages = { type(text) == "function" and text(i) or text } }
        if #batch == 1000 or i == n then
            assert(s:schedule_many(batch))
            batch = {}
        end
    end
    s:close()
end

--- Counts "<event> task_id=<id>" lines in the logs: returns {id = count}, total.
function M.count(procs, event)
    local seen, total = {}, 0
    for _, p in ipairs(procs) do
        for id in (proc.read(p.log) or ""):gmatch(" " .. event .. " task_id=(%S+)") do
            seen[id] = (seen[id] or 0) + 1
            total = total + 1
        end
    end
    return seen, total
end

--- Lines of a log matching a pattern.
function M.lines(p, pattern)
    local out = {}
    for line in (proc.read(p.log) or ""):gmatch("[^\n]+") do
        if line:find(pattern) then out[#out + 1] = line end
    end
    return out
end

--- The UTC time of day of a log line, in seconds.
function M.stamp(line)
    local h, m, s = line:match("T(%d%d):(%d%d):([%d.]+)Z")
    return h and (tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s))
end

--- Waits until scheduler s reads task id in `state` (within timeout seconds, 10 by default);
-- fails the test naming the state it was in otherwise. Returns the task.
function M.wait_state(s, id, state, timeout)
    local last
    local ok = proc.wait_for(function()
        local t = s:get_task(id)
        last = t and t.state
        return last == state
    end, timeout or 10, 0.01)
    assert(ok, ("task %s is %s, not %s"):format(id, tostring(last), state))
    return s:get_task(id)
end

return M

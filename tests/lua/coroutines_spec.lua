-- tasks_per_state: a handler state runs many tasks at once as coroutines, each waiting in
-- ctx:sleep (or ctx:http) while the others run. In memory: the tasks wait together, each sees
-- its own ctx and trace after its wait, timeouts, failures and retries keep their meaning,
-- and a shutdown stops the waiting tasks. (With Redis, PostgreSQL and HTTP calls:
-- tests/integration/http_spec.lua.)

local bq = require("binduq")

local n = 0
local function fresh_queue()
    n = n + 1
    return ("spec:coroutines:%d:%d"):format(os.time(), n)
end

local function worker(q, opts, results)
    local o = { handlers = "lua.fixtures.handlers_coroutines", concurrency = 1, tasks_per_state = 50,
                scheduler = { type = "memory", queue_name = q },
                on_result = function(r) results[r.task_id] = r end }
    for k, v in pairs(opts or {}) do o[k] = v end
    return bq.worker(o)
end

describe("tasks_per_state", function()
    setup(function() bq.log_configure{ level = "error" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("runs a state's tasks together, each with its own ctx and trace after its wait", function()
        local q, results = fresh_queue(), {}
        local w = worker(q, nil, results)
        local s = bq.scheduler{ type = "memory", queue_name = q }
        for i = 1, 100 do
            local trace = ("%032x"):format(i)
            assert(s:run{ task_id = "co" .. i, messages = { "sleep:0.2" }, trace_id = trace,
                          span_id = ("%016x"):format(i) })
        end
        local stats = w:drain()
        assert.are.equal(100, stats.completed)
        local most = 0
        for i = 1, 100 do
            local r = results["co" .. i]
            assert.are.equal("completed", r.state)
            assert.are.equal("co" .. i, r.result.id)
            assert.are.equal(("%032x"):format(i), r.result.trace)
            if r.result.most > most then most = r.result.most end
        end
        -- One thread, one state: 50 tasks were inside their handlers at once.
        assert.are.equal(50, most)
        s:close()
    end)

    it("keeps timeouts, failures and retries per task", function()
        local q, results = fresh_queue(), {}
        local w = worker(q, { max_attempts = 2, retry_base = 0.01, retry_cap = 0.01 }, results)
        local s = bq.scheduler{ type = "memory", queue_name = q }
        assert(s:run{ task_id = "spin", messages = { "spin" }, timeout = 0.3, max_attempts = 1 })
        assert(s:run{ task_id = "late", messages = { "sleep:5" }, timeout = 0.3, max_attempts = 1 })
        assert(s:run{ task_id = "bad", messages = { "fail" } })
        for i = 1, 20 do assert(s:run{ task_id = "ok" .. i, messages = { "sleep:0.1" } }) end
        assert(s:run{ task_id = "nested", messages = { "nested" } })
        local stats = w:drain()
        assert.are.equal(21, stats.completed)
        assert.are.equal("inner", results.nested.result)
        for i = 1, 20 do assert.are.equal("ok" .. i, results["ok" .. i].result.id) end
        local dead = {}
        for _, d in ipairs(s:dead_letters()) do dead[d.task_id] = d end
        assert.matches("timeout", dead.spin.reason)
        assert.matches("timeout", dead.late.reason)
        assert.matches("failed on purpose", dead.bad.reason)
        assert.are.equal(2, dead.bad.attempts)
        s:close()
    end)

    it("is refused out of its range", function()
        for _, v in ipairs({ 0, 10001, 1.5 }) do
            local ok, err = pcall(function() local w = bq.worker{ handlers = "lua.fixtures.handlers_coroutines",
                                                                   tasks_per_state = v }; return w end)
            assert.is_false(ok)
            assert.matches("tasks_per_state must be a whole number from 1 to 10000", tostring(err))
        end
    end)
end)

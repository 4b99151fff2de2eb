-- The worker on the in-memory scheduler: handler states, results, failures and malformed
-- messages set aside in the dead-letter list.

local bq = require("binduq")

local fixture = "tests/lua/fixtures/memory_worker.lua"

local function new_worker(opts)
    return dofile(fixture)(opts)
end

local seq = 0
local function fresh_queue()
    seq = seq + 1
    return ("spec:worker:%d:%d"):format(os.time(), seq)
end

describe("worker (memory)", function()
    setup(function() bq.log_configure{ level = "off" } end)
    -- Task state is one table per process: start each test without the others' tasks.
    before_each(function() require("binduq.core").storage_reset() end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("handles every task exactly once and reports results", function()
        local q = fresh_queue()
        local results = {}
        local w = new_worker{ queue = q, concurrency = 3, on_result = function(r) results[#results + 1] = r end }
        w:start()
        for i = 1, 200 do
            assert(w:schedule{ type = "run", task_id = "t" .. i, messages = { "echo " .. i } })
        end
        local stats = w:drain()
        assert.are.equal(200, stats.completed)
        assert.are.equal(0, stats.failed)
        assert.are.equal(200, #results)
        local seen = {}
        for _, r in ipairs(results) do
            assert.are.equal("completed", r.state)
            assert.is_nil(seen[r.task_id])
            seen[r.task_id] = true
            assert.are.equal("echo " .. r.task_id:sub(2), r.result)
        end
        assert.are.equal(0, w.scheduler:queue_length())
        w:close()
    end)

    it("runs handlers in separate handler states", function()
        local q = fresh_queue()
        local slots = {}
        local w = new_worker{ queue = q, concurrency = 4, on_result = function(r) slots[r.result] = true end }
        local s = bq.scheduler{ type = "memory", queue_name = q }
        for i = 1, 40 do s:run{ task_id = "s" .. i, messages = { "slot" } } end
        w:drain()
        for slot in pairs(slots) do assert.truthy(slot >= 1 and slot <= 4) end
        s:close()
        w:close()
    end)

    it("sets failed and malformed messages aside with their reasons", function()
        local q = fresh_queue()
        local results = {}
        local w = new_worker{ queue = q, max_attempts = 1,
                              on_result = function(r) results[r.task_id or r.reason] = r end }
        local s = bq.scheduler{ type = "memory", queue_name = q }
        s:run{ task_id = "ok1", messages = { "echo a" } }
        s:run{ task_id = "f1", messages = { "fail" } }
        s:run{ task_id = "f2", messages = { "nil-err" } }
        s:run{ task_id = "f3", messages = { "fatal" } }
        s:run{ task_id = "f4", messages = { "func" } }
        s:push_raw("this is not json")
        s:push_raw('{"type":"pause","task_id":"p1"}') -- built in: an unknown task is recorded paused
        s:run{ task_id = "ok2", messages = { "echo b" } }
        local stats = w:drain()
        assert.are.equal(2, stats.completed)
        assert.are.equal(4, stats.failed)
        assert.are.equal(1, stats.malformed)
        assert.are.equal(5, stats.dead_lettered)
        assert.are.equal(1, stats.paused)
        assert.are.equal("paused", s:get_task("p1").state)

        assert.are.equal("boom", results.f1.error.message:match("boom"))
        assert.are.equal("EHANDLER", results.f1.error.code)
        assert.is_true(results.f1.error.retryable)
        assert.truthy(results.f1.error.traceback:find("memory_worker.lua", 1, true))
        assert.are.equal("it did not work", results.f2.error.message)
        assert.are.equal("EBADINPUT", results.f3.error.code)
        assert.is_false(results.f3.error.retryable)
        assert.are.equal("ERESULT", results.f4.error.code)
        assert.are.equal("paused", results.p1.state)

        local dead = s:dead_letters()
        assert.are.equal(5, #dead)
        local by = {}
        for _, d in ipairs(dead) do by[d.task_id or d.message] = d end
        assert.are.equal("this is not json", by["this is not json"].message)
        assert.truthy(by["this is not json"].reason:find("invalid JSON", 1, true))
        assert.are.equal(q, by.f1.queue)
        assert.are.equal(1, by.f1.attempts)
        assert.truthy(by.f1.worker)
        assert.truthy(by.f1.failed_at:match("^%d%d%d%d%-"))
        assert.are.equal("EHANDLER", by.f1.error.code)
        assert.are.equal("run", by.f1.type)
        -- the original bytes, exactly
        assert.are.equal("f1", require("binduq.json").decode(by.f1.message).task_id)
        s:close()
        w:close()
    end)

    it("refuses to start when a handler state cannot load the script", function()
        local w = bq.worker{ script = "tests/lua/fixtures/does_not_exist.lua",
                             scheduler = { type = "memory", queue_name = fresh_queue() },
                             handlers = { run = function() end } }
        local ok, err = pcall(w.start, w)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("handler state 1", 1, true), err)
        assert.truthy(tostring(err):find("does_not_exist.lua", 1, true), err)
        w:close()
    end)

    it("refuses to start when the script never starts the worker", function()
        local w = bq.worker{ script = "tests/lua/fixtures/no_start.lua",
                             scheduler = { type = "memory", queue_name = fresh_queue() },
                             handlers = { run = function() end } }
        local ok, err = pcall(w.start, w)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("without starting worker", 1, true), err)
        w:close()
    end)

    it("sets aside a message over max_message_size keeping its first bytes and length", function()
        local q = fresh_queue()
        local w = new_worker{ queue = q, max_message_size = 1000 }
        local s = bq.scheduler{ type = "memory", queue_name = q }
        local raw = '{"type":"run","task_id":"big","messages":[{"role":"user","content":"'
                    .. ("y"):rep(5000) .. '"}]}'
        s:push_raw(raw)
        s:run{ task_id = "small", messages = { "echo a" } }
        local stats = w:drain()
        assert.are.equal(1, stats.completed)
        assert.are.equal(1, stats.malformed)
        local e = s:dead_letters()[1]
        assert.are.equal(("message too large (%d bytes; max_message_size is 1000)"):format(#raw), e.reason)
        assert.are.equal(#raw, e.size)
        assert.is_true(e.truncated)
        assert.are.equal(raw:sub(1, 256), e.message)
        assert.are.equal(0, s:requeue_dead())
        local ok, why = s:requeue_entry(s:dead_letter(0).raw)
        assert.is_nil(ok)
        assert.truthy(tostring(why):find("cannot be requeued", 1, true), why)
    end)

    it("checks its options", function()
        local cases = {
            { { handlers = {} }, "needs handlers" },
            { { handlers = { run = 1 } }, "handlers.run must be a function" },
            { { handlers = { walk = print } }, "unknown operation 'walk'" },
            { { handler = print, concurrency = 0 }, "concurrency must be" },
            { { handler = print, concurrency = 1.5 }, "concurrency must be" },
            { { handler = print, colour = "red" }, "unknown options key 'colour'" },
            { { handler = print, scheduler = { urll = "x" } }, "unknown scheduler key 'urll'" },
            { { handler = print, scheduler = { type = "kafka" } }, "must be \"redis\" or \"memory\"" },
            { { handler = print, storage = { type = "postgres" } }, "storage type \"postgres\" needs a url" },
            { { handler = print, storage = { type = "sqlite" } }, "storage type 'sqlite' is not supported" },
            { { handler = print, scheduler = { type = "memory" }, storage = { type = "redis" } },
              "type \"redis\" needs a Redis URL" },
            { { handler = print, storage = { type = "redis", ttl = -1 } }, "storage.ttl must be from 0" },
            { { handler = print, max_message_size = 10 }, "max_message_size" },
            { { handler = print, storage = { type = "memory", max_tasks = 0 } }, "storage.max_tasks must be a whole number" },
            { { handler = print, storage = { type = "memory", max_tasks = 2.5 } }, "storage.max_tasks must be a whole number" },
            { { handler = print, storage = { type = "memory", max_tasks = "9" } }, "storage key 'max_tasks' must be a number" },
            -- every duration is finite and at most 365 days
            { { handler = print, timeout = math.huge }, "timeout is infinite (got inf)" },
            { { handler = print, lease = 0 / 0 }, "lease is not a number" },
            { { handler = print, shutdown_timeout = 1e300 }, "shutdown_timeout is longer than 365 days" },
            { { handler = print, retry_cap = math.huge }, "retry_cap is infinite" },
            { { handler = print, block_timeout = -math.huge }, "block_timeout is infinite" },
            { { handler = print, recovery_after = 1e12 }, "recovery_after is longer than 365 days" },
            { { handler = print, rate_limit = { limit = 1, period = math.huge } }, "rate_limit.period must be a positive" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(bq.worker, c[1])
            assert.is_false(ok)
            assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
        end
    end)
end)

describe("a failure policy's decision", function()
    it("must retry after a finite delay of at most 365 days", function()
        local retry = require("binduq.retry")
        assert.are.equal("retry", (retry.check{ retry = 2.5 }))
        for _, bad in ipairs({ math.huge, -1, 0 / 0, 1e300, "5" }) do
            local ok, err = pcall(retry.check, { retry = bad })
            assert.is_false(ok)
            assert.truthy(tostring(err):find("retry must be a number of seconds from 0 to 365 days", 1, true), tostring(err))
        end
    end)
end)

describe("with handlers in a module (handlers = \"app.handlers\")", function()
    it("loads the module in each handler state and never re-runs the script", function()
        local q = fresh_queue()
        local results = {}
        local w = bq.worker{ handlers = "lua.fixtures.handlers_module", concurrency = 3,
                             scheduler = { type = "memory", queue_name = q },
                             on_result = function(r) results[r.task_id] = r end }
        local s = bq.scheduler{ type = "memory", queue_name = q }
        for i = 1, 30 do assert(s:run{ task_id = "mod" .. i, messages = { "m" .. i } }) end
        assert(s:run{ task_id = "modfail", messages = { "fail" } })
        local stats = w:drain()
        assert.are.equal(30, stats.completed)
        for i = 1, 30 do
            local r = results["mod" .. i]
            assert.are.equal("completed", r.state)
            -- Run in a handler state, where the module was loaded exactly once.
            assert.are.equal("m" .. i .. " from handler, loaded 1 time(s) here", r.result)
        end
        -- The module's on_failure is the policy in the handler states.
        assert.are.equal("dead", results.modfail.state)
        local dead = s:dead_letters()
        assert.are.equal(1, #dead)
        assert.are.equal("modfail", dead[1].task_id)
        assert.are.equal("module policy: failed on purpose", dead[1].reason)
        s:close()
    end)

    it("takes a module that returns the handlers table itself", function()
        local q = fresh_queue()
        local got
        local w = bq.worker{ handlers = "lua.fixtures.handlers_plain", scheduler = { type = "memory", queue_name = q },
                             on_result = function(r) got = r end }
        w:schedule{ type = "run", task_id = "plain1", messages = { "x" } }
        w:drain()
        assert.are.equal("plain plain1", got.result)
    end)

    it("names what is wrong with a module, at the caller's line", function()
        local function refused(opts, want)
            local ok, err = pcall(function() local w = bq.worker(opts); return w end) -- no tail call
            assert.is_false(ok)
            assert.truthy(tostring(err):find(want, 1, true), err)
            assert.truthy(tostring(err):find("worker_spec.lua", 1, true), err)
        end
        refused({ handlers = "lua.fixtures.no_such_module" }, "handlers module 'lua.fixtures.no_such_module': module")
        refused({ handlers = "lua.fixtures.handlers_bad" }, "unknown field 'on_faliure'")
        refused({ handlers = "lua.fixtures.handlers_plain", on_failure = function() end },
                "on_failure must come from the handlers module")
    end)
end)

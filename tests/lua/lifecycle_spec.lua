-- The task lifecycle on the in-memory scheduler and storage: run -> completed with history
-- and artifacts, input-required then resume, cancel of running handlers (pure Lua loop and
-- a sleep in a binduq call), late results, duplicate runs, pause and resume from the
-- checkpoint, and the storage's compare-and-set rules.

local bq = require("binduq")
local core = require("binduq.core")

local fixture = "tests/lua/fixtures/lifecycle_worker.lua"

local seq = 0
local function fresh(tag)
    seq = seq + 1
    return ("spec:life:%s:%d:%d"):format(tag, os.time(), seq)
end

-- A started worker, its scheduler, and the results by task id and type.
local function start(tag, opts)
    local q = fresh(tag)
    local results = {}
    opts = opts or {}
    opts.queue = q
    opts.on_result = function(r) results[#results + 1] = r end
    local defer = opts.defer
    opts.defer = nil
    local w = dofile(fixture)(opts)
    if not defer then w:start() end
    local s = bq.scheduler{ type = "memory", queue_name = q }
    return w, s, results
end

local function wait_state(w, s, id, state, timeout)
    local deadline = core.monotonic() + (timeout or 5)
    while core.monotonic() < deadline do
        local t = s:get_task(id)
        if t and t.state == state then return t end
        w:poll(0.005)
    end
    local t = s:get_task(id)
    error(("task %s is %s, not %s"):format(id, t and t.state or "unknown", state), 2)
end

local function result_of(results, id, ty)
    for _, r in ipairs(results) do
        if r.task_id == id and r.type == ty then return r end
    end
end

-- The result reaches on_result a moment after the handler's state is stored.
local function wait_result(w, results, id, ty, timeout)
    local deadline = core.monotonic() + (timeout or 5)
    while not result_of(results, id, ty) and core.monotonic() < deadline do w:poll(0.005) end
    return assert(result_of(results, id, ty), "no result for " .. id .. " " .. ty)
end

describe("core.OUTCOME", function()
    it("names every outcome the engine knows and refuses any other name", function()
        local names = {}
        for k, v in pairs(core.OUTCOME) do
            assert.are.equal(k, v)
            names[#names + 1] = k
        end
        table.sort(names)
        assert.are.same({ "canceled", "completed", "dead", "deferred", "dropped", "interrupted", "malformed",
                          "paused", "pending", "retry", "skipped", "waiting" }, names)
        local ok, err = pcall(function() return core.OUTCOME.complete end)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("no outcome is named 'complete'", 1, true), err)
    end)
end)

describe("lifecycle (memory)", function()
    setup(function() bq.log_configure{ level = "off" } end)
    -- Task state is one table per process: start each test without the others' tasks.
    before_each(function() core.storage_reset() end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("runs submitted -> working -> completed, with history and artifacts", function()
        -- The worker starts after the checks of the queued state: started first, it could
        -- finish r1 before get_task looks.
        local w, s = start("run", { defer = true })
        assert(s:run{ task_id = "r1", conversation_id = "c1", messages = { "hello" } })
        local t = s:get_task("r1")
        assert.are.equal("submitted", t.state)
        assert.are.equal("c1", t.context_id)
        assert(s:run{ task_id = "r2", conversation_id = "c1", messages = { "artifact" } })
        w:drain()
        t = s:get_task("r1")
        assert.are.equal("completed", t.state)
        assert.are.equal(1, t.attempts)
        assert.are.same({ { role = "user", content = "hello" }, { role = "agent", content = "answer: hello (1)" } },
                        t.history)
        assert.truthy(t.worker)
        local t2 = s:get_task("r2")
        assert.are.equal("completed", t2.state)
        assert.are.equal("here it is", t2.history[2].content)
        assert.are.same({ { name = "a1", parts = { { kind = "text", text = "x" } } } }, t2.artifacts)
        local listed = s:list_tasks{ context = "c1" }
        assert.are.equal(2, #listed)
        assert.are.equal(2, #s:list_tasks{ context = "c1", state = "completed" })
        assert.are.equal(0, #s:list_tasks{ context = "c1", state = "failed" })
        assert.are.equal(1, #s:list_tasks{ context = "c1", limit = 1 })
        assert.is_nil(s:get_task("nope"))
        w:close()
        s:close()
    end)

    it("records a run queued by a producer that keeps no state here as it starts it", function()
        -- Raw pushes stand for a producer in another process (or Bindu's): nothing is recorded
        -- before the worker takes them.
        local w, s = start("raw", { defer = true })
        local task = require("binduq.task")
        local plain = task.encode{ type = "run", task_id = "raw-plain", conversation_id = "c9",
                                   messages = { { role = "user", content = 'a/b "q"' } } }
        local parts = '{"type":"run","task_id":"raw-parts","messages":[{"role":"user","parts":'
                      .. '[{"kind":"text","text":"hi"}]}]}'
        assert(s:push_raw(plain))
        assert(s:push_raw(parts))
        assert.is_nil(s:get_task("raw-plain"))
        w:drain()
        local rec = assert(s.store:get("raw-plain"))
        -- recorded in the same call that started it, in the bytes the producers write
        -- (lua-cjson would have written "a\/b"; the handler's answer, appended later, still is)
        assert.are.equal('[{"role":"user","content":"a/b \\"q\\""},', rec.history:sub(1, 39))
        assert.are.equal("completed", rec.state)
        assert.are.equal("c9", rec.context_id)
        assert.are.equal(s.queue_name, rec.queue)
        assert.are.equal(1, rec.attempts)
        -- messages of another shape are recorded by the general path, as before
        local t = assert(s:get_task("raw-parts"))
        assert.are.equal("completed", t.state)
        assert.are.equal("hi", t.history[1].content)
        assert.are.equal(1, t.attempts)
    end)

    it("keeps a task open on input-required and continues it on resume", function()
        local w, s, results = start("input")
        s:run{ task_id = "i1", messages = { "ask" } }
        wait_state(w, s, "i1", "input-required")
        local t = s:get_task("i1")
        assert.are.equal("which city?", t.history[2].content)
        assert.are.equal("waiting", wait_result(w, results, "i1", "run").state)
        s:resume("i1", { "Paris" })
        wait_state(w, s, "i1", "completed")
        t = s:get_task("i1")
        assert.are.equal(4, #t.history)
        assert.are.equal("Paris", t.history[3].content)
        assert.are.equal("answer: Paris (3)", t.history[4].content)
        assert.are.equal(2, t.attempts)
        -- auth-required works the same way.
        s:run{ task_id = "i2", messages = { "auth" } }
        wait_state(w, s, "i2", "auth-required")
        s:resume("i2", { "tok" })
        wait_state(w, s, "i2", "completed")
        w:close()
        s:close()
    end)

    it("cancels a handler looping in pure Lua and one sleeping in a binduq call", function()
        local w, s, results = start("cancel", { concurrency = 3 })
        s:run{ task_id = "c-spin", messages = { "spin" } }
        s:run{ task_id = "c-nap", messages = { "nap:30" } }
        s:run{ task_id = "c-catch", messages = { "napcatch:30" } }
        for _, id in ipairs{ "c-spin", "c-nap", "c-catch" } do wait_state(w, s, id, "working") end
        local t0 = core.monotonic()
        for _, id in ipairs{ "c-spin", "c-nap", "c-catch" } do s:cancel(id) end
        local stopped = {}
        while #stopped < 3 and core.monotonic() < t0 + 5 do
            w:poll(0.01)
            for _, id in ipairs{ "c-spin", "c-nap", "c-catch" } do
                local r = result_of(results, id, "run")
                if r and not stopped[id] then stopped[id] = core.monotonic() - t0; stopped[#stopped + 1] = id end
            end
        end
        for _, id in ipairs{ "c-spin", "c-nap", "c-catch" } do
            assert.truthy(stopped[id], id .. " was not stopped")
            assert.is_true(stopped[id] < 1, id .. " took " .. tostring(stopped[id]))
            assert.are.equal("canceled", result_of(results, id, "run").state)
            assert.are.equal("canceled", s:get_task(id).state)
        end
        -- The handler that caught the cancel returned "late result": not stored.
        local t = s:get_task("c-catch")
        assert.are.equal(1, #t.history)
        w:close()
        s:close()
    end)

    it("skips a canceled task when it is fetched, and a duplicate run of a completed one", function()
        local w, s = start("dup")
        s:run{ task_id = "d1", messages = { "hello" } }
        w:drain()
        assert.are.equal("completed", s:get_task("d1").state)
        local s2 = bq.scheduler{ type = "memory", queue_name = s.queue_name, dedup = false }
        s2:run{ task_id = "d1", messages = { "hello again" } }
        -- A canceled task that is still queued.
        s2:run{ task_id = "d2", messages = { "hello" } }
        s2:cancel("d2")
        assert.are.equal("canceled", s2:get_task("d2").state)
        local results = {}
        local w2 = dofile(fixture){ queue = s.queue_name, on_result = function(r) results[#results + 1] = r end }
        local stats = w2:drain()
        assert.are.equal(0, stats.completed)
        assert.are.equal("skipped", result_of(results, "d1", "run").state)
        assert.are.equal("skipped", result_of(results, "d2", "run").state)
        local t = s:get_task("d1")
        assert.are.equal("completed", t.state)
        assert.are.equal(1, t.attempts)
        assert.are.equal(2, #t.history)
        assert.are.equal("canceled", s:get_task("d2").state)
        w:close()
        s:close()
        s2:close()
    end)

    it("pauses a running handler at its checkpoint and resumes from it", function()
        local w, s = start("pause")
        s:run{ task_id = "p1", messages = { "steps:40" } }
        wait_state(w, s, "p1", "working")
        core.sleep(0.15)
        s:pause("p1")
        local t = wait_state(w, s, "p1", "paused")
        local at = t.checkpoint
        assert.is_true(at >= 1 and at < 40, "checkpoint " .. tostring(at))
        s:resume("p1")
        wait_state(w, s, "p1", "completed")
        t = s:get_task("p1")
        local from = t.history[#t.history].content:match("^counted (%d+)%.%.40")
        assert.are.equal(at, tonumber(from))
        assert.are.equal(40, t.checkpoint)
        -- A pause of a queued task keeps it from running until the resume.
        w:close()
        local s2 = bq.scheduler{ type = "memory", queue_name = s.queue_name }
        s2:run{ task_id = "p2", messages = { "hello" } }
        s2:pause("p2")
        assert.are.equal("paused", s2:get_task("p2").state)
        local results = {}
        local w2 = dofile(fixture){ queue = s.queue_name, on_result = function(r) results[#results + 1] = r end }
        w2:drain()
        assert.are.equal("paused", s2:get_task("p2").state)
        assert.are.equal("skipped", result_of(results, "p2", "run").state)
        s2:resume("p2")
        w2 = dofile(fixture){ queue = s.queue_name }
        w2:drain()
        assert.are.equal("completed", s2:get_task("p2").state)
        s:close()
        s2:close()
    end)

    it("never changes a terminal state (the storage's compare-and-set)", function()
        local st = core.storage{ type = "memory" }
        local id = fresh("cas")
        assert.are.same({ true, "submitted" }, { st:create{ id = id, history = '["a"]' } })
        assert.are.same({ false, "submitted" }, { st:create{ id = id } })
        assert.are.same({ true, "working", "" }, { st:change{ id = id, to = "working", count_attempt = true } })
        assert.are.same({ true, "completed", "" },
                        { st:change{ id = id, from = "working", to = "completed", append_history = '["b","c"]' } })
        assert.are.same({ false, "completed", "" }, { st:change{ id = id, to = "canceled" } })
        assert.are.same({ false, "completed", "" }, { st:change{ id = id, from = "working", to = "failed" } })
        local r = st:get(id)
        assert.are.equal('["a","b","c"]', r.history)
        assert.are.equal(1, r.attempts)
        assert.are.equal("completed", r.state)
        -- Only a change that names a terminal state explicitly may leave it (an operator's
        -- requeue of a dead-lettered task names "failed").
        assert.are.same({ true, "submitted", "" }, { st:change{ id = id, from = "completed", to = "submitted" } })
        assert.are.same({ false, false, "" }, { st:change{ id = "unknown-" .. id, to = "working" } })
        assert.is_false(st:get("unknown-" .. id))
        assert.is_true(st:remove(id))
        assert.is_false(st:remove(id))
        st:close()
    end)
end)

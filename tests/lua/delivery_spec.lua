-- Retries, the failure policy, timeouts, the dead-letter list and its tools, duplicate runs:
-- on the in-memory scheduler (the same engine and policy code as with Redis).

local bq = require("binduq")
local proc = require("helpers.proc")

local fixture = "tests/lua/fixtures/memory_worker.lua"
local run_id = bq.uuid():sub(1, 8)
local seq = 0
local function fresh(name)
    seq = seq + 1
    return ("spec:%s:%s:%d"):format(name, run_id, seq)
end

local function worker(opts)
    opts.queue = opts.queue or fresh("q")
    return dofile(fixture)(opts), bq.scheduler{ type = "memory", queue_name = opts.queue }
end

describe("delivery (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("retries with backoff and completes on the third attempt", function()
        local events = {}
        local w, s = worker{ retry_base = 0.05, retry_cap = 0.2, max_attempts = 5,
                             on_result = function(r) r.at = bq.monotonic(); events[#events + 1] = r end }
        local id = fresh("flaky")
        s:run{ task_id = id, messages = { "flaky:3" } }
        local stats = w:drain()
        assert.are.equal(1, stats.completed)
        assert.are.equal(2, stats.retried)
        assert.are.equal(3, #events)
        assert.are.equal("retry", events[1].state)
        assert.are.equal(1, events[1].attempt)
        assert.are.equal("retry", events[2].state)
        assert.are.equal(2, events[2].attempt)
        assert.are.equal("completed", events[3].state)
        assert.are.equal(3, events[3].result) -- the handler saw ctx.attempt == 3
        -- full jitter: delay n is in [0, base * 2^(n-1)), and the next attempt waits for it
        assert.is_true(events[1].delay >= 0 and events[1].delay < 0.05, tostring(events[1].delay))
        assert.is_true(events[2].delay >= 0 and events[2].delay < 0.10, tostring(events[2].delay))
        assert.is_true(events[2].at - events[1].at >= events[1].delay - 0.005)
        assert.is_true(events[3].at - events[2].at >= events[2].delay - 0.005)
        assert.are.equal(0, s:dead_letter_count())
        w:close()
        s:close()
    end)

    it("dead-letters a task that always fails, with every field, and requeues it", function()
        local marker = os.tmpname()
        os.remove(marker)
        local w, s = worker{ retry_base = 0.01, retry_cap = 0.02, max_attempts = 3 }
        local id = fresh("always")
        s:run{ task_id = id, messages = { "file:" .. marker } }
        local stats = w:drain()
        assert.are.equal(0, stats.completed)
        assert.are.equal(2, stats.retried)
        assert.are.equal(1, stats.dead_lettered)
        local dead = assert(s:dead_letters())
        assert.are.equal(1, #dead)
        local e = dead[1]
        assert.are.equal(id, e.task_id)
        assert.are.equal("run", e.type)
        assert.are.equal(3, e.attempts)
        assert.truthy(e.reason:find("failed 3 times (max_attempts 3)", 1, true), e.reason)
        assert.are.equal("EHANDLER", e.error.code)
        assert.truthy(e.error.message:find("no file", 1, true))
        assert.truthy(e.error.traceback:find("memory_worker.lua", 1, true))
        assert.is_true(e.error.retryable)
        assert.truthy(e.worker:find(":", 1, true))
        assert.truthy(e.failed_at:match("^%d%d%d%d%-%d%d%-%d%dT"))
        -- the original message, without binduq's retry header
        assert.are.equal("{", e.message:sub(1, 1))
        assert.are.equal(id, require("binduq.json").decode(e.message).task_id)

        -- fix the cause, requeue, and it runs again from attempt 1
        proc.write(marker, "x")
        assert.are.equal(1, s:requeue_dead{ task_id = id })
        assert.are.equal(0, s:dead_letter_count())
        local w2 = worker{ queue = s.queue_name, max_attempts = 3 }
        stats = w2:drain()
        assert.are.equal(1, stats.completed)
        os.remove(marker)
        w:close()
        w2:close()
        s:close()
    end)

    it("follows a custom failure policy", function()
        local seen = {}
        local w, s = worker{
            retry_base = 0.01,
            policy = "custom", -- see the fixture
            max_attempts = 2,
            on_result = function(r) seen[#seen + 1] = r.state end,
        }
        s:run{ task_id = fresh("p"), messages = { "fatal" } }   -- EBADINPUT: dropped
        s:run{ task_id = fresh("p"), messages = { "nil-err" } } -- dead-lettered at once
        s:run{ task_id = fresh("p"), messages = { "fail" } }    -- retried once, then default
        local stats = w:drain()
        assert.are.equal(1, stats.dropped)
        assert.are.equal(2, stats.dead_lettered)
        assert.are.equal(1, stats.retried)
        local reasons = {}
        for _, d in ipairs(s:dead_letters()) do reasons[#reasons + 1] = d.reason end
        table.sort(reasons)
        assert.truthy(reasons[1]:find("custom", 1, true))
        assert.truthy(reasons[2]:find("failed 2 times", 1, true))
        w:close()
        s:close()
    end)

    it("dead-letters when the failure policy itself fails", function()
        local w, s = worker{ policy = "broken" }
        s:run{ task_id = fresh("pb"), messages = { "fail" } }
        local stats = w:drain()
        assert.are.equal(1, stats.dead_lettered)
        assert.truthy(s:dead_letters()[1].reason:find("on_failure raised", 1, true))
        w:close()
        s:close()
    end)

    it("stops a handler that runs past its timeout: a Lua loop and a sleep", function()
        local results = {}
        local w, s = worker{ timeout = 0.3, max_attempts = 1, concurrency = 2,
                             on_result = function(r) results[r.task_id] = r end }
        local spin, nap, quick = fresh("spin"), fresh("nap"), fresh("quick")
        s:run{ task_id = spin, messages = { "spin" } }
        s:run{ task_id = nap, messages = { "nap:30" } }
        s:run{ task_id = quick, messages = { "nap:5" }, timeout = 0.1 } -- per-task override
        local t0 = bq.monotonic()
        local stats = w:drain()
        assert.is_true(bq.monotonic() - t0 < 5, "the timeouts cut the handlers short")
        assert.are.equal(3, stats.dead_lettered)
        for _, id in ipairs({ spin, nap, quick }) do
            assert.are.equal("dead", results[id].state)
            assert.are.equal("ETIMEDOUT", results[id].error.code)
            assert.is_true(results[id].error.retryable)
        end
        assert.truthy(results[quick].error.message:find("0.1 s", 1, true))
        assert.is_true(results[quick].duration < 1)
        w:close()
        s:close()
    end)

    it("skips a duplicate run of a finished task", function()
        local calls = 0
        local w, s = worker{ on_result = function(r) if r.state == "completed" then calls = calls + 1 end end }
        local id = fresh("dup")
        s:run{ task_id = id, messages = { "echo once" } }
        w:drain()
        w:close()
        local w2 = worker{ queue = s.queue_name }
        -- The producer's deduplication would stop a second run within its TTL; one that gets
        -- past it (another producer with dedup off, or after the TTL) is stopped here.
        assert.are.same({ true, "duplicate" }, { s:run{ task_id = id, messages = { "echo twice" } } })
        local plain = bq.scheduler{ type = "memory", queue_name = s.queue_name, dedup = false }
        assert.is_true((plain:run{ task_id = id, messages = { "echo twice" } }))
        plain:close()
        local stats = w2:drain()
        assert.are.equal(1, stats.skipped)
        assert.are.equal(0, stats.completed)
        assert.are.equal(1, calls)
        w2:close()
        s:close()
    end)

    it("delivers at most once when asked", function()
        local w, s = worker{ delivery = "at-most-once" }
        for i = 1, 20 do s:run{ task_id = fresh("amo") .. i, messages = { "echo" } } end
        local stats = w:drain()
        assert.are.equal(20, stats.completed)
        assert.are.equal(0, s:inflight_count())
        w:close()
        s:close()
    end)
end)

describe("dead-letter tools (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("lists, shows, requeues by filter, removes and purges", function()
        local w, s = worker{ max_attempts = 1 }
        local ids = {}
        for i = 1, 6 do
            ids[i] = fresh("d")
            s:run{ task_id = ids[i], messages = { i <= 2 and "fatal" or "fail" } }
        end
        s:push_raw("garbage")
        w:drain()
        assert.are.equal(7, s:dead_letter_count())
        local newest = s:dead_letter(0)
        assert.truthy(newest.raw:find("\n", 1, true))
        assert.is_nil(s:dead_letter(99))

        -- by error code: the two "fatal" ones
        local progress = {}
        assert.are.equal(2, s:requeue_dead({ code = "EBADINPUT" }, function(done, seen)
            progress[#progress + 1] = { done, seen }
        end))
        assert.are.equal(7, progress[#progress][2])
        assert.are.equal(5, s:dead_letter_count())
        assert.are.equal(2, s:queue_length())
        -- by reason substring
        assert.are.equal(1, s:purge_dead{ reason = "invalid JSON" })
        -- one entry exactly
        local e = s:dead_letter(0)
        assert.is_true(s:remove_entry(e.raw))
        assert.is_false(s:remove_entry(e.raw))
        local e2 = s:dead_letter(0)
        assert.is_true(s:requeue_entry(e2.raw))
        assert.is_false(s:requeue_entry(e2.raw))
        -- everything else
        assert.are.equal(2, s:purge_dead())
        assert.are.equal(0, s:dead_letter_count())
        assert.has_error(function() s:requeue_dead{ colour = "red" } end, "unknown filter field 'colour'")
        w:close()
        s:close()
    end)
end)

describe("the default failure policy's reason", function()
    it("counts the attempts in words that agree with the number", function()
        local policy = require("binduq.retry").default{ max_attempts = 1 }
        assert.are.equal("failed 1 time (max_attempts 1): boom",
                         policy({}, { message = "boom", retryable = true }, 1).reason)
        policy = require("binduq.retry").default{ max_attempts = 2 }
        assert.are.equal("failed 2 times (max_attempts 2): boom",
                         policy({}, { message = "boom", retryable = true }, 2).reason)
    end)
end)

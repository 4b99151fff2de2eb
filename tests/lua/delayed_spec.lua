-- Delayed operations (delay, run_at) on the in-memory scheduler: validation naming the
-- field, the delayed set, deduplication and routing, a worker that runs them when due, a
-- cancel before it runs.

local bq = require("binduq")
local core = require("binduq.core")

local fixture = "tests/lua/fixtures/memory_worker.lua"

local seq = 0
local function fresh_queue()
    seq = seq + 1
    return ("spec:delayed:%d:%d"):format(os.time(), seq)
end

local function run(extra)
    local op = { task_id = "d-" .. math.random(1, 1e9), messages = { "echo hi" } }
    for k, v in pairs(extra) do op[k] = v end
    return op
end

describe("delayed operations (memory)", function()
    setup(function() bq.log_configure{ level = "off" } end)
    before_each(function() core.storage_reset() end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("parses run_at: ISO 8601 with a zone, or seconds since the epoch", function()
        assert.are.equal(1796292000, core.parse_time("2026-12-03T10:00:00Z"))
        assert.are.equal(1796292000.25, core.parse_time("2026-12-03T11:00:00.250+01:00"))
        local t, why = core.parse_time("2026-12-03T10:00:00")
        assert.is_nil(t)
        assert.matches("run_at needs a zone", why)
        assert.is_nil(core.parse_time("next tuesday"))
    end)

    it("refuses bad delays and times, naming the field, with nothing sent", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        local cases = {
            { { delay = -1 }, "delay is negative" },
            { { delay = 0 / 0 }, "delay is not a number" },
            { { delay = math.huge }, "delay is infinite" },
            { { delay = 366 * 86400 }, "delay is longer than 365 days" },
            { { delay = "5" }, "delay must be a number of seconds (got string)" },
            { { delay = 1, run_at = bq.now() + 5 }, "give delay or run_at, not both" },
            { { run_at = "tomorrow" }, "run_at must be seconds since the epoch or an ISO 8601 time" },
            { { run_at = "2026-12-03T10:00:00" }, "run_at needs a zone" },
            { { run_at = "2026-02-30T10:00:00Z" }, "run_at is not a valid date and time" },
            { { run_at = bq.now() * 1000 }, "not milliseconds" },
            { { run_at = true }, "run_at must be seconds since the epoch" },
            { { dealy = 1 }, "did you mean 'delay'?" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(s.run, s, run(c[1]))
            assert.is_false(ok)
            assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
        end
        local ok, err = pcall(s.schedule_many, s, { run{ type = "run", delay = 1 }, run{ type = "run", delay = -2 } })
        assert.is_false(ok)
        assert.matches("operation 2: delay is negative", err)
        assert.are.equal(0, s:delayed_count())
        assert.are.equal(0, s:queue_length())
        assert.are.equal(0, s.stats.scheduled)
        s:close()
    end)

    it("waits in the delayed set; a time already past or a zero delay is queued at once", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        assert.are.same({ true, "scheduled" }, { s:run(run{ delay = 30 }) })
        assert.are.same({ true, "scheduled" }, { s:run(run{ run_at = bq.iso8601(bq.now() + 60) }) })
        assert.are.same({ true, "scheduled" }, { s:pause("p1", { delay = 10 }) })
        assert.are.same({ true, "scheduled" }, { s:run(run{ run_at = bq.now() - 3600 }) })
        assert.are.same({ true, "scheduled" }, { s:run(run{ delay = 0 }) })
        assert.are.equal(3, s:delayed_count())
        assert.are.equal(2, s:queue_length())
        assert.are.equal(5, s.stats.scheduled)
        -- The message is the same operation: delay and run_at are not part of it.
        local msgs = s.client:range("ready", 0, -1)
        for _, m in ipairs(msgs) do
            assert.is_nil(m:find('"delay"', 1, true))
            assert.is_nil(m:find('"run_at"', 1, true))
        end
        s:close()
    end)

    it("deduplicates and routes a delayed operation as any other", function()
        local q = fresh_queue()
        local high = q .. ":high"
        local s = bq.scheduler{ type = "memory", queue_name = q, levels = { high = high },
                                route = function(op) return op.metadata and op.metadata.urgent and "high" or nil end }
        local op = run{ delay = 30, metadata = { urgent = true } }
        assert.are.same({ true, "scheduled" }, { s:run(op) })
        assert.are.same({ true, "duplicate" }, { s:run(op) })
        -- the key holds, for a run of the same task to the same queue, delayed or not
        assert.are.same({ true, "duplicate" }, { s:run(run{ task_id = op.task_id, metadata = { urgent = true } }) })
        assert.are.equal(2, s.stats.deduplicated)
        assert.are.equal(0, s:delayed_count())
        assert.are.equal(1, s.client:length("delayed", high))
        assert.are.equal(2, s:schedule_many{ run{ type = "run", delay = 30 }, run{ type = "run", delay = 40 } })
        assert.are.equal(2, s:delayed_count())
        s:close()
    end)

    it("runs when due, on time, and a run canceled before it is due never runs", function()
        local q = fresh_queue()
        local started = {}
        local w = dofile(fixture){ queue = q, concurrency = 2,
                                   on_result = function(r) started[r.task_id] = r end }
        w:start()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        local t0 = bq.now()
        assert(s:run(run{ task_id = "soon", delay = 0.2 }))
        assert(s:run(run{ task_id = "later", run_at = t0 + 0.4 }))
        assert(s:run(run{ task_id = "dropped", delay = 0.3 }))
        assert(s:cancel("dropped"))
        assert.are.equal("canceled", s:get_task("dropped").state)
        assert.are.equal("submitted", s:get_task("soon").state)
        while bq.now() < t0 + 0.8 do w:poll(0.05) end
        assert.are.equal("completed", started.soon.state)
        assert.are.equal("completed", started.later.state)
        assert.are_not.equal("completed", started.dropped and started.dropped.state)
        assert.are.equal("canceled", s:get_task("dropped").state)
        assert.are.equal(0, s:delayed_count())
        s:close()
        w:close()
    end)

    it("stores a delayed cancel only when it comes due, then stops the running task", function()
        local q = fresh_queue()
        local w = dofile(fixture){ queue = q, concurrency = 2 }
        w:start()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        assert(s:run(run{ task_id = "long", messages = { "nap:5" } }))
        assert(s:cancel("long", { delay = 0.3 }))
        local t0 = bq.now()
        while bq.now() < t0 + 0.2 do w:poll(0.02) end
        assert.are.equal("working", s:get_task("long").state)
        while bq.now() < t0 + 5 and s:get_task("long").state == "working" do w:poll(0.02) end
        assert.are.equal("canceled", s:get_task("long").state)
        s:close()
        w:close()
    end)
end)

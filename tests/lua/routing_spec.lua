-- Priority routing, deduplication and rate limits on the in-memory scheduler.

local bq = require("binduq")

local make = dofile("tests/lua/fixtures/priority_worker.lua")
local run_id = bq.uuid():sub(1, 8)
local seq = 0
local function prefix()
    seq = seq + 1
    return ("spec:prio:%s:%d"):format(run_id, seq)
end

describe("routing (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    local function producer(p, extra)
        local opts = { type = "memory", queue_name = p .. ":normal",
                       levels = { high = p .. ":high", normal = p .. ":normal", low = p .. ":low" },
                       route = function(op) return op.metadata and op.metadata.level end }
        for k, v in pairs(extra or {}) do opts[k] = v end
        return bq.scheduler(opts)
    end

    it("routes with the script's route and takes strictly by level", function()
        local p = prefix()
        local s = producer(p)
        local levels = { "low", "normal", "high" }
        for i = 1, 300 do
            local level = levels[(i % 3) + 1]
            assert(s:run{ task_id = p .. "-" .. i, messages = { "x" }, metadata = { level = level } })
        end
        local order = {}
        local w = make("strict", p, nil, { on_result = function(r) order[#order + 1] = r.result.queue end })
        w:drain()
        assert.are.equal(300, #order)
        for i = 1, 100 do assert.are.equal(p .. ":high", order[i]) end
        for i = 101, 200 do assert.are.equal(p .. ":normal", order[i]) end
        for i = 201, 300 do assert.are.equal(p .. ":low", order[i]) end
        w:close()
        s:close()
    end)

    it("takes by weight (6:3:1) without starving the low level", function()
        local p = prefix()
        local s = producer(p)
        local n = 10000
        local batch = {}
        for i = 1, n do
            for _, level in ipairs({ "high", "normal", "low" }) do
                batch[#batch + 1] = { type = "run", task_id = p .. level .. i, messages = { "x" },
                                      metadata = { level = level } }
            end
            if #batch >= 999 then assert(s:schedule_many(batch)); batch = {} end
        end
        if #batch > 0 then assert(s:schedule_many(batch)) end
        -- Count what the first 10,000 handled tasks were, while every level still has work.
        local seen, count = { high = 0, normal = 0, low = 0 }, 0
        local w
        w = make("weighted", p, nil, { on_result = function(r)
            count = count + 1
            if count <= n then
                local level = r.result.queue:match(":(%a+)$")
                seen[level] = seen[level] + 1
            end
            if count == n then w:stop() end
        end })
        w:start()
        while w:poll(5) ~= false do end
        assert.is_true(math.abs(seen.high / n - 0.6) <= 0.05 * 0.6, "high " .. seen.high)
        assert.is_true(math.abs(seen.normal / n - 0.3) <= 0.05 * 0.3, "normal " .. seen.normal)
        assert.is_true(math.abs(seen.low / n - 0.1) <= 0.05 * 0.1, "low " .. seen.low)
        w:close()
        s:close()
    end)

    it("refuses bad routing and queue options", function()
        local p = prefix()
        local s = producer(p, { route = function() return 42 end })
        assert.has_error(function() s:run{ task_id = "r1", messages = { "x" } } end)
        s:close()
        local cases = {
            { { handler = print, queues = {} }, "queues needs 1 to 16" },
            { { handler = print, queues = { "a", "a" } }, "listed twice" },
            { { handler = print, queues = { "a", "b" }, weights = { 1 } }, "one weight per queue" },
            { { handler = print, queues = { "a", "b" }, weights = { 1, 0 } }, "weights[2]" },
            { { handler = print, rate_limit = { limit = 0, period = 1 } }, "rate_limit.limit" },
            { { handler = print, rate_limit = { limit = 5 } }, "rate_limit.period" },
            { { handler = print, queues = { "{a}:x", "{b}:y" },
                scheduler = { url = "redis+cluster://127.0.0.1:7000" } }, "share a hash tag" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(bq.worker, c[1])
            assert.is_false(ok)
            assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
        end
    end)
end)

describe("deduplication (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    it("pushes a run once per task_id and counts the duplicates", function()
        local q = prefix()
        local s = bq.scheduler{ type = "memory", queue_name = q, dedup_ttl = 1 }
        assert.are.same({ true, "scheduled" }, { s:run{ task_id = "a", messages = { "x" } } })
        assert.are.same({ true, "duplicate" }, { s:run{ task_id = "a", messages = { "y" } } })
        assert.are.same({ true, "scheduled" }, { s:cancel("a") })
        assert.are.same({ true, "duplicate" }, { s:cancel("a") })
        assert.are.same({ true, "scheduled" }, { s:pause("a") }) -- pause and resume repeat
        assert.are.same({ true, "scheduled" }, { s:pause("a") })
        local sent, dups = s:schedule_many{ { type = "run", task_id = "a", messages = { "x" } },
                                            { type = "run", task_id = "b", messages = { "x" } } }
        assert.are.equal(1, sent)
        assert.are.equal(1, dups)
        assert.are.equal(5, s:queue_length())
        assert.are.equal(3, s.stats.deduplicated)
        bq.sleep(1.1) -- the TTL: the same id may be scheduled again
        assert.are.same({ true, "scheduled" }, { s:run{ task_id = "a", messages = { "x" } } })
        s:close()
    end)

    it("uses the script's dedup_key", function()
        local q = prefix()
        local s = bq.scheduler{ type = "memory", queue_name = q,
                                dedup_key = function(op) return op.metadata and op.metadata.key or false end }
        assert.are.same({ true, "scheduled" }, { s:run{ task_id = "1", messages = { "x" }, metadata = { key = "k" } } })
        assert.are.same({ true, "duplicate" }, { s:run{ task_id = "2", messages = { "x" }, metadata = { key = "k" } } })
        assert.are.same({ true, "scheduled" }, { s:run{ task_id = "3", messages = { "x" } } })
        assert.are.same({ true, "scheduled" }, { s:run{ task_id = "3", messages = { "x" } } }) -- false: no dedup
        s:close()
    end)
end)

describe("rate limits (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("admits at most N per period per key and defers the rest without losing them", function()
        local p = prefix()
        local s = bq.scheduler{ type = "memory", queue_name = p .. ":high" }
        for i = 1, 25 do s:run{ task_id = p .. "a" .. i, messages = { "key:a" } } end
        for i = 1, 10 do s:run{ task_id = p .. "b" .. i, messages = { "key:b" } } end
        local at = { a = {}, b = {} }
        local w = make("strict", p, 10, { concurrency = 2, on_result = function(r)
            if r.state == "completed" then
                local k = r.task_id:find(p .. "a", 1, true) and "a" or "b"
                local t = at[k]
                t[#t + 1] = r.result.admitted_at
            end
        end })
        local stats = w:drain()
        assert.are.equal(35, stats.completed)
        assert.is_true(stats.rate_limited > 0)
        table.sort(at.a)
        table.sort(at.b)
        assert.are.equal(25, #at.a)
        assert.are.equal(10, #at.b)
        -- any 10 admissions of key a span at least (nearly) a second; key b was not held up
        for i = 11, #at.a do assert.is_true(at.a[i] - at.a[i - 10] >= 0.999, tostring(at.a[i] - at.a[i - 10])) end
        assert.is_true(at.a[#at.a] - at.a[1] >= 2.0)
        assert.is_true(at.b[#at.b] - at.b[1] < 0.5)
        w:close()
        s:close()
    end)
end)

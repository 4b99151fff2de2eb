-- The examples as a user runs them: hello on the in-memory default, the C producer feeding a
-- Lua worker through Redis, and health checks; and every Lua example twice in a row against
-- one redis-server, each on its own queue, which it leaves empty.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local fakemodel = require("helpers.fakemodel")
local bq = require("binduq")

-- No operation left on queue `q`: none waiting, delayed or dead-lettered, no worker's
-- in-flight list.
local function assert_empty(server, q)
    local prefix = q:find("{", 1, true) and (q .. ":") or ("{" .. q .. "}:")
    assert.are.equal("0", server:cli("LLEN", q), q)
    assert.are.equal("0", server:cli("ZCARD", prefix .. "delayed"), q)
    assert.are.equal("0", server:cli("LLEN", prefix .. "dlq"), q)
    assert.are.equal("", server:cli("--scan", "--pattern", prefix .. "wip:*"), q)
end

-- agent.lua's output against the fake model server: each question's answer, then the long
-- answer canceled mid-stream, its handler stopped within a second of the cancel.
local AGENT_QUESTIONS = { "What is a task queue?", "Why stream a model's answer?", "What does a cancel stop?" }
local function check_agent(out)
    for i, q in ipairs(AGENT_QUESTIONS) do
        local qp = q:gsub("%p", "%%%0")
        assert.truthy(out:find("ask%-" .. i .. " +completed +Q: " .. qp .. "\n +A: echo: " .. qp .. "\n"), out)
    end
    local ms = tonumber(out:match("story +canceled +stopped ([%d.]+) ms after the cancel"))
    assert.truthy(ms, out)
    assert.is_true(ms < 1000, out)
end

describe("examples", function()
    it("hello.lua runs on the in-memory scheduler with no Redis", function()
        local rc, out = proc.run("build/binduq-lua examples/hello.lua", { unset = { "REDIS_URL" }, timeout = 60 })
        assert.are.equal(0, rc, out)
        for i = 1, 5 do
            assert.truthy(out:find("hello%-" .. i .. "%-%x+ +completed +Hello, "), out)
        end
        assert.truthy(out:find("done: 5 completed, 0 failed", 1, true), out)
        assert.truthy(out:find("backend=memory", 1, true), out)
    end)

    it("priority.lua, rate_limit.lua and dedup.lua show their policies", function()
        local rc, out = proc.run("build/binduq-lua examples/priority.lua", { unset = { "REDIS_URL" } })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("strict: of the first 100 taken, high 100, normal 0, low 0; all 300 done", 1, true),
                      out:sub(-300))
        rc, out = proc.run("build/binduq-lua examples/priority.lua weighted", { unset = { "REDIS_URL" } })
        assert.are.equal(0, rc, out)
        local h, _, l = out:match("high (%d+), normal (%d+), low (%d+); all 300 done")
        assert.truthy(h, out:sub(-300))
        assert.is_true(tonumber(l) >= 5 and tonumber(h) <= 70, out:sub(-300)) -- low is not starved
        rc, out = proc.run("build/binduq-lua examples/rate_limit.lua", { unset = { "REDIS_URL" }, timeout = 30 })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("done: 15 completed", 1, true), out:sub(-300))
        assert.truthy(out:find("alice at +2.", 1, true), out:sub(-300))
        rc, out = proc.run("build/binduq-lua examples/dedup.lua", { unset = { "REDIS_URL" } })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("scheduled: 3; duplicates counted: 2\ndone: 4 completed\n", 1, true), out:sub(-300))
    end)

    it("recurring.lua fires its every-second schedule in memory, one run a tick", function()
        local rc, out = proc.run("build/binduq-lua examples/recurring.lua 3", { unset = { "REDIS_URL" }, timeout = 30 })
        assert.are.equal(0, rc, out)
        local ticks = {}
        for t in out:gmatch("completed\tbeat at heartbeat:(%d+)\n") do ticks[#ticks + 1] = tonumber(t) end
        assert.are.equal(3, #ticks, out)
        assert.are.same({ ticks[1] + 1, ticks[1] + 2 }, { ticks[2], ticks[3] })
        assert.truthy(out:find("done: 3 runs\n", 1, true), out)
    end)

    it("lifecycle.lua asks, resumes, pauses and cancels in memory", function()
        local rc, out = proc.run("build/binduq-lua examples/lifecycle.lua",
                                 { unset = { "REDIS_URL", "DATABASE_URL" }, timeout = 60 })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("ask +input%-required +Which city%?"), out)
        assert.truthy(out:find("ask +completed +Sunny in Lisbon %(after 3 messages%)"), out)
        assert.truthy(out:find("count +paused +checkpoint %d+"), out)
        assert.truthy(out:find("count +completed +counted to 30 %(resumed%)"), out)
        assert.truthy(out:find("spin +canceled +stopped"), out)
    end)

    it("agent.lua streams answers from the fake model server, or from MODEL_URL, and cancels one", function()
        local rc, out = proc.run("build/binduq-lua examples/agent.lua",
                                 { unset = { "REDIS_URL", "DATABASE_URL", "MODEL_URL", "MODEL_API_KEY" }, timeout = 60 })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("model gpt-4o-mini at the fake model server", 1, true), out)
        check_agent(out)
        -- MODEL_URL, MODEL_API_KEY and MODEL_NAME name the endpoint; the key is never shown.
        local srv = fakemodel.start{ pace = 0.05, max_seconds = 60 }
        finally(function() srv:stop() end)
        rc, out = proc.run("build/binduq-lua examples/agent.lua", {
            env = { MODEL_URL = srv.url .. "/v1", MODEL_API_KEY = "sk-agent-secret", MODEL_NAME = "fake-1" },
            unset = { "REDIS_URL", "DATABASE_URL" }, timeout = 60 })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("model fake-1 at MODEL_URL", 1, true), out)
        check_agent(out)
        assert.is_nil(out:find("sk-agent-secret", 1, true), out)
        local st = srv:stats()
        assert.are.equal(4, st.requests)
        assert.are.equal(3, st.completed)
        assert.are.equal(1, st.closed_by_client) -- the canceled story
    end)

    it("producer.lua without Redis warns that the tasks stay in its memory", function()
        local rc, out = proc.run("build/binduq-lua examples/producer.lua 2", { unset = { "REDIS_URL" } })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find(" warn memory_scheduler_no_worker queue=examples:echo warning=", 1, true), out)
        assert.truthy(out:find("lost when it exits", 1, true), out)
        assert.truthy(out:find("scheduled 2 tasks on examples:echo (memory)", 1, true), out)
    end)

    describe("#redis", function()
        local server
        setup(function() server = redis.start() end)
        teardown(function() server:stop() end)

        -- Each Lua example that schedules its own tasks: twice in a row against this one
        -- Redis, on its own queue, which it leaves empty; its expected output both times.
        local EXAMPLES = {
            { "hello.lua", { "examples:hello" }, function(out)
                for i = 1, 5 do assert.truthy(out:find("hello%-" .. i .. "%-%x+ +completed +Hello, "), out) end
                assert.truthy(out:find("done: 5 completed, 0 failed", 1, true), out)
                assert.truthy(out:find("backend=redis", 1, true), out)
            end },
            { "priority.lua", { "{examples:priority}:high", "{examples:priority}:normal", "{examples:priority}:low" },
              function(out)
                assert.truthy(out:find("strict: of the first 100 taken, high 100, normal 0, low 0; all 300 done", 1, true),
                              out:sub(-300))
            end },
            { "rate_limit.lua", { "examples:rate_limit" }, function(out)
                assert.truthy(out:find("done: 15 completed", 1, true), out:sub(-300))
                local _, alice = out:gsub("\nalice%-%d+%-%x+\talice at %+", "")
                local _, bob = out:gsub("\nbob%-%d+%-%x+\tbob at %+", "")
                assert.are.same({ 12, 3 }, { alice, bob }, out)
            end },
            { "dedup.lua", { "examples:dedup" }, function(out)
                assert.truthy(out:find("order-1\tscheduled\norder-2\tscheduled\norder-1\tduplicate\n"
                                       .. "order-3\tscheduled\norder-2\tduplicate\nscheduled\nduplicate\n"
                                       .. "scheduled: 3; duplicates counted: 2\ndone: 4 completed\n", 1, true), out)
            end },
            { "agent.lua", { "examples:agent" }, check_agent },
            { "lifecycle.lua", { "examples:lifecycle" }, function(out)
                assert.truthy(out:find("ask +input%-required +Which city%?"), out)
                assert.truthy(out:find("ask +completed +Sunny in Lisbon %(after 3 messages%)"), out)
                assert.truthy(out:find("count +paused +checkpoint %d+"), out)
                assert.truthy(out:find("count +completed +counted to 30 %(resumed%)"), out)
                assert.truthy(out:find("spin +canceled +stopped"), out)
            end },
        }
        for _, ex in ipairs(EXAMPLES) do
            local script, queues, check = ex[1], ex[2], ex[3]
            it(script .. " runs twice in a row on its own queue and leaves it empty", function()
                for run = 1, 2 do
                    local rc, out = proc.run("build/binduq-lua examples/" .. script, {
                        env = { REDIS_URL = server.url },
                        unset = { "REDIS_QUEUE_NAME", "DATABASE_URL", "MODEL_URL", "MODEL_API_KEY" }, timeout = 60 })
                    assert.are.equal(0, rc, "run " .. run .. ": " .. out)
                    check(out)
                    for _, q in ipairs(queues) do assert_empty(server, q) end
                end
            end)
        end

        it("producer.lua and worker.lua run twice in a row on examples:echo and leave it empty", function()
            local env = { REDIS_URL = server.url }
            local unset = { "REDIS_QUEUE_NAME", "DATABASE_URL" }
            for _ = 1, 2 do
                local rc, out = proc.run("build/binduq-lua examples/producer.lua 20", { env = env, unset = unset })
                assert.are.equal(0, rc, out)
                assert.truthy(out:find("scheduled 20 tasks on examples:echo (redis)", 1, true), out)
                local prefix = assert(server:cli("LINDEX", "examples:echo", "0"):match('"task_id":"([%x%-]+)%-%d+"'))
                local w = proc.spawn("build/binduq-lua examples/worker.lua 2", { env = env, unset = unset })
                assert(proc.wait_for(function()
                    local _, n = (proc.read(w.log) or ""):gsub("completed task_id=" .. prefix:gsub("%-", "%%-")
                                                               .. "%-%d+", "")
                    return n == 20
                end, 20), proc.read(w.log))
                assert.are.equal(0, proc.stop(w, 10))
                assert_empty(server, "examples:echo")
            end
        end)

        it("the C example schedules tasks that a Lua worker completes", function()
            local queue = "it:c:" .. math.random(1, 1e9)
            local env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue }
            local rc, out = proc.run("build/examples/schedule_c 3 ctask", { env = env })
            assert.are.equal(0, rc, out)
            assert.truthy(out:find("scheduled 3 tasks (0 duplicates); queue length 3", 1, true), out)
            local w = proc.spawn("build/binduq-lua examples/worker.lua", { env = env })
            assert(proc.wait_for(function()
                local _, n = (proc.read(w.log) or ""):gsub("completed task_id=ctask%-%d", "")
                return n == 3
            end, 20), proc.read(w.log))
            assert.are.equal(0, proc.stop(w, 10))
        end)

        it("reports health and queue length", function()
            local queue = "it:h:" .. math.random(1, 1e9)
            local s = bq.scheduler{ url = server.url, queue_name = queue }
            s:run{ task_id = "h1", messages = { "x" } }
            local h = s:health_check()
            assert.is_true(h.ok)
            assert.are.equal("redis", h.backend)
            assert.are.equal("127.0.0.1:" .. server.port, h.address)
            assert.are.equal(1, h.queue_length)
            assert.is_true(h.rtt > 0 and h.rtt < 1)
            assert.are.equal(1, s:queue_length())
            s:close()
        end)

        it("bindu_worker.lua takes Bindu's queue with Bindu's environment, oldest first, twice", function()
            local queue = "it:bw:" .. math.random(1, 1e9)
            -- Bindu's names only: no REDIS_URL, no REDIS_QUEUE_NAME
            local env = { SCHEDULER_TYPE = "redis", REDIS_HOST = "127.0.0.1", REDIS_PORT = tostring(server.port),
                          QUEUE_NAME = queue, BINDUQ_CONCURRENCY = "1" }
            for _ = 1, 2 do
                local lines = {}
                for i = 1, 5 do
                    lines[i] = ("run\t%s\t%s\tpart %d\tof five"):format(
                        require("binduq.core").uuid4(), require("binduq.core").uuid4(), i)
                end
                local tmp = os.tmpname()
                local f = assert(io.open(tmp, "w"))
                f:write(table.concat(lines, "\n"), "\n")
                f:close()
                local p = assert(io.popen("python3 tests/helpers/bindu_ops.py - < " .. proc.quote(tmp)))
                for op in p:lines() do server:cli("RPUSH", queue, op) end
                p:close()
                os.remove(tmp)
                local w = proc.spawn("build/binduq-lua examples/bindu_worker.lua", { env = env, unset = { "REDIS_URL" } })
                assert(proc.wait_for(function()
                    local _, n = (proc.read(w.log) or ""):gsub(" completed task_id=", "")
                    return n == 5
                end, 20), proc.read(w.log))
                assert.are.equal(0, proc.stop(w, 10))
                local order = {}
                for id in (proc.read(w.log)):gmatch(" completed task_id=(%S+)") do order[#order + 1] = id end
                for i = 1, 5 do assert.are.equal(lines[i]:match("^run\t(%S+)"), order[i]) end
                assert_empty(server, queue)
            end
        end)

        it("a worker on stdin-less plain lua5.4 is the same code", function()
            local queue = "it:plain:" .. math.random(1, 1e9)
            local env = {
                REDIS_URL = server.url, REDIS_QUEUE_NAME = queue,
                LUA_PATH_5_4 = "lua/?.lua;lua/?/init.lua;;", LUA_CPATH_5_4 = "build/?.so;;",
            }
            local w = proc.spawn("lua5.4 examples/worker.lua 2", { env = env })
            local rc, out = proc.run("lua5.4 examples/producer.lua 20 x plain", { env = env })
            assert.are.equal(0, rc, out)
            assert(proc.wait_for(function()
                local _, n = (proc.read(w.log) or ""):gsub("completed task_id=plain%-%d+", "")
                return n == 20
            end, 20), proc.read(w.log))
            assert.are.equal(0, proc.stop(w, 10))
        end)
    end)
end)

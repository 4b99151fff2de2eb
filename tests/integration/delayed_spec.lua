-- Delayed operations through a real redis-server, producer and worker in separate processes:
-- an idle worker blocked on the queue starts a delayed task on time by Redis' clock, 1,000
-- due in the same second all start within a second of it, a canceled delayed run never runs,
-- and a delayed task outlives a worker restart and a Redis restart (AOF).

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local bq = require("binduq")

local WORKER = "tests/integration/fixtures/delayed_worker.lua"

local function qname(tag)
    return ("it:delay:%s:%d"):format(tag, math.random(1, 1e9))
end

-- The starts the worker wrote: {task_id = wall-clock seconds}, and how many.
local function starts(out)
    local t, n = {}, 0
    for id, at in (proc.read(out) or ""):gmatch("(%S+) (%S+)\n") do
        if not t[id] then n = n + 1 end
        t[id] = t[id] or tonumber(at)
    end
    return t, n
end

-- The due times (seconds, Redis' clock) of what waits in {queue}:delayed, by task id.
local function due_times(server, queue)
    local out = server:cli("ZRANGE", "{" .. queue .. "}:delayed", "0", "-1", "WITHSCORES")
    local due, member = {}, nil
    for line in out:gmatch("[^\n]+") do
        if member then
            due[member:match('"task_id":"([^"]+)"')] = tonumber(line) / 1000
            member = nil
        else
            member = line
        end
    end
    return due
end

-- Judges how late the starts were ({ms}): by what a fault would cost, not by a quiet
-- machine's figure. A missed wake-up or cut makes every start late by up to `fault_ms` (the
-- wait it failed to end), or by up to 100 ms (Redis' cron tick ending a blocking wait, which
-- binduq cuts itself); a shared two-core machine now and then stalls one process for 100 ms
-- or more. So the median (of three or more) must be within 20 ms and none later than the
-- fault, nor early.
local function assert_on_time(late, fault_ms)
    table.sort(late)
    local median = late[(#late + 1) // 2]
    assert.is_true(late[1] >= -1, ("started %.1f ms before it was due"):format(-late[1]))
    assert.is_true(#late < 3 or median <= 20, ("median %.1f ms late"):format(median))
    assert.is_true(late[#late] < fault_ms, ("worst %.1f ms late"):format(late[#late]))
end

describe("#redis delayed operations", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("starts a delayed task on time by Redis' clock in an idle worker", function()
        local queue, dir = qname("ontime"), proc.tmpdir()
        local out = dir .. "/starts"
        -- block_timeout 30: nothing but the due time wakes the worker's blocking wait
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out, BQ_TEST_BLOCK_TIMEOUT = 30 }, WORKER, dir)
        proc.sleep(0.3) -- blocked in BLMOVE by now
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local due, late = {}, {}
        for i = 1, 10 do
            local id = "ontime-" .. i
            assert(s:run{ task_id = id, messages = { "x" }, delay = 0.5 })
            due[id] = due_times(server, queue)[id]
            assert.truthy(due[id], "not in the delayed set")
            proc.wait_for(function() return starts(out)[id] end, 5, 0.01)
        end
        local st = starts(out)
        for id, d in pairs(due) do
            assert.truthy(st[id], id .. " never started")
            late[#late + 1] = (st[id] - d) * 1000
        end
        table.sort(late)
        -- Redis and the worker share this machine's clock: start - due is the lateness.
        print(("\n  delay=0.5 started after its due time (Redis' clock): median %.1f ms, worst %.1f ms, best %.1f ms")
            :format(late[5], late[#late], late[1]))
        assert_on_time(late, 1000) -- not woken: 30 s
        s:close()
        proc.stop(w)
    end)

    it("starts on time a task delayed while the worker waits in a round trip that promotes", function()
        -- A "due" heard while the worker blocks in a round trip that promotes: that reply,
        -- which did not see the operation, must not set the next promotion 30 s away.
        local queue, dir = qname("during"), proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out, BQ_TEST_BLOCK_TIMEOUT = 30 }, WORKER, dir)
        proc.sleep(0.3)
        -- "due 0": the worker promotes at once, in a round trip that then blocks up to 30 s.
        server:cli("PUBLISH", "{" .. queue .. "}:control", "due 0")
        proc.sleep(0.2)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        assert(s:run{ task_id = "during-1", messages = { "x" }, delay = 0.5 })
        local due = due_times(server, queue)["during-1"]
        local started = proc.wait_for(function() return starts(out)["during-1"] end, 5, 0.01)
        assert.truthy(started, "the task did not start within 5 s of its due time")
        local late = (started - due) * 1000
        print(("\n  delay=0.5 said during a promoting wait: started %.1f ms after its due time"):format(late))
        assert_on_time({ late }, 1000) -- the next promotion set 30 s away
        s:close()
        proc.stop(w)
    end)

    it("starts on time a task due after the worker's next promotion, in that promotion's round trip", function()
        -- The producer's announcement does not change a promotion planned earlier than the
        -- due time; that promotion's reply then cuts the blocking wait sent with it.
        local queue, dir = qname("later"), proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out, BQ_TEST_BLOCK_TIMEOUT = 1 }, WORKER, dir)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local late = {}
        for i = 1, 3 do
            local id = "later-" .. i
            assert(s:run{ task_id = id, messages = { "x" }, delay = 1.7 })
            local due = due_times(server, queue)[id]
            assert.truthy(proc.wait_for(function() return starts(out)[id] end, 5, 0.01), id .. " never started")
            late[i] = (starts(out)[id] - due) * 1000
        end
        table.sort(late)
        print(("\n  delay=1.7 with block_timeout=1: %.1f to %.1f ms after its due time"):format(late[1], late[3]))
        assert_on_time(late, 1000) -- not cut: up to block_timeout
        s:close()
        proc.stop(w)
    end)

    it("starts on time a delayed task on the lower queue of a worker of two", function()
        -- The worker listens on its first queue's control channel; the second one's bell
        -- wakes it, and the promoted task is taken without waiting out the bells.
        local tag = qname("levels"):gsub(":", "_")
        local high, low = "{" .. tag .. "}:high", "{" .. tag .. "}:low"
        local dir = proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, high, { BQ_TEST_OUT = out, BQ_TEST_QUEUES = high .. "," .. low,
                                                 BQ_TEST_BLOCK_TIMEOUT = 30 }, WORKER, dir)
        proc.sleep(0.3)
        local s = bq.scheduler{ url = server.url, queue_name = low }
        local late = {}
        for i = 1, 3 do
            local id = "levels-" .. i
            assert(s:run{ task_id = id, messages = { "x" }, delay = 0.5 })
            local z = server:cli("ZRANGE", low .. ":delayed", "0", "-1", "WITHSCORES")
            local due = tonumber(z:match("\n(%d+)%s*$")) / 1000
            assert.truthy(proc.wait_for(function() return starts(out)[id] end, 5, 0.01), id .. " never started")
            late[i] = (starts(out)[id] - due) * 1000
        end
        table.sort(late)
        print(("\n  two queues, delay=0.5 on the second: %.1f to %.1f ms after its due time"):format(late[1], late[3]))
        assert_on_time(late, 1000) -- the bell not heard: 30 s
        s:close()
        proc.stop(w)
    end)

    it("starts 1,000 tasks due at the same time within a second of it", function()
        local queue, dir = qname("many"), proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out, BQ_TEST_BLOCK_TIMEOUT = 30 }, WORKER, dir)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local at = math.floor(bq.now()) + 2
        local batch = {}
        for i = 1, 1000 do
            batch[i] = { type = "run", task_id = "many-" .. i, messages = { "x" }, run_at = bq.iso8601(at) }
        end
        assert.are.equal(1000, s:schedule_many(batch))
        assert.are.equal(1000, s:delayed_count())
        local done = proc.wait_for(function() return select(2, starts(out)) == 1000 end, 10, 0.05)
        local st = starts(out)
        local first, last = math.huge, 0
        for _, t in pairs(st) do
            first, last = math.min(first, t), math.max(last, t)
        end
        print(("\n  1,000 due at the same time: the first started %.1f ms after it, the last %.1f ms")
            :format((first - at) * 1000, (last - at) * 1000))
        assert.truthy(done, "not all started")
        assert.is_true(first >= at - 0.001, "started before it was due")
        assert.is_true(last < at + 1, ("the last started %.3f s after its due time"):format(last - at))
        s:close()
        proc.stop(w)
    end)

    it("never runs a delayed run canceled before it is due", function()
        local queue, dir = qname("cancel"), proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out }, WORKER, dir)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        assert(s:run{ task_id = "kept", messages = { "x" }, delay = 0.6 })
        assert(s:run{ task_id = "dropped", messages = { "x" }, delay = 0.5 })
        assert(s:cancel("dropped"))
        assert.truthy(proc.wait_for(function() return starts(out).kept end, 5, 0.02))
        proc.sleep(0.3)
        assert.is_nil(starts(out).dropped)
        assert.are.equal(0, s:delayed_count())
        s:close()
        proc.stop(w)
        assert.truthy((proc.read(w.log) or ""):find("task_id=dropped", 1, true), "the worker never saw it")
    end)

    it("keeps a delayed task through a worker restart", function()
        local queue, dir = qname("restart"), proc.tmpdir()
        local out = dir .. "/starts"
        local w = cluster.worker(server, queue, { BQ_TEST_OUT = out }, WORKER, dir)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        assert(s:run{ task_id = "survivor", messages = { "x" }, delay = 1.5 })
        proc.kill(w, "KILL")
        proc.wait(w, 5)
        assert.are.equal(1, s:delayed_count())
        w = cluster.worker(server, queue, { BQ_TEST_OUT = out }, WORKER, dir)
        local due = due_times(server, queue).survivor
        assert.truthy(proc.wait_for(function() return starts(out).survivor end, 10, 0.02))
        assert.is_true(starts(out).survivor >= due - 0.001)
        s:close()
        proc.stop(w)
    end)

    it("keeps a delayed task through a Redis restart (append-only file)", function()
        local aof = redis.start{ aof = true }
        local queue, dir = qname("aof"), proc.tmpdir()
        local out = dir .. "/starts"
        local s = bq.scheduler{ url = aof.url, queue_name = queue }
        assert(s:run{ task_id = "durable", messages = { "x" }, delay = 1 })
        s:close()
        assert.truthy(aof:restart())
        local w = cluster.worker(aof, queue, { BQ_TEST_OUT = out }, WORKER, dir)
        assert.truthy(proc.wait_for(function() return starts(out).durable end, 10, 0.02))
        proc.stop(w)
        aof:stop()
    end)
end)

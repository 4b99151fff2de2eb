-- Redis Cluster: three masters on loopback (redis-cli --cluster create); queues on different
-- nodes worked by one process; a queue's slot migrated to another node mid-run (what a
-- resharding does, key by key) with no task lost.

local proc = require("helpers.proc")
local cluster = require("helpers.cluster")
local rcluster = require("helpers.rcluster")
local bq = require("binduq")
local core = require("binduq.core")

describe("#redis #cluster Redis Cluster", function()
    local c
    setup(function()
        bq.log_configure{ level = "off" }
        c = rcluster.start()
    end)
    teardown(function()
        if c then c:stop() end
        bq.log_configure{ level = "info" }
    end)

    it("works queues on different nodes and loses nothing when a slot migrates mid-run", function()
        -- Two queues whose slots live on different nodes.
        local qa, qb
        repeat
            qa = ("{qa%d}:tasks"):format(math.random(1, 1e9))
            qb = ("{qb%d}:tasks"):format(math.random(1, 1e9))
        until c:node_of(qa) ~= c:node_of(qb)
        local N = 1500
        local sa = bq.scheduler{ url = c.url, queue_name = qa }
        local sb = bq.scheduler{ url = c.url, queue_name = qb }
        local function fill(s, q, from, to)
            local ops = {}
            for i = from, to do ops[#ops + 1] = { type = "run", task_id = q .. "-" .. i, messages = { "sleep:2" } } end
            assert(s:schedule_many(ops))
        end
        fill(sa, qa, 1, N // 2)
        fill(sb, qb, 1, N // 2)
        local w = cluster.worker({ url = c.url }, qa, { BQ_TEST_QUEUE_A = qa, BQ_TEST_QUEUE_B = qb },
                                 "tests/integration/fixtures/two_queue_worker.lua")
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) >= N // 4 end, 30))
        -- Move qa's slot (its list, in-flight lists, lease records: all one slot) elsewhere.
        local slot = core.key_slot(qa)
        local to = (c:node_of(qa) % 3) + 1
        if to == c:node_of(qa) then to = to % 3 + 1 end
        local t0 = proc.now()
        local from, keys = c:migrate_slot(slot, to)
        local took = proc.now() - t0
        assert.are.equal(to, c:node_of(qa))
        -- Producers go on through the new owner.
        fill(sa, qa, N // 2 + 1, N)
        fill(sb, qb, N // 2 + 1, N)
        local done = proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) >= 2 * N end, 60, 0.5)
        local seen = cluster.count({ w }, "completed")
        local lost, twice = 0, 0
        for _, q in ipairs({ qa, qb }) do
            for i = 1, N do
                local n = seen[q .. "-" .. i] or 0
                if n == 0 then lost = lost + 1 elseif n > 1 then twice = twice + 1 end
            end
        end
        -- The pause of the migrated queue: the longest gap between its completions.
        local stamps = {}
        for _, line in ipairs(cluster.lines(w, " completed task_id={qa")) do stamps[#stamps + 1] = cluster.stamp(line) end
        table.sort(stamps)
        local pause = 0
        for i = 2, #stamps do pause = math.max(pause, stamps[i] - stamps[i - 1]) end
        print(("\n# cluster: %d tasks on 2 queues on nodes %d and %d; slot %d (%d keys) moved %d -> %d in %.2f s "
               .. "mid-run: lost %d, ran twice %d; the moved queue paused %.2f s"):format(2 * N, from, c:node_of(qb),
               slot, keys, from, to, took, lost, twice, pause))
        assert.are.equal(0, proc.stop(w, 10))
        assert.is_truthy(done)
        assert.are.equal(0, lost)
        assert.are.equal(0, sa:queue_length())
        sa:close()
        sb:close()
    end)

    it("takes a queue of order rpush oldest first, and finds a cancel in it, through the cluster", function()
        local q = ("{qr%d}:tasks"):format(math.random(1, 1e9))
        local s = bq.scheduler{ url = c.url, queue_name = q, order = "rpush" }
        local ops = {}
        for i = 1, 50 do ops[i] = { type = "run", task_id = q .. "-" .. i, messages = { "n" .. i } } end
        assert(s:schedule_many(ops))
        local w = cluster.worker({ url = c.url }, q, { BINDUQ_QUEUE_ORDER = "rpush", BQ_TEST_CONCURRENCY = 1,
                                                       BQ_TEST_BLOCK_TIMEOUT = 1 },
                                 "tests/lua/fixtures/lifecycle_worker.lua")
        assert(proc.wait_for(function() return #cluster.lines(w, " completed task_id=") == 50 end, 30))
        local lines = cluster.lines(w, " completed task_id=")
        for i = 1, 50 do assert.truthy(lines[i]:find("task_id=" .. q .. "-" .. i .. " ", 1, true), lines[i]) end
        -- the only slot busy; a cancel pushed into the queue (no control channel) reaches it
        assert(s:run{ task_id = q .. "-nap", messages = { "nap:30" } })
        assert(proc.wait_for(function() return s:queue_length() == 0 end, 10))
        proc.sleep(0.2)
        assert(s:push_raw('{"type":"cancel","task_id":"' .. q .. '-nap"}'))
        assert(proc.wait_for(function()
            return #cluster.lines(w, " canceled task_id=" .. (q .. "-nap"):gsub("%p", "%%%0")) > 0
        end, 5), proc.read(w.log))
        assert.are.equal(1, #cluster.lines(w, "control_from_queue"))
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("claims a recurring schedule's ticks in the queue's slot (cron-4)", function()
        local q = ("rec%d:tasks"):format(math.random(1, 1e9))
        local s = bq.scheduler{ url = c.url, queue_name = q }
        local msg = require("binduq.task").encode({ type = "run", task_id = "tick:1", messages = { "x" } }, 1)
        local now = math.floor(bq.now())
        local fired, last, state = s.client:cron("tick", "fire", '{"every":1}', { { now, now, msg } })
        assert.are.same({ 1, now, "active" }, { fired, last, state })
        fired, last = s.client:cron("tick", "fire", "", { { now, now, msg } })
        assert.are.same({ 0, now }, { fired, last })
        assert.are.equal(1, s:queue_length())
        assert.are.equal("paused", select(3, s.client:cron("tick", "pause")))
        s:close()
    end)

    it("refuses queues in different slots fetched together, naming them", function()
        local ok, err = pcall(bq.worker, { scheduler = { url = c.url }, queues = { "a:tasks", "b:tasks" },
                                            handler = function() end })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("share a hash tag", 1, true), tostring(err))
    end)

    it("never sends a push that timed out again: the caller hears of it, the run is queued once", function()
        -- the node of the queue busy for a second with a script; the push times out at 0.3 s,
        -- and Redis runs it once the script ends (it used to be sent again: queued twice, or
        -- with deduplication reported a duplicate)
        local busy = "local t0 = redis.call('TIME') while true do local t = redis.call('TIME') "
                     .. "if (t[1] - t0[1]) * 1e6 + (t[2] - t0[2]) > 1000000 then break end end return 1"
        for _, dedup in ipairs({ false, true }) do
            local q = ("it:ctimeout:%s:%d"):format(tostring(dedup), math.random(1, 1e9))
            local node = c.nodes[c:node_of(q)]
            local s = bq.scheduler{ url = c.url, queue_name = q, command_timeout = 0.3, dedup = dedup }
            assert(s:run{ task_id = q .. "-0", messages = { "x" } })
            local p = proc.spawn(("redis-cli -h 127.0.0.1 -p %d EVAL \"%s\" 0"):format(node.port, busy))
            proc.sleep(0.1)
            local ok, err, code = s:run{ task_id = q .. "-1", messages = { "x" } }
            assert.is_nil(ok)
            assert.are.equal("ETIMEDOUT", code, tostring(err))
            assert.are.equal(0, proc.wait(p, 10))
            assert.are.equal("2", node:cli("LLEN", q))
            s:close()
        end
    end)
end)

-- End to end through a real redis-server: many tasks over several worker processes, each
-- handled exactly once; FIFO order; handlers really run concurrently.

local proc = require("helpers.proc")
local redis = require("helpers.redis")

local function completed_ids(log)
    local ids = {}
    for id in (proc.read(log) or ""):gmatch("completed task_id=(%S+)") do ids[#ids + 1] = id end
    return ids
end

local function start_worker(server, queue, conc, dir)
    local p = proc.spawn("build/binduq-lua examples/worker.lua " .. conc, {
        dir = dir,
        env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "info",
                BINDUQ_LOG_FORMAT = "text" },
    })
    assert(proc.wait_for(function() return (proc.read(p.log) or ""):find("worker_started", 1, true) end, 20),
           "worker did not start: " .. tostring(proc.read(p.log)))
    return p
end

local function produce(server, queue, n, text, prefix)
    local rc, out = proc.run(("build/binduq-lua examples/producer.lua %d %s %s"):format(n, proc.quote(text), prefix), {
        env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "warn" }, timeout = 120,
    })
    assert(rc == 0, out)
    return out
end

describe("#redis round trip", function()
    local server
    setup(function() server = redis.start() end)
    teardown(function() server:stop() end)

    it("hands 10,000 tasks over 3 workers of concurrency 4, each to exactly one", function()
        local dir = proc.tmpdir()
        local queue = "it:rt:" .. math.random(1, 1e9)
        local workers = {}
        for i = 1, 3 do workers[i] = start_worker(server, queue, 4, dir) end
        local out = produce(server, queue, 10000, "x", "P")
        assert.truthy(out:find("scheduled 10000 tasks on " .. queue .. " (redis)", 1, true), out)
        local total = proc.wait_for(function()
            local n = 0
            for _, w in ipairs(workers) do n = n + #completed_ids(w.log) end
            return n >= 10000 and n
        end, 120)
        proc.sleep(0.3) -- anything extra (a duplicate) would show up now
        local count, per_worker = {}, {}
        for i, w in ipairs(workers) do
            assert.are.equal(0, proc.stop(w, 15), "worker exit status")
            local ids = completed_ids(w.log)
            per_worker[i] = #ids
            for _, id in ipairs(ids) do count[id] = (count[id] or 0) + 1 end
        end
        assert.are.equal(10000, total)
        for i = 1, 10000 do assert.are.equal(1, count["P-" .. i], "P-" .. i) end
        for i = 1, 3 do assert.is_true(per_worker[i] > 0, "worker " .. i .. " got no work") end
        assert.are.equal("0", server:cli("LLEN", queue))
        proc.sh("rm -rf " .. proc.quote(dir))
    end)

    it("keeps FIFO order with one worker of concurrency 1", function()
        local queue = "it:fifo:" .. math.random(1, 1e9)
        produce(server, queue, 300, "x", "F")
        local w = start_worker(server, queue, 1)
        proc.wait_for(function() return #completed_ids(w.log) >= 300 end, 60)
        assert.are.equal(0, proc.stop(w, 15))
        local ids = completed_ids(w.log)
        assert.are.equal(300, #ids)
        for i = 1, 300 do assert.are.equal("F-" .. i, ids[i]) end
    end)

    it("runs handlers of one worker at the same time", function()
        local queue = "it:conc:" .. math.random(1, 1e9)
        local w = start_worker(server, queue, 4)
        produce(server, queue, 4, "sleep:500", "S")
        proc.wait_for(function() return #completed_ids(w.log) >= 4 end, 30)
        assert.are.equal(0, proc.stop(w, 15))
        -- Four 500 ms handlers in four slots finish together; one after another they would
        -- finish 500 ms apart.
        local stamps = {}
        for ts in (proc.read(w.log)):gmatch("(%d%d:%d%d:%d%d%.%d%d%d)Z info completed") do
            local h, m, s = ts:match("(%d+):(%d+):([%d.]+)")
            stamps[#stamps + 1] = tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
        end
        assert.are.equal(4, #stamps)
        table.sort(stamps)
        assert.is_true(stamps[4] - stamps[1] < 0.4, "completions spread over " .. (stamps[4] - stamps[1]) .. " s")
    end)

    it("drains a deep queue of quick tasks in batches, and does not hoard slow ones", function()
        local queue = "it:batch:" .. math.random(1, 1e9)
        produce(server, queue, 3000, "quick", "B")
        server:cli("CONFIG", "RESETSTAT")
        local w = start_worker(server, queue, 1)
        assert(proc.wait_for(function() return #completed_ids(w.log) == 3000 end, 60))
        local stats = server:cli("INFO", "commandstats")
        local calls = tonumber(stats:match("cmdstat_evalsha:calls=(%d+)"))
        local moves = tonumber(stats:match("cmdstat_blmove:calls=(%d+)") or "0")
        -- One fetch script per batch of about 64-129 tasks, not one per task: a running
        -- worker (w:run(), which always has a blocking timeout) took the backlog one BLMOVE
        -- a task before (3,000 calls), now by fetch-2 while each round trip finds work.
        assert.is_true(calls + moves < 3000 / 10, ("fetch scripts: %s, BLMOVE: %s"):format(calls, moves))
        assert.are.equal(0, proc.stop(w, 10))
        -- Slow tasks (20 ms): two workers share them; neither takes a batch the other could run.
        local slow = "it:slow:" .. math.random(1, 1e9)
        local a, b = start_worker(server, slow, 1), start_worker(server, slow, 1)
        produce(server, slow, 60, "sleep:20", "S")
        assert(proc.wait_for(function() return #completed_ids(a.log) + #completed_ids(b.log) == 60 end, 30))
        local na, nb = #completed_ids(a.log), #completed_ids(b.log)
        assert.is_true(na >= 15 and nb >= 15, ("split %d / %d"):format(na, nb))
        assert.are.equal(0, proc.stop(a, 10))
        assert.are.equal(0, proc.stop(b, 10))
    end)
end)

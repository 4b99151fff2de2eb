-- Sentinel: a master, a replica and three sentinels on loopback; a worker and a producer
-- that know only the sentinels; SENTINEL FAILOVER in the middle of 5,000 tasks. Reports the
-- pause in processing and any task lost or run twice; with wait_replicas = 1 no
-- acknowledged enqueue may be lost.

local proc = require("helpers.proc")
local cluster = require("helpers.cluster")
local sentinel = require("helpers.sentinel")
local redis = require("helpers.redis")
local bq = require("binduq")

describe("#redis #sentinel Sentinel", function()
    local set
    setup(function()
        bq.log_configure{ level = "off" }
        set = sentinel.start()
    end)
    teardown(function()
        if set then set:stop() end
        bq.log_configure{ level = "info" }
    end)

    it("follows a failover: every acknowledged task completes, none is lost", function()
        local q = "it:sentinel:" .. math.random(1, 1e9)
        local N, PRE = 5000, 4000
        local s = bq.scheduler{ url = set.url, queue_name = q, wait_replicas = 1, wait_timeout = 1,
                                connect_timeout = 2, command_timeout = 2 }
        local function ops(from, to)
            local t = {}
            for i = from, to do t[#t + 1] = { type = "run", task_id = q .. "-" .. i, messages = { "sleep:5" } } end
            return t
        end
        for i = 1, PRE, 500 do assert(s:schedule_many(ops(i, i + 499))) end
        local w = cluster.worker({ url = set.url }, q, { BQ_TEST_CONCURRENCY = 4, BQ_TEST_BLOCK_TIMEOUT = 1 })
        local first_master = set:master_port()
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) >= PRE / 4 end, 60))
        local t_failover = bq.now() % 86400
        assert.truthy(set:failover():find("OK", 1, true))
        assert(proc.wait_for(function() return set:master_port() ~= first_master end, 30), "no failover happened")
        -- The producer carries on through the failover: a batch counts once WAIT says a
        -- replica has it; a failed try is retried (deduplication makes a retry harmless).
        local acked, retries, stalled = PRE, 0, 0
        local deadline = proc.now() + 90
        while acked < N and proc.now() < deadline do
            local t0 = proc.now()
            if s:schedule_many(ops(acked + 1, acked + 50)) then
                acked = acked + 50
            else
                retries = retries + 1
                stalled = stalled + (proc.now() - t0)
                proc.sleep(0.05)
            end
        end
        assert.are.equal(N, acked)
        local done = proc.wait_for(function()
            local seen = cluster.count({ w }, "completed")
            local n = 0
            for _ in pairs(seen) do n = n + 1 end
            return n == N
        end, 90, 0.5)
        local seen = cluster.count({ w }, "completed")
        local lost, twice = 0, 0
        for i = 1, N do
            local c = seen[q .. "-" .. i] or 0
            if c == 0 then lost = lost + 1 elseif c > 1 then twice = twice + 1 end
        end
        -- The processing pause: the longest gap between completions from the failover until
        -- the tasks queued before it were done (the queue was never empty meanwhile).
        local stamps = {}
        for _, line in ipairs(cluster.lines(w, " completed task_id=")) do stamps[#stamps + 1] = cluster.stamp(line) end
        table.sort(stamps)
        local pause = 0
        for i = 2, math.min(#stamps, PRE) do
            if stamps[i] >= t_failover and stamps[i] - stamps[i - 1] > pause then pause = stamps[i] - stamps[i - 1] end
        end
        print(("\n# sentinel failover mid-run: %d tasks; processing paused %.2f s; lost %d, ran twice %d; "
               .. "producer retried %d times, %.1f s; worker reconnects %d, redelivered and skipped %d")
              :format(N, pause, lost, twice, retries, stalled, #cluster.lines(w, "reconnected"),
                      #cluster.lines(w, "already completed")))
        assert.are.equal(0, proc.stop(w, 10))
        assert.is_truthy(done)
        assert.are.equal(0, lost)
        -- The health check names the new master and the topology.
        local h = s:health_check()
        assert.is_true(h.ok, tostring(h.error))
        assert.are.equal("master", h.role)
        assert.are.equal("127.0.0.1:" .. set:master_port(), h.node)
        assert.are.same({ kind = "sentinel", service = "mymaster", master = h.node, sentinels = 3 }, h.topology)
        s:close()
    end)

    it("reports a sentinel URL whose service no sentinel knows", function()
        local url = set.url:gsub("/mymaster/", "/nosuchmaster/")
        local s = bq.scheduler{ url = url, queue_name = "x" }
        local ok, err, code = s:run{ task_id = "x", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("ENOTFOUND", code)
        assert.truthy(err:find("nosuchmaster", 1, true), err)
        s:close()
    end)

    it("asks the next sentinel when one accepts and never answers, in time of its own", function()
        -- A stopped redis-server: the kernel accepts the connection, nothing answers. It
        -- costs connect_timeout; the next sentinel (with a password: AUTH first) gets its own.
        local hung = redis.start()
        proc.kill(hung.proc, "STOP")
        local port = math.random(20000, 59999)
        local dir = proc.tmpdir()
        proc.write(dir .. "/sentinel.conf", table.concat({
            "port " .. port, "bind 127.0.0.1", "dir " .. dir, "requirepass s3cret",
            ("sentinel monitor mymaster 127.0.0.1 %d 2"):format(set:master_port()), "",
        }, "\n"))
        local sp = proc.spawn("redis-sentinel " .. proc.quote(dir .. "/sentinel.conf"),
                              { dir = dir, log = dir .. "/sentinel.log" })
        local ok, res = pcall(function()
            assert(proc.wait_for(function()
                return proc.sh(("redis-cli -p %d -a s3cret --no-auth-warning PING"):format(port)) == "PONG"
            end, 10), "the sentinel did not start")
            local url = ("redis+sentinel://127.0.0.1:%d,127.0.0.1:%d/mymaster/0?sentinel_password=s3cret")
                :format(hung.port, port)
            local s = bq.scheduler{ url = url, queue_name = "it:sentinel:hung", connect_timeout = 1,
                                    command_timeout = 1 }
            local r, err = s:run{ task_id = "hung-" .. math.random(1, 1e9), messages = { "x" } }
            s:close()
            return r or err
        end)
        proc.kill(hung.proc, "CONT")
        hung:stop()
        proc.stop(sp, 5)
        assert.is_true(ok, res)
        assert.are.equal(true, res)
    end)
end)

-- Redis going away: a waiting worker logs, backs off (no busy loop), reconnects and carries on
-- with tasks pushed after the restart; a worker started while Redis is down waits for it.

local proc = require("helpers.proc")
local redis = require("helpers.redis")

local function count(log, pat)
    local _, n = (proc.read(log) or ""):gsub(pat, "")
    return n
end

local function schedule(server, queue, prefix, n)
    local rc, out = proc.run(("build/binduq-lua examples/producer.lua %d x %s"):format(n, prefix), {
        env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue }, timeout = 30,
    })
    assert(rc == 0, out)
end

describe("#redis reconnect", function()
    it("reconnects after Redis is killed and restarted while the worker waits", function()
        local server = redis.start()
        local queue = "it:rc:" .. math.random(1, 1e9)
        local w = proc.spawn("build/binduq-lua examples/worker.lua 2", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "info" },
        })
        assert(proc.wait_for(function() return count(w.log, "worker_started") == 1 end, 20))
        schedule(server, queue, "before", 3)
        assert(proc.wait_for(function() return count(w.log, "completed task_id=before") == 3 end, 20))
        proc.sleep(0.3) -- the worker is blocked in its pop again

        server:kill()
        proc.sleep(2.0)
        local errors_while_down = count(w.log, "error redis_error")
        assert.is_true(proc.alive(w), "the worker must not exit while Redis is down")
        assert.is_true(errors_while_down >= 1, "the outage is logged")
        -- Backoff from 0.1 s doubling to 5 s: a handful of attempts in 2 s, not a busy loop.
        assert.is_true(errors_while_down <= 12, errors_while_down .. " reconnect attempts in 2 s")

        server:restart()
        schedule(server, queue, "after", 5)
        assert(proc.wait_for(function() return count(w.log, "completed task_id=after") == 5 end, 30),
               proc.read(w.log))
        assert.is_true(count(w.log, "info reconnected") >= 1)
        assert.are.equal(0, proc.stop(w, 10))
        server:stop()
    end)

    it("waits for Redis when it is down at start-up", function()
        local server = redis.start()
        server:stop()
        local queue = "it:rc2:" .. math.random(1, 1e9)
        local w = proc.spawn("build/binduq-lua examples/worker.lua 1", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue },
        })
        assert(proc.wait_for(function() return count(w.log, "error redis_error") >= 1 end, 20))
        assert.is_true(proc.alive(w))
        server:restart()
        schedule(server, queue, "late", 2)
        assert(proc.wait_for(function() return count(w.log, "completed task_id=late") == 2 end, 30),
               proc.read(w.log))
        assert.are.equal(0, proc.stop(w, 10))
        server:stop()
    end)

    it("gives a producer a clear error within its timeout, then carries on once Redis is back", function()
        local bq = require("binduq")
        local core = require("binduq.core")
        local server = redis.start()
        local queue = "it:rc3:" .. math.random(1, 1e9)
        local s = bq.scheduler{ url = server.url, queue_name = queue, connect_timeout = 1, command_timeout = 1 }
        assert(s:run{ task_id = "p1", messages = { "x" } })
        server:stop()
        local t0 = core.monotonic()
        local ok, err, code = s:run{ task_id = "p2", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("ECONNREFUSED", code)
        assert.truthy(err:find(tostring(server.port), 1, true), err)
        assert.is_true(core.monotonic() - t0 < 2)
        server:restart()
        assert(s:run{ task_id = "p3", messages = { "x" } }) -- the same scheduler, no restart
        -- retry_on_timeout rides out a short outage by itself.
        local r = bq.scheduler{ url = server.url, queue_name = queue, retry_on_timeout = true, retries = 20,
                                connect_timeout = 1 }
        server:stop()
        local restarter = proc.spawn("sh -c " .. proc.quote(("sleep 1; exec redis-server --port %d --bind 127.0.0.1 --save '' --dir %s")
                                     :format(server.port, server.dir)), {})
        local ok2, err2 = r:run{ task_id = "p4", messages = { "x" } }
        assert.is_true(ok2, err2)
        -- (This server keeps nothing across restarts: only p4 is there.)
        assert.are.equal("1", (proc.sh(("redis-cli -p %d LLEN %s"):format(server.port, queue)):match("%d+")))
        proc.stop(restarter, 5)
        s:close()
        r:close()
    end)
end)

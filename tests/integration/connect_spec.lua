-- Connecting: unix sockets, database selection, ACL users, and what an idle worker costs
-- (one blocking pop per blocking timeout, no CPU).

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local bq = require("binduq")

describe("#redis connections", function()
    local server, sock
    setup(function()
        sock = proc.tmpdir() .. "/redis.sock"
        server = redis.start{ args = { "--unixsocket", sock, "--unixsocketperm", "700" } }
        bq.log_configure{ level = "off" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("talks over a unix socket", function()
        local s = bq.scheduler{ url = "unix://" .. sock, queue_name = "it:unix" }
        assert.are.equal(sock, s.address)
        assert.is_true((s:run{ task_id = "u1", messages = { "x" } }))
        assert.are.equal("1", server:cli("LLEN", "it:unix"))
        s:close()
    end)

    it("keeps the client taken from a scheduler the program dropped open while it is held", function()
        local c = bq.scheduler{ url = server.url, queue_name = "it:held" }.client
        collectgarbage()
        collectgarbage()
        assert.are.equal("PONG", c:command("it:held", "PING"))
        c:close()
    end)

    it("selects the database of the URL", function()
        local s = bq.scheduler{ url = ("redis://127.0.0.1:%d/3"):format(server.port), queue_name = "it:db" }
        assert.is_true((s:run{ task_id = "d1", messages = { "x" } }))
        assert.are.equal("0", server:cli("LLEN", "it:db"))
        assert.are.equal("1", server:cli("-n", "3", "LLEN", "it:db"))
        s:close()
    end)

    it("authenticates an ACL user with a percent-encoded password", function()
        -- a producer needs its queue's keys (Q and {Q}:...) and: LPUSH/LTRIM (push and bell),
        -- EVALSHA/EVAL + SET (deduplicated push), LLEN, PING
        server:cli("ACL", "SETUSER", "producer", "on", ">p@ss:w/rd", "~it:*", "~{it:*", "+@list",
                   "+evalsha", "+eval", "+set", "+ping")
        local s = bq.scheduler{ url = ("redis://producer:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d/0"):format(server.port),
                                queue_name = "it:acl" }
        assert.is_true((s:run{ task_id = "a1", messages = { "x" } }))
        assert.are.equal(1, s:queue_length())
        s:close()
        local bad = bq.scheduler{ url = ("redis://producer:nope@127.0.0.1:%d/0"):format(server.port),
                                  queue_name = "it:acl" }
        local ok, err, code = bad:run{ task_id = "a2", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.truthy(err:find("WRONGPASS", 1, true), err)
        assert.falsy(err:find("nope", 1, true))
        bad:close()
    end)

    it("an idle worker makes one blocking call per timeout and uses no CPU", function()
        local queue = "it:idle:" .. math.random(1, 1e9)
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/idle_worker.lua", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue },
        })
        assert(proc.wait_for(function() return (proc.read(w.log) or ""):find("worker_started", 1, true) end, 20))
        proc.sleep(0.5)
        local function calls(names)
            local info = server:cli("INFO", "commandstats")
            local n = 0
            for _, cmd in ipairs(names) do
                n = n + tonumber(info:match("cmdstat_" .. cmd .. ":calls=(%d+)") or "0")
            end
            return n
        end
        local pops = { "blmove", "brpop", "blmpop", "rpop" }
        local others = { "evalsha", "eval", "lrem", "zadd", "llen" }
        local function cpu_ticks()
            local stat = proc.read("/proc/" .. w.pid .. "/stat")
            local fields = {}
            for f in stat:gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
            return tonumber(fields[12]) + tonumber(fields[13]) -- utime + stime
        end
        local c0, o0, t0 = calls(pops), calls(others), cpu_ticks()
        proc.sleep(3.0) -- block_timeout is 1 s in the fixture
        local c1, o1, t1 = calls(pops), calls(others), cpu_ticks()
        assert.is_true(c1 - c0 >= 2 and c1 - c0 <= 4, ("%d blocking calls in 3 s"):format(c1 - c0))
        -- Each wake-up also promotes due retries and, every lease/3, renews the lease: both
        -- travel in the same round trip as the blocking pop, so there is no other traffic.
        assert.is_true(o1 - o0 <= (c1 - c0) + 2, ("%d other commands in 3 s"):format(o1 - o0))
        assert.is_true(t1 - t0 <= 2, ("%d CPU ticks in 3 s idle"):format(t1 - t0))
        assert.are.equal(0, proc.stop(w, 10))
    end)
end)

describe("#redis a Redis that requires a password", function()
    local server, addr
    local PW = "s3cret-pw"
    setup(function()
        server = redis.start{ args = { "--requirepass", PW } }
        addr = "127.0.0.1:" .. server.port
        bq.log_configure{ level = "off" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    local function url(pw)
        return ("redis://%s127.0.0.1:%d/0"):format(pw and (":" .. pw .. "@") or "", server.port)
    end

    it("a producer's error names the address and says authentication is required or failed", function()
        local s = bq.scheduler{ url = url(nil), queue_name = "it:auth" }
        local ok, err, code = s:run{ task_id = "a1", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.are.equal(1, err:find(addr .. ": authentication required:", 1, true), err)
        assert.truthy(err:find("NOAUTH", 1, true), err)
        local n, err2 = s:queue_length()
        assert.is_nil(n)
        assert.truthy(err2:find(addr .. ": authentication required", 1, true), err2)
        s:close()
        s = bq.scheduler{ url = url("not-the-pw"), queue_name = "it:auth" }
        ok, err, code = s:run{ task_id = "a2", messages = { "x" } }
        assert.is_nil(ok)
        assert.are.equal("EAUTH", code)
        assert.are.equal(1, err:find(addr .. ": authentication failed:", 1, true), err)
        assert.falsy(err:find("not-the-pw", 1, true), err)
        s:close()
        s = bq.scheduler{ url = url(PW), queue_name = "it:auth" }
        assert.is_true((s:run{ task_id = "a3", messages = { "x" } }))
        s:close()
    end)

    it("a worker whose password is refused fails to start, naming the address", function()
        for _, c in ipairs({ { pw = nil, what = "authentication required" },
                             { pw = "not-the-pw", what = "authentication failed" } }) do
            local t0 = require("binduq.core").monotonic()
            local rc, out = proc.run("build/binduq-lua tests/integration/fixtures/test_worker.lua",
                                     { env = { REDIS_URL = url(c.pw), REDIS_QUEUE_NAME = "it:auth",
                                               BINDUQ_LOG_LEVEL = "info" }, timeout = 20 })
            assert.are.equal(1, rc, out)
            assert.is_true(require("binduq.core").monotonic() - t0 < 10, "the start was not refused at once")
            assert.truthy(out:find("binduq%-lua: tests/integration/fixtures/test_worker%.lua:%d+: "
                                   .. addr:gsub("%p", "%%%0") .. ": " .. c.what), out)
            assert.falsy(out:find("worker_started", 1, true), out)
            assert.falsy(out:find("not-the-pw", 1, true), out)
        end
        -- the right password starts it
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/test_worker.lua",
                             { env = { REDIS_URL = url(PW), REDIS_QUEUE_NAME = "it:auth", BINDUQ_LOG_LEVEL = "info" } })
        local started = proc.wait_for(function()
            return (proc.read(w.log) or ""):find("worker_started", 1, true)
        end, 20)
        local log = proc.read(w.log)
        assert.are.equal(0, proc.stop(w, 10))
        assert.truthy(started, log)
        assert.falsy(log:find("EAUTH", 1, true), log)
    end)

    it("a running worker whose password is changed says so, naming the address", function()
        local function admin(...)
            local args = {}
            for i, a in ipairs({ ... }) do args[i] = proc.quote(a) end
            return proc.sh(("redis-cli --no-auth-warning -a %s -h 127.0.0.1 -p %d %s 2>&1")
                :format(proc.quote(PW), server.port, table.concat(args, " ")))
        end
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/test_worker.lua",
                             { env = { REDIS_URL = url(PW), REDIS_QUEUE_NAME = "it:auth2", BINDUQ_LOG_LEVEL = "info" } })
        assert(proc.wait_for(function() return (proc.read(w.log) or ""):find("worker_started", 1, true) end, 20))
        -- The password changes and the worker's connections are dropped: it reconnects with
        -- the old one.
        admin("CONFIG", "SET", "requirepass", "another-pw")
        proc.sh(("redis-cli --no-auth-warning -a another-pw -h 127.0.0.1 -p %d CLIENT KILL TYPE normal 2>&1")
            :format(server.port))
        local said = proc.wait_for(function()
            return (proc.read(w.log) or ""):find("redis_error .*" .. addr:gsub("%p", "%%%0") .. ": authentication failed")
        end, 20)
        proc.sh(("redis-cli --no-auth-warning -a another-pw -h 127.0.0.1 -p %d CONFIG SET requirepass %s 2>&1")
            :format(server.port, proc.quote(PW)))
        local log = proc.read(w.log)
        proc.stop(w, 10)
        assert.truthy(said, log)
        assert.falsy(log:find("another-pw", 1, true), log)
        assert.falsy(log:find(PW, 1, true), log)
        assert.truthy(admin("PING"):find("PONG", 1, true))
    end)
end)

-- Reliable delivery through a real redis-server: workers killed at random lose nothing, a
-- Redis restart with AOF loses nothing, long tasks keep their lease, SIGTERM hands work back,
-- retries and the dead-letter list, a task that kills its workers is not retried forever.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local bq = require("binduq")

local function qname(tag)
    return ("it:%s:%d"):format(tag, math.random(1, 1e9))
end

local function counts(server, queue)
    local s = bq.scheduler{ url = server.url, queue_name = queue }
    local c = { ready = s:queue_length(), inflight = s:inflight_count(), delayed = s:delayed_count(),
                dead = s:dead_letter_count() }
    s:close()
    return c
end

describe("#redis delivery", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("loses nothing when workers are killed at random (chaos)", function()
        local queue, dir = qname("chaos"), proc.tmpdir()
        local N, LEASE = 20000, 1
        local env = { BQ_TEST_LEASE = LEASE, BQ_TEST_MAX_ATTEMPTS = 1000, BQ_TEST_CONCURRENCY = 4,
                      BQ_TEST_BLOCK_TIMEOUT = 1, BINDUQ_LOG_LEVEL = "info" }
        local all, live = {}, {}
        for i = 1, 4 do
            live[i] = cluster.worker(server, queue, env, nil, dir)
            all[#all + 1] = live[i]
        end
        cluster.schedule(server, queue, N, "C", "sleep:15")
        -- 20 s of chaos: every 0.5-2 s one worker is killed (SIGKILL) and replaced.
        local kills = {}
        local stop_at = proc.now() + 20
        while proc.now() < stop_at do
            proc.sleep(0.5 + math.random() * 1.5)
            local k = math.random(1, #live)
            local victim = live[k]
            local id = (cluster.lines(victim, "worker_started")[1] or ""):match("worker=(%S+)")
            proc.kill(victim, "KILL")
            proc.wait(victim, 5)
            kills[#kills + 1] = { at = bq.now() % 86400, id = id }
            live[k] = cluster.worker(server, queue, env, nil, dir)
            all[#all + 1] = live[k]
        end
        -- Then let the queue drain (leases of the killed run out within LEASE seconds).
        local drained = proc.wait_for(function()
            local seen = cluster.count(all, "completed")
            local unique = 0
            for _ in pairs(seen) do unique = unique + 1 end
            local c = counts(server, queue)
            return unique == N and c.ready == 0 and c.inflight == 0 and c.delayed == 0
        end, 180, 0.5)
        local seen, total = cluster.count(all, "completed")
        local missing, dups = {}, 0
        for i = 1, N do
            local n = seen["C-" .. i] or 0
            if n == 0 then missing[#missing + 1] = "C-" .. i end
            if n > 1 then dups = dups + (n - 1) end
        end
        -- Recovery: from each kill to the reaping of the dead worker's tasks by another.
        local recover = {}
        for _, k in ipairs(kills) do
            local pat = "reaped .*dead_worker=" .. (k.id or "?"):gsub("%p", "%%%0")
            for _, p in ipairs(all) do
                for _, line in ipairs(cluster.lines(p, pat)) do
                    recover[#recover + 1] = cluster.stamp(line) - k.at
                end
            end
        end
        table.sort(recover)
        for _, p in ipairs(live) do assert.are.equal(0, proc.stop(p, 20)) end
        print(("\n# chaos: %d tasks, %d kills, %d completions, %d lost, %d ran twice; lease %g s; "
               .. "recovery after a kill: median %.2f s, max %.2f s (%d reapings)"):format(N, #kills, total,
               #missing, dups, LEASE, recover[math.max(1, #recover // 2)] or -1, recover[#recover] or -1, #recover))
        assert.is_truthy(drained, "the queue did not drain")
        assert.are.equal(0, #missing, "lost: " .. table.concat(missing, ", ", 1, math.min(#missing, 10)))
        -- Only tasks in flight at a kill may run twice: at most concurrency (4) each, plus
        -- finished ones whose acknowledgement had not gone out yet.
        assert.is_true(dups <= #kills * 8, ("%d duplicates for %d kills"):format(dups, #kills))
        assert.are.equal(0, counts(server, queue).dead)
        proc.sh("rm -rf " .. proc.quote(dir))
    end)

    it("loses no acknowledged enqueue when Redis restarts with AOF on", function()
        local aof = redis.start{ aof = true, args = { "--appendfsync", "everysec" } }
        local queue = qname("aof")
        local N = 3000
        local w = cluster.worker(aof, queue, { BQ_TEST_CONCURRENCY = 4 })
        cluster.schedule(aof, queue, N, "A", "sleep:5")
        proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) >= 300 end, 30)
        aof:restart() -- SIGTERM: Redis writes the AOF out and stops; then it starts again
        local done = proc.wait_for(function()
            local seen = cluster.count({ w }, "completed")
            local unique = 0
            for _ in pairs(seen) do unique = unique + 1 end
            return unique == N
        end, 120, 0.5)
        local seen = cluster.count({ w }, "completed")
        local missing = 0
        for i = 1, N do if not seen["A-" .. i] then missing = missing + 1 end end
        assert.are.equal(0, proc.stop(w, 20))
        local reconnected = #cluster.lines(w, "info reconnected")
        aof:stop()
        assert.is_truthy(done)
        assert.are.equal(0, missing)
        assert.is_true(reconnected >= 1)
    end)

    it("hands back what a lost fetch reply left in its in-flight list, even when the first check fails", function()
        -- An orphan: a message in the worker's in-flight list that it never received, as a
        -- fetch whose reply was lost leaves it. The check for orphans runs after the next
        -- good fetch; here LRANGE is refused at first, so that check fails, and must be made
        -- again once it can be.
        local queue = qname("orphan")
        assert.are.equal("OK", server:cli("ACL", "SETUSER", "orph", "on", ">o-pass", "~*", "&*", "+@all", "-lrange"))
        local url = ("redis://orph:o-pass@127.0.0.1:%d/0"):format(server.port)
        local w = cluster.worker({ url = url }, queue, { BQ_TEST_CONCURRENCY = 1, BQ_TEST_BLOCK_TIMEOUT = 1 })
        local id = cluster.lines(w, "worker_started")[1]:match(" worker=(%S+)")
        assert.truthy(id)
        server:cli("LPUSH", "{" .. queue .. "}:wip:" .. id,
                   '{"type":"run","task_id":"orphan-1","messages":[{"role":"user","content":"x"}]}')
        server:cli("CLIENT", "KILL", "USER", "orph") -- the fetch fails: the worker is unsure
        assert(proc.wait_for(function() return #cluster.lines(w, "orphan_check_failed") >= 1 end, 15),
               "no failed check: " .. tostring(proc.read(w.log)))
        assert.are.equal("OK", server:cli("ACL", "SETUSER", "orph", "+lrange"))
        local done = proc.wait_for(function() return (cluster.count({ w }, "completed"))["orphan-1"] == 1 end, 15)
        local recovered = #cluster.lines(w, "orphans_recovered")
        assert.are.equal(0, proc.stop(w, 10))
        server:cli("ACL", "DELUSER", "orph")
        assert.truthy(done)
        assert.are.equal(1, recovered)
        assert.are.equal(0, counts(server, queue).inflight)
    end)

    it("leases a fetch of more than 8,000 tasks whole, from one queue or several (none popped and dropped)", function()
        -- A worker with 10,000 handlers asks for 10,000 at once; Redis' Lua unpack stops at
        -- about 8,000 values, and fetch-2 and fetchm-N once raised there with the tasks
        -- already popped: they were in no list at all.
        for _, several in ipairs({ false, true }) do
            local queue, N = qname("big"), 12000
            local other = queue .. ":low"
            cluster.schedule(server, queue, N, "big", "x")
            local w = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 1, BQ_TEST_PER_STATE = 10000,
                                                      BQ_TEST_BLOCK_TIMEOUT = 1,
                                                      BQ_TEST_QUEUES = several and (queue .. "," .. other) or nil })
            local drained = proc.wait_for(function()
                local c = counts(server, queue)
                return c.ready == 0 and c.inflight == 0
            end, 60, 0.2)
            local log = proc.read(w.log) or ""
            assert.are.equal(0, proc.stop(w, 30))
            assert.truthy(drained)
            local seen, total = cluster.count({ w }, "completed")
            local unique = 0
            for _ in pairs(seen) do unique = unique + 1 end
            assert.are.equal(N, unique)
            assert.are.equal(N, total)
            assert.is_nil(log:find("redis_error", 1, true))
            assert.are.same({ ready = 0, inflight = 0, delayed = 0, dead = 0 }, counts(server, queue))
        end
    end)

    it("hands back no task a slot still holds when a fetch fails (connections killed)", function()
        -- After a fetch whose reply is lost, the worker hands back what its in-flight list
        -- holds and it does not. Tasks in a slot's chunk, with their outcome pending, or being
        -- acknowledged are held too: handed back, they ran twice with no worker dying.
        local queue, dir, N = qname("orphans"), proc.tmpdir(), 30000
        cluster.schedule(server, queue, N, "O", "spin:300")
        local env = { BQ_TEST_CONCURRENCY = 2, BQ_TEST_LEASE = 60, BQ_TEST_BLOCK_TIMEOUT = 1 }
        local ws = { cluster.worker(server, queue, env, nil, dir), cluster.worker(server, queue, env, nil, dir) }
        local kills = 0
        for _ = 1, 12 do -- every connection but redis-cli's own, 0.3 s apart, while they drain
            proc.sleep(0.3)
            if counts(server, queue).ready == 0 then break end
            server:cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            kills = kills + 1
        end
        local drained = proc.wait_for(function()
            local c = counts(server, queue)
            return c.ready == 0 and c.inflight == 0
        end, 120, 0.2)
        for _, w in ipairs(ws) do assert.are.equal(0, proc.stop(w, 30)) end
        assert.truthy(drained)
        assert.is_true(kills >= 3, "the queue drained before the connections were killed")
        local seen, total = cluster.count(ws, "completed")
        local twice = {}
        for id, k in pairs(seen) do
            if k > 1 then twice[#twice + 1] = id end
        end
        local unique = 0
        for _ in pairs(seen) do unique = unique + 1 end
        assert.are.same({}, twice)
        assert.are.equal(N, unique)
        assert.are.equal(N, total)
        assert.are.same({ ready = 0, inflight = 0, delayed = 0, dead = 0 }, counts(server, queue))
    end)

    it("keeps a long task's lease while its worker lives", function()
        local queue = qname("long")
        local env = { BQ_TEST_LEASE = 1, BQ_TEST_CONCURRENCY = 1, BQ_TEST_BLOCK_TIMEOUT = 1 }
        local a = cluster.worker(server, queue, env)
        cluster.schedule(server, queue, 1, "L", "busy:4000") -- 4 s blocked in C: 4 leases long
        assert(proc.wait_for(function() return counts(server, queue).inflight == 1 end, 10))
        local b = cluster.worker(server, queue, env) -- a second worker that would reap it
        proc.wait_for(function() return select(2, cluster.count({ a, b }, "completed")) >= 1 end, 15)
        proc.sleep(1.5)
        local seen, total = cluster.count({ a, b }, "completed")
        assert.are.equal(0, proc.stop(a, 10))
        assert.are.equal(0, proc.stop(b, 10))
        assert.are.equal(1, total)
        assert.are.equal(1, seen["L-1"])
        assert.are.equal(0, #cluster.lines(b, "reaped"))
        assert.are.equal(1, #cluster.lines(a, "completed task_id=L%-1"))
    end)

    it("on SIGTERM finishes or hands back every task and exits 0", function()
        local queue = qname("term")
        local w = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 4 })
        cluster.schedule(server, queue, 40, "T", "sleep:300")
        proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) >= 4 end, 20)
        local rc = proc.stop(w, 30)
        assert.are.equal(0, rc)
        local first = cluster.count({ w }, "completed")
        local c = counts(server, queue)
        assert.are.equal(0, c.inflight)
        -- a second worker finishes the rest: every task exactly once overall
        local w2 = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 4 })
        proc.wait_for(function() return counts(server, queue).ready == 0 and counts(server, queue).inflight == 0 end, 30)
        proc.sleep(0.5)
        assert.are.equal(0, proc.stop(w2, 30))
        local second = cluster.count({ w2 }, "completed")
        for i = 1, 40 do
            local id = "T-" .. i
            assert.are.equal(1, (first[id] or 0) + (second[id] or 0), id)
        end
    end)

    it("interrupts handlers at the shutdown deadline and hands their tasks back", function()
        local queue = qname("deadline")
        local w = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 2, BQ_TEST_SHUTDOWN_TIMEOUT = 0.5 })
        cluster.schedule(server, queue, 2, "D", "sleep:60000")
        assert(proc.wait_for(function() return counts(server, queue).inflight == 2 end, 10))
        local t0 = proc.now()
        assert.are.equal(0, proc.stop(w, 30))
        assert.is_true(proc.now() - t0 < 10, "it did not wait for the 60 s handlers")
        local c = counts(server, queue)
        assert.are.equal(2, c.ready)
        assert.are.equal(0, c.inflight)
        assert.are.equal(1, #cluster.lines(w, "shutdown_deadline"))
    end)

    it("abandons a handler stuck in C at the deadline, handing its task back", function()
        local queue = qname("stuck")
        local w = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 1, BQ_TEST_SHUTDOWN_TIMEOUT = 0.3 })
        cluster.schedule(server, queue, 1, "S", "busy:60000")
        assert(proc.wait_for(function() return counts(server, queue).inflight == 1 end, 10))
        assert.are.equal(0, proc.stop(w, 30))
        local c = counts(server, queue)
        assert.are.equal(1, c.ready)
        assert.are.equal(0, c.inflight)
        assert.are.equal(1, #cluster.lines(w, "handlers_abandoned"))
    end)

    it("exits at once on a second signal, handing everything back", function()
        local queue = qname("twice")
        local w = cluster.worker(server, queue, { BQ_TEST_CONCURRENCY = 2, BQ_TEST_SHUTDOWN_TIMEOUT = 60 })
        cluster.schedule(server, queue, 5, "W", "busy:60000")
        assert(proc.wait_for(function() return counts(server, queue).inflight == 2 end, 10))
        proc.kill(w, "TERM")
        proc.sleep(0.3)
        proc.kill(w, "TERM")
        assert.are.equal(143, proc.wait(w, 10))
        local c = counts(server, queue)
        assert.are.equal(5, c.ready)
        assert.are.equal(0, c.inflight)
    end)

    it("retries a failing task and completes it on attempt 3", function()
        local queue = qname("retry")
        local w = cluster.worker(server, queue, { BQ_TEST_RETRY_BASE = 0.1, BQ_TEST_RETRY_CAP = 0.4 })
        cluster.schedule(server, queue, 1, "R", "flaky:3")
        assert(proc.wait_for(function() return #cluster.lines(w, "completed task_id=R%-1") == 1 end, 20))
        assert.are.equal(0, proc.stop(w, 10))
        local retries = cluster.lines(w, "retry_scheduled task_id=R%-1")
        assert.are.equal(2, #retries)
        for i, line in ipairs(retries) do
            local d = tonumber(line:match("delay_s=([%d.]+)"))
            assert.is_true(d >= 0 and d <= 0.1 * 2 ^ (i - 1), line) -- full jitter, within bounds
        end
        assert.are.equal(0, counts(server, queue).delayed)
    end)

    it("dead-letters a task that always fails, and the CLI lists, shows and requeues it", function()
        local queue = qname("dlq")
        local env = { BQ_TEST_RETRY_BASE = 0.01, BQ_TEST_MAX_ATTEMPTS = 3 }
        local w = cluster.worker(server, queue, env)
        cluster.schedule(server, queue, 1, "F", "fail")
        assert(proc.wait_for(function() return counts(server, queue).dead == 1 end, 20))
        assert.are.equal(0, proc.stop(w, 10))
        local cli_env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue }
        local rc, out = proc.run("build/binduq-lua dlq list --json", { env = cli_env })
        assert.are.equal(0, rc, out)
        local doc = require("binduq.json").decode(out)
        assert.are.equal(1, doc.total)
        local e = doc.entries[1]
        assert.are.equal("F-1", e.task_id)
        assert.are.equal(3, e.attempts)
        assert.are.equal("EHANDLER", e.error.code)
        assert.truthy(e.reason:find("failed 3 times", 1, true))
        assert.truthy(e.message:find('"task_id":"F-1"', 1, true))
        rc, out = proc.run("build/binduq-lua dlq show 0", { env = cli_env })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("task_id:   F-1", 1, true), out)
        assert.truthy(out:find("always fails", 1, true), out)
        rc, out = proc.run("build/binduq-lua dlq show 5", { env = cli_env })
        assert.are.equal(1, rc)
        assert.truthy(out:find("no dead-letter entry at index 5", 1, true), out)
        rc, out = proc.run("build/binduq-lua dlq requeue", { env = cli_env })
        assert.are.equal(2, rc)
        assert.truthy(out:find("requeue needs INDEX, --all or a filter", 1, true), out)
        rc, out = proc.run("build/binduq-lua dlq requeue --task-id F-1 --json", { env = cli_env })
        assert.are.equal(0, rc, out)
        assert.are.equal(1, require("binduq.json").decode(out).requeued)
        local c = counts(server, queue)
        assert.are.equal(0, c.dead)
        assert.are.equal(1, c.ready)
        rc, out = proc.run("build/binduq-lua dlq purge --all", { env = cli_env })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("purged 0 entries", 1, true), out)
        rc, out = proc.run("build/binduq-lua dlq list", { env = { REDIS_URL = "redis://127.0.0.1:1/0" } })
        assert.are.equal(1, rc)
        assert.truthy(out:find("ECONNREFUSED", 1, true) or out:find("Connection refused", 1, true), out)
    end)

    it("dead-letters a task that keeps killing its workers instead of retrying it forever", function()
        local queue = qname("poison")
        local env = { BQ_TEST_LEASE = 0.6, BQ_TEST_MAX_ATTEMPTS = 3, BQ_TEST_CONCURRENCY = 1,
                      BQ_TEST_BLOCK_TIMEOUT = 0.5 }
        cluster.schedule(server, queue, 1, "P", "crash")
        local procs = {}
        -- Each crash costs an attempt; a watcher reaps it after the lease. Start replacements
        -- until the task is dead-lettered (bounded).
        local watcher = cluster.worker(server, qname("idle"), env) -- only to show other queues are untouched
        local crashes = 0
        for _ = 1, 6 do
            local p = cluster.worker(server, queue, env, nil, nil, true)
            procs[#procs + 1] = p
            if proc.wait(p, 3) == 3 then crashes = crashes + 1 end
            proc.sleep(0.8) -- the crashed worker's lease runs out; the next worker reaps it
            if counts(server, queue).dead == 1 then break end
        end
        local helper = cluster.worker(server, queue, env)
        assert(proc.wait_for(function() return counts(server, queue).dead == 1 end, 20))
        assert.are.equal(0, proc.stop(helper, 10))
        assert.are.equal(0, proc.stop(watcher, 10))
        for _, p in ipairs(procs) do proc.stop(p, 5) end
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local e = s:dead_letters()[1]
        assert.truthy(e.reason:find("exceeds max_attempts 3", 1, true), e.reason)
        assert.are.equal("P-1", e.task_id)
        assert.are.equal(3, crashes)
        s:close()
    end)
end)

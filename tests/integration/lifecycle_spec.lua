-- The task lifecycle through a real redis-server and a real PostgreSQL, with workers in
-- processes of their own: completion with history and artifacts, input-required then
-- resume on another worker, cancel of running handlers at once, duplicate runs,
-- pause and resume on another worker from the checkpoint, five workers creating the schema
-- at once, a deep queue in chunks (also on a server whose commits are slow, with a task
-- PostgreSQL cannot store, with a handler's answer it cannot store, and on Bindu's tables),
-- a stop in the middle of chunks, a PostgreSQL restart mid-run, and the recovery sweep.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local cluster = require("helpers.cluster")
local bq = require("binduq")
local json = require("binduq.json")

local FIXTURE = "tests/lua/fixtures/lifecycle_worker.lua"

local function qname(tag)
    return ("it:life:%s:%d"):format(tag, math.random(1, 1e9))
end

describe("#redis #pg lifecycle", function()
    local server, db, dir
    setup(function()
        server = redis.start()
        db = pg.start()
        dir = proc.tmpdir()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        db:stop()
        bq.log_configure{ level = "info" }
    end)

    local function scheduler(queue, extra)
        local o = { scheduler = { url = server.url, queue_name = queue },
                    storage = { type = "postgres", url = db.url } }
        for k, v in pairs(extra or {}) do o.scheduler[k] = v end
        return bq.scheduler(o)
    end

    local function worker(queue, env, nowait)
        local e = { DATABASE_URL = db.url, BQ_TEST_BLOCK_TIMEOUT = 1 }
        for k, v in pairs(env or {}) do e[k] = v end
        return cluster.worker(server, queue, e, FIXTURE, dir, nowait)
    end

    local wait_state = cluster.wait_state

    -- Queues n runs of q ("<q>-<i>", the message msg(i)) from a producer that keeps no
    -- state here, 500 a call.
    local function queue_runs(q, n, msg)
        local raw = bq.scheduler{ scheduler = { url = server.url, queue_name = q }, storage = { type = "memory" } }
        local ops = {}
        for i = 1, n do ops[i] = { type = "run", task_id = q .. "-" .. i, messages = { msg(i) } } end
        for i = 1, n, 500 do assert(raw:schedule_many({ table.unpack(ops, i, math.min(i + 499, n)) })) end
        raw:close()
    end

    -- How many of the runs queue_runs queued on q are in binduq.tasks and meet SQL `cond`.
    local function count_runs(q, cond)
        return tonumber(db:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND %s"):format(q, cond))
            :match("%d+"))
    end

    -- The commits of server d's database so far; with settle, once they stop changing (a
    -- backend's statistics reach pg_stat_database at the latest when it exits).
    local function commits(d, settle)
        local function now()
            return tonumber(d:psql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                :match("%d+"))
        end
        if not settle then return now() end
        local n
        proc.wait_for(function()
            local v = now()
            local settled = v == n
            n = v
            return settled
        end, 5, 0.3)
        return n
    end

    local function worker_id(p)
        return (cluster.lines(p, "worker_started")[1] or ""):match("worker=(%S+)")
    end

    it("completes a run with history and artifacts", function()
        local q = qname("run")
        local w = worker(q)
        local s = scheduler(q)
        assert(s:run{ task_id = q .. "-1", conversation_id = "conv", messages = { "hello" } })
        assert(s:run{ task_id = q .. "-2", conversation_id = "conv", messages = { "artifact" } })
        local t = wait_state(s, q .. "-1", "completed")
        assert.are.same({ { role = "user", content = "hello" }, { role = "agent", content = "answer: hello (1)" } },
                        t.history)
        assert.are.equal(1, t.attempts)
        assert.are.equal(worker_id(w), t.worker)
        local t2 = wait_state(s, q .. "-2", "completed")
        assert.are.same({ { name = "a1", parts = { { kind = "text", text = "x" } } } }, t2.artifacts)
        assert.are.equal(2, #s:list_tasks{ context = "conv", state = "completed" })
        proc.stop(w)
        s:close()

        -- The admin commands read the same records.
        local env = { DATABASE_URL = db.url }
        local rc, out = proc.run("build/binduq-lua task show " .. q .. "-1", { env = env })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("state:       completed", 1, true), out)
        assert.truthy(out:find("agent  answer: hello (1)", 1, true), out)
        rc, out = proc.run("build/binduq-lua task show " .. q .. "-2 --json", { env = env })
        assert.are.equal(0, rc, out)
        local doc = require("binduq.json").decode(out)
        assert.are.equal("completed", doc.state)
        assert.are.equal("a1", doc.artifacts[1].name)
        local ISO = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"
        for _, k in ipairs({ "created_at", "updated_at", "state_at" }) do
            assert.truthy(type(doc[k]) == "string" and doc[k]:match(ISO), k .. ": " .. tostring(doc[k]))
        end
        local shown = doc
        rc, out = proc.run("build/binduq-lua task list --state completed --context conv --json", { env = env })
        assert.are.equal(0, rc, out)
        doc = require("binduq.json").decode(out)
        assert.are.equal(2, #doc.tasks)
        assert.are.equal(q .. "-2", doc.tasks[1].task_id) -- newest first
        -- the times as task show --json gives them: ISO 8601, UTC, the same instants
        for _, k in ipairs({ "created_at", "updated_at", "state_at" }) do
            assert.are.equal(shown[k], doc.tasks[1][k], k)
        end
        assert.truthy(out:find('"attempts":1[,}]'), out)
        rc, out = proc.run("build/binduq-lua task list --state done", { env = env })
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("unknown state 'done'", 1, true), out)
        rc, out = proc.run("build/binduq-lua task show nope-" .. q, { env = env })
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("no task nope-", 1, true), out)
        rc, out = proc.run("build/binduq-lua task list", { env = { DATABASE_URL = "postgresql://u:s3cret@127.0.0.1:1/x" } })
        assert.are.equal(1, rc, out)
        assert.falsy(out:find("s3cret", 1, true), out)
    end)

    it("task show and task list print no terminal control from a task's messages", function()
        -- A message can hold any text (PostgreSQL keeps no NUL): an OSC 52 clipboard write,
        -- a line erasure, a carriage return, a forged line, CSI as a C1 control, DEL.
        local H = "x\27]52;c;SGVsbG8=\7\27[2K\r\n fake line\xc2\x9b\127y"
        local q = qname("hostile")
        local w = worker(q)
        local s = scheduler(q)
        assert(s:run{ task_id = q .. "-1", messages = { H } })
        wait_state(s, q .. "-1", "completed")
        proc.stop(w)
        s:close()
        local env = { DATABASE_URL = db.url }
        for _, cmd in ipairs({ "task show " .. q .. "-1", "task list", "task show " .. q .. "-1 --json",
                               "task list --json" }) do
            local rc, out = proc.run("build/binduq-lua " .. cmd, { env = env })
            assert.are.equal(0, rc, out)
            assert.is_nil(out:find("[%z\1-\9\11-\31\127]"), cmd .. ": " .. out)
            assert.is_nil(out:find("\xc2[\x80-\x9f]"), cmd .. ": " .. out)
            for l in out:gmatch("[^\n]+") do assert.is_nil(l:find("^ fake line"), cmd .. ": " .. out) end
            if cmd:find("show") and cmd:find("json") then
                assert.are.equal(H, require("binduq.json").decode(out).history[1].content)
            elseif cmd:find("show") then
                assert.truthy(out:find("user   x\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K fake line\\u{9b}\\x7fy", 1, true), out)
            end
        end
    end)

    it("continues an input-required task on another worker process", function()
        local q = qname("input")
        local a = worker(q)
        local s = scheduler(q)
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "ask" } }
        local t = wait_state(s, id, "input-required")
        assert.are.equal(worker_id(a), t.worker)
        assert.are.equal("which city?", t.history[2].content)
        proc.stop(a)
        local b = worker(q)
        s:resume(id, { "Paris" })
        t = wait_state(s, id, "completed")
        assert.are.equal(worker_id(b), t.worker)
        assert.are_not.equal(worker_id(a), worker_id(b))
        assert.are.equal("answer: Paris (3)", t.history[4].content)
        assert.are.equal(2, t.attempts)
        proc.stop(b)
        s:close()
    end)

    it("cancels running handlers at once and keeps a late result out", function()
        local q = qname("cancel")
        local w = worker(q, { BQ_TEST_CONCURRENCY = 3 })
        local s = scheduler(q)
        local ids = { spin = q .. "-spin", nap = q .. "-nap", catch = q .. "-catch" }
        s:run{ task_id = ids.spin, messages = { "spin" } }
        s:run{ task_id = ids.nap, messages = { "nap:30" } }
        s:run{ task_id = ids.catch, messages = { "napcatch:30" } }
        for _, id in pairs(ids) do wait_state(s, id, "working") end
        proc.sleep(0.2)
        local report = {}
        for name, id in pairs(ids) do
            local t0 = bq.now() % 86400
            assert(s:cancel(id))
            local line
            assert(proc.wait_for(function()
                line = cluster.lines(w, " canceled task_id=" .. id:gsub("%p", "%%%0") .. " type=run")[1]
                return line ~= nil
            end, 5, 0.005), name .. " was not stopped")
            local took = cluster.stamp(line) - t0
            report[#report + 1] = ("%s %.1f ms"):format(name, took * 1000)
            -- Within 100 ms on a quiet machine (printed); a fault costs seconds (a nap of 30 s
            -- run out, a cancel noticed only by the lease's renewal), a stall of a shared
            -- machine 100 ms or more.
            assert.is_true(took < 0.5, name .. " stopped after " .. took .. " s")
            assert.are.equal("canceled", s:get_task(id).state)
        end
        print("\n# cancel to handler stop: " .. table.concat(report, ", "))
        -- The handler that caught the cancel returned a result: not stored, still canceled.
        proc.sleep(0.2)
        local t = s:get_task(ids.catch)
        assert.are.equal("canceled", t.state)
        assert.are.equal(1, #t.history)
        assert.are.equal(1, #cluster.lines(w, "late_result_ignored"))
        proc.stop(w)
        s:close()
    end)

    it("acknowledges a duplicate run of a completed task without calling the handler", function()
        local q = qname("dup")
        local w = worker(q)
        local s = scheduler(q, { dedup = false })
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "hello" } }
        wait_state(s, id, "completed")
        s:run{ task_id = id, messages = { "hello again" } }
        assert(proc.wait_for(function() return #cluster.lines(w, "skipped task_id=" .. id:gsub("%p", "%%%0")) == 1 end, 5))
        local t = s:get_task(id)
        assert.are.equal("completed", t.state)
        assert.are.equal(1, t.attempts)
        assert.are.equal(2, #t.history)
        assert.are.equal(1, #cluster.lines(w, " completed task_id="))
        proc.stop(w)
        s:close()
    end)

    it("pauses a running task and resumes it on another worker from its checkpoint", function()
        local q = qname("pause")
        local a = worker(q)
        local s = scheduler(q)
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "steps:60" } }
        wait_state(s, id, "working")
        proc.sleep(0.3)
        s:pause(id)
        local t = wait_state(s, id, "paused")
        local at = math.tointeger(t.checkpoint)
        assert.is_true(at >= 1 and at < 60, "checkpoint " .. tostring(t.checkpoint))
        proc.stop(a)
        local b = worker(q)
        s:resume(id)
        t = wait_state(s, id, "completed")
        assert.are.equal(("counted %d..60 on %s"):format(at, worker_id(b)), t.history[#t.history].content)
        proc.stop(b)
        s:close()
    end)

    -- A binduq producer's pause is applied at once (stored, published) and queued as well; the
    -- queued copy may reach a worker after the resume that answered the pause has started
    -- the task again (two handler states take the copy and the resume at once). Here the
    -- copy is held back and pushed after the resume, as that crossing delivers it: it must
    -- not pause the task again.
    it("a pause's queued copy that comes after its resume does not pause the task again", function()
        local q = qname("cross")
        local a = worker(q)
        local b
        finally(function()
            proc.stop(a)
            if b then proc.stop(b) end
        end)
        local s = scheduler(q)
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "steps:40" } }
        wait_state(s, id, "working")
        proc.sleep(0.1)
        -- What s:pause does, without queueing its copy yet.
        assert(s.store:change{ id = id, from = "working", requested = "pause-sent" })
        s.client:publish("pause", id)
        local t = wait_state(s, id, "paused")
        assert.are.equal("copy", t.requested)
        s:resume(id)
        wait_state(s, id, "working")
        server:cli("LPUSH", q, json.encode({ type = "pause", task_id = id }))
        t = wait_state(s, id, "completed")
        assert.matches("^counted %d+%.%.40 on ", t.history[#t.history].content)
        assert.are.equal(1, #cluster.lines(a, " paused task_id="))

        -- A pause of a queued task: stored at once; its copy comes after the resume.
        local id2 = q .. "-2"
        proc.stop(a)
        s:run{ task_id = id2, messages = { "steps:20" } }
        s:pause(id2)
        t = s:get_task(id2)
        assert.are.equal("paused", t.state)
        assert.are.equal("copy", t.requested)
        local copy = server:cli("LINDEX", q, "0") -- the newest: the pause's copy
        assert.matches('"type":"pause"', copy)
        assert.are.equal("1", server:cli("LREM", q, "1", copy))
        s:resume(id2)
        b = worker(q)
        wait_state(s, id2, "working")
        server:cli("LPUSH", q, copy)
        t = wait_state(s, id2, "completed")
        assert.matches("^counted 0%.%.20 on ", t.history[#t.history].content)
        proc.stop(b)
        s:close()
    end)

    it("creates the schema once when five workers start together on an empty database", function()
        local q = qname("schema")
        local schema = "fresh_" .. math.random(1, 1e9)
        local ws = {}
        for i = 1, 5 do ws[i] = worker(q, { BQ_TEST_SCHEMA = schema }, true) end
        for _, w in ipairs(ws) do
            assert(proc.wait_for(function()
                local log = proc.read(w.log) or ""
                return log:find("worker_started", 1, true) or not proc.alive(w)
            end, 20))
            assert.is_true(proc.alive(w), proc.read(w.log) or "")
            assert.are.equal(0, #cluster.lines(w, " error "))
        end
        assert.are.equal("1", db:psql(("SELECT count(*) FROM %s.schema_version"):format(schema)):match("%d+"))
        local s = bq.scheduler{ scheduler = { url = server.url, queue_name = q },
                                storage = { url = db.url, schema = schema } }
        for i = 1, 20 do s:run{ task_id = q .. "-" .. i, messages = { "hi" } } end
        assert(proc.wait_for(function() return #s:list_tasks{ state = "completed" } == 20 end, 10))
        for _, w in ipairs(ws) do proc.stop(w) end
        s:close()
    end)

    it("starts and finishes a deep queue's tasks in batches, each exactly once, with its history", function()
        local q = qname("pgbatch")
        local N = 2000
        -- queued by a producer that keeps no state here (half) and by a PostgreSQL one (half)
        local raw = bq.scheduler{ scheduler = { url = server.url, queue_name = q }, storage = { type = "memory" } }
        local s = scheduler(q)
        for i = 1, N do
            local op = { task_id = q .. "-" .. i, messages = { "hello " .. i } }
            assert((i % 2 == 0 and s or raw):run(op))
        end
        local c0 = commits(db)
        local w = worker(q, { BQ_TEST_CONCURRENCY = 1 })
        local done = proc.wait_for(function()
            return db:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND state = 'completed'"):format(q))
                :match("%d+") == tostring(N)
        end, 60, 0.2)
        assert(done, "not all completed")
        assert(proc.wait_for(function() return s:queue_length() == 0 and s:inflight_count() == 0 end, 10))
        proc.stop(w)
        local txns = commits(db, true) - c0
        -- each once: one attempt, the message and the handler's answer in its history
        local bad = db:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND (attempts <> 1"
                             .. " OR jsonb_array_length(history) <> 2 OR worker IS NULL)"):format(q))
        assert.are.equal("0", bad:match("%d+"))
        local t = s:get_task(q .. "-7")
        assert.are.equal("hello 7", t.history[1].content)
        assert.are.equal("answer: hello 7 (1)", t.history[2].content)
        -- two or three statements a task one by one (4,000-6,000 transactions); in batches of
        -- up to 64 a few hundred
        print(("\n# PostgreSQL state in batches: %d tasks, %d transactions"):format(N, txns))
        assert.is_true(txns < 1700, txns .. " transactions")
        raw:close()
        s:close()
    end)

    it("batches on a server whose every commit waits milliseconds, as on a slow disk", function()
        -- A durable server that holds each commit 3 ms before its flush (commit_delay, with
        -- commit_siblings 0 so it always applies): a task one at a time then takes two such
        -- commits. Whether handlers are quick enough to batch is judged without those writes
        -- (bq_slot_ctl.batched_wait); judged with them, a worker never batched here.
        local slow = pg.start{ durable = true, args = { "-c", "commit_delay=3000", "-c", "commit_siblings=0" } }
        local ok, err = pcall(function()
            local q = qname("pgslow")
            local N = 1500
            queue_runs(q, N, function(i) return "hi " .. i end)
            local c0 = commits(slow)
            local w = worker(q, { BQ_TEST_CONCURRENCY = 1, DATABASE_URL = slow.url })
            local function count()
                return tonumber(slow:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND state = 'completed'")
                    :format(q)):match("%d+"))
            end
            local done = proc.wait_for(function() return count() == N end, 90, 0.5)
            proc.stop(w)
            assert(done, "completed " .. tostring(count()) .. " of " .. N)
            local txns = commits(slow, true) - c0
            -- one at a time: two commits a task (3,000); in chunks: a few hundred, most of
            -- them the first tasks', before the worker has seen its handlers are quick
            print(("\n# PostgreSQL with 3 ms commits: %d tasks, %d transactions"):format(N, txns))
            assert.is_true(txns < 600, txns .. " transactions")
        end)
        slow:stop()
        assert(ok, err)
    end)

    it("a task PostgreSQL cannot store in a chunk does not fail the finished states written with its start", function()
        -- A message with U+0000, which jsonb refuses: the statement carrying the last chunk's
        -- finished states with this chunk's starts is refused, and the two are made apart,
        -- so only the starts fail (each task then starts alone). Every other task completes
        -- once: a finished state reported as not written would run its task again.
        local q = qname("pgbad")
        local N = 3000
        queue_runs(q, N, function(i) return i % 500 == 250 and "nul \0 here" or "hi " .. i end)
        local function count(cond) return count_runs(q, cond) end
        local w = worker(q, { BQ_TEST_CONCURRENCY = 1 })
        local good = N - N // 500
        local done = proc.wait_for(function() return count("state = 'completed'") >= good end, 60, 0.2)
        proc.stop(w)
        assert(done, "completed " .. tostring(count("state = 'completed'")) .. " of " .. good)
        -- only the unstorable tasks' starts failed; no finished state was reported unwritten
        local failed = cluster.lines(w, "storage_error")
        assert.is_true(#failed > 0, "no start failed: the test did not reach the refused statement")
        for _, line in ipairs(failed) do assert.falsy(line:find("op=complete", 1, true), line) end
        assert.are.equal(0, count("state = 'completed' AND (attempts <> 1 OR jsonb_array_length(history) <> 2)"))
        assert.are.equal(good, count("state = 'completed' AND history->0->>'content' LIKE 'hi %'"))
    end)

    it("a finished state PostgreSQL cannot store fails its task alone; the rest of its chunk runs once", function()
        -- A handler's answer with U+0000 (json.encode writes \u0000, which jsonb refuses): the
        -- statement with its chunk's finished states is refused, and they are made one by
        -- one, so only that task's fails. Reported as not written, the others would run again.
        local q = qname("pgbadout")
        local N = 3000
        queue_runs(q, N, function(i) return i % 500 == 250 and "nulout" or "hi " .. i end)
        local function count(cond) return count_runs(q, cond) end
        local w = worker(q, { BQ_TEST_CONCURRENCY = 1 })
        local good = N - N // 500
        local done = proc.wait_for(function() return count("state = 'completed'") >= good end, 60, 0.2)
        proc.stop(w)
        assert(done, "completed " .. tostring(count("state = 'completed'")) .. " of " .. good)
        assert.are.equal(good, count("state = 'completed' AND attempts = 1 AND history->0->>'content' LIKE 'hi %'"))
        local failed = cluster.lines(w, "storage_error")
        assert.is_true(#failed > 0, "no finished state failed: the test did not reach the refused statement")
        for _, line in ipairs(failed) do
            assert.are.equal(250, tonumber(line:match("task_id=%S+%-(%d+)")) % 500, line)
        end
    end)

    it("on Bindu's tables a start PostgreSQL refuses in a chunk fails alone; the others run once", function()
        -- Bindu's tables start a chunk's tasks one at a time; a message with U+0000 is
        -- refused. Reported as "nothing started", the tasks started before it were left
        -- working: each then found its own start refused, as a duplicate run's.
        local q = qname("pgbadbindu")
        local did = "did:bq:" .. math.random(1, 1e9)
        local schema = did:gsub(":", "_")
        local prefix = ("%08x"):format(math.random(0, 0x7fffffff))
        local N = 2000
        local raw = bq.scheduler{ scheduler = { url = server.url, queue_name = q }, storage = { type = "memory" } }
        local ops = {}
        for i = 1, N do
            ops[i] = { type = "run", task_id = ("%s-1111-4111-8111-%012d"):format(prefix, i),
                       messages = { i % 500 == 250 and "nul \0 here" or "hi " .. i } }
        end
        for i = 1, N, 500 do assert(raw:schedule_many({ table.unpack(ops, i, math.min(i + 499, N)) })) end
        raw:close()
        local function count(cond)
            return tonumber(db:psql(("SELECT count(*) FROM %s.binduq_tasks WHERE id LIKE '%s-%%' AND %s")
                :format(schema, prefix, cond)):match("%d+"))
        end
        local w = worker(q, { BQ_TEST_CONCURRENCY = 1, BINDUQ_STORAGE_LAYOUT = "bindu", POSTGRES_DID = did })
        local good = N - N // 500
        local done = proc.wait_for(function() return count("state = 'completed'") >= good end, 60, 0.2)
        proc.stop(w)
        assert(done, "completed " .. tostring(count("state = 'completed'")) .. " of " .. good
            .. ", working " .. tostring(count("state = 'working'")))
        assert.are.equal(good, count("state = 'completed' AND attempts = 1"))
        local failed = cluster.lines(w, "storage_error")
        assert.is_true(#failed > 0, "no start failed: the test did not reach the refused start")
        for _, line in ipairs(failed) do
            assert.are.equal(250, tonumber(line:match("task_id=%S+%-(%d+)")) % 500, line)
        end
    end)

    it("stops in the middle of batches without leaving a task working; another worker completes the rest", function()
        local q = qname("pgstop")
        -- Enough that the first worker is still busy when it is stopped: a worker on
        -- PostgreSQL runs about 10,000 of these a second, and a stop takes a few polls.
        local N = 20000
        queue_runs(q, N, function(i) return "hi " .. i end)
        local function count(state)
            return tonumber(db:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND state = '%s'")
                :format(q, state)):match("%d+"))
        end
        local w1 = worker(q, { BQ_TEST_CONCURRENCY = 1 })
        assert(proc.wait_for(function() return count("completed") >= 300 end, 30, 0.05))
        assert.are.equal(0, proc.stop(w1, 20))
        local first = count("completed")
        assert.is_true(first < N, "the first worker finished everything before its stop")
        local w2 = worker(q, { BQ_TEST_CONCURRENCY = 1 })
        local done = proc.wait_for(function() return count("completed") == N end, 60, 0.2)
        proc.stop(w2)
        local shown = db:psql(("SELECT state || '=' || count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' GROUP BY state")
                              :format(q))
        assert(done, "states: " .. tostring(shown))
        -- each ran once: no second attempt, one answer in its history
        local twice = db:psql(("SELECT count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' AND (attempts <> 1"
                               .. " OR jsonb_array_length(history) <> 2)"):format(q))
        assert.are.equal("0", twice:match("%d+"))
    end)

    it("carries on through a PostgreSQL restart: no task is left working", function()
        local q = qname("pgrestart")
        local w1 = worker(q, { BQ_TEST_CONCURRENCY = 4, BQ_TEST_RETRY_BASE = 0.2, BQ_TEST_MAX_ATTEMPTS = 20 })
        local w2 = worker(q, { BQ_TEST_CONCURRENCY = 4, BQ_TEST_RETRY_BASE = 0.2, BQ_TEST_MAX_ATTEMPTS = 20 })
        local s = scheduler(q)
        local N = 300
        for i = 1, N do s:run{ task_id = q .. "-" .. i, messages = { "nap:0.02" } } end
        proc.sleep(0.4)
        db:restart()
        local counts
        local done = proc.wait_for(function()
            counts = {}
            local out = db:psql(("SELECT state, count(*) FROM binduq.tasks WHERE id LIKE '%s-%%' GROUP BY state")
                                :format(q))
            for state, n in (out or ""):gmatch("([%w-]+)|(%d+)") do counts[state] = tonumber(n) end
            return counts.completed == N
        end, 60, 0.5)
        local shown = {}
        for k, v in pairs(counts or {}) do shown[#shown + 1] = k .. "=" .. v end
        assert(done, "states after the restart: " .. table.concat(shown, " "))
        print(("\n# PostgreSQL restart mid-run: %d tasks, all completed; retries %d, reconnect lines %d"):format(
            N, #cluster.lines(w1, "retry_scheduled") + #cluster.lines(w2, "retry_scheduled"),
            #cluster.lines(w1, "reconnect") + #cluster.lines(w2, "reconnect")))
        proc.stop(w1)
        proc.stop(w2)
        s:close()
    end)

    it("pushes again a submitted task that never reached the queue (recovery sweep)", function()
        local q = qname("sweep")
        local st = assert(bq.scheduler{ scheduler = { url = server.url, queue_name = q },
                                        storage = { type = "postgres", url = db.url } })
        -- A producer that died between its store and its push left this behind.
        local id = q .. "-lost"
        st:storage():create{ id = id, queue = q, history = '[{"role":"user","content":"found"}]' }
        local w = worker(q, { BQ_TEST_RECOVERY_AFTER = 1 })
        local t = wait_state(st, id, "completed", 15)
        assert.are.equal("answer: found (1)", t.history[2].content)
        -- The sweep logs after its push returns: the task may complete first.
        proc.wait_for(function() return #cluster.lines(w, "recovered_submitted") > 0 end, 5)
        assert.are.equal(1, #cluster.lines(w, "recovered_submitted"))
        proc.stop(w)
        st:close()
    end)
end)

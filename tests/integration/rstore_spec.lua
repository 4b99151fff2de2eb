-- Task state in Redis (storage = { type = "redis" }, src/storage/rstore.c) through a real
-- redis-server, the worker in a process of its own configured by STORAGE_TYPE=redis and
-- nothing else: s:get_task and s:wait in this process see the task the other one ran, with
-- its history and artifacts; the admin commands read the same; a pause keeps its checkpoint
-- for the worker that resumes it; deep queues and the recovery sweep work on it;
-- a finished task's hash carries the TTL, an open one none; every key is in the queue's slot,
-- so the same works on a Redis Cluster, for queues whose slots are on different nodes, and for
-- an ACL user limited to the queue's keys, over TLS.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local rcluster = require("helpers.rcluster")
local tls = require("helpers.tls")
local bq = require("binduq")

local FIXTURE = "tests/lua/fixtures/lifecycle_worker.lua"

local function qname(tag)
    return ("it:rstore:%s:%d"):format(tag, math.random(1, 1e9))
end

describe("#redis task state in Redis", function()
    local server, dir
    setup(function()
        server = redis.start()
        dir = proc.tmpdir()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    local function scheduler(queue, storage)
        return bq.scheduler{ scheduler = { url = server.url, queue_name = queue },
                             storage = storage or { type = "redis", ttl = 3600 } }
    end

    -- The worker: its storage is the Redis of REDIS_URL because STORAGE_TYPE says so (no
    -- DATABASE_URL: without that it would keep the state in its own memory).
    local function worker(queue)
        return cluster.worker(server, queue, { STORAGE_TYPE = "redis", BQ_TEST_BLOCK_TIMEOUT = 1 }, FIXTURE,
                              dir)
    end

    local function cli(...)
        local args = { ("redis-cli -p %d"):format(server.port) }
        for _, a in ipairs({ ... }) do args[#args + 1] = "'" .. a .. "'" end
        return (proc.sh(table.concat(args, " ")):gsub("%s+$", ""))
    end

    it("records a producer's batch of runs together, each as one run would be", function()
        local q = qname("batch")
        local s = scheduler(q)
        local ops = {}
        for i = 1, 150 do -- more than one create-N call (64 a call)
            ops[i] = { type = "run", task_id = q .. "-b" .. i, conversation_id = i % 2 == 0 and ("conv" .. i) or nil,
                       messages = { { role = "user", content = "hello \"" .. i .. "\"\n" } } }
        end
        assert.are.same({ 150, 0 }, { s:schedule_many(ops) })
        for _, i in ipairs({ 1, 64, 65, 128, 129, 150 }) do
            local t = assert(s:get_task(q .. "-b" .. i))
            assert.are.equal("submitted", t.state)
            assert.are.equal(q, t.queue)
            assert.are.same({ { role = "user", content = "hello \"" .. i .. "\"\n" } },
                            { { role = t.history[1].role, content = t.history[1].content } })
            if i % 2 == 0 then assert.are.equal("conv" .. i, t.context_id) else assert.matches("^%x+%-", t.context_id) end
        end
        -- the same batch again: nothing recorded twice, no duplicates pushed
        assert.are.same({ 0, 150 }, { s:schedule_many(ops) })
        assert.are.equal(150, tonumber(cli("LLEN", q)))
        s:close()
    end)

    it("removes the index entries of a whole batch's expired tasks as fast as batches come", function()
        local q = qname("sweep")
        local s = scheduler(q, { type = "redis", ttl = 1 })
        local function batch(round)
            local ops = {}
            for i = 1, 64 do -- one create-N call
                ops[i] = { type = "run", task_id = ("%s-%d-%d"):format(q, round, i), messages = { "x" } }
            end
            assert.are.same({ 64, 0 }, { s:schedule_many(ops) })
            for i = 1, 64 do assert(s:cancel(ops[i].task_id)) end
        end
        local k = "{" .. q .. "}:"
        for round = 1, 3 do
            batch(round)
            proc.sleep(2.2) -- the 64 hashes expire
        end
        -- a create-N call that swept 8 expired tasks left 56 of every 64 in the indexes for ever
        assert.are.equal(64, tonumber(cli("ZCARD", k .. "expiring")))
        assert.are.equal(64, tonumber(cli("ZCARD", k .. "tasks")))
        assert.are.equal(64, tonumber(cli("ZCARD", k .. "tasks:canceled")))
        s:close()
    end)
    it("shows a task another process ran: s:wait, s:get_task, history, artifacts, the TTL", function()
        local q = qname("run")
        local w = worker(q)
        finally(function() proc.stop(w) end)
        local s = scheduler(q)
        assert.are.equal("redis", s.store:kind())
        local id = q .. "-1"
        assert(s:run{ task_id = id, conversation_id = "conv", messages = { "artifact" } })
        local t = assert(s:wait(id, 10)) -- no polling: the task's events say when
        assert.are.equal("completed", t.state)
        assert.are.equal("conv", t.context_id)
        assert.are.equal(q, t.queue)
        assert.are.equal(1, t.attempts)
        assert.are.same({ role = "user", content = "artifact" }, t.history[1])
        assert.are.same({ role = "agent", content = "here it is" }, t.history[2])
        assert.are.equal(1, #t.artifacts)
        assert.are.equal("a1", t.artifacts[1].name)
        assert.is_true(t.updated_at >= t.created_at and t.state_at >= t.created_at)
        -- another scheduler (any process) reads the same record
        local s2 = scheduler(q)
        assert.are.same(t, s2:get_task(id))
        assert.are.equal(1, #s2:list_tasks{ state = "completed" })
        s2:close()
        -- the worker kept it with the default TTL (7 days); keys in the queue's slot
        local key = "{" .. q .. "}:task:" .. id
        local ttl = tonumber(cli("TTL", key))
        assert.is_true(ttl > 7 * 86400 - 60 and ttl <= 7 * 86400, "TTL " .. tostring(ttl))
        assert.are.equal(cli("CLUSTER", "KEYSLOT", q), cli("CLUSTER", "KEYSLOT", key))
        assert.are.equal("1", cli("EXISTS", "{" .. q .. "}:tasks"))
        -- s:wait on a task that settles later, in the other process
        assert(s:run{ task_id = q .. "-2", messages = { "nap:0.5" } })
        local none, _, code = s:wait(q .. "-2", 0.1)
        assert.is_nil(none)
        assert.are.equal("ETIMEDOUT", code)
        t = assert(s:wait(q .. "-2", 10))
        assert.are.equal("completed", t.state)
        assert.are.equal("late", t.history[#t.history].content)

        -- the admin commands read and change the same records (STORAGE_TYPE=redis)
        local env = { STORAGE_TYPE = "redis", REDIS_URL = server.url, REDIS_QUEUE_NAME = q }
        local rc, out = proc.run("build/binduq-lua task show " .. id .. " --json", { env = env })
        assert.are.equal(0, rc, out)
        local doc = require("binduq.json").decode(out)
        assert.are.equal("completed", doc.state)
        assert.are.equal("a1", doc.artifacts[1].name)
        rc, out = proc.run("build/binduq-lua task list --state completed --json", { env = env })
        assert.are.equal(0, rc, out)
        assert.are.equal(2, #require("binduq.json").decode(out).tasks)
        assert(s:run{ task_id = q .. "-3", messages = { "nap:30" } })
        cluster.wait_state(s, q .. "-3", "working")
        rc, out = proc.run("build/binduq-lua task cancel " .. q .. "-3", { env = env })
        assert.are.equal(0, rc, out)
        t = assert(s:wait(q .. "-3", 5))
        assert.are.equal("canceled", t.state)
        s:close()
    end)

    it("keeps a paused task's checkpoint for the worker that resumes it, and no TTL while open", function()
        local q = qname("pause")
        local a = worker(q)
        local b
        finally(function()
            proc.stop(a)
            if b then proc.stop(b) end
        end)
        local s = scheduler(q)
        local id = q .. "-1"
        assert(s:run{ task_id = id, messages = { "steps:60" } })
        cluster.wait_state(s, id, "working")
        proc.sleep(0.3)
        s:pause(id)
        local t = cluster.wait_state(s, id, "paused")
        local at = math.tointeger(t.checkpoint)
        assert.is_true(at ~= nil and at >= 1 and at < 60, "checkpoint " .. tostring(t.checkpoint))
        assert.are.equal("-1", cli("TTL", "{" .. q .. "}:task:" .. id))
        proc.stop(a)
        b = worker(q)
        s:resume(id)
        t = assert(s:wait(id, 15))
        assert.are.equal("completed", t.state)
        assert.matches(("^counted %d%%.%%.60 on "):format(at), t.history[#t.history].content)
        assert.are.equal(60, t.checkpoint)
        -- this scheduler's ttl (3600) applies to the changes it makes: a cancel of a new task
        assert(s:run{ task_id = q .. "-2", messages = { "nap:30" } })
        cluster.wait_state(s, q .. "-2", "working")
        s:cancel(q .. "-2")
        cluster.wait_state(s, q .. "-2", "canceled")
        local ttl = tonumber(cli("TTL", "{" .. q .. "}:task:" .. q .. "-2"))
        assert.is_true(ttl > 0, "TTL " .. tostring(ttl))
        s:close()
    end)

    it("runs a deep queue's chunks, recorded or not by their producer, each task exactly once", function()
        local q = qname("deep")
        local s = scheduler(q)
        local ops = {}
        for i = 1, 150 do ops[i] = { type = "run", task_id = q .. "-r" .. i, messages = { "hello" } } end
        assert(s:schedule_many(ops))
        -- a producer that records nothing (its storage is its own memory), as Bindu's
        local bare = bq.scheduler{ scheduler = { url = server.url, queue_name = q }, storage = { type = "memory" } }
        ops = {}
        for i = 1, 150 do ops[i] = { type = "run", task_id = q .. "-m" .. i, messages = { "hello" } } end
        assert(bare:schedule_many(ops))
        bare:close()
        local w = worker(q)
        finally(function() proc.stop(w) end)
        assert(proc.wait_for(function()
            return #s:list_tasks{ state = "completed", limit = 1000 } == 300
        end, 30), "not all 300 tasks completed: " .. #s:list_tasks{ state = "completed", limit = 1000 } .. " of "
            .. #s:list_tasks{ limit = 1000 } .. "; " .. tostring(proc.read(w.log)):sub(1, 3000))
        for _, id in ipairs({ q .. "-r1", q .. "-r150", q .. "-m1", q .. "-m150" }) do
            local t = s:get_task(id)
            assert.are.equal(1, t.attempts, id)
            assert.are.equal(2, #t.history, id)
            assert.are.equal("answer: hello (1)", t.history[2].content, id)
        end
        s:close()
    end)

    it("pushes again a submitted task that never reached the queue (recovery sweep)", function()
        local q = qname("sweep")
        local s = scheduler(q)
        -- A producer that died between its store and its push left this behind.
        local id = q .. "-lost"
        s:storage():create{ id = id, queue = q, history = '[{"role":"user","content":"found"}]' }
        local w = cluster.worker(server, q, { STORAGE_TYPE = "redis", BQ_TEST_BLOCK_TIMEOUT = 1,
                                              BQ_TEST_RECOVERY_AFTER = 1 }, FIXTURE, dir)
        finally(function() proc.stop(w) end)
        local t = cluster.wait_state(s, id, "completed", 15)
        assert.are.equal("answer: found (1)", t.history[2].content)
        s:close()
    end)

    it("refuses a storage with no Redis to use", function()
        local ok, err = pcall(bq.scheduler, { scheduler = { type = "memory" }, storage = { type = "redis" } })
        assert.is_false(ok)
        assert.matches("needs a Redis URL", err)
    end)
end)

describe("#redis #cluster task state in a Redis Cluster", function()
    local c, dir
    setup(function()
        bq.log_configure{ level = "off" }
        c = rcluster.start()
        dir = proc.tmpdir()
    end)
    teardown(function()
        if c then c:stop() end
        bq.log_configure{ level = "info" }
    end)

    it("keeps each queue's tasks on its slot's node, run by a worker in another process", function()
        local qa, qb
        repeat
            qa = ("rs:a:%d"):format(math.random(1, 1e9))
            qb = ("{rs:b:%d}:tasks"):format(math.random(1, 1e9))
        until c:node_of(qa) ~= c:node_of(qb)
        local sa = bq.scheduler{ scheduler = { url = c.url, queue_name = qa }, storage = { type = "redis" } }
        local sb = bq.scheduler{ scheduler = { url = c.url, queue_name = qb }, storage = { type = "redis" } }
        -- the storage's own calls, each a script on the queue's node
        local st = sb:storage()
        assert.are.same({ true, "submitted" }, { st:create{ id = "b1", history = "[1]" } })
        assert.is_true((st:change{ id = "b1", from = "submitted", to = "working", append_history = "[2]" }))
        assert.is_false((st:change{ id = "b1", from = "submitted", to = "working" }))
        assert.are.same({ 1, 2 }, sb:get_task("b1").history)
        assert.are.equal(1, #st:list{ state = "working" })
        assert.is_nil(sa:get_task("b1")) -- another queue, another set of tasks
        local node = c.nodes[c:node_of(qb)]
        assert.are.equal("1", (rcluster.cli(node.port, "EXISTS", qb .. ":task:b1"):gsub("%s+$", "")))
        -- a worker of qa in another process, its state in the cluster too
        local w = cluster.worker({ url = c.url }, qa, { STORAGE_TYPE = "redis", BQ_TEST_BLOCK_TIMEOUT = 1 },
                                 "tests/lua/fixtures/lifecycle_worker.lua", dir)
        finally(function() proc.stop(w) end)
        assert(sa:run{ task_id = "a1", messages = { "hello" } })
        local t = assert(sa:wait("a1", 15))
        assert.are.equal("completed", t.state)
        assert.are.equal("answer: hello (1)", t.history[2].content)
        node = c.nodes[c:node_of(qa)]
        assert.are.equal("1", (rcluster.cli(node.port, "EXISTS", "{" .. qa .. "}:task:a1"):gsub("%s+$", "")))
        sa:close()
        sb:close()
    end)
end)

describe("#redis #tls task state in Redis over TLS, for a user limited to the queue's keys", function()
    local server, certs, dir
    setup(function()
        bq.log_configure{ level = "off" }
        certs = tls.make(proc.tmpdir())
        server = redis.start{ tls = { cert = certs.server_cert, key = certs.server_key, ca = certs.ca } }
        dir = proc.tmpdir()
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("keeps and shares the state with the scheduler's TLS settings and user", function()
        local q = qname("acl")
        -- only the queue's keys (the storage's among them) and its control channel
        assert.are.equal("OK", (server:cli("ACL", "SETUSER", "agent", "on", ">a-pass", "~" .. q, "~{" .. q .. "}:*",
                                           "&{" .. q .. "}:control", "+@all"):gsub("%s+$", "")))
        local url = server.tls_url:gsub("^rediss://", "rediss://agent:a-pass@")
        local s = bq.scheduler{ scheduler = { url = url, queue_name = q, tls = { ca_file = certs.ca } },
                                storage = { type = "redis" } }
        local w = cluster.worker({ url = url }, q, { STORAGE_TYPE = "redis", BINDUQ_TLS_CA_FILE = certs.ca,
                                                     BQ_TEST_BLOCK_TIMEOUT = 1 }, FIXTURE, dir)
        finally(function() proc.stop(w) end)
        assert(s:run{ task_id = q .. "-1", messages = { "hello" } })
        local t = assert(s:wait(q .. "-1", 15))
        assert.are.equal("completed", t.state)
        assert.are.equal("answer: hello (1)", t.history[2].content)
        assert.are.equal(1, #s:list_tasks{ state = "completed" })
        -- the plain port sees the record: TLS changes the transport only
        assert.are.equal("completed", (server:cli("HGET", "{" .. q .. "}:task:" .. q .. "-1", "state"):gsub("%s+$", "")))
        s:close()
    end)
end)

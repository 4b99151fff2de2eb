-- binduq workers behind Bindu's own producers: operations byte for byte as Bindu's
-- RedisScheduler writes them (tests/helpers/bindu_ops.py runs Python's json.dumps) and
-- pushes them (RPUSH), through a real redis-server, with the state in a real PostgreSQL:
-- the queue taken oldest first, cancel and pause reaching handlers while every slot is busy,
-- and the messages of a run its task's pause overtook kept in its history.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local cluster = require("helpers.cluster")
local bq = require("binduq")
local json = require("binduq.json")

local FIXTURE = "tests/lua/fixtures/lifecycle_worker.lua"

local function uuid()
    return bq.uuid4 and bq.uuid4() or require("binduq.core").uuid4()
end

--- Bindu's bytes for each {op, task_id, context_id, text...}, in order.
local function bindu_ops(list)
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    for _, o in ipairs(list) do f:write(table.concat(o, "\t"), "\n") end
    f:close()
    local p = assert(io.popen("python3 tests/helpers/bindu_ops.py - < " .. proc.quote(tmp)))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    os.remove(tmp)
    assert(#out == #list, "bindu_ops.py wrote " .. #out .. " of " .. #list)
    return out
end

-- One redis-server and one PostgreSQL for every test here.
describe("#redis #pg", function()
    local server, db, dir, admin
    setup(function()
        server = redis.start()
        db = pg.start()
        dir = proc.tmpdir()
        bq.log_configure{ level = "warn" }
        admin = bq.scheduler{ url = server.url }
    end)
    teardown(function()
        admin:close()
        server:stop()
        db:stop()
        bq.log_configure{ level = "info" }
    end)

    describe("Bindu's producers", function()
        local function qname(tag)
            return ("it:bindu:%s:%d"):format(tag, math.random(1, 1e9))
        end

        --- RPUSH, as Bindu's RedisScheduler does.
        local function rpush(queue, ops)
            for _, m in ipairs(ops) do assert(admin.client:command(queue, "RPUSH", queue, m)) end
        end

        local function worker(queue, env)
            local e = { DATABASE_URL = db.url, BQ_TEST_BLOCK_TIMEOUT = 1, BINDUQ_QUEUE_ORDER = "rpush" }
            for k, v in pairs(env or {}) do e[k] = v end
            return cluster.worker(server, queue, e, FIXTURE, dir)
        end

        local function store(queue)
            return bq.scheduler{ scheduler = { url = server.url, queue_name = queue },
                                 storage = { type = "postgres", url = db.url } }
        end

        local wait_state = cluster.wait_state

        it("takes a queue Bindu's producers fill oldest first", function()
            local q = qname("fifo")
            local ids, list = {}, {}
            for i = 1, 40 do
                ids[i] = uuid()
                list[i] = { "run", ids[i], uuid(), "n" .. i }
            end
            rpush(q, bindu_ops(list))
            local w = worker(q, { BQ_TEST_CONCURRENCY = 1 })
            assert(proc.wait_for(function() return #cluster.lines(w, " completed task_id=") == 40 end, 30))
            local order = {}
            for _, line in ipairs(cluster.lines(w, " completed task_id=")) do
                order[#order + 1] = line:match("task_id=(%S+)")
            end
            proc.stop(w)
            assert.are.same(ids, order)
        end)

        it("runs a message carrying a 1.1 MB PDF, as Bindu's API queues it, with the file kept", function()
            local q = qname("pdf")
            local id = uuid()
            -- 1,100,000 bytes of file: 1,466,668 of base64, refused before as over 1 MiB.
            local op = bindu_ops({ { "run", id, uuid(), "summarise it", "@file:1100000" } })[1]
            assert.is_true(#op > 1466668, #op)
            rpush(q, { op })
            local w = worker(q)
            local s = store(q)
            local t = wait_state(s, id, "completed")
            local file = t.history[1].parts[2].file
            assert.are.equal(1466668, #file.bytes)
            assert.are.equal("application/pdf", file.mimeType)
            assert.are.equal("summarise it", t.history[1].content)
            assert.are.equal(0, s:dead_letter_count())
            proc.stop(w)
            s:close()
        end)

        -- What Bindu's own worker does with a message it pops (RedisScheduler's
        -- _deserialize_task_operation): json.loads, then operation and params.task_id.
        local function bindu_reads(raw)
            local tmp = os.tmpname()
            local f = assert(io.open(tmp, "wb"))
            f:write(raw)
            f:close()
            local p = assert(io.popen("python3 -c " .. proc.quote([[
import json, sys
data = json.loads(open(sys.argv[1], encoding="utf-8").read())
op = data.get("operation")
assert op in ("run", "cancel", "pause", "resume"), op
print(op, data.get("params", {}).get("task_id"))
]]) .. " " .. proc.quote(tmp) .. " 2>&1"))
            local out = p:read("a")
            p:close()
            os.remove(tmp)
            return out
        end

        it("queues its retries and requeued dead letters in Bindu's format, which Bindu's worker reads", function()
            local q = qname("mixed")
            local flaky, doomed = uuid(), uuid()
            local ops = bindu_ops({ { "run", flaky, uuid(), "flaky:2" }, { "run", doomed, uuid(), "fail" } })
            rpush(q, ops)
            -- test_worker: "flaky:2" fails its first attempt, "fail" every one; retries wait 30 s
            -- (exactly: the default's full jitter once drew 3 ms, and the retry ran before it
            -- was seen waiting)
            local w = cluster.worker(server, q, { BINDUQ_QUEUE_ORDER = "rpush", BQ_TEST_CONCURRENCY = 2,
                                                  BQ_TEST_MAX_ATTEMPTS = 3, BQ_TEST_RETRY_FIXED = 30 })
            local delayed = "{" .. q .. "}:delayed"
            assert(proc.wait_for(function() return tonumber(server:cli("ZCARD", delayed)) == 2 end, 10))
            proc.stop(w)
            for _, raw in ipairs(admin.client:command(q, "ZRANGE", delayed, "0", "-1")) do
                assert.truthy(raw:find(',"binduq":{', 1, true), raw)
                local read = bindu_reads(raw)
                assert.truthy(read:match("^run " .. flaky:gsub("%-", "%%-")) or read:match("^run " .. doomed:gsub("%-", "%%-")), read)
            end
            -- due now: a binduq worker still takes the embedded header (the attempt counts)
            for _, raw in ipairs(admin.client:command(q, "ZRANGE", delayed, "0", "-1")) do
                admin.client:command(q, "ZADD", delayed, "0", raw)
            end
            w = cluster.worker(server, q, { BINDUQ_QUEUE_ORDER = "rpush", BQ_TEST_CONCURRENCY = 2,
                                            BQ_TEST_MAX_ATTEMPTS = 2, BQ_TEST_RETRY_BASE = 30, BQ_TEST_RETRY_CAP = 30 })
            assert(proc.wait_for(function()
                return #cluster.lines(w, " completed task_id=" .. flaky:gsub("%p", "%%%0")) == 1
                    and #cluster.lines(w, "dead_lettered task_id=" .. doomed:gsub("%p", "%%%0")) == 1
            end, 20), proc.read(w.log))
            proc.stop(w)
            -- a dead letter requeued: the original op with the header inside
            local s = bq.scheduler{ url = server.url, queue_name = q, order = "rpush" }
            local e = assert(s:dead_letters())[1]
            assert.are.equal(ops[2], e.message) -- the original bytes, the header taken off
            assert.are.equal(1, s:requeue_dead())
            local raw = server:cli("LINDEX", q, "0")
            assert.truthy(raw:find(',"binduq":{"attempt":1,"requeued":1}}', 1, true), raw)
            assert.truthy(bindu_reads(raw):match("^run " .. doomed:gsub("%-", "%%-")))
            s:close()
        end)

        it("writes Bindu's format for Bindu's workers, key for key, and runs it too", function()
            local q = qname("produce")
            local s = bq.scheduler{ scheduler = { url = server.url, queue_name = q, format = "bindu" },
                                    storage = { type = "postgres", url = db.url } }
            local id, ctx = uuid(), uuid()
            assert(s:run{ task_id = id, conversation_id = ctx, messages = { "hello there" } })
            local bad, why = pcall(s.run, s, { task_id = uuid(), messages = { "x" }, timeout = 5 })
            assert.is_false(bad)
            assert.truthy(tostring(why):find("format \"bindu\" has no place for the field 'timeout'", 1, true), why)
            assert.are.equal(1, s:queue_length())
            local raw = server:cli("LINDEX", q, "-1") -- RPUSH, as Bindu's producers: the newest on the right
            local p = assert(io.popen("python3 -c " .. proc.quote([[
import json, sys
d = json.loads(sys.argv[1])
m = d["params"]["message"]
print(",".join(d), ",".join(d["params"]), ",".join(m), m["parts"][0]["text"], m["role"])
]]) .. " " .. proc.quote(raw)))
            local keys = p:read("a")
            p:close()
            assert.are.equal("operation,params,trace_id,span_id task_id,context_id,message "
                .. "message_id,context_id,task_id,kind,parts,role,metadata hello there user\n", keys)
            assert.truthy(bindu_reads(raw):match("^run " .. id:gsub("%-", "%%-")))
            local w = worker(q)
            local t = wait_state(s, id, "completed")
            assert.are.equal("hello there", t.history[1].content)
            assert.are.equal(ctx, t.context_id)
            proc.stop(w)
            s:close()
        end)

        it("runs Bindu's run, pause, resume of one task in order: paused, then continued", function()
            local q = qname("prr")
            local id, ctx = uuid(), uuid()
            -- Queued before any worker starts: a worker taking newest first ran the resume
            -- (unknown task), the pause, then skipped the run, and the task stayed paused.
            rpush(q, bindu_ops({ { "run", id, ctx, "steps:15" }, { "pause", id }, { "resume", id, ctx, "steps:15" } }))
            local w = worker(q, { BQ_TEST_CONCURRENCY = 1 })
            local s = store(q)
            local t = wait_state(s, id, "completed")
            local texts = {}
            for _, m in ipairs(t.history) do texts[#texts + 1] = m.content end
            assert.are.equal("steps:15", texts[1])
            assert.truthy(texts[#texts]:find("^counted %d+%.%.15 on "), texts[#texts])
            local n = 0
            for _, x in ipairs(texts) do n = n + (x == "steps:15" and 1 or 0) end
            assert.are.equal(2, n, "the run's and the resume's messages are in the history")
            proc.stop(w)
            s:close()
        end)

        it("stops busy handlers at once on Bindu's cancel, with every slot busy", function()
            local q = qname("busy")
            local w = worker(q, { BQ_TEST_CONCURRENCY = 4 })
            local s = store(q)
            local ids, list = {}, {}
            -- Naps longer than the test's own pace on a loaded machine (there, a second went by
            -- between two cancels, and a 4 s nap ended before its cancel came).
            for i = 1, 4 do
                ids[i] = uuid()
                list[i] = { "run", ids[i], uuid(), "nap:30" }
            end
            -- Twenty more runs wait behind them: the cancels queue up after those.
            local waiting = uuid()
            list[5] = { "run", waiting, uuid(), "nap:30" }
            for i = 6, 24 do list[i] = { "run", uuid(), uuid(), "nap:4" } end
            rpush(q, bindu_ops(list))
            for i = 1, 4 do wait_state(s, ids[i], "working") end
            local report = {}
            for i = 1, 4 do
                proc.sleep(0.25)
                local cancel = bindu_ops({ { "cancel", ids[i] } })
                local t0 = bq.now() % 86400
                rpush(q, cancel)
                local line
                assert(proc.wait_for(function()
                    line = cluster.lines(w, " canceled task_id=" .. ids[i]:gsub("%p", "%%%0"))[1]
                    return line ~= nil
                end, 5, 0.005), "task " .. i .. " was not stopped")
                local took = cluster.stamp(line) - t0
                report[#report + 1] = ("%.1f ms"):format(took * 1000)
                assert.is_true(took < 0.5, "stopped after " .. took .. " s") -- a fault: seconds
                assert.are.equal("canceled", wait_state(s, ids[i], "canceled").state)
            end
            print("\n# Bindu's cancel to handler stop, every slot busy: " .. table.concat(report, ", "))
            -- The runs queued before the cancels are untouched by them, and run in their turn.
            assert.are.equal("working", wait_state(s, waiting, "working").state)
            assert.are.equal(4, #cluster.lines(w, " canceled task_id="))
            proc.stop(w)
            s:close()
        end)

        it("pauses a busy handler from Bindu's pause, and a resume continues it from its checkpoint", function()
            local q = qname("bpause")
            local w = worker(q, { BQ_TEST_CONCURRENCY = 2 })
            local s = store(q)
            local a, b = uuid(), uuid()
            rpush(q, bindu_ops({ { "run", a, uuid(), "steps:100" }, { "run", b, uuid(), "nap:5" } }))
            wait_state(s, a, "working")
            wait_state(s, b, "working")
            proc.sleep(0.3)
            local pause = bindu_ops({ { "pause", a } })
            local t0 = bq.now()
            rpush(q, pause)
            local t = wait_state(s, a, "paused", 5)
            local took = bq.now() - t0
            print(("\n# Bindu's pause to paused, every slot busy: %.1f ms"):format(took * 1000))
            assert.is_true(took < 0.5, "paused after " .. took .. " s") -- a fault: seconds
            local at = math.tointeger(t.checkpoint)
            assert.is_true(at >= 1 and at < 100, "checkpoint " .. tostring(t.checkpoint))
            rpush(q, bindu_ops({ { "resume", a, uuid(), "steps:100" } }))
            t = wait_state(s, a, "completed", 15)
            assert.truthy(t.history[#t.history].content:find(("counted %d..100"):format(at), 1, true))
            proc.stop(w)
            s:close()
        end)
    end)

    describe("operations out of order", function()
        -- Every order of a task's run, pause, resume and cancel, as Bindu's producers on several
        -- processes deliver them, handled by two workers: each task ends in the state its
        -- operations mean, with every message it was sent in its history exactly once.
        --   run                        -> completed
        --   run + cancel               -> canceled (in either order)
        --   run + pause                -> paused
        --   run + pause + resume       -> completed (the resume answers the pause, whichever first)
        -- The runs nap (8 s, stopped by a pause or cancel); a resume's message says "answer".
        for _, layout in ipairs({ "binduq", "bindu" }) do
        it("ends every task in the state its operations mean, in any order, over two workers (" .. layout
           .. " tables)", function()
            local seed = os.time()
            math.randomseed(seed)
            print("\n# seed " .. seed)
            local q = ("it:bindu:any:%d"):format(math.random(1, 1e9))
            local function perms(t)
                if #t <= 1 then return { t } end
                local out = {}
                for i = 1, #t do
                    local rest = {}
                    for j = 1, #t do if j ~= i then rest[#rest + 1] = t[j] end end
                    for _, p in ipairs(perms(rest)) do
                        table.insert(p, 1, t[i])
                        out[#out + 1] = p
                    end
                end
                return out
            end
            local tasks = {}
            local function add(kind, order, want)
                tasks[#tasks + 1] = { id = uuid(), ctx = uuid(), kind = kind, order = order, want = want }
            end
            for _ = 1, 3 do add("run", { "run" }, "completed") end
            for _, o in ipairs(perms({ "run", "cancel" })) do add("cancel", o, "canceled") end
            for _, o in ipairs(perms({ "run", "pause" })) do add("pause", o, "paused") end
            for _, o in ipairs(perms({ "run", "pause", "resume" })) do add("resume", o, "completed") end
            -- Interleave the tasks' operations at random, each task's in its own order.
            local lines, next_op = {}, {}
            local left = 0
            for i, t in ipairs(tasks) do
                next_op[i] = 1
                left = left + #t.order
            end
            while left > 0 do
                local i = math.random(1, #tasks)
                local t = tasks[i]
                local op = t.order[next_op[i]]
                if op then
                    next_op[i] = next_op[i] + 1
                    left = left - 1
                    if op == "run" then
                        lines[#lines + 1] = { "run", t.id, t.ctx, t.kind == "run" and "answer" or "nap:8" }
                    elseif op == "resume" then
                        lines[#lines + 1] = { "resume", t.id, t.ctx, "answer" }
                    else
                        lines[#lines + 1] = { op, t.id }
                    end
                end
            end
            local ops = bindu_ops(lines)
            for _, m in ipairs(ops) do assert(admin.client:command(q, "RPUSH", q, m)) end
            local env = { DATABASE_URL = db.url, BQ_TEST_BLOCK_TIMEOUT = 1, BINDUQ_QUEUE_ORDER = "rpush",
                          BQ_TEST_CONCURRENCY = 3 }
            local storage = { type = "postgres", url = db.url }
            if layout == "bindu" then
                -- binduq makes Bindu's tables in the DID's schema when Bindu has not yet
                local did = ("did:bindu:any:order:%d"):format(math.random(1, 1e9))
                env.BINDUQ_STORAGE_LAYOUT, env.POSTGRES_DID = "bindu", did
                storage.layout, storage.schema = "bindu", (did:gsub(":", "_"))
            end
            local ws = { cluster.worker(server, q, env, FIXTURE, dir), cluster.worker(server, q, env, FIXTURE, dir) }
            local s = bq.scheduler{ scheduler = { url = server.url, queue_name = q }, storage = storage }
            local function settled()
                for _, t in ipairs(tasks) do
                    local r = s:get_task(t.id)
                    if not r or r.state ~= t.want then return false end
                end
                return tonumber(server:cli("LLEN", q)) == 0
            end
            proc.wait_for(settled, 40, 0.1)
            local bad = {}
            for _, t in ipairs(tasks) do
                local r = s:get_task(t.id)
                local sent = {}
                for _, o in ipairs(t.order) do if o == "run" or o == "resume" then sent[#sent + 1] = o end end
                local users = 0
                for _, m in ipairs(r and r.history or {}) do
                    if m.role == "user" then users = users + 1 end
                end
                if not r or r.state ~= t.want or users ~= #sent then
                    bad[#bad + 1] = ("%s [%s]: %s with %d of %d messages"):format(t.kind, table.concat(t.order, ","),
                        r and r.state or "unknown", users, #sent)
                    for wi, w in ipairs(ws) do
                        for _, line in ipairs(cluster.lines(w, t.id:gsub("%p", "%%%0"))) do print(("  w%d %s"):format(wi, line)) end
                    end
                end
            end
            for _, w in ipairs(ws) do proc.stop(w) end
            s:close()
            assert.are.same({}, bad)
        end)
        end
    end)

    describe("Bindu's own tables (storage layout bindu)", function()
        -- An agent's schema with Bindu's tables as its schema.py creates them in a DID schema.
        local function bindu_schema()
            local did = ("did:bindu:test:agent:%d"):format(math.random(1, 1e9))
            local schema = did:gsub(":", "_")
            local _, ok = db:psql(([[
CREATE SCHEMA "%s"; SET search_path TO "%s";
CREATE TABLE contexts (id uuid NOT NULL PRIMARY KEY, owner_did varchar(255),
  context_data jsonb NOT NULL DEFAULT '{}'::jsonb, message_history jsonb DEFAULT '[]'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE tasks (id uuid NOT NULL PRIMARY KEY,
  context_id uuid NOT NULL REFERENCES contexts (id) ON DELETE CASCADE, owner_did varchar(255),
  kind varchar(50) NOT NULL, state varchar(50) NOT NULL, state_timestamp timestamptz NOT NULL,
  history jsonb NOT NULL DEFAULT '[]'::jsonb, artifacts jsonb DEFAULT '[]'::jsonb,
  metadata jsonb DEFAULT '{}'::jsonb, created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX idx_tasks_context_id ON tasks (context_id);
CREATE INDEX idx_tasks_state ON tasks (state);]]):format(schema, schema))
            assert(ok, "could not create Bindu's tables")
            return did, schema
        end

        -- What Bindu's API does for message/send (submit_task), then its push: the run op.
        local function submit(schema, q, text)
            local id, ctx = uuid(), uuid()
            local op = bindu_ops({ { "run", id, ctx, text } })[1]
            local msg = json.encode(json.decode(op).params.message)
            local _, ok = db:psql(([[SET search_path TO "%s";
INSERT INTO contexts (id, owner_did, context_data, message_history) VALUES ('%s', 'did:caller', '{}', '[]');
INSERT INTO tasks (id, context_id, owner_did, kind, state, state_timestamp, history, artifacts, metadata)
  VALUES ('%s', '%s', 'did:caller', 'task', 'submitted', now(), jsonb_build_array('%s'::jsonb), '[]', '{}');]])
                :format(schema, ctx, id, ctx, msg:gsub("'", "''")))
            assert(ok, "submit_task failed")
            assert(admin.client:command(q, "RPUSH", q, op))
            return id, ctx
        end

        local function row(schema, id)
            local out = db:psql(([[SELECT state || '|' || jsonb_array_length(history) || '|' || history::text
  || '|' || (state_timestamp > created_at) FROM "%s".tasks WHERE id = '%s']]):format(schema, id))
            local state, n, history, moved = out:match("^([^|]*)|(%d+)|(.*)|(%a+)$")
            return { state = state, n = tonumber(n), history = history and json.decode(history), moved = moved == "true" }
        end

        local function wait_row(schema, id, state, timeout)
            local last
            assert(proc.wait_for(function()
                last = row(schema, id)
                return last.state == state
            end, timeout or 10, 0.02), ("Bindu's row of %s is %s, not %s"):format(id, tostring(last and last.state), state))
            return last
        end

        it("runs the tasks Bindu's API recorded and writes what happened into Bindu's rows", function()
            local did, schema = bindu_schema()
            local q = ("it:bindu:tables:%d"):format(math.random(1, 1e9))
            local env = { DATABASE_URL = db.url, BINDUQ_STORAGE_LAYOUT = "bindu", POSTGRES_DID = did,
                          BINDUQ_QUEUE_ORDER = "rpush", BQ_TEST_BLOCK_TIMEOUT = 1, BQ_TEST_CONCURRENCY = 2 }
            local w = cluster.worker(server, q, env, FIXTURE, dir)
            -- a run: completed, the agent's answer appended as an A2A message
            local id, ctx = submit(schema, q, "hello")
            local r = wait_row(schema, id, "completed")
            assert.are.equal(2, r.n)
            assert.is_true(r.moved, "state_timestamp kept")
            local a = r.history[2]
            assert.are.equal("agent", a.role)
            assert.are.equal("message", a.kind)
            assert.are.equal(id, a.task_id)
            assert.are.equal(ctx, a.context_id)
            assert.truthy(a.message_id and #a.message_id == 36, a.message_id)
            assert.are.same({ { kind = "text", text = "answer: hello (1)" } }, a.parts)
            assert.are.equal("hello", r.history[1].parts[1].text) -- Bindu's own message, untouched
            -- a cancel from Bindu's API (its compare-and-set, then the push) stops the running
            -- handler, and the late result never overwrites it
            local nap = submit(schema, q, "nap:30")
            wait_row(schema, nap, "working")
            proc.sleep(0.2)
            local _, ok = db:psql(([[UPDATE "%s".tasks SET state = 'canceled', state_timestamp = now()
  WHERE id = '%s' AND state = 'working']]):format(schema, nap))
            assert(ok)
            assert(admin.client:command(q, "RPUSH", q, bindu_ops({ { "cancel", nap } })[1]))
            assert(proc.wait_for(function()
                return #cluster.lines(w, " canceled task_id=" .. nap:gsub("%p", "%%%0")) > 0
            end, 5), proc.read(w.log))
            proc.sleep(0.3)
            assert.are.equal("canceled", row(schema, nap).state)
            -- pause and resume: Bindu's name for paused is suspended
            -- 200 steps of 20 ms: longer than this test's pace on a loaded machine (a 60-step
            -- run once ended before the pause was pushed)
            local steps = submit(schema, q, "steps:200")
            wait_row(schema, steps, "working")
            proc.sleep(0.3)
            assert(admin.client:command(q, "RPUSH", q, bindu_ops({ { "pause", steps } })[1]))
            wait_row(schema, steps, "suspended")
            assert(admin.client:command(q, "RPUSH", q, bindu_ops({ { "resume", steps, uuid(), "steps:200" } })[1]))
            r = wait_row(schema, steps, "completed", 30)
            assert.truthy(r.history[#r.history].parts[1].text:find("^counted %d+%.%.200"), r.history[#r.history].parts[1].text)
            -- binduq's own view of the same task
            local s = bq.scheduler{ scheduler = { url = server.url, queue_name = q },
                                    storage = { type = "postgres", url = db.url, layout = "bindu", schema = schema } }
            local t = s:get_task(id)
            assert.are.equal("completed", t.state)
            assert.are.equal("hello", t.history[1].content)
            assert.are.equal(1, t.attempts)
            s:close()
            proc.stop(w)
        end)
    end)
end)

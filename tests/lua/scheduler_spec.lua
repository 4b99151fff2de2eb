-- The producer API on the in-memory scheduler, configuration precedence and URL errors.

local bq = require("binduq")
local core = require("binduq.core")

local seq = 0
local function fresh_queue()
    seq = seq + 1
    return ("spec:sched:%d:%d"):format(os.time(), seq)
end

describe("scheduler (memory)", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("schedules the four operations", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        assert.are.equal("memory", s.backend)
        local ok, status = s:run{ task_id = "a", messages = { "hi" } }
        assert.is_true(ok)
        assert.are.equal("scheduled", status)
        assert.is_true((s:pause("a")))
        assert.is_true((s:resume("a", { "more" })))
        assert.is_true((s:cancel("a")))
        assert.are.equal(4, s:queue_length())
        s:close()
    end)

    it("schedules a batch in order and validates all of it first", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        local ops = {}
        for i = 1, 50 do ops[i] = { type = "run", task_id = "b" .. i, messages = { "m" } } end
        assert.are.equal(50, s:schedule_many(ops))
        ops[51] = { type = "run", messages = { "no id" } }
        local ok, err = pcall(s.schedule_many, s, ops)
        assert.is_false(ok)
        assert.truthy(err:find("operation 51: task_id is required", 1, true), err)
        assert.are.equal(50, s:queue_length())
        s:close()
    end)

    it("shares queues between schedulers of one process", function()
        local q = fresh_queue()
        local a = bq.scheduler{ type = "memory", queue_name = q }
        local b = bq.scheduler{ queue_name = q, type = "memory" }
        a:run{ task_id = "x", messages = { "m" } }
        assert.are.equal(1, b:queue_length())
        a:close()
        b:close()
    end)

    it("reports health", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        s:run{ task_id = "x", messages = { "m" } }
        local h = s:health_check()
        assert.is_true(h.ok)
        assert.are.equal("memory", h.backend)
        assert.are.equal(1, h.queue_length)
        assert.are.equal(0, h.rtt)
        s:close()
    end)

    it("raises on use after close", function()
        local s = bq.scheduler{ type = "memory" }
        s:close()
        s:close() -- idempotent
        assert.has_error(function() s:queue_length() end, "attempt to use a closed scheduler")
    end)

    it("accepts a whole Bindu agent config", function()
        local s = bq.scheduler{
            author = "me@example.com", name = "agent", deployment = { url = "http://localhost:3773" },
            scheduler = { type = "memory", queue_name = "bindu:tasks", max_connections = 5 },
            storage = { type = "memory" },
        }
        assert.are.equal("bindu:tasks", s.queue_name)
        s:close()
    end)
end)

describe("a producer on the in-memory scheduler", function()
    local proc = require("helpers.proc")
    -- Runs `code` in binduq-lua with no Redis; returns its exit status and output.
    local function script(code)
        local dir = proc.tmpdir()
        proc.write(dir .. "/p.lua", 'local bq = require("binduq")\n' .. code)
        local cmd = ("cd %s && env -u REDIS_URL -u SCHEDULER_TYPE -u DATABASE_URL %s/build/binduq-lua p.lua")
                    :format(proc.quote(dir), proc.sh("pwd"))
        local rc, out = proc.run("sh -c " .. proc.quote(cmd), { timeout = 30 })
        proc.sh("rm -rf " .. proc.quote(dir))
        return rc, out
    end

    it("warns once that no worker of this process takes what it schedules", function()
        local rc, out = script([[
local s = bq.scheduler{}
assert(s:run{ task_id = "a", messages = { "x" } })
assert(s:schedule_many{ { type = "run", task_id = "b", messages = { "y" } } })
assert(bq.scheduler{ queue_name = "other" }:run{ task_id = "c", messages = { "z" } })
]])
        assert.are.equal(0, rc, out)
        local n = 0
        for line in out:gmatch("[^\n]+") do
            if line:find(" warn memory_scheduler_no_worker ", 1, true) then
                n = n + 1
                assert.truthy(line:find("queue=bindu:tasks", 1, true), line)
                assert.truthy(line:find("lost when it exits", 1, true), line)
                assert.truthy(line:find("REDIS_URL", 1, true), line)
            end
        end
        assert.are.equal(1, n, out)
    end)

    it("says nothing once a worker of this process has started", function()
        local rc, out = script([[
local w = bq.worker{ handlers = { run = function() return "ok" end } }
w:start()
assert(w:schedule{ type = "run", task_id = "a", messages = { "x" } })
assert(bq.scheduler{}:run{ task_id = "b", messages = { "x" } })
local st = w:drain()
assert(st.completed == 2, st.completed)
]])
        assert.are.equal(0, rc, out)
        assert.falsy(out:find("memory_scheduler_no_worker", 1, true), out)
    end)
end)

describe("the producer's fast path (core.prepare_runs)", function()
    local task = require("binduq.task")
    local json = require("binduq.json")
    local st
    before_each(function()
        core.storage_reset()
        st = core.storage{ type = "memory" }
    end)
    after_each(function() st:close(); core.storage_reset() end)

    local function without_generated(t)
        t.conversation_id, t.timestamp = nil, nil
        return t
    end

    it("writes what task.encode writes, and records each run as submitted", function()
        local ops = {
            { type = "run", task_id = "f1", messages = { "hi" } },
            { type = "run", task_id = "f2", conversation_id = "c\"2", timestamp = "2026-01-01T00:00:00Z",
              messages = { "a\nb\t\"q\" \\ /", { role = "agent", content = "h\xc3\xa9 \xe2\x82\xac" }, "\1\31" } },
            { type = "run", task_id = "f3 \xc3\xa9", messages = { ("x"):rep(1000), "" } },
        }
        local batch = core.prepare_runs(st, ops, "q:fast")
        assert.are.equal(3, #batch)
        local msgs, ids, keys = {}, {}, {}
        for i = 1, #batch do msgs[i], ids[i], keys[i] = batch:get(i) end
        assert.is_nil(batch:get(4))
        assert.are.same({ "f1", "f2", "f3 \xc3\xa9" }, ids)
        assert.are.same({ "run:f1", "run:f2", "run:f3 \xc3\xa9" }, keys)
        for i, op in ipairs(ops) do
            local got, want = json.raw_decode(msgs[i]), json.raw_decode((task.encode(op)))
            local rec = st:get(op.task_id)
            assert.are.equal("submitted", rec.state)
            assert.are.equal("q:fast", rec.queue)
            assert.are.equal(got.conversation_id, rec.context_id)
            assert.are.same(got.messages, json.raw_decode(rec.history))
            if op.conversation_id then
                assert.are.same(want, got)
            else
                assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", got.conversation_id)
                assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", got.timestamp)
                assert.are.same(without_generated(want), without_generated(got))
            end
        end
        -- Field order as task.encode's (type first: a reader may peek at it).
        assert.matches('^{"type":"run","task_id":"f2","conversation_id":"c\\"2","messages":%[', msgs[2])
        assert.matches(',"artifacts":%[%],"timestamp":"2026%-01%-01T00:00:00Z"}$', msgs[2])
    end)

    it("declines, before storing anything, every operation the general path must see", function()
        local with_mt = setmetatable({ type = "run", task_id = "m", messages = { "x" } }, {})
        local others = {
            { type = "run", task_id = "x", messages = { "m" }, metadata = { a = 1 } },
            { type = "run", task_id = "x", messages = { "m" }, timeout = 5 },
            { type = "run", task_id = "x", messages = { "m" }, extra = true },
            { type = "cancel", task_id = "x" },
            { type = "run", task_id = "x", messages = { { role = "user", content = "m", name = "n" } } },
            { type = "run", task_id = "x", messages = { { role = "", content = "m" } } },
            { type = "run", task_id = "x", messages = { { role = "user" } } },
            { type = "run", task_id = "x", messages = { "\xff" } },
            { type = "run", task_id = "x", messages = {} },
            { type = "run", task_id = "x", messages = "m" },
            { type = "run", task_id = "x", messages = setmetatable({ "m" }, {}) },
            { type = "run", task_id = "x", conversation_id = json.null, messages = { "m" } },
            { type = "run", task_id = "x", timestamp = 5, messages = { "m" } },
            { type = "run", task_id = "", messages = { "m" } },
            { type = "run", task_id = ("i"):rep(257), messages = { "m" } },
            { type = "run", task_id = "a\0b", messages = { "m" } },
            { type = "run", task_id = "a\nb", messages = { "m" } },
            { type = "run", task_id = "a\u{85}", messages = { "m" } },
            { type = "run", task_id = "a", conversation_id = "\127", messages = { "m" } },
            { type = "run", task_id = 7, messages = { "m" } },
            { type = "run", messages = { "m" } },
            { task_id = "x", messages = { "m" } },
            with_mt,
            "run",
        }
        for i, op in ipairs(others) do
            local ops = { { type = "run", task_id = "first", messages = { "m" } }, op }
            assert.is_false(core.prepare_runs(st, ops, "q"), "case " .. i)
            assert.is_false(st:get("first"), "case " .. i)
        end
        assert.is_false(core.prepare_runs(st, setmetatable({}, {}), "q"))
        assert.are.equal(0, #core.prepare_runs(st, {}, "q"))
    end)

    it("leaves the errors to task.lua: the scheduler's texts are unchanged", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        local ops = { { type = "run", task_id = "ok", messages = { "m" } },
                      { type = "run", task_id = ("i"):rep(257), messages = { "m" } } }
        local ok, err = pcall(s.schedule_many, s, ops)
        assert.is_false(ok)
        assert.truthy(err:find("operation 2: task_id is longer than 256 bytes", 1, true), err)
        ok, err = pcall(s.schedule, s, { type = "run", task_id = "x", messages = { "m" }, extra = 1 })
        assert.is_false(ok)
        assert.truthy(err:find("unknown field 'extra' in task operation", 1, true), err)
        ok, err = pcall(s.schedule_many, s, { ops[1], { type = "run", task_id = "a\27[2Kb", messages = { "m" } } })
        assert.is_false(ok)
        assert.truthy(err:find("operation 2: task_id contains a control character (U+001B at byte 1)", 1, true), err)
        assert.are.equal(0, s:queue_length())
        assert.is_nil(s:get_task("ok"))
        -- The general path too checks every operation before it records any.
        ops[1].metadata = { general = true }
        ok, err = pcall(s.schedule_many, s, ops)
        assert.is_false(ok)
        assert.truthy(err:find("operation 2: task_id is longer than 256 bytes", 1, true), err)
        assert.is_nil(s:get_task("ok"))
        s:close()
    end)

    it("deduplicates runs as the general path does", function()
        local s = bq.scheduler{ type = "memory", queue_name = fresh_queue() }
        local run = { type = "run", task_id = "d1", messages = { "m" } }
        assert.are.same({ true, "scheduled" }, { s:schedule(run) })
        assert.are.same({ true, "duplicate" }, { s:schedule(run) })
        assert.are.same({ 1, 2 }, { s:schedule_many{ run, { type = "run", task_id = "d2", messages = { "m" } }, run } })
        assert.are.equal(2, s:queue_length())
        assert.are.equal(2, s.stats.scheduled)
        assert.are.equal(3, s.stats.deduplicated)
        assert.are.equal("submitted", s:get_task("d2").state)
        s:close()
    end)
end)

describe("configuration", function()
    before_each(function() require("binduq.core").storage_reset() end) -- task state is per process
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)
    it("rejects a malformed URL naming the part and hiding the password", function()
        local ok, err = pcall(bq.scheduler, { url = "redis://:hunter2@localhost:99999/0" })
        assert.is_false(ok)
        assert.truthy(err:find("bad port '99999'", 1, true), err)
        assert.truthy(err:find("scheduler.url", 1, true), err)
        assert.falsy(err:find("hunter2", 1, true))
    end)

    it("names where a database URL of an unsupported scheme came from, and the schemes", function()
        local proc = require("helpers.proc")
        local SUPPORTED = "unsupported scheme 'mysql' (supported: postgresql://, postgres:// or postgresql+driver://"
        local cases = {
            { "DATABASE_URL=mysql://u:hunter2@h/db",
              "build/binduq-lua -e 'require(\"binduq\").scheduler{type=\"memory\"}'", "storage: DATABASE_URL: " },
            { "POSTGRES_URL=mysql://u:hunter2@h/db", "build/binduq-lua task list", "binduq-lua task: POSTGRES_URL: " },
            { "DATABASE_URL=mysql://u:hunter2@h/db", "build/binduq-lua task list", "binduq-lua task: DATABASE_URL: " },
            { "", "build/binduq-lua task list --database-url mysql://u:hunter2@h/db",
              "binduq-lua task: --database-url: " },
        }
        for _, c in ipairs(cases) do
            local rc, out = proc.run("env -u DATABASE_URL -u POSTGRES_URL -u STORAGE_TYPE " .. c[1] .. " " .. c[2],
                                     { timeout = 30 })
            assert.are.equal(1, rc, out)
            assert.truthy(out:find(c[3] .. SUPPORTED, 1, true), out)
            assert.falsy(out:find("hunter2", 1, true), out)
        end
        local ok, err = pcall(bq.scheduler, { scheduler = { type = "memory" },
                                              storage = { type = "postgres", url = "mysql://u:hunter2@h/db" } })
        assert.is_false(ok)
        assert.truthy(err:find("storage: storage.url: " .. SUPPORTED, 1, true), err)
    end)

    it("rejects unknown keys and wrong types", function()
        local ok, err = pcall(bq.scheduler, { queue = "x" })
        assert.is_false(ok)
        assert.truthy(err:find("unknown scheduler key 'queue'", 1, true), err)
        ok, err = pcall(bq.scheduler, { max_connections = "ten" })
        assert.is_false(ok)
        assert.truthy(err:find("max_connections", 1, true), err)
    end)

    it("redacts URLs it reports", function()
        local s = bq.scheduler{ url = "redis://bob:s3cret@127.0.0.1:1/2" }
        assert.are.equal("redis://bob:***@127.0.0.1:1/2", s.url)
        assert.are.equal("redis", s.backend)
        assert.falsy(tostring(s):find("s3cret", 1, true))
        -- Nothing listens on port 1: a clear error, no hang, no password.
        local ok, err, code = s:run{ task_id = "x", messages = { "m" } }
        assert.is_nil(ok)
        assert.are.equal("ECONNREFUSED", code)
        assert.falsy(err:find("s3cret", 1, true))
        local h = s:health_check()
        assert.is_false(h.ok)
        assert.are.equal("ECONNREFUSED", h.code)
        s:close()
    end)

    it("parses URLs for tools without exposing the password", function()
        local u = assert(core.parse_url("redis://alice:pw@h:7000/3"))
        assert.are.equal("alice", u.user)
        assert.is_true(u.has_password)
        assert.is_nil(u.password)
        assert.are.equal(3, u.db)
        assert.are.equal(7000, u.hosts[1].port)
        local none, msg, code = core.parse_url("redis://h:x")
        assert.is_nil(none)
        assert.are.equal("EINVAL", code)
        assert.truthy(msg:find("bad port 'x'", 1, true))
    end)

    it("exposes the defaults", function()
        local d = bq.defaults()
        assert.are.equal("bindu:tasks", d.queue_name)
        assert.are.equal(10, d.max_connections)
        assert.are.equal(32 * 1024 * 1024, d.max_message_size)
        assert.are.equal(1, d.concurrency)
    end)
end)

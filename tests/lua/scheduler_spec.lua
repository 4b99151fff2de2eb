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
        assert.are.equal(1048576, d.max_message_size)
        assert.are.equal(1, d.concurrency)
    end)
end)

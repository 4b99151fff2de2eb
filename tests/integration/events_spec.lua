-- Task events (docs/events.md) through a real redis-server, the worker in a process of its
-- own: the stream {Q}:events tells a follower in another process what happened to each task,
-- in order per task; s:wait returns a task that settles elsewhere without polling; a follower
-- resumes from where it was; hostile stream contents are skipped and a broken stream key
-- does not stop a worker; events = false writes nothing.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local bq = require("binduq")

local WORKER = "build/binduq-lua tests/integration/fixtures/events_worker.lua"

local function qname(tag)
    return ("it:events:%s:%d"):format(tag, math.random(1, 1e9))
end

local function start_worker(server, queue)
    return proc.spawn(WORKER, { env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue,
                                        BINDUQ_LOG_LEVEL = "info" } })
end

-- The events of the follower f until `done(seen)` or `timeout`, by task id: { [id] = {event, ...} }.
local function collect(f, done, timeout)
    local by, all = {}, {}
    local until_ = bq.monotonic() + timeout
    while bq.monotonic() < until_ do
        local ev, err, code = f:next(0.2)
        if ev then
            by[ev.task_id] = by[ev.task_id] or {}
            table.insert(by[ev.task_id], ev.event)
            all[#all + 1] = ev
            if done(by) then break end
        else
            assert.are.equal("ETIMEDOUT", code, err)
        end
    end
    return by, all
end

local function msg(text) return { { role = "user", content = text } } end

-- A task's events with its producer's "scheduled" first: that one is written by another
-- process than the worker's, so it may come before or after the worker's first ones.
local function scheduled_first(evs)
    local out, seen = { "scheduled" }, 0
    for _, e in ipairs(evs or {}) do
        if e == "scheduled" then seen = seen + 1 else out[#out + 1] = e end
    end
    if seen ~= 1 then out[1] = ("scheduled x%d"):format(seen) end
    return out
end

describe("#redis task events", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("tell a follower in another process what happened to each task, in order per task", function()
        local queue = qname("order")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local f = assert(s:events{ since = "now" })
        local w = start_worker(server, queue)
        finally(function() proc.stop(w, 10) end) -- also when an assertion fails
        for i = 1, 20 do assert(s:run{ task_id = "ok-" .. i, messages = msg("ok") }) end
        assert(s:run{ task_id = "bad", messages = msg("fail") })
        assert(s:run{ task_id = "ask", messages = msg("ask") })
        local by = collect(f, function(b)
            local n = 0
            for i = 1, 20 do if b["ok-" .. i] and #b["ok-" .. i] == 4 then n = n + 1 end end
            return n == 20 and b.bad and b.bad[#b.bad] == "dead-lettered" and b.ask and #b.ask == 3
        end, 15)
        for i = 1, 20 do
            assert.are.same({ "scheduled", "started", "progress", "completed" }, scheduled_first(by["ok-" .. i]),
                            "ok-" .. i)
        end
        assert.are.same({ "scheduled", "started", "retried", "started", "dead-lettered" }, scheduled_first(by.bad))
        assert.are.same({ "scheduled", "started", "input-required" }, scheduled_first(by.ask))
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("carry the fields a follower needs", function()
        local queue = qname("fields")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local f = assert(s:events{ since = "now", task_id = "t1" })
        local w = start_worker(server, queue)
        finally(function() proc.stop(w, 10) end) -- also when an assertion fails
        assert(s:run{ task_id = "t1", messages = msg("ok") })
        local _, all = collect(f, function(b) return b.t1 and #b.t1 == 4 end, 10)
        local by = {}
        for _, ev in ipairs(all) do by[ev.event] = ev end
        assert.are.equal("submitted", by.scheduled.state)
        assert.are.equal("working", by.started.state)
        assert.are.equal(1, by.started.attempt)
        assert.truthy(by.started.worker)
        assert.are.equal(0.5, by.progress.progress)
        assert.are.equal("half way", by.progress.message)
        assert.are.equal("completed", by.completed.state)
        assert.is_true(math.abs(by.completed.at - bq.now()) < 10)
        assert.are.equal(queue, by.completed.queue)
        assert.matches("^%d+%-%d+$", by.completed.id)
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("s:wait returns a task that settles in another process, and times out on one that does not", function()
        local queue = qname("wait")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = start_worker(server, queue)
        finally(function() proc.stop(w, 10) end) -- also when an assertion fails
        assert(s:run{ task_id = "w1", messages = msg("ok") })
        local t0 = bq.monotonic()
        local t = assert(s:wait("w1", 10))
        assert.are.equal("completed", t.state)
        assert.is_true(bq.monotonic() - t0 < 5)
        -- one already settled: at once
        t = assert(s:wait("w1", 0))
        assert.are.equal("completed", t.state)
        assert(s:run{ task_id = "w2", messages = msg("slow") })
        t0 = bq.monotonic()
        local none, err, code = s:wait("w2", 0.5)
        assert.is_nil(none)
        assert.are.equal("ETIMEDOUT", code, err)
        assert.is_true(bq.monotonic() - t0 >= 0.45)
        assert(s:cancel("w2"))
        t = assert(s:wait("w2", 10))
        assert.are.equal("canceled", t.state)
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("s:wait returns a task another process scheduled and that settled before the call", function()
        local queue = qname("waitlate")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = start_worker(server, queue)
        finally(function() proc.stop(w, 10) end)
        -- pushed as is: this process' (memory) storage never records it, as another
        -- producer's task; its "scheduled" event comes after the worker's
        local encode = require("binduq.task").encode
        assert(s:push_raw((encode{ type = "run", task_id = "late1", messages = msg("ok") })))
        assert.truthy(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("completed task_id=late1", 1, true)
        end, 10), "the task did not complete")
        s.client:feed_add(queue, '[{"event":"scheduled","task_id":"late1","state":"submitted"}]')
        local t0 = bq.monotonic()
        local t = assert(s:wait("late1", 3))
        assert.are.equal("completed", t.state)
        assert.is_true(bq.monotonic() - t0 < 1)
        -- settled once, then resumed: the latest state is not settled, so it waits
        s.client:feed_add(queue, '[{"event":"started","task_id":"late1","state":"working"}]')
        local none, err, code = s:wait("late1", 0.3)
        assert.is_nil(none)
        assert.are.equal("ETIMEDOUT", code, err)
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("let a follower resume from where it was, and read everything kept from 0", function()
        local queue = qname("resume")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local function add(...)
            local evs = {}
            for _, id in ipairs({ ... }) do evs[#evs + 1] = ('{"event":"scheduled","task_id":"%s"}'):format(id) end
            assert(s.client:feed_add(queue, "[" .. table.concat(evs, ",") .. "]"))
        end
        for i = 1, 5 do add("r" .. i) end -- an entry each
        local f = assert(s:events{ since = "0" })
        local got = {}
        for _ = 1, 2 do got[#got + 1] = assert(f:next(1)).task_id end
        local g = assert(s:events{ since = f.last })
        for i = 6, 8 do add("r" .. i) end
        local function drain(follower)
            while true do
                local ev = follower:next(0.3)
                if not ev then return end
                got[#got + 1] = ev.task_id
            end
        end
        drain(g)
        assert.are.same({ "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8" }, got)
        -- Half way through an entry, f.last stays before it: a follower resumed there sees
        -- the whole entry again (at-least-once), and misses nothing after it.
        add("m1", "m2", "m3")
        add("m4")
        local h = assert(s:events{ since = g.last })
        assert.are.equal("m1", assert(h:next(1)).task_id)
        got = {}
        drain(assert(s:events{ since = h.last }))
        assert.are.same({ "m1", "m2", "m3", "m4" }, got)
        -- the producer's own events arrive too (written by its poster after the pushes)
        for i = 1, 3 do assert(s:run{ task_id = "p" .. i, messages = msg("ok") }) end
        got = {}
        drain(assert(s:events{ since = g.last, task_id = "p3" }))
        assert.are.same({ "p3" }, got)
        local none, err = s:events{ since = "yesterday" }
        assert.is_nil(none)
        assert.matches("since must be", err)
        s:close()
    end)

    it("skip what someone else wrote into the stream, and a broken stream key stops no worker", function()
        local queue = qname("hostile")
        local key = "{" .. queue .. "}:events"
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local f = assert(s:events{ since = "now" })
        server:cli("XADD", key, "*", "e", "not json")
        server:cli("XADD", key, "*", "e", '{"an":"object"}')
        server:cli("XADD", key, "*", "x", "no e field")
        server:cli("XADD", key, "*", "e", '[1, "two", {"event":3}, {"task_id":"h0","event":"completed"}]')
        local ev = assert(f:next(1))
        assert.are.same({ "h0", "completed" }, { ev.task_id, ev.event })
        assert.is_nil(f:next(0.1))
        -- the key becomes a string: XADD is refused; tasks still complete
        server:cli("DEL", key)
        server:cli("SET", key, "garbage")
        local w = start_worker(server, queue)
        finally(function() proc.stop(w, 10) end) -- also when an assertion fails
        for i = 1, 3 do assert(s:run{ task_id = "h" .. i, messages = msg("ok") }) end
        assert.truthy(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("completed task_id=h3", 1, true)
        end, 10), "the tasks did not complete")
        local _, err, code = s:events{ since = "now" }
        assert.truthy(err and code, "reading a string key as a stream must fail clearly")
        assert.are.equal(0, proc.stop(w, 10))
        assert.truthy((proc.read(w.log) or ""):find("events_refused", 1, true))
        s:close()
    end)

    it("are not written with events = false, and the stream stays near its cap", function()
        local queue = qname("off")
        local key = "{" .. queue .. "}:events"
        local s = bq.scheduler{ url = server.url, queue_name = queue, events = false }
        for i = 1, 5 do assert(s:run{ task_id = "o" .. i, messages = msg("ok") }) end
        assert.are.equal("0", server:cli("EXISTS", key):match("%d+"))
        local none, err = s:events{}
        assert.is_nil(none)
        assert.matches("events = false", err)
        s:close()
        -- (entries written one by one: a producer's own events are batched by its poster)
        local capped = bq.scheduler{ url = server.url, queue_name = queue, events = 100 }
        for i = 1, 1000 do
            assert(capped.client:feed_add(queue, ('[{"event":"scheduled","task_id":"c%d"}]'):format(i)))
        end
        local len = tonumber(server:cli("XLEN", key):match("%d+"))
        assert.is_true(len >= 100 and len < 300, "XLEN " .. len)
        capped:close()
    end)
end)

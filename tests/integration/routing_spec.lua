-- Priority routing, distributed rate limiting and deduplication through a real redis-server.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local bq = require("binduq")

local function tag()
    return ("{it%d}"):format(math.random(1, 1e9))
end

describe("#redis routing", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    local function fill(t, per_level, text)
        local s = bq.scheduler{ url = server.url, queue_name = t .. ":normal",
                                levels = { high = t .. ":high", normal = t .. ":normal", low = t .. ":low" },
                                route = function(op) return op.metadata.level end }
        local batch = {}
        for i = 1, per_level do
            for _, level in ipairs({ "low", "normal", "high" }) do
                batch[#batch + 1] = { type = "run", task_id = level .. i, messages = { text or "x" },
                                      metadata = { level = level } }
            end
            if #batch >= 900 then assert(s:schedule_many(batch)); batch = {} end
        end
        if #batch > 0 then assert(s:schedule_many(batch)) end
        s:close()
    end

    local function handled_levels(p)
        local out = {}
        for _, line in ipairs(cluster.lines(p, " handled ")) do
            out[#out + 1] = line:match("qn=%S+:(%a+)")
        end
        return out
    end

    it("takes strictly by level with one worker of concurrency 1", function()
        local t = tag()
        fill(t, 200)
        local w = cluster.worker(server, t .. ":high", {
            BQ_TEST_QUEUES = t .. ":high," .. t .. ":normal," .. t .. ":low" }, "tests/integration/fixtures/priority_worker.lua")
        assert(proc.wait_for(function() return #handled_levels(w) == 600 end, 60))
        assert.are.equal(0, proc.stop(w, 10))
        local order = handled_levels(w)
        for i = 1, 200 do assert.are.equal("high", order[i], i) end
        for i = 201, 400 do assert.are.equal("normal", order[i], i) end
        for i = 401, 600 do assert.are.equal("low", order[i], i) end
    end)

    it("takes by weight 6:3:1 within 5% over 10,000 tasks", function()
        local t = tag()
        fill(t, 10000)
        local w = cluster.worker(server, t .. ":high", {
            BQ_TEST_QUEUES = t .. ":high," .. t .. ":normal," .. t .. ":low", BQ_TEST_WEIGHTS = "6,3,1",
            BQ_TEST_CONCURRENCY = 4 }, "tests/integration/fixtures/priority_worker.lua")
        assert(proc.wait_for(function() return #handled_levels(w) >= 10000 end, 120))
        assert.are.equal(0, proc.stop(w, 10))
        local seen = { high = 0, normal = 0, low = 0 }
        local order = handled_levels(w)
        for i = 1, 10000 do seen[order[i]] = seen[order[i]] + 1 end
        print(("\n# weighted 6:3:1 over 10,000: high %d, normal %d, low %d"):format(seen.high, seen.normal, seen.low))
        assert.is_true(math.abs(seen.high - 6000) <= 300, seen.high)
        assert.is_true(math.abs(seen.normal - 3000) <= 150, seen.normal)
        assert.is_true(math.abs(seen.low - 1000) <= 50, seen.low)
    end)

    it("limits one key to 50 per second across 4 worker processes, not slowing another key", function()
        local q = "it:rate:" .. math.random(1, 1e9)
        local env = { BQ_TEST_QUEUES = q, BQ_TEST_RATE = "50/1", BQ_TEST_CONCURRENCY = 4 }
        local ws = {}
        for i = 1, 4 do ws[i] = cluster.worker(server, q, env, "tests/integration/fixtures/priority_worker.lua") end
        cluster.schedule(server, q, 800, "A", "key:a")
        cluster.schedule(server, q, 100, "B", "key:b")
        proc.sleep(11.5)
        for _, w in ipairs(ws) do assert.are.equal(0, proc.stop(w, 20)) end
        local a, b = {}, {}
        for _, w in ipairs(ws) do
            for _, line in ipairs(cluster.lines(w, " handled ")) do
                local at = tonumber(line:match(" at=([%d.]+)"))
                local id = line:match("task_id=(%S+)")
                if id:sub(1, 2) == "A-" then a[#a + 1] = at else b[#b + 1] = cluster.stamp(line) end
            end
        end
        table.sort(a)
        -- any window of one second holds at most 50 admissions
        for i = 51, #a do assert.is_true(a[i] - a[i - 50] >= 1.0, ("%d admissions within %.3f s"):format(51, a[i] - a[i - 50])) end
        -- 10 s from the first admission: within 2% of 500
        local in10 = 0
        for _, t in ipairs(a) do if t < a[1] + 10 then in10 = in10 + 1 end end
        print(("\n# rate limit 50/s, 4 workers x 4: %d admissions in the first 10 s; key b: %d tasks in %.2f s")
            :format(in10, #b, (math.max(table.unpack(b)) - math.min(table.unpack(b)))))
        assert.is_true(math.abs(in10 - 500) <= 10, in10 .. " admissions in 10 s")
        assert.are.equal(100, #b)
        assert.is_true(math.max(table.unpack(b)) - math.min(table.unpack(b)) < 2.0, "key b was slowed")
        -- nothing lost: the rest of key a waits in the queue or the delayed set
        local s = bq.scheduler{ url = server.url, queue_name = q }
        local left = s:queue_length() + s:delayed_count() + s:inflight_count()
        assert.are.equal(800 - #a, left)
        s:close()
    end)

    it("admits a deep queue in batches, one script call for many tasks, and exactly", function()
        local q = "it:ratebatch:" .. math.random(1, 1e9)
        -- 2,000 quick tasks: 1,200 on key a (limit 1,000 a minute) and 800 on key c, one worker
        cluster.schedule(server, q, 1200, "A", "key:a")
        cluster.schedule(server, q, 800, "C", "key:c")
        local function evalsha_calls()
            return tonumber(server:cli("INFO", "commandstats"):match("cmdstat_evalsha:calls=(%d+)")) or 0
        end
        local before = evalsha_calls()
        local w = cluster.worker(server, q, { BQ_TEST_QUEUES = q, BQ_TEST_RATE = "1000/60" },
                                 "tests/integration/fixtures/priority_worker.lua")
        local s = bq.scheduler{ url = server.url, queue_name = q }
        assert(proc.wait_for(function() return s:queue_length() == 0 and s:inflight_count() == 0 end, 60))
        assert.are.equal(0, proc.stop(w, 20))
        local a, c = 0, 0
        for _, line in ipairs(cluster.lines(w, " handled ")) do
            local id = line:match("task_id=(%S+)")
            if id:sub(1, 2) == "A-" then a = a + 1 else c = c + 1 end
        end
        -- exactly the limit on key a; the rest of it waits a minute in the delayed set
        assert.are.equal(1000, a)
        assert.are.equal(800, c)
        assert.are.equal(200, s:delayed_count())
        -- fetches, acks and admissions: far fewer script calls than tasks (a call a task
        -- before batches: 2,000, and 200 more deferrals); each deferral is one (retry-3)
        local calls = evalsha_calls() - before
        print(("\n# rate-limited admissions in batches: 2,000 tasks, 200 deferred, %d script calls"):format(calls))
        assert.is_true(calls < 700, calls .. " script calls")
        s:close()
    end)

    it("pushes a batch routed in turn over three queues with a push per queue, each queue in order", function()
        local t = tag()
        local qs = { t .. ":a", t .. ":b", t .. ":c" }
        local s = bq.scheduler{ url = server.url, queue_name = qs[1], dedup = false,
                                route = function(op) return op.metadata.q end }
        local batch = {}
        for i = 1, 300 do
            batch[#batch + 1] = { type = "run", task_id = "t" .. i, messages = { "m" .. i },
                                  metadata = { q = qs[i % 3 + 1] } }
        end
        server:cli("CONFIG", "RESETSTAT")
        assert.are.equal(300, (s:schedule_many(batch)))
        local pushes = tonumber(server:cli("INFO", "commandstats"):match("cmdstat_lpush:calls=(%d+)"))
        -- one LPUSH of messages a queue, and one ringing each queue's bell: 6, where a push an
        -- operation made 600
        assert.are.equal(6, pushes)
        for k, q in ipairs(qs) do
            assert.are.equal("100", server:cli("LLEN", q))
            local ids = {}
            for line in server:cli("LRANGE", q, 0, -1):gmatch("[^\n]+") do
                ids[#ids + 1] = line:match('"task_id":"(t%d+)"')
            end
            -- LPUSH: the oldest at the tail
            for j = 1, 100 do
                assert.are.equal("t" .. (3 * (100 - j) + (k == 1 and 3 or k - 1)), ids[j])
            end
        end
        -- a queue's operations of different kinds keep their order: a run deduplicated, its
        -- pause and resume not
        local s2 = bq.scheduler{ url = server.url, queue_name = qs[1],
                                 route = function(op) return op.metadata.q end }
        assert(s2:schedule_many{
            { type = "run", task_id = "x1", messages = { "go" }, metadata = { q = qs[2] } },
            { type = "run", task_id = "y1", messages = { "go" }, metadata = { q = qs[3] } },
            { type = "pause", task_id = "x1", metadata = { q = qs[2] } },
            { type = "run", task_id = "y2", messages = { "go" }, metadata = { q = qs[3] } },
            { type = "resume", task_id = "x1", metadata = { q = qs[2] } },
        })
        local order = {}
        for line in server:cli("LRANGE", qs[2], 0, 2):gmatch("[^\n]+") do
            order[#order + 1] = line:match('"type":"(%a+)"')
        end
        assert.are.same({ "resume", "pause", "run" }, order)
        s:close()
        s2:close()
    end)

    it("pushes a long list in pieces, in order, each operation decided once", function()
        local core = require("binduq.core")
        local t = tag()
        local function ids_of(q)
            local ids = {}
            for line in server:cli("LRANGE", q, 0, -1):gmatch("[^\n]+") do
                table.insert(ids, 1, line:match('"task_id":"(t%d+)"')) -- LPUSH: oldest last
            end
            return ids
        end
        local function stat(name)
            return tonumber(server:cli("INFO", "commandstats"):match("cmdstat_" .. name .. ":calls=(%d+)")) or 0
        end
        -- 1,000 runs; 701..800 repeat the ids of 101..200, in a later piece than theirs
        local batch, want = {}, {}
        for i = 1, 1000 do
            local id = "t" .. ((i > 700 and i <= 800) and i - 600 or i)
            batch[i] = { type = "run", task_id = id, messages = { "m" .. i } }
            if not (i > 700 and i <= 800) then want[#want + 1] = id end
        end
        local s = bq.scheduler{ url = server.url, queue_name = t .. ":d" }
        local follower = assert(s:events{ since = "now" })
        server:cli("CONFIG", "RESETSTAT")
        local sent, dups = s:schedule_many(batch)
        assert.are.same({ 900, 100 }, { sent, dups })
        assert.are.same({ 900, 100 }, { s.stats.scheduled, s.stats.deduplicated })
        -- one "scheduled" event a pushed run, in order, none for a duplicate (posted by
        -- core.push_runs piece by piece)
        local seen = {}
        local deadline = bq.monotonic() + 10
        while #seen < 900 and bq.monotonic() < deadline do
            local ev = follower:next(0.2)
            if ev then
                assert.are.same({ "scheduled", "submitted" }, { ev.event, ev.state })
                assert.truthy(tostring(ev.at):match("^%d+%.%d%d%d$") or type(ev.at) == "number")
                seen[#seen + 1] = ev.task_id
            end
        end
        assert.is_nil(follower:next(0.3)) -- and no more
        assert.are.same(want, seen)
        -- three pieces (334, 333, 333), each its own transaction
        assert.are.same({ 3, 3 }, { stat("multi"), stat("exec") })
        assert.are.same(want, ids_of(t .. ":d"))
        -- without deduplication: one LPUSH of messages and one of the bell a piece
        local p = bq.scheduler{ url = server.url, queue_name = t .. ":p", dedup = false }
        server:cli("CONFIG", "RESETSTAT")
        assert.are.same({ 1000, 0 }, { p:schedule_many(batch) })
        assert.are.equal(6, stat("lpush"))
        local all = {}
        for i = 1, 1000 do all[i] = batch[i].task_id end
        assert.are.same(all, ids_of(t .. ":p"))
        -- a retry goes on from the first operation not decided: only 501..1000, pushed[] set
        -- for them alone
        local pushed = {}
        assert.are.same({ 500, 0 }, { core.push_runs(p.store, p.client, batch, t .. ":r", nil, pushed, 501) })
        assert.is_nil(pushed[500])
        assert.is_true(pushed[501] and pushed[1000])
        local rest = {}
        for i = 501, 1000 do rest[#rest + 1] = batch[i].task_id end
        assert.are.same(rest, ids_of(t .. ":r"))
        -- a queue that is not a list: refused in the first piece, nothing decided or counted
        server:cli("SET", t .. ":w", "a string")
        local w = bq.scheduler{ url = server.url, queue_name = t .. ":w" }
        local ok, err = w:schedule_many(batch)
        assert.is_nil(ok)
        assert.truthy(err:find("WRONGTYPE", 1, true), err)
        assert.are.same({ 0, 0 }, { w.stats.scheduled, w.stats.deduplicated })
        s:close()
        p:close()
        w:close()
    end)

    it("decides a push whole: a bell not a list, a dedup_ttl out of range, a piece the ACL denies", function()
        local t = tag()
        -- dedup-N (100 in a MULTI), enqueue-N (10) and the plain push (100): the operations
        -- are queued and reported pushed; a retry of a deduplicated batch finds them taken
        for _, case in ipairs({ { 100, true }, { 10, true }, { 100, false } }) do
            local q = ("%s:bell%d%s"):format(t, case[1], tostring(case[2]))
            server:cli("SET", "{" .. q .. "}:bell", "not a list")
            local batch = {}
            for i = 1, case[1] do batch[i] = { type = "run", task_id = q .. "-" .. i, messages = { "m" } } end
            local s = bq.scheduler{ url = server.url, queue_name = q, dedup = case[2] }
            assert.are.same({ case[1], 0 }, { s:schedule_many(batch) })
            assert.are.equal(tostring(case[1]), server:cli("LLEN", q))
            assert.are.equal("not a list", server:cli("GET", "{" .. q .. "}:bell"))
            if case[2] then
                server:cli("DEL", "{" .. q .. "}:bell")
                assert.are.same({ 0, case[1] }, { s:schedule_many(batch) })
                assert.are.equal(tostring(case[1]), server:cli("LLEN", q))
            end
            s:close()
        end
        -- a ttl past 365 days is refused before anything is sent (it was pushed, then its
        -- SET ... EX refused, in a batch of 64 or more)
        for _, ttl in ipairs({ 1e16, 1e300, 0, -1 }) do
            local ok, err = pcall(bq.scheduler, { url = server.url, queue_name = t .. ":ttl", dedup_ttl = ttl })
            assert.is_false(ok)
            assert.truthy(err:find("dedup_ttl", 1, true), err)
        end
        local s = bq.scheduler{ url = server.url, queue_name = t .. ":ttl" }
        local ok, err = pcall(s.client.push_unique, s.client, { "m" }, { "k" }, 1e16)
        assert.is_false(ok)
        assert.truthy(err:find("push_unique: the ttl is longer than 365 days", 1, true), err)
        assert.are.equal("0", server:cli("LLEN", t .. ":ttl"))
        s:close()
        -- without MULTI (an ACL), a piece of 511 is one enqueue-N call: refused whole (the
        -- keys of its last 11 denied), nothing queued, nothing counted (it was two calls, the
        -- first 500 queued but reported undecided)
        local q = ("itacl%d"):format(math.random(1, 1e9)) -- no hash tag: the keys as the ACL names them
        server:cli("ACL", "SETUSER", "nomulti", "on", ">pw", "resetkeys", "~" .. q, "~{" .. q .. "}:bell",
                   "~{" .. q .. "}:events", "~{" .. q .. "}:dedup:run:a-*", "&*", "+@all", "-multi")
        local a = bq.scheduler{ url = server.url:gsub("^redis://", "redis://nomulti:pw@"), queue_name = q }
        local batch = {}
        for i = 1, 511 do batch[i] = { type = "run", task_id = (i <= 500 and "a-" or "b-") .. i, messages = { "m" } } end
        local ok2, err2, code2 = a:schedule_many(batch)
        assert.is_nil(ok2)
        assert.are.equal("EAUTH", code2, tostring(err2))
        assert.are.same({ 0, 0 }, { a.stats.scheduled, a.stats.deduplicated })
        assert.are.equal("0", server:cli("LLEN", q))
        a:close()
        server:cli("ACL", "DELUSER", "nomulti")
    end)

    it("pushes each task_id once when 8 producers schedule the same 1,000 at once", function()
        local q = "it:dedup:" .. math.random(1, 1e9)
        local env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q }
        local ps = {}
        for i = 1, 8 do
            ps[i] = proc.spawn("build/binduq-lua tests/integration/fixtures/dedup_producer.lua 1000 D 2", { env = env })
        end
        local sent, dups = 0, 0
        for _, p in ipairs(ps) do
            assert.are.equal(0, proc.wait(p, 60))
            local s1, d1 = proc.read(p.log):match("sent (%d+) duplicates (%d+)")
            sent, dups = sent + tonumber(s1), dups + tonumber(d1)
        end
        assert.are.equal(1000, sent)
        assert.are.equal(7000, dups)
        assert.are.equal("1000", server:cli("LLEN", q))
        -- after the TTL (2 s) the same ids may be scheduled again
        proc.sleep(2.2)
        local rc, out = proc.run("build/binduq-lua tests/integration/fixtures/dedup_producer.lua 1000 D 2", { env = env })
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("sent 1000 duplicates 0", 1, true), out)
    end)
end)

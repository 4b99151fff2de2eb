-- Recurring schedules (docs/recurring.md) through a real redis-server, each worker a process
-- of its own: four workers share an every-second schedule and each tick runs once, also
-- after two of them are killed (SIGKILL, by PID) midway; the missed-tick policies after a
-- downtime; pause, resume and remove through binduq-lua, for every worker at once.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local bq = require("binduq")
local json = require("binduq.json")

local WORKER = "build/binduq-lua tests/integration/fixtures/recurring_worker.lua"

local function qname(tag)
    return ("it:rec:%s:%d"):format(tag, math.random(1, 1e9))
end

local function start_worker(server, queue, env)
    local e = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "warn" }
    for k, v in pairs(env or {}) do e[k] = v end
    return proc.spawn(WORKER, { env = e })
end

-- The runs the workers printed: { [tick] = {attempt, ...} }, and the ticks in order.
local function runs_of(workers, name)
    local by, ticks = {}, {}
    for _, w in ipairs(workers) do
        for id, attempt in (proc.read(w.log) or ""):gmatch("RAN (%S+) (%d+) [%d.]+\n") do
            local tick = tonumber(id:match("^" .. (name or "tick") .. ":(%d+)$"))
            if tick then
                if not by[tick] then ticks[#ticks + 1] = tick end
                by[tick] = by[tick] or {}
                table.insert(by[tick], tonumber(attempt))
            end
        end
    end
    table.sort(ticks)
    return by, ticks
end

local function cli(server, args)
    return proc.run("build/binduq-lua " .. args, { env = { REDIS_URL = server.url }, timeout = 30 })
end

describe("#redis recurring schedules", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("fire each tick once across four workers, two of them killed midway", function()
        local queue = qname("four")
        local workers = {}
        for i = 1, 4 do workers[i] = start_worker(server, queue, { REC_LEASE = "1" }) end
        proc.sleep(4)
        local killed_at = os.time()
        proc.kill(workers[1], "KILL")
        proc.kill(workers[2], "KILL")
        assert.truthy(proc.wait(workers[1], 5))
        assert.truthy(proc.wait(workers[2], 5))
        proc.sleep(5)
        local stop_at = os.time()
        for i = 3, 4 do assert.are.equal(0, proc.stop(workers[i], 10)) end
        local by, ticks = runs_of(workers)
        -- Every tick from the first to the one before the survivors stopped ran, and none of
        -- them ran twice as a first attempt (a second fire would be one); a run a killed
        -- worker held comes back as a redelivery (attempt 2), which is not a second fire.
        assert.truthy(#ticks >= 7, "ticks: " .. #ticks)
        local first = ticks[1]
        local seen_after_kill = 0
        for t = first, stop_at - 2 do
            local list = by[t]
            assert.truthy(list, "tick " .. t .. " did not run")
            local firsts = 0
            for _, a in ipairs(list) do if a == 1 then firsts = firsts + 1 end end
            assert.truthy(firsts <= 1, ("tick %d fired %d times"):format(t, firsts))
            if t > killed_at + 1 then seen_after_kill = seen_after_kill + 1 end
        end
        assert.truthy(seen_after_kill >= 2, "ticks after the kill: " .. seen_after_kill)
        -- The last tick claimed is in Redis, for all of them.
        local last = tonumber(server:cli("HGET", "{" .. queue .. "}:cron", "tick"))
        assert.truthy(last and last >= ticks[#ticks])
    end)

    -- A downtime: the schedule "0 * * * * *" (each minute at :00) last fired five minutes
    -- ago. Its workers all stopped; one starts again at least 7 s into a minute (so the
    -- minute's own tick is late too, and the next is 5 s or more away).
    -- Returns the ticks that ran (up to the minute's own: a later one would be on time).
    local function after_downtime(policy, max_missed, expect)
        while os.time() % 60 < 7 or os.time() % 60 > 52 do proc.sleep(0.5) end
        local queue = qname(policy)
        local m0 = os.time() // 60 * 60
        server:cli("HSET", "{" .. queue .. "}:cron", "tick", tostring(m0 - 300))
        local w = start_worker(server, queue, { REC_CRON = "0 * * * * *", REC_MISSED = policy,
                                                REC_MAX_MISSED = tostring(max_missed or 100) })
        local function ran()
            local out = {}
            for _, t in ipairs(select(2, runs_of({ w }))) do if t <= m0 then out[#out + 1] = t end end
            return out
        end
        -- Started and caught up (or, expecting none, given the time to do wrong), then a
        -- little longer for any run too many.
        if expect > 0 then proc.wait_for(function() return #ran() >= expect end, 7) else proc.sleep(3) end
        proc.sleep(0.5)
        assert.are.equal(0, proc.stop(w, 10))
        return ran(), m0
    end

    it("skip the ticks missed while every worker was down (missed = \"skip\")", function()
        local ticks = after_downtime("skip", nil, 0)
        assert.are.same({}, ticks)
    end)

    it("run the latest missed tick once (missed = \"once\")", function()
        local ticks, m0 = after_downtime("once", nil, 1)
        assert.are.same({ m0 }, ticks)
    end)

    it("run the missed ticks, at most max_missed of them (missed = \"all\")", function()
        local ticks, m0 = after_downtime("all", 3, 3)
        assert.are.same({ m0 - 120, m0 - 60, m0 }, ticks)
        ticks, m0 = after_downtime("all", 100, 5)
        assert.are.same({ m0 - 240, m0 - 180, m0 - 120, m0 - 60, m0 }, ticks)
    end)

    it("are paused, resumed, listed and removed for every worker through binduq-lua", function()
        local queue = qname("cli")
        local workers = { start_worker(server, queue), start_worker(server, queue) }
        assert.truthy(proc.wait_for(function() return #select(2, runs_of(workers)) >= 2 end, 10))
        local rc, out = cli(server, "schedules list --json --queue " .. queue)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.equal("tick", doc.schedules[1].name)
        assert.are.equal("active", doc.schedules[1].state)
        assert.are.equal(1, doc.schedules[1].every)
        rc, out = cli(server, "schedules pause tick --queue " .. queue)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("paused schedule 'tick'", 1, true), out)
        -- A tick already claimed (at most LEAD = 1 s ahead) may still run; none after it.
        proc.sleep(1.5)
        local _, before = runs_of(workers)
        proc.sleep(2.5)
        local _, after = runs_of(workers)
        assert.are.equal(#before, #after)
        rc, out = cli(server, "schedules list --queue " .. queue)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("tick%s+every 1s%s+paused"), out)
        rc, out = cli(server, "schedules resume tick --json --queue " .. queue)
        assert.are.equal(0, rc, out)
        assert.are.equal("active", json.decode(out).state)
        assert.truthy(proc.wait_for(function() return #select(2, runs_of(workers)) >= #after + 2 end, 10))
        rc, out = cli(server, "schedules remove tick --queue " .. queue)
        assert.are.equal(0, rc, out)
        proc.sleep(1.5)
        local _, removed = runs_of(workers)
        proc.sleep(2.5)
        assert.are.equal(#removed, #select(2, runs_of(workers)))
        rc, out = cli(server, "schedules list --json --queue " .. queue)
        assert.are.equal(0, rc, out)
        assert.are.equal("removed", json.decode(out).schedules[1].state)
        -- Unknown schedule: 1; a usage error: 2.
        rc, out = cli(server, "schedules pause nosuch --queue " .. queue)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("no schedule 'nosuch'", 1, true), out)
        rc = cli(server, "schedules pause --queue " .. queue)
        assert.are.equal(2, rc)
        rc = cli(server, "schedules frob --queue " .. queue)
        assert.are.equal(2, rc)
        for _, w in ipairs(workers) do assert.are.equal(0, proc.stop(w, 10)) end
    end)
end)

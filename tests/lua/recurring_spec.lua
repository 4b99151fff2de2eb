-- Recurring schedules (binduq.recurring, docs/recurring.md) without Redis: the declarations a
-- worker refuses, the ticks of intervals and cron expressions, the missed-tick policies, and
-- a worker on the in-memory scheduler firing its schedule in its own process.

local bq = require("binduq")
local core = require("binduq.core")
local recurring = require("binduq.recurring")

local fixture = "tests/lua/fixtures/memory_worker.lua"

local seq = 0
local function fresh(tag)
    seq = seq + 1
    return ("%s%d%d"):format(tag, os.time() % 100000, seq)
end

local function refused(list, says)
    local ok, err = pcall(recurring.check, list)
    assert.is_false(ok)
    assert.truthy(tostring(err):find(says, 1, true), tostring(err))
end

describe("recurring schedules", function()
    setup(function() bq.log_configure{ level = "off" } end)
    before_each(function() core.storage_reset() end)
    teardown(function() bq.log_configure{ level = "info" } end)

    it("refuse a bad declaration, naming the schedule and the field", function()
        local op = { messages = { "x" } }
        refused({ { name = "a b", every = 1, op = op } }, "schedules[1].name must be")
        refused({ { name = "a", op = op } }, "schedule 'a' needs one of cron and every")
        refused({ { name = "a", every = 1, cron = "* * * * * *", op = op } }, "needs one of cron and every")
        refused({ { name = "a", every = 0.5, op = op } }, "every must be a whole number")
        refused({ { name = "a", every = 5, tz = "UTC", op = op } }, "tz is for cron schedules")
        refused({ { name = "a", cron = "61 * * * * *", op = op } }, "the second field '61' is out of range")
        refused({ { name = "a", cron = "* * * * * *", tz = "Nowhere/Land", op = op } }, "tzdata")
        refused({ { name = "a", cron = "@daily 0 12 * * *", op = op } }, "nothing may follow @daily")
        refused({ { name = "a", every = 1, op = op, missed = "some" } }, 'missed must be "skip", "once" or "all"')
        refused({ { name = "a", every = 1, op = op, max_missed = 0 } }, "max_missed must be")
        refused({ { name = "a", every = 1, op = op, jitter = -1 } }, "jitter")
        refused({ { name = "a", every = 1, op = { messages = { "x" }, task_id = "t" } } }, "must not set task_id")
        refused({ { name = "a", every = 1, op = { type = "cancel" } } }, 'op.type must be "run"')
        refused({ { name = "a", every = 1, op = {} } }, "op:")
        refused({ { name = "a", every = 1, op = op }, { name = "a", every = 2, op = op } }, "declared twice")
        refused({ { name = "a", every = 1, op = op, evry = 2 } }, "evry")
        local ok, err = pcall(dofile(fixture), { schedules = { { name = "bad", every = 0, op = op } } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("every must be", 1, true), tostring(err))
    end)

    it("take any number as the time a cron tick comes after", function()
        local c = core.cron("0 0 0 1 1 *")
        assert.are.equal(0, c:next(-0.5)) -- after -0.5 s comes 1970-01-01 00:00:00
        assert.are.equal(31536000, c:next(0.5))
        assert.is_nil(c:next(math.huge))
        assert.is_nil(c:next(-math.huge))
        assert.is_nil(c:next(math.maxinteger))
        assert.is_nil(c:next(1e300))
        assert.has_error(function() c:next(0 / 0) end)
        assert.has_error(function() c:offset(0 / 0) end)
    end)

    it("count interval ticks from the epoch and cron ticks in their zone", function()
        local s = recurring.check({ { name = "i", every = 30, op = { messages = { "x" } } },
                                    { name = "c", cron = "0 0 9 * * MON-FRI", tz = "Europe/Berlin",
                                      op = { messages = { "x" } } } })
        assert.are.equal(60, recurring.next_after(s[1], 59))
        assert.are.equal(90, recurring.next_after(s[1], 60))
        -- Friday 2026-12-04 12:00 UTC -> Monday 2026-12-07 09:00 CET = 08:00 UTC.
        assert.are.equal(1796601600 + 8 * 3600, recurring.next_after(s[2], 1796385600))
    end)

    -- A schedule whose last claimed tick was 30 s ago (every second): now is T + 0.5, so the
    -- ticks T-29 .. T-5 are missed and T-4 .. T+1 are due (T+1 claimed ahead); what the policy
    -- adds is counted in the queue.
    local function after_gap(missed, max_missed)
        local q = "spec:rec:" .. fresh("q")
        local s = bq.scheduler{ type = "memory", queue_name = q }
        local list = recurring.check({ { name = fresh(missed), every = 1, missed = missed, max_missed = max_missed,
                                         op = { messages = { "x" } } } })
        local f = recurring.new(s, list)
        local t = math.floor(core.now())
        f:start(t + 0.5)
        list[1].cursor = t - 30
        local fired = f:fire(t + 0.5)
        local queued = s:queue_length() + s:delayed_count()
        s:close()
        return fired, queued
    end

    it("apply the missed-tick policy: skip, once, all up to max_missed", function()
        assert.are.same({ 6, 6 }, { after_gap("skip") })
        assert.are.same({ 7, 7 }, { after_gap("once") })
        assert.are.same({ 9, 9 }, { after_gap("all", 3) })
        assert.are.same({ 31, 31 }, { after_gap("all", 100) })
    end)

    it("delay each run by at most its jitter, a missed one from now", function()
        local ops = {}
        local fake = { backend = "memory", schedule = function(_, op)
            ops[#ops + 1] = op
            return true, "scheduled"
        end }
        local list = recurring.check({ { name = "j", every = 1, missed = "all", max_missed = 3, jitter = 0.25,
                                         op = { messages = { "x" } } } })
        local f = recurring.new(fake, list)
        local t = math.floor(core.now())
        f:start(t + 0.5)
        list[1].cursor = t - 30
        assert.are.equal(9, f:fire(t + 0.5))
        local spread = false
        for i, op in ipairs(ops) do
            local tick = tonumber(op.task_id:match("^j:(%d+)$"))
            local base = i <= 3 and t + 0.5 or tick -- the missed ones run from now
            assert.truthy(op.run_at >= base and op.run_at < base + 0.25, op.task_id .. " at " .. op.run_at)
            spread = spread or op.run_at > base
        end
        assert.is_true(spread)
        assert.are.same({ "j:" .. (t - 7), "j:" .. (t - 6), "j:" .. (t - 5) },
                        { ops[1].task_id, ops[2].task_id, ops[3].task_id })
    end)

    it("go on when Redis cannot be reached: declared and claimed again a second later", function()
        local s = bq.scheduler{ url = "redis://127.0.0.1:1/0", queue_name = "spec:rec:down" }
        local list = recurring.check({ { name = "down", every = 1, op = { messages = { "x" } } } })
        local f = recurring.new(s, list)
        local t = math.floor(core.now())
        f:start(t + 0.5)
        assert.is_false(list[1].declared)
        assert.are.equal(t, list[1].cursor)
        assert.are.equal(0, f:fire(t + 0.5))
        assert.are.equal(t + 1.5, list[1].retry_at)
        assert.are.equal(0.5, f:due_in(t + 1))
        s:close()
    end)

    it("fire in the worker's own process on the in-memory scheduler, each tick once", function()
        local name = fresh("m")
        local seen = {}
        local w = dofile(fixture){ queue = "spec:rec:" .. name, concurrency = 2,
                                   schedules = { { name = name, every = 1, op = { messages = { "echo tick" } } } },
                                   on_result = function(r) seen[#seen + 1] = r.task_id end }
        w:start()
        local deadline = core.monotonic() + 10
        while #seen < 3 and core.monotonic() < deadline do assert(w:poll(0.5) ~= false) end
        w:close()
        assert.truthy(#seen >= 3, "runs: " .. #seen)
        local ticks = {}
        for i, id in ipairs(seen) do ticks[i] = tonumber(id:match("^" .. name .. ":(%d+)$")) end
        table.sort(ticks)
        for i = 2, #ticks do assert.are.equal(ticks[i - 1] + 1, ticks[i]) end
    end)
end)

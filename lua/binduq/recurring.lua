--- binduq.recurring: schedules that fire a run at each tick of a cron expression or a fixed
-- interval, exactly once per tick across every worker process of the queue, with no leader
-- (docs/recurring.md).
--
--   bq.worker{ ..., schedules = {
--       { name = "digest", cron = "0 */5 * * * *", tz = "Europe/Berlin",
--         op = { messages = { "make the digest" } }, missed = "once", jitter = 10 },
--       { name = "ping", every = 30, op = { messages = { "ping" } } },
--   } }
--
-- Each worker's main state keeps the schedules: about LEAD seconds before a tick it claims
-- the tick in Redis (cron-4: a compare-and-set on the last tick claimed, and the run queued
-- in the same step), so whichever worker comes first queues the tick's run and the others
-- find it claimed. The run waits in {Q}:delayed until the tick (plus jitter) and is promoted
-- by the workers like any delayed operation. Its task id is "<name>:<tick>" (the tick in
-- seconds since the epoch). On the in-memory scheduler the one process keeps the claims
-- itself.

local core = require("binduq.core")
local config = require("binduq.config")
local json = require("binduq.json")
local task = require("binduq.task")

local M = {}

-- A tick is claimed this many seconds ahead of its time, so its run is queued (delayed) on
-- time even when a worker's loop is a little late.
M.LEAD = 1
-- A tick more than this many seconds past when a worker comes to claim it was missed (all
-- workers were down or cut off from Redis): the schedule's `missed` policy decides.
M.LATE = 5
-- Ticks looked at, at most, when catching up after a long downtime (about a second of CPU):
-- interval schedules jump to their last max_missed missed ticks, so only a cron schedule
-- missing more than this many ticks (one firing each second, down for 11 days) scans again
-- at its next wake, and its "once" or "all" runs from the first scan's last ticks.
local SCAN_MAX = 1000000

local KEYS = { name = "string", cron = "string", tz = "string", every = "number", op = "table",
               missed = "string", max_missed = "number", jitter = "number" }
local MISSED = { skip = true, once = true, all = true }

--- Checks the `schedules` option; returns the schedules, normalised. Raises (at `level`)
-- naming the schedule and the field.
function M.check(list, level)
    level = (level or 1) + 1
    if type(list) ~= "table" then error("schedules must be a list of schedules", level) end
    local out, seen = {}, {}
    for i, s in ipairs(list) do
        local where = "schedules[" .. i .. "]"
        if type(s) ~= "table" then error(where .. " must be a table", level) end
        config.check(s, KEYS, where, level + 1)
        local name = s.name
        if type(name) ~= "string" or not name:match("^[%w_.%-]+$") or #name > 100 then
            error(where .. ".name must be 1 to 100 letters, digits, '_', '-' or '.'", level)
        end
        where = "schedule '" .. name .. "'"
        if seen[name] then error(where .. " is declared twice", level) end
        seen[name] = true
        if (s.cron == nil) == (s.every == nil) then error(where .. " needs one of cron and every", level) end
        local c
        if s.cron then
            local ok, obj = pcall(core.cron, s.cron, s.tz)
            if not ok then error(where .. ": " .. tostring(obj), level) end
            c = obj
        else
            if s.tz ~= nil then error(where .. ": tz is for cron schedules (every counts UTC seconds)", level) end
            if math.type(s.every) ~= "integer" or s.every < 1 or s.every > 366 * 86400 then
                error(where .. ": every must be a whole number of seconds from 1 to 366 days", level)
            end
        end
        local missed = s.missed or "skip"
        if not MISSED[missed] then error(where .. ': missed must be "skip", "once" or "all"', level) end
        local max_missed = s.max_missed or 100
        if math.type(max_missed) ~= "integer" or max_missed < 1 or max_missed > 10000 then
            error(where .. ": max_missed must be a whole number from 1 to 10000", level)
        end
        local jitter = s.jitter or 0
        if core.duration_problem(jitter) then error(where .. ": jitter " .. core.duration_problem(jitter), level) end
        local op = {}
        for k, v in pairs(s.op or {}) do op[k] = v end
        if op.type ~= nil and op.type ~= "run" then error(where .. ': op.type must be "run"', level) end
        if op.task_id ~= nil or op.delay ~= nil or op.run_at ~= nil then
            error(where .. ": op must not set task_id, delay or run_at (each tick sets them)", level)
        end
        op.type = "run"
        -- The operation must encode: checked now, with a placeholder id.
        op.task_id = name .. ":0"
        local ok, why = pcall(task.encode, op, 1)
        if not ok then error(where .. ": op: " .. tostring(why), level) end
        op.task_id = nil
        out[#out + 1] = {
            name = name, cron = c, every = s.every, missed = missed, max_missed = max_missed,
            jitter = jitter, op = op,
            decl = json.encode({ cron = s.cron, tz = s.tz, every = s.every, missed = missed,
                                 max_missed = max_missed, jitter = jitter }),
        }
    end
    return out
end

-- The first tick of schedule s after t (seconds since the epoch), an integer, or nil.
local function next_after(s, t)
    t = math.floor(t)
    if s.every then return (t // s.every + 1) * s.every end
    return s.cron:next(t)
end
M.next_after = next_after

local Firer = {}
Firer.__index = Firer
Firer.__name = "binduq.Recurring"

--- The schedules of scheduler `sched` (a binduq.Scheduler; its queue gets the runs).
function M.new(sched, schedules)
    local shared = sched.backend ~= "memory"
    return setmetatable({ sched = sched, list = schedules, shared = shared, started = false,
                          stats = { calls = 0, fired = 0 } }, Firer)
end

-- Claims ticks ({tick, due, message} ascending) of s; returns fired, last, state or nil,
-- err, code. Shared: one cron-4 call. In memory: this process is the only one.
function Firer:_claim(s, decl, ticks)
    self.stats.calls = self.stats.calls + 1
    if self.shared then
        return self.sched.client:cron(s.name, "fire", decl, ticks)
    end
    local fired = 0
    for _, t in ipairs(ticks) do
        if t[1] > (s.mem_last or -1) then
            s.mem_last = t[1]
            local op = {}
            for k, v in pairs(s.op) do op[k] = v end
            op.task_id, op.run_at = s.name .. ":" .. t[1], t[2]
            local ok, err, code = self.sched:schedule(op)
            if not ok then return nil, err, code end
            fired = fired + 1
        end
    end
    return fired, s.mem_last or -1, "active"
end

-- Declares each schedule and learns its last tick: ticks after it and before now were
-- missed (the policy applies at the first fire). A schedule never fired starts from now.
function Firer:start(now)
    now = now or core.now()
    for _, s in ipairs(self.list) do
        local ok, last, state = self:_claim(s, s.decl, {})
        if ok == nil then
            core.log("warn", "schedule_unavailable", { schedule = s.name, error = last, code = state })
            s.cursor, s.declared = math.floor(now), false
        else
            s.declared = true
            s.cursor = last >= 0 and last or math.floor(now)
            s.removed = state == "removed"
        end
    end
    self.started = true
end

--- Seconds until a schedule needs this worker again (math.huge: never).
function Firer:due_in(now)
    now = now or core.now()
    local soonest = math.huge
    for _, s in ipairs(self.list) do
        if not s.removed then
            local at = s.retry_at or ((s.next or next_after(s, s.cursor) or math.huge) - M.LEAD)
            soonest = math.min(soonest, at - now)
        end
    end
    return math.max(0, soonest)
end

-- The run of tick t of s, encoded, and when it is due.
local function run_of(s, t, due)
    local op = {}
    for k, v in pairs(s.op) do op[k] = v end
    op.task_id = s.name .. ":" .. t
    local msg = task.encode(op, 1)
    return { t, due, msg }
end

-- The ticks of s to claim now: the late ones its policy keeps, then those due by now + LEAD.
local function ticks_of(s, now)
    local late, upcoming = {}, {}
    local t = s.cursor
    local skipped = 0
    if s.every and t < now - M.LATE - (s.max_missed + 1) * s.every then
        -- Only the last max_missed late ticks can matter: start just before them.
        local from = (math.floor(now - M.LATE) // s.every - (s.max_missed + 1)) * s.every
        skipped = (from - t) // s.every
        t = from
    end
    local last_late, nlate = nil, skipped
    for _ = 1, SCAN_MAX do
        t = next_after(s, t)
        if t == nil or t > now + M.LEAD then break end
        if t < now - M.LATE then
            last_late, nlate = t, nlate + 1
            late[#late + 1] = t
            if #late > s.max_missed then table.remove(late, 1) end
        else
            upcoming[#upcoming + 1] = t
        end
    end
    s.next = t
    local keep = {}
    if s.missed == "once" and #late > 0 then
        keep[1] = late[#late]
    elseif s.missed == "all" then
        keep = late
    end
    local out = {}
    local function jitter() return s.jitter > 0 and math.random() * s.jitter or 0 end
    for _, lt in ipairs(keep) do out[#out + 1] = run_of(s, lt, now + jitter()) end
    for _, ut in ipairs(upcoming) do out[#out + 1] = run_of(s, ut, ut + jitter()) end
    return out, last_late, nlate
end

--- Claims what is due. Returns the number of runs this worker queued.
function Firer:fire(now)
    now = now or core.now()
    if not self.started then self:start(now) end
    local total = 0
    for _, s in ipairs(self.list) do
        local due = s.retry_at or ((s.next or next_after(s, s.cursor) or math.huge) - M.LEAD)
        if not s.removed and due <= now then
            local ticks, last_late, nlate = ticks_of(s, now)
            if nlate > 0 and not s.told_late then
                core.log("warn", "schedule_missed", { schedule = s.name, missed = nlate, policy = s.missed,
                                                      last_missed = last_late })
            end
            if #ticks == 0 then
                s.cursor = math.max(s.cursor, last_late or s.cursor)
            else
                local fired, last, state = self:_claim(s, s.declared and "" or s.decl, ticks)
                if fired == nil then
                    core.log("warn", "schedule_fire_failed", { schedule = s.name, error = last, code = state })
                    s.retry_at, s.next = now + 1, nil
                    s.told_late = true
                else
                    s.declared, s.retry_at, s.told_late = true, nil, false
                    s.cursor = math.max(last, ticks[#ticks][1])
                    total = total + fired
                    self.stats.fired = self.stats.fired + fired
                    if state == "removed" then
                        s.removed = true
                        core.log("info", "schedule_removed", { schedule = s.name })
                    end
                end
            end
        end
    end
    return total
end

M.Firer = Firer
return M

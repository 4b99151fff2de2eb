--- binduq.events: following task events (docs/events.md).
--
--   local f = s:events{ since = "now" }            -- or "0" (all kept), an id, epoch seconds
--   local ev = f:next(5)                            -- the next event, waiting up to 5 s
--   for ev in f:each(1) do print(ev.event, ev.task_id, ev.state) end   -- until 1 s passes quietly
--   local task = s:wait(task_id, 30)                -- the task once it settles
--
-- Every queue keeps a capped stream of task events, {Q}:events: what producers scheduled and
-- canceled, what workers started, reported, completed, failed, retried and dead-lettered. An
-- event is a table: event, task_id, at (epoch seconds), and as they apply state, attempt,
-- worker, delay, error, reason, progress, message, due_at, redelivered; `id` is the position
-- of its entry in the stream and `queue` the queue. A follower resumes from `f.last` (the id
-- of the last entry it read): delivery is at-least-once from any point the stream still keeps.
-- Reading waits in the server (XREAD BLOCK), on a connection of the scheduler's own: nothing
-- polls.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

local Follower = {}
Follower.__index = Follower
Follower.__name = "binduq.Events"

-- The states a task settles in: s:wait returns once it reaches one.
M.SETTLED = { completed = true, failed = true, canceled = true, rejected = true,
              ["input-required"] = true, ["auth-required"] = true }

local MAX_ID_PART = "18446744073709551615"

--- The stream position to read after for `since`: "now" (what comes from now on), "0" (all
-- the stream keeps), an entry id ("<ms>-<seq>"), or a time (epoch seconds: the entries from
-- then on). Returns the id, or nil, msg.
function M.position(client, queue, since)
    if since == nil or since == "now" then
        local id, err, code = client:feed_last(queue)
        if not id then return nil, err, code end
        return id
    elseif since == "0" or since == 0 then
        return "0-0"
    elseif type(since) == "number" then
        if since ~= since or since < 0 or since > 1e11 then
            return nil, "since: a time must be epoch seconds (got " .. tostring(since) .. ")", "EINVAL"
        end
        local ms = math.floor(since * 1000)
        if ms == 0 then return "0-0" end
        return ("%d-%s"):format(ms - 1, MAX_ID_PART)
    elseif type(since) == "string" and since:match("^%d+%-%d+$") and #since <= 41 then
        return since
    end
    return nil, "since must be \"now\", \"0\", an event id (<ms>-<seq>) or epoch seconds (got "
        .. tostring(since) .. ")", "EINVAL"
end

--- A follower of `queue`'s events after position `after`, keeping those of `task_id` only
-- when it is given.
function M.follower(client, queue, after, task_id)
    return setmetatable({ client = client, queue = queue, last = after, cursor = after, task_id = task_id,
                          pending = {}, ends = {}, at = 1 }, Follower)
end

-- Decodes an entry's events into self.pending (an entry someone else wrote that is not a
-- JSON array of objects gives nothing). self.cursor is where the next read starts;
-- self.ends[i] is the entry's id when pending[i] is its last event, so that self.last moves
-- past an entry only once all its events were returned (a follower resumed from f.last
-- misses nothing; it may see again the events of an entry it was half way through).
local function take(self, entry)
    local list = json.decode(entry[2])
    self.cursor = entry[1]
    if type(list) ~= "table" then return end
    local n = #self.pending
    for _, ev in ipairs(list) do
        if type(ev) == "table" and type(ev.task_id) == "string" and type(ev.event) == "string"
                and (self.task_id == nil or ev.task_id == self.task_id) then
            ev.id, ev.queue = entry[1], self.queue
            self.pending[#self.pending + 1] = ev
        end
    end
    if #self.pending > n then self.ends[#self.pending] = entry[1] end
end

--- The next event, waiting up to `timeout` seconds (default 0: only what is there); nil,
-- "timeout", "ETIMEDOUT" when none came, or nil, msg, code.
function Follower:next(timeout)
    timeout = timeout or 0
    local until_ = core.monotonic() + timeout
    while true do
        local ev = self.pending[self.at]
        if ev then
            self.pending[self.at] = nil
            if self.ends[self.at] then self.last = self.ends[self.at] end
            self.at = self.at + 1
            if self.pending[self.at] == nil then self.last = self.cursor end
            return ev
        end
        self.pending, self.ends, self.at = {}, {}, 1
        self.last = self.cursor
        local left = until_ - core.monotonic()
        local entries, err, code = self.client:feed_read(self.queue, self.cursor, 100, left > 0 and left or 0)
        if not entries then return nil, err, code end
        for _, e in ipairs(entries) do take(self, e) end
        if #entries == 0 and left <= 0 then return nil, "timeout", "ETIMEDOUT" end
    end
end

--- Iterates over the events until none came for `timeout` seconds (or an error: then
-- f.error and f.code say which).
function Follower:each(timeout)
    return function()
        local ev, err, code = self:next(timeout)
        if not ev and code ~= "ETIMEDOUT" then self.error, self.code = err, code end
        return ev
    end
end

--- Waits until task `id` settles (completed, failed, canceled, rejected, input-required,
-- auth-required) and returns its stored record (s:get_task's view); when the storage is one
-- this process cannot see (memory storage, another process' worker), what the event said:
-- { task_id, state, attempt, worker, error, ... }. nil, "timeout", "ETIMEDOUT" when it does
-- not settle within `timeout` seconds.
--
-- With a shared storage (PostgreSQL, Redis) the stream position is taken before the stored
-- state is read, so an event written in between is read, and a stored state that settles
-- is what it returns. With memory storage the state may be another process' to know: the
-- events are read from a second before the task was recorded on, and the first settled
-- state among them is the answer; for a task it never recorded (another process scheduled
-- it), the latest state the stream keeps of it, when that is settled.
function M.wait(s, id, timeout, queue)
    local client = s.client
    if client:feed_max() == nil then
        return nil, "s:wait follows task events, which this scheduler's configuration turned off (events = false)",
            "EINVAL"
    end
    local shared = s.store:kind() ~= "memory"
    local rec, err, code = s:get_task(id)
    if rec == nil and err then return nil, err, code end
    queue = queue or (rec and rec.queue) or s.queue_name
    local after
    if shared then
        after, err, code = M.position(client, queue, "now")
        if not after then return nil, err, code end
        rec, err, code = s:get_task(id)
        if rec == nil and err then return nil, err, code end
    end
    if rec and M.SETTLED[rec.state] then return rec end
    local f
    if not shared and not rec then
        -- A task this process never recorded (another process scheduled it) may have settled
        -- already: the latest state the stream keeps of it is the answer when it is settled;
        -- otherwise the events that follow are read.
        f = M.follower(client, queue, "0-0", id)
        local latest
        while true do
            local ev, e2, c2 = f:next(0)
            if not ev then
                if c2 ~= "ETIMEDOUT" then return nil, e2, c2 end
                break
            end
            -- (a producer's "scheduled" may be written after the worker's events)
            if type(ev.state) == "string" and ev.event ~= "scheduled" then latest = ev end
        end
        if latest and M.SETTLED[latest.state] then
            latest.id, latest.queue, latest.event = nil, nil, nil
            return latest
        end
    elseif not shared then
        after, err, code = M.position(client, queue, rec.created_at and math.max(rec.created_at - 1, 0.001) or "now")
        if not after then return nil, err, code end
    end
    f = f or M.follower(client, queue, after, id)
    local until_ = core.monotonic() + (timeout or 0)
    while true do
        local left = until_ - core.monotonic()
        local ev, e2, c2 = f:next(left > 0 and left or 0)
        if not ev then return nil, e2, c2 end
        if ev.state and M.SETTLED[ev.state] then
            rec = s:get_task(id)
            if rec and rec.state == ev.state then return rec end
            if not shared then
                ev.id, ev.queue, ev.event = nil, nil, nil
                return ev
            end
        end
    end
end

return M

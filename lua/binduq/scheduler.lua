--- binduq.scheduler: the producer side.
--
--   local s = bq.scheduler{ url = "redis://127.0.0.1:6379/0", queue_name = "bindu:tasks" }
--   s:schedule{ type = "run", task_id = id, messages = {{ role = "user", content = "Hi" }} }
--   s:run{ task_id = id, messages = {"Hi"} }       -- the same, shorter
--   s:pause(id)  s:resume(id, {"more input"})  s:cancel(id)
--   s:schedule_many{ op1, op2, ... }             -- one pipelined round trip
--
-- Policy, as plain functions in the options:
--   route(op) -> a queue name, or a key of `levels` ({high = "{bindu}:tasks:high", ...});
--                nil: the scheduler's own queue
--   dedup_key(op) -> a key, or false for no deduplication; nil: the default, the operation
--                type and task_id for run and cancel (pause and resume legitimately repeat)
--   dedup = false turns deduplication off; dedup_ttl (3600 s) is how long a key holds.
--   retry_on_timeout = true retries a push that failed on a timeout or a lost connection
--   up to `retries` (3) times, with backoff (0.1 s doubling, at most 2 s, jitter): a push
--   whose answer was lost may then be queued twice, which deduplication absorbs for run
--   and cancel.
-- A duplicate is not an error: schedule returns true, "duplicate", and it is counted in
-- s.stats.deduplicated. The check and the push are one atomic step in Redis.
--
-- Invalid operations raise (nothing is sent); run-time failures (Redis down, timeouts)
-- return nil, message, code.
--
-- Task state (the `storage` section, or DATABASE_URL; memory by default):
--   s:get_task(id) -> task | nil      s:list_tasks{state=, context=, limit=} -> {task, ...}
-- A run is recorded as "submitted" before it is pushed; a cancel is stored and published on
-- the control channel at once (it reaches the running handler within milliseconds), then
-- queued too; a pause of a queued task is stored at once, of a running one it is published.
-- If the process dies between the store and the push, a worker's recovery sweep pushes the
-- submitted task again (see the README, "Task lifecycle").

local core = require("binduq.core")
local config = require("binduq.config")
local task = require("binduq.task")
local json = require("binduq.json")
local storage_mod = require("binduq.storage")

local Scheduler = {}
Scheduler.__index = Scheduler
Scheduler.__name = "binduq.Scheduler"

function Scheduler.__tostring(s)
    if not s.client then return "binduq.Scheduler (closed)" end
    return ("binduq.Scheduler: %s (%s %s)"):format(s.queue_name, s.backend, s.address)
end

local M = {}

--- Opens a scheduler. `opts` is the scheduler section of a Bindu config, or a whole config
-- with a `scheduler` key. Raises on invalid options (a malformed URL names the bad part).
function M.new(opts, level, storage_section)
    level = (level or 1) + 1
    local section = config.scheduler_section(opts, level)
    if section.format ~= nil and section.format ~= "native" and section.format ~= "bindu" then
        error("format must be \"native\" or \"bindu\" (got \"" .. tostring(section.format) .. "\")", level)
    end
    if section.format == "bindu" and section.order == nil then
        -- Bindu's messages are for Bindu's queues: RPUSH, taken from the left
        local copy = {}
        for k, v in pairs(section) do copy[k] = v end
        copy.order = "rpush"
        section = copy
    end
    if storage_section == nil then
        local st = type(opts) == "table" and (opts.scheduler ~= nil or opts.storage ~= nil) and opts.storage or nil
        storage_section = storage_mod.section(st, level)
    end
    local ok, client = pcall(core.client, section)
    if not ok then error(client, level) end
    local store, serr = storage_mod.open(storage_section, client)
    if not store then
        client:close()
        error("storage: " .. tostring(serr), level)
    end
    local info = client:info()
    if section.dedup_ttl ~= nil then
        local why = section.dedup_ttl <= 0 and "must be positive" or core.duration_problem(section.dedup_ttl)
        if why then error("dedup_ttl " .. why .. " (got " .. tostring(section.dedup_ttl) .. ")", level) end
    end
    if section.retries ~= nil and (math.type(section.retries) ~= "integer" or section.retries < 0 or section.retries > 100) then
        error("retries must be a whole number from 0 to 100", level)
    end
    for name, q in pairs(section.levels or {}) do
        if type(name) ~= "string" or type(q) ~= "string" or q == "" then
            error("levels maps level names to queue names", level)
        end
    end
    local self = setmetatable({
        client = client,
        store = store,
        queue_name = info.queue_name,
        backend = info.backend,
        address = info.address,
        url = info.url,
        route = section.route,
        levels = section.levels or {},
        dedup = section.dedup ~= false,
        dedup_ttl = section.dedup_ttl or 3600,
        dedup_key = section.dedup_key,
        -- the option, else the URL's ?retry_on_timeout= or Bindu's RETRY_ON_TIMEOUT
        retry_on_timeout = section.retry_on_timeout == true
            or (section.retry_on_timeout == nil and info.retry_on_timeout == true),
        retries = section.retries or 3,
        bindu = section.format == "bindu",
        events_on = client:feed_max() ~= nil,
        stats = { scheduled = 0, deduplicated = 0 },
    }, Scheduler)
    return self
end

-- The queue an operation goes to (the route policy).
local function route_of(self, op)
    if not self.route then return self.queue_name end
    local q = self.route(op)
    if q == nil then return self.queue_name end
    if type(q) ~= "string" or q == "" then
        error("route must return a queue or level name (got " .. type(q) .. ")", 3)
    end
    return self.levels[q] or q
end

-- The deduplication key of an operation, or nil for none (the dedup_key policy).
local function dedup_of(self, op)
    if not self.dedup then return nil end
    local k
    if self.dedup_key then
        k = self.dedup_key(op)
        if k == false then return nil end
        if k ~= nil and type(k) ~= "string" then
            error("dedup_key must return a string, false or nil (got " .. type(k) .. ")", 3)
        end
    end
    if k == nil and (op.type == "run" or op.type == "cancel") then k = op.type .. ":" .. op.task_id end
    return k
end

-- A handler state that re-runs the script up to worker:start() (the spawn model) runs every
-- schedule above that line once more per state: almost always a mistake (a task id made from
-- os.time() becomes a task per state). Said once per process; the operation still goes.
local function warn_if_loading(op)
    local loading, first = core.slot_loading()
    if loading and first then
        core.log("warn", "scheduled_while_loading", {
            task_id = type(op) == "table" and type(op.task_id) == "string" and op.task_id or nil,
            hint = "a handler state re-ran the script and scheduled above worker:start(): code above it runs "
                .. "once per handler state; guard it with `if bq.role == \"main\"` or put the handlers in a "
                .. "module (handlers = \"app.handlers\")" })
    end
end

local function check_open(self, op)
    if not self.client then error("attempt to use a closed scheduler", 3) end
    if op ~= nil then warn_if_loading(op) end -- only what schedules
    return self.client
end

-- The producer's task events (docs/events.md): a list of events, each a JSON object as a
-- string, for the stream of `queue`, after the operations they report. The client's poster
-- writes them within a millisecond, or at close (src/engine/feed_post.h): no round trip of
-- the caller's; a write that fails is logged (events_write_failed), not returned.
local function emit(self, queue, events)
    if not self.events_on or #events == 0 then return end
    self.client:feed_post(queue, table.concat(events, ","))
end

-- An event of task `id` that says it is now `state`, built as text: `at` is the time as text
-- (written once for a whole batch: schedule_many writes one event per run).
local function state_event(event, id, state, at, due)
    return '{"event":"' .. event .. '","task_id":' .. json.encode(id) .. ',"state":"' .. state .. '","at":' .. at
        .. (due and ',"due_at":' .. core.secs(due) or "") .. "}"
end

-- Seconds with three decimals, as the worker writes them (not "%.3f": glibc's path for it
-- is a tenth of a schedule() call).
local at_text = core.secs

-- The event of a scheduled operation (a run: "scheduled"; the stored side of a cancel or a
-- pause reports itself in store_op). `now` is the time, `at` the same as text.
local function scheduled_event(op, now, at, delay, run_at)
    if op.type ~= "run" then return nil end
    return state_event("scheduled", op.task_id, "submitted", at, run_at or (delay and now + delay) or nil)
end

-- The stored side of an operation, before it is queued: a run is recorded as submitted; a
-- cancel is stored and published at once; a pause of a queued task is stored, of a running
-- one requested and published. Returns nil, msg, code when the storage fails (nothing is
-- pushed then). A publication that fails is not an error: the operation is queued too.
local function store_op(self, op, queue, norm, delayed)
    local st, id = self.store, op.task_id
    -- A delayed cancel or pause changes nothing before it comes due: the worker that takes it
    -- then stores it (and reaches a running task), as one pushed by Bindu's API.
    if delayed and op.type ~= "run" then return true end
    if op.type == "run" then
        local ok, err, code = st:create{ id = id, context_id = norm.conversation_id, queue = queue,
                                         history = norm.messages_json or json.array(norm.messages or {}),
                                         metadata = op.metadata and json.encode(op.metadata) or nil }
        if ok == nil then return nil, err, code end
    elseif op.type == "cancel" then
        local changed, state, code = st:change{ id = id, to = "canceled" }
        if changed == nil then return nil, state, code end
        if state == false then st:create{ id = id, state = "canceled" } end
        self.client:publish("cancel", id)
        if changed then
            emit(self, queue, { state_event("canceled", id, "canceled", at_text(core.now())) })
        end
    elseif op.type == "pause" then
        -- Its queued copy comes later: "copy" (paused here) and "pause-sent" (asked of the
        -- running handler) tell the worker that handles it that this pause was applied
        -- already, so that it does not pause the task again after a resume
        -- (binduq.lifecycle.order).
        local changed, state, code = st:change{ id = id, from = "submitted", to = "paused", requested = "copy" }
        if changed == nil then return nil, state, code end
        if changed then
            emit(self, queue, { state_event("paused", id, "paused", at_text(core.now())) })
        end
        if not changed and state == "working" then
            st:change{ id = id, from = "working", requested = "pause-sent" }
            self.client:publish("pause", id)
        end
    end
    return true
end

local RETRYABLE = { ETIMEDOUT = true, EIO = true, ECONNREFUSED = true }

-- Calls fn() -> ok, err, code; with retry_on_timeout, again on a timeout or a lost
-- connection, after a backoff, up to self.retries more times.
local function with_retries(self, fn)
    local r1, r2, r3 = fn()
    local n = 0
    while r1 == nil and self.retry_on_timeout and RETRYABLE[r3] and n < self.retries do
        core.sleep(core.backoff(n, 0.1, 2, "equal"))
        n = n + 1
        r1, r2, r3 = fn()
    end
    return r1, r2, r3
end

-- Pushes one group of encoded messages to `queue`: with deduplication keys, as one atomic
-- check-and-push per message. Returns the numbers pushed and found duplicate, and with keys
-- or times which were pushed ({true|false, ...}: a duplicate's is false); or nil, message,
-- code.
local function push_group(self, client, queue, msgs, ids, keys, later)
    if later then
        local r, err, code = with_retries(self, function()
            return client:push_delayed(msgs, keys or later.nokeys, later.delays, later.run_ats, self.dedup_ttl, queue)
        end)
        if not r then return nil, err, code end
        local sent = 0
        for i = 1, #r do if r[i] then sent = sent + 1 end end
        return sent, #r - sent, r
    end
    if keys then
        local r, err, code = with_retries(self, function()
            return client:push_unique(msgs, keys, self.dedup_ttl, queue)
        end)
        if not r then return nil, err, code end
        local sent = 0
        for i = 1, #r do if r[i] then sent = sent + 1 end end
        return sent, #r - sent, r
    end
    local n, err, code = with_retries(self, function() return client:push(msgs, ids, queue) end)
    if not n then return nil, err, code end
    return n, 0
end

-- The in-memory scheduler is one process only: what is scheduled there is taken by workers
-- of this process or by nobody, and is gone when it exits. The first operation scheduled
-- there while no worker of this process has started says so, once per process, whichever
-- producer (C or Lua) schedules it (core.memory_warning: src/engine/worker.c).
local function count(self, sent, dups)
    self.stats.scheduled = self.stats.scheduled + sent
    self.stats.deduplicated = self.stats.deduplicated + dups
    if sent > 0 and self.backend == "memory" then
        local warning = core.memory_warning()
        if warning then core.log("warn", "memory_scheduler_no_worker", { queue = self.queue_name, warning = warning }) end
    end
end

-- Plain runs with no route or dedup_key policy are checked, recorded, encoded and pushed in
-- C (core.push_runs, src/lua/l_produce.c), a long list in pieces, each encoded while the
-- server works on the one before; it answers false for anything else, and task.lua's
-- general path takes the operations. It posts the pushed runs' "scheduled" events. Returns
-- sent, duplicates, pushed ({true|false, ...}: a duplicate's is false) | nil, msg, code; or
-- false. With retry_on_timeout, a timeout or a lost connection retries what was not
-- decided, after a backoff, up to self.retries times.
local function fast_many(self, client, ops)
    if self.route or self.dedup_key or self.bindu then return false end
    local ttl = self.dedup and self.dedup_ttl or nil
    local pushed, from, tries, sent, dups = {}, 1, 0, 0, 0
    while true do
        local s1, d1, code, decided, s2, d2 = core.push_runs(self.store, client, ops, self.queue_name,
                                                            ttl, pushed, from)
        if s1 == false then return false end
        if s1 then return sent + s1, dups + d1, pushed end
        sent, dups = sent + s2, dups + d2
        if not (self.retry_on_timeout and RETRYABLE[code] and tries < self.retries) then
            count(self, sent, dups)
            return nil, d1, code
        end
        core.sleep(core.backoff(tries, 0.1, 2, "equal"))
        tries, from = tries + 1, decided + 1
    end
end

--- Schedules one task operation. Returns true, "scheduled"; true, "duplicate" when its
-- deduplication key was taken (nothing pushed); or nil, message, code.
function Scheduler:schedule(op)
    local client = check_open(self, op)
    local sent, dups, code = fast_many(self, client, { op })
    local queue, delay, run_at = self.queue_name, nil, nil
    local posted = sent ~= false -- the fast path posts its runs' events itself
    if sent == false then
        local msg, id, norm = task.encode(op, 2)
        delay, run_at = task.when(op, 2)
        if self.bindu then msg = task.encode_bindu(op, norm, 2) end
        local key
        queue, key = route_of(self, op), dedup_of(self, op)
        local later = (delay or run_at) and { delays = { delay or 0 }, run_ats = { run_at or 0 }, nokeys = { false } }
        local sok, serr, scode = store_op(self, op, queue, norm, later ~= nil)
        if not sok then return nil, "storage: " .. tostring(serr), scode end
        sent, dups, code = push_group(self, client, queue, { msg }, { id }, key and { key } or nil, later)
    end
    if not sent then return nil, dups, code end
    count(self, sent, dups)
    if dups > 0 then return true, "duplicate" end
    if self.events_on and not posted then
        local now = core.now()
        local ev = scheduled_event(op, now, at_text(now), delay, run_at)
        if ev then emit(self, queue, { ev }) end
    end
    return true, "scheduled"
end

--- Schedules a list of operations, in order per queue, in as few round trips as possible
-- (one per run of operations with the same queue and the same kind of push). All are
-- checked before anything is sent. Returns the number scheduled and the number of
-- duplicates, or nil, message, code.
function Scheduler:schedule_many(ops)
    local client = check_open(self, type(ops) == "table" and (ops[1] or {}) or {})
    if type(ops) ~= "table" then error("schedule_many expects a list of task operations", 2) end
    local sent, dups, code = fast_many(self, client, ops)
    if sent ~= false then -- its runs' events posted by core.push_runs
        if not sent then return nil, dups, code end
        count(self, sent, dups)
        return sent, dups
    end
    -- Every operation is checked (and routed) before any is stored: an invalid one raises
    -- with nothing recorded, so no recovery sweep pushes the valid ones later.
    local encoded = {}
    for i = 1, #ops do
        local okenc, m, id, norm = pcall(task.encode, ops[i], 1)
        local delay, run_at
        if okenc then okenc, delay, run_at = pcall(task.when, ops[i], 1) end
        if okenc and self.bindu then okenc, m = pcall(task.encode_bindu, ops[i], norm, 1) end
        if not okenc then error("operation " .. i .. ": " .. tostring(okenc == false and (delay or m) or m), 2) end
        encoded[i] = { m, id, norm, route_of(self, ops[i]), dedup_of(self, ops[i]), delay, run_at }
    end
    -- One push a group: a queue's operations in a row of the same kind (deduplicated or not,
    -- delayed or not), in order. A queue's next operation joins that queue's last group, so
    -- operations routed in turn over several queues take a push per queue, not one each;
    -- each queue keeps its own order, and queues were never ordered among themselves.
    local groups, last = {}, {}
    local now = core.now()
    local at = at_text(now)
    for i = 1, #ops do
        local m, id, norm, queue, key, delay, run_at = table.unpack(encoded[i], 1, 7)
        local delayed = delay ~= nil or run_at ~= nil
        local sok, serr, scode = store_op(self, ops[i], queue, norm, delayed)
        if not sok then return nil, "storage: " .. tostring(serr), scode end
        local g = last[queue]
        if not g or (g.keys ~= nil) ~= (key ~= nil) or (g.later ~= nil) ~= delayed then
            g = { queue = queue, msgs = {}, ids = {}, keys = key and {} or nil,
                  later = delayed and { delays = {}, run_ats = {}, nokeys = {} } or nil }
            groups[#groups + 1], last[queue] = g, g
        end
        g.msgs[#g.msgs + 1], g.ids[#g.ids + 1] = m, id
        g.events = g.events or {}
        g.events[#g.msgs] = self.events_on and scheduled_event(ops[i], now, at, delay, run_at) or nil
        if key then g.keys[#g.keys + 1] = key end
        if delayed then
            local l = g.later
            l.delays[#l.delays + 1], l.run_ats[#l.run_ats + 1], l.nokeys[#l.nokeys + 1] = delay or 0, run_at or 0, false
        end
    end
    sent, dups = 0, 0
    for _, g in ipairs(groups) do
        local s1, d1, c1 = push_group(self, client, g.queue, g.msgs, g.ids, g.keys, g.later)
        if not s1 then
            count(self, sent, dups)
            return nil, d1, c1
        end
        sent, dups = sent + s1, dups + d1
        if self.events_on and s1 > 0 then
            local evs = {}
            for j = 1, #g.msgs do
                if g.events[j] and (not c1 or c1[j]) then evs[#evs + 1] = g.events[j] end
            end
            emit(self, g.queue, evs)
        end
    end
    count(self, sent, dups)
    return sent, dups
end

--- Pushes an already-encoded message as is. For tools and tests that need to put arbitrary
-- bytes on the queue (the worker sets malformed ones aside).
function Scheduler:push_raw(raw)
    return check_open(self, {}):push(raw)
end

local function with_type(ty, op)
    local t = {}
    for k, v in pairs(op) do t[k] = v end
    t.type = ty
    return t
end

function Scheduler:run(op)
    if type(op) ~= "table" then error("run expects a table {task_id=, messages=}", 2) end
    return self:schedule(with_type("run", op))
end

-- The other operations; `when` ({delay=} or {run_at=}, optional) says when they run.
local function timed(op, when)
    if when ~= nil then
        if type(when) ~= "table" then error("expected a table {delay=} or {run_at=} (got " .. type(when) .. ")", 3) end
        for k, v in pairs(when) do
            if k ~= "delay" and k ~= "run_at" then error("unknown field '" .. tostring(k) .. "' (expected delay or run_at)", 3) end
            op[k] = v
        end
    end
    return op
end

function Scheduler:pause(task_id, when)
    return self:schedule(timed({ type = "pause", task_id = task_id }, when))
end

function Scheduler:resume(task_id, messages, when)
    return self:schedule(timed({ type = "resume", task_id = task_id, messages = messages }, when))
end

function Scheduler:cancel(task_id, when)
    return self:schedule(timed({ type = "cancel", task_id = task_id }, when))
end

--- Number of operations waiting. Returns n, or nil, message, code.
function Scheduler:queue_length()
    return check_open(self):length("ready")
end

--- PING round trip and queue length. Never raises; `ok` tells.
function Scheduler:health_check()
    local client = check_open(self)
    local h = { backend = self.backend, address = self.address, queue = self.queue_name }
    local rtt, err, code = client:ping()
    if rtt then
        h.rtt = rtt
        h.queue_length, err, code = client:length("ready")
    end
    if rtt then
        local role, addr = client:node()
        h.role, h.node = role, addr
    end
    local u = self.url and core.parse_url(self.url)
    if u and u.kind == "sentinel" then
        h.topology = { kind = "sentinel", service = u.service, master = h.node, sentinels = #u.hosts }
    elseif u and u.kind == "cluster" then
        h.topology = { kind = "cluster", seeds = #u.hosts, node = h.node }
    end
    h.storage = self.store:kind()
    local sok, serr, scode = self.store:ping()
    h.storage_ok = sok == true
    if not sok and err == nil then err, code = "storage: " .. tostring(serr), scode end
    h.ok = err == nil
    h.error, h.code = err, code
    return h
end

--- Parses a dead-letter entry: the JSON header line, then the original message bytes.
function M.parse_dead_letter(entry)
    local nl = entry:find("\n", 1, true)
    local header = nl and json.decode(entry:sub(1, nl - 1)) or nil
    if type(header) ~= "table" then
        return { reason = "unreadable dead-letter entry", message = entry }
    end
    header.message = entry:sub(nl + 1)
    return header
end

--- Entries of the dead-letter list, newest first: {reason=, error=, task_id=, type=, queue=,
-- worker=, attempts=, failed_at=, message=<original bytes>}. Returns the list, or nil,
-- message, code.
function Scheduler:dead_letters(start, stop)
    local raw, err, code = check_open(self):range("dead", start or 0, stop or -1)
    if not raw then return nil, err, code end
    local out = {}
    for i, e in ipairs(raw) do out[i] = M.parse_dead_letter(e) end
    return out
end

function Scheduler:dead_letter_count()
    return check_open(self):length("dead")
end

--- Operations waiting for a retry (the delayed set) and held by workers (in flight).
function Scheduler:delayed_count()
    return check_open(self):length("delayed")
end

function Scheduler:inflight_count()
    return check_open(self):length("inflight")
end

-- A filter over dead-letter entries: nil (all), a function(entry) -> bool, or a table of
-- fields that must all match: task_id, type, code (the error's), worker (exact), reason
-- (a substring).
local function matcher(filter)
    if filter == nil then return function() return true end end
    if type(filter) == "function" then return filter end
    if type(filter) ~= "table" then error("a filter is a table of fields or a function", 3) end
    for k in pairs(filter) do
        if k ~= "task_id" and k ~= "type" and k ~= "code" and k ~= "worker" and k ~= "reason" then
            error("unknown filter field '" .. tostring(k) .. "'", 3)
        end
    end
    return function(e)
        if filter.task_id and e.task_id ~= filter.task_id then return false end
        if filter.type and e.type ~= filter.type then return false end
        if filter.worker and e.worker ~= filter.worker then return false end
        if filter.code and not (type(e.error) == "table" and e.error.code == filter.code) then return false end
        if filter.reason and not (e.reason or ""):find(filter.reason, 1, true) then return false end
        return true
    end
end

-- Applies op ("dlq_requeue" or "dlq_remove") to every matching entry, a page at a time.
-- Each move is one atomic step in Redis, so an entry is never lost or doubled, even with
-- several operators at once. progress(done, seen) is called after each page.
-- Only the entries there at the start are looked at: the walk goes from the oldest (the
-- list's tail, where pushes of new entries do not move positions) and stops after as many
-- as the list held. An entry dead-lettered meanwhile, a task requeued here that failed
-- again included, stays; else a task that keeps failing would keep the walk going.
local function each_dead(self, filter, op, progress)
    local client = check_open(self)
    local match = matcher(filter)
    local total, lerr, lcode = client:length("dead")
    if not total then return nil, lerr, lcode end
    local done, seen, from = 0, 0, 0 -- from: entries kept, counted from the tail
    while seen < total do
        local page, err, code = client:range("dead", -(from + 500), -(from + 1))
        if not page then return nil, err, code end
        if #page == 0 then break end
        local kept = 0
        for i = #page, math.max(1, #page - (total - seen) + 1), -1 do -- oldest first
            local raw = page[i]
            seen = seen + 1
            local e = M.parse_dead_letter(raw)
            if op == "dlq_requeue" and e.truncated == true then
                kept = kept + 1 -- only its first bytes were kept: nothing to requeue
            elseif match(e) then
                local ok, e2, c2 = client[op](client, raw)
                if ok == nil then return nil, e2, c2 end
                if ok then done = done + 1 end -- false: gone meanwhile, not kept either
            else
                kept = kept + 1
            end
        end
        from = from + kept -- entries taken out shift the newer ones towards the tail
        if progress then progress(done, seen) end
    end
    return done
end

--- Moves matching dead-letter entries back to the queue as fresh operations (attempts start
-- again). `filter` as above; nil requeues all. Returns the number moved. Truncated entries
-- (messages too large to keep whole) are never requeued: they stay.
function Scheduler:requeue_dead(filter, progress)
    return each_dead(self, filter, "dlq_requeue", progress)
end

--- Deletes matching dead-letter entries; nil (no filter) empties the list in one step.
-- Returns the number deleted.
function Scheduler:purge_dead(filter, progress)
    if filter == nil then return check_open(self):dlq_purge() end
    return each_dead(self, filter, "dlq_remove", progress)
end

--- One dead-letter entry by its position (0 = newest), parsed, with `raw` the entry as
-- stored (what requeue_entry and remove_entry take). nil when there is none.
function Scheduler:dead_letter(index)
    local page, err, code = check_open(self):range("dead", index, index)
    if not page then return nil, err, code end
    if not page[1] then return nil end
    local e = M.parse_dead_letter(page[1])
    e.raw = page[1]
    return e
end

--- Requeues or removes exactly one entry (as returned in `raw`). true, or false if it is no
-- longer there.
function Scheduler:requeue_entry(raw)
    return check_open(self):dlq_requeue(raw)
end

function Scheduler:remove_entry(raw)
    return check_open(self):dlq_remove(raw)
end

--- The stored task (see binduq.storage.view), nil if unknown, or nil, msg, code.
function Scheduler:get_task(id)
    check_open(self)
    if type(id) ~= "string" then error("get_task expects a task_id string", 2) end
    local rec, err, code = self.store:get(id)
    if rec == nil then return nil, err, code end
    return storage_mod.view(rec) or nil
end

--- Follows task events (binduq.events, docs/events.md): opts { since = "now" | "0" | id |
-- epoch seconds, queue = (this scheduler's), task_id = (all tasks) }. Returns a follower:
-- f:next(timeout) -> event | nil, "timeout", "ETIMEDOUT"; f:each(timeout); f.last.
function Scheduler:events(opts)
    local client = check_open(self)
    opts = opts or {}
    config.check(opts, { since = "string|number", queue = "string", task_id = "string" }, "events options", 2)
    local events = require("binduq.events")
    if client:feed_max() == nil then
        return nil, "task events are off in this scheduler's configuration (events = false)", "EINVAL"
    end
    local queue = opts.queue and (self.levels[opts.queue] or opts.queue) or self.queue_name
    local after, err, code = events.position(client, queue, opts.since)
    if not after then return nil, err, code end
    return events.follower(client, queue, after, opts.task_id)
end

--- Waits until task `id` settles (completed, failed, canceled, rejected, input-required,
-- auth-required), at most `timeout` seconds, without polling: returns the task (as
-- get_task), or nil, "timeout", "ETIMEDOUT". opts { queue = } names the task's queue when
-- the storage does not know it. See binduq.events.
function Scheduler:wait(id, timeout, opts)
    check_open(self)
    if type(id) ~= "string" then error("wait expects a task_id string", 2) end
    local why = core.duration_problem(timeout or 0)
    if why then error("wait: timeout " .. why, 2) end
    opts = opts or {}
    config.check(opts, { queue = "string" }, "wait options", 2)
    local queue = opts.queue and (self.levels[opts.queue] or opts.queue) or nil
    return require("binduq.events").wait(self, id, timeout or 0, queue)
end

--- Stored tasks, newest first: filter {state=, context=, limit=(100), offset=(0): skip that
-- many matching tasks first}.
function Scheduler:list_tasks(filter)
    check_open(self)
    filter = filter or {}
    config.check(filter, { state = "string", context = "string", limit = "number", offset = "number" },
                 "list_tasks filter", 2)
    if filter.state and not (storage_mod.OPEN[filter.state] or storage_mod.TERMINAL[filter.state]) then
        error("list_tasks: unknown state '" .. filter.state .. "'", 2)
    end
    local recs, err, code = self.store:list{ state = filter.state, context_id = filter.context,
                                             limit = filter.limit or 100, offset = filter.offset }
    if not recs then return nil, err, code end
    local out = {}
    for i, r in ipairs(recs) do out[i] = storage_mod.view(r) end
    return out
end

--- The storage handle (binduq.Storage) this scheduler records tasks in.
function Scheduler:storage()
    check_open(self)
    return self.store
end

function Scheduler:close()
    if self.client then
        self.client:close()
        self.client = nil
    end
    if self.store then
        self.store:close()
        self.store = nil
    end
end
Scheduler.__close = Scheduler.close
-- No __gc: the client and the store close themselves when collected, so one taken from a
-- scheduler the program dropped (bq.scheduler{...}.client) stays open while it is held.

M.Scheduler = Scheduler
--- The dead-letter filter of requeue_dead and purge_dead as a function(entry) -> bool, for a
-- reader that lists what they would move (binduq.dashboard).
M.matcher = matcher
return M

--- binduq.dashboard: the web dashboard (`binduq-lua dashboard`, docs/dashboard.md).
--
--   local d = assert(require("binduq.dashboard").new{ url =, queues = {..}, database_url =,
--                                                     host =, port =, token =, read_only = })
--   d:run()          -- until SIGTERM or SIGINT;  d:step(timeout) serves one round;  d:close()
--
-- One Lua loop serves everything through the gateway's HTTP server (core.gateway: a
-- libmicrohttpd server whose threads never run Lua, src/engine/gateway.c): the page and its
-- two assets (lua/binduq/dashboard/*.lua, plain text in Lua strings, so they install and load
-- as modules do: no build step, no CDN), a JSON API, and one server-sent-event stream per
-- open page that carries the overview (queues and workers) every second.
--
-- Reads and actions reuse the admin commands' data functions (binduq.cli's `data`) and the
-- scheduler's: client:stats for queues and workers, s:dead_letters, s:requeue_entry,
-- s:remove_entry, s:requeue_dead, s:purge_dead, s:get_task, s:events, s:cancel/pause/resume.
--
-- Requests: the C server passes the path without its query string and only the headers
-- Authorization, Content-Type, Accept, Last-Event-ID, Host and Origin; so an API call's parameters are a
-- JSON document in the path, hex-encoded (no escaping question can arise), or in the body
-- of a POST.
--
-- Security (docs/dashboard.md):
--   * it listens on 127.0.0.1 unless told otherwise, and refuses to listen elsewhere without
--     a token; with a token, every request needs it (Authorization: Bearer T, or basic auth
--     with T as the password, which a browser asks for once);
--   * without a token, a request's Host must name this machine (127.0.0.1, localhost, ::1):
--     a page of another site that rebinds its name to 127.0.0.1 sends its own name;
--   * every POST needs Content-Type application/json and, in its body, `csrf`: a random
--     token of this process, given to the page in a meta tag. A cross-origin page can send
--     neither without a CORS preflight, which is not answered (OPTIONS is 405); and a POST
--     with an Origin header needs it to be this server's (http:// or https:// and the Host);
--   * --read-only refuses every POST (403) and the page shows no buttons;
--   * what comes from the queue reaches the browser as JSON, invalid UTF-8 replaced, and the
--     page builds its DOM with textContent only; the Content-Security-Policy allows no inline
--     script and no other origin, so a hostile task id or reason can neither run nor load.

local core = require("binduq.core")
local json = require("binduq.json")
local scheduler = require("binduq.scheduler")
local storage_mod = require("binduq.storage")

local M = {}

local Dashboard = {}
Dashboard.__index = Dashboard
Dashboard.__name = "binduq.Dashboard"

local MAX_QUEUES = 16       -- schedulers kept open (one per queue viewed)
local SCAN_MAX = 10000      -- dead-letter entries looked at by one listing or lookup
local PAGE_MAX = 200        -- dead-letter entries in one listing
local EVENTS_MAX = 500      -- events of one task in its timeline
local TASKS_PAGE_MAX = 200  -- tasks in one page of a list
local TASKS_OFFSET_MAX = 100000 -- how deep a list may page (each page skips what comes before)

local HEADERS = {
    ["Content-Security-Policy"] = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                  .. "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ["X-Content-Type-Options"] = "nosniff",
    ["X-Frame-Options"] = "DENY",
    ["Referrer-Policy"] = "no-referrer",
    ["Cache-Control"] = "no-store",
}

local LOOPBACK = { ["127.0.0.1"] = true, ["::1"] = true, localhost = true }

-- ---- helpers -------------------------------------------------------------------------------

-- 32 hex digits from the kernel's random source (uuid4's as a fallback).
local function random_token()
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(16)
    if f then f:close() end
    if not bytes or #bytes < 16 then return (core.uuid4() .. core.uuid4()):gsub("-", "") end
    return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64_decode(s)
    s = s:gsub("[^%w%+/]", "")
    local bits = s:gsub(".", function(c)
        local v = B64:find(c, 1, true) - 1
        local t = {}
        for i = 5, 0, -1 do t[#t + 1] = (v >> i) & 1 end
        return table.concat(t)
    end)
    return (bits:gsub("%d%d%d?%d?%d?%d?%d?%d?", function(b)
        if #b ~= 8 then return "" end
        return string.char(tonumber(b, 2))
    end))
end

local function unhex(s)
    if #s % 2 ~= 0 or s:find("[^%x]") then return nil end
    return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- A dead-letter entry's fingerprint: FNV-1a (64 bits) of its bytes, and its length. It
-- names an entry across requests, while other entries come and go before it.
local function fingerprint(raw)
    local h = -3750763034362895579 -- 0xcbf29ce484222325
    for i = 1, #raw, 4096 do
        local chunk = { raw:byte(i, math.min(i + 4095, #raw)) }
        for _, b in ipairs(chunk) do h = (h ~ b) * 1099511628211 end
    end
    return ("%016x-%d"):format(h, #raw)
end

-- JSON text safe to send: controls escaped, invalid UTF-8 replaced (core/escape.h).
local function encode(v)
    return core.escape(json.encode_strict(v), "json_text")
end

local function fail(status, msg)
    error({ status = status, message = msg }, 0)
end

local function must(v, err)
    if v == nil and err ~= nil then fail(502, tostring(err)) end
    return v
end

-- ---- construction --------------------------------------------------------------------------

--- A dashboard serving on host:port (default 127.0.0.1, port 0: any free one). Raises on
-- bad options; returns nil, msg, code when it cannot listen.
--
-- Embedded (the `dashboard` option of a gateway or a worker): `server` is the host's
-- core.gateway server, which the dashboard shares; `prefix` ("/dashboard") is where it is
-- served; the host hands it the requests under the prefix (d:handle) and calls d:tick()
-- (at most once a second does anything). `host` is then where that server listens, for the
-- loopback rule. `scheduler` (a scheduler section: url, tls, ...) and `storage` (a storage
-- section) may stand for `url` and `database_url`.
function M.new(opts)
    opts = opts or {}
    local host = opts.host or "127.0.0.1"
    local token = opts.token
    if token == "" then token = nil end
    if not LOOPBACK[host] and not token then
        error("dashboard: listening on " .. host .. " (not loopback) needs a token (--token or $BINDUQ_DASHBOARD_TOKEN)", 2)
    end
    local storage_section = { type = "memory" }
    if opts.storage then
        storage_section = opts.storage
    elseif opts.database_url then
        storage_section = storage_mod.section({ type = "postgres", url = opts.database_url, schema = opts.schema }, 2)
    end
    local sched_opts = {}
    for k, v in pairs(opts.scheduler or { url = opts.url }) do sched_opts[k] = v end
    sched_opts.queue_name = nil
    local self = setmetatable({
        sched_opts = sched_opts, token = token, read_only = opts.read_only == true,
        storage_section = storage_section, has_storage = storage_section.type ~= "memory",
        csrf = random_token(), scheds = {}, nscheds = 0, streams = {}, next_tick = 0, next_scan = 0,
        cli = opts.cli_data or require("binduq.cli").data,
        prefix = opts.prefix, shared = opts.server ~= nil, jobs = {}, job_seq = 0,
    }, Dashboard)
    -- The first queue's scheduler: it checks the URL now, and finds the default queue.
    local first = self:sched(opts.queues and opts.queues[1] or opts.queue or nil)
    self.queues = opts.queues or { first.queue_name }
    self.auto_queues = not opts.queues or #opts.queues == 0
    if self.auto_queues then self:find_queues() end
    if opts.server then
        self.server = opts.server
        return self
    end
    local gw, err, code = core.gateway{ host = host, port = opts.port or 0, max_body = 64 * 1024,
                                        max_connections = 256, idle_timeout = 300 }
    if not gw then
        self:close()
        return nil, err, code
    end
    self.server = gw
    return self
end

-- The scheduler section for queue q (nil: the default queue), with `extra` fields.
function Dashboard:section(q, extra)
    local t = {}
    for k, v in pairs(self.sched_opts) do t[k] = v end
    for k, v in pairs(extra or {}) do t[k] = v end
    t.queue_name = q
    return t
end

-- The scheduler of queue q (nil: the default queue), opened on first use.
function Dashboard:sched(q)
    local s = q and self.scheds[q]
    if s then return s end
    if self.nscheds >= MAX_QUEUES then fail(400, "at most " .. MAX_QUEUES .. " queues at once") end
    s = scheduler.new(self:section(q), nil, self.storage_section)
    if s.backend == "memory" then
        s:close()
        error("dashboard needs Redis (REDIS_URL or --url): the in-memory scheduler lives inside its own process", 0)
    end
    self.scheds[s.queue_name] = s
    self.nscheds = self.nscheds + 1
    return s
end

-- The scheduler of a queue a request names: one of the queues shown (the first when it
-- names none), so that requests cannot open schedulers for queues of their choosing.
function Dashboard:shown(q)
    if q == nil or q == "" then return self:sched(self.queues[1]) end
    for _, name in ipairs(self.queues) do
        if name == q then return self:sched(q) end
    end
    fail(404, "not a queue this dashboard shows")
end

function Dashboard:port()
    return self.server:port()
end

-- ---- rates and workers: what the workers report (report-N.lua) ------------------------------
--
-- Every worker reports every 5 seconds: its description in {Q}:worker:<id> (concurrency,
-- tasks per state, started, counts...), and the tasks it finished since its last report,
-- added to {Q}:rates per minute of Redis' clock ("d:<minute>" completed, "f:<minute>"
-- failed: a failed attempt, retried or dead-lettered). The hash keeps the last hour (and a
-- minute), so the chart covers it whether or not a dashboard was watching, at any load.
-- One read-only script per queue and refresh reads the counts and the live workers'
-- descriptions and in-flight lists.

-- The rates hash (report-N.lua) as { [minute] = {done=, failed=} }.
local function minutes_of(flat)
    local out = {}
    for i = 1, #(flat or {}) - 1, 2 do
        local kind, m = tostring(flat[i]):match("^([df]):(%d+)$")
        m = tonumber(m)
        if m then
            local b = out[m] or { done = 0, failed = 0 }
            out[m] = b
            local n = tonumber(flat[i + 1]) or 0
            if kind == "d" then b.done = b.done + n else b.failed = b.failed + n end
        end
    end
    return out
end

-- Per queue: processed and failed in the last 60 seconds (the current minute, and the
-- previous one weighted by the part of it still within them); and the hour per minute, all
-- queues: { from =, step = 60, points = { {t=, done=, failed=}, ... 60 } }.
function M.rates_doc(by_queue, now)
    local per_queue, points, from = {}, {}, nil
    local this = math.floor(now / 60)
    local first = this - 59
    local frac = (now - this * 60) / 60
    for i = 1, 60 do points[i] = { t = (first + i - 1) * 60, done = 0, failed = 0 } end
    for q, mins in pairs(by_queue) do
        local cur, prev = mins[this] or { done = 0, failed = 0 }, mins[this - 1] or { done = 0, failed = 0 }
        per_queue[q] = { done = math.floor(cur.done + prev.done * (1 - frac) + 0.5),
                         failed = math.floor(cur.failed + prev.failed * (1 - frac) + 0.5) }
        for m, b in pairs(mins) do
            local p = points[m - first + 1]
            if p then
                p.done, p.failed = p.done + b.done, p.failed + b.failed
                if not from or m * 60 < from then from = m * 60 end
            end
        end
    end
    return per_queue, { from = from, step = 60, points = points }
end

-- Without --queue: the queues are looked for again every QUEUE_RESCAN seconds, so one that
-- appears later is shown (up to MAX_QUEUES).
local QUEUE_RESCAN = 30

function Dashboard:find_queues()
    local first = self:sched(self.queues[1])
    local found = first.client:queues(first.queue_name, SCAN_MAX) or {}
    local seen = {}
    for _, q in ipairs(self.queues) do seen[q] = true end
    for _, q in ipairs(found) do
        if not seen[q] and #self.queues < MAX_QUEUES then
            seen[q] = true
            self.queues[#self.queues + 1] = q
        end
    end
    self.next_scan = core.monotonic() + QUEUE_RESCAN
end

-- ---- data ----------------------------------------------------------------------------------

function Dashboard:overview()
    if self.auto_queues and core.monotonic() >= self.next_scan then
        local okq, err = pcall(self.find_queues, self)
        if not okq then core.log("warn", "dashboard_queues_failed", { error = tostring(err) }) end
    end
    local s = self:sched(self.queues[1])
    local rows, workers, by_queue = {}, {}, {}
    for _, q in ipairs(self.queues) do
        local st, list = self.cli.queue_stats(s.client, q, true)
        by_queue[q] = minutes_of(self.cli.worker_details(s.client, q, list))
        rows[#rows + 1] = st
        for _, w in ipairs(list) do
            w.queue = q
            workers[#workers + 1] = w
        end
    end
    local per_queue, history = M.rates_doc(by_queue, core.now())
    for _, st in ipairs(rows) do
        local r = per_queue[st.queue]
        st.processed_per_min, st.failed_per_min = r and r.done, r and r.failed
    end
    return '{"time":' .. encode(core.now()) .. ',"queues":' .. core.escape(json.array(rows), "json_text")
           .. ',"workers":' .. core.escape(json.array(workers), "json_text")
           .. ',"jobs":' .. core.escape(json.array(self:jobs_doc()), "json_text")
           .. ',"history":{"from":' .. encode(history.from or json.null) .. ',"step":60,"points":'
           .. json.array(history.points) .. "}}"
end

local function dead_summary(e, index, raw)
    return {
        index = index, fp = fingerprint(raw), task_id = e.task_id, type = e.type, reason = e.reason,
        code = type(e.error) == "table" and e.error.code or nil, worker = e.worker, attempts = e.attempts,
        failed_at = e.failed_at, truncated = e.truncated == true,
    }
end

-- Calls fn(entry, index, raw) for the entries (newest first) that match `filter`, at most
-- SCAN_MAX looked at; stops when fn returns true. Returns how many were looked at.
function Dashboard:each_dead(s, filter, fn)
    local match = scheduler.matcher(filter)
    local start = 0
    while start < SCAN_MAX do
        local page = must(s.client:range("dead", start, start + 499))
        if #page == 0 then break end
        for i, raw in ipairs(page) do
            local e = scheduler.parse_dead_letter(raw)
            if match(e) and fn(e, start + i - 1, raw) then return start + i end
        end
        start = start + #page
    end
    return start
end

local FILTER_KEYS = { "task_id", "type", "code", "worker", "reason" }

-- The filter of a request: the non-empty string fields among FILTER_KEYS, or nil.
local function filter_of(f)
    if type(f) ~= "table" then return nil end
    local out, any = {}, false
    for _, k in ipairs(FILTER_KEYS) do
        if type(f[k]) == "string" and f[k] ~= "" then
            out[k] = f[k]
            any = true
        end
    end
    return any and out or nil
end

function Dashboard:dead_list(p)
    local s = self:shown(p.queue)
    local offset = math.max(0, math.tointeger(p.offset) or 0)
    local limit = math.min(PAGE_MAX, math.max(1, math.tointeger(p.limit) or 50))
    local list, matched = {}, 0
    local looked = self:each_dead(s, filter_of(p.filter), function(e, index, raw)
        matched = matched + 1
        if matched > offset and #list < limit then list[#list + 1] = dead_summary(e, index, raw) end
        return false
    end)
    local total = must(s:dead_letter_count())
    return '{"queue":' .. encode(s.queue_name) .. ',"total":' .. total .. ',"matched":' .. matched
           .. ',"looked":' .. looked .. ',"scan_max":' .. SCAN_MAX .. ',"entries":'
           .. core.escape(json.array(list), "json_text") .. "}"
end

-- The entry with fingerprint fp: entry, index, raw; fails 404.
function Dashboard:find_dead(s, fp)
    local size = type(fp) == "string" and tonumber(fp:match("^%x+%-(%d+)$"))
    if not size then fail(400, "fp: the entry's fingerprint is needed") end
    for start = 0, SCAN_MAX - 1, 500 do
        local page = must(s.client:range("dead", start, start + 499))
        for i, raw in ipairs(page) do
            if #raw == size and fingerprint(raw) == fp then -- hashed only when the length matches
                return scheduler.parse_dead_letter(raw), start + i - 1, raw
            end
        end
        if #page < 500 then break end
    end
    fail(404, "no such dead-letter entry (requeued or deleted meanwhile?)")
end

function Dashboard:dead_entry(p)
    local s = self:shown(p.queue)
    local e, index, raw = self:find_dead(s, p.fp)
    local doc = dead_summary(e, index, raw)
    doc.queue, doc.error, doc.size = e.queue, e.error, #raw
    -- The bytes as binduq shows outside text: controls and invalid UTF-8 as \n, \xNN, ...
    doc.message = core.escape(e.message or "")
    doc.raw = core.escape(raw)
    return encode(doc)
end

function Dashboard:dead_action(p, verb)
    local s = self:shown(p.queue)
    local n
    if p.fp then
        local _, _, raw = self:find_dead(s, p.fp)
        local ok = must((verb == "requeue" and s.requeue_entry or s.remove_entry)(s, raw))
        n = ok and 1 or 0
    else
        local f = filter_of(p.filter)
        if not f and p.all ~= true then fail(400, "an entry (fp), a filter, or all = true is needed") end
        if verb == "delete" and not f then
            n = must(s:purge_dead(nil)) -- one DEL
        else
            return self:start_job(s, verb, f)
        end
    end
    core.log("info", "dashboard_action", { action = "dlq_" .. verb, queue = s.queue_name, count = n })
    return encode({ done = n, queue = s.queue_name })
end

-- ---- recurring schedules and delayed operations ------------------------------------------

local DELAYED_PAGE = 50

-- One delayed operation as the page shows it: its due time (epoch s, Redis' clock), task id,
-- type, whether it is a retry (a "#bq" header: binduq queued it again) and its size.
local function delayed_summary(msg, score)
    local header, body = msg:match("^(#bq [^\n]*)\n(.*)$")
    local okj, t = pcall(json.decode, body or msg)
    t = okj and type(t) == "table" and t or {}
    local params = type(t.params) == "table" and t.params or {}
    local id = t.task_id or params.task_id
    local ty = t.type or t.operation
    return { due = (tonumber(score) or 0) / 1000, task_id = type(id) == "string" and id or nil,
             type = type(ty) == "string" and ty or nil, retry = header ~= nil, size = #msg }
end

function Dashboard:schedules(p)
    local s = self:shown(p.queue)
    local q = s.queue_name
    local rows = self.cli.schedule_rows(s.client, q)
    local offset = math.min(TASKS_OFFSET_MAX, math.max(0, math.tointeger(p.offset) or 0))
    local flat = must(s.client:command(q, "ZRANGE", core.key_derive(q, "delayed"), tostring(offset),
                                       tostring(offset + DELAYED_PAGE - 1), "WITHSCORES"))
    local delayed = {}
    for i = 1, #flat - 1, 2 do delayed[#delayed + 1] = delayed_summary(flat[i], flat[i + 1]) end
    local total = must(s:delayed_count())
    return '{"queue":' .. encode(q) .. ',"schedules":' .. core.escape(json.array(rows), "json_text")
           .. ',"delayed":{"total":' .. total .. ',"offset":' .. offset .. ',"limit":' .. DELAYED_PAGE
           .. ',"entries":' .. core.escape(json.array(delayed), "json_text") .. "}}"
end

function Dashboard:schedule_action(p, verb)
    local s = self:shown(p.queue)
    if type(p.name) ~= "string" or p.name == "" then fail(400, "name: a schedule's name is needed") end
    local _, last, st = s.client:cron(p.name, verb, "", nil, s.queue_name)
    if last == nil then fail(502, tostring(st)) end
    if st == "unknown" then fail(404, "no schedule '" .. p.name .. "' on " .. s.queue_name) end
    if st == "removed" then fail(409, "schedule '" .. p.name .. "' was removed") end
    core.log("info", "dashboard_action", { action = "schedule_" .. verb, queue = s.queue_name, schedule = p.name })
    return encode({ name = p.name, state = st, queue = s.queue_name })
end

-- ---- bulk actions: jobs that go on between requests -----------------------------------------
--
-- Requeueing or deleting every entry matching a filter takes a round trip per entry, so it
-- runs as a job: the POST answers at once with its id (202), and the loop moves each job on
-- by one page of the list (500 entries looked at) per step, serving requests in between. A
-- job's progress is in the overview (`jobs`, every second on the stream) and at
-- GET /api/job/HEX; a finished one is kept JOB_KEEP seconds.

local JOB_KEEP = 300
local JOBS_MAX = 8 -- jobs at once

function Dashboard:start_job(s, verb, filter)
    local running = 0
    for _, j in pairs(self.jobs) do
        if not j.finished then
            running = running + 1
            if j.queue == s.queue_name then fail(409, "a bulk action on " .. s.queue_name .. " is going on: wait for it") end
        end
    end
    if running >= JOBS_MAX then fail(429, "too many bulk actions at once (" .. JOBS_MAX .. "): wait for one to finish") end
    self.job_seq = self.job_seq + 1
    local id = tostring(self.job_seq)
    local job = { id = id, action = verb, queue = s.queue_name, filter = filter, done = 0, seen = 0,
                  total = must(s:dead_letter_count()), started = core.now(), finished = false }
    local fn = verb == "requeue" and s.requeue_dead or s.purge_dead
    job.co = coroutine.create(function()
        return fn(s, filter, function(done, seen) coroutine.yield(done, seen) end)
    end)
    self.jobs[id] = job
    core.log("info", "dashboard_action", { action = "dlq_" .. verb .. "_started", queue = s.queue_name, job = id })
    return encode({ job = id, queue = s.queue_name }), 202
end

-- Moves every running job on by one page. Returns whether any is still running.
function Dashboard:advance_jobs()
    local any, now = false, core.now()
    for id, j in pairs(self.jobs) do
        if not j.finished then
            local ok, a, b, c = coroutine.resume(j.co)
            if not ok then
                j.finished, j.error = true, tostring(a)
            elseif coroutine.status(j.co) == "dead" then -- returned: the count, or nil, msg
                j.finished = true
                if a == nil then j.error = tostring(b or c) else j.done = a end
            else
                j.done, j.seen = a, b
            end
            if j.finished then
                j.co, j.ended = nil, now
                core.log(j.error and "warn" or "info", "dashboard_action",
                         { action = "dlq_" .. j.action, queue = j.queue, job = id, count = j.done, error = j.error })
            else
                any = true
            end
        elseif now - j.ended > JOB_KEEP then
            self.jobs[id] = nil
        end
    end
    return any
end

local function job_doc(j)
    return { id = j.id, action = j.action, queue = j.queue, filter = j.filter, done = j.done, seen = j.seen,
             total = j.total, started = j.started, ended = j.ended, finished = j.finished, error = j.error }
end

function Dashboard:jobs_doc()
    local list = {}
    for _, j in pairs(self.jobs) do list[#list + 1] = job_doc(j) end
    table.sort(list, function(x, y) return tonumber(x.id) < tonumber(y.id) end)
    return list
end

function Dashboard:job(p)
    local j = type(p.id) == "string" and self.jobs[p.id]
    if not j then fail(404, "no such job (finished over " .. JOB_KEEP .. " s ago?)") end
    return encode(job_doc(j))
end

-- The task's events that the queue's stream still keeps, oldest first.
local function timeline(s, id)
    local f = s:events{ since = "0", task_id = id }
    local list = {}
    if not f then return list end
    for _ = 1, EVENTS_MAX do
        local ev = f:next(0)
        if not ev then break end
        ev.seq = #list
        list[#list + 1] = ev
    end
    -- Writers differ (a producer's events come from its client's thread): by time, then as read.
    table.sort(list, function(x, y)
        local ax, ay = tonumber(x.at) or 0, tonumber(y.at) or 0
        if ax ~= ay then return ax < ay end
        return x.seq < y.seq
    end)
    for _, ev in ipairs(list) do ev.seq = nil end
    return list
end

function Dashboard:task(p)
    if type(p.id) ~= "string" or p.id == "" then fail(400, "id: a task id is needed") end
    local s = self:shown(p.queue)
    local t = self.has_storage and must(s:get_task(p.id)) or nil
    local qs = t and t.queue and t.queue ~= s.queue_name and self:sched(t.queue) or s
    local events = timeline(qs, p.id)
    local doc = { task_id = p.id, queue = qs.queue_name, storage = self.has_storage, found = t ~= nil }
    local text = json.encode_strict(doc):sub(1, -2) .. ',"events":' .. json.array(events)
    if t then
        local h, a = json.array(t.history), json.array(t.artifacts)
        t.history, t.artifacts = nil, nil
        text = text .. ',"task":' .. json.encode_strict(t):sub(1, -2) .. ',"history":' .. h .. ',"artifacts":' .. a .. "}"
    end
    return core.escape(text .. "}", "json_text")
end

local TASK_OPS = { cancel = true, pause = true, resume = true, retry = true }

function Dashboard:task_action(p, op)
    if type(p.id) ~= "string" or p.id == "" then fail(400, "id: a task id is needed") end
    local s = self:shown(p.queue)
    local rec = self.has_storage and must(s:storage():get(p.id)) or nil
    if op == "retry" and not rec then fail(409, "retry needs the task's stored state (--database-url)") end
    local message = type(p.message) == "string" and p.message ~= "" and p.message or nil
    if rec then
        -- The admin command's checks: an operation that makes no sense is refused.
        local ok, err = pcall(self.cli.check_state, op, p.id, rec, { message = message })
        if not ok then fail(409, type(err) == "table" and err.fail or tostring(err)) end
        if rec.queue and rec.queue ~= s.queue_name then s = self:sched(rec.queue) end
    end
    local res
    if op == "retry" then
        -- A retry's run repeats the task's own, whose deduplication key may still be held.
        local rs = scheduler.new(self:section(s.queue_name, { dedup = false }), nil, self.storage_section)
        local ok, r = pcall(self.cli.retry, rs, p.id, rec)
        rs:close()
        if not ok then fail(409, type(r) == "table" and r.fail or tostring(r)) end
        res = r
    else
        local sent, status = s[op](s, p.id, op == "resume" and message and { message } or nil)
        if not sent then fail(502, tostring(status)) end
        res = status
    end
    core.log("info", "dashboard_action", { action = "task_" .. op, queue = s.queue_name, task_id = p.id })
    return encode({ task_id = p.id, operation = op, result = res, queue = s.queue_name })
end

function Dashboard:task_list(p)
    if not self.has_storage then fail(409, "listing tasks needs the task storage (--database-url)") end
    local state = type(p.state) == "string" and p.state ~= "" and p.state or nil
    if state and not (storage_mod.OPEN[state] or storage_mod.TERMINAL[state]) then fail(400, "unknown state") end
    local context = type(p.context) == "string" and p.context ~= "" and p.context or nil
    local offset = math.min(TASKS_OFFSET_MAX, math.max(0, math.tointeger(p.offset) or 0))
    local limit = math.min(TASKS_PAGE_MAX, math.max(1, math.tointeger(p.limit) or 50))
    -- one more than the page: whether there is an older page
    local list = must(self:shown(p.queue):list_tasks{ state = state, context = context, limit = limit + 1,
                                                      offset = offset })
    local rows = {}
    for i = 1, math.min(#list, limit) do
        local t = list[i]
        rows[i] = { task_id = t.task_id, state = t.state, context_id = t.context_id, attempts = t.attempts,
                    worker = t.worker, queue = t.queue, updated_at = t.updated_at }
    end
    return '{"offset":' .. offset .. ',"limit":' .. limit .. ',"more":' .. tostring(#list > limit)
           .. ',"tasks":' .. core.escape(json.array(rows), "json_text") .. "}"
end

-- ---- HTTP ----------------------------------------------------------------------------------

function Dashboard:reply(req, status, body, ctype, extra)
    local h = {}
    for k, v in pairs(HEADERS) do h[k] = v end
    for k, v in pairs(extra or {}) do h[k] = v end
    return self.server:reply(req.id, status, body, ctype or "application/json", h)
end

-- The host name of a Host header: "127.0.0.1:7373" -> "127.0.0.1", "[::1]:7373" -> "::1".
local function host_name(h)
    if not h then return nil end
    return (h:match("^%[([^%]]*)%]") or h:match("^([^:]*)")):lower()
end

-- Where the request says it was sent: with no token, only a name of this machine will do.
function Dashboard:host_ok(req)
    return self.token ~= nil or LOOPBACK[host_name(req.host) or ""] == true
end

function Dashboard:authorized(req)
    if not self.token then return true end
    local a = req.authorization or ""
    local got = a:match("^[Bb]earer%s+(%S+)%s*$")
    if not got then
        local b = a:match("^[Bb]asic%s+(%S+)%s*$")
        got = b and base64_decode(b):match("^[^:]*:(.*)$")
    end
    return got ~= nil and core.equal_ct(got, self.token)
end

local function page_html(self)
    local html = require("binduq.dashboard.page")
    return (html:gsub("{{([%w_]+)}}", {
        csrf = self.csrf, read_only = self.read_only and "1" or "0", storage = self.has_storage and "1" or "0",
        version = tostring(require("binduq")._VERSION),
    }))
end

local GETS = {
    ["/api/overview"] = function(self) return self:overview() end,
    ["/api/dead"] = function(self, p) return self:dead_list(p) end,
    ["/api/dead-entry"] = function(self, p) return self:dead_entry(p) end,
    ["/api/task"] = function(self, p) return self:task(p) end,
    ["/api/tasks"] = function(self, p) return self:task_list(p) end,
    ["/api/job"] = function(self, p) return self:job(p) end,
    ["/api/schedules"] = function(self, p) return self:schedules(p) end,
}

function Dashboard:get(req)
    local path = req.path
    if path == "/" or path == "/index.html" then
        return self:reply(req, 200, page_html(self), "text/html; charset=utf-8")
    elseif path == "/app.js" then
        return self:reply(req, 200, require("binduq.dashboard.script"), "text/javascript; charset=utf-8")
    elseif path == "/app.css" then
        return self:reply(req, 200, require("binduq.dashboard.style"), "text/css; charset=utf-8")
    elseif path == "/api/stream" then
        local first = self:overview_event()
        if not self.server:stream(req.id, "text/event-stream", HEADERS) then return end
        if self.server:send(req.id, "retry: 2000\n" .. first) then
            self.streams[#self.streams + 1] = req.id
        end
        return
    end
    local route, arg = path:match("^(/api/[%w%-]+)/?(%x*)$")
    local fn = route and GETS[route]
    if not fn then return self:reply(req, 404, encode({ error = "not found" })) end
    local p = {}
    if arg ~= "" then
        local text = unhex(arg)
        p = text and json.decode(text)
        if type(p) ~= "table" then fail(400, "the path's parameters are not hex-encoded JSON") end
    end
    return self:reply(req, 200, fn(self, p))
end

function Dashboard:post(req)
    if self.read_only then fail(403, "the dashboard is read-only") end
    if req.origin and req.origin ~= "http://" .. tostring(req.host) and req.origin ~= "https://" .. tostring(req.host) then
        fail(403, "a POST from another origin is refused")
    end
    if not (req.content_type or ""):lower():match("^application/json%s*;?") then
        fail(415, "POST needs Content-Type: application/json")
    end
    local p = json.decode(req.body)
    if type(p) ~= "table" or type(p.csrf) ~= "string" or not core.equal_ct(p.csrf, self.csrf) then
        fail(403, "missing or wrong CSRF token: reload the page")
    end
    local verb = req.path:match("^/api/dead/(%l+)$")
    if verb == "requeue" or verb == "delete" then
        local body, status = self:dead_action(p, verb)
        return self:reply(req, status or 200, body)
    end
    local sv = req.path:match("^/api/schedule/(%l+)$")
    if sv == "pause" or sv == "resume" then return self:reply(req, 200, self:schedule_action(p, sv)) end
    local what = req.path:match("^/api/task/(%l+)$")
    if what and TASK_OPS[what] then return self:reply(req, 200, self:task_action(p, what)) end
    fail(404, "not found")
end

--- Handles one request (embedded: one whose path is the prefix or under it).
function Dashboard:handle(req)
    if self.prefix then
        if req.path == self.prefix then -- the page's relative URLs need the slash
            return self:reply(req, 308, "", "text/plain", { Location = self.prefix .. "/" })
        end
        req.path = req.path:sub(#self.prefix + 1)
    end
    local ok, err = pcall(function()
        if not self:host_ok(req) then
            return self:reply(req, 403, encode({ error = "the Host header must name this machine (127.0.0.1, localhost, ::1) "
                                                          .. "when the dashboard has no token" }))
        end
        if not self:authorized(req) then
            return self:reply(req, 401, encode({ error = "a token is required" }), nil,
                              { ["WWW-Authenticate"] = 'Basic realm="binduq dashboard", charset="UTF-8"' })
        end
        if req.method == "GET" then return self:get(req) end
        if req.method == "POST" then return self:post(req) end
        return self:reply(req, 405, encode({ error = "method not allowed" }), nil, { Allow = "GET, POST" })
    end)
    if not ok then
        local status, msg = 500, "internal error"
        if type(err) == "table" and err.status then
            status, msg = err.status, err.message
        elseif type(err) == "table" and err.fail then -- an admin command's data function
            status, msg = 502, tostring(err.fail)
        else
            core.log("error", "dashboard_failed", { path = req.path, error = tostring(err) })
        end
        self:reply(req, status, encode({ error = msg }))
    end
end

-- The overview as one server-sent event; a `problem` event with the error when it cannot
-- be read (the page keeps its last figures and says why they are not updated).
function Dashboard:overview_event()
    local ok, doc = pcall(self.overview, self)
    if ok then return "data: " .. doc .. "\n\n" end
    if type(doc) == "table" then doc = doc.fail or doc.message end
    return "event: problem\ndata: " .. encode({ error = tostring(doc) }) .. "\n\n"
end

-- Sends the overview to every open stream, at most once a second; drops the streams whose
-- reader is gone.
function Dashboard:tick()
    if next(self.jobs) then self.busy = self:advance_jobs() end
    if #self.streams == 0 or core.monotonic() < self.next_tick then return end
    self.next_tick = core.monotonic() + 1
    local msg = self:overview_event()
    local kept = {}
    for _, id in ipairs(self.streams) do
        if self.server:send(id, msg) then kept[#kept + 1] = id end
    end
    self.streams = kept
end

--- Waits up to `timeout` seconds for requests and handles them; sends the overview to the
-- open streams once a second. Returns false once the server stops.
function Dashboard:step(timeout)
    local wait = math.min(timeout or 1, self:due_in())
    local req = self.server:next(wait)
    if req == false then return false end
    for _ = 1, 64 do
        if not req then break end
        if not req.event then self:handle(req) end
        req = self.server:next(0)
        if req == false then return false end
    end
    self:tick()
    return true
end

--- Serves until SIGTERM or SIGINT (or `seconds` pass).
function Dashboard:run(seconds)
    core.trap_signals()
    local stop_at = seconds and core.monotonic() + seconds
    core.log("info", "dashboard_listening", { port = self:port(), read_only = self.read_only, token = self.token ~= nil })
    while not core.take_signal() and not (stop_at and core.monotonic() > stop_at) do
        if not self:step(0.25) then break end
    end
    core.untrap_signals()
    self:close()
end

-- When the next tick is due: the host's loop waits no longer than this while streams are open.
function Dashboard:due_in()
    if self.busy then return 0 end -- a bulk action goes on
    if #self.streams == 0 then return math.huge end
    return math.max(0, self.next_tick - core.monotonic())
end

function Dashboard:close()
    if self.server then
        for _, id in ipairs(self.streams) do self.server:finish(id) end
        self.streams = {}
        if not self.shared then self.server:close() end
        self.server = nil
    end
    for q, s in pairs(self.scheds) do
        s:close()
        self.scheds[q] = nil
    end
    self.nscheds = 0
end
Dashboard.__close = Dashboard.close
Dashboard.__gc = Dashboard.close

--- binduq-lua dashboard (binduq.cli): opts are its parsed options. Returns 0 once stopped;
-- raises {usage=} or {fail=} as the other commands do.
function M.main(opts)
    local host, port = "127.0.0.1", 7373
    if opts.addr then
        local h, p = opts.addr:match("^%[?([^%]]-)%]?:(%d+)$")
        if not h then error({ usage = "--addr must be HOST:PORT" }) end
        host, port = h, tonumber(p)
    end
    local queues
    if opts.queue then
        queues = {}
        for q in opts.queue:gmatch("[^,]+") do queues[#queues + 1] = q end
    end
    local db = opts.database_url or core.env("DATABASE_URL") or core.env("POSTGRES_URL")
    if db == "" then db = nil end
    local ok, d, err = pcall(M.new, {
        url = opts.url, queues = queues, database_url = db, schema = opts.schema, host = host, port = port,
        token = opts.token or core.env("BINDUQ_DASHBOARD_TOKEN"), read_only = opts.read_only == true,
    })
    if not ok then error({ fail = type(d) == "table" and (d.message or d.fail) or tostring(d) }) end
    if not d then error({ fail = "cannot listen on " .. host .. ":" .. port .. ": " .. tostring(err) }) end
    io.stdout:write(("dashboard: http://%s:%d/%s\n"):format(host:find(":", 1, true) and "[" .. host .. "]" or host,
                                                           d:port(), d.read_only and " (read-only)" or ""))
    io.stdout:flush()
    d:run()
    return 0
end

M.Dashboard = Dashboard
M.fingerprint = fingerprint
M.minutes_of = minutes_of
return M

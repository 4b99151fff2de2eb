--- binduq.worker: runs the script's handlers for task operations fetched from the queue.
--
--   local w = bq.worker{
--       scheduler = { url = ..., queue_name = ... },   -- optional; environment and defaults
--       concurrency = 4,                                -- handler states (threads)
--       tasks_per_state = 1,                            -- tasks a state runs at once (coroutines)
--       handlers = { run = function(task, ctx) return "result" end },
--       on_result = function(r) print(r.task_id, r.state, r.result) end,  -- optional, main state
--   }
--   w:run()      -- until SIGINT/SIGTERM, then drains gracefully
--   w:start()    -- or: start in the background,
--   w:drain()    -- ... and later stop once the queue is empty and nothing runs
--
-- Each of the `concurrency` handler states is a separate Lua state on its own thread that
-- runs this same script up to w:start() / w:run() / w:drain() and stops there (see
-- src/lua/l_slot.c). Code above that line therefore runs once per handler state as well:
-- keep one-time side effects below it, or guard them with `if bq.role == "main"`.

local core = require("binduq.core")
local config = require("binduq.config")
local json = require("binduq.json")
local lifecycle = require("binduq.lifecycle")
local recurring = require("binduq.recurring")
local scheduler = require("binduq.scheduler")
local storage_mod = require("binduq.storage")
local task_mod = require("binduq.task")

local M = {}

local Worker = {}
Worker.__index = Worker
Worker.__name = "binduq.Worker"

local ROLE = core.role()

function Worker.__tostring(w)
    return ("binduq.Worker %s (%s)"):format(w.key, w.engine and "running" or "idle")
end

-- handlers = "app.handlers": the module, loaded by require, returns the handlers table, or
-- a table { handlers = {...}, on_failure = f, rate_key = f } when it has policy functions too.
-- Returns the handlers table and the module's policy functions.
local function handlers_module(name, level)
    local ok, mod = pcall(require, name)
    if not ok then error("handlers module '" .. name .. "': " .. tostring(mod), level) end
    if type(mod) ~= "table" then
        error("handlers module '" .. name .. "' must return a table of handlers (got " .. type(mod) .. ")", level)
    end
    if mod.handlers == nil then return mod, {} end
    if type(mod.handlers) ~= "table" then
        error("handlers module '" .. name .. "': its handlers field must be a table", level)
    end
    for k, v in pairs(mod) do
        if k ~= "handlers" and k ~= "on_failure" and k ~= "rate_key" then
            error("handlers module '" .. name .. "': unknown field '" .. tostring(k)
                  .. "' (expected handlers, on_failure, rate_key)", level)
        end
        if k ~= "handlers" and type(v) ~= "function" then
            error("handlers module '" .. name .. "': " .. k .. " must be a function", level)
        end
    end
    return mod.handlers, { on_failure = mod.on_failure, rate_key = mod.rate_key }
end

local function check_handlers(opts, level)
    local handlers = {}
    if opts.handler then handlers.run = opts.handler end
    local given = opts.handlers
    if type(given) == "string" then given = handlers_module(given, level + 1) end
    for k, v in pairs(given or {}) do
        if not task_mod.TYPES[k] then
            error("handlers: unknown operation '" .. tostring(k) .. "' (expected run, pause, resume, cancel)"
                  .. config.did_you_mean(k, task_mod.TYPES), level)
        end
        if type(v) ~= "function" then error("handlers." .. k .. " must be a function", level) end
        handlers[k] = v
    end
    if next(handlers) == nil then error("a worker needs handlers (handlers = { run = function(task, ctx) ... end })", level) end
    return handlers
end

--- Creates a worker. Raises on invalid options.
function M.new(opts, level)
    level = (level or 1) + 1
    opts = opts or {}
    config.check(opts, config.WORKER_KEYS, "options", level)
    local section = config.scheduler_section({ scheduler = opts.scheduler or {}, storage = opts.storage }, level)
    local storage_section = storage_mod.section(opts.storage, level)
    local recovery_after = opts.recovery_after or 60
    -- Metrics: off unless metrics_port or BINDUQ_METRICS_ADDR ("[host:]port") says so.
    local mhost, mport = opts.metrics_host, opts.metrics_port
    local env_addr = os.getenv("BINDUQ_METRICS_ADDR")
    if mport == nil and env_addr and env_addr ~= "" then
        local h, p = env_addr:match("^%[?([^%]]*)%]?:(%d+)$")
        if not p then p = env_addr:match("^(%d+)$") end
        if not p then error("BINDUQ_METRICS_ADDR must be [host:]port (got '" .. env_addr .. "')", level) end
        mhost, mport = (h ~= "" and h) or mhost, tonumber(p)
    end
    if mport ~= nil and (math.type(mport) ~= "integer" or mport < 0 or mport > 65535) then
        error("metrics_port must be a port number (0: any free port)", level)
    end
    -- Every duration: a finite number of seconds, at least `min`, at most 365 days.
    -- (It raises one level further from the caller than new does.)
    local function duration(name, v, min)
        if v ~= nil then
            local why = core.duration_problem(v)
            if why then error(name .. " " .. why .. " (got " .. tostring(v) .. ")", level + 1) end
            if v < (min or 0) then
                error(name .. " must be at least " .. (min or 0) .. " (got " .. tostring(v) .. ")", level + 1)
            end
        end
        return v
    end
    duration("recovery_after", recovery_after)
    local defaults = core.defaults()
    local c = opts.concurrency or defaults.concurrency
    if math.type(c) ~= "integer" or c < 1 or c > 4096 then
        error("concurrency must be a whole number from 1 to 4096 (got " .. tostring(opts.concurrency) .. ")", level)
    end
    local per = opts.tasks_per_state or 1
    if math.type(per) ~= "integer" or per < 1 or per > 10000 then
        error("tasks_per_state must be a whole number from 1 to 10000 (got " .. tostring(opts.tasks_per_state) .. ")",
              level)
    end
    -- Bindu's POLL_TIMEOUT / REDIS_POLL_TIMEOUT (its BLPOP timeout, seconds) if not given
    local poll = core.env("POLL_TIMEOUT") and "POLL_TIMEOUT" or core.env("REDIS_POLL_TIMEOUT") and "REDIS_POLL_TIMEOUT"
    local bt = opts.block_timeout
    if bt == nil and poll then
        bt = tonumber(core.env(poll))
        if not bt then error(poll .. ": expected a number of seconds, got '" .. core.env(poll) .. "'", level) end
    end
    bt = duration(opts.block_timeout == nil and poll or "block_timeout", bt) or defaults.block_timeout
    if bt <= 0 then error("block_timeout must be positive", level) end
    local mms = opts.max_message_size or defaults.max_message_size
    if math.type(mms) ~= "integer" or mms < 64 then
        error("max_message_size must be a whole number of bytes, at least 64", level)
    end
    local delivery = opts.delivery or defaults.delivery
    if delivery ~= "at-least-once" and delivery ~= "at-most-once" then
        error('delivery must be "at-least-once" or "at-most-once"', level)
    end
    local lease = duration("lease", opts.lease, 0.3) or defaults.lease
    local env_shutdown = os.getenv("BINDUQ_SHUTDOWN_TIMEOUT")
    if env_shutdown and env_shutdown ~= "" and not tonumber(env_shutdown) then
        error("BINDUQ_SHUTDOWN_TIMEOUT must be a number of seconds (got '" .. env_shutdown .. "')", level)
    end
    local shutdown = duration("shutdown_timeout", opts.shutdown_timeout or tonumber(env_shutdown or ""))
                     or defaults.shutdown_timeout
    local timeout = duration("timeout", opts.timeout) or defaults.timeout
    local max_attempts = opts.max_attempts or defaults.max_attempts
    if math.type(max_attempts) ~= "integer" or max_attempts < 1 then
        error("max_attempts must be a whole number, at least 1", level)
    end
    local retry_base = duration("retry_base", opts.retry_base, 0) or defaults.retry_base
    local retry_cap = duration("retry_cap", opts.retry_cap, retry_base) or math.max(defaults.retry_cap, retry_base)
    -- Priority: an ordered list of queues, strict unless weights are given.
    local queues = opts.queues
    if queues ~= nil then
        if #queues < 1 or #queues > 16 then error("queues needs 1 to 16 queue names", level) end
        local seen = {}
        for i, q in ipairs(queues) do
            if type(q) ~= "string" or q == "" then error("queues[" .. i .. "] must be a queue name", level) end
            if seen[q] then error("queue '" .. q .. "' is listed twice", level) end
            seen[q] = true
        end
        local url = section.url or core.env("REDIS_URL") or ""
        if #queues > 1 and url:match("^rediss?%+cluster://") then
            local slot = core.key_slot(queues[1])
            for _, q in ipairs(queues) do
                if core.key_slot(q) ~= slot then
                    error("queues fetched together must share a hash tag in Cluster mode ('" .. queues[1]
                          .. "' and '" .. q .. "' are in different slots; name them like {bindu}:tasks:high)", level)
                end
            end
        end
    end
    local weights = opts.weights
    if weights ~= nil then
        if #weights ~= #(queues or { 1 }) then error("weights needs one weight per queue", level) end
        for i, wt in ipairs(weights) do
            if math.type(wt) ~= "integer" or wt < 1 then error("weights[" .. i .. "] must be a whole number >= 1", level) end
        end
    end
    local batch = opts.batch or 128
    if math.type(batch) ~= "integer" or batch < 0 or batch > 4096 then
        error("batch must be a whole number from 0 to 4096", level)
    end
    local prefetch = opts.prefetch or 0
    if math.type(prefetch) ~= "integer" or prefetch < 0 or prefetch > 4096 then
        error("prefetch must be a whole number from 0 to 4096", level)
    end
    local rl = opts.rate_limit
    if rl ~= nil then
        config.check(rl, { limit = "number", period = "number" }, "rate_limit", level)
        if math.type(rl.limit) ~= "integer" or rl.limit < 1 then error("rate_limit.limit must be a whole number >= 1", level) end
        if not rl.period or rl.period <= 0 or core.duration_problem(rl.period) then
            error("rate_limit.period must be a positive number of seconds, at most 365 days", level)
        end
    end
    -- The key pairs this worker with its twin in each handler state, which runs the same
    -- script: the explicit name, or where bq.worker was called.
    local key = opts.name
    if key == nil then
        local site = debug.getinfo(level, "Sl")
        key = site and (site.short_src .. ":" .. tostring(site.currentline)) or "worker"
    end
    local module = type(opts.handlers) == "string" and opts.handlers or nil
    local policy_fns = {}
    if module then
        if opts.handler then error("handler and a handlers module cannot be given together", level) end
        for _, f in ipairs({ "on_failure", "rate_key" }) do
            if opts[f] ~= nil then
                error(f .. " must come from the handlers module '" .. module .. "' (its handler states load "
                      .. "only the module)", level)
            end
        end
        policy_fns = select(2, handlers_module(module, level + 1))
    end
    -- The web dashboard (docs/dashboard.md): true or {addr=, token=, read_only=, queues=};
    -- served by the main state's loop (w:run(), w:drain()) on a listener of its own.
    local dash = opts.dashboard
    if dash ~= nil and dash ~= false then
        dash = dash == true and {} or dash
        config.check(dash, { addr = "string", token = "string", read_only = "boolean", queues = "table" }, "dashboard",
                     level)
        local addr = dash.addr or core.env("BINDUQ_DASHBOARD_ADDR") or "127.0.0.1:7373"
        local h, p = addr:match("^%[?([^%]]-)%]?:(%d+)$")
        if not h then error("dashboard.addr must be host:port (got '" .. addr .. "')", level) end
        dash = { host = h, port = tonumber(p), token = dash.token or core.env("BINDUQ_DASHBOARD_TOKEN"),
                 read_only = dash.read_only, queues = dash.queues }
    else
        dash = nil
    end
    -- Recurring schedules (binduq.recurring): checked in every state, kept by the main one.
    local schedules = opts.schedules ~= nil and recurring.check(opts.schedules, level) or nil
    local self = setmetatable({
        key = key,
        module = module,
        handlers = check_handlers(opts, level + 1),
        section = section,
        storage_section = storage_section,
        recovery_after = recovery_after,
        metrics_host = mhost or "127.0.0.1",
        metrics_port = mport,
        dashboard_opts = dash,
        concurrency = c,
        tasks_per_state = per,
        block_timeout = bt,
        max_message_size = mms,
        on_result = opts.on_result,
        script = opts.script,
        args = opts.args,
        delivery = delivery,
        lease = lease,
        shutdown_timeout = shutdown,
        timeout = timeout,
        max_attempts = max_attempts,
        on_failure = opts.on_failure or policy_fns.on_failure,
        retry_base = retry_base,
        retry_cap = retry_cap,
        queues = queues,
        weights = weights,
        prefetch = prefetch,
        batch = batch,
        rate_limit = rl,
        rate_key = opts.rate_key or policy_fns.rate_key,
    }, Worker)
    if ROLE == "main" then
        -- Opening the scheduler checks the configuration now (a bad URL fails here, not
        -- at start) and gives the main state a producer for w:schedule().
        self.scheduler = scheduler.new(section, level, storage_section)
        if schedules and #schedules > 0 then self.recurring = recurring.new(self.scheduler, schedules) end
    end
    return self
end

-- ---- Handler states: binduq.lifecycle ------------------------------------------------------

local Context = lifecycle.Context

-- ---- Main state ----------------------------------------------------------------------------

-- The script the handler states load: the innermost main chunk on the caller's stack (the
-- user's script, or the module whose top level started the worker).
local function find_script()
    local level = 3
    while true do
        local info = debug.getinfo(level, "S")
        if not info then return nil end
        if info.what == "main" then return info.source end
        level = level + 1
    end
end

local function copy_args(t)
    local out = {}
    for k, v in pairs(t or {}) do
        if math.type(k) == "integer" then out[k] = tostring(v) end
    end
    return out
end

function Worker:_start(drain, level)
    level = level + 1
    if ROLE == "handler" then
        local info = core.slot_info()
        if core.slot_ready(self.key, lifecycle.make_process(self, info)) then
            -- This handler state serves this worker: the script stops here for good.
            coroutine.yield()
            error("unreachable: a handler state was resumed", level)
        end
        return self
    end
    if self.engine then error("worker already started", level) end
    local script = self.script
    if not script and not self.module then
        local src = find_script()
        if not src or src:sub(1, 1) ~= "@" then
            error("worker:start() needs the script file that defines the handlers: handler states load it "
                  .. "again. Run from a file, or pass script = \"path.lua\" (the caller's chunk is "
                  .. tostring(src) .. ")", level)
        end
        script = src:sub(2)
    end
    local engine = core.engine({
        scheduler = self.section,
        concurrency = self.concurrency,
        tasks_per_state = self.tasks_per_state,
        block_timeout = self.block_timeout,
        max_message_size = self.max_message_size,
        want_results = self.on_result ~= nil,
        delivery = self.delivery,
        lease = self.lease,
        shutdown_timeout = self.shutdown_timeout,
        policy = json.encode({ max_attempts = self.max_attempts, timeout = self.timeout,
                               retry_base = self.retry_base, retry_cap = self.retry_cap,
                               rate_limit = self.rate_limit }),
        queues = self.queues,
        weights = self.weights,
        prefetch = self.prefetch,
        batch = self.batch,
        script = script,
        module = self.module,
        args = copy_args(self.args or arg),
        path = package.path,
        cpath = package.cpath,
        worker_key = self.key,
        storage = self.scheduler:storage(),
    })
    local ok, err = engine:start(drain)
    if not ok then
        engine:close()
        error(err, level)
    end
    self.engine = engine
    if self.metrics_port then
        local bound, merr = core.metrics_serve(self.metrics_host, self.metrics_port)
        if not bound then
            engine:stop()
            engine:join()
            engine:close()
            self.engine = nil
            error("metrics: " .. tostring(merr), level)
        end
        self.metrics_port = bound
    end
    if self.dashboard_opts then
        local d = self.dashboard_opts
        local sched = {}
        for k, v in pairs(self.section) do sched[k] = v end
        local dok, dsh, derr = pcall(require("binduq.dashboard").new, {
            scheduler = sched, storage = self.storage_section, queue = self.scheduler.queue_name, queues = d.queues,
            host = d.host, port = d.port, token = d.token, read_only = d.read_only,
        })
        if not dok or not dsh then
            engine:stop()
            engine:join()
            engine:close()
            self.engine = nil
            error("dashboard: " .. tostring(dok and derr or dsh), level)
        end
        self.dashboard = dsh
        core.log("info", "dashboard_listening", { port = dsh:port(), read_only = dsh.read_only, token = dsh.token ~= nil })
    end
    return self
end

-- A handler state of a worker whose handlers live in a module (handlers = "app.handlers"):
-- called by the engine (src/lua/l_slot.c) in place of running the script. It loads the
-- module and serves the worker; true if this state now serves it.
function M._serve_module(module, worker_key)
    local handlers, fns = handlers_module(module, 1)
    local w = { handlers = check_handlers({ handlers = handlers }, 1), on_failure = fns.on_failure,
                rate_key = fns.rate_key }
    return core.slot_ready(worker_key, lifecycle.make_process(w, core.slot_info()))
end

--- Starts the worker in the background (the main state's script goes on). Raises if a
-- handler state cannot load the script.
function Worker:start()
    self:_start(false, 2)
    return self
end

local function result_of(ev)
    local r = { task_id = ev.task_id, type = ev.type, state = ev.state, duration = ev.duration,
                attempt = ev.attempt, delay = ev.delay, task_state = ev.task_state }
    if ev.state == "completed" then
        r.result = ev.json and json.decode(ev.json) or nil
        if r.result == json.null then r.result = nil end
    else
        r.reason = ev.reason
        r.error = ev.json and json.decode(ev.json) or nil
    end
    return r
end

-- The recovery sweep (PostgreSQL or Redis storage): a task recorded as submitted that never started
-- and is older than recovery_after seconds may have been lost between the producer's store
-- and its push (a crash). It is pushed again under the run's deduplication key, so a task
-- whose run is still queued (its key held) is not pushed twice. Returns how many it pushed.
function Worker:sweep()
    local s = self.scheduler
    local recs, err = s.store:list{ state = "submitted", older_than = self.recovery_after, limit = 500 }
    if not recs then
        core.log("warn", "recovery_sweep_failed", { error = err })
        return 0
    end
    local n = 0
    for _, r in ipairs(recs) do
        if r.attempts == 0 then
            local ok, msg = pcall(task_mod.encode, { type = "run", task_id = r.id, conversation_id = r.context_id,
                                                    messages = json.decode(r.history) or {} }, 1)
            if ok then
                local pushed = s.client:push_unique({ msg }, { "run:" .. r.id }, s.dedup_ttl, r.queue or s.queue_name)
                if pushed and pushed[1] then
                    n = n + 1
                    core.log("warn", "recovered_submitted", { task_id = r.id, queue = r.queue or s.queue_name })
                end
            else
                core.log("error", "recovery_failed", { task_id = r.id, error = tostring(msg) })
            end
        end
    end
    return n
end

-- Waits for events until the engine stops; SIGINT/SIGTERM stop it gracefully.
function Worker:_wait()
    local engine = self.engine
    local on_result = self.on_result
    core.trap_signals()
    local stopping = false
    local sweeping = self.recovery_after > 0 and self.scheduler.store:kind() ~= "memory"
    local period = sweeping and math.max(1, math.min(60, self.recovery_after / 2)) or -1
    local next_sweep = core.monotonic() + (sweeping and period or 0)
    local rec = self.recurring
    local dash = self.dashboard
    local dfd = dash and dash.server:fd()
    local ok, err = pcall(function()
        while true do
            local wait = sweeping and math.max(0, next_sweep - core.monotonic()) or -1
            if rec and not stopping then
                rec:fire()
                local r = rec:due_in()
                if r < math.huge and (wait < 0 or r < wait) then wait = r end
            end
            if dash then
                local d = dfd and dash:due_in() or math.min(dash:due_in(), 0.25) -- (no fd: look 4 times a second)
                if d < math.huge and (wait < 0 or d < wait) then wait = d end
            end
            local ev = engine:next_event(wait, dfd)
            if dash then dash:step(0) end
            if sweeping and not stopping and core.monotonic() >= next_sweep then
                self:sweep()
                next_sweep = core.monotonic() + period
            end
            -- ev == nil: the wait timed out, only the sweep was due.
            if ev == nil then -- luacheck: ignore 542
            elseif ev.kind == "result" then
                if on_result then on_result(result_of(ev)) end
            elseif ev.kind == "signal" then
                local sig = core.take_signal()
                if not stopping then
                    core.log("info", "shutdown", { signal = sig, worker = engine:id(),
                                                   deadline_s = self.shutdown_timeout })
                    engine:stop()
                    stopping = true
                elseif sig then
                    -- A second signal: hand every task back now and leave.
                    core.log("warn", "shutdown_now", { signal = sig, worker = engine:id() })
                    engine:abort()
                    io.stdout:flush()
                    os.exit(sig == "SIGINT" and 130 or 143, false)
                end
            elseif ev.kind == "stopped" then
                return
            end
        end
    end)
    core.untrap_signals()
    if dash then
        dash:close()
        self.dashboard = nil
    end
    if not ok then engine:stop() end
    engine:join()
    self.stats = engine:stats()
    engine:close()
    self.engine = nil
    if not ok then error(err, 0) end
    return self.stats
end

--- Runs until SIGINT or SIGTERM, then stops fetching, lets running handlers finish and
-- returns the worker's counters.
function Worker:run()
    if ROLE == "handler" then
        self:_start(false, 2) -- does not return when this handler state serves this worker
        return self
    end
    if not self.engine then self:_start(false, 2) end
    local stats = self:_wait()
    return stats
end

--- Processes what is queued and returns once the queue is empty and no handler runs.
function Worker:drain()
    if ROLE == "handler" then
        self:_start(true, 2)
        return self
    end
    if not self.engine then
        self:_start(true, 2)
    else
        self.engine:drain()
    end
    local stats = self:_wait()
    return stats
end

--- Delivers the worker's pending results to on_result, waiting up to `timeout` seconds for
-- the first (0: do not wait). For a main state that produces and consumes in one loop.
-- Returns the number of results delivered, or false once the worker has stopped. The
-- worker's schedules fire meanwhile, as in w:run().
function Worker:poll(timeout)
    local engine = self.engine
    if not engine then error("poll: the worker is not running", 2) end
    local rec = self.recurring
    local n, first = 0, true
    local deadline = core.monotonic() + (timeout or 0)
    while true do
        local wait = first and math.max(0, deadline - core.monotonic()) or 0
        if rec then
            rec:fire()
            wait = math.min(wait, rec:due_in())
        end
        local ev = engine:next_event(wait)
        -- nil: the wait ended; a schedule's may have cut it short, then wait on.
        if ev == nil and (not first or core.monotonic() >= deadline) then return n end
        if ev == nil then -- luacheck: ignore 542
        elseif ev.kind == "result" then
            n = n + 1
            if self.on_result then self.on_result(result_of(ev)) end
        elseif ev.kind == "stopped" then
            engine:join()
            self.stats = engine:stats()
            engine:close()
            self.engine = nil
            return false
        end
        if ev ~= nil then first = false end
    end
end

--- The facts /healthz and /readyz serve, as a table: {alive=true, ready=, reason=,
-- redis=, storage=, draining=}.
function Worker:health_check()
    local h = { alive = true, draining = self.engine == nil }
    local sh = self.scheduler and self.scheduler:health_check() or {}
    h.redis = sh.rtt ~= nil
    h.storage = sh.storage_ok == true
    h.ready = sh.ok == true and not h.draining
    h.reason = (h.draining and "not running") or sh.error
    return h
end

--- The Prometheus text this process serves on /metrics.
function Worker:metrics()
    return core.metrics_render()
end

--- Asks a running worker to stop gracefully (from on_result, for example).
function Worker:stop()
    if self.engine then self.engine:stop() end
end

--- Schedules through the worker's own queue (main state only).
function Worker:schedule(op)
    if not self.scheduler then error("schedule from a handler: use bq.scheduler{...}", 2) end
    return self.scheduler:schedule(op)
end

function Worker:close()
    if self.engine then
        self.engine:stop()
        self.engine:join()
        self.engine:close()
        self.engine = nil
    end
    if self.scheduler then self.scheduler:close() end
end
Worker.__close = Worker.close

M.Worker = Worker
M.Context = Context
return M

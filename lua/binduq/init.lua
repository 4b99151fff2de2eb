--- binduq: a distributed task scheduler for AI-agent workloads.
--
--   local bq = require("binduq")
--   bq.scheduler(opts)   -- producer: schedule run / pause / resume / cancel
--   bq.worker(opts)      -- consumer: handlers in Lua, mechanism in C
--   bq.fail{code=, message=, retryable=}   -- raise a handler error on purpose
--   bq.http{url=, ...}   -- an HTTP call (ctx:http in a handler)
--
-- With neither REDIS_URL nor a scheduler url, everything runs on the in-memory scheduler of
-- this process; task state is kept in memory unless DATABASE_URL (or a storage section)
-- names PostgreSQL, or STORAGE_TYPE=redis (or storage = { type = "redis" }) the scheduler's
-- Redis. See the README for every option.

local core = require("binduq.core")

local M = {
    _VERSION = core.version,
    --- "main" in the script's own state, "handler" in a worker's handler states.
    role = core.role(),
}

--- Opens a scheduler (producer). See binduq.scheduler.
-- (Not tail calls: the constructors find their caller's line two levels up.)
function M.scheduler(opts)
    local s = require("binduq.scheduler").new(opts, 2)
    return s
end

--- Creates a worker. See binduq.worker.
function M.worker(opts)
    local w = require("binduq.worker").new(opts, 2)
    return w
end

--- Raises a handler error: bq.fail("message") or bq.fail{code=, message=, retryable=false}.
function M.fail(t)
    require("binduq.errors").fail(t, 2)
end

--- An HTTP call: bq.http{url=, method=, headers=, body=, timeout=, on_event=, ...} -> response
-- | nil, msg, code [, response]. See binduq.http; in a handler use ctx:http, the same call.
function M.http(opts)
    local resp, err, code, failed = require("binduq.http").request(opts, 3)
    return resp, err, code, failed
end

--- The A2A gateway: bq.gateway{scheduler=, storage=, agent=, port=, tokens=, ...}:run().
-- See binduq.gateway.
function M.gateway(opts)
    local g, err, code = require("binduq.gateway").new(opts, 2)
    return g, err, code
end

--- Logs an event: bq.log("info", "event_name", {key = value}).
-- (The C functions themselves: a bad argument is reported at the caller's line.)
M.log = core.log

--- Sets the log level ("debug", "info", "warn", "error", "off") and/or format ("text",
-- "json"), overriding BINDUQ_LOG_LEVEL and BINDUQ_LOG_FORMAT.
M.log_configure = core.log_configure

M.uuid = core.uuid4
M.now = core.now
M.monotonic = core.monotonic
M.iso8601 = core.iso8601
M.sleep = core.sleep
M.defaults = core.defaults

return M

--- binduq.lifecycle.context: what a handler gets besides the task, its `ctx`.
--
-- A ctx holds the task's own fields (task_id, context_id, queue, attempt, and when they
-- apply resumed, trace_id, span_id, admitted_at, saved); what every task of a handler state
-- shares (worker_id, slot, the storage) it finds in the state's prototype, and the methods
-- in Context. The methods that are yield points (sleep, yield, http, checkpoint, progress) raise the
-- pending cancel, pause, timeout or shutdown error.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

local Context = {}
Context.__index = Context
Context.__name = "binduq.Context"
M.Context = Context

--- Sleeps for `seconds` (handlers stand in for slow agent calls with it). A yield point: the
-- sleep ends early, raising an error, on a cancel, a pause, the handler's timeout or a
-- shutdown. `seconds` is finite, from 0 to 365 days: anything else raises, naming it.
function Context:sleep(seconds)
    local why = core.duration_problem(seconds)
    if why then error("ctx:sleep: seconds " .. why .. " (got " .. tostring(seconds) .. ")", 2) end
    core.slot_sleep(seconds)
end

--- A yield point with no other effect: raises the pending cancel, pause, timeout or
-- shutdown error, if any.
function Context:yield()
    core.slot_yield()
end

--- An HTTP call (binduq.http): a yield point while it waits. A cancel, a pause, the handler's
-- timeout or a shutdown closes the transfer and raises the error ctx:sleep raises.
function Context:http(opts)
    local resp, err, code, failed = require("binduq.http").request(opts, 3)
    return resp, err, code, failed
end

--- Stores `value` (any JSON value) as the task's checkpoint, then is a yield point. After a
-- pause, the resumed handler finds it in ctx.saved, on whichever worker runs it.
function Context:checkpoint(value)
    local text, jerr = json.encode(value == nil and json.null or value)
    if not text then error("checkpoint: the value cannot be encoded as JSON: " .. tostring(jerr), 2) end
    local changed, state, requested = self._store:change{ id = self.task_id, from = "working", checkpoint = text }
    if changed == nil then
        error({ code = "ESTORAGE", message = "checkpoint: " .. tostring(state), retryable = true }, 2)
    end
    self.saved = value
    if not changed and state == "canceled" then
        error({ code = "ECANCELED", message = "the task was canceled", retryable = false }, 2)
    end
    if requested == "pause" or requested == "pause-sent" then
        error({ code = "EPAUSED", message = "the task was paused", retryable = false }, 2)
    end
    core.slot_yield()
end

--- Reports progress: `value` (a number, e.g. a fraction from 0 to 1, or any JSON value) and an
-- optional `message` (a string of at most 1,000 bytes) go to the task's queue as a
-- "progress" task event (docs/events.md), which s:events, the gateway's streams and the
-- dashboard follow. Then a yield point, as ctx:checkpoint.
function Context:progress(value, message)
    if value == nil then error("ctx:progress: value is required", 2) end
    if type(value) == "number" and (value ~= value or value == math.huge or value == -math.huge) then
        error("ctx:progress: value must be finite (got " .. tostring(value) .. ")", 2)
    end
    if message ~= nil and (type(message) ~= "string" or #message > 1000) then
        error("ctx:progress: message must be a string of at most 1000 bytes", 2)
    end
    local text, jerr = json.encode({ event = "progress", task_id = self.task_id, at = core.now(),
                                     attempt = self.attempt, worker = self.worker_id,
                                     progress = value, message = message })
    if not text then error("ctx:progress: the value cannot be encoded as JSON: " .. tostring(jerr), 2) end
    core.slot_event(self.queue, text)
    core.slot_yield()
end

--- Logs an event with the task's id, trace id, queue and worker added.
function Context:log(level, event, fields)
    local f = { task_id = self.task_id, trace_id = self.trace_id, span_id = self.span_id, queue = self.queue,
                worker = self.worker_id }
    for k, v in pairs(fields or {}) do f[k] = v end
    core.log(level, event, f)
end

--- The metatable of a handler state's ctx tables: setmetatable({ task_id = ..., ... }, it).
-- What every task of the state shares is built once, here; a ctx with all twelve fields of
-- its own would cost a table of twelve entries a task.
function M.prototype(info, store)
    local shared = setmetatable({ worker_id = info.worker_id, slot = info.slot, resumed = false, _store = store },
                                Context)
    return { __index = shared, __name = Context.__name }
end

return M

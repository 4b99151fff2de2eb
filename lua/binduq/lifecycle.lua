--- binduq.lifecycle: what a handler state does with each task operation it is given.
--
-- Called from C (src/lua/l_slot.c) once per fetched message, in the handler state's own
-- Lua state and thread:
--
--   process(raw, queue_index, sealed, prepared) -> status, task_id, type, info
--     status: one of core.OUTCOME, the engine's names (src/engine/worker_slots.c): "completed" |
--             "skipped" | "retry" | "dead" | "dropped" | "malformed" | "interrupted" |
--             "deferred" | "canceled" | "paused" | "waiting" | "pending"; any other string
--             is a defect, dead-lettered with that reason by the engine
--     info:   { state=, reason=, error=<json>, header=<retry header line>, delay=, body=,
--               attempt=, result=<json> }
--
-- and, for a chunk of messages taken together, prepare(list) before and flush() after.
--
-- The task's stored state (storage.h has the states) decides what an operation does. Every
-- change is a compare-and-set in the storage, so a late completion never overwrites
-- "canceled", and a cancel or pause that missed the control channel is caught when the
-- handler next checkpoints or finishes.
--
-- This file decodes each message and hands it to the part that does its operation; each
-- part is a module of lua/binduq/lifecycle/, read on its own:
--   context    the handler's ctx (sleep, yield, checkpoint, log)
--   run        run and resume: start the handler, from the stored history and checkpoint
--   order      operations out of order: what a run or resume may start from, and the
--              record's `requested` values that keep a pause, a resume or a run for later
--   control    cancel and pause
--   admission  runs and resumes under the worker's rate limit
--   finish     what a handler's return stores, at once or with its chunk (flush)
--   failure    what a failed operation becomes: the failure policy, retry or dead-letter
--   chunk      a chunk of messages taken together (prepare)
--
-- The parts of one handler state share its state through the table S that make_process
-- builds: the settings (the storage, the handlers, the policy's numbers, the ctx prototype),
-- `current` (the pickup latency of the message being processed, which run.lua measures when
-- the handler starts and which travels with its outcome), and the functions each part
-- builds, added to S in the order the parts are built. Each part's build(S) copies what it
-- uses into locals once, when the handler state starts: the per-message path, which runs
-- for every task, reads upvalues, not fields of S (only current.pickup and current.trace are fields written
-- and read per message), and S itself is not kept.

local core = require("binduq.core")
local json = require("binduq.json")
local task_mod = require("binduq.task")
local admission = require("binduq.lifecycle.admission")
local chunk = require("binduq.lifecycle.chunk")
local context = require("binduq.lifecycle.context")
local control = require("binduq.lifecycle.control")
local failure = require("binduq.lifecycle.failure")
local finish = require("binduq.lifecycle.finish")
local order = require("binduq.lifecycle.order")
local run = require("binduq.lifecycle.run")

local M = {}

-- The outcomes the engine knows (src/engine/worker_slots.c): OUT.completed is "completed", and a
-- name it does not know raises here rather than reaching the engine.
local OUT = core.OUTCOME

M.Context = context.Context
M.response = finish.response

-- The functions the parts add to S. Reading one before the part that builds it has been
-- built raises, when the handler state starts rather than when a rare path first calls it.
local PARTS = {}
for _, name in ipairs({ "log_storage", "failed", "storage_failed", "skipped", "settle", "flush", "mark_pending",
                        "flush_with", "do_cancel",
                        "do_pause", "keep", "pause_or_go_on", "admit", "admit_chunk", "deferred", "do_run",
                        "decode" }) do
    PARTS[name] = true
end
local STRICT = {
    __index = function(_, k)
        if PARTS[k] then error("binduq.lifecycle: S." .. k .. " is read before its part is built", 2) end
    end,
}

-- The header of a message without one; shared, so read only.
local FIRST_DELIVERY = { attempt = 1, body = 0 }

-- W3C traceparent: version-traceid-spanid-flags.
local function trace_of(task)
    if not task.trace_id and type(task.traceparent) == "string" then
        local t, s = task.traceparent:match("^%x%x%-(%x+)%-(%x+)%-%x%x$")
        task.trace_id, task.span_id = t, s
    end
end

-- Returns decode(raw, queue_index, sealed) -> a message's task and header (or nil, why,
-- what could be read, header).
local function decoder(info)
    local max, queues, queue = info.max_message_size, info.queues, info.queue
    return function(raw, qi, sealed)
        local task, why, partial, header
        if raw:byte(1) ~= 35 and not sealed then -- no header of binduq's: a first delivery, the common case
            task, why, partial = task_mod.decode_body(raw, max)
            header = FIRST_DELIVERY
        else
            task, why, partial, header = task_mod.decode(raw, max, sealed)
        end
        if task then task.queue, task.attempt = queues[qi] or queue, header.attempt end
        return task, why, partial, header
    end
end

--- Returns process(raw, queue_index, sealed, prepared), the per-message function;
-- prepare(list), which the engine calls for a chunk of messages taken together (nil when a
-- chunk has nothing to decide together: no rate limit, the memory storage); and flush(),
-- which it calls once the chunk's handlers ran, for the outcomes process left "pending"
-- (src/lua/l_slot.c has the contracts).
function M.make_process(w, info)
    local store = core.slot_storage()
    if not store then error("the worker engine gave this handler state no storage") end
    -- The main state's numbers win over this state's copy of the options (they are the same
    -- for a plain script; a script that computes options differently per state still gets
    -- one policy). Functions cannot travel: on_failure and rate_key are this state's own.
    local p = info.policy and json.decode(info.policy) or {}
    local S = setmetatable({
        info = info,
        store = store,
        handlers = w.handlers,
        max_attempts = p.max_attempts or w.max_attempts,
        timeout = p.timeout or w.timeout,
        retry_base = p.retry_base or w.retry_base,
        retry_cap = p.retry_cap or w.retry_cap,
        rl = p.rate_limit or w.rate_limit,
        rate_key = w.rate_key,
        on_failure = w.on_failure,
        want_results = info.want_results,
        debug_on = core.log_enabled("debug"),
        -- A storage across the network writes a chunk's finished states in one statement
        -- (prepare, flush); the memory storage is quicker one by one.
        batch_store = store:kind() ~= "memory",
        TaskContext = context.prototype(info, store),
        -- of the message being processed: its trace id and pickup latency. With several tasks
        -- per state (coroutines) another task may run while a handler waits; run.lua sets
        -- both again once the handler returned.
        current = { pickup = nil, trace = nil },
        decode = decoder(info),
    }, STRICT)
    S.log_storage, S.failed, S.storage_failed, S.skipped = failure.build(S)
    S.settle, S.flush, S.mark_pending, S.flush_with = finish.build(S)
    S.do_cancel, S.do_pause = control.build(S)
    S.keep, S.pause_or_go_on = order.build(S)
    S.admit, S.admit_chunk, S.deferred = admission.build(S)
    S.do_run = run.build(S)
    local prepare = chunk.build(S) -- nil: nothing to decide together

    local decode, current, mark_pending = S.decode, S.current, S.mark_pending
    local do_cancel, do_pause, do_run = S.do_cancel, S.do_pause, S.do_run

    local function process(raw, qi, sealed, prep)
        local task, why, partial, header
        if prep then
            task, why, partial, header = prep.task, prep.why, prep.partial, prep.header
        else
            task, why, partial, header = decode(raw, qi, sealed)
        end
        if not task then
            partial = partial or {}
            return OUT.malformed, partial.task_id, partial.type,
                   { reason = why, body = header.body, body_end = header.body_end, attempt = header.attempt }
        end
        trace_of(task)
        current.trace = task.trace_id
        if header.requeued then
            -- An operator requeued it from the dead-letter list: the failed task may run again.
            store:change{ id = task.task_id, from = "failed", to = "submitted", error = "" }
        end
        if task.type == "cancel" then return do_cancel(task, header) end
        if task.type == "pause" then return do_pause(task, header) end
        return do_run(task, header, prep and prep.admission, prep and prep.defer, prep and prep.start)
    end

    -- The trace id and the pickup latency travel with every outcome (log lines, metrics);
    -- a pending one's with its entry, given by flush.
    return function(raw, qi, sealed, prep)
        current.trace, current.pickup = nil, nil
        local status, id, ty, out = process(raw, qi, sealed, prep)
        local pickup, current_trace = current.pickup, current.trace
        if status == OUT.pending then
            mark_pending(current_trace, pickup)
            return status, id, ty, nil
        end
        if type(out) == "table" then
            out.trace_id, out.pickup = current_trace, pickup -- nil clears the reused outcome of a completion
        elseif current_trace or pickup then
            out = { result = out, trace_id = current_trace, pickup = pickup }
        end
        return status, id, ty, out
    end, prepare, S.flush
end

return M

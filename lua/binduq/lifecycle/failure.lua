--- binduq.lifecycle.failure: what a failed operation becomes.
--
-- A handler that raised, a result that cannot be stored, a storage that failed, a task that
-- kept changing: each asks the failure policy, the script's on_failure(task, err, attempt)
-- or else retry.default with the worker's numbers (binduq.retry says how to write one), and
-- its decision becomes the outcome: OUT.retry (queued again after the delay, the task
-- submitted again), OUT.dead (the dead-letter list, the task failed) or OUT.dropped. A policy
-- that raises or decides nonsense dead-letters the task, naming why. Decisions are made here,
-- in Lua; C carries them out.
--
-- Also here: skipped, the outcome of an operation that has nothing to do.

local core = require("binduq.core")
local errors = require("binduq.errors")
local json = require("binduq.json")
local retry = require("binduq.retry")
local task_mod = require("binduq.task")

local M = {}

local OUT = core.OUTCOME

--- The failure path of a handler state (S: see binduq.lifecycle). Returns
-- log_storage(id, what, msg), failed(task, err, header) -> outcome,
-- storage_failed(task, header, what, msg, code) -> outcome and
-- skipped(task, header, reason, state) -> outcome.
function M.build(S)
    local store, info, on_failure = S.store, S.info, S.on_failure
    local default_policy = retry.default{ max_attempts = S.max_attempts, retry_base = S.retry_base,
                                          retry_cap = S.retry_cap }

    local function log_storage(id, what, msg)
        core.count_storage_error()
        core.log("error", "storage_error", { task_id = id, op = what, error = msg, worker = info.worker_id })
    end

    -- Asks the failure policy, then turns its decision into an outcome.
    local function failed(task, e, header)
        local attempt = header.attempt
        local d, pwhy = nil, nil
        if on_failure then
            local ok, r = pcall(on_failure, task, e, attempt)
            if ok then d = r else pwhy = "on_failure raised: " .. tostring(r) end
        end
        local okd, kind, dd
        if not pwhy then
            okd, kind, dd = pcall(retry.check, d or default_policy(task, e, attempt))
            if not okd then pwhy = "on_failure: " .. tostring(kind) end
        end
        local ej = json.encode(errors.plain(e)) or json.encode({ code = e.code, message = tostring(e.message) })
        if pwhy then
            core.log("error", "policy_failed", { task_id = task.task_id, queue = info.queue, error = pwhy })
            kind, dd = OUT.dead, { reason = pwhy }
        end
        local out = { reason = dd.reason or e.message, error = ej, body = header.body, body_end = header.body_end,
                      attempt = attempt }
        -- Only a run or resume that failed changes the task; a failed cancel or pause
        -- operation is retried or set aside on its own.
        local runs = task.type == "run" or task.type == "resume"
        local ok, serr = true, nil
        if kind == OUT.retry then
            local nh = { attempt = attempt + 1, id = core.uuid4(), redelivered = header.redelivered }
            out.header = task_mod.header(nh)
            out.delay = dd.retry
            out.reason = e.message
            if runs then
                out.state = "submitted"
                ok, serr = store:change{ id = task.task_id, from = "working", to = "submitted", error = ej }
            end
        elseif runs then
            out.state = "failed"
            ok, serr = store:change{ id = task.task_id, from = "working,submitted", to = "failed", error = ej }
        end
        if ok == nil then log_storage(task.task_id, kind, serr) end
        return kind, task.task_id, task.type, out
    end

    local function storage_failed(task, header, what, msg, code)
        log_storage(task.task_id, what, msg)
        return failed(task, { code = "ESTORAGE", message = "storage (" .. what .. "): " .. tostring(msg)
                              .. (code and " [" .. code .. "]" or ""), retryable = true }, header)
    end

    local function skipped(task, header, reason, state)
        return OUT.skipped, task.task_id, task.type, { reason = reason, attempt = header.attempt, state = state or nil }
    end

    return log_storage, failed, storage_failed, skipped
end

return M

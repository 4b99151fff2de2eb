--- binduq.lifecycle.finish: what a handler's return stores, and the outcome once it is stored.
--
-- A string is the agent's answer; a table with any of `state`, `message`, `prompt`,
-- `artifacts`, `result` is a response; true, false, a number or any other table is a result,
-- stored as a data artifact. The task's finished state (completed, input-required,
-- auth-required or rejected), the agent's message appended to its history and the artifacts
-- are written by one compare-and-set from "working", so a late completion never overwrites
-- "canceled". A message of a chunk (a storage across the network: see
-- binduq.lifecycle.chunk) has its finished state written with its chunk's, in one round
-- trip, by flush; process returns OUT.pending for it meanwhile.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

local OUT = core.OUTCOME
local WAITING = { ["input-required"] = true, ["auth-required"] = true }
local SETTLE = { completed = true, ["input-required"] = true, ["auth-required"] = true, rejected = true }
local RESPONSE_KEYS = { state = true, message = true, prompt = true, artifacts = true, result = true }

-- What a handler's return value stores: the agent's message appended to the history, the
-- artifacts, and the state. A string is the agent's answer; a table with any of `state`,
-- `message`, `prompt`, `artifacts`, `result` is a response; any other table is a result,
-- stored as a data artifact. Returns state, messages (array), artifacts (array) or nil, why.
local function response(res)
    if res == nil then return "completed", {}, {} end
    if type(res) == "string" then return "completed", { { role = "agent", content = res } }, {} end
    if type(res) ~= "table" then
        return "completed", {}, { { name = "result", parts = { { kind = "data", data = res } } } }
    end
    local is_response = false
    for k in pairs(res) do
        if RESPONSE_KEYS[k] then is_response = true break end
    end
    if not is_response then
        return "completed", {}, { { name = "result", parts = { { kind = "data", data = res } } } }
    end
    local state = res.state or "completed"
    if not SETTLE[state] then
        return nil, "a handler's response state must be completed, input-required, auth-required or rejected (got "
            .. tostring(state) .. "; raise an error to fail)"
    end
    local msgs = {}
    local m = res.message or res.prompt
    if type(m) == "string" then
        msgs[1] = { role = "agent", content = m, kind = WAITING[state] and state or nil }
    elseif type(m) == "table" then
        msgs[1] = m
    elseif m ~= nil then
        return nil, "a response's message must be a string or a message table"
    end
    local arts = res.artifacts or {}
    if type(arts) ~= "table" then return nil, "a response's artifacts must be an array" end
    if res.result ~= nil then
        arts[#arts + 1] = { name = "result", parts = { { kind = "data", data = res.result } } }
    end
    return state, msgs, arts
end
M.response = response

local function enc_array(t)
    if #t == 0 then return nil end
    return json.encode(t)
end

-- The stored artifacts of a handler that returned a boolean or a number (`return true` is
-- the common case): the same result artifact `response` builds, written without building it.
local function scalar_artifacts(v)
    local j = json.encode(v)
    return j and '[{"name":"result","parts":[{"kind":"data","data":' .. j .. '}]}]'
end
local TRUE_ARTIFACTS = scalar_artifacts(true)

--- The finishing of a handler state's tasks (S: see binduq.lifecycle). Returns
-- settle(task, header, res, defer) -> outcome; flush() -> { {status, task_id, type, info},
-- ... }, the outcomes settle left OUT.pending (the engine calls it: src/lua/l_slot.c);
-- mark_pending(trace, pickup), which process calls for each of those; and flush_with(starts),
-- which the next chunk's prepare calls to write them with its starts.
function M.build(S)
    local store, info, want_results = S.store, S.info, S.want_results
    local failed, storage_failed, skipped = S.failed, S.storage_failed, S.skipped
    -- The outcome table of a completed task, one per handler state: C copies it out at once.
    local done = {}
    local pending = {} -- handled in this chunk, their stored state not written yet (flush)

    -- The outcome once the finished state was written (changed, now, code from store:finish).
    local function settled(task, header, state, rj, changed, now, code)
        local id = task.task_id
        if changed == nil then return storage_failed(task, header, "complete", now, code) end
        if not changed then
            if now == "canceled" then
                core.log("info", "late_result_ignored", { task_id = id, worker = info.worker_id, state = now })
                return OUT.canceled, id, task.type, { reason = "canceled while it ran; its result was not stored",
                                                    attempt = header.attempt, state = now }
            end
            if now == false then
                return skipped(task, header, "its record was forgotten while it ran (the memory storage is full: storage.max_tasks)")
            end
            return skipped(task, header, "the task changed to " .. tostring(now) .. " while it ran", now)
        end
        if WAITING[state] then
            return OUT.waiting, id, task.type, { state = state, attempt = header.attempt, result = rj }
        end
        done.state, done.attempt, done.result = state, header.attempt, rj
        return OUT.completed, id, task.type, done
    end

    -- The outcome of a handler that returned normally. With `defer` (a chunk's task, a
    -- storage across the network) the finished state is written by flush with the chunk's.
    local function settle(task, header, res, defer)
        local id = task.task_id
        local state, h, a, bad = "completed", nil, nil, false
        local tr = type(res)
        if tr == "boolean" or tr == "number" then
            a = res == true and TRUE_ARTIFACTS or scalar_artifacts(res)
            bad = not a
        elseif res ~= nil then
            local msgs, arts
            state, msgs, arts = response(res)
            if not state then
                return failed(task, { code = "ERESULT", message = msgs, retryable = false }, header)
            end
            h, a = enc_array(msgs), enc_array(arts)
            bad = (#msgs > 0 and not h) or (#arts > 0 and not a)
        end
        if bad then
            return failed(task, { code = "ERESULT", message = "the handler's message or artifacts cannot be encoded as JSON",
                                  retryable = false }, header)
        end
        local rj
        if want_results then
            local jerr
            rj, jerr = json.encode(res == nil and json.null or res)
            if not rj then
                return failed(task, { code = "ERESULT", message = "the handler's result cannot be encoded as JSON: " .. jerr,
                                      retryable = false }, header)
            end
        end
        if defer then
            pending[#pending + 1] = { task = task, header = header, state = state, h = h, a = a, rj = rj }
            return OUT.pending, id, task.type, nil
        end
        return settled(task, header, state, rj, store:finish(id, state, h, a))
    end

    -- The outcome of each deferred task of list once store:change_many (or
    -- store:change_start_many) answered res (nil: err, code), in list's order, as flush gives.
    -- A task whose change failed on its own (the server refused its data) has {nil, msg, code}
    -- in res: it alone fails.
    local function outcomes(list, res, err, code)
        local outs = {}
        for i, e in ipairs(list) do
            local r = res and res[i]
            local status, id, ty, out
            if r then
                status, id, ty, out = settled(e.task, e.header, e.state, e.rj, r[1], r[2], r[1] == nil and r[3] or nil)
            else
                status, id, ty, out = settled(e.task, e.header, e.state, e.rj, nil, err, code)
            end
            if out == done then out = { state = done.state, attempt = done.attempt, result = done.result } end
            if type(out) == "table" then out.trace_id, out.pickup = e.trace, e.pickup end
            outs[i] = { status, id, ty, out }
        end
        return outs
    end

    -- The deferred tasks' changes, each exactly the compare-and-set store:finish makes; the
    -- list of them is taken.
    local function take_changes()
        local list = pending
        pending = {}
        local changes = {}
        for i, e in ipairs(list) do
            changes[i] = { id = e.task.task_id, from = "working", to = e.state, append_history = e.h,
                           append_artifacts = e.a, requested = "", error = "" }
        end
        return list, changes
    end

    local written -- the outcomes flush_with made, which the next flush gives

    -- The outcomes of the chunk's deferred tasks (settle), their finished states written in
    -- one round trip (store:change_many), or earlier by flush_with. Returns
    -- { {status, task_id, type, info}, ... } in the order they were deferred.
    local function flush()
        local outs = written or {}
        written = nil
        if #pending > 0 then
            local list, changes = take_changes()
            local res, err, code = store:change_many(changes)
            for _, o in ipairs(outcomes(list, res, err, code)) do outs[#outs + 1] = o end
        end
        return outs
    end

    -- The deferred finished states written with the next chunk's starts (store:start_many's
    -- list), in one round trip and one commit (store:change_start_many), when the engine
    -- prepares that chunk before its flush. Returns the starts' results; nil when nothing is
    -- deferred (the caller starts them itself); false when the starts were not made (each
    -- starts for itself in process; if the finished states were not written either, their
    -- tasks' outcomes say so).
    local function flush_with(starts)
        if #pending == 0 then return nil end
        local list, changes = take_changes()
        -- res, the starts' results (or false, and why, which process meets again); or nil, msg, code
        local res, a, b = store:change_start_many(changes, starts)
        if res then
            written = outcomes(list, res)
            return a
        end
        written = outcomes(list, nil, a, b)
        return false
    end

    -- The trace id and the pickup latency of the task settle just deferred, which travel
    -- with its outcome when flush gives it.
    local function mark_pending(trace, pickup)
        local e = pending[#pending]
        e.trace, e.pickup = trace, pickup
    end

    return settle, flush, mark_pending, flush_with
end

return M

--- binduq.lifecycle: what a handler state does with each task operation it is given.
--
-- Called from C (src/lua/l_engine.c) once per fetched message, in the handler state's own
-- Lua state and thread:
--
--   process(raw, queue_index, sealed) -> status, task_id, type, info
--     status: one of core.OUTCOME, the engine's names (src/engine/worker.c): "completed" |
--             "skipped" | "retry" | "dead" | "dropped" | "malformed" | "interrupted" |
--             "deferred" | "canceled" | "paused" | "waiting" | "pending"; any other string
--             is a defect, dead-lettered with that reason by the engine
--     info:   { state=, reason=, error=<json>, header=<retry header line>, delay=, body=,
--               attempt=, result=<json> }
--
-- The task's stored state decides what an operation does (storage.h has the states):
--
--   run     submitted -> working -> completed | input-required | auth-required | rejected,
--           or back to submitted for a retry, or failed. A run of a task that is already
--           terminal is acknowledged and nothing runs (a duplicate); of a paused one it waits
--           for the resume; of a working one it is a duplicate unless binduq itself queued it
--           again (a retry, or a recovery from a dead worker: the "#bq" header says so).
--   resume  input-required / auth-required: the new messages are appended to the history and
--           the handler runs again with all of it; paused: the handler runs again with
--           ctx.saved, the checkpoint it stored.
--   pause   submitted -> paused at once (the queued run is skipped when fetched); working:
--           the request is stored and published, and the handler stops at its next yield
--           point (ctx:checkpoint(), ctx:sleep(), ctx:yield()), its checkpoint kept.
--   cancel  any open state -> canceled, published so the running handler stops at its next
--           yield point or within 10,000 Lua instructions (the count hook).
--
-- Every change is a compare-and-set in the storage, so a late completion never overwrites
-- "canceled", and a cancel or pause that missed the control channel is caught when the
-- handler next checkpoints or finishes.
--
-- Operations out of order. Producers on several processes and workers on several machines
-- deliver one task's operations in any order (Bindu's API records nothing binduq can read).
-- Whatever the order, every run's and resume's messages end in the task's history once (a
-- message already there, by its message_id or else its role and content, is not added
-- again), a cancel wins, and a pause and the resume that answers it cancel out, whichever
-- came first. For that the record's `requested` holds, besides "pause" (a pause asked of the
-- running handler):
--   "resume"  a resume came that no pause has answered yet: on a working task, the pause
--             that comes next is withdrawn; on a task whose run has not come (a record this
--             worker made as "paused"), the run starts it when it comes;
--   "run"     its run has not come, and its pauses and resumes are even: the run starts it;
--   "merge"   its run has not come, and it is paused: the run is recorded, not started;
--   "withdrawn" a resume withdrew the pause asked of the running handler, which may have
--             been told already: it goes on from its checkpoint instead of pausing.
-- A record made for an operation other than a run is "paused" until its run comes, so no
-- fast path takes it for the run's own record. One unanswered pause or resume is remembered;
-- beyond that the later ones count once.
--
-- Decisions (retry or dead-letter, after how long) are made here, in Lua; C carries them out.

local core = require("binduq.core")
local errors = require("binduq.errors")
local json = require("binduq.json")
local retry = require("binduq.retry")
local storage_mod = require("binduq.storage")
local task_mod = require("binduq.task")

local M = {}

-- The outcomes the engine knows (src/engine/worker.c): OUT.completed is "completed", and a
-- name it does not know raises here rather than reaching the engine.
local OUT = core.OUTCOME
local TERMINAL = storage_mod.TERMINAL
local WAITING = { ["input-required"] = true, ["auth-required"] = true }

-- ---- Context: what a handler gets besides the task ------------------------------------------

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
    if requested == "pause" then
        error({ code = "EPAUSED", message = "the task was paused", retryable = false }, 2)
    end
    core.slot_yield()
end

--- Logs an event with the task's id, trace id, queue and worker added.
function Context:log(level, event, fields)
    local f = { task_id = self.task_id, trace_id = self.trace_id, span_id = self.span_id, queue = self.queue,
                worker = self.worker_id }
    for k, v in pairs(fields or {}) do f[k] = v end
    core.log(level, event, f)
end

-- ---- Results ----------------------------------------------------------------------------------

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

-- ---- The per-message function ---------------------------------------------------------------

-- Returns process(raw, queue_index, sealed, prepared), the per-message function;
-- prepare(list), which the engine calls for a chunk of messages taken together (nil when a
-- chunk has nothing to decide together: no rate limit, the memory storage); and flush(),
-- which it calls once the chunk's handlers ran, for the outcomes process left "pending"
-- (src/lua/l_engine.c has the contracts).
function M.make_process(w, info)
    local current_trace, pickup -- of the message being processed
    local handlers = w.handlers
    local max = info.max_message_size
    local want_results = info.want_results
    local debug_on = core.log_enabled("debug")
    local store = core.slot_storage()
    if not store then error("the worker engine gave this handler state no storage") end
    -- A storage across the network writes a chunk's finished states in one statement
    -- (prepare, flush); the memory storage is quicker one by one.
    local batch_store = store:kind() ~= "memory"
    local pending = {} -- handled in this chunk, their stored state not written yet (flush)
    -- The main state's numbers win over this state's copy of the options (they are the same
    -- for a plain script; a script that computes options differently per state still gets
    -- one policy). Functions cannot travel: on_failure is this state's own.
    local p = info.policy and json.decode(info.policy) or {}
    local max_attempts = p.max_attempts or w.max_attempts
    local timeout = p.timeout or w.timeout
    local rl = p.rate_limit or w.rate_limit
    local rate_key = w.rate_key
    local on_failure = w.on_failure
    local default_policy = retry.default{ max_attempts = max_attempts, retry_base = p.retry_base or w.retry_base,
                                          retry_cap = p.retry_cap or w.retry_cap }

    -- The outcome table of a completed task, one per handler state: C copies it out at once.
    local done = {}
    -- What fast_start gives for a first run: nothing stored yet beyond the message itself.
    local FIRST = { attempts = 0 }
    -- The header of a message without one; shared, so read only.
    local FIRST_DELIVERY = { attempt = 1, body = 0 }
    -- A handler's ctx holds the task's own fields; what every task of this handler state
    -- shares (worker_id, slot, the storage) it finds here, then the methods in Context. A
    -- ctx with all twelve fields of its own cost 4,600 instructions a task to build.
    local StateContext = setmetatable({ worker_id = info.worker_id, slot = info.slot, resumed = false,
                                        _store = store }, Context)
    local TaskContext = { __index = StateContext, __name = Context.__name }

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

    -- Calls the script's optional cancel or pause handler, a notification: its errors are
    -- logged, never the operation's.
    local function notify(task)
        local h = handlers[task.type]
        if not h then return end
        local ok, e = pcall(h, task, setmetatable({ task_id = task.task_id, queue = task.queue }, TaskContext))
        if not ok then
            core.log("warn", task.type .. "_hook_failed", { task_id = task.task_id, error = tostring(e) })
        end
    end

    -- cancel: any open state -> canceled, and the running handler (wherever it runs) is told.
    local function do_cancel(task, header)
        local id = task.task_id
        local changed, state, code = store:change{ id = id, to = "canceled" }
        if changed == nil then return storage_failed(task, header, "cancel", state, code) end
        if state == false then
            -- Not stored (yet): record the cancel, so a run that comes later is skipped.
            local ok, st2, c2 = store:create{ id = id, state = "canceled", context_id = task.conversation_id }
            if ok == nil then return storage_failed(task, header, "cancel", st2, c2) end
            changed, state = ok, st2
        end
        core.slot_publish("cancel", id)
        notify(task)
        if changed then
            return OUT.canceled, id, task.type, { reason = "canceled", attempt = header.attempt, state = "canceled" }
        end
        return skipped(task, header, "the task is already " .. tostring(state), state)
    end

    -- pause: a queued task is paused at once; a running one is asked to stop at a yield point.
    -- Before its run, or against a resume that came first, see "Operations out of order".
    local function do_pause(task, header)
        local id = task.task_id
        for _ = 1, 8 do
            local changed, state, req = store:change{ id = id, from = "submitted", to = "paused" }
            if changed == nil then return storage_failed(task, header, "pause", state, req) end
            if changed then
                notify(task)
                return OUT.paused, id, task.type, { reason = "paused before it ran", attempt = header.attempt, state = "paused" }
            end
            if state == false then
                -- Before its run: a record that waits, paused, for it.
                local ok, st2, c2 = store:create{ id = id, state = "paused", requested = "merge",
                                                  context_id = task.conversation_id, queue = task.queue }
                if ok == nil then return storage_failed(task, header, "pause", st2, c2) end
                if ok then
                    notify(task)
                    return OUT.paused, id, task.type, { reason = "paused before its run came", attempt = header.attempt,
                                                      state = "paused" }
                end
            else
                local after, why
                if state == "working" and req == "resume" then
                    after, why = "", "withdrawn by a resume that came before it"
                elseif state == "working" then
                    after, why = "pause", "pause requested from the running handler"
                elseif state == "paused" and req == "run" then
                    after, why = "merge", "paused before its run came"
                elseif state == "paused" and req == "resume" then
                    after, why = "run", "answered by a resume that came before it; the run starts the task"
                else
                    notify(task)
                    return skipped(task, header, "nothing to pause: the task is " .. tostring(state), state)
                end
                local ok, st2, c2 = store:change{ id = id, from = state, if_requested = req, requested = after }
                if ok == nil then return storage_failed(task, header, "pause", st2, c2) end
                if ok then
                    if after == "pause" then
                        core.slot_publish("pause", id)
                    else
                        notify(task)
                    end
                    return skipped(task, header, why, state)
                end
            end
        end
        return failed(task, { code = "ECONFLICT", retryable = true,
                              message = "the task kept changing while the pause was applied" }, header)
    end

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

    -- A message's identity in a history: its message_id, else its role and content.
    local function msg_key(m)
        if type(m) ~= "table" then return "v\0" .. tostring(m) end
        local mid = m.message_id
        if type(mid) == "string" and mid ~= "" then return "id\0" .. mid end
        return "rc\0" .. tostring(m.role) .. "\0" .. tostring(m.content)
    end

    -- The messages of task that its record's history does not hold yet, or nil.
    local function unseen(task, rec)
        local msgs = task.messages
        if type(msgs) ~= "table" or #msgs == 0 then return nil end
        local seen, out = {}, {}
        local have = rec and rec.history and json.decode(rec.history)
        for _, m in ipairs(type(have) == "table" and have or {}) do seen[msg_key(m)] = true end
        for _, m in ipairs(msgs) do
            local k = msg_key(m)
            if not seen[k] then
                seen[k] = true
                out[#out + 1] = m
            end
        end
        return #out > 0 and out or nil
    end

    -- A run or resume that does not start still leaves its messages in the history (and
    -- `req`, if any, in requested), by a compare-and-set on the record it was decided on.
    -- Returns true, false (the record changed meanwhile: decide again), or nil, why, code.
    local function keep(task, rec, req)
        -- A finished task's history is closed (Bindu's API refuses to continue one too); a
        -- canceled one still records what was sent to it.
        local new = (not TERMINAL[rec.state] or rec.state == "canceled") and unseen(task, rec) or nil
        if not new and (req == nil or req == (rec.requested or "")) then return true end
        local ok, now, code = store:change{ id = task.task_id, from = rec.state, if_requested = rec.requested or "",
                                            requested = req, append_history = new and json.encode(new) or nil }
        if ok == nil then return nil, now, code end
        return ok
    end

    -- What a run or resume may start from, given the stored record, whether its messages are
    -- appended, and what `requested` becomes; or nil, why not, and what `requested` becomes
    -- (nil: unchanged). See "Operations out of order" above for the requested values.
    local function start_from(task, header, rec)
        local state, req = rec.state, rec.requested or ""
        local requeued = header.attempt > 1 or header.redelivered or header.deferred or header.requeued
        if TERMINAL[state] then return nil, "the task is already " .. state end
        if task.type == "run" then
            if state == "submitted" then return state end
            if state == "working" and requeued then return state end
            if state == "paused" and req == "run" then return state, true, "" end
            if state == "paused" and req == "resume" then return state, true, "resume" end
            if state == "paused" then return nil, "the task is paused; a resume runs it", "" end
            if state == "working" then return nil, "the task is already running (a duplicate run)" end
            -- New messages for a task waiting for input continue it, as Bindu's API does; the
            -- same run again (a redelivery) is a duplicate.
            if unseen(task, rec) then return state, true end
            return nil, "the task waits for input (" .. state .. "); this run brings no new message"
        end
        if state == "paused" and req == "merge" then
            return nil, "a resume before its task's run, after its pause: the run starts it", "run"
        end
        if state == "paused" and req == "run" then
            return nil, "a resume before its task's run: kept for the run", "resume"
        end
        if state == "paused" and req == "resume" then return nil, "a resume before its task's run: kept for the run" end
        if WAITING[state] or state == "paused" then return state, true end
        if requeued and (state == "submitted" or state == "working") then return state end
        if state == "working" and req == "pause" then
            -- The handler may have been told already: "withdrawn" lets it go on (below).
            return nil, "the resume withdrew a pause that had not happened yet", "withdrawn"
        end
        if state == "working" then
            return nil, "a resume while it runs: the pause it answers, when it comes, is withdrawn", "resume"
        end
        return nil, "nothing to resume: the task is " .. state
    end

    -- Records a task queued by a producer that keeps no state here (Bindu's, a raw LPUSH),
    -- as submitted, or as "working" when this worker starts it at once.
    local function record(task, state)
        local working = state == "working"
        return store:create{ id = task.task_id, context_id = task.conversation_id, queue = task.queue,
                             history = json.array(task.messages or {}),
                             metadata = task.metadata and json.encode(task.metadata) or nil,
                             state = state, worker = working and info.worker_id or nil,
                             attempts = working and 1 or nil }
    end

    -- A run's first delivery, the common case, starts with one storage call: submitted ->
    -- working (or, for a task nobody recorded, a record created as working). Returns the
    -- record the handler starts from, or nil to take the general path; or false, what, why,
    -- code when the storage failed.
    -- pre: what its chunk's store:start_many answered for it (prepare), if anything.
    local function fast_start(task, pre)
        local id = task.task_id
        core.slot_task(id)
        local changed, now, code, attempts
        if pre then
            changed, now, attempts = pre[1], pre[2], pre[4]
        else
            changed, now, code, attempts = store:start(id, info.worker_id)
        end
        if changed == nil then return false, "start", now, code end
        if changed and attempts == 1 then
            return FIRST
        elseif changed then
            -- It ran before (handed back at a shutdown): its stored history and checkpoint count.
            local rec, err, c2 = store:get(id)
            if not rec then return false, "load", err or "the task vanished", c2 end
            return rec
        elseif now == false then
            -- Queued by a producer that keeps no state here (Bindu's, a raw LPUSH): record it.
            local ok, st2, c3 = record(task, "working")
            if ok == nil then return false, "create", st2, c3 end
            if ok then return FIRST end
        end
        return nil -- not submitted: the general path says why it does not run
    end

    -- The outcome of a task the rate limiter did not admit: queued again (the engine puts
    -- its body after a "#bq" header counting the deferral) for when it would be.
    local function deferred(task, header, wait)
        local nh = {}
        for k2, v in pairs(header) do nh[k2] = v end
        nh.body, nh.body_end, nh.id, nh.deferred = nil, nil, core.uuid4(), (header.deferred or 0) + 1
        return OUT.deferred, task.task_id, task.type, { delay = wait, reason = "rate limited", attempt = header.attempt,
                                                      header = task_mod.header(nh), body = header.body,
                                                      body_end = header.body_end }
    end

    -- A handler stopped for a pause: "go" when a resume answered the pause first (requested
    -- "resume", or "withdrawn": see "Operations out of order"), "paused" once the pause is
    -- stored (only while nothing answered it: a compare-and-set on the request too), the
    -- state the task is in when it is no longer working, or nil when the storage failed.
    local function pause_or_go_on(id)
        for _ = 1, 8 do
            if store:change{ id = id, from = "working", if_requested = "resume" }
                    or store:change{ id = id, from = "working", if_requested = "withdrawn", requested = "" } then
                return "go"
            end
            for _, req in ipairs({ "pause", "" }) do
                local c, now = store:change{ id = id, from = "working", to = "paused", requested = "",
                                             if_requested = req }
                if c == nil then return nil end
                if c then return "paused" end
                if now ~= "working" then return tostring(now) end
            end
        end
        return nil
    end

    -- run and resume: start the handler from the stored history (and checkpoint). adm: the
    -- rate limiter's verdict, decided for the chunk this message came in (prepare), if any.
    local function do_run(task, header, adm, defer, pre)
        local id = task.task_id
        if adm and adm.wait then return deferred(task, header, adm.wait) end -- the chunk's verdict
        local rec, from, append, new_msgs
        local h = (task.type == "resume" and handlers.resume) or handlers.run
        if task.type == "run" and header.attempt == 1 and not (header.redelivered or header.deferred
                or header.requeued) and (not rl or adm) and h then
            local what, msg, code
            rec, what, msg, code = fast_start(task, pre)
            if rec == false then return storage_failed(task, header, what, msg, code) end
            from = "submitted"
            -- Started with its chunk: a cancel that came since was kept for it (core.slot_ahead).
            if pre and rec and core.slot_control() == "cancel" then
                return OUT.canceled, id, task.type, { reason = "canceled before it ran", attempt = header.attempt,
                                                    state = "canceled" }
            end
        end
        local admitted_at = adm and adm.at
        if not rec then
            -- Decided on the stored record and written with a compare-and-set on it; when
            -- another operation of the task changed it meanwhile, decided again.
            local started = false
            for _ = 1, 8 do
                local err, code, after, ok, st2, c2
                rec, err, code = store:get(id)
                if rec == nil then return storage_failed(task, header, "load", err, code) end
                if rec == false and task.type == "resume" then
                    -- A resume before anything else of its task: a record that waits, paused,
                    -- for the run (see "Operations out of order" above).
                    ok, st2, c2 = store:create{ id = id, context_id = task.conversation_id, queue = task.queue,
                                                state = "paused", requested = "resume",
                                                history = json.array(task.messages or {}) }
                    if ok == nil then return storage_failed(task, header, "create", st2, c2) end
                    if ok then return skipped(task, header, "a resume before its task's run: kept for the run", "paused") end
                elseif rec == false then
                    -- Queued by a producer that keeps no state here (Bindu's, a raw LPUSH): record it.
                    ok, st2, c2 = record(task)
                    if ok == nil then return storage_failed(task, header, "create", st2, c2) end
                    if ok then rec = { state = "submitted", attempts = 0, context_id = task.conversation_id } end
                end
                if rec then
                    from, append, after = start_from(task, header, rec)
                    if not from then
                        -- It does not start; its messages are kept all the same.
                        ok, st2, c2 = keep(task, rec, after)
                        if ok == nil then return storage_failed(task, header, "record", st2, c2) end
                        if ok then return skipped(task, header, append, rec.state) end
                    else
                        local limit = task.max_attempts or max_attempts
                        if header.attempt > limit then
                            -- Only recoveries from dead workers get here: each used up an attempt.
                            store:change{ id = id, to = "failed", error = json.encode({ code = "EATTEMPTS",
                                          message = "its workers stopped while running it" }) }
                            return OUT.dead, id, task.type, {
                                reason = ("attempt %d exceeds max_attempts %d: its workers stopped while running it")
                                    :format(header.attempt, limit),
                                body = header.body, body_end = header.body_end, attempt = header.attempt - 1,
                                state = "failed",
                            }
                        end
                        if rl and not adm and not admitted_at then
                            -- Admission under the rate limit: over it, the task is queued again (its
                            -- lease released) for the time the limiter names, and other keys keep flowing.
                            local key = "*"
                            if rate_key then
                                local okk, k = pcall(rate_key, task)
                                if not okk then
                                    return failed(task, { code = "ERATEKEY", message = "rate_key raised: " .. tostring(k),
                                                          retryable = false }, header)
                                end
                                key = k
                            end
                            if key ~= nil and key ~= false then
                                local admitted, when, rcode = core.rate_limit(tostring(key), rl.limit, rl.period)
                                if admitted == nil then
                                    return failed(task, { code = rcode or "ERATELIMIT",
                                                          message = "rate limiter: " .. tostring(when), retryable = true }, header)
                                end
                                if not admitted then return deferred(task, header, when) end
                                admitted_at = when
                            end
                        end
                        if not h then
                            return failed(task, { code = "ENOHANDLER", message = "no handler for '" .. task.type
                                                  .. "' in this worker", retryable = false }, header)
                        end
                        -- Name the task for the control channel before the state says "working", so a
                        -- cancel stored after this change is always published to a slot that knows it.
                        core.slot_task(id)
                        new_msgs = append and unseen(task, rec) or nil
                        local changed, now, c3 = store:change{ id = id, from = from, to = "working", count_attempt = true,
                                                               worker = info.worker_id, requested = after or "",
                                                               if_requested = from == "paused" and (rec.requested or "") or nil,
                                                               append_history = new_msgs and json.encode(new_msgs) or nil }
                        if changed == nil then return storage_failed(task, header, "start", now, c3) end
                        if changed then
                            started = true
                            break
                        end
                    end
                end
            end
            if not started then
                return failed(task, { code = "ECONFLICT", retryable = true,
                                      message = "the task kept changing while this operation was applied" }, header)
            end
        end
        local history
        if task.type == "run" and from == "submitted" and rec.attempts == 0 and task.messages then
            -- A first run: the stored history is this message's (it was recorded from it), so
            -- the decoded message stands in for it; nothing else was stored yet.
            history = task.messages
            task.artifacts = task.artifacts or {}
        else
            history = json.decode(rec.history) or {}
            for _, m in ipairs(new_msgs or {}) do history[#history + 1] = m end
            task.artifacts = json.decode(rec.artifacts) or {}
        end
        task.history, task.messages = history, history
        if debug_on then
            core.log("debug", "consumed", { task_id = id, type = task.type, queue = task.queue,
                                            worker = info.worker_id, attempt = header.attempt })
        end
        local saved = rec.checkpoint and json.decode(rec.checkpoint)
        if saved == json.null then saved = nil end
        local ctx = setmetatable({ task_id = id, context_id = rec == FIRST and task.conversation_id or rec.context_id,
                                   queue = task.queue, attempt = header.attempt }, TaskContext)
        if task.type == "resume" then ctx.resumed = true end
        if task.trace_id then ctx.trace_id, ctx.span_id = task.trace_id, task.span_id end
        if admitted_at then ctx.admitted_at = admitted_at end
        if saved ~= nil then ctx.saved = saved end
        if task.timestamp then
            local sent = core.parse_iso8601(task.timestamp)
            if sent then pickup = core.now() - sent end
        end
        core.limit(task.timeout or timeout)
        local ok, res, herr, paused
        for _ = 1, 8 do
            ok, res, herr = xpcall(h, errors.handler, task, ctx)
            if ok and res == nil and herr ~= nil then
                ok, res = false, errors.normalize(herr)
            end
            if ok or res.code ~= "EPAUSED" or core.slot_control() == "cancel" then break end
            paused = pause_or_go_on(id)
            if paused ~= "go" then break end
            -- A pause that a resume answered before it came does not stop the task: the
            -- handler goes on from its checkpoint at once, as after a pause and its resume.
            core.log("info", "pause_answered", { task_id = id, worker = info.worker_id })
            core.slot_task(id) -- clears the pause
            ctx.resumed = true
        end
        core.unlimit()
        if ok then return settle(task, header, res, defer) end
        if res.code == "ECANCELED" or core.slot_control() == "cancel" then
            local c4, s4 = store:change{ id = id, to = "canceled" }
            if c4 == nil then log_storage(id, "cancel", s4) end
            return OUT.canceled, id, task.type, { reason = "canceled while it ran", attempt = header.attempt,
                                                state = "canceled" }
        end
        if res.code == "EPAUSED" then
            if paused == "paused" then
                return OUT.paused, id, task.type, { reason = "paused at a yield point", attempt = header.attempt,
                                                  state = "paused" }
            end
            if paused == nil then return storage_failed(task, header, "pause", "the storage failed") end
            return skipped(task, header, "the task changed to " .. tostring(paused) .. " while pausing", paused)
        end
        if res.code == "EINTERRUPTED" then
            store:change{ id = id, from = "working", to = "submitted" }
            return OUT.interrupted, id, task.type, { reason = res.message, attempt = header.attempt, state = "submitted" }
        end
        return failed(task, res, header)
    end

    -- W3C traceparent: version-traceid-spanid-flags.
    local function trace_of(task)
        if not task.trace_id and type(task.traceparent) == "string" then
            local t, s = task.traceparent:match("^%x%x%-(%x+)%-(%x+)%-%x%x$")
            task.trace_id, task.span_id = t, s
        end
    end

    -- A message's task and header (or nil, why, what could be read, header).
    local function decode(raw, qi, sealed)
        local task, why, partial, header
        if raw:byte(1) ~= 35 and not sealed then -- no header of binduq's: a first delivery, the common case
            task, why, partial = task_mod.decode_body(raw, max)
            header = FIRST_DELIVERY
        else
            task, why, partial, header = task_mod.decode(raw, max, sealed)
        end
        if task then task.queue, task.attempt = info.queues[qi] or info.queue, header.attempt end
        return task, why, partial, header
    end

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
        current_trace = task.trace_id
        if header.requeued then
            -- An operator requeued it from the dead-letter list: the failed task may run again.
            store:change{ id = task.task_id, from = "failed", to = "submitted", error = "" }
        end
        if task.type == "cancel" then return do_cancel(task, header) end
        if task.type == "pause" then return do_pause(task, header) end
        return do_run(task, header, prep and prep.admission, prep and prep.defer, prep and prep.start)
    end

    -- A chunk of messages taken together (the queue is deep, the tasks quick): each is
    -- decoded once, here, and with a rate limit the runs and resumes that would ask for
    -- admission get it in one round trip for the chunk (core.rate_limit of a batch), not one
    -- each. The verdicts are the limiter's, exact; a message whose admission then goes unused
    -- (its task turned out canceled, say) only leaves its slot in the window unused; one not
    -- admitted is deferred by process like a retry. Returns one entry per message for process.
    local function prepare(list)
        local preps, reqs, ids, defer = {}, {}, {}, batch_store
        for i, m in ipairs(list) do
            local task, why, partial, header = decode(m.raw, m.q, m.sealed)
            preps[i] = { task = task, why = why, partial = partial, header = header }
            -- Two operations on one task in a chunk take effect one after the other: its
            -- finished states are not deferred then.
            local id = task and task.task_id or (partial and partial.task_id)
            if id then
                if ids[id] then defer = false end
                ids[id] = true
            end
            if rl and task and (task.type == "run" or task.type == "resume")
                    and header.attempt <= (task.max_attempts or max_attempts) then
                local key = "*"
                if rate_key then
                    local okk, k = pcall(rate_key, task)
                    key = okk and k or nil -- a raising rate_key is reported by process
                end
                if key ~= nil and key ~= false then
                    reqs[#reqs + 1] = { i = i, key = tostring(key) }
                end
            end
        end
        if #reqs > 0 then
            local res = core.rate_limit(reqs, rl.limit, rl.period)
            -- On an error nothing is decided: each message asks for itself in process.
            for j, r in ipairs(res or {}) do
                preps[reqs[j].i].admission = r[1] == 1 and { at = r[2] } or { wait = r[2] }
            end
        end
        if defer then
            -- The runs that take the fast path (first deliveries, admitted) start together:
            -- one round trip, each an exact compare-and-set (or a record created working for
            -- a task nobody recorded). Their ids are named for the control channel first.
            local starts, at, named = {}, {}, {}
            for i, e in ipairs(preps) do
                e.defer = true
                local task, header = e.task, e.header
                if task and task.type == "run" and handlers.run and header.attempt == 1
                        and not (header.redelivered or header.deferred or header.requeued)
                        and (not rl or (e.admission and e.admission.at)) then
                    starts[#starts + 1] = { id = task.task_id, worker = info.worker_id, context_id = task.conversation_id,
                                            queue = task.queue, history = json.array(task.messages or {}),
                                            metadata = task.metadata and json.encode(task.metadata) or nil }
                    at[#starts], named[#starts] = i, task.task_id
                end
            end
            if #starts > 1 then
                core.slot_ahead(named)
                -- On an error nothing is decided: each starts for itself in process.
                -- A task started here is settled: a stop runs it rather than hand it back (its
                -- stored state says working; a first delivery of it would be taken for a
                -- duplicate run).
                for j, r in ipairs(store:start_many(starts) or {}) do
                    preps[at[j]].start, preps[at[j]].settled = r, r[1] or nil
                end
            end
        end
        return preps
    end

    -- The outcomes of the chunk's deferred tasks (settle), their finished states written in
    -- one round trip (store:change_many), each exactly the compare-and-set store:finish makes.
    -- Returns { {status, task_id, type, info}, ... } in the order they were deferred.
    local function flush()
        local list = pending
        pending = {}
        local changes = {}
        for i, e in ipairs(list) do
            changes[i] = { id = e.task.task_id, from = "working", to = e.state, append_history = e.h,
                           append_artifacts = e.a, requested = "", error = "" }
        end
        local res, err, code = store:change_many(changes)
        local outs = {}
        for i, e in ipairs(list) do
            local r = res and res[i]
            local status, id, ty, out
            if r then
                status, id, ty, out = settled(e.task, e.header, e.state, e.rj, r[1], r[2], nil)
            else
                status, id, ty, out = settled(e.task, e.header, e.state, e.rj, nil, err, code)
            end
            if out == done then out = { state = done.state, attempt = done.attempt, result = done.result } end
            if type(out) == "table" then out.trace_id, out.pickup = e.trace, e.pickup end
            outs[i] = { status, id, ty, out }
        end
        return outs
    end

    -- The trace id and the pickup latency travel with every outcome (log lines, metrics).
    return function(raw, qi, sealed, prep)
        current_trace, pickup = nil, nil
        local status, id, ty, out = process(raw, qi, sealed, prep)
        if status == OUT.pending then
            local e = pending[#pending]
            e.trace, e.pickup = current_trace, pickup
            return status, id, ty, nil
        end
        if type(out) == "table" then
            out.trace_id, out.pickup = current_trace, pickup -- nil clears the reused `done`
        elseif current_trace or pickup then
            out = { result = out, trace_id = current_trace, pickup = pickup }
        end
        return status, id, ty, out
    end, (rl or batch_store) and prepare or nil, flush -- no prepare: nothing to decide together
end

return M

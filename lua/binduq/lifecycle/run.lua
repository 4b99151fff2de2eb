--- binduq.lifecycle.run: the run and resume operations, which start the handler.
--
--   run     submitted -> working -> completed | input-required | auth-required | rejected,
--           or back to submitted for a retry, or failed. A run of a task that is already
--           terminal is acknowledged and nothing runs (a duplicate); of a paused one it waits
--           for the resume; of a working one it is a duplicate unless binduq itself queued it
--           again (a retry, or a recovery from a dead worker: the "#bq" header says so).
--   resume  input-required / auth-required: the new messages are appended to the history and
--           the handler runs again with all of it; paused: the handler runs again with
--           ctx.saved, the checkpoint it stored.
--
-- A run's first delivery, the common case, starts with one storage call (fast_start); any
-- other is decided on the stored record (binduq.lifecycle.order) and started by a
-- compare-and-set on it, decided again when another operation of the task changed it
-- meanwhile. The handler then runs under the task's timeout; what it returns is stored by
-- binduq.lifecycle.finish, what it raises goes to binduq.lifecycle.failure.

local core = require("binduq.core")
local errors = require("binduq.errors")
local json = require("binduq.json")
local order = require("binduq.lifecycle.order")

local M = {}

local OUT = core.OUTCOME
local unseen, start_from = order.unseen, order.start_from

--- The run and resume operations of a handler state (S: see binduq.lifecycle). Returns
-- do_run(task, header, admission, defer, start) -> outcome.
function M.build(S)
    local store, info, handlers, TaskContext, current = S.store, S.info, S.handlers, S.TaskContext, S.current
    local max_attempts, timeout, rl, debug_on = S.max_attempts, S.timeout, S.rl, S.debug_on
    local log_storage, failed, storage_failed, skipped = S.log_storage, S.failed, S.storage_failed, S.skipped
    local settle = S.settle
    local keep, pause_or_go_on, admit, deferred = S.keep, S.pause_or_go_on, S.admit, S.deferred
    -- What fast_start gives for a first run: nothing stored yet beyond the message itself.
    local FIRST = { attempts = 0 }

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
            -- {nil, msg, code}: its start alone failed (the others of the chunk were made)
            changed, now, attempts = pre[1], pre[2], pre[4]
            if changed == nil then code = pre[3] end
        else
            -- With the task: one recorded by nobody (a producer in another process) and plain
            -- is recorded as working in the same call.
            changed, now, code, attempts = store:start(id, info.worker_id, task)
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
                    -- for the run (see binduq.lifecycle.order).
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
                            -- Admission under the rate limit, asked by this message for itself.
                            local at, status, aid, ty, out = admit(task, header)
                            if at == false then return status, aid, ty, out end
                            admitted_at = at
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
        local pickup
        if task.timestamp then
            local sent = core.parse_iso8601(task.timestamp)
            if sent then pickup = core.now() - sent end
        end
        core.slot_started(task.queue, id, header.attempt)
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
        -- Other tasks of this state may have run while the handler waited (tasks_per_state).
        current.pickup, current.trace = pickup, task.trace_id
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

    return do_run
end

return M

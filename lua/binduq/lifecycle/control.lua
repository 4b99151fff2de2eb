--- binduq.lifecycle.control: the cancel and pause operations.
--
--   pause   submitted -> paused at once (the queued run is skipped when fetched); working:
--           the request is stored and published, and the handler stops at its next yield
--           point (ctx:checkpoint(), ctx:sleep(), ctx:yield()), its checkpoint kept.
--   cancel  any open state -> canceled, published so the running handler stops at its next
--           yield point or within 10,000 Lua instructions (the count hook).
--
-- A cancel that comes before its task's run is recorded, so the run is skipped when it
-- comes; a pause before its run, or after a resume that answers it, is kept in the record's
-- `requested` (binduq.lifecycle.order has the values). The script's optional cancel and pause
-- handlers are notifications: their errors are logged, never the operation's.

local core = require("binduq.core")

local M = {}

local OUT = core.OUTCOME

--- The cancel and pause operations of a handler state (S: see binduq.lifecycle). Returns
-- do_cancel(task, header) -> outcome and do_pause(task, header) -> outcome.
function M.build(S)
    local store, handlers, TaskContext = S.store, S.handlers, S.TaskContext
    local failed, storage_failed, skipped = S.failed, S.storage_failed, S.skipped

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
    -- Before its run, or against a resume that came first, see binduq.lifecycle.order.
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
                if state == "paused" and req == "copy" then
                    after, why = "", "the copy of a pause applied before it came"
                elseif state == "working" and req == "withdrawn-copy" then
                    after, why = "withdrawn", "the copy of a pause a resume withdrew"
                elseif state == "working" and req == "pause-sent" then
                    after, why = "pause", "the copy of a pause already asked of the running handler"
                elseif state == "working" and req == "resume" then
                    -- "withdrawn", not "": a worker's scan of the queue may have told the
                    -- handler of this very pause already (control_from_queue); told so, it
                    -- goes on instead of pausing (binduq.lifecycle.order).
                    after, why = "withdrawn", "withdrawn by a resume that came before it"
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

    return do_cancel, do_pause
end

return M

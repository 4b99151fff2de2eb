--- binduq.lifecycle.order: operations out of order, and what a run or resume may start from.
--
-- Producers on several processes and workers on several machines deliver one task's
-- operations in any order (Bindu's API records nothing binduq can read). Whatever the order,
-- every run's and resume's messages end in the task's history once (a message already there,
-- by its message_id or else its role and content, is not added again), a cancel wins, and a
-- pause and the resume that answers it cancel out, whichever came first. For that the
-- record's `requested` holds, besides "pause" (a pause asked of the running handler):
--   "pause-sent" a pause asked of the running handler by a binduq producer, whose queued copy
--             is still to come (the copy then only turns it into "pause");
--   "copy"    paused by a pause whose queued copy is still to come (a binduq producer paused
--             the queued task, or the handler stopped for a "pause-sent"): the copy finds the
--             pause done; a resume that comes first starts the task with "resume", so that
--             the copy, when it comes, is withdrawn instead of pausing the task again;
--   "resume"  a resume came that no pause has answered yet: on a working task, the pause
--             that comes next is withdrawn; on a task whose run has not come (a record this
--             worker made as "paused"), the run starts it when it comes;
--   "run"     its run has not come, and its pauses and resumes are even: the run starts it;
--   "merge"   its run has not come, and it is paused: the run is recorded, not started;
--   "withdrawn-copy" the same for a "pause-sent": the copy, when it comes, is absorbed; a
--             handler that stops for the pause goes on and leaves "resume" for the copy;
--   "withdrawn" a resume withdrew the pause asked of the running handler, which may have
--             been told already (also when the resume came first: a busy worker's scan of
--             the queue tells a handler of a pause before the pause is handled in its turn):
--             it goes on from its checkpoint instead of pausing.
-- A record made for an operation other than a run is "paused" until its run comes, so no
-- fast path takes it for the run's own record. One unanswered pause or resume is remembered;
-- beyond that the later ones count once.
--
-- The pause operation's side is binduq.lifecycle.control's do_pause; the run's and resume's
-- is here (start_from, keep) and in binduq.lifecycle.run.

local json = require("binduq.json")
local storage_mod = require("binduq.storage")

local M = {}

local TERMINAL = storage_mod.TERMINAL
local WAITING = { ["input-required"] = true, ["auth-required"] = true }

-- A message's identity in a history: its message_id, else its role and content.
local function msg_key(m)
    if type(m) ~= "table" then return "v\0" .. tostring(m) end
    local mid = m.message_id
    if type(mid) == "string" and mid ~= "" then return "id\0" .. mid end
    return "rc\0" .. tostring(m.role) .. "\0" .. tostring(m.content)
end

--- The messages of task that its record's history does not hold yet, or nil.
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
M.unseen = unseen

--- What a run or resume may start from, given the stored record, whether its messages are
-- appended, and what `requested` becomes; or nil, why not, and what `requested` becomes
-- (nil: unchanged). See the values above.
function M.start_from(task, header, rec)
    local state, req = rec.state, rec.requested or ""
    local requeued = header.attempt > 1 or header.redelivered or header.deferred or header.requeued
    if TERMINAL[state] then return nil, "the task is already " .. state end
    if task.type == "run" then
        if state == "submitted" then return state end
        if state == "working" and requeued then return state end
        if state == "paused" and req == "run" then return state, true, "" end
        if state == "paused" and req == "resume" then return state, true, "resume" end
        if state == "paused" and req == "copy" then return nil, "the task is paused; a resume runs it" end
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
    if state == "paused" and req == "copy" then return state, true, "resume" end
    if WAITING[state] or state == "paused" then return state, true end
    if requeued and (state == "submitted" or state == "working") then return state end
    if state == "working" and req == "pause" then
        -- The handler may have been told already: "withdrawn" lets it go on (below).
        return nil, "the resume withdrew a pause that had not happened yet", "withdrawn"
    end
    if state == "working" and req == "pause-sent" then
        return nil, "the resume withdrew a pause that had not happened yet (its copy still to come)",
               "withdrawn-copy"
    end
    if state == "working" then
        return nil, "a resume while it runs: the pause it answers, when it comes, is withdrawn", "resume"
    end
    return nil, "nothing to resume: the task is " .. state
end

--- The storage's side of the order (S: see binduq.lifecycle). Returns keep(task, rec, req)
-- and pause_or_go_on(id).
function M.build(S)
    local store = S.store

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

    -- A handler stopped for a pause: "go" when a resume answered the pause first (requested
    -- "resume", or "withdrawn"), "paused" once the pause is stored (only while nothing
    -- answered it: a compare-and-set on the request too), the state the task is in when it
    -- is no longer working, or nil when the storage failed.
    local function pause_or_go_on(id)
        for _ = 1, 8 do
            if store:change{ id = id, from = "working", if_requested = "resume" }
                    or store:change{ id = id, from = "working", if_requested = "withdrawn", requested = "" }
                    or store:change{ id = id, from = "working", if_requested = "withdrawn-copy", requested = "resume" } then
                return "go"
            end
            for _, req in ipairs({ "pause", "pause-sent", "" }) do
                local c, now = store:change{ id = id, from = "working", to = "paused",
                                             requested = req == "pause-sent" and "copy" or "", if_requested = req }
                if c == nil then return nil end
                if c then return "paused" end
                if now ~= "working" then return tostring(now) end
            end
        end
        return nil
    end

    return keep, pause_or_go_on
end

return M

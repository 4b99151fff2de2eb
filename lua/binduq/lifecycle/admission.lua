--- binduq.lifecycle.admission: runs and resumes under the worker's rate limit.
--
-- With rate_limit = { limit =, period = }, a run or resume starts only once the limiter
-- (core.rate_limit: a sliding window in Redis, or in memory) admits it, per key: the
-- script's rate_key(task), else one key for all; a key of nil or false is not limited. A
-- task over the limit is queued again (its lease released) for the time the limiter names,
-- and other keys keep flowing. The admission is asked for a chunk of messages in one round
-- trip (admit_chunk, from binduq.lifecycle.chunk's prepare), else by each message for itself
-- when its handler is about to start (admit). The verdicts are the limiter's, exact; a
-- message whose admission then goes unused (its task turned out canceled, say) only leaves
-- its slot in the window unused.

local core = require("binduq.core")
local task_mod = require("binduq.task")

local M = {}

local OUT = core.OUTCOME

--- The rate-limit admission of a handler state (S: see binduq.lifecycle). Returns
-- admit(task, header), admit_chunk(preps) and deferred(task, header, wait) -> outcome.
function M.build(S)
    local rl, rate_key, max_attempts, failed = S.rl, S.rate_key, S.max_attempts, S.failed

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

    -- Asks the limiter for one task about to start. Returns the time it was admitted (nil:
    -- its key is not limited), or false and the outcome of a task not admitted, of a
    -- rate_key that raised or of a limiter that failed.
    local function admit(task, header)
        local key = "*"
        if rate_key then
            local okk, k = pcall(rate_key, task)
            if not okk then
                return false, failed(task, { code = "ERATEKEY", message = "rate_key raised: " .. tostring(k),
                                             retryable = false }, header)
            end
            key = k
        end
        if key == nil or key == false then return nil end
        local admitted, when, rcode = core.rate_limit(tostring(key), rl.limit, rl.period)
        if admitted == nil then
            return false, failed(task, { code = rcode or "ERATELIMIT", message = "rate limiter: " .. tostring(when),
                                         retryable = true }, header)
        end
        if not admitted then return false, deferred(task, header, when) end
        return when
    end

    -- Asks the limiter for the runs and resumes of a chunk in one round trip (core.rate_limit
    -- of a batch): each entry of preps (chunk.lua's, with task and header) gets admission =
    -- { at = } or { wait = }. On an error, or for a rate_key that raises (process reports
    -- it), nothing is decided: each asks for itself in process.
    local function admit_chunk(preps)
        local at, keys, n = {}, {}, 0 -- the requests: message i of the chunk, its key
        for i = 1, #preps do
            local e = preps[i]
            local task, header = e.task, e.header
            if task and (task.type == "run" or task.type == "resume")
                    and header.attempt <= (task.max_attempts or max_attempts) then
                local key = "*"
                if rate_key then
                    local okk, k = pcall(rate_key, task)
                    key = okk and k or nil
                end
                if key ~= nil and key ~= false then
                    n = n + 1
                    at[n], keys[n] = i, tostring(key)
                end
            end
        end
        if n > 0 then
            local res = core.rate_limit(at, keys, rl.limit, rl.period)
            if res then -- verdict, value per request
                for j = 1, n do
                    local v = res[2 * j]
                    preps[at[j]].admission = res[2 * j - 1] == 1 and { at = v } or { wait = v }
                end
            end
        end
    end

    return admit, admit_chunk, deferred
end

return M

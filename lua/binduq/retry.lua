--- binduq.retry: the default failure policy, and how to write one.
--
-- A failure policy is a function (task, err, attempt) -> decision, called in the handler
-- state when a handler fails. `err` is {code=, message=, traceback=, retryable=}; `attempt`
-- is the attempt that just failed (1 for the first). The decision is one of
--   { retry = seconds }                  try again after that long (server clock)
--   { dead_letter = true, reason = "..." } set the task aside in the dead-letter list
--   { drop = true, reason = "..." }      forget it (logged)
-- or nil for the default below. The mechanism (the delayed set, the atomic moves, the
-- jittered backoff arithmetic) is binduq's; the policy is yours.

local core = require("binduq.core")

local M = {}
local OUT = core.OUTCOME -- the engine's outcome names

--- The default: exponential backoff with full jitter (base 1 s, cap 5 min), at most 5
-- attempts, then the dead-letter list; a non-retryable error goes there at once. A task's
-- own `max_attempts` field beats the worker's.
function M.default(opts)
    local max = opts.max_attempts or 5
    local base, cap = opts.retry_base or 1, opts.retry_cap or 300
    return function(task, err, attempt)
        local limit = task.max_attempts or max
        if err.retryable == false then
            return { dead_letter = true, reason = ("%s (not retryable)"):format(err.message) }
        end
        if attempt >= limit then
            return { dead_letter = true,
                     reason = ("failed %d time%s (max_attempts %d): %s"):format(attempt, attempt == 1 and "" or "s",
                                                                               limit, err.message) }
        end
        return { retry = core.backoff(attempt - 1, base, cap, "full") }
    end
end

--- Checks and normalises a decision. Returns the kind ("retry", "dead", "dropped") and the
-- decision, or raises naming what is wrong with it.
function M.check(d)
    if type(d) ~= "table" then error("a failure policy must return a table or nil (got " .. type(d) .. ")", 0) end
    if d.retry ~= nil then
        local why = core.duration_problem(d.retry)
        if why then error("retry must be a number of seconds from 0 to 365 days (it " .. why .. ")", 0) end
        return OUT.retry, d
    end
    if d.dead_letter then return OUT.dead, d end
    if d.drop then return OUT.dropped, d end
    error("a failure policy's decision needs retry, dead_letter or drop", 0)
end

return M

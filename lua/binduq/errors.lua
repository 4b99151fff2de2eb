--- binduq.errors: the error values handlers raise and failure policies receive.
--
-- Every handler failure reaches the rest of binduq as a table
--   { code = "EHANDLER", message = "...", traceback = "...", retryable = true }
-- `bq.fail{...}` raises such a table on purpose (for example retryable = false for an input
-- that will never succeed); any other error value is wrapped into one by `normalize`.

local M = {}

local Error = {}
Error.__index = Error
Error.__name = "binduq.Error"
function Error.__tostring(e)
    return (e.code and (e.code .. ": ") or "") .. tostring(e.message)
end
M.Error = Error

local function new(t)
    return setmetatable({
        code = t.code or "EHANDLER",
        message = t.message ~= nil and tostring(t.message) or "handler failed",
        retryable = t.retryable ~= false,
        traceback = t.traceback,
    }, Error)
end

--- Raises a handler error. `t` is a message string or {code=, message=, retryable=}.
function M.fail(t, level)
    if type(t) == "string" then t = { message = t } end
    if type(t) ~= "table" then error("bq.fail expects a message or a table", 2) end
    error(new(t), (level or 1) + 1)
end

--- Turns any error value into an error table; `tb` is the traceback text, if known.
function M.normalize(e, tb)
    if getmetatable(e) == Error then
        if tb and not e.traceback then e.traceback = tb end
        return e
    end
    if type(e) == "table" and (e.message ~= nil or e.code ~= nil) then
        local n = new(e)
        n.traceback = n.traceback or tb
        return n
    end
    local msg = e
    if type(e) ~= "string" then
        local mt = getmetatable(e)
        msg = (mt and mt.__tostring) and tostring(e) or ("(error object is a " .. type(e) .. " value)")
    end
    return new({ code = "EHANDLER", message = msg, traceback = tb })
end

--- A message handler for xpcall: normalizes the error and records the traceback.
function M.handler(e)
    local msg = type(e) == "string" and e or nil
    return M.normalize(e, debug.traceback(msg, 2))
end

--- The plain-table form (for JSON).
function M.plain(e)
    return { code = e.code, message = e.message, traceback = e.traceback, retryable = e.retryable }
end

return M

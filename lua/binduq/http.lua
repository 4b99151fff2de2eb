--- binduq.http: HTTP calls for handlers and scripts (ctx:http{...}, bq.http{...}).
--
--   local resp, err, code, failed = bq.http{ url = "...", method = "POST",
--       headers = { authorization = "Bearer " .. key }, body = { model = "m", ... },
--       timeout = 60, on_event = function(ev) ... end }
--
-- The mechanism is C on libcurl (src/net/http.c, src/lua/l_http.c); this module adds the
-- defaults, the JSON body, the streaming loops and the error for a 4xx/5xx status.
--
-- Returns the response {status=, headers=, body=} (headers: lower-case names; body absent
-- when streamed), or nil, message, code; for a status of 400 or more the code is "EHTTP"
-- and the response comes fourth. Inside a handler every wait is a yield point: a cancel, a
-- pause, the handler's timeout or a shutdown closes the transfer and raises as ctx:sleep
-- does. Messages never show the URL's user, password or query string, nor any header.

local core = require("binduq.core")
local json = require("binduq.json")

local M = {}

--- The defaults (seconds, bytes); a call's options override them.
M.DEFAULTS = {
    timeout = 300,            -- the whole call
    connect_timeout = 10,
    idle_timeout = 0,         -- none: a model may think for minutes between two tokens
    max_bytes = 16 * 1024 * 1024,
    redirects = 0,            -- a 3xx is returned, not followed
    verify = true,            -- TLS certificate and host name checks
}

local KNOWN = {
    url = true, method = true, headers = true, body = true, timeout = true, connect_timeout = true,
    idle_timeout = true, max_bytes = true, redirects = true, verify = true, ca_file = true,
    on_chunk = true, on_event = true, max_event = true,
}

local Response = {}
Response.__index = Response
Response.__name = "binduq.HttpResponse"

--- The body decoded as JSON: value, or nil and a message.
function Response:json()
    if self.body == nil then return nil, "the body was streamed" end
    return json.decode(self.body)
end

local function options(opts, level)
    if type(opts) ~= "table" then error("http: expects a table of options", level) end
    for k in pairs(opts) do
        if not KNOWN[k] then error("http: unknown option '" .. tostring(k) .. "'", level) end
    end
    if opts.on_chunk ~= nil and opts.on_event ~= nil then
        error("http: on_chunk and on_event exclude each other", level)
    end
    for _, k in ipairs({ "on_chunk", "on_event" }) do
        if opts[k] ~= nil and type(opts[k]) ~= "function" then
            error("http: option '" .. k .. "' must be a function", level)
        end
    end
    local c = {}
    for k, v in pairs(M.DEFAULTS) do c[k] = v end
    for k, v in pairs(opts) do c[k] = v end
    c.stream = opts.on_chunk ~= nil or opts.on_event ~= nil
    if type(c.body) == "table" then
        local text, jerr = json.encode(c.body)
        if not text then error("http: the body cannot be encoded as JSON: " .. tostring(jerr), level) end
        c.body = text
        local h, typed = {}, false
        for name, v in pairs(c.headers or {}) do
            h[name] = v
            if type(name) == "string" and name:lower() == "content-type" then typed = true end
        end
        if not typed then h["Content-Type"] = "application/json" end
        c.headers = h
    end
    if c.on_event ~= nil then
        local h, accept = {}, false
        for name, v in pairs(c.headers or {}) do
            h[name] = v
            if type(name) == "string" and name:lower() == "accept" then accept = true end
        end
        if not accept then h.Accept = "text/event-stream" end
        c.headers = h
    end
    return c
end

-- "GET https://host/path", from the call's tostring.
local function call_shown(call)
    return (tostring(call):match("%((.*)%)")) or "http"
end

-- Streams the body to on_chunk, or as events to on_event; a callback returning false stops
-- the call (resp.stopped = true). Returns true, or nil, msg, code.
local function pump(call, c, resp)
    local reader = c.on_event and core.sse_reader(c.max_event)
    while true do
        local piece, err, code = call:read()
        if piece == nil then return nil, err, code end
        if piece == false then return true end
        if reader then
            local events, ferr, fcode = reader:feed(piece)
            if not events then return nil, call_shown(call) .. ": " .. ferr, fcode end
            for i = 1, #events do
                if c.on_event(events[i]) == false then
                    resp.stopped = true
                    return true
                end
            end
        elseif c.on_chunk(piece) == false then
            resp.stopped = true
            return true
        end
    end
end

--- One call; see the module's comment. `level`: where option errors point (default: the caller).
function M.request(opts, level)
    local c = options(opts, (level or 1) + 1)
    local call <close>, serr, scode = core.http_start(c)
    if not call then return nil, serr, scode end
    local shown = call_shown(call)
    local status, headers, hcode = call:head()
    if not status then return nil, headers, hcode end
    local resp = setmetatable({ status = status, headers = headers }, Response)
    if c.stream and status >= 200 and status < 300 then
        local ok, err, code = pump(call, c, resp)
        if not ok then return nil, err, code end
        -- Stopped by the callback (an SSE stream's "[DONE]" read, most often just before the
        -- response ends): its connection is kept if the rest comes at once.
        if resp.stopped then call:release() end
    else
        local body, err, code = call:body()
        if not body then return nil, err, code end
        resp.body = body
    end
    if status >= 400 then
        local excerpt = resp.body and resp.body:sub(1, 200):gsub("%c", " ") or ""
        return nil, ("%s: HTTP %d%s%s"):format(shown, status, excerpt ~= "" and ": " or "", excerpt), "EHTTP", resp
    end
    return resp
end

return M

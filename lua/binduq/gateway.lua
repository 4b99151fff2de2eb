--- binduq.gateway: the A2A JSON-RPC gateway, the "API process" of the documentation's
-- architecture. It serves an agent card and A2A's JSON-RPC methods over HTTP (the server is
-- C, libmicrohttpd: src/engine/gateway.c), turns `message/send` into a `run` on binduq's
-- queue (or a `resume` of a task waiting for input), answers `tasks/get` from the task
-- storage and pushes `cancel` for `tasks/cancel`, as Bindu's API processes do.
--
--   local gw = bq.gateway{ scheduler = {...}, storage = {...}, agent = {...}, port = 3773 }
--   gw:run()          -- until SIGTERM or SIGINT
--
-- It speaks both protocol versions, chosen by the method's name as the A2A SDKs do: A2A 0.3
-- (message/send, message/stream, tasks/get, tasks/cancel, tasks/resubscribe: the names
-- Bindu uses, with `kind` fields and lower-case states) and A2A 1.0 (SendMessage,
-- SendStreamingMessage, GetTask, CancelTask, SubscribeToTask: no `kind`, TASK_STATE_*
-- states, ROLE_* roles, results wrapped as {task = ...}, blocking by default). The agent card
-- is one hybrid card for both (supportedInterfaces for 1.0 clients, url for 0.3 ones), at
-- /.well-known/agent-card.json and Bindu's /.well-known/agent.json. Streams and blocking
-- sends follow their task through the queue's task events (docs/events.md): a thread of the
-- server reads the stream and wakes this loop, which reads the stored task of each event that
-- names one it follows, so an update made by a worker anywhere reaches every gateway at
-- once; every `poll` seconds (2; 0.1 when task events are off) all are read besides, in case
-- an event was missed. Push notifications (tasks/pushNotificationConfig/*, 1.0's
-- *TaskPushNotificationConfig*, or inline in a send's configuration): the configs are kept in
-- Redis (binduq.push), and on each event of a task that has some, the gateway that claims
-- the notification first POSTs the task's state to each URL, retried with backoff.
--
-- Security: loopback unless `host` says otherwise; with `tokens` (or BINDUQ_GATEWAY_TOKENS,
-- comma-separated) every JSON-RPC call needs "Authorization: Bearer <token>" (compared in
-- constant time); the agent card stays public, as A2A wants. Bodies over `max_body` are
-- refused (413), a client over `rate` requests a second gets 429, TLS with cert and key.

local core = require("binduq.core")
local json = require("binduq.json")
local config = require("binduq.config")
local storage_mod = require("binduq.storage")
local push = require("binduq.push")

local M = {}

-- lua-cjson writes an empty table as {}; where A2A wants an empty array, this marker stands
-- in and becomes [] in the text (a string no client sends: a control byte and a random id).
local EMPTY_TAG = "\1binduq-empty-array-" .. core.uuid4()
local EMPTY_PATTERN = '"\\u0001' .. EMPTY_TAG:sub(2):gsub("%p", "%%%0") .. '"'
local function list(t) return #t > 0 and t or EMPTY_TAG end
-- Raises on what JSON cannot carry: a value from a request or from the storage may nest past
-- the encoder's depth or hold a number JSON has no text for, so every answer built from one
-- is encoded under pcall (rpc_answer, emit), and fails that answer, not the gateway.
local function encode(v)
    return (json.encode_strict(v):gsub(EMPTY_PATTERN, "[]"))
end

-- How deep a message may nest (the message object is level 1): what the decoder takes less
-- what an answer wraps around a message (1.0's {result: {task: {history: [message]}}} puts it
-- at level 5, its parts' values at 8), so that every answer about the task can be encoded.
local MAX_MESSAGE_DEPTH = json.MAX_DEPTH - 8

local Gateway = {}
Gateway.__index = Gateway
Gateway.__name = "binduq.Gateway"

M.PROTOCOL_VERSION = "0.3.0"

-- JSON-RPC and A2A error codes (A2A specification, section "Error Handling").
M.E = {
    PARSE = -32700, INVALID_REQUEST = -32600, METHOD_NOT_FOUND = -32601, INVALID_PARAMS = -32602,
    INTERNAL = -32603, TASK_NOT_FOUND = -32001, TASK_NOT_CANCELABLE = -32002,
    PUSH_NOT_SUPPORTED = -32003, UNSUPPORTED = -32004,
}

-- A2A 1.0's ErrorInfo reasons for its error codes.
local REASON = { [-32001] = "TASK_NOT_FOUND", [-32002] = "TASK_NOT_CANCELABLE",
                 [-32003] = "PUSH_NOTIFICATION_NOT_SUPPORTED", [-32004] = "UNSUPPORTED_OPERATION",
                 [-32602] = "INVALID_PARAMS" }

local KNOWN = {
    scheduler = "table", storage = "table", agent = "table", host = "string", port = "number",
    tokens = "table", max_body = "number", max_connections = "number", rate = "number",
    cert = "string", key = "string", poll = "number", blocking_timeout = "number",
    deployment = "table", name = "string", description = "string", skills = "table",
    version = "string", author = "string",
    push = "boolean", push_attempts = "number", push_timeout = "number", push_ttl = "number",
    dashboard = "boolean|table", keepalive = "number",
}

-- Rate-limit buckets kept before the full ones are swept (Gateway:admitted).
local MAX_BUCKETS = 4096

-- binduq's states as A2A's: a paused task is still open and will go on, "working" to a client.
local A2A_STATE = { submitted = "submitted", working = "working", paused = "working",
                    ["input-required"] = "input-required", ["auth-required"] = "auth-required",
                    completed = "completed", failed = "failed", canceled = "canceled",
                    rejected = "rejected" }
local FINAL = { completed = true, failed = true, canceled = true, rejected = true,
                ["input-required"] = true, ["auth-required"] = true }
local V1_STATE = { submitted = "TASK_STATE_SUBMITTED", working = "TASK_STATE_WORKING",
                   completed = "TASK_STATE_COMPLETED", failed = "TASK_STATE_FAILED",
                   canceled = "TASK_STATE_CANCELED", rejected = "TASK_STATE_REJECTED",
                   ["input-required"] = "TASK_STATE_INPUT_REQUIRED",
                   ["auth-required"] = "TASK_STATE_AUTH_REQUIRED", unknown = "TASK_STATE_UNSPECIFIED" }

--- The host and port of an agent config's deployment.url ("http://localhost:3773").
local function addr_of(url)
    local host, port = tostring(url):match("^https?://%[?([^%]/:]+)%]?:(%d+)")
    if not host then host = tostring(url):match("^https?://([^/:]+)") end
    if host == "localhost" then host = "127.0.0.1" end
    return host, tonumber(port)
end

function M.new(opts, level)
    level = (level or 1) + 1
    opts = opts or {}
    config.check(opts, KNOWN, "gateway options", level)
    for _, k in ipairs({ "push_attempts", "push_timeout", "push_ttl", "keepalive" }) do
        local v = opts[k]
        if v ~= nil and not (v > 0 and v < 1e9) or k == "push_attempts" and v and math.type(v) ~= "integer" then
            error(k .. " must be a positive " .. (k == "push_attempts" and "whole number" or "number of seconds"), level)
        end
    end
    local bq = require("binduq")
    local agent = opts.agent or {}
    local dep = opts.deployment or agent.deployment or {}
    local host, port = opts.host, opts.port
    local env_addr = os.getenv("BINDUQ_GATEWAY_ADDR")
    if (host == nil or port == nil) and env_addr and env_addr ~= "" then
        local h, p = env_addr:match("^%[?([^%]]-)%]?:(%d+)$")
        if not h then error("BINDUQ_GATEWAY_ADDR must be host:port (got '" .. env_addr .. "')", level) end
        host, port = host or h, port or tonumber(p)
    end
    local from_deployment = false
    if (host == nil or port == nil) and dep.url then
        local h, p = addr_of(dep.url)
        from_deployment = host == nil and port == nil and p ~= nil
        host, port = host or h, port or p
    end
    local tokens = opts.tokens
    if tokens == nil and os.getenv("BINDUQ_GATEWAY_TOKENS") and os.getenv("BINDUQ_GATEWAY_TOKENS") ~= "" then
        tokens = {}
        for t in os.getenv("BINDUQ_GATEWAY_TOKENS"):gmatch("[^,%s]+") do tokens[#tokens + 1] = t end
    end
    local sched_opts = { scheduler = opts.scheduler, storage = opts.storage }
    local s = bq.scheduler(sched_opts)
    local server, err, code = core.gateway{ host = host or "127.0.0.1", port = port or 3773,
                                            max_body = opts.max_body, max_connections = opts.max_connections,
                                            cert = opts.cert, key = opts.key }
    if not server then
        s:close()
        return nil, err, code
    end
    -- Task events wake the loop for the tasks it follows (gw:follow: src/engine/gateway.c).
    local following = false
    if s.events_on then
        local fok, ferr = server:follow(s.client, s.queue_name)
        following = fok == true
        if not fok then core.log("warn", "gateway_events_off", { error = ferr, poll = opts.poll or 0.1 }) end
    end
    local push_on = opts.push ~= false
    local self = setmetatable({
        s = s, server = server, tokens = tokens, streams = {}, pending = {},
        push_store = push_on and push.store(s, { ttl = opts.push_ttl }) or nil,
        sender = push_on and push.sender{ attempts = opts.push_attempts, timeout = opts.push_timeout } or nil,
        push_watch = {}, push_seen = {}, push_due = {},
        rate = opts.rate or 10000, buckets = {}, nbuckets = 0, sweep_at = MAX_BUCKETS,
        poll = opts.poll or (following and 2 or 0.1), blocking_timeout = opts.blocking_timeout or 60,
        keepalive = opts.keepalive or 15,
        scheme = opts.cert and "https" or "http",
    }, Gateway)
    -- The card's URL: the deployment's, when it gave the address; else where this listens.
    local shown = (host or "127.0.0.1"):find(":", 1, true) and "[" .. host .. "]" or (host or "127.0.0.1")
    self.url = from_deployment and dep.url or ("%s://%s:%d/"):format(self.scheme, shown, server:port())
    self.card = {
        protocolVersion = M.PROTOCOL_VERSION,
        -- For A2A 1.0 clients (the JS SDK 1.x reads only this), both versions at one URL.
        supportedInterfaces = {
            { url = "", protocolBinding = "JSONRPC", protocolVersion = "1.0" },
            { url = "", protocolBinding = "JSONRPC", protocolVersion = "0.3" },
        },
        additionalInterfaces = { { url = "", transport = "JSONRPC" } },
        name = opts.name or agent.name or "binduq agent",
        description = opts.description or agent.description or "An agent served by binduq",
        url = self.url,
        preferredTransport = "JSONRPC",
        version = opts.version or agent.version or "1.0.0",
        capabilities = { streaming = true, pushNotifications = push_on, stateTransitionHistory = false },
        defaultInputModes = { "text/plain" },
        defaultOutputModes = { "text/plain" },
        skills = list(opts.skills or agent.skills or {}),
    }
    if opts.dashboard then
        local dok, d = pcall(M.dashboard, self, opts, host or "127.0.0.1", level)
        if not dok then
            self:close()
            error(d, level)
        end
        self.dashboard = d
    end
    for _, i in ipairs(self.card.supportedInterfaces) do i.url = self.url end
    self.card.additionalInterfaces[1].url = self.url
    if tokens and #tokens > 0 then
        self.card.securitySchemes = { bearer = { type = "http", scheme = "bearer" } }
        self.card.security = { { bearer = EMPTY_TAG } }
    end
    return self
end

-- The web dashboard (docs/dashboard.md) on this gateway's server, under /dashboard/: the
-- `dashboard` option, true or {token=, read_only=, queues=}.
function M.dashboard(self, opts, host, level)
    local d = opts.dashboard == true and {} or opts.dashboard
    config.check(d, { token = "string", read_only = "boolean", queues = "table" }, "dashboard", level + 1)
    if self.s.backend == "memory" then
        error("the dashboard option needs Redis (REDIS_URL or scheduler.url): the in-memory scheduler has "
              .. "nothing another process could show", 0)
    end
    local sched = {}
    for k, v in pairs(config.scheduler_section({ scheduler = opts.scheduler, storage = opts.storage })) do sched[k] = v end
    return require("binduq.dashboard").new{
        server = self.server, prefix = "/dashboard", host = host, scheduler = sched,
        storage = storage_mod.section(opts.storage), queues = d.queues, queue = self.s.queue_name,
        token = d.token or core.env("BINDUQ_DASHBOARD_TOKEN"), read_only = d.read_only,
    }
end

function Gateway:port()
    return self.server:port()
end

-- ---- A2A shapes ------------------------------------------------------------------------------
-- A stored task (storage.view) is written in either version's shape by a `proto` table:
-- message, artifact, task, and the stream's events. Parts stay as the task keeps them (0.3's
-- {kind = "text", text = ...}); 1.0 drops `kind`.

local function parts_of(m)
    local parts = m.parts
    if type(parts) ~= "table" or #parts == 0 then
        parts = { { kind = "text", text = tostring(m.content or m.text or "") } }
    end
    return parts
end

local V03, V1 = {}, {}

function V03.message(m, t, i)
    return { kind = "message", role = m.role == "user" and "user" or "agent", parts = parts_of(m),
             messageId = m.message_id or m.messageId or (t.task_id .. ":" .. i),
             taskId = t.task_id, contextId = t.context_id or t.task_id }
end

local function v1_parts(parts)
    local out = {}
    for i, p in ipairs(parts) do
        if p.kind == "data" then
            out[i] = { data = p.data }
        elseif p.kind == "file" and type(p.file) == "table" then
            out[i] = { url = p.file.uri, raw = p.file.bytes, mediaType = p.file.mimeType, filename = p.file.name }
        else
            out[i] = { text = tostring(p.text or "") }
        end
    end
    return out
end

function V1.message(m, t, i)
    return { role = m.role == "user" and "ROLE_USER" or "ROLE_AGENT", parts = v1_parts(parts_of(m)),
             messageId = m.message_id or m.messageId or (t.task_id .. ":" .. i),
             taskId = t.task_id, contextId = t.context_id or t.task_id }
end

function V03.artifact(a, i)
    return { artifactId = a.artifact_id or a.artifactId or ("artifact-" .. i), name = a.name, parts = parts_of(a) }
end

function V1.artifact(a, i)
    return { artifactId = a.artifact_id or a.artifactId or ("artifact-" .. i), name = a.name,
             parts = v1_parts(parts_of(a)) }
end

V03.state = function(st) return A2A_STATE[st] or "unknown" end
V1.state = function(st) return V1_STATE[A2A_STATE[st] or "unknown"] end

local function status_of(P, t)
    local st = { state = P.state(t.state), timestamp = core.iso8601(t.state_at or t.updated_at or core.now()) }
    local last = t.history[#t.history]
    local a2a = A2A_STATE[t.state]
    if last and last.role ~= "user" and a2a ~= "working" and a2a ~= "submitted" then
        st.message = P.message(last, t, #t.history)
    end
    return st
end

--- A stored task as a Task; history_length: the last n messages (0.3: 0 and none mean all,
-- as Bindu reads it; 1.0: 0 means none).
local function task_of(P, t, history_length)
    local hist, from = {}, 1
    if history_length and (history_length > 0 or P == V1) then
        from = math.max(1, #t.history - history_length + 1)
        if history_length == 0 then from = #t.history + 1 end
    end
    for i = from, #t.history do hist[#hist + 1] = P.message(t.history[i], t, i) end
    local arts = {}
    for i, a in ipairs(t.artifacts or {}) do arts[i] = P.artifact(a, i) end
    local out = { id = t.task_id, contextId = t.context_id or t.task_id, status = status_of(P, t),
                  history = list(hist), artifacts = list(arts) }
    if P == V03 then out.kind = "task" end
    return out
end

function V03.task(t, hl) return task_of(V03, t, hl) end
function V1.task(t, hl) return task_of(V1, t, hl) end
V03.sent = V03.task
function V1.sent(t, hl) return { task = task_of(V1, t, hl) } end

-- Stream events: the task first, then status and artifact updates.
V03.first = V03.task
function V1.first(t) return { task = task_of(V1, t) } end
function V03.status_event(t, final)
    return { kind = "status-update", taskId = t.task_id, contextId = t.context_id or t.task_id,
             status = status_of(V03, t), final = final }
end
function V1.status_event(t)
    return { statusUpdate = { taskId = t.task_id, contextId = t.context_id or t.task_id, status = status_of(V1, t) } }
end
function V03.artifact_event(t, a, i)
    return { kind = "artifact-update", taskId = t.task_id, contextId = t.context_id or t.task_id,
             artifact = V03.artifact(a, i), lastChunk = true }
end
function V1.artifact_event(t, a, i)
    return { artifactUpdate = { taskId = t.task_id, contextId = t.context_id or t.task_id,
                                artifact = V1.artifact(a, i), lastChunk = true } }
end

-- ---- JSON-RPC --------------------------------------------------------------------------------

-- The JSON text of an id: a string as it came, an integer in all its digits (the encoder
-- writes numbers with 14 significant digits: 123456789012345 came back 1.2345678901234e+14),
-- null for none. The decoder reads every number as a double, so an integer is exact up to
-- 2^53.
local function id_text(id)
    if id == nil or id == json.null then return "null" end
    if type(id) == "number" then
        local i = math.tointeger(id)
        if i then return ("%d"):format(i) end
        return ("%.17g"):format(id)
    end
    return json.encode_strict(id)
end

local function rpc_error(id, code, message, v1)
    local data
    if v1 and REASON[code] then
        data = { { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = REASON[code],
                   domain = "a2a-protocol.org" } }
    end
    return '{"jsonrpc":"2.0","id":' .. id_text(id) .. ',"error":'
        .. encode({ code = code, message = message, data = data }) .. "}"
end

local function rpc_result(id, result)
    return '{"jsonrpc":"2.0","id":' .. id_text(id) .. ',"result":' .. encode(result) .. "}"
end

-- The answer with `result`, or when that cannot be encoded (a stored task nested past the
-- encoder's depth) an Internal error for this request alone, logged with `method`.
local function rpc_answer(id, result, v1, method)
    local ok, text = pcall(rpc_result, id, result)
    if ok then return text end
    core.log("error", "gateway_encode_failed", { method = method, error = tostring(text) })
    return rpc_error(id, M.E.INTERNAL, "Internal error: the answer cannot be written as JSON", v1)
end

-- The id an error about an invalid request echoes: the request's when it is a string or a
-- number JSON can carry (an integer as an integer), else null.
local function echo_id(id)
    if type(id) == "string" then return core.utf8_check(id) and id or nil end
    if type(id) == "number" and id == id and id ~= math.huge and id ~= -math.huge then
        return math.tointeger(id) or id
    end
    return nil
end

-- The rpc id handlers get for a notification (a request without "id"): nobody reads its
-- answer, so a send does not wait and a stream is not opened; the HTTP answer is 204.
local NOTIFY = setmetatable({}, { __name = "binduq.gateway.notification" })

local function fail(code, message) error({ rpc = code, message = message }, 0) end

local V1_ROLE = { ROLE_USER = "user", ROLE_AGENT = "agent" }

-- Raises InvalidParams unless v is an id by the scheduler's rule (src/core/id.h: 1 to 256
-- bytes of UTF-8, no control character), checked before the id reaches a key or the storage.
local function check_task_id(v, where)
    if type(v) ~= "string" then fail(M.E.INVALID_PARAMS, where .. " must be a task id (a string)") end
    local why = core.id_problem(v)
    if why then fail(M.E.INVALID_PARAMS, where .. " " .. why .. " (an id is 1 to 256 bytes of UTF-8, no control characters)") end
    return v
end

-- Raises InvalidParams when v nests deeper than `max` levels (a table is one) or holds a
-- number JSON has no text for (1e400 decodes as inf): what the task's answers could not carry.
local function check_value(v, where, max)
    local function walk(x, depth)
        if type(x) == "number" then
            if x ~= x or x == math.huge or x == -math.huge then
                fail(M.E.INVALID_PARAMS, where .. " holds a number out of range")
            end
        elseif type(x) == "table" then
            if depth > max then fail(M.E.INVALID_PARAMS, where .. " nests deeper than " .. max .. " levels") end
            for _, y in pairs(x) do walk(y, depth + 1) end
        end
    end
    walk(v, 1)
end

-- The incoming message in binduq's shape: {role=, parts=(0.3's), message_id=}, and its
-- taskId and contextId. Raises InvalidParams naming what is wrong.
local function message_in(P, params)
    if type(params) ~= "table" then fail(M.E.INVALID_PARAMS, "params must be an object") end
    local m = params.message
    if type(m) ~= "table" then fail(M.E.INVALID_PARAMS, "params.message must be an object") end
    if type(m.parts) ~= "table" or #m.parts == 0 then fail(M.E.INVALID_PARAMS, "params.message.parts must be a non-empty array") end
    local role = m.role
    if P == V1 then role = V1_ROLE[role] end
    if role ~= nil and role ~= "user" and role ~= "agent" then
        fail(M.E.INVALID_PARAMS, "params.message.role must be " .. (P == V1 and "ROLE_USER or ROLE_AGENT" or "user or agent"))
    end
    local parts = {}
    for i, p in ipairs(m.parts) do
        local where = ("params.message.parts[%d]"):format(i)
        if type(p) ~= "table" then fail(M.E.INVALID_PARAMS, where .. " must be an object") end
        if P == V1 then
            if type(p.text) == "string" then parts[i] = { kind = "text", text = p.text }
            elseif p.data ~= nil then parts[i] = { kind = "data", data = p.data }
            elseif type(p.url) == "string" or type(p.raw) == "string" then
                parts[i] = { kind = "file", file = { uri = p.url, bytes = p.raw, mimeType = p.mediaType, name = p.filename } }
            else fail(M.E.INVALID_PARAMS, where .. " needs text, data, url or raw") end
        else
            if p.kind ~= "text" and p.kind ~= "file" and p.kind ~= "data" then
                fail(M.E.INVALID_PARAMS, where .. " needs kind text, file or data")
            end
            if p.kind == "text" and type(p.text) ~= "string" then fail(M.E.INVALID_PARAMS, where .. ".text must be a string") end
            parts[i] = p
        end
    end
    check_value(m, "params.message", MAX_MESSAGE_DEPTH)
    check_value(params.metadata, "params.metadata", MAX_MESSAGE_DEPTH)
    if m.messageId ~= nil and (type(m.messageId) ~= "string" or m.messageId == "") then
        fail(M.E.INVALID_PARAMS, "params.message.messageId must be a non-empty string")
    end
    for _, k in ipairs({ "taskId", "contextId" }) do
        if m[k] ~= nil then check_task_id(m[k], "params.message." .. k) end
    end
    return { role = role or "user", parts = parts, message_id = m.messageId }, m.taskId, m.contextId
end

-- A new task as its run records it: submitted, its history the one message.
local function new_task(id, context_id, msg)
    return { task_id = id, context_id = context_id, state = "submitted", history = { msg }, artifacts = {},
             state_at = core.now() }
end

-- message/send's scheduling: a follow-up on an open task (a resume: input it asked for), or
-- a new task (a run) under the message's taskId if it names one that does not exist (as
-- Bindu's clients do), else a fresh id. Returns the stored task, and for a follow-up the
-- length its history had before it; for a new task, nil and true.
function Gateway:submit(P, params, push_cfg)
    local msg, task_id, context_id = message_in(P, params)
    local s = self.s
    local t = task_id and s:get_task(task_id)
    if t then
        if storage_mod.TERMINAL[t.state] then
            fail(M.E.UNSUPPORTED, "the task is " .. t.state .. ": a finished task takes no more messages")
        end
        local before = #t.history
        local ok, err = s:resume(task_id, { msg })
        if not ok then fail(M.E.INTERNAL, "resume: " .. tostring(err)) end
        self:push_inline(task_id, push_cfg)
        return s:get_task(task_id) or t, before
    end
    local id = task_id or core.uuid4()
    local context = context_id or core.uuid4()
    local ok, how = s:run{ task_id = id, conversation_id = context, messages = { msg },
                           metadata = type(params.metadata) == "table" and params.metadata or nil }
    if not ok then fail(M.E.INTERNAL, "schedule: " .. tostring(how)) end
    self:push_inline(id, push_cfg) -- once the run is accepted: a refused one leaves no key
    if how == "scheduled" then
        -- Recorded as sent: the task is what flush() answers for a non-blocking send, so it
        -- is not read back (a worker may have started it meanwhile: its status follows).
        return new_task(id, context, msg), nil, true
    end
    t = s:get_task(id) -- a duplicate: the run scheduled before it is the task
    if not t then fail(M.E.INTERNAL, "the task was scheduled but its record cannot be read") end
    return t
end

-- A send's configuration: {} when absent or null (JSON's null decodes as a truthy value);
-- raises InvalidParams when it is not an object.
local function configuration(params)
    local c = type(params) == "table" and params.configuration or nil
    if c == nil or c == json.null then return {} end
    if type(c) ~= "table" or c[1] ~= nil then fail(M.E.INVALID_PARAMS, "params.configuration must be an object") end
    return c
end

local function history_length(params)
    if type(params) ~= "table" then return nil end
    local n = configuration(params).historyLength
    if n == nil or n == json.null then n = params.historyLength end
    if n == nil or n == json.null then return nil end
    if type(n) ~= "number" or n ~= math.floor(n) or n < 0 then
        fail(M.E.INVALID_PARAMS, "historyLength must be a whole number >= 0")
    end
    return math.tointeger(n)
end

-- The task id of tasks/get, tasks/cancel, tasks/resubscribe: `id` (A2A), or `taskId` /
-- `task_id` (Bindu's clients).
local function task_id_param(params)
    local id = type(params) == "table" and (params.id or params.taskId or params.task_id)
    if type(id) ~= "string" or id == "" then fail(M.E.INVALID_PARAMS, "params.id must be a task id") end
    return check_task_id(id, "params.id")
end

-- A send's inline push config (0.3: configuration.pushNotificationConfig; 1.0:
-- configuration.taskPushNotificationConfig), checked before anything is scheduled.
local function inline_push(self, P, conf)
    local c = conf.pushNotificationConfig
    if P == V1 then c = conf.taskPushNotificationConfig or c end
    if c == nil or c == json.null then return nil end
    if not self.push_store then fail(M.E.PUSH_NOT_SUPPORTED, "Push Notification is not supported") end
    return push.config_in(c, P == V1 and "1.0" or "0.3", nil,
                          P == V1 and "params.configuration.taskPushNotificationConfig"
                              or "params.configuration.pushNotificationConfig")
end

function Gateway:push_inline(task_id, cfg)
    if not cfg then return end
    cfg.id = cfg.id or (cfg.v == "1.0" and core.uuid4() or task_id)
    local ok, err = self.push_store:set(task_id, cfg)
    if not ok then fail(M.E.INVALID_PARAMS, err) end
    self.push_watch[task_id] = true
    self.push_due[task_id] = true
end

local function send(self, P, params, req, rpc_id)
    local conf = configuration(params)
    local hl = history_length(params)
    local push_cfg = inline_push(self, P, conf)
    local blocking = conf.blocking == true
    if P == V1 then blocking = conf.returnImmediately ~= true end -- 1.0 waits unless told not to
    if rpc_id == NOTIFY then blocking = false end
    if not blocking then
        -- A new task that need not be waited for waits for the requests that came with it:
        -- flush() schedules them all in one pipelined round trip.
        local msg, task_id, context_id = message_in(P, params)
        if not task_id or not self.s:get_task(task_id) then
            task_id = task_id or core.uuid4()
            self.pending[#self.pending + 1] = {
                req = req.id, rpc = rpc_id, P = P, hl = hl, msg = msg, push_cfg = push_cfg,
                op = { type = "run", task_id = task_id, conversation_id = context_id or core.uuid4(),
                       messages = { msg }, metadata = type(params.metadata) == "table" and params.metadata or nil },
            }
            return nil
        end
    end
    local t, hist0 = self:submit(P, params, push_cfg)
    if blocking and (hist0 or not FINAL[A2A_STATE[t.state] or ""]) then
        -- Answered from follow(), once the task reaches a final or interrupted state; a
        -- follow-up's task is still in the state that asked for it, so it waits for its
        -- history to grow first (the resume appends its message as it starts the task).
        self.streams[#self.streams + 1] = { P = P, req = req.id, rpc = rpc_id, task = t.task_id, blocking = true,
                                            history_length = hl, hist0 = hist0 or -1,
                                            until_t = core.monotonic() + self.blocking_timeout }
        return nil
    end
    return P.sent(t, hl)
end

local function get(self, P, params)
    local t = self.s:get_task(task_id_param(params))
    if not t then fail(M.E.TASK_NOT_FOUND, "Task not found") end
    return P.task(t, history_length(params))
end

local function cancel(self, P, params)
    local id = task_id_param(params)
    local t = self.s:get_task(id)
    if not t then fail(M.E.TASK_NOT_FOUND, "Task not found") end
    if storage_mod.TERMINAL[t.state] then fail(M.E.TASK_NOT_CANCELABLE, "Task cannot be canceled") end
    local ok, err = self.s:cancel(id)
    if not ok then fail(M.E.INTERNAL, "cancel: " .. tostring(err)) end
    return P.task(self.s:get_task(id) or t)
end

-- A stream (message/stream, tasks/resubscribe): the task first, then status and artifact
-- updates as its stored state changes, ending on a final state. `new`: the task is the new
-- run this stream's send scheduled (follow() takes its first start from the task event).
local function open_stream(self, P, req, rpc_id, t, new)
    if rpc_id == NOTIFY then return json.null end -- scheduled (a stream's send), nothing to follow
    if not self.server:stream(req.id, "text/event-stream") then return nil end
    local st = { P = P, req = req.id, rpc = rpc_id, task = t.task_id, state = t.state, narts = #(t.artifacts or {}),
                 context = t.context_id, new = new }
    self.streams[#self.streams + 1] = st
    self:emit(st, P.first(t))
    if FINAL[A2A_STATE[t.state] or ""] then
        self:emit(st, P.status_event(t, true))
        st.done = true
    end
    return nil
end

local function stream(self, P, params, req, rpc_id)
    local conf = configuration(params)
    local t, _, new = self:submit(P, params, inline_push(self, P, conf))
    return open_stream(self, P, req, rpc_id, t, new)
end

local function resubscribe(self, P, params, req, rpc_id)
    local t = self.s:get_task(task_id_param(params))
    if not t then fail(M.E.TASK_NOT_FOUND, "Task not found") end
    if P == V1 and storage_mod.TERMINAL[t.state] then
        fail(M.E.UNSUPPORTED, "the task is " .. t.state .. ": there is nothing to follow")
    end
    return open_stream(self, P, req, rpc_id, t)
end

-- ---- push notification configs ---------------------------------------------------------------
-- 0.3: set {taskId, pushNotificationConfig}, get/list/delete {id, pushNotificationConfigId};
-- 1.0: Create (a flat TaskPushNotificationConfig), Get/Delete {taskId, id}, List {taskId}.

local function push_target(self, P, params, op)
    if not self.push_store then fail(M.E.PUSH_NOT_SUPPORTED, "Push Notification is not supported") end
    if type(params) ~= "table" then fail(M.E.INVALID_PARAMS, "params must be an object") end
    local task_id
    if P == V1 or op == "set" then task_id = params.taskId or params.task_id
    else task_id = params.id or params.taskId or params.task_id end
    if type(task_id) ~= "string" or task_id == "" then
        fail(M.E.INVALID_PARAMS, "params." .. ((P == V1 or op == "set") and "taskId" or "id") .. " must be a task id")
    end
    check_task_id(task_id, "params." .. ((P == V1 or op == "set") and "taskId" or "id"))
    if not self.s:get_task(task_id) then fail(M.E.TASK_NOT_FOUND, "Task not found") end
    local cfg_id = P == V1 and params.id or params.pushNotificationConfigId
    if cfg_id ~= nil and (type(cfg_id) ~= "string" or cfg_id == "") and op ~= "set" then
        fail(M.E.INVALID_PARAMS, "params." .. (P == V1 and "id" or "pushNotificationConfigId") .. " must be a string")
    end
    return task_id, cfg_id
end

local function push_set(self, P, params)
    local task_id = push_target(self, P, params, "set")
    local cfg = push.config_in(P == V1 and params or params.pushNotificationConfig, P == V1 and "1.0" or "0.3",
                               P == V1 and core.uuid4() or task_id, P == V1 and "params" or "params.pushNotificationConfig")
    local ok, err = self.push_store:set(task_id, cfg)
    if not ok then fail(M.E.INVALID_PARAMS, err) end
    self.push_watch[task_id] = true
    self.push_due[task_id] = true -- a new config hears of the task's state at once
    return push.config_out(cfg, task_id, P == V1)
end

local function push_get(self, P, params)
    local task_id, cfg_id = push_target(self, P, params, "get")
    local cfgs = self.push_store:list(task_id)
    if P == V1 and cfg_id == nil then fail(M.E.INVALID_PARAMS, "params.id must name a push notification config") end
    local found
    for _, c in ipairs(cfgs) do if c.id == (cfg_id or task_id) then found = c end end
    if not found and cfg_id == nil then found = cfgs[1] end -- 0.3: the task's config
    if not found then fail(M.E.TASK_NOT_FOUND, "Push notification config not found") end
    return push.config_out(found, task_id, P == V1)
end

local function push_list(self, P, params)
    local task_id = push_target(self, P, params, "list")
    local out = {}
    for i, c in ipairs(self.push_store:list(task_id)) do out[i] = push.config_out(c, task_id, P == V1) end
    if P == V1 then return { configs = list(out), nextPageToken = "" } end
    return list(out)
end

local function push_delete(self, P, params)
    local task_id, cfg_id = push_target(self, P, params, "delete")
    if cfg_id == nil then
        fail(M.E.INVALID_PARAMS, "params." .. (P == V1 and "id" or "pushNotificationConfigId") .. " must name a push notification config")
    end
    if not self.push_store:delete(task_id, cfg_id) then fail(M.E.TASK_NOT_FOUND, "Push notification config not found") end
    return P == V1 and {} or json.null
end

-- Method name -> {handler, protocol}.
local METHODS = {
    ["message/send"] = { send, V03 }, ["message/stream"] = { stream, V03 },
    ["tasks/get"] = { get, V03 }, ["tasks/cancel"] = { cancel, V03 },
    ["tasks/resubscribe"] = { resubscribe, V03 },
    ["tasks/pushNotificationConfig/set"] = { push_set, V03 }, ["tasks/pushNotificationConfig/get"] = { push_get, V03 },
    ["tasks/pushNotificationConfig/list"] = { push_list, V03 },
    ["tasks/pushNotificationConfig/delete"] = { push_delete, V03 },
    SendMessage = { send, V1 }, SendStreamingMessage = { stream, V1 }, GetTask = { get, V1 },
    CancelTask = { cancel, V1 }, SubscribeToTask = { resubscribe, V1 },
    CreateTaskPushNotificationConfig = { push_set, V1 }, GetTaskPushNotificationConfig = { push_get, V1 },
    ListTaskPushNotificationConfigs = { push_list, V1 }, DeleteTaskPushNotificationConfig = { push_delete, V1 },
}
M.METHODS = METHODS

function Gateway:emit(st, result)
    local eok, text = pcall(rpc_result, st.rpc, result)
    if not eok then
        -- The task cannot be written (stored nested past the encoder's depth): an error
        -- event ends this stream.
        core.log("error", "gateway_encode_failed", { task_id = st.task, error = tostring(text) })
        self.server:send(st.req, "data: " .. rpc_error(st.rpc, M.E.INTERNAL, "Internal error: the task cannot be "
                                                       .. "written as JSON", st.P == V1) .. "\n\n")
        st.done = true
        return false
    end
    local ok = self.server:send(st.req, "data: " .. text .. "\n\n")
    if not ok then st.done = true end
    return ok
end

-- The events a stream need not read the storage for: those of the new run its own send
-- scheduled (st.new) that say no more than the stream knows or than they carry themselves,
-- "scheduled" (that run) and its first attempt's "started" (working, at the event's time).
-- Sends the working status of such a "started"; returns false when the storage must be read.
function Gateway:from_events(st, info)
    if not st.new or st.blocking or info == true or info.read then return false end
    if info.started and st.state == "submitted" then
        st.state = "working"
        local at = tonumber(info.started.at) or core.now()
        self:emit(st, st.P.status_event({ task_id = st.task, context_id = st.context, state = "working",
                                          state_at = at, history = {} }, false))
    end
    return true
end

-- Follows the open streams and blocking sends (those of the tasks in `only`, the task ids
-- that note_event gathered, when it is given): what changed in each task since last time.
-- The full pass (no `only`, every `poll` seconds) also sends a comment (": keepalive") to
-- each stream that has been open `keepalive` seconds since the last: a stream waiting for
-- news is a suspended connection, which the HTTP server neither reads nor times out, so
-- only a write notices a reader that went away (the second one after it left fails, the
-- stream ends and its connection is freed); proxies see traffic too.
function Gateway:follow(only)
    local keep = {}
    local now = not only and core.monotonic()
    for _, st in ipairs(self.streams) do
        local info = only and only[st.task]
        if not st.done and only and (not info or self:from_events(st, info)) then
            if st.done then
                self.server:finish(st.req) -- the client went away: the status could not be sent
            else
                keep[#keep + 1] = st
            end
            goto next
        end
        local t = not st.done and self.s:get_task(st.task)
        local P = st.P
        if t then
            local a2a = A2A_STATE[t.state] or "unknown"
            if st.blocking then
                if FINAL[a2a] and #t.history > st.hist0 or core.monotonic() > st.until_t then
                    self.server:reply(st.req, 200, rpc_answer(st.rpc, P.sent(t, st.history_length), P == V1), "application/json")
                    st.done = true
                end
            else
                local arts = t.artifacts or {}
                for i = st.narts + 1, #arts do self:emit(st, P.artifact_event(t, arts[i], i)) end
                st.narts = #arts
                if t.state ~= st.state then
                    st.state = t.state
                    self:emit(st, P.status_event(t, FINAL[a2a] or false))
                    if FINAL[a2a] then st.done = true end
                end
            end
        elseif not st.done then
            st.done = true -- the task is gone (memory storage dropped it)
        end
        if now and not st.done and not st.blocking and now >= (st.keepalive_at or now) then
            if st.keepalive_at and not self.server:send(st.req, ": keepalive\n\n") then st.done = true end
            st.keepalive_at = now + self.keepalive
        end
        if st.done then
            if not st.blocking then self.server:finish(st.req) end
        else
            keep[#keep + 1] = st
        end
        ::next::
    end
    self.streams = keep
end

-- ---- push notifications ----------------------------------------------------------------------

-- A notification's body: 0.3, the Task (as the 0.3 SDKs send it); 1.0, a StreamResponse
-- with the status update (as the 1.0 SDKs send it).
local function push_body(v, t)
    if v == "1.0" then return encode(V1.status_event(t)), "application/a2a+json" end
    return encode(V03.task(t)), "application/json"
end

-- One task that has configs: each config whose last notification was of another state
-- gets one of this state, if this gateway claims it first.
function Gateway:push_task(id)
    local t = self.s:get_task(id)
    local st = self.push_store
    if not t then
        self.push_watch[id] = nil
        return
    end
    local cfgs = st:list(id)
    local a2a = A2A_STATE[t.state] or "unknown"
    local what = a2a .. ":" .. #t.history
    for _, cfg in ipairs(cfgs) do
        local mk = id .. "\0" .. cfg.id
        if self.push_seen[mk] ~= what then
            local claimed = st:claim(id, cfg.id, what) -- raises when Redis fails: tried again later
            self.push_seen[mk] = what
            if claimed then
                local body, ctype = push_body(cfg.v, t)
                self.sender:add(id, cfg, body, ctype, a2a)
            end
        end
    end
    if storage_mod.TERMINAL[t.state] or #cfgs == 0 then
        self.push_watch[id] = nil
        for _, cfg in ipairs(cfgs) do self.push_seen[id .. "\0" .. cfg.id] = nil end
        st:settled(id)
    end
end

-- The tasks of `ids` (a set) that have push configs: their notifications.
function Gateway:push_check(ids)
    local ok, having = pcall(self.push_store.having, self.push_store, ids)
    if not ok then
        core.log("warn", "push_store_failed", { error = tostring(having) })
        return
    end
    for id in pairs(ids) do if self.push_watch[id] then having[id] = true end end
    for id in pairs(having) do
        local pok, err = pcall(self.push_task, self, id)
        if not pok then core.log("warn", "push_store_failed", { task_id = id, error = tostring(err) }) end
    end
end

-- A task event entry (a JSON array): adds the ids of the tasks it names to `touched`, each
-- with what its events say for follow(): {started = the first attempt's "started" event,
-- read = true when another event than that and "scheduled" came}.
local function note_event(text, touched)
    local evs = json.decode(text)
    if type(evs) ~= "table" then return touched end
    for _, ev in ipairs(evs) do
        if type(ev) == "table" and type(ev.task_id) == "string" then
            touched = touched or {}
            local info = touched[ev.task_id]
            if info == nil then
                info = {}
                touched[ev.task_id] = info
            end
            if ev.event == "started" and ev.attempt == 1 then
                info.started = info.started or ev
            elseif ev.event ~= "scheduled" then
                info.read = true
            end
        end
    end
    return touched
end

-- ---- requests --------------------------------------------------------------------------------

function Gateway:authorized(req)
    if not self.tokens or #self.tokens == 0 then return true end
    local got = (req.authorization or ""):match("^[Bb]earer%s+(.+)$")
    if not got then return false end
    local ok = false
    for _, t in ipairs(self.tokens) do
        if core.equal_ct(got, t) then ok = true end -- every token compared, in constant time
    end
    return ok
end

-- A token bucket per client address: `rate` requests a second, bursts of as many. A bucket
-- full again is the same as none, so once there are MAX_BUCKETS (or twice as many as the last
-- sweep left) the full ones are dropped: the table grows with the addresses active within
-- about a second, not with every address ever seen.
function Gateway:admitted(peer)
    local now = core.monotonic()
    local b = self.buckets[peer]
    if not b then
        if self.nbuckets >= self.sweep_at then
            for p, o in pairs(self.buckets) do
                if o.tokens + (now - o.at) * self.rate >= self.rate then
                    self.buckets[p] = nil
                    self.nbuckets = self.nbuckets - 1
                end
            end
            self.sweep_at = math.max(MAX_BUCKETS, 2 * self.nbuckets)
        end
        b = { tokens = self.rate, at = now }
        self.buckets[peer] = b
        self.nbuckets = self.nbuckets + 1
    end
    b.tokens = math.min(self.rate, b.tokens + (now - b.at) * self.rate)
    b.at = now
    if b.tokens < 1 then return false end
    b.tokens = b.tokens - 1
    return true
end

function Gateway:rpc(req)
    local msg = json.decode(req.body)
    if msg == nil then return rpc_error(nil, M.E.PARSE, "Parse error: the body is not JSON") end
    if type(msg) ~= "table" or msg[1] ~= nil or msg.jsonrpc ~= "2.0" or type(msg.method) ~= "string" then
        return rpc_error(type(msg) == "table" and echo_id(msg.id) or nil, M.E.INVALID_REQUEST,
                         "Invalid Request: a JSON-RPC 2.0 object with a method is expected")
    end
    local id = msg.id
    if type(id) == "number" then id = math.tointeger(id) end -- JSON numbers decode as floats
    if id == nil and msg.id ~= nil or id ~= nil and type(id) ~= "string" and math.type(id) ~= "integer" and id ~= json.null then
        return rpc_error(nil, M.E.INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
    end
    -- A notification (no "id" member) is done, but never answered (JSON-RPC 2.0): HTTP 204,
    -- no body, whatever came of it; a non-blocking send's is answered so by flush().
    local notify = msg.id == nil
    -- JSON is UTF-8: a request that is not would be stored, and echoed, as it came.
    local utf8_ok, bad = core.utf8_check(req.body)
    if not utf8_ok then
        if notify then return "", 204 end
        if type(id) == "string" then id = echo_id(id) end -- not echoed unless it is UTF-8
        local known = METHODS[msg.method]
        return rpc_error(id, M.E.INVALID_PARAMS, "Invalid params: the request is not valid UTF-8 (byte "
                         .. tostring(bad) .. ")", known ~= nil and known[2] == V1)
    end
    local m = METHODS[msg.method]
    if not m then
        if notify then return "", 204 end
        return rpc_error(id, M.E.METHOD_NOT_FOUND, "Method not found: " .. msg.method)
    end
    local P = m[2]
    local ok, res = pcall(m[1], self, P, msg.params, req, notify and NOTIFY or id)
    if notify then
        if not ok and not (type(res) == "table" and res.rpc) then
            core.log("error", "gateway_failed", { method = msg.method, error = tostring(res) })
        end
        if ok and res == nil then return nil end -- in the batch: flush() answers
        return "", 204
    end
    if not ok then
        if type(res) == "table" and res.rpc then return rpc_error(id, res.rpc, res.message, P == V1) end
        core.log("error", "gateway_failed", { method = msg.method, error = tostring(res) })
        return rpc_error(id, M.E.INTERNAL, "Internal error", P == V1)
    end
    if res == nil then return nil end -- answered later (a stream, a blocking send)
    return rpc_answer(id, res, P == V1, msg.method)
end

--- Handles one request.
function Gateway:handle(req)
    local srv = self.server
    if not self:admitted(req.peer or "") then
        return srv:reply(req.id, 429, rpc_error(nil, M.E.INTERNAL, "Too many requests"), "application/json",
                         { ["Retry-After"] = "1" })
    end
    local path = req.path
    if self.dashboard and (path == "/dashboard" or path:sub(1, 11) == "/dashboard/") then
        return self.dashboard:handle(req)
    end
    if req.method == "GET" and (path == "/.well-known/agent-card.json" or path == "/.well-known/agent.json") then
        return srv:reply(req.id, 200, encode(self.card), "application/json")
    end
    if req.method == "GET" and path == "/healthz" then return srv:reply(req.id, 200, "ok\n", "text/plain") end
    if req.method == "POST" and (path == "/" or path == "/a2a" or path == (self.url:match("^https?://[^/]+(/.*)$") or "/")) then
        local refused, why = self:browser_gate(req)
        if refused then return srv:reply(req.id, refused, rpc_error(nil, M.E.INVALID_REQUEST, why), "application/json") end
        if not self:authorized(req) then
            return srv:reply(req.id, 401, rpc_error(nil, M.E.INVALID_REQUEST, "Unauthorized: a bearer token is required"),
                             "application/json", { ["WWW-Authenticate"] = "Bearer" })
        end
        local out, status = self:rpc(req)
        if out then return srv:reply(req.id, status or 200, out, "application/json") end
        return true
    end
    return srv:reply(req.id, 404, "not found: POST / (JSON-RPC), GET /.well-known/agent-card.json\n", "text/plain")
end

-- ---- the browser gate: cross-site requests and DNS rebinding -----------------------------------
-- A web page can make a browser POST to the gateway (a form, or fetch without a preflight)
-- with the body it likes, and a page whose name it rebinds to 127.0.0.1 is "same origin" to
-- the browser. So a JSON-RPC call (as the dashboard's POSTs, docs/dashboard.md):
--   * with an Origin header needs it to name the Host it was sent to (403): every browser sends
--     Origin with a POST made by a script, and with a form's today; Origin "null" is refused;
--   * without tokens needs a Host that names this machine (127.0.0.1, localhost, ::1) or the
--     host of the card's URL (403): the rebinding page's request names the attacker's host;
--   * needs a Content-Type a form cannot fill with JSON (415): application/json or
--     application/<x>+json, or curl -d's application/x-www-form-urlencoded (a form percent-
--     encodes braces and quotes, so its body is never JSON); not text/plain, multipart or none.

local LOOPBACK = { ["127.0.0.1"] = true, ["::1"] = true, localhost = true }

-- "Host:port" -> host, port ("[::1]:3773" -> "::1", "3773"), lower-case; nil for nothing.
local function authority(h)
    if type(h) ~= "string" or h == "" then return nil end
    h = h:lower()
    local name, port = h:match("^%[([^%]]*)%]:?(%d*)$")
    if not name then name, port = h:match("^([^:%[%]]*):?(%d*)$") end
    return name, port
end

-- Whether an Origin names the host a request was sent to (the same name and port, the
-- scheme's default port when one of them gives none).
local function same_origin(origin, host)
    local scheme, rest = origin:lower():match("^(https?)://([^/]+)$")
    local oname, oport = authority(rest)
    local hname, hport = authority(host)
    if not scheme or not oname or oname ~= hname then return false end
    local default = scheme == "https" and "443" or "80"
    return (oport ~= "" and oport or default) == (hport ~= "" and hport or default)
end

local ACCEPTED_TYPES = { ["application/json"] = true, ["application/x-www-form-urlencoded"] = true }

--- Nil for a request the gate lets through; else the HTTP status (403, 415) and why.
function Gateway:browser_gate(req)
    if req.origin and not same_origin(req.origin, req.host or "") then
        return 403, "Forbidden: a request from another origin (" .. req.origin:sub(1, 100) .. ")"
    end
    if not self.tokens or #self.tokens == 0 then
        local name = authority(req.host)
        if not (name and (LOOPBACK[name] or name == authority(self.url:match("^https?://([^/]+)") or ""))) then
            return 403, "Forbidden: without tokens, the Host header must name this machine (127.0.0.1, localhost, ::1)"
        end
    end
    local ctype = (req.content_type or ""):lower():match("^%s*([^;%s]+)%s*")
    if not (ctype and (ACCEPTED_TYPES[ctype] or ctype:match("^application/[%w.-]+%+json$"))) then
        return 415, "Unsupported Media Type: JSON-RPC needs Content-Type: application/json"
    end
    return nil
end

-- Schedules the new tasks of non-blocking sends taken together (send), in one pipelined
-- round trip, and answers each. If the batch fails as a whole (an operation refused), each
-- is scheduled alone, so each gets its own answer.
function Gateway:flush()
    local batch = self.pending
    if #batch == 0 then return end
    self.pending = {}
    local ops = {}
    for i, b in ipairs(batch) do ops[i] = b.op end
    local whole, wsent, werr = pcall(self.s.schedule_many, self.s, ops)
    for _, b in ipairs(batch) do
        local out
        local ok, sent, err = whole, wsent, werr
        if not whole then ok, sent, err = pcall(self.s.schedule, self.s, b.op) end
        if ok and sent and b.push_cfg then
            -- The inline push config, once the run is accepted (a refused run leaves no key).
            local pok, perr = pcall(self.push_inline, self, b.op.task_id, b.push_cfg)
            if not pok then
                out = rpc_error(b.rpc, M.E.INTERNAL, "the task " .. b.op.task_id .. " was scheduled, but its push "
                                .. "config was not stored: " .. tostring(type(perr) == "table" and perr.message or perr),
                                b.P == V1)
            end
        end
        if not out and ok and sent then
            out = rpc_answer(b.rpc, b.P.sent(new_task(b.op.task_id, b.op.conversation_id, b.msg), b.hl), b.P == V1,
                             "message/send")
        elseif not out then
            out = rpc_error(b.rpc, M.E.INTERNAL, "schedule: " .. tostring(ok and err or sent), b.P == V1)
        end
        if b.rpc == NOTIFY then
            self.server:reply(b.req, 204, "", "application/json")
        else
            self.server:reply(b.req, 200, out, "application/json")
        end
    end
end

--- Waits up to `timeout` seconds for a request and handles it and those that came with it
-- (up to 256), then follows the open streams. Returns false once the server stops.
function Gateway:step(timeout)
    local wait = timeout or 1
    if #self.streams > 0 then wait = math.max(0, math.min(wait, (self.next_follow or 0) - core.monotonic())) end
    if self.push_wake then wait = math.min(wait, self.push_wake) end
    if next(self.push_watch) then wait = math.max(0, math.min(wait, (self.next_push_poll or 0) - core.monotonic())) end
    if self.dashboard then wait = math.min(wait, self.dashboard:due_in()) end
    local req = self.server:next(wait)
    if req == false then return false end
    local touched
    for _ = 1, 256 do
        if not req then break end
        if req.event then
            touched = note_event(req.event, touched)
        else
            self:handle(req)
        end
        req = self.server:next(0)
        if req == false then break end
    end
    self:flush()
    if #self.streams > 0 and core.monotonic() >= (self.next_follow or 0) then
        self.next_follow = core.monotonic() + self.poll
        self:follow()
    elseif #self.streams > 0 and touched then
        self:follow(touched)
    end
    if self.sender then
        -- Tasks with configs set here are read every `poll` seconds besides, in case an event
        -- was missed (or task events are off).
        if next(self.push_watch) and core.monotonic() >= (self.next_push_poll or 0) then
            self.next_push_poll = core.monotonic() + self.poll
            touched = touched or {}
            for id in pairs(self.push_watch) do touched[id] = true end
        end
        if next(self.push_due) then
            touched = touched or {}
            for id in pairs(self.push_due) do touched[id] = true end
            self.push_due = {}
        end
        if touched then self:push_check(touched) end
        self.push_wake = self.sender:step()
    end
    if self.dashboard then self.dashboard:tick() end
    return true
end

--- Serves until SIGTERM or SIGINT (or `seconds` pass).
function Gateway:run(seconds)
    core.trap_signals()
    local stop_at = seconds and core.monotonic() + seconds
    core.log("info", "gateway_started", { url = self.url, port = self.server:port() })
    while not core.take_signal() and not (stop_at and core.monotonic() > stop_at) do
        if not self:step(0.2) then break end
    end
    core.untrap_signals()
    self:close()
end

function Gateway:close()
    if self.dashboard then
        self.dashboard:close()
        self.dashboard = nil
    end
    if self.sender then self.sender:close() end
    if self.server then
        self.server:close()
        self.server = nil
    end
    if self.s then
        self.s:close()
        self.s = nil
    end
end

return M

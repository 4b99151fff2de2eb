--- binduq.task: the wire formats of a task operation.
--
-- Native format (what binduq's producers write; LPUSH, consumed from the right):
--   {"type":"run","task_id":"...","conversation_id":"...",
--    "messages":[{"role":"user","content":"What is AI?"}],"artifacts":[],
--    "timestamp":"2024-12-09T14:30:00Z"}
-- Bindu's Python scheduler format (accepted by the decoder):
--   {"operation":"run","params":{"task_id":"...","context_id":"...","message":{"role":"user",
--    "parts":[{"kind":"text","text":"..."}],...}},"trace_id":"...","span_id":"..."}
--
-- Both decode to the same task table:
--   { type, task_id, conversation_id, messages = {{role, content, parts?, ...}}, artifacts,
--     timestamp, metadata, trace_id, span_id, format = "native" | "bindu", params (Bindu) }
--
-- `encode` (producers) and `decode` (workers) enforce the same rules, so whatever a producer
-- accepts a worker accepts. The C producer (src/engine/task.c) follows them too.
--
-- A message binduq itself re-queues (a retry, or a task recovered from a dead worker) starts
-- with one header line, "#bq {\"attempt\":2,...}\n", followed by the original bytes. '#'
-- cannot start a JSON text, so the two never mix up; the header carries the attempt number
-- with the task, and the original stays byte for byte (it is what a dead-letter entry keeps).
-- Anyone who can push to the queue can write such a line, so a header counts only when the
-- broker found the message sealed (src/broker/broker.h, "Headers and seals"); its fields are
-- checked all the same.

local core = require("binduq.core")
local json = require("binduq.json")
local config = require("binduq.config")

local M = {}

-- The rules and limits are C's (src/core/wire.h, read as core.wire), shared with every
-- encoder and decoder; the rule for ids is src/core/id.h's, asked as core.id_problem.
local wire = core.wire
M.TYPES = wire.TYPES
M.MAX_ID_LEN = wire.MAX_ID_LEN
local id_problem = core.id_problem
local messages_json = core.messages_json
local utf8_check = core.utf8_check

local null = json.null
local json_decode = json.raw_decode -- raises; decode_body catches

-- A short, printable rendering of a value for error messages (never the whole input).
local function show(v)
    -- hostile bytes never reach a reason, a log line or a terminal as they are (escape.h)
    local s = core.escape(tostring(v))
    if #s > 40 then
        local cut = 38 -- back up to the start of a UTF-8 sequence
        while cut > 1 and (s:byte(cut) & 0xC0) == 0x80 do cut = cut - 1 end
        s = s:sub(1, cut - 1) .. "..."
    end
    return s
end
M.show = show

local function is_array(t)
    if type(t) ~= "table" then return false end
    local n = #t
    local count = 0
    for k in pairs(t) do
        if math.type(k) ~= "integer" or k < 1 or k > n then return false end
        count = count + 1
    end
    return count == n
end
M.is_array = is_array

local function check_id(name, v, required)
    if v == nil or v == null then
        if required then return nil, name .. " is required" end
        return true
    end
    if type(v) ~= "string" then
        return nil, name .. " must be a string (got " .. type(v) .. ")"
    end
    local why = id_problem(v)
    if why then return nil, name .. " " .. why end
    return true
end

-- Text of an A2A message: the text of its parts of kind "text", joined by single spaces, as
-- Bindu's MessageConverter joins them (" ".join).
local function parts_text(parts)
    local out = {}
    for _, p in ipairs(parts) do
        if type(p) == "table" and p.kind == "text" and type(p.text) == "string" then
            out[#out + 1] = p.text
        end
    end
    return table.concat(out, " ")
end

-- Why one message table is not valid, or nil when it is.
local function message_error(m, where)
    if type(m) ~= "table" or (next(m) ~= nil and is_array(m)) then
        return where .. " must be an object (got " .. (type(m) == "table" and "an array" or type(m)) .. ")"
    end
    if type(m.role) ~= "string" or m.role == "" then
        return where .. ".role must be a non-empty string"
    end
    local content = m.content
    if content ~= nil and content ~= null and type(content) ~= "string" then
        return where .. ".content must be a string (got " .. type(content) .. ")"
    end
    local parts = m.parts
    if parts ~= nil and parts ~= null and not is_array(parts) then
        return where .. ".parts must be an array"
    end
    if (content == nil or content == null) and (parts == nil or parts == null) then
        return where .. " needs content or parts"
    end
    return nil
end

-- Validates one message table and returns its native form (content filled from parts).
local function check_message(m, where)
    local why = message_error(m, where)
    if why then return nil, why end
    local parts = m.parts
    local out = {}
    for k, v in pairs(m) do if v ~= null then out[k] = v end end
    if out.content == nil then out.content = parts_text(parts) end
    return out
end

-- Validates a list of messages; returns the native list.
local function check_messages(list, where, required)
    if list == nil or list == null then
        if required then return nil, "a run needs at least one message" end
        return {}
    end
    if type(list) ~= "table" or not is_array(list) then
        return nil, where .. " must be an array (got " .. (type(list) == "table" and "an object" or type(list)) .. ")"
    end
    if required and #list == 0 then return nil, "a run needs at least one message" end
    local out = {}
    for i, m in ipairs(list) do
        local nm, why = check_message(m, where .. "[" .. i .. "]")
        if not nm then return nil, why end
        out[i] = nm
    end
    return out
end

-- Decoded JSON needs no full scan to tell arrays from objects: object keys are strings, so
-- a non-empty array is exactly a table with [1] (an empty one is both, as in is_array).
local function dec_array(v) return type(v) == "table" and (v[1] ~= nil or next(v) == nil) end
local function dec_object(v) return type(v) == "table" and v[1] == nil end

-- Optional field of a given Lua type; nulls become nil. `decoded`: v came from lua-cjson,
-- so the cheap array and object tests above are exact.
local function opt(t, k, ty, label, decoded)
    local v = t[k]
    if v == nil or v == null then return true, nil end
    if ty == "array" then
        if not (decoded and dec_array or is_array)(v) then return nil, (label or k) .. " must be an array" end
    elseif ty == "object" then
        local object
        if decoded then object = dec_object(v) else object = type(v) == "table" and (next(v) == nil or not is_array(v)) end
        if not object then return nil, (label or k) .. " must be an object" end
    elseif type(v) ~= ty then
        return nil, (label or k) .. " must be a " .. ty .. " (got " .. type(v) .. ")"
    end
    return true, v
end

-- What a malformed message still tells about itself, for logs and dead-letter entries.
local function partial(ty, id)
    return { type = type(ty) == "string" and M.TYPES[ty] and ty or nil,
             task_id = type(id) == "string" and not id_problem(id) and id or nil }
end


-- The native format as lua-cjson decoded it is checked in C (src/lua/l_task.c), for every
-- task a worker takes: the same rules and texts as check_messages, check_id and opt above,
-- the task table built there, messages changed in place.
local decode_native = core.decode_native
-- The common operation is decoded by simdjson straight into the task table (l_json.cpp),
-- the same table as decode_native's; it answers false for anything else, which takes the
-- path below, so the rules and error texts are only here and in l_task.c.
local decode_fast = core.decode_fast

local NATIVE_OPTIONAL = {
    "artifacts", "array", "timestamp", "string", "metadata", "object", "trace_id", "string",
    "span_id", "string", "traceparent", "string", "timeout", "number", "max_attempts", "number",
}

local TRACE_FIELDS = { "trace_id", "span_id" }

local function decode_bindu(t)
    local ty = t.operation
    local id = type(t.params) == "table" and t.params.task_id or nil
    if type(ty) ~= "string" then return nil, "operation must be a string (got " .. type(ty) .. ")", partial(nil, id) end
    if not M.TYPES[ty] then
        return nil, "unknown operation '" .. show(ty) .. "' (expected run, pause, resume or cancel)", partial(nil, id)
    end
    local task = { type = ty, format = "bindu" }
    local p = t.params
    if not dec_object(p) then
        return nil, "params must be an object", task
    end
    local ok, why = check_id("params.task_id", p.task_id, true)
    if not ok then return nil, why, task end
    task.task_id = p.task_id
    ok, why = check_id("params.context_id", p.context_id, false)
    if not ok then return nil, why, task end
    task.conversation_id = p.context_id ~= null and p.context_id or nil
    local list = p.messages
    if list == nil or list == null then
        if p.message ~= nil and p.message ~= null then list = { p.message } end
    end
    local msgs
    -- copied, not changed in place: the handler sees params as they came
    msgs, why = check_messages(list, p.messages and "params.messages" or "params.message", ty == "run")
    if not msgs then return nil, why, task end
    task.messages = msgs
    for _, k in ipairs(TRACE_FIELDS) do
        local okf, v = opt(t, k, "string", nil, true)
        if not okf then return nil, v, task end
        task[k] = v
    end
    local okm, meta = opt(p, "metadata", "object", "params.metadata", true)
    if not okm then return nil, meta, task end
    task.metadata = meta
    task.artifacts = {}
    task.params = p
    return task
end

M.MAX_HEADER_LEN = wire.HEADER_MAX -- a "#bq" line binduq writes is under 200 bytes
M.MAX_ATTEMPT = 1000000  -- as the C side's bound on an outcome's attempt

-- The header's counters: absent, or a whole number in [lo, MAX_ATTEMPT].
local HEADER_COUNTS = { attempt = 1, redelivered = 1, deferred = 1, requeued = 1 }

-- The header's JSON text, checked: the table, or nil and why not.
local function check_header(text, where)
    local h = json.decode(text)
    if not dec_object(h) then return nil, "binduq header " .. where .. " is not a JSON object" end
    for k, lo in pairs(HEADER_COUNTS) do
        local v = h[k]
        if v ~= nil then
            v = type(v) == "number" and math.tointeger(v)
            if not v or v < lo or v > M.MAX_ATTEMPT then
                return nil, ("binduq header field '%s' must be a whole number from %d to %d")
                    :format(k, lo, M.MAX_ATTEMPT)
            end
            h[k] = v
        end
    end
    return h
end

--- Splits binduq's "#bq {...}" header line off a message and checks it.
-- Returns the header table (empty when there is none), the offset of the original message
-- in raw (0 when there is no header), or nil and a reason.
function M.split_header(raw)
    if raw:byte(1) ~= 35 or raw:sub(1, 4) ~= "#bq " then return {}, 0 end -- 35: '#'

    local nl = raw:find("\n", 5, true)
    if not nl or nl > M.MAX_HEADER_LEN then
        return nil, nl and ("binduq header line longer than %d bytes"):format(M.MAX_HEADER_LEN)
            or "binduq header line without an end"
    end
    local h, why = check_header(raw:sub(5, nl - 1), "line")
    if not h then return nil, why end
    if raw:sub(nl + 1, nl + 4) == "#bq " then
        -- reap-4 keeps a header it did not seal as part of the body of the recovered message
        return nil, "a #bq header line binduq did not write, recovered from a stopped worker"
    end
    return h, nl
end

--- Builds the header line for a message binduq queues again.
function M.header(h)
    return "#bq " .. json.encode_strict(h)
end

-- What Bindu's format can carry of an operation; anything else has no place in it.
local BINDU_FIELDS = { type = true, task_id = true, conversation_id = true, messages = true, trace_id = true,
                       span_id = true, delay = true, run_at = true }

--- Bindu's format of an operation task.encode checked (norm: its third result), as Bindu's
-- RedisScheduler writes it, key for key (operation, params, trace_id, span_id; a run's or
-- resume's one A2A message with message_id, context_id, task_id, kind, parts, role,
-- metadata), so Bindu's own worker takes it (the scheduler's format = "bindu"). Raises
-- (level as task.encode) for what it cannot carry: a second message, or another field.
function M.encode_bindu(op, norm, level)
    level = (level or 1) + 1
    for k in pairs(op) do
        if not BINDU_FIELDS[k] then
            error("format \"bindu\" has no place for the field '" .. show(k) .. "'", level)
        end
    end
    local e, id = json.encode_strict, op.task_id
    local params = '{"task_id":' .. e(id) .. "}"
    if op.type == "run" or op.type == "resume" then
        local msgs = norm.messages or {}
        if #msgs > 1 then error("format \"bindu\" carries one message an operation (got " .. #msgs .. ")", level) end
        local ctx = norm.conversation_id or core.uuid4()
        local m = msgs[1]
        local message = ""
        if m then
            local parts = m.parts ~= nil and m.parts ~= null and json.array(m.parts)
                or '[{"kind":"text","text":' .. e(m.content or "") .. "}]"
            message = ',"message":{"message_id":' .. e(m.message_id or core.uuid4()) .. ',"context_id":' .. e(ctx)
                .. ',"task_id":' .. e(id) .. ',"kind":"message","parts":' .. parts .. ',"role":' .. e(m.role)
                .. ',"metadata":' .. (type(m.metadata) == "table" and e(m.metadata) or "{}") .. "}"
        end
        params = '{"task_id":' .. e(id) .. ',"context_id":' .. e(ctx) .. message .. "}"
    end
    return '{"operation":"' .. op.type .. '","params":' .. params .. ',"trace_id":'
        .. (op.trace_id ~= nil and e(op.trace_id) or "null") .. ',"span_id":'
        .. (op.span_id ~= nil and e(op.span_id) or "null") .. "}"
end

M.UNSEALED = "#bq header line not written by binduq (the message has no seal): set aside unrun"

--- Decodes and validates a raw message (with or without a "#bq" header line).
-- `sealed`: the broker found the message's header sealed (binduq wrote it); a header that is
-- not is refused, and the whole message is kept. The size limit counts the header too.
-- Returns the task table and the header ({attempt=, ...}, attempt defaulting to 1, and
-- `body`, the offset of the original message); or nil, a reason, whatever was learned of the
-- task (type, task_id) for the log and the dead-letter entry, and the header.
function M.decode(raw, max_size, sealed)
    local embed = sealed and raw:byte(1) == 123 and core.embedded_header(raw) -- 123: '{'
    if embed then
        -- A header binduq embedded in Bindu's format (src/broker/broker.h): the original is
        -- what comes before its ,"binduq": key, and the closing brace.
        if max_size and #raw > max_size then
            return nil, ("message too large (%d bytes; max_message_size is %d)"):format(#raw, max_size),
                   {}, { attempt = 1, body = 0 }
        end
        local header, why = check_header(raw:sub(embed + 11, -2), "key")
        if not header then return nil, why, {}, { attempt = 1, body = 0 } end
        header.attempt = header.attempt or 1
        header.body, header.body_end = 0, embed
        local task, why2, seen = M.decode_body(raw:sub(1, embed) .. "}")
        return task, why2, seen, header
    end
    if raw:byte(1) ~= 35 then -- no "#bq" header: the common case, a first delivery
        local task, why, seen = M.decode_body(raw, max_size)
        return task, why, seen, { attempt = 1, body = 0 }
    end
    if max_size and #raw > max_size then
        return nil, ("message too large (%d bytes; max_message_size is %d)"):format(#raw, max_size),
               {}, { attempt = 1, body = 0 }
    end
    if raw:sub(1, 4) == "#bq " and not sealed then return nil, M.UNSEALED, {}, { attempt = 1, body = 0 } end
    local header, body = M.split_header(raw)
    if not header then return nil, body, {}, { attempt = 1, body = 0 } end
    header.attempt = header.attempt or 1
    header.body = body
    if body > 0 then raw = raw:sub(body + 1) end
    local task, why, seen = M.decode_body(raw)
    return task, why, seen, header
end

function M.decode_body(raw, max_size)
    if max_size and #raw > max_size then
        return nil, ("message too large (%d bytes; max_message_size is %d)"):format(#raw, max_size)
    end
    local fast = decode_fast(raw)
    if fast then return fast end
    local okutf, bad = core.utf8_check(raw)
    if not okutf then return nil, "invalid UTF-8 at byte " .. tostring(bad) end
    local first = raw:byte(1) == 123 and "{" or raw:match("^%s*(.)") -- 123: '{', the usual start
    if first == "[" then return nil, "not a JSON object (got an array)" end
    local okd, t = pcall(json_decode, raw)
    if not okd then return nil, "invalid JSON: " .. tostring(t) end
    if type(t) ~= "table" or first ~= "{" then
        return nil, "not a JSON object (got " .. (t == null and "null" or type(t)) .. ")"
    end
    local task, why, seen
    if t.operation ~= nil then
        task, why, seen = decode_bindu(t)
    elseif t.type ~= nil then
        task, why, seen = decode_native(t)
    else
        return nil, "neither 'type' (native format) nor 'operation' (Bindu format) is set"
    end
    if not task then return nil, why, seen end
    return task
end

-- delay and run_at say when the operation runs (the scheduler checks them, M.when): they
-- are not part of the message.
local KNOWN = { type = true, task_id = true, conversation_id = true, messages = true, artifacts = "optional",
                metadata = "optional", timestamp = "optional", trace_id = "optional", span_id = "optional",
                traceparent = "optional", timeout = "optional", max_attempts = "optional", delay = "when",
                run_at = "when" }
local TAIL_FIELDS = { "trace_id", "span_id", "traceparent", "timeout", "max_attempts" }

local function unknown_field(k)
    return "unknown field '" .. show(k) .. "' in task operation" .. config.did_you_mean(k, KNOWN)
end

--- When an operation runs: nil for now (no delay or run_at, or a delay of 0), else
-- delay, run_at (one of them nil): delay in seconds from now by Redis' clock, run_at in
-- seconds since the epoch (an ISO 8601 string with a zone is converted). Raises (level as
-- encode) naming the field: a delay that is not a number from 0 to 365 days, a run_at that
-- is neither seconds since the epoch nor an ISO 8601 time with a zone, or both given. A
-- run_at already past is returned as it is: the operation runs at once.
function M.when(op, level)
    level = (level or 1) + 1
    local delay, run_at = op.delay, op.run_at
    if delay == nil and run_at == nil then return nil end
    if delay ~= nil and type(delay) ~= "number" then
        error("delay must be a number of seconds (got " .. type(delay) .. ")", level)
    end
    if type(run_at) == "string" then
        local t, why = core.parse_time(run_at)
        if not t then error(why .. " (got \"" .. show(run_at) .. "\")", level) end
        run_at = t
    elseif run_at ~= nil and type(run_at) ~= "number" then
        error(wire.RUN_AT_RULE .. " (got " .. type(run_at) .. ")", level)
    end
    local why = core.when_problem(delay, run_at)
    if why then error(why, level) end
    if delay == 0 then return nil end
    return delay, run_at
end

-- A field of the operation's own object as JSON (one level down in the message): nested
-- one level less deep than a worker decodes, so that the message decodes again. Raises at
-- `level` naming the field for what JSON cannot carry (NaN, a function, too deep a nesting).
local function nested(name, enc, v, level)
    local ok, s = pcall(enc, v, 1)
    if not ok then error(name .. ": " .. tostring(s):gsub("^[^:]*:%d+: ", ""), level + 1) end
    return s
end

--- Builds the native JSON of a task operation. Raises (level 2 from the caller's view) when
-- `op` is invalid, naming the field. Returns the JSON text and the task_id.
function M.encode(op, level)
    level = (level or 1) + 1
    if type(op) ~= "table" then error("a task operation must be a table", level) end
    local ty = op.type
    if not M.TYPES[ty] then
        error(wire.TYPE_RULE .. " (got " .. show(ty) .. ")", level)
    end
    local ok, why = check_id("task_id", op.task_id, true)
    if not ok then error(why, level) end
    ok, why = check_id("conversation_id", op.conversation_id, false)
    if not ok then error(why, level) end
    local msgs = op.messages
    if msgs == nil and ty == "run" then
        -- No messages, and a field nobody knows: most likely "messages" misspelt, which is
        -- the better thing to say.
        for k in pairs(op) do
            if not KNOWN[k] then error(unknown_field(k), level) end
        end
    end
    local given = msgs
    if type(msgs) == "table" then
        -- Plain strings are user messages, for brevity.
        local list = {}
        for i, m in ipairs(msgs) do
            list[i] = type(m) == "string" and { role = "user", content = m } or m
        end
        if next(msgs) ~= nil and #list == 0 then error("messages must be an array", level) end
        msgs = list
    end
    if msgs ~= nil and ty ~= "run" and ty ~= "resume" and #msgs > 0 then
        error("messages are only allowed for run and resume", level)
    end
    if type(msgs) == "table" then
        -- The list was built above, so it is an array; the strings' messages were too.
        if ty == "run" and msgs[1] == nil then error("a run needs at least one message", level) end
        for i = 1, #msgs do
            if type(given[i]) ~= "string" then
                why = message_error(msgs[i], "messages[" .. i .. "]")
                if why then error(why, level) end
                if #msgs[i].role > wire.ROLE_MAX then
                    error(("messages[%d].role is longer than %d bytes"):format(i, wire.ROLE_MAX), level)
                end
            end
        end
    else
        ok, why = check_messages(msgs, "messages", ty == "run")
        if not ok then error(why, level) end
    end
    -- One pass over the operation's own keys: the unknown one (reported after the checks of
    -- the known ones), and whether any optional field is there to check.
    local unknown, optional = nil, false
    for k in pairs(op) do
        local known = KNOWN[k]
        if not known then unknown = unknown or k elseif known == "optional" then optional = true end
    end
    if optional then
        for i = 1, #NATIVE_OPTIONAL, 2 do
            local k = NATIVE_OPTIONAL[i]
            if op[k] ~= nil then
                local okf, v = opt(op, k, NATIVE_OPTIONAL[i + 1])
                if not okf then error(v, level) end
            end
        end
        if op.timeout and not (op.timeout > 0 and op.timeout <= core.MAX_DURATION) then
            error(wire.TIMEOUT_RULE, level)
        end
        if op.max_attempts and (math.type(op.max_attempts) ~= "integer" or op.max_attempts < 1) then
            error(wire.MAX_ATTEMPTS_RULE, level)
        end
        -- A worker reads JSON numbers as doubles: above 2^53 the number it reads is another,
        -- and math.maxinteger comes back as 2^63, which it refuses (the task dead-lettered).
        if op.max_attempts and op.max_attempts > (1 << 53) then
            error(wire.MAX_ATTEMPTS_RULE .. " and at most 2^53 (9007199254740992)", level)
        end
    end
    if unknown ~= nil then error(unknown_field(unknown), level) end
    local conv = op.conversation_id
    local e = json.encode_strict
    -- What binduq writes itself (the type, a new conversation id, the timestamp) needs no
    -- escaping: it is quoted here rather than passed through the JSON encoder. field[i]
    -- names the operation's field out[i] holds (the ids are checked already).
    local out = { '{"type":"', ty, '","task_id":', e(op.task_id) }
    local field = {}
    if conv ~= nil then
        out[#out + 1] = ',"conversation_id":' .. e(conv)
    elseif ty == "run" then
        conv = core.uuid4()
        out[#out + 1] = ',"conversation_id":"' .. conv .. '"'
    end
    -- Plain messages ({role, content}) are written by C as every producer writes them
    -- (src/engine/task.h, bq_task_put_message), so a run's stored history is the same bytes
    -- from any path; others by lua-cjson.
    local msgs_json = (ty == "run" or (msgs and #msgs > 0))
        and (messages_json(msgs) or nested("messages", json.array_at, msgs, level)) or nil
    if msgs_json then out[#out + 1], field[#out + 1] = ',"messages":' .. msgs_json, "messages" end
    if op.artifacts then
        out[#out + 1], field[#out + 1] = ',"artifacts":' .. nested("artifacts", json.array_at, op.artifacts, level), "artifacts"
    elseif ty == "run" then
        out[#out + 1] = ',"artifacts":[]'
    end
    if optional then
        if op.metadata then
            out[#out + 1] = ',"metadata":' .. nested("metadata", json.encode_at, op.metadata, level)
            field[#out] = "metadata"
        end
        for _, k in ipairs(TAIL_FIELDS) do
            if op[k] then out[#out + 1], field[#out + 1] = ',"' .. k .. '":' .. e(op[k]), k end
        end
    end
    if op.timestamp ~= nil then
        out[#out + 1], field[#out + 1] = ',"timestamp":' .. e(op.timestamp) .. "}", "timestamp"
    else
        out[#out + 1] = ',"timestamp":"' .. core.iso8601() .. '"}'
    end
    local text = table.concat(out)
    -- The encoder passes strings' bytes through as they are, and a worker refuses a message
    -- that is not UTF-8 (as the C producer refuses such a field): refused here, by name.
    local okutf, bad = utf8_check(text)
    if not okutf then
        local at = 0
        for i = 1, #out do
            if bad <= at + #out[i] then
                error(("%s is not valid UTF-8 (byte %d of the message)"):format(field[i] or "a field", bad), level)
            end
            at = at + #out[i]
        end
    end
    return text, op.task_id, { messages = msgs, conversation_id = conv, messages_json = msgs_json }
end

return M

--- binduq.cli: the admin commands of binduq-lua.
--
--   binduq-lua dlq list    [--limit N] [--json]
--   binduq-lua dlq show    INDEX [--json]
--   binduq-lua dlq requeue (INDEX | --all | FILTERS) [--json]
--   binduq-lua dlq purge   (--all | FILTERS) [--json]
--     FILTERS: --task-id ID  --type TYPE  --code CODE  --worker ID  --reason TEXT
--   common: --url URL (default REDIS_URL)  --queue NAME (default REDIS_QUEUE_NAME)  --help
--   binduq-lua stats   [--queue NAME ...] [--json]    per queue: ready, delayed, in flight, dead, workers
--   binduq-lua workers [--queue NAME] [--json]         live workers: concurrency, lease left, in flight, counts
--   binduq-lua queue peek [--limit N] [--json]         the next operations to be taken
--   binduq-lua queue purge --yes [--json]              delete the waiting operations
--   binduq-lua top [--queue NAME ...] [--interval S] [--count N] [--json]   a live view (q to quit)
--   binduq-lua task show ID [--json]
--   binduq-lua task list [--state STATE] [--context ID] [--limit N] [--json]
--   binduq-lua task cancel|pause|retry ID [--json]
--   binduq-lua task resume ID [--message TEXT] [--json]
--   binduq-lua schedules list [--json]                recurring schedules: when, state, last and next tick
--   binduq-lua schedules pause|resume|remove NAME [--json]   for every worker of the queue
--   binduq-lua serve [AGENT.lua] [--addr HOST:PORT] [--url URL] [--queue NAME] [--database-url URL] [--dashboard]
--     the A2A gateway alone (binduq.gateway), until SIGTERM or SIGINT
--     common: --database-url URL (default DATABASE_URL)  --schema NAME (default binduq)
--     cancel, pause, resume, retry also: --url URL  --queue NAME (default: the task's queue)
--   binduq-lua dashboard [--addr HOST:PORT] [--token T] [--read-only] [--url URL] [--queue NAME ...]
--     the web dashboard (binduq.dashboard, docs/dashboard.md), until SIGTERM or SIGINT
--
-- Each command exits 0 on success and 1 with a message on stderr on failure (2 for a usage
-- error). --json prints one JSON document on stdout, for scripts.
--
-- What these commands print comes from queues, dead letters, worker records and task state:
-- anyone who can write to a queue chooses those bytes. So every line of text goes through
-- one function, `text_line` (core.escape, the rule of src/core/escape.h that the log lines
-- follow too): C0 controls, DEL, C1 controls (U+0080..U+009F) and invalid UTF-8 are written
-- as \n \r \t \xNN \u{NN}, and no message can move the cursor, clear the screen, write the
-- clipboard (OSC 52) or forge a line. A body that has lines of its own (a message, a
-- traceback) is shown one line per line, indented by two spaces, so none of them passes for
-- a line of ours. --json output goes through `json_text`: controls and C1 as \u00NN, bytes
-- of invalid UTF-8 as \ufffd, so it is valid JSON and as safe to print.

local core = require("binduq.core")
local config = require("binduq.config")
local json = require("binduq.json")
local scheduler = require("binduq.scheduler")
local storage_mod = require("binduq.storage")

local M = {}

local USAGE = {
    dlq = [[
usage: binduq-lua dlq <list|show|requeue|purge> [options]
  list    [--limit N]           entries of the dead-letter list, newest first (default 20)
  show    INDEX                 one entry in full (0 is the newest)
  requeue INDEX | --all | FILTERS
                                move entries back to the queue as fresh operations
  purge   --all | FILTERS       delete entries
FILTERS (all must match): --task-id ID  --type TYPE  --code CODE  --worker ID  --reason TEXT
Options: --url URL (default $REDIS_URL)  --queue NAME (default $REDIS_QUEUE_NAME or bindu:tasks)
         --json (one JSON document on stdout)  --help
]],
    stats = [[
usage: binduq-lua stats [--queue NAME ...] [--json]
  Per queue: operations ready, delayed (retries and delayed operations), in flight (leased), dead-lettered,
  and live workers. --queue may be given several times, or as a comma-separated list.
Options: --url URL (default $REDIS_URL)  --queue NAME (default $REDIS_QUEUE_NAME or bindu:tasks)
         --json (one JSON document on stdout)  --help
]],
    workers = [[
usage: binduq-lua workers [--queue NAME] [--json]
  The workers of a queue (its {Q}:workers lease records): id, concurrency (x tasks per state),
  seconds until the lease runs out (negative: it ran out, the worker is gone and will be
  reaped), tasks in flight, done and failed since it started (its report, every 5 s) and the
  first task in flight (+ how many more).
Options: --url URL  --queue NAME  --json  --help
]],
    queue = [[
usage: binduq-lua queue <peek|purge> [options]
  peek [--limit N]              the next N operations to be taken (default 10), oldest first
  purge --yes                   delete every waiting operation (not in flight, delayed or dead)
Options: --url URL  --queue NAME  --json  --help
]],
    top = [[
usage: binduq-lua top [--queue NAME ...] [--interval SECONDS] [--count N] [--json]
  A live view of queues and workers, redrawn every interval (default 1 s) until q, Ctrl-C,
  or N redraws. Rates are per second between two redraws (taken: the fall of ready plus in
  flight plus what was pushed cannot be known; "net" is the change of ready).
  --json: no screen; one JSON document per line per refresh, and by default one only (a
  snapshot: queues with net_per_s null, and workers); --count N for N of them.
Options: --url URL  --queue NAME  --json  --help
]],
    task = [[
usage: binduq-lua task <show|list|cancel|pause|resume|retry> [options]
  show ID                       one task: state, attempts, worker, times, history, artifacts
  list [--state STATE] [--context ID] [--limit N]
                                tasks, newest first (default limit 20)
  cancel ID                     cancel an open task (a running handler stops at once)
  pause ID                      pause a queued or running task (at its next yield point)
  resume ID [--message TEXT]    resume a paused task, or answer one waiting for input
  retry ID                      run a failed task again: its dead-letter entry back to the
                                queue, attempts from 1 (else a new run of its history)
STATE: submitted working input-required auth-required paused completed failed canceled rejected
Options: --database-url URL (default $DATABASE_URL)  --schema NAME (default binduq)
         --json (one JSON document on stdout)  --help
  cancel, pause, resume, retry go through Redis as the Lua API's s:cancel, s:pause, s:resume:
         --url URL (default $REDIS_URL)  --queue NAME (default: the queue the task was run on)
  With STORAGE_TYPE=redis (and no --database-url) the task state is the Redis storage's, for
  every subcommand: --url URL (default $REDIS_URL)  --queue NAME (default $REDIS_QUEUE_NAME)
]],
    schedules = [[
usage: binduq-lua schedules <list|pause|resume|remove> [NAME] [options]
  list                          the queue's recurring schedules (docs/recurring.md): when each
                                fires, active, paused or removed, its last and next tick
  pause NAME                    stop firing NAME on every worker (its ticks are skipped)
  resume NAME                   fire NAME again from its next tick
  remove NAME                   stop NAME for good, until a worker that declares it starts
Options: --url URL (default $REDIS_URL)  --queue NAME (default $REDIS_QUEUE_NAME or bindu:tasks)
         --json (one JSON document on stdout)  --help
]],
}

USAGE.dashboard = [[
usage: binduq-lua dashboard [options]
  Serves the web dashboard (docs/dashboard.md) until SIGTERM or SIGINT: queues and workers
  live, dead letters (browse, filter, requeue, delete), tasks (look up, events, cancel, pause,
  resume, retry).
Options: --addr HOST:PORT (default 127.0.0.1:7373; any other host needs a token)
         --token T (default $BINDUQ_DASHBOARD_TOKEN: every request needs it, as a bearer
         token or the password of basic auth)  --read-only (no action is accepted)
         --url URL (default $REDIS_URL)  --queue NAME ... (default: the queues found in Redis)
         --database-url URL (default $DATABASE_URL: task lookup and lists)  --schema NAME  --help
]]

USAGE.serve = [[
usage: binduq-lua serve [AGENT.lua] [options]
  Serves the A2A gateway (docs/gateway.md) until SIGTERM or SIGINT: A2A 0.3 and 1.0 JSON-RPC,
  the agent card; message/send schedules on the queue, tasks/get reads the task storage, for
  worker processes elsewhere. AGENT.lua returns the agent config (name, description, version,
  skills, deployment = { url = "http://host:port" }).
Options: --addr HOST:PORT (default $BINDUQ_GATEWAY_ADDR, the config's deployment.url, else
         127.0.0.1:3773)  --url URL (default $REDIS_URL)  --queue NAME (default
         $REDIS_QUEUE_NAME or bindu:tasks)  --database-url URL (default $DATABASE_URL)
         --dashboard (the web dashboard too, at /dashboard/ on the same address; beyond
         loopback it needs $BINDUQ_DASHBOARD_TOKEN)  --help
  Tokens: $BINDUQ_GATEWAY_TOKENS (comma-separated); every JSON-RPC call then needs one.
]]

-- binduq-lua serve: the gateway alone. A gateway on the in-memory scheduler would reach no
-- worker (examples/agent_gateway.lua runs both in one process), so Redis is required.
local function serve(opts, pos)
    local agent
    if pos[1] then
        local chunk, err = loadfile(pos[1])
        if not chunk then error({ fail = "cannot load " .. pos[1] .. ": " .. tostring(err) }) end
        local okl, v = pcall(chunk)
        if not okl or type(v) ~= "table" then
            error({ fail = pos[1] .. " must return the agent config as a table" .. (okl and "" or ": " .. tostring(v)) })
        end
        agent = v
    end
    local host, port
    if opts.addr then
        host, port = opts.addr:match("^%[?([^%]]-)%]?:(%d+)$")
        if not host then error({ usage = "--addr must be HOST:PORT" }) end
    end
    local probe = scheduler.new({ url = opts.url, queue_name = opts.queue }, nil, { type = "memory" })
    local backend = probe.backend
    probe:close()
    if backend == "memory" then
        error({ fail = "serve needs Redis (REDIS_URL or --url): a gateway alone on the in-memory scheduler "
                       .. "reaches no worker (examples/agent_gateway.lua runs a gateway and a worker in one process)" })
    end
    local gw, err = require("binduq.gateway").new{
        agent = agent, host = host, port = tonumber(port),
        scheduler = { url = opts.url, queue_name = opts.queue },
        storage = opts.database_url and { type = "postgres", url = opts.database_url } or nil,
        dashboard = opts.dashboard == true or nil,
    }
    if not gw then error({ fail = tostring(err) }) end
    gw:run()
end

-- The commands, in the order `binduq-lua --help` and the unknown-command message list them.
-- binduq-lua (src/host/main.c) runs a first argument found here as a command.
M.ORDER = { "dlq", "stats", "workers", "queue", "top", "task", "schedules", "serve", "dashboard" }
M.COMMANDS = {}
for _, c in ipairs(M.ORDER) do M.COMMANDS[c] = true end

--- The command nearest to `word` (a typo), or nil.
function M.nearest(word)
    return config.nearest(word, M.ORDER)
end

-- The lines for a first argument that is neither a command nor a file.
local function unknown_command(word)
    local near = M.nearest(word)
    return { ("binduq-lua: unknown command '%s'%s"):format(word, near and (" (did you mean '" .. near .. "'?)") or ""),
             "commands: " .. table.concat(M.ORDER, ", ") .. " (binduq-lua COMMAND --help), "
             .. "or the path of a Lua script to run" }
end

-- The name of option `name` as typed ("task_id" -> "--task-id").
local function flag(name)
    return "--" .. name:gsub("_", "-")
end

-- A small parser: --flag value, --switch, and positional words. `known` is the command's
-- set of options: an option not in it is refused here, before it can take a value.
local SWITCHES = { json = true, all = true, help = true, yes = true, read_only = true, dashboard = true }
local function parse(args, known)
    local opts, pos = {}, {}
    local i = 1
    while i <= #args do
        local a = args[i]
        local name = a:match("^%-%-([%w%-_]+)$")
        if name then
            name = name:gsub("%-", "_")
            if not known[name] then
                local near = config.nearest(name, known)
                error({ usage = "unknown option '" .. a .. "'"
                                .. (near and (" (did you mean '" .. flag(near) .. "'?)") or "") })
            end
            if SWITCHES[name] then
                opts[name] = true
            else
                if args[i + 1] == nil then error({ usage = "option " .. flag(name) .. " needs a value" }) end
                opts[name] = (name == "queue" and opts.queue) and (opts.queue .. "," .. args[i + 1])
                             or args[i + 1]
                i = i + 1
            end
        elseif a:sub(1, 1) == "-" and a ~= "-" then
            error({ usage = "unknown option '" .. a .. "'" })
        else
            pos[#pos + 1] = a
        end
        i = i + 1
    end
    return opts, pos
end

local KNOWN = {
    dlq = { url = true, queue = true, json = true, all = true, help = true, limit = true,
            task_id = true, type = true, code = true, worker = true, reason = true },
    task = { database_url = true, schema = true, json = true, help = true, limit = true, state = true,
             context = true, url = true, queue = true, message = true },
    stats = { url = true, queue = true, json = true, help = true },
    workers = { url = true, queue = true, json = true, help = true },
    queue = { url = true, queue = true, json = true, help = true, limit = true, yes = true },
    top = { url = true, queue = true, help = true, interval = true, count = true, json = true },
    serve = { url = true, queue = true, database_url = true, addr = true, help = true, dashboard = true },
    dashboard = { url = true, queue = true, database_url = true, schema = true, addr = true, token = true,
                  read_only = true, help = true },
    schedules = { url = true, queue = true, json = true, help = true },
}

local function filter_of(opts)
    local f, any = {}, false
    for _, k in ipairs({ "task_id", "type", "code", "worker", "reason" }) do
        if opts[k] then
            f[k] = opts[k]
            any = true
        end
    end
    return any and f or nil
end

-- One line of text for the terminal (see the top of this file).
local function text_line(s)
    return core.escape(s)
end

-- Writes `lines` (a list of lines, or one line) to stdout, each through text_line.
local function write_lines(lines, to)
    if type(lines) ~= "table" then lines = { lines } end
    local t = {}
    for i, l in ipairs(lines) do t[i] = text_line(tostring(l)) end
    t[#t + 1] = ""
    local f = to or io.stdout
    f:write(table.concat(t, "\n"))
end

-- Writes one JSON document to stdout, safe to print (see the top of this file).
local function json_text(doc)
    io.stdout:write(core.escape(doc, "json_text"), "\n")
end

-- Adds a body that has lines of its own to `lines`: one line per line, indented.
local function body_lines(lines, body)
    for l in (tostring(body) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = "  " .. l end
end

local function out(opts, data, text)
    if opts.json then
        json_text(json.encode_strict(data))
    else
        write_lines(text)
    end
end

-- A field of a one-line summary: whitespace runs as one space, escaped, at most n characters.
-- Escaped first, so the cut falls between two characters and no NUL reaches a padded
-- string.format field.
local function short(s, n)
    s = text_line((tostring(s or ""):gsub("%s+", " ")))
    if utf8.len(s) > n then s = s:sub(1, utf8.offset(s, n - 2) - 1) .. "..." end
    return s
end

-- Fails a run-time call with its message.
local function must(v, err)
    if v == nil and err ~= nil then error({ fail = err }) end
    return v
end

local function entry_json(e)
    local copy = {}
    for k, v in pairs(e) do copy[k] = v end
    copy.raw = nil
    if copy.message and not utf8.len(copy.message) then
        copy.message = nil
        copy.message_invalid_utf8 = true
    end
    return copy
end

local dlq = {}

function dlq.list(s, opts)
    local limit = tonumber(opts.limit or 20)
    if not limit or limit < 1 then error({ usage = "--limit must be a positive number" }) end
    local total = must(s:dead_letter_count())
    local entries = must(s:dead_letters(0, limit - 1))
    if opts.json then
        local list = {}
        for i, e in ipairs(entries) do
            list[i] = entry_json(e)
            list[i].index = i - 1
        end
        json_text('{"queue":' .. json.encode_strict(s.queue_name) .. ',"total":' .. total
                  .. ',"entries":' .. json.array(list) .. "}")
        return
    end
    local lines = { ("%d dead-letter entr%s in %s%s"):format(total, total == 1 and "y" or "ies", s.queue_name,
                                                           total > #entries and (", newest " .. #entries .. ":") or ":") }
    for i, e in ipairs(entries) do
        lines[#lines + 1] = ("%4d  %-24s  %-36s  %-10s  %s"):format(i - 1, short(e.failed_at or "-", 24),
            short(e.task_id or "(no task id)", 36), short(e.error and e.error.code or "-", 10), short(e.reason, 60))
    end
    out(opts, nil, lines)
end

local function index_arg(pos)
    local n = tonumber(pos[2])
    if not n or n < 0 or n ~= math.floor(n) then error({ usage = "INDEX must be a whole number (0 is the newest)" }) end
    return n
end

function dlq.show(s, opts, pos)
    local e = must(s:dead_letter(index_arg(pos)))
    if not e then error({ fail = "no dead-letter entry at index " .. pos[2] }) end
    if opts.json then return out(opts, entry_json(e)) end
    local lines = {}
    for _, k in ipairs({ "task_id", "type", "queue", "worker", "attempts", "failed_at", "reason", "size", "sha1" }) do
        local v = e[k]
        if type(v) == "number" then v = math.tointeger(v) or v end
        if v ~= nil then lines[#lines + 1] = ("%-10s %s"):format(k .. ":", tostring(v)) end
    end
    if type(e.error) == "table" then
        lines[#lines + 1] = ("%-10s %s: %s (retryable: %s)"):format("error:", tostring(e.error.code),
            tostring(e.error.message), tostring(e.error.retryable))
        if e.error.traceback then body_lines(lines, e.error.traceback) end
    end
    lines[#lines + 1] = e.truncated and ("message:  (its first %d byte%s of %s; it cannot be requeued)")
                                          :format(#(e.message or ""), #(e.message or "") == 1 and "" or "s",
                                                  tostring(math.tointeger(e.size) or e.size)) or "message:"
    body_lines(lines, e.message or "")
    out(opts, nil, lines)
end

local function progress(verb)
    local last = 0
    return function(done, seen)
        if seen - last >= 500 then
            io.stderr:write(("%s %d (of %d looked at)...\n"):format(verb, done, seen))
            last = seen
        end
    end
end

function dlq.requeue(s, opts, pos)
    local n
    if pos[2] then
        local e = must(s:dead_letter(index_arg(pos)))
        if not e then error({ fail = "no dead-letter entry at index " .. pos[2] }) end
        n = must(s:requeue_entry(e.raw)) and 1 or 0
    else
        local f = filter_of(opts)
        if not f and not opts.all then error({ usage = "requeue needs INDEX, --all or a filter" }) end
        n = must(s:requeue_dead(f, progress("requeued")))
    end
    out(opts, { requeued = n, queue = s.queue_name },
        ("requeued %d entr%s to %s"):format(n, n == 1 and "y" or "ies", s.queue_name))
end

function dlq.purge(s, opts)
    local f = filter_of(opts)
    if not f and not opts.all then error({ usage = "purge needs --all or a filter" }) end
    local n = must(s:purge_dead(f, progress("purged")))
    out(opts, { purged = n, queue = s.queue_name },
        ("purged %d entr%s from %s"):format(n, n == 1 and "y" or "ies", s.queue_name))
end

-- Whether the task state to read is the Redis storage's: STORAGE_TYPE=redis and no
-- --database-url (the Redis and queue of --url and --queue, as a worker's).
local function redis_store(opts)
    local t = core.env("STORAGE_TYPE")
    return opts.database_url == nil and t ~= nil and t:lower() == "redis"
end

-- The storage section of --database-url or DATABASE_URL (or POSTGRES_URL), resolved, or of
-- the Redis storage (redis_store). Task state in memory lives only inside its worker
-- process: there is nothing to read from here.
local function storage_section(opts)
    if redis_store(opts) then
        local okc, section = pcall(storage_mod.section, { type = "redis" })
        if not okc then error({ fail = tostring(section) }) end
        return section
    end
    local url = opts.database_url or core.env("DATABASE_URL") or core.env("POSTGRES_URL")
    if url == nil or url == "" then
        error({ fail = "no database to inspect: set DATABASE_URL or pass --database-url "
                       .. "(in-memory task state lives only inside its worker process)" })
    end
    local okc, section = pcall(storage_mod.section, { type = "postgres", url = url, schema = opts.schema })
    if not okc then error({ fail = tostring(section) }) end
    section.url_name = opts.database_url and "--database-url"
                       or (core.env("DATABASE_URL") and "DATABASE_URL" or "POSTGRES_URL")
    return section
end

local function open_storage(opts)
    local section, client = storage_section(opts), nil
    if section.type == "redis" then
        local okc, c = pcall(core.client, { url = opts.url, queue_name = opts.queue })
        if not okc then error({ fail = tostring(c) }) end
        client = c
    end
    local st, err = storage_mod.open(section, client)
    if client then client:close() end -- the storage has its own connections
    if not st then error({ fail = tostring(err) }) end
    return st
end

-- ---- task: stored task state ----------------------------------------------------------------

local task = {}

local function iso(t)
    if not t then return "-" end
    return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. ("%.3fZ"):format(t % 1):sub(2)
end

-- The time fields of a task as --json prints them: ISO 8601 in UTC, as the text does.
local TIME_FIELDS = { "created_at", "updated_at", "state_at" }
local function iso_times(t)
    for _, k in ipairs(TIME_FIELDS) do
        if type(t[k]) == "number" then t[k] = iso(t[k]) end
    end
    return t
end

local function text_of(m)
    if type(m) ~= "table" then return tostring(m) end
    if type(m.content) == "string" then return m.content end
    local parts = {}
    for _, p in ipairs(type(m.parts) == "table" and m.parts or {}) do
        if type(p) == "table" and type(p.text) == "string" then parts[#parts + 1] = p.text end
    end
    return #parts > 0 and table.concat(parts, "\n") or json.encode(m) or "?"
end

function task.show(st, opts, pos)
    local id = pos[2]
    if not id then error({ usage = "show needs a task ID" }) end
    local rec = must(st:get(id))
    if not rec then error({ fail = "no task " .. id }) end
    local t = storage_mod.view(rec)
    if opts.json then
        local h, a = json.array(t.history), json.array(t.artifacts)
        t.history, t.artifacts = nil, nil
        iso_times(t)
        local head = json.encode_strict(t)
        json_text(head:sub(1, -2) .. (head == "{}" and "" or ",") .. '"history":' .. h .. ',"artifacts":' .. a .. "}")
        return
    end
    local lines = {}
    for _, k in ipairs({ "task_id", "state", "context_id", "queue", "attempts", "worker", "requested" }) do
        if t[k] ~= nil then lines[#lines + 1] = ("%-12s %s"):format(k .. ":", tostring(t[k])) end
    end
    for _, k in ipairs({ "created_at", "updated_at", "state_at" }) do
        lines[#lines + 1] = ("%-12s %s"):format(k .. ":", iso(t[k]))
    end
    if t.error then
        lines[#lines + 1] = ("%-12s %s: %s"):format("error:", tostring(t.error.code), tostring(t.error.message))
    end
    if t.checkpoint ~= nil then lines[#lines + 1] = ("%-12s %s"):format("checkpoint:", json.encode(t.checkpoint)) end
    lines[#lines + 1] = ("history (%d):"):format(#t.history)
    for i, m in ipairs(t.history) do
        lines[#lines + 1] = ("  %2d %-6s %s"):format(i, short(type(m) == "table" and m.role or "?", 12), short(text_of(m), 100))
    end
    lines[#lines + 1] = ("artifacts (%d)%s"):format(#t.artifacts, #t.artifacts > 0 and ":" or "")
    for i, a in ipairs(t.artifacts) do
        lines[#lines + 1] = ("  %2d %s"):format(i, short(json.encode(a), 100))
    end
    out(opts, nil, lines)
end

function task.list(st, opts)
    local limit = tonumber(opts.limit or 20)
    if not limit or limit < 1 or limit ~= math.floor(limit) then error({ usage = "--limit must be a positive whole number" }) end
    if opts.state and not (storage_mod.OPEN[opts.state] or storage_mod.TERMINAL[opts.state]) then
        error({ usage = "unknown state '" .. opts.state .. "'" })
    end
    local recs = must(st:list{ state = opts.state, context_id = opts.context, limit = math.tointeger(limit) })
    local list = {}
    for i, r in ipairs(recs) do list[i] = storage_mod.view(r) end
    if opts.json then
        local items = {}
        for i, t in ipairs(list) do
            items[i] = iso_times{ task_id = t.task_id, state = t.state, context_id = t.context_id,
                                  attempts = t.attempts, worker = t.worker, queue = t.queue, created_at = t.created_at,
                                  updated_at = t.updated_at, state_at = t.state_at, messages = #t.history }
        end
        json_text('{"tasks":' .. json.array(items) .. "}")
        return
    end
    local lines = { ("%d task%s%s:"):format(#list, #list == 1 and "" or "s",
                                            opts.state and (" in state " .. opts.state) or "") }
    for _, t in ipairs(list) do
        lines[#lines + 1] = ("%-36s  %-14s  %3d  %-24s  %s"):format(short(t.task_id, 36), short(t.state, 14), t.attempts,
                                                                iso(t.updated_at), short(t.worker or "-", 30))
    end
    out(opts, nil, lines)
end

-- ---- task cancel|pause|resume|retry: the producer's operations ----------------------------
--
-- Each goes through a binduq scheduler built from --url/--queue (or REDIS_URL) with the task
-- storage of --database-url, as a script calling s:cancel, s:pause or s:resume would. The
-- stored state is read first, and an operation that would do nothing is refused (exit 1):
--   cancel  an open task (submitted, working, input-required, auth-required, paused)
--   pause   a queued (submitted) or running (working) task not already asked to pause
--   resume  a paused task, a running one asked to pause (the resume withdraws the pause),
--           or one waiting for input (input-required, auth-required: --message is needed)
--   retry   a failed task only, as Sidekiq's and BullMQ's retry of a dead or failed job:
--           its newest dead-letter entry goes back to the queue with attempts from 1 (what
--           `dlq requeue` does); with no entry (purged, or the failure policy dropped it) the
--           task is reopened (failed -> submitted) and a run of its stored history is
--           pushed. A canceled task stays canceled: a cancel wins (lifecycle.md).
-- The operation goes to the queue the task was run on (its record's queue) unless --queue
-- names another.

local function refuse(op, id, why)
    error({ fail = ("cannot %s task %s: %s"):format(op, id, why) })
end

local WAITING = { ["input-required"] = true, ["auth-required"] = true }

local function check_state(op, id, rec, opts)
    local state, req = rec.state, rec.requested or ""
    if op == "cancel" then
        if storage_mod.TERMINAL[state] then refuse(op, id, "it is already " .. state .. " (a finished task does not change)") end
    elseif op == "pause" then
        if state == "paused" then refuse(op, id, "it is already paused") end
        if state == "working" and (req == "pause" or req == "pause-sent") then
            refuse(op, id, "a pause is already asked of its running handler")
        end
        if state ~= "submitted" and state ~= "working" then
            refuse(op, id, "it is " .. state .. " (only a queued or running task can be paused)")
        end
    elseif op == "resume" then
        if WAITING[state] and not opts.message then
            refuse(op, id, "it waits for input (" .. state .. "): give the answer with --message TEXT")
        end
        if not (WAITING[state] or state == "paused" or (state == "working" and (req == "pause" or req == "pause-sent"))) then
            refuse(op, id, "it is " .. state .. " (only a paused task or one waiting for input can be resumed)")
        end
    elseif state ~= "failed" then -- retry
        refuse(op, id, "it is " .. state .. " (only a failed task can be retried"
                       .. (state == "canceled" and "; a cancel is final: run it again under a new task id)" or ")"))
    end
end

-- The newest dead-letter entry of task `id` on the scheduler's queue, or nil.
local function dead_entry(s, id)
    local start = 0
    while true do
        local page = must(s:dead_letters(start, start + 499))
        if #page == 0 then return nil end
        for i, e in ipairs(page) do
            if e.task_id == id then return must(s:dead_letter(start + i - 1)) end
        end
        start = start + #page
    end
end

-- retry: the dead-letter entry back to the queue, else a new run of the stored history.
-- Returns how ("dead_letter" or "run").
local function retry(s, id, rec)
    local e = dead_entry(s, id)
    if e and not e.truncated then
        if must(s:requeue_entry(e.raw)) then return "dead_letter" end
        refuse("retry", id, "its dead-letter entry was requeued or purged meanwhile")
    end
    local changed, now = must(s:storage():change{ id = id, from = "failed", to = "submitted", error = "" })
    if not changed then refuse("retry", id, "it is " .. tostring(now) .. " now") end
    local history = json.decode(rec.history or "[]")
    local sent, err = s:run{ task_id = id, conversation_id = rec.context_id, messages = history }
    if not sent then error({ fail = tostring(err) }) end
    return "run"
end

local NEXT = {
    cancel = "a running handler stops at its next yield point or within 10,000 instructions",
    pause = "a running handler pauses at its next yield point",
    resume = "a worker runs it again",
    retry = "a worker runs it again, attempts from 1",
}

local function task_op(op, st, opts, pos)
    local id = pos[2]
    local rec = must(st:get(id))
    if not rec then error({ fail = "no task " .. id }) end
    check_state(op, id, rec, opts)
    local section = { url = opts.url, queue_name = opts.queue or rec.queue }
    if redis_store(opts) then
        -- the storage's queue names its keys' slot: --queue (or REDIS_QUEUE_NAME) as given,
        -- and the operation goes to the task's own queue
        section.queue_name = opts.queue
        section.route = function() return rec.queue end
    end
    -- A retry's run repeats the task's own, whose deduplication key may still be held.
    if op == "retry" then section.dedup = false end
    local okc, s = pcall(scheduler.new, section, nil, storage_section(opts))
    if not okc then error({ fail = tostring(s) }) end
    if s.backend == "memory" then
        s:close()
        error({ fail = "no Redis to send the " .. op .. " to: set REDIS_URL or pass --url" })
    end
    local ok, res = pcall(function()
        if op == "retry" then return retry(s, id, rec) end
        local sent, status = s[op](s, id, opts.message and { opts.message } or nil)
        if not sent then error({ fail = tostring(status) }) end
        return status
    end)
    local after = ok and s:get_task(id) or nil
    local queue = s.queue_name
    s:close()
    if not ok then error(res, 0) end
    local state = after and after.state or rec.state
    local doc = { task_id = id, operation = op, queue = queue, result = res, state_before = rec.state,
                  state = state, requested = after and after.requested or nil }
    if op == "retry" then
        doc.result, doc.via = "scheduled", res
    end
    local how = op == "retry" and (res == "dead_letter" and "its dead-letter entry requeued" or "a new run of its history")
                or op .. " " .. res
    out(opts, doc, ("task %s: %s on %s; state %s (was %s): %s"):format(id, how, queue, state, rec.state, NEXT[op]))
end

function task.cancel(st, opts, pos) return task_op("cancel", st, opts, pos) end
function task.pause(st, opts, pos) return task_op("pause", st, opts, pos) end
function task.resume(st, opts, pos) return task_op("resume", st, opts, pos) end
function task.retry(st, opts, pos) return task_op("retry", st, opts, pos) end

-- ---- stats, workers, queue, top: the broker's admin operations (src/broker/admin.h) -------

local function queues_of(opts, s)
    local list = {}
    for q in (opts.queue or s.queue_name):gmatch("[^,]+") do list[#list + 1] = q end
    return list
end

-- The figures of one queue: ready, delayed, inflight, dead, workers (live), seen, plus the
-- worker records {id=, lease_left=, inflight=, current=} when `detail`.
-- The task id in a queued message (a "#bq" header line first, perhaps), or nil.
local function task_id_of(msg)
    if type(msg) ~= "string" then return nil end
    local body = msg:match("^#bq [^\n]*\n(.*)$") or msg
    local okj, t = pcall(json.decode, body)
    if not okj or type(t) ~= "table" then return nil end
    local id = t.task_id or (type(t.params) == "table" and t.params.task_id) or nil
    return type(id) == "string" and id or nil
end

local function queue_stats(c, q, detail)
    local st = must(c:stats(q, detail))
    local list = {}
    for _, w in ipairs(st.records or {}) do
        list[#list + 1] = { id = w.id, lease_left = w.lease_left, inflight = w.inflight, current = task_id_of(w.first) }
    end
    st.records = nil
    return st, list
end

-- What the workers report (report-N.lua, every 5 s): one read-only script reads queue q's
-- counts per minute ({Q}:rates) and, for each of `workers` (queue_stats' records), its
-- description ({Q}:worker:<id>) and in-flight list ({Q}:wip:<id>), added to the record:
-- host, pid, concurrency, per_slot, delivery, started, reported, completed, failed,
-- running, current_ids (at most CURRENT_MAX). Returns the rates hash as a flat list.
local DETAIL_SCRIPT = [[
local out = { redis.call('HGETALL', KEYS[1]) }
for i = 2, #KEYS, 2 do
    out[#out + 1] = redis.call('GET', KEYS[i]) or ''
    out[#out + 1] = redis.call('LRANGE', KEYS[i + 1], 0, tonumber(ARGV[1]) - 1)
end
return out
]]
local WORKERS_MAX = 256 -- workers of one queue described in full (the others by lease only)
local CURRENT_MAX = 50 -- task ids read per worker
local PER_CALL = 28    -- workers per script call (c:command takes at most 64 arguments)

local function worker_details(c, q, workers)
    local rates
    local n = math.min(#workers, WORKERS_MAX)
    for from = 1, math.max(n, 1), PER_CALL do
        local to = math.min(n, from + PER_CALL - 1)
        local args = { "EVAL", DETAIL_SCRIPT, tostring(1 + 2 * (to - from + 1)), core.key_derive(q, "rates") }
        for i = from, to do
            args[#args + 1] = core.key_derive(q, "worker:" .. workers[i].id)
            args[#args + 1] = core.key_derive(q, "wip:" .. workers[i].id)
        end
        args[#args + 1] = tostring(CURRENT_MAX)
        local rep = must(c:command(q, table.unpack(args)))
        rates = rates or rep[1]
        for i = from, to do
            local k = i - from + 1
            local w, desc, wip = workers[i], rep[2 * k], rep[2 * k + 1]
            local okj, d = pcall(json.decode, desc ~= "" and desc or "null")
            if okj and type(d) == "table" then
                w.host, w.pid, w.concurrency, w.per_slot = d.host, d.pid, d.concurrency, d.per_slot
                w.delivery, w.started, w.reported = d.delivery, d.started, d.at
                w.completed, w.failed, w.running = d.completed, d.failed, d.running
            end
            local ids = {}
            for _, m in ipairs(type(wip) == "table" and wip or {}) do
                ids[#ids + 1] = task_id_of(m) or "(no task id)"
            end
            w.current_ids = #ids > 0 and ids or nil -- (absent rather than an empty object)
            w.current = w.current or ids[1]
        end
    end
    return rates
end

-- The queues with keys in this Redis, found by one bounded SCAN (at most 10,000 keys looked
-- at, the node of `q` only): a list of names, and whether the scan was cut short.
local function known_queues(c, q)
    local list, partial = c:queues(q, 10000)
    return list or {}, partial
end

local admin = {}

function admin.stats(s, opts)
    local c = s.client
    local rows, unseen = {}, {}
    for _, q in ipairs(queues_of(opts, s)) do
        local r = queue_stats(c, q)
        if not r.seen then unseen[#unseen + 1] = q end
        rows[#rows + 1] = r
    end
    if opts.json then
        json_text('{"queues":' .. json.array(rows) .. "}")
    else
        local lines = { ("%-32s %9s %9s %9s %9s %8s"):format("QUEUE", "READY", "DELAYED", "INFLIGHT", "DEAD",
                                                             "WORKERS") }
        for _, r in ipairs(rows) do
            lines[#lines + 1] = ("%-32s %9d %9d %9d %9d %8d"):format(short(r.queue, 32), r.ready, r.delayed, r.inflight,
                                                                  r.dead, r.workers)
        end
        out(opts, nil, lines)
    end
    -- A queue with no key at all is most likely a typo: say so, on stderr, with the queues
    -- that do exist.
    if #unseen > 0 then
        local known, partial = known_queues(c, unseen[1])
        local msg = {}
        for _, q in ipairs(unseen) do
            msg[#msg + 1] = ("binduq-lua stats: no queue '%s' has been seen here (no keys exist for it)"):format(q)
        end
        msg[#msg + 1] = #known == 0 and "no queue has any key in this Redis"
                        or ("queues with keys%s: %s"):format(partial and " (of the first 10,000 keys)" or "",
                                                             table.concat(known, ", "))
        write_lines(msg, io.stderr)
    end
end

function admin.workers(s, opts)
    local q = queues_of(opts, s)[1]
    local _, list = queue_stats(s.client, q, true)
    worker_details(s.client, q, list)
    if opts.json then
        json_text('{"queue":' .. json.encode_strict(q) .. ',"workers":' .. json.array(list) .. "}")
        return
    end
    local lines = { ("%d worker record%s on %s:"):format(#list, #list == 1 and "" or "s", q),
                    ("%-36s %6s %12s %9s %9s %7s  %s"):format("WORKER", "CONC", "LEASE LEFT", "INFLIGHT", "DONE",
                                                             "FAILED", "CURRENT TASK") }
    for _, w in ipairs(list) do
        local cur = w.current or "-"
        if w.current_ids and #w.current_ids > 1 then cur = short(cur, 32) .. (" (+%d)"):format(#w.current_ids - 1) end
        local c, per = math.tointeger(w.concurrency), math.tointeger(w.per_slot)
        local conc = c and (tostring(c) .. (per and per > 1 and "x" .. per or "")) or "-"
        lines[#lines + 1] = ("%-36s %6s %11.1fs %9d %9s %7s  %s"):format(short(w.id, 36), short(conc, 6), w.lease_left,
            w.inflight, math.tointeger(w.completed) or "-", math.tointeger(w.failed) or "-",
            w.lease_left < 0 and "(lease ran out: gone)" or short(cur, 44))
    end
    out(opts, nil, lines)
end

function admin.queue(s, opts, pos)
    local q = queues_of(opts, s)[1]
    local c = s.client
    if pos[1] == "peek" then
        local limit = tonumber(opts.limit or 10)
        if not limit or limit < 1 or limit ~= math.floor(limit) then error({ usage = "--limit must be a positive whole number" }) end
        -- The oldest (next taken) is at the front: the right end, or the left one for a
        -- queue whose producers RPUSH.
        local list = must(c:peek(q, math.tointeger(limit)))
        if opts.json then
            local safe = {}
            for i, m in ipairs(list) do safe[i] = utf8.len(m) and m or "(not valid UTF-8)" end
            json_text('{"queue":' .. json.encode_strict(q) .. ',"messages":' .. json.array(safe) .. "}")
            return
        end
        local lines = { ("next %d of %d on %s (oldest first):"):format(#list, must(c:length("ready", q)), q) }
        for i, m in ipairs(list) do lines[#lines + 1] = ("%4d  %s"):format(i, short(m, 110)) end
        return out(opts, nil, lines)
    elseif pos[1] == "purge" then
        if not opts.yes then error({ usage = "purge deletes every waiting operation of " .. q .. ": add --yes" }) end
        -- 1,000 at a time, so a long list shows progress and never blocks Redis long.
        local total = must(c:purge_ready(q, 1000, function(done, left)
            io.stderr:write(("purged %d (%d left)...\n"):format(done, left))
        end))
        return out(opts, { purged = total, queue = q }, ("purged %d waiting operation%s from %s"):format(total,
            total == 1 and "" or "s", q))
    end
    error({ usage = "unknown subcommand '" .. tostring(pos[1]) .. "'" })
end

-- One refresh of top --json: {"time":ISO, "queues":[{queue, ready, delayed, inflight, dead,
-- workers, net_per_s}], "workers":[{id, queue, lease_left, inflight, current}]} on one line.
-- ---- schedules: recurring schedules' state in {Q}:cron (cron-4, docs/recurring.md) ------

local function iso_or_dash(t)
    return (t and t >= 0) and core.iso8601(t) or "-"
end

-- The schedules of queue q as recorded in {Q}:cron: a list sorted by name of {name=,
-- cron=, tz=, every=, missed=, max_missed=, jitter=, state=, last=, next=}.
local function schedule_rows(c, q)
    local flat = must(c:command(q, "HGETALL", core.key_derive(q, "cron")))
    local by = {}
    local function row(name)
        by[name] = by[name] or { name = name, state = "active" }
        return by[name]
    end
    for i = 1, #flat - 1, 2 do
        local f, v = flat[i], flat[i + 1]
        local name, what = f:match("^(.-):(%a+)$")
        if name == nil then
            row(f).last = math.tointeger(tonumber(v))
        elseif what == "spec" then
            local okj, d = pcall(json.decode, v)
            if okj and type(d) == "table" then
                local r = row(name)
                for _, k in ipairs({ "cron", "tz", "every", "missed", "max_missed", "jitter" }) do
                    r[k] = d[k] ~= json.null and d[k] or nil
                end
            end
        elseif what == "paused" then
            row(name).paused = true
        elseif what == "removed" then
            row(name).removed = true
        end
    end
    local list = {}
    for _, r in pairs(by) do
        r.state = r.removed and "removed" or r.paused and "paused" or "active"
        r.paused, r.removed = nil, nil
        if r.state ~= "removed" then
            local okn, nxt = pcall(function()
                local after = math.max(r.last or -1, math.floor(core.now()))
                if r.every then return (after // r.every + 1) * r.every end
                if r.cron then return core.cron(r.cron, r.tz):next(after) end
            end)
            r.next = okn and nxt or nil
        end
        list[#list + 1] = r
    end
    table.sort(list, function(a, b) return a.name < b.name end)
    return list
end

function admin.schedules(s, opts, pos)
    local q = queues_of(opts, s)[1]
    local c = s.client
    local sub = pos[1]
    if sub == "list" then
        if pos[2] then error({ usage = "unexpected argument '" .. pos[2] .. "'" }) end
        local list = schedule_rows(c, q)
        if opts.json then
            json_text('{"queue":' .. json.encode_strict(q) .. ',"schedules":' .. json.array(list) .. "}")
            return
        end
        local lines = { ("%d schedule%s on %s:"):format(#list, #list == 1 and "" or "s", q),
                        ("%-24s %-32s %-8s %-24s %-24s %s"):format("NAME", "WHEN", "STATE", "LAST TICK", "NEXT TICK",
                                                                 "MISSED") }
        for _, r in ipairs(list) do
            local when = r.every and ("every " .. math.tointeger(r.every) .. "s")
                         or r.cron and (r.cron .. (r.tz and (" " .. r.tz) or "")) or "-"
            lines[#lines + 1] = ("%-24s %-32s %-8s %-24s %-24s %s"):format(short(r.name, 24), short(when, 32), r.state,
                iso_or_dash(r.last), iso_or_dash(r.next), short(r.missed or "-", 8))
        end
        return out(opts, nil, lines)
    end
    local name = pos[2]
    if not name then error({ usage = sub .. " needs a schedule NAME" }) end
    if pos[3] then error({ usage = "unexpected argument '" .. pos[3] .. "'" }) end
    local _, last, state = c:cron(name, sub, "", nil, q)
    if last == nil then error({ fail = tostring(state) }) end
    if state == "unknown" then error({ fail = "no schedule '" .. name .. "' on " .. q }) end
    if state == "removed" and sub ~= "remove" then
        error({ fail = "schedule '" .. name .. "' was removed (a worker that declares it starts it again)" })
    end
    if opts.json then
        json_text('{"queue":' .. json.encode_strict(q) .. ',"schedule":' .. json.encode_strict(name)
                  .. ',"state":"' .. state .. '"}')
        return
    end
    local verb = { pause = "paused", resume = "resumed", remove = "removed" }
    write_lines(("%s schedule '%s' on %s"):format(verb[sub], name, q))
end

local function top_json(rows, workers, t)
    local qs = {}
    for i, r in ipairs(rows) do
        qs[i] = '{"queue":' .. json.encode_strict(r.queue) .. (',"ready":%d,"delayed":%d,"inflight":%d,"dead":%d,'
                .. '"workers":%d,"net_per_s":%s}'):format(r.ready, r.delayed, r.inflight, r.dead, r.workers,
                                                         r.net and ("%.3f"):format(r.net) or "null")
    end
    json_text('{"time":' .. json.encode_strict(iso(t)) .. ',"queues":[' .. table.concat(qs, ",") .. '],"workers":'
              .. json.array(workers) .. "}")
end

function admin.top(s, opts)
    local interval = tonumber(opts.interval or 1)
    local count = opts.count and tonumber(opts.count)
    if not interval or interval <= 0 then error({ usage = "--interval must be a positive number of seconds" }) end
    if opts.count and (not count or count < 1 or count ~= math.floor(count)) then
        error({ usage = "--count must be a positive whole number" })
    end
    -- --json is for scripts: a snapshot unless --count asks for more.
    if opts.json and not count then count = 1 end
    local qs = queues_of(opts, s)
    local prev, prev_t = {}, nil
    local tty = not opts.json and os.getenv("TERM") and os.getenv("TERM") ~= "dumb"
    -- Non-blocking keyboard: 'q' quits (stty when stdin is a terminal).
    local raw = tty and os.execute("stty -icanon -echo min 0 time 0 2>/dev/null") == true
    local ok, err = pcall(function()
        local frames = 0
        while true do
            local t = core.monotonic()
            local lines = { ("binduq top  %s  (every %gs, q to quit)"):format(os.date("!%H:%M:%S"), interval), "",
                            ("%-32s %9s %9s %9s %9s %8s %9s"):format("QUEUE", "READY", "DELAYED", "INFLIGHT", "DEAD",
                                                                    "WORKERS", "NET/S") }
            local workers, rows = {}, {}
            for _, q in ipairs(qs) do
                local st, list = queue_stats(s.client, q, true)
                local rate = "-"
                if prev[q] and prev_t then
                    st.net = (st.ready - prev[q]) / (t - prev_t)
                    rate = ("%+.1f"):format(st.net)
                end
                prev[q] = st.ready
                rows[#rows + 1] = st
                lines[#lines + 1] = ("%-32s %9d %9d %9d %9d %8d %9s"):format(short(q, 32), st.ready, st.delayed,
                                                                           st.inflight, st.dead, st.workers, rate)
                for _, w in ipairs(list) do w.queue = q; workers[#workers + 1] = w end
            end
            prev_t = t
            if opts.json then
                top_json(rows, workers, core.now())
                io.stdout:flush()
                frames = frames + 1
                if frames >= count then return end
                core.sleep(math.max(0, t + interval - core.monotonic()))
                goto continue
            end
            lines[#lines + 1] = ""
            lines[#lines + 1] = ("%-36s %-20s %10s %9s  %s"):format("WORKER", "QUEUE", "LEASE", "INFLIGHT", "CURRENT TASK")
            for _, w in ipairs(workers) do
                lines[#lines + 1] = ("%-36s %-20s %9.1fs %9d  %s"):format(short(w.id, 36), short(w.queue, 20), w.lease_left,
                    w.inflight, w.lease_left < 0 and "(gone)" or short(w.current or "-", 30))
            end
            io.stdout:write(tty and "\27[H\27[2J" or "")
            write_lines(lines)
            io.stdout:flush()
            frames = frames + 1
            if count and frames >= count then return end
            local until_t = t + interval
            while core.monotonic() < until_t do
                core.sleep(0.05)
                if raw then
                    local k = io.stdin:read(1)
                    if k == "q" or k == "Q" then return end
                end
            end
            ::continue::
        end
    end)
    if raw then os.execute("stty sane 2>/dev/null") end
    if not ok then error(err, 0) end
end

--- Runs a command; returns the exit status.
function M.main(args)
    local cmd = args[1]
    if not M.COMMANDS[cmd] then
        write_lines(unknown_command(tostring(cmd)), io.stderr)
        return 2
    end
    local ok, res = pcall(function()
        local opts, pos = parse({ table.unpack(args, 2) }, KNOWN[cmd])
        if cmd == "serve" then
            if opts.help then
                io.stdout:write(USAGE.serve)
                return 0
            end
            if pos[2] then error({ usage = "unexpected argument '" .. pos[2] .. "'" }) end
            serve(opts, pos)
            return 0
        end
        if cmd == "dashboard" then
            if opts.help then
                io.stdout:write(USAGE.dashboard)
                return 0
            end
            if pos[1] then error({ usage = "unexpected argument '" .. pos[1] .. "'" }) end
            return require("binduq.dashboard").main(opts)
        end
        local nosub = cmd == "stats" or cmd == "workers" or cmd == "top"
        if opts.help or (#pos == 0 and not nosub) then
            io.stdout:write(USAGE[cmd]) -- ours, several lines
            return opts.help and 0 or 2
        end
        if nosub and #pos > 0 then error({ usage = "unexpected argument '" .. pos[1] .. "'" }) end
        local SUBS = { dlq = { "list", "show", "requeue", "purge" },
                       task = { "show", "list", "cancel", "pause", "resume", "retry" },
                       queue = { "peek", "purge" },
                       schedules = { "list", "pause", "resume", "remove" } }
        -- A subcommand is checked before anything is opened: a typo is a usage error.
        if SUBS[cmd] then
            local okw = false
            for _, w in ipairs(SUBS[cmd]) do okw = okw or w == pos[1] end
            if not okw then
                error({ usage = "unknown subcommand '" .. pos[1] .. "'" .. config.did_you_mean(pos[1], SUBS[cmd]) })
            end
        end
        -- Admin commands read Redis only: no task storage is opened (memory, unused).
        local NO_STORE = { type = "memory" }
        if admin[cmd] then
            local section = { url = opts.url, queue_name = opts.queue and opts.queue:match("^[^,]+") or nil }
            local okc, s = pcall(scheduler.new, section, nil, NO_STORE)
            if not okc then error({ fail = tostring(s) }) end
            if s.backend == "memory" then
                error({ fail = "no Redis to inspect: set REDIS_URL or pass --url" })
            end
            admin[cmd](s, opts, pos)
            s:close()
            return 0
        end
        if cmd == "task" then
            local sub = task[pos[1]]
            if not sub then error({ usage = "unknown subcommand '" .. pos[1] .. "'" }) end
            if pos[1] ~= "list" and not pos[2] then error({ usage = pos[1] .. " needs a task ID" }) end
            if pos[1] ~= "list" and pos[3] then error({ usage = "unexpected argument '" .. pos[3] .. "'" }) end
            if opts.message and pos[1] ~= "resume" then error({ usage = "--message is for resume only" }) end
            if (opts.url or opts.queue) and (pos[1] == "show" or pos[1] == "list") and not redis_store(opts) then
                error({ usage = (opts.url and "--url" or "--queue") .. " is for cancel, pause, resume and retry" })
            end
            local st = open_storage(opts)
            sub(st, opts, pos)
            st:close()
            return 0
        end
        local sub = dlq[pos[1]]
        if not sub then error({ usage = "unknown subcommand '" .. pos[1] .. "'" }) end
        local section = { url = opts.url, queue_name = opts.queue }
        local okc, s = pcall(scheduler.new, section, nil, NO_STORE)
        if not okc then error({ fail = tostring(s) }) end
        if s.backend == "memory" then
            error({ fail = "no Redis to inspect: set REDIS_URL or pass --url" })
        end
        sub(s, opts, pos)
        s:close()
        return 0
    end)
    if ok then return res end
    if type(res) == "table" and res.usage then
        write_lines({ "binduq-lua " .. cmd .. ": " .. tostring(res.usage) }, io.stderr)
        io.stderr:write(USAGE[cmd])
        return 2
    end
    write_lines({ "binduq-lua " .. cmd .. ": " .. (type(res) == "table" and tostring(res.fail) or tostring(res)) },
                io.stderr)
    return 1
end

-- The admin commands' data functions, for binduq.dashboard (which shows the same figures
-- and refuses the same operations).
M.data = { queue_stats = queue_stats, worker_details = worker_details, check_state = check_state, retry = retry,
           schedule_rows = schedule_rows }

return M

-- The README and docs/ against the code: every option, environment variable, log event,
-- metric and admin command the code has is documented, and every one the docs name exists.
--
-- Each set is read from the source, never from a list kept here: the option tables of
-- lua/binduq/config.lua, struct bq_client_options in src/binduq.h and the URL options of
-- src/net/url.c; the getenv/bq_env/core.env calls of src/ and lua/; the events passed to
-- bq_log and core.log; the metric names of src/engine/metrics.c; the commands, subcommands and
-- flags of lua/binduq/cli.lua and the options of src/host/main.c. "Documented" means named in
-- code (a `span` or a fenced block) in README.md or docs/*.md; the reference tables (options,
-- metrics, log events, environment variables) are held to their sets both ways. Needs no
-- build and no server.

local function read(path)
    local f = assert(io.open(path, "r"))
    local s = f:read("a")
    f:close()
    return s
end

local function files(cmd)
    local p = assert(io.popen(cmd))
    local out = {}
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    table.sort(out)
    return out
end

local function set_of(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
end

local function keys(t)
    local out = {}
    for k in pairs(t) do out[#out + 1] = k end
    table.sort(out)
    return out
end

-- Names of `want` (a set) missing from `have` (a set), sorted.
local function missing(want, have)
    local out = {}
    for k in pairs(want) do
        if not have[k] then out[#out + 1] = k end
    end
    table.sort(out)
    return out
end

local function none_missing(list, what)
    assert(#list == 0, what .. ": " .. table.concat(list, ", "))
end

local function escape(s)
    return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

---------------------------------------------------------------------------------------------
-- The documentation: its code (spans and fenced blocks) and its reference tables.

local DOCS = { "README.md" }
for _, f in ipairs(files("ls docs/*.md")) do DOCS[#DOCS + 1] = f end

-- Fenced blocks whole, and the `spans` of the rest (a span may wrap onto the next line).
local function code_of(md)
    local out, prose, fenced = {}, {}, false
    for line in (md .. "\n"):gmatch("(.-)\n") do
        if line:match("^%s*```") then
            fenced = not fenced
        elseif fenced then
            out[#out + 1] = line
        else
            prose[#prose + 1] = line
        end
    end
    for span in table.concat(prose, "\n"):gmatch("`([^`]+)`") do out[#out + 1] = span end
    return table.concat(out, "\n")
end

local TEXT, CODE = {}, {}
for _, f in ipairs(DOCS) do
    TEXT[f] = read(f)
    CODE[#CODE + 1] = code_of(TEXT[f])
end
CODE = table.concat(CODE, "\n")

-- Whether `name` stands in the docs' code as a whole word (letters, digits and '_' around it
-- are not part of it; for flags '-' is not either).
local function in_code(name, word_chars)
    word_chars = word_chars or "%w_"
    local pat = "%f[" .. word_chars .. "]" .. escape(name) .. "%f[^" .. word_chars .. "]"
    if name:match("^%-") then -- a flag: no frontier before '-', so look for what precedes it
        pat = "[^" .. word_chars .. "-]" .. escape(name) .. "%f[^" .. word_chars .. "-]"
        return ("\n" .. CODE):find(pat) ~= nil
    end
    return CODE:find(pat) ~= nil
end

-- The names in backticks in the first column of the tables under the heading `heading` of
-- the page `page`, up to the next heading of the same or a higher level.
local function table_names(page, heading)
    local level = #heading:match("^#+")
    local out, inside, fenced, found = {}, false, false, false
    for line in (TEXT[page] .. "\n"):gmatch("(.-)\n") do
        if line:match("^```") then fenced = not fenced end
        local h = not fenced and line:match("^(#+) ")
        if h then
            if inside and #h <= level then break end
            if line == heading then inside, found = true, true end
        elseif inside and line:match("^|") and not line:match("^|%s*%-%-%-") then
            local first = line:match("^|([^|]*)|")
            for name in first:gmatch("`([^`]+)`") do out[#out + 1] = name end
        end
    end
    assert(found, page .. " has no heading '" .. heading .. "'")
    return out
end

-- Checks a reference table against the set from the source, both ways.
local function same_as_table(page, heading, source, what)
    local documented = set_of(table_names(page, heading))
    local undocumented, unknown = missing(source, documented), missing(documented, source)
    assert(#undocumented + #unknown == 0,
        ("%s (%s): in the code but not documented: %s; documented but not in the code: %s")
        :format(what, page .. ", " .. heading, table.concat(undocumented, ", "), table.concat(unknown, ", ")))
end

---------------------------------------------------------------------------------------------
-- The source.

local C_FILES = files("find src -type f \\( -name '*.c' -o -name '*.cpp' -o -name '*.h' \\)")
local LUA_FILES = files("find lua -type f -name '*.lua'")

local SRC = {}
for _, f in ipairs(C_FILES) do SRC[f] = read(f) end
for _, f in ipairs(LUA_FILES) do SRC[f] = read(f) end

-- All captures of `pattern` over the files `list`, as a set.
local function grep(list, pattern)
    local out = {}
    for _, f in ipairs(list) do
        for name in SRC[f]:gmatch(pattern) do out[name] = true end
    end
    return out
end

local function union(...)
    local out = {}
    for _, s in ipairs({ ... }) do
        for k in pairs(s) do out[k] = true end
    end
    return out
end

local function count(s)
    return #keys(s)
end

---------------------------------------------------------------------------------------------

describe("docs: options", function()
    -- config.lua needs nothing else, so it loads without the C module.
    local config = dofile("lua/binduq/config.lua")
    local page = "docs/configuration.md"

    it("every key of the worker's option table, and only those, is in the table", function()
        same_as_table(page, "### Worker options", config.WORKER_KEYS, "worker options")
    end)

    it("every key of the scheduler section, and only those, is in the table", function()
        same_as_table(page, "### Scheduler options", config.SCHEDULER_KEYS, "scheduler options")
    end)

    it("every TLS key, and only those, is in the table", function()
        same_as_table(page, "### TLS options", config.TLS_KEYS, "tls options")
    end)

    it("every key of the storage section, and only those, is in the table", function()
        same_as_table(page, "### Storage options", config.STORAGE_KEYS, "storage options")
    end)

    it("every Bindu agent key binduq accepts, and only those, is in the table", function()
        same_as_table(page, "### Bindu agent keys", config.BINDU_KEYS, "Bindu agent keys")
    end)

    it("every field of struct bq_client_options, and only those, is in the C API's table", function()
        local body = assert(read("src/binduq.h"):match("struct bq_client_options {(.-)\n};"))
        body = body:gsub("/%*.-%*/", "")
        local fields = {}
        for decl in body:gmatch("[^;]+;") do
            -- a plain field ends with its name; a function pointer is "(*name)(...)"
            fields[assert(decl:match("%(%*%s*([%w_]+)%)%s*%b()%s*;$") or decl:match("([%w_]+)%s*;$"), decl)] = true
        end
        assert.is_true(count(fields) >= 15, "struct bq_client_options read as " .. count(fields) .. " fields")
        same_as_table("docs/c-api.md", "## Client options", fields, "bq_client_options fields")
    end)

    it("every URL query option url.c takes, and only those, is in the table", function()
        local src = read("src/net/url.c")
        local opts = {}
        local ignored = assert(src:match("ignored%[%] = {(.-)};"), "url.c: no ignored[] table")
        for name in ignored:gmatch('"([%w_]+)"') do opts[name] = true end
        for name in src:gmatch('strcmp%(k, "([%w_]+)"%)') do opts[name] = true end
        for name in src:gmatch('memcmp%(p, "([%w_]+)", %d+%)') do opts[name] = true end
        assert.is_true(count(opts) >= 20, "url.c read as " .. count(opts) .. " options")
        same_as_table(page, "### URL query options", opts, "URL query options")
    end)

    it("every field of a task operation is named", function()
        -- The reverse cannot be checked by pattern: a field name is any lower-case word.
        local known = assert(read("lua/binduq/task.lua"):match("local KNOWN = {(.-)}"))
        local fields = {}
        for name in known:gmatch("([%w_]+) = ") do fields[name] = true end
        assert.is_true(count(fields) >= 10)
        local undocumented = {}
        for _, name in ipairs(keys(fields)) do
            if not in_code(name) then undocumented[#undocumented + 1] = name end
        end
        none_missing(undocumented, "task operation fields not documented")
    end)
end)

describe("docs: environment variables", function()
    local readers = {
        'getenv%s*%(%s*"([%u%d_]+)"',
        'bq_env%s*%(%s*"([%u%d_]+)"',
        'bq_env_any_case%s*%(%s*"([%u%d_]+)"',
        'env_size%s*%(%s*"([%u%d_]+)"',
        'core%.env%s*%(%s*"([%u%d_]+)"',
    }
    local all = {}
    for _, f in ipairs(C_FILES) do all[#all + 1] = f end
    for _, f in ipairs(LUA_FILES) do all[#all + 1] = f end
    local env = {}
    for _, p in ipairs(readers) do env = union(env, grep(all, p)) end
    -- Names read through a table of names (the TLS variables of config.c): every quoted
    -- BINDUQ_ name in the source is one binduq reads.
    env = union(env, grep(all, '"(BINDUQ_[%u%d_]+)"'))
    -- The examples read variables of their own (BINDUQ_CONCURRENCY): the docs may name them.
    local examples = {}
    for _, f in ipairs(files("find examples -type f -name '*.lua'")) do
        for name in read(f):gmatch('getenv%s*%(%s*"([%u%d_]+)"') do examples[name] = true end
    end

    it("reads a plausible set", function()
        assert.is_true(count(env) >= 30, "read " .. count(env) .. " variables: " .. table.concat(keys(env), ", "))
        for _, name in ipairs({ "REDIS_URL", "DATABASE_URL", "BINDUQ_LOG_LEVEL", "BINDUQ_TLS_CA_FILE" }) do
            assert.is_true(env[name], name)
        end
    end)

    it("every variable the code reads is documented", function()
        local undocumented = {}
        for _, name in ipairs(keys(env)) do
            if not in_code(name) then undocumented[#undocumented + 1] = name end
        end
        none_missing(undocumented, "environment variables read by the code but not documented")
    end)

    it("every BINDUQ_ variable the docs name is read by the code", function()
        local named = {}
        -- BINDUQ_TLS_* names a family, not a variable.
        for name, after in CODE:gmatch("%f[%w_](BINDUQ_[%u%d_]+)(.?)") do
            if after ~= "*" and after ~= "<" then named[name] = true end
        end
        none_missing(missing(named, union(env, examples)), "BINDUQ_ variables documented but not read anywhere")
    end)

    it("every variable in the configuration tables is read by the code", function()
        local page = "docs/configuration.md"
        local named = set_of(table_names(page, "## Environment variables"))
        named = union(named, set_of(table_names(page, "## Bindu's names")))
        none_missing(missing(named, env), "variables in docs/configuration.md's tables but not read")
    end)
end)

describe("docs: log events", function()
    local events = union(
        grep(C_FILES, 'bq_log%s*%(%s*BQ_LOG_%u+%s*,%s*"([%w_]+)"'),
        grep(C_FILES, 'bq_log_kv%s*%(%s*BQ_LOG_%u+%s*,%s*"([%w_]+)"'),
        -- the formatter's own event, written into a JSON line that grew too long (only there:
        -- task events, docs/events.md, are JSON with an "event" field too, not log lines)
        grep({ "src/core/log.c" }, '\\"event\\":\\"([%w_]+)\\"'),
        grep(LUA_FILES, 'core%.log%s*%(%s*"%l+"%s*,%s*"([%w_]+)"'))
    -- One event name is built at run time: lifecycle/control.lua's notify() logs
    -- task.type .. "_hook_failed" when the script's cancel or pause notification handler
    -- raises; notify is called for those two operations only.
    local dynamic = 'core.log("warn", task.type .. "_hook_failed"'
    assert(read("lua/binduq/lifecycle/control.lua"):find(dynamic, 1, true),
           "lifecycle/control.lua no longer logs " .. dynamic)
    events.cancel_hook_failed, events.pause_hook_failed = true, true

    it("reads a plausible set", function()
        assert.is_true(count(events) >= 50, "read " .. count(events) .. " events")
        for _, name in ipairs({ "completed", "worker_started", "redis_error", "log_truncated", "consumed" }) do
            assert.is_true(events[name], name)
        end
    end)

    it("every event the code logs, and only those, is in the events table", function()
        same_as_table("docs/operations.md", "### Log events", events, "log events")
    end)
end)

describe("docs: metrics", function()
    local src = read("src/engine/metrics.c")
    local metrics = {}
    for name in src:gmatch('"(binduq_[%l_]+)"') do
        if not name:match("_$") then metrics[name] = true end
    end
    -- The task counters come from a macro: C(fetched, ...) is binduq_tasks_fetched_total.
    local prefix, suffix = src:match('#define C%(f, h%) {"(binduq_[%l_]+)" #f "([%l_]+)"')
    assert(prefix, "metrics.c: the C(f, h) macro changed")
    local block = assert(src:match("#define C%(f, h%)(.-)#undef C"))
    for f in block:gmatch("\n%s*C%(([%l_]+),") do metrics[prefix .. f .. suffix] = true end
    local histograms = {}
    for name in src:gmatch('family%(&b, "(binduq_[%l_]+)", "histogram"') do histograms[name] = true end

    it("reads a plausible set", function()
        assert.is_true(count(metrics) >= 25, "read " .. count(metrics) .. " metrics")
        assert.is_true(metrics.binduq_tasks_fetched_total and metrics.binduq_queue_length)
        assert.is_true(histograms.binduq_pickup_latency_seconds)
    end)

    it("every metric the code serves, and only those, is in the metrics table", function()
        same_as_table("docs/operations.md", "### Metrics", metrics, "metrics")
    end)

    it("every binduq_ name in the docs is a metric or one of the storage's tables", function()
        -- binduq_state, binduq_tasks, binduq_schema_version: PostgreSQL objects pg.c creates.
        local pg = read("src/storage/pg.c")
        local unknown = {}
        for name in CODE:gmatch("%f[%w_](binduq_[%l_]*%l)") do
            local base = name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
            local ok = metrics[name] or (histograms[base] and base ~= name)
                or pg:find("%f[%w_]" .. name .. "%f[^%w_]")
            if not ok then unknown[name] = true end
        end
        none_missing(keys(unknown), "binduq_ names documented that are neither metrics nor storage objects")
    end)
end)

describe("docs: commands", function()
    local cli = read("lua/binduq/cli.lua")
    local commands = {}
    for name in pairs(require("binduq.cli").COMMANDS) do commands[name] = true end
    local subs = { dlq = {}, task = {}, queue = {}, schedules = {} }
    for name in cli:gmatch("\nfunction dlq%.(%l+)%(") do subs.dlq[name] = true end
    for name in cli:gmatch("\nfunction task%.(%l+)%(") do subs.task[name] = true end
    local queue_fn = assert(cli:match("\nfunction admin%.queue%((.-)\nend\n"))
    for name in queue_fn:gmatch('pos%[1%] == "(%l+)"') do subs.queue[name] = true end
    local sched_subs = assert(cli:match('schedules = ({ "list"[^}]*})'), "cli.lua: no schedules subcommands")
    for name in sched_subs:gmatch('"(%l+)"') do subs.schedules[name] = true end
    local flags = {}
    local known = assert(cli:match("\nlocal KNOWN = {(.-)\n}\n"), "cli.lua: no KNOWN table")
    for cmd, body in known:gmatch("(%l+) = {(.-)}") do
        flags[cmd] = {}
        for f in body:gmatch("([%l_]+) = true") do flags[cmd]["--" .. f:gsub("_", "-")] = true end
    end
    local host = {}
    for opt in read("src/host/main.c"):gmatch('strcmp%(a, "(%-[^"]*)"%)') do host[opt] = true end

    it("reads a plausible set", function()
        assert.are.same({ "dashboard", "dlq", "queue", "schedules", "serve", "stats", "task", "top", "workers" },
                        keys(commands))
        assert.is_true(count(subs.dlq) == 4 and count(subs.task) == 6 and count(subs.queue) == 2
                       and count(subs.schedules) == 4)
        assert.are.same(keys(commands), keys(flags))
        assert.is_true(host["-e"] and host["-"] and host["--"])
    end)

    it("every command and subcommand is documented", function()
        local undocumented = {}
        for cmd in pairs(commands) do
            if not CODE:find("binduq%-lua%s+" .. cmd .. "%f[^%w_]") then undocumented[#undocumented + 1] = cmd end
            for sub in pairs(subs[cmd] or {}) do
                if not CODE:find("binduq%-lua%s+" .. cmd .. "%s+" .. sub .. "%f[^%w_]") then
                    undocumented[#undocumented + 1] = cmd .. " " .. sub
                end
            end
        end
        table.sort(undocumented)
        none_missing(undocumented, "binduq-lua commands not documented")
    end)

    it("every flag of every command is documented", function()
        local undocumented = {}
        for cmd, set in pairs(flags) do
            for flag in pairs(set) do
                if not in_code(flag) then undocumented[#undocumented + 1] = cmd .. " " .. flag end
            end
        end
        table.sort(undocumented)
        none_missing(undocumented, "binduq-lua flags not documented")
    end)

    it("every option of the host is documented", function()
        local spans = {}
        for _, f in ipairs(DOCS) do
            for span in TEXT[f]:gmatch("`([^`\n]+)`") do
                spans[span] = true
                if span:match("^%S+") then spans[span:match("^%S+")] = true end
            end
        end
        none_missing(missing(host, spans), "binduq-lua options not documented")
    end)

    it("every command the docs name exists", function()
        local unknown = {}
        for word, rest in CODE:gmatch("binduq%-lua[ \t]+([%w_%./%-]+)([^\n]*)") do
            if word:match("^%l+$") then
                if not commands[word] then
                    unknown["binduq-lua " .. word] = true
                elseif subs[word] then
                    local sub = rest:match("^[ \t]+([%w_]+)")
                    if sub and sub:match("^%l+$") and not subs[word][sub] then
                        unknown["binduq-lua " .. word .. " " .. sub] = true
                    end
                end
            end
        end
        none_missing(keys(unknown), "binduq-lua commands documented but not in lua/binduq/cli.lua")
    end)
end)

describe("docs: links", function()
    -- GitHub's anchor of a heading: lower case, punctuation dropped, spaces as '-'.
    local function anchor(heading)
        return (heading:lower():gsub("[^%w%- _]", ""):gsub(" ", "-"))
    end
    local anchors = {}
    for _, f in ipairs(DOCS) do
        anchors[f] = {}
        local fenced = false
        for line in (TEXT[f] .. "\n"):gmatch("(.-)\n") do
            if line:match("^```") then fenced = not fenced end
            local h = not fenced and line:match("^#+ (.+)$")
            if h then anchors[f][anchor(h)] = true end
        end
    end

    it("every link to a page of the repository and its heading resolves", function()
        local broken = {}
        for _, f in ipairs(DOCS) do
            local dir = f:match("^(.*)/") or "."
            for target in TEXT[f]:gmatch("%]%(([^)%s]+)%)") do
                if not target:match("^%a+://") then
                    local path, frag = target:match("^([^#]*)#?(.*)$")
                    local to = f
                    if path ~= "" then
                        to = (dir .. "/" .. path):gsub("^%./", "")
                        while to:find("[^/]+/%.%./") do to = to:gsub("[^/]+/%.%./", "", 1) end
                    end
                    local fh = io.open(to, "r")
                    if not fh then
                        broken[#broken + 1] = f .. ": " .. target .. " (no such file)"
                    else
                        fh:close()
                        if frag ~= "" and not (anchors[to] and anchors[to][frag]) then
                            broken[#broken + 1] = f .. ": " .. target .. " (no such heading)"
                        end
                    end
                end
            end
        end
        none_missing(broken, "broken links")
    end)
end)

describe("docs: server-side scripts", function()
    it("every script of lua/binduq/redis/, and only those, is in the protocol's table", function()
        local scripts = {}
        for _, f in ipairs(files("ls lua/binduq/redis/*.lua")) do scripts[f:match("([^/]+)%.lua$")] = true end
        assert.is_true(count(scripts) >= 10)
        same_as_table("docs/protocol.md", "### Server-side scripts", scripts, "server-side scripts")
    end)
end)

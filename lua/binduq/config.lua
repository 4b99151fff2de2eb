--- binduq.config: option tables, checked.
--
-- Options mirror a Bindu agent config: a `scheduler` section and a `storage` section, plus the
-- worker's own keys. Unknown keys raise, naming the key, so a typo is never silently ignored.
-- Explicit options beat environment variables (REDIS_URL, REDIS_QUEUE_NAME,
-- REDIS_MAX_CONNECTIONS), which beat the defaults; that resolution happens in C
-- (src/engine/config.c), the one place the defaults live.

local M = {}

M.SCHEDULER_KEYS = {
    type = "string", url = "string", queue_name = "string", max_connections = "number",
    connect_timeout = "number", command_timeout = "number", pool_timeout = "number",
    -- policy, producer side
    route = "function", levels = "table", dedup = "boolean", dedup_ttl = "number",
    dedup_key = "function", tls = "table", wait_replicas = "number", wait_timeout = "number",
    retry_on_timeout = "boolean", retries = "number",
    events = "boolean|number", -- task events (docs/events.md): off, on, or the entries kept
    order = "string|table", -- "lpush" | "rpush", or { [queue] = order } (README, "Queue order")
    format = "string",      -- "native" | "bindu": what a producer writes (README, "Wire formats")
}

M.TLS_KEYS = { ca_file = "string", ca_dir = "string", cert_file = "string", key_file = "string",
               server_name = "string", verify = "boolean" }

M.STORAGE_KEYS = { type = "string", url = "string", schema = "string", layout = "string", max_connections = "number",
                   connect_timeout = "number", max_tasks = "number", ttl = "number" }

M.WORKER_KEYS = {
    scheduler = "table", storage = "table", concurrency = "number", tasks_per_state = "number",
    handlers = "table|string",
    handler = "function", on_result = "function", block_timeout = "number",
    max_message_size = "number", script = "string", args = "table", name = "string",
    delivery = "string", lease = "number", shutdown_timeout = "number", timeout = "number",
    max_attempts = "number", retry_base = "number", retry_cap = "number", on_failure = "function",
    queues = "table", weights = "table", rate_limit = "table", rate_key = "function",
    prefetch = "number", batch = "number", recovery_after = "number", metrics_port = "number", metrics_host = "string",
    schedules = "table", dashboard = "boolean|table",
}

-- Keys of a Bindu agent config that binduq accepts and ignores, so a whole agent config
-- can be passed as is.
M.BINDU_KEYS = { author = true, name = true, description = true, deployment = true, skills = true }

-- The edit distance of a and b, a swap of two neighbours counting as one edit ("dql" is one
-- edit from "dlq").
local function distance(a, b)
    local d = {}
    for i = 0, #a do d[i] = { [0] = i } end
    for j = 0, #b do d[0][j] = j end
    for i = 1, #a do
        for j = 1, #b do
            local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
            d[i][j] = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
                d[i][j] = math.min(d[i][j], d[i - 2][j - 2] + 1)
            end
        end
    end
    return d[#a][#b]
end

--- The candidate nearest to `word` (at most two edits, and fewer than its length), or nil.
-- `candidates` is a list of names, or a table whose string keys are the names.
function M.nearest(word, candidates)
    if type(word) ~= "string" then return nil end
    local names = {}
    if candidates[1] ~= nil then
        names = candidates
    else
        for k in pairs(candidates) do
            if type(k) == "string" then names[#names + 1] = k end
        end
        table.sort(names) -- the same answer on every run
    end
    local best, bd
    for _, c in ipairs(names) do
        local d = distance(word:lower(), c)
        if d <= 2 and d < #word and (not bd or d < bd) then best, bd = c, d end
    end
    if best then return best end
    -- A shortened name ("queue" for "queue_name"): the one candidate it begins.
    for _, c in ipairs(names) do
        if #word >= 3 and c:sub(1, #word + 1) == word:lower() .. "_" then
            if best then return nil end
            best = c
        end
    end
    return best
end

--- " (did you mean 'x'?)" for the nearest candidate, or "".
function M.did_you_mean(word, candidates)
    local near = M.nearest(word, candidates)
    return near and (" (did you mean '" .. near .. "'?)") or ""
end

--- Checks t against the key -> type map; raises at `level` naming the first bad key.
function M.check(t, keys, what, level)
    level = (level or 1) + 1
    if t == nil then return {} end
    if type(t) ~= "table" then error(what .. " must be a table (got " .. type(t) .. ")", level) end
    for k, v in pairs(t) do
        local want = keys[k]
        if want == nil and not (what == "options" and M.BINDU_KEYS[k]) then
            error("unknown " .. what .. " key '" .. tostring(k) .. "'" .. M.did_you_mean(k, keys), level)
        end
        if want ~= nil and type(v) ~= want and not ("|" .. want .. "|"):find("|" .. type(v) .. "|", 1, true) then
            error(what .. " key '" .. k .. "' must be a " .. want:gsub("|", " or ") .. " (got " .. type(v) .. ")", level)
        end
    end
    return t
end

--- The scheduler section of opts: opts.scheduler if present, else opts itself (so
-- bq.scheduler{url=...} works as well as bq.scheduler{scheduler={url=...}}).
function M.scheduler_section(opts, level)
    level = (level or 1) + 1
    if opts == nil then return {} end
    if type(opts) ~= "table" then error("options must be a table (got " .. type(opts) .. ")", level) end
    if opts.scheduler ~= nil or opts.storage ~= nil then
        for k in pairs(opts) do
            if k ~= "scheduler" and k ~= "storage" and not M.BINDU_KEYS[k] and not M.WORKER_KEYS[k] then
                error("unknown options key '" .. tostring(k) .. "'" .. M.did_you_mean(k, M.WORKER_KEYS), level)
            end
        end
        M.check_storage(opts.storage, level)
        local s = M.check(opts.scheduler, M.SCHEDULER_KEYS, "scheduler", level)
        M.check(s.tls, M.TLS_KEYS, "tls", level)
        return s
    end
    local s = M.check(opts, M.SCHEDULER_KEYS, "scheduler", level)
    M.check(s.tls, M.TLS_KEYS, "tls", level)
    return s
end

--- Checks a storage section; the storage module resolves it (binduq.storage).
function M.check_storage(s, level)
    level = (level or 1) + 1
    M.check(s, M.STORAGE_KEYS, "storage", level)
    if s ~= nil and s.type ~= nil and s.type ~= "memory" and s.type ~= "postgres" and s.type ~= "postgresql"
        and s.type ~= "redis" then
        error("storage type '" .. tostring(s.type) .. "' is not supported (expected \"memory\", \"postgres\" or \"redis\")",
              level)
    end
end

return M

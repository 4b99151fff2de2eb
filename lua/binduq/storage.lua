--- binduq.storage: where task state lives (in memory, PostgreSQL through libpq, or Redis).
--
--   storage = { type = "postgres", url = "postgresql://user:pass@host:5432/db",
--               schema = "binduq", max_connections = 4, connect_timeout = 5 }
--   storage = { type = "memory", max_tasks = 100000 }  -- records this process keeps
--   storage = { type = "redis", ttl = 604800 }  -- the scheduler's Redis (or url = "redis://...");
--                                               -- finished tasks kept ttl seconds (0: for ever)
--
-- With no storage section, DATABASE_URL selects PostgreSQL; without it the state is kept in
-- the memory of this process. The mechanism (pool, schema migration, compare-and-set
-- transitions) is C (src/storage/); this module resolves the configuration and turns the
-- stored JSON columns into Lua values.

local core = require("binduq.core")
local config = require("binduq.config")
local json = require("binduq.json")

local M = {}

--- Resolves a storage section against the environment (STORAGE_TYPE, DATABASE_URL or
-- POSTGRES_URL, BINDUQ_STORAGE_LAYOUT, POSTGRES_DID) and the defaults, by the rule the C
-- producer follows too (core.storage_resolve: src/engine/config.c). Raises on bad options.
function M.section(s, level)
    level = (level or 1) + 1
    config.check_storage(s, level)
    s = s or {}
    local ok, r = pcall(core.storage_resolve, { type = s.type, url = s.url, schema = s.schema, layout = s.layout })
    if not ok then error(r, level) end
    if s.max_connections ~= nil and (math.type(s.max_connections) ~= "integer" or s.max_connections < 1) then
        error("storage.max_connections must be a whole number >= 1", level)
    end
    if s.max_tasks ~= nil and (math.type(s.max_tasks) ~= "integer" or s.max_tasks < 1 or s.max_tasks > 10000000) then
        error("storage.max_tasks must be a whole number from 1 to 10000000", level)
    end
    if s.ttl ~= nil and (s.ttl < 0 or s.ttl > 1e9) then
        error("storage.ttl must be from 0 (keep for ever) to 1e9 seconds", level)
    end
    return { type = r.type, url = r.url, url_name = r.url_name, schema = r.schema, layout = r.layout,
             max_connections = s.max_connections,
             connect_timeout = s.connect_timeout, max_tasks = r.type == "memory" and s.max_tasks or nil,
             ttl = r.type == "redis" and s.ttl or nil }
end

--- The schema Bindu keeps an agent's tables in, from its DID: lower case, every character
-- but ASCII letters, digits and '_' made '_', "schema_" before a leading digit. Bindu
-- shortens a name over 63 bytes with a hash; binduq asks for the name then (storage.schema).
-- The rule is C's (bq_did_schema), which the resolution of a section uses too.
function M.did_schema(did, level)
    local ok, name = pcall(core.did_schema, did)
    if not ok then error(name, (level or 1) + 1) end
    return name
end

--- Opens a resolved section: a binduq.Storage handle, or nil, message, code. A Redis storage
-- uses the Redis of `client` (the scheduler's binduq.Client, whose queue names the Cluster
-- slot of its keys) unless the section has a url; without a client, REDIS_URL's.
function M.open(section, client)
    if section.type == "redis" and client ~= nil then
        local copy = { client = client }
        for k, v in pairs(section) do copy[k] = v end
        section = copy
    end
    return core.storage(section)
end

local function decode(text)
    if text == nil then return nil end
    local v = json.decode(text)
    if v == json.null then return nil end
    return v
end

--- A stored record as the Lua API shows it (get_task, list_tasks).
function M.view(rec)
    if not rec then return nil end
    return {
        task_id = rec.id, context_id = rec.context_id, state = rec.state, queue = rec.queue,
        history = decode(rec.history) or {}, artifacts = decode(rec.artifacts) or {},
        metadata = decode(rec.metadata) or {}, checkpoint = decode(rec.checkpoint),
        error = decode(rec.error), requested = rec.requested, worker = rec.worker,
        attempts = rec.attempts, created_at = rec.created_at, updated_at = rec.updated_at,
        state_at = rec.state_at,
    }
end

M.TERMINAL = { completed = true, failed = true, canceled = true, rejected = true }
M.OPEN = { submitted = true, working = true, ["input-required"] = true, ["auth-required"] = true,
           paused = true }

return M

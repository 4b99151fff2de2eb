--- binduq.storage: where task state lives (in memory, or PostgreSQL through libpq).
--
--   storage = { type = "postgres", url = "postgresql://user:pass@host:5432/db",
--               schema = "binduq", max_connections = 4, connect_timeout = 5 }
--   storage = { type = "memory", max_tasks = 100000 }  -- records this process keeps
--
-- With no storage section, DATABASE_URL selects PostgreSQL; without it the state is kept in
-- the memory of this process. The mechanism (pool, schema migration, compare-and-set
-- transitions) is C (src/storage/); this module resolves the configuration and turns the
-- stored JSON columns into Lua values.

local core = require("binduq.core")
local config = require("binduq.config")
local json = require("binduq.json")

local M = {}

-- The database URL of the environment: DATABASE_URL, else Bindu's other name for it,
-- POSTGRES_URL (both in any case, as Bindu's settings read them).
local function env_url()
    if core.env("DATABASE_URL") then return core.env("DATABASE_URL"), "DATABASE_URL" end
    if core.env("POSTGRES_URL") then return core.env("POSTGRES_URL"), "POSTGRES_URL" end
    return nil
end

--- Resolves a storage section against DATABASE_URL (and Bindu's STORAGE_TYPE) and the
-- defaults. Raises on bad options.
function M.section(s, level)
    level = (level or 1) + 1
    config.check_storage(s, level)
    s = s or {}
    local url = s.url
    local url_name = url and "storage.url" -- where the URL came from, for its errors
    local ty = s.type
    if ty == nil and s.url == nil and core.env("STORAGE_TYPE") then
        ty = core.env("STORAGE_TYPE"):lower()
        if ty ~= "memory" and ty ~= "postgres" then
            error("STORAGE_TYPE: expected memory or postgres, got '" .. core.env("STORAGE_TYPE") .. "'", level)
        end
    end
    if ty == nil then
        if not url then url, url_name = env_url() end
        ty = url and "postgres" or "memory"
    end
    if ty == "postgresql" then ty = "postgres" end
    if ty == "postgres" then
        if not url then url, url_name = env_url() end
        if url == nil or url == "" then
            error("storage type \"postgres\" needs a url (storage.url or DATABASE_URL)", level)
        end
    else
        url = nil
    end
    if s.max_connections ~= nil and (math.type(s.max_connections) ~= "integer" or s.max_connections < 1) then
        error("storage.max_connections must be a whole number >= 1", level)
    end
    if s.max_tasks ~= nil and (math.type(s.max_tasks) ~= "integer" or s.max_tasks < 1 or s.max_tasks > 10000000) then
        error("storage.max_tasks must be a whole number from 1 to 10000000", level)
    end
    -- The layout: binduq's own table, or Bindu's tables in the agent's schema, named after its
    -- DID as Bindu names it (POSTGRES_DID or DID; see the README, "Replacing Bindu's Python
    -- workers").
    local layout = s.layout or core.env("BINDUQ_STORAGE_LAYOUT")
    local schema = s.schema
    if ty == "postgres" and layout == "bindu" and schema == nil then
        local did = core.env("POSTGRES_DID") or core.env("DID")
        if did then schema = M.did_schema(did, level) end
    end
    return { type = ty, url = url, url_name = url and url_name or nil, schema = schema,
             layout = ty == "postgres" and layout or nil,
             max_connections = s.max_connections,
             connect_timeout = s.connect_timeout, max_tasks = ty == "memory" and s.max_tasks or nil }
end

--- Opens a resolved section: a binduq.Storage handle, or nil, message, code.
--- The schema Bindu keeps an agent's tables in, from its DID: lower case, every character
-- but ASCII letters, digits and '_' made '_', "schema_" before a leading digit. Bindu
-- shortens a name over 63 bytes with a hash; binduq asks for the name then (storage.schema).
function M.did_schema(did, level)
    local name = did:lower():gsub("[^a-z0-9_]", "_")
    if name:match("^%d") then name = "schema_" .. name end
    if #name > 63 then
        error("the schema name of DID '" .. did:sub(1, 80) .. "' is longer than 63 bytes, which Bindu "
              .. "shortens with a hash: give storage.schema as it appears in the database", (level or 1) + 1)
    end
    return name
end

function M.open(section)
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

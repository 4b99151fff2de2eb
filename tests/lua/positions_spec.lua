-- Errors caused by the caller's own call (a misspelt option, field or handler name, a bad
-- log level) are reported at the caller's line, not inside binduq's modules, and name the
-- nearest valid name when there is one.

local bq = require("binduq")

-- Calls f, which makes one bad call on the line it is defined on; returns the error and
-- that line.
local function fails(f)
    local ok, err = pcall(f)
    assert.is_false(ok, "no error")
    return tostring(err), debug.getinfo(f, "S").linedefined
end

local ME = debug.getinfo(1, "S").short_src
local run = function() end

describe("an error in the caller's call", function()
    setup(function() bq.log_configure{ level = "off" } end)
    teardown(function() bq.log_configure{ level = "info" } end)
    before_each(function() require("binduq.core").storage_reset() end)

    local s
    before_each(function() s = bq.scheduler{ type = "memory", queue_name = "spec:positions" } end)
    after_each(function() s:close() end)

    local cases = {
        { function() bq.worker{ handlers = { rnu = run } } end, "unknown operation 'rnu'", "'run'" },
        { function() bq.worker{ handlers = { run = run }, concurency = 2 } end, "unknown options key 'concurency'",
          "'concurrency'" },
        { function() bq.worker{ handlers = { run = run }, lease = -1 } end, "lease is negative" },
        { function() bq.worker{ handlers = { run = run }, shutdown_timeout = 1 / 0 } end, "shutdown_timeout" },
        { function() bq.worker{} end, "a worker needs handlers" },
        { function() bq.worker{ handlers = { run = "f" } } end, "handlers.run must be a function" },
        { function() bq.scheduler{ queue = "x" } end, "unknown scheduler key 'queue'", "'queue_name'" },
        { function() bq.scheduler{ scheduler = {}, storage = { tpye = "memory" } } end, "unknown storage key 'tpye'",
          "'type'" },
        { function() s:run{ task_id = "a", mesages = { "x" } } end, "unknown field 'mesages'", "'messages'" },
        { function() s:run{ task_id = "a", messages = { "x" }, metdata = {} } end, "unknown field 'metdata'",
          "'metadata'" },
        { function() s:schedule{ type = "rnu", task_id = "a" } end, "type must be run, pause, resume or cancel" },
        { function() s:list_tasks{ stat = "working" } end, "unknown list_tasks filter key 'stat'", "'state'" },
        { function() bq.log("verbose", "x") end, "bad argument #1 to 'log'" },
        { function() bq.log_configure{ level = "verbose" } end, "log level must be" },
    }
    for i, c in ipairs(cases) do
        it(("is reported at the caller's line (%d: %s)"):format(i, c[2]), function()
            local err, line = fails(c[1])
            assert.are.equal(ME .. ":" .. line .. ":", err:sub(1, #ME + #tostring(line) + 2), err)
            assert.truthy(err:find(c[2], 1, true), err)
            if c[3] then
                assert.truthy(err:find("(did you mean " .. c[3] .. "?)", 1, true), err)
            end
        end)
    end
end)

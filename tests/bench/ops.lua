-- ops.lua -- the bench's task operations: `run`s of PAYLOAD (300) bytes of JSON, with fresh
-- ids (a worker skips the ids it finished already).
local codec = require("binduq.task")
local core = require("binduq.core")

local M = { PAYLOAD = 300 }

--- Operation i: task id prefix .. i; with queues, metadata.q names queues[i % #queues + 1];
--- with tenants, its conversation is tenant i % tenants' ("t<n>"), else "c".
function M.op(i, prefix, queues, tenants)
    local t = { type = "run", task_id = prefix .. i, conversation_id = tenants and "t" .. i % tenants or "c", messages = { "" },
                timestamp = "2026-01-01T00:00:00.000Z" }
    if queues and #queues > 0 then t.metadata = { q = queues[i % #queues + 1] } end
    t.messages = { ("x"):rep(M.PAYLOAD - #codec.encode(t)) }
    return t
end

--- Operations 1..n in lists of 1,000.
function M.batches(n, prefix, queues, tenants)
    local out = {}
    for b = 0, (n - 1) // 1000 do
        local list = {}
        for i = b * 1000 + 1, math.min(n, b * 1000 + 1000) do list[#list + 1] = M.op(i, prefix, queues, tenants) end
        out[#out + 1] = list
    end
    return out
end

--- Schedules n operations through scheduler s, pipelined 1,000 at a time (built first, so
--- the time is the scheduling's). Returns operations per second.
function M.fill(s, n, prefix, queues, tenants)
    local batches = M.batches(n, prefix, queues, tenants)
    local t0 = core.monotonic()
    for _, list in ipairs(batches) do assert(s:schedule_many(list)) end
    return n / (core.monotonic() - t0)
end

return M

-- Properties of the task decoders, for fuzz_task (one call per input):
--   decode never raises and always says why it refused;
--   the simdjson path (decode_fast) gives exactly the general path's task whenever it
--   answers (1 is not 1.0, 0.0 is not -0.0, nothing missing or extra);
--   every decoded id obeys the one id rule (src/core/id.h);
--   a "#bq" header is split off or refused with a reason, its counters always in range;
--   the size limit counts every byte.
local core = require("binduq.core")
local task = require("binduq.task")

local decoded = require("helpers.decoded")
local exact, reference = decoded.exact, decoded.reference

return function(raw)
    local ok, t, why = pcall(task.decode, raw, 1 << 20)
    if not ok then error("task.decode raised: " .. tostring(t)) end
    if t == nil and type(why) ~= "string" then error("task.decode gave no reason") end
    if t ~= nil then
        if core.id_problem(t.task_id) then error("decoded task_id breaks the id rule: " .. core.id_problem(t.task_id)) end
        if t.conversation_id ~= nil and core.id_problem(t.conversation_id) then
            error("decoded conversation_id breaks the id rule")
        end
    end

    local okf, fast = pcall(core.decode_fast, raw)
    if not okf then error("decode_fast raised: " .. tostring(fast)) end
    if type(fast) == "table" then
        local ref = reference(raw)
        if ref == nil then error("decode_fast accepted what the general path refuses") end
        local same, where = exact(fast, ref, "task")
        if not same then error("decode_fast differs from the general path at " .. where) end
    end

    if #raw > 8 then
        local small = pcall(task.decode, raw, 8)
        if not small then error("task.decode raised on a size limit") end
        local t2, why2 = task.decode(raw, 8)
        if t2 ~= nil or not tostring(why2):find("message too large", 1, true) then
            error("a message over the size limit was not refused as too large")
        end
    end

    local raw2 = "#bq " .. raw
    local okh, h, off = pcall(task.split_header, raw2)
    if not okh then error("split_header raised: " .. tostring(h)) end
    if h == nil then
        if type(off) ~= "string" then error("split_header gave no reason") end
    else
        for _, k in ipairs({ "attempt", "redelivered", "deferred", "requeued" }) do
            local v = h[k]
            if v ~= nil and (math.type(v) ~= "integer" or v < 1 or v > task.MAX_ATTEMPT) then
                error("header counter " .. k .. " out of range: " .. tostring(v))
            end
        end
        if off > task.MAX_HEADER_LEN then error("a header longer than the limit was accepted") end
    end
end

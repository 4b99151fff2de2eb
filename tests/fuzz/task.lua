-- Properties of the task decoders, for fuzz_task (one call per input).
local core = require("binduq.core")
local task = require("binduq.task")

return function(raw)
    local ok, t, why = pcall(task.decode, raw, 1 << 20)
    if not ok then error("task.decode raised: " .. tostring(t)) end
    if t == nil and type(why) ~= "string" then error("task.decode gave no reason") end
end

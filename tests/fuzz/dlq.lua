-- Properties of a dead-letter entry, for fuzz_dlq (see there).
local sched = require("binduq.scheduler")

return function(entry, reason, tid, raw, large)
    -- the C side takes reason and task id as C strings
    reason, tid = reason:match("^[^%z]*"), tid:match("^[^%z]*")
    local nl = entry:find("\n", 1, true)
    if not nl then error("an entry without its JSON line") end
    local e = sched.parse_dead_letter(entry)
    if e.reason == "unreadable dead-letter entry" then error("the JSON line does not parse: " .. entry:sub(1, nl - 1)) end
    local want_reason = utf8.len(reason) and reason or "(invalid UTF-8)"
    if e.reason ~= want_reason then
        -- the entry writes valid UTF-8 as given; only invalid UTF-8 is replaced
        error(("reason read back as %q, written %q"):format(e.reason, reason))
    end
    if #tid > 0 then
        local want = utf8.len(tid) and tid or "(invalid UTF-8)"
        if e.task_id ~= want then error(("task id read back as %q, written %q"):format(tostring(e.task_id), tid)) end
    end
    if large then
        if e.truncated ~= true or e.size ~= #raw + 1000 then error("a truncated entry lost its size") end
        if e.message ~= raw:sub(1, 256) then error("a truncated entry did not keep the first 256 bytes") end
    elseif e.message ~= raw then
        error("the message did not read back byte for byte")
    end
end

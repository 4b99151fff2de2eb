-- busted's helper for every suite (.busted): a test that fails before stopping the
-- processes it started (workers, servers: helpers.proc) has them stopped by PID as it ends,
-- so none outlives the run. A test that passes owns what it leaves running.
local busted = require("busted")
local proc = require("helpers.proc")

busted.subscribe({ "test", "start" }, function(element)
    proc.current_test = element
    return nil, true
end)

busted.subscribe({ "test", "end" }, function(element, _, status)
    proc.current_test = nil
    if status == "success" or status == "pending" then
        proc.spawned[element] = nil
    else
        proc.stop_left(element)
    end
    return nil, true
end)

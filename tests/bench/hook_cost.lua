-- hook_cost.lua -- what the count hook that enforces a handler's timeout (src/lua/l_slot.c)
-- costs Lua code while it is armed: two kinds of work timed with and without a count hook,
-- in turn, eight rounds each, in plain Lua (run as `lua5.4 tests/bench/hook_cost.lua`).
-- Prints each round's ratio (with / without) and their median.
local function arithmetic()
    local x = 0
    for i = 1, 2e7 do x = x + i % 7 end
    local t = {}
    for i = 1, 1e6 do
        t[#t + 1] = i * 2
        if #t > 100 then t = {} end
    end
    return x
end

-- Strings and tables, as a handler building a prompt: most of its time is in C functions.
local function strings()
    local parts = {}
    for i = 1, 3e5 do
        parts[#parts + 1] = ("item %d: %s"):format(i, ("x"):rep(i % 13))
        if #parts > 50 then parts = { table.concat(parts, "\n"):sub(1, 64) } end
    end
    return #parts
end

local function ratios(work)
    local r = {}
    for _ = 1, 8 do
        local c = os.clock()
        work()
        local without = os.clock() - c
        debug.sethook(function() end, "", 10000)
        c = os.clock()
        work()
        local with = os.clock() - c
        debug.sethook()
        r[#r + 1] = with / without
    end
    local sorted = { table.unpack(r) }
    table.sort(sorted)
    local parts = {}
    for i, v in ipairs(r) do parts[i] = ("%.2f"):format(v) end
    return table.concat(parts, " "), (sorted[4] + sorted[5]) / 2
end

for _, w in ipairs({ { "arithmetic", arithmetic }, { "strings and tables", strings } }) do
    local each, median = ratios(w[2])
    print(("%-20s with the hook / without: %s  (median %.2f)"):format(w[1], each, median))
end

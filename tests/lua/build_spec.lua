-- The rockspec builds what the Makefile builds: its source list and module list are checked
-- against the files the Makefile finds by wildcard, so a new source file cannot be left out
-- of `luarocks make`.
local function lines_of(cmd)
    local p = assert(io.popen(cmd))
    local out = {}
    for l in p:lines() do out[#out + 1] = l end
    p:close()
    table.sort(out)
    return out
end

local function rockspec()
    local path = lines_of("ls binduq-*.rockspec")[1]
    local env = {}
    assert(loadfile(path, "t", env))()
    return env, path
end

describe("the rockspec", function()
    it("compiles exactly the C and C++ sources the Makefile compiles", function()
        local spec, path = rockspec()
        local listed = {}
        for _, f in ipairs(spec.build.modules["binduq.core"].sources) do listed[#listed + 1] = f end
        table.sort(listed)
        -- The Makefile's LIB_SRC, LUA_SRC and LUA_CXX_SRC wildcards.
        local found = lines_of("ls src/core/*.c src/net/*.c src/broker/*.c src/storage/*.c "
            .. "src/engine/*.c src/lua/*.c src/lua/*.cpp")
        assert.are.same(found, listed, path .. ": the source list differs from the Makefile's")
    end)

    it("installs every Lua module of lua/binduq and its folders lifecycle and dashboard", function()
        local spec, path = rockspec()
        local listed = {}
        for name, f in pairs(spec.build.modules) do
            if type(f) == "string" then listed[#listed + 1] = name .. "=" .. f end
        end
        table.sort(listed)
        local found = {}
        for _, f in ipairs(lines_of("ls lua/binduq/*.lua lua/binduq/lifecycle/*.lua lua/binduq/dashboard/*.lua")) do
            local m = f:match("^lua/binduq/(.-)%.lua$"):gsub("/", ".")
            found[#found + 1] = (m == "init" and "binduq" or "binduq." .. m) .. "=" .. f
        end
        table.sort(found)
        assert.are.same(found, listed, path .. ": the module list differs from lua/binduq")
    end)
end)

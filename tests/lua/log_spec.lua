-- bq.log and core.escape: whatever a handler puts in an event name, a key or a value, a log
-- line stays one line, a JSON line parses, and a terminal gets no control character.

local core = require("binduq.core")
local json = require("binduq.json")

-- Runs `code` in a fresh lua5.4 with binduq on its paths; returns what it wrote to stderr.
local function stderr_of(code, env)
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write('package.path = "lua/?.lua;lua/?/init.lua;" .. package.path\n',
            'package.cpath = "build/?.so;" .. package.cpath\n', code)
    f:close()
    local p = assert(io.popen(("%s lua5.4 %s 2>&1 >/dev/null"):format(env or "", script)))
    local out = p:read("a")
    p:close()
    os.remove(script)
    return out
end

local HOSTILE = [[
local bq = require("binduq")
bq.log("info", "a\nb", { ["k\n2026-01-01T00:00:00Z error forged x"] = "v\r\n",
                         ["\27]52;c;QQ==\7"] = "\27[2K\xc2\x9b\xff", nan = 0/0, inf = 1/0,
                         ninf = -1/0, n = 1.5 })
]]

local function clean_line(s)
    assert.are.equal("\n", s:sub(-1))
    assert.is_nil(s:sub(1, -2):find("[%z\1-\31\127]"), s)
    assert.is_nil(s:find("\xc2[\x80-\x9f]"), s)
    assert.is_truthy(utf8.len(s), s)
end

describe("bq.log", function()
    it("writes a table's fields sorted by name, the same in every process", function()
        local code = [[
local bq = require("binduq")
bq.log("info", "ordered", { zeta = 1, alpha = "a", mid = 2.0, beta = "b", queue = "q", task_id = "t" })
]]
        for _ = 1, 3 do -- Lua 5.4 seeds its string hashes per state: one order would be luck
            local out = stderr_of(code, "BINDUQ_LOG_FORMAT=text")
            assert.truthy(out:find(" info ordered alpha=a beta=b mid=2 queue=q task_id=t zeta=1\n", 1, true), out)
        end
    end)

    it("writes one line per event in text format, whatever the names and values hold", function()
        local out = stderr_of(HOSTILE, "BINDUQ_LOG_FORMAT=text")
        clean_line(out)
        assert.truthy(out:find(' info "a\\nb" ', 1, true), out)
        assert.truthy(out:find('"k\\n2026-01-01T00:00:00Z error forged x"="v\\r\\n"', 1, true), out)
        assert.truthy(out:find('"\\x1b]52;c;QQ==\\x07"="\\x1b[2K\\u{9b}\\xff"', 1, true), out)
        assert.truthy(out:find(" nan=NaN", 1, true), out)
        assert.truthy(out:find(" inf=Infinity", 1, true), out)
        assert.truthy(out:find(" ninf=-Infinity", 1, true), out)
    end)

    it("writes one JSON object per line that parses, with non-finite numbers as strings", function()
        local out = stderr_of(HOSTILE, "BINDUQ_LOG_FORMAT=json")
        clean_line(out)
        local doc = assert(json.decode(out))
        assert.are.equal("a\nb", doc.event)
        assert.are.equal("v\r\n", doc["k\n2026-01-01T00:00:00Z error forged x"])
        assert.are.equal("\27[2K\xc2\x9b\xef\xbf\xbd", doc["\27]52;c;QQ==\7"])
        assert.are.equal("NaN", doc.nan)
        assert.are.equal("Infinity", doc.inf)
        assert.are.equal("-Infinity", doc.ninf)
        assert.are.equal(1.5, doc.n)
    end)
end)

describe("BINDUQ_LOG_LEVEL and BINDUQ_LOG_FORMAT", function()
    local LOG = 'require("binduq").log("info", "ran", {})\n'
    it("names the variable, its value and the accepted values when a level is unknown", function()
        local out = stderr_of(LOG, "BINDUQ_LOG_LEVEL=verbose")
        assert.is_nil(out:find("%z"), "a NUL byte in: " .. out)
        local first = out:match("^[^\n]*\n")
        assert.are.equal('binduq: BINDUQ_LOG_LEVEL="verbose" is not one of debug, info, warn, error or off; '
                         .. "using info\n", first)
        -- the default level then applies: the info line is written
        assert.truthy(out:find(" info ran", 1, true), out)
    end)
    it("names the format variable, and escapes what it holds", function()
        local out = stderr_of(LOG, [[BINDUQ_LOG_FORMAT="$(printf 'xml\033')"]])
        assert.is_nil(out:find("[%z\27]"), out)
        assert.are.equal('binduq: BINDUQ_LOG_FORMAT="xml\\x1b" is not one of text or json; using text\n',
                         out:match("^[^\n]*\n"))
    end)
end)

describe("core.escape", function()
    it("leaves printable text alone and escapes controls, DEL, C1 and invalid UTF-8", function()
        assert.are.equal("caf\xc3\xa9 \"x\" \\ ok", core.escape("caf\xc3\xa9 \"x\" \\ ok"))
        assert.are.equal("\\x1b]52;c;QQ==\\x07\\x1b[2K\\r\\n fake\\t\\x00\\x7f\\u{9b}\\u{80}\\xff\\xc0\\xaf",
                         core.escape("\27]52;c;QQ==\7\27[2K\r\n fake\t\0\127\xc2\x9b\xc2\x80\xff\xc0\xaf"))
        assert.are.equal('\\"\\\\\\n', core.escape('"\\\n', "quoted"))
        assert.are.equal('\\u001b\\u009b\\ufffd\\"', core.escape('\27\xc2\x9b\xff"', "json"))
        local text = '{"a":"\27\xc2\x9b\xff\\n"}'
        assert.are.equal('{"a":"\\u001b\\u009b\\ufffd\\n"}', core.escape(text, "json_text"))
        assert.are.same({ a = "\27\xc2\x9b\xef\xbf\xbd\n" }, json.decode(core.escape(text, "json_text")))
    end)
end)

-- Properties of the log formatter and the escape rule, for fuzz_log (one call per input):
-- fuzz_log.c has checked that both lines are one clean line of valid UTF-8; here the JSON
-- line must parse and the text line read back, to the same strings.
local core = require("binduq.core")
local json = require("binduq.json")

local TS = "2026-01-01T00:00:00.000Z"
local MAX_LINE = 4096

-- s with each byte that is not part of well-formed UTF-8 replaced by U+FFFD (escape.h).
-- Lua's strict utf8.len refuses what escape.c refuses (overlong forms, surrogates, past
-- U+10FFFF, stray and missing continuation bytes) and says where: one byte is replaced and
-- the scan goes on after it.
local function clean(s)
    local out, i = {}, 1
    while true do
        local n, bad = utf8.len(s, i)
        if n then
            out[#out + 1] = s:sub(i)
            return table.concat(out)
        end
        out[#out + 1] = s:sub(i, bad - 1)
        out[#out + 1] = "\xEF\xBF\xBD"
        i = bad + 1
    end
end

-- Reads the quoted token at s[i] == '"': its bytes, and the index after it.
local SIMPLE = { n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\" }
local function quoted(s, i)
    local out = {}
    i = i + 1
    while true do
        local j = s:find('["\\]', i)
        if not j then error("unterminated quoted token in " .. s) end
        out[#out + 1] = s:sub(i, j - 1)
        if s:sub(j, j) == '"' then return table.concat(out), j + 1 end
        local e = s:sub(j + 1, j + 1)
        if SIMPLE[e] then
            out[#out + 1], i = SIMPLE[e], j + 2
        elseif e == "x" then
            local h = s:match("^%x%x", j + 2) or error("bad \\x escape in " .. s)
            out[#out + 1], i = string.char(tonumber(h, 16)), j + 4
        elseif e == "u" then
            local h = s:match("^{(%x%x)}", j + 2) or error("bad \\u escape in " .. s)
            local v = tonumber(h, 16)
            assert(v >= 0x80 and v <= 0x9f, "\\u{} outside C1 in " .. s)
            out[#out + 1], i = utf8.char(v), j + 6
        else
            error("unknown escape \\" .. e .. " in " .. s)
        end
    end
end

-- A text token at s[i]: bare (up to a space, '=' or the end of the line) or quoted.
local function token(s, i)
    if s:sub(i, i) == '"' then return quoted(s, i) end
    local t = s:match("^[^ =\n\"\\]+", i) or error("empty bare token at " .. i .. " in " .. s)
    assert(core.escape(t) == t, "bare token that needs escapes: " .. s)
    return t, i + #t
end

local function json_number(v)
    local int, rest = v:match("^%-?(%d+)(.*)$")
    if not int or (#int > 1 and int:sub(1, 1) == "0") then return false end
    if rest:sub(1, 1) == "." then rest = rest:match("^%.%d+(.*)$") if not rest then return false end end
    if rest:match("^[eE]") then rest = rest:match("^[eE][+-]?%d+(.*)$") if not rest then return false end end
    return rest == ""
end

local function non_finite(v)
    local p = v:sub((v:sub(1, 1) == "-" or v:sub(1, 1) == "+") and 2 or 1):lower()
    if p:sub(1, 3) == "nan" and (#p == 3 or p:sub(4, 4) == "(") then return "NaN" end
    if p == "inf" or p == "infinity" then return v:sub(1, 1) == "-" and "-Infinity" or "Infinity" end
end

local function clean_text(s, what)
    assert(not s:find("[%z\1-\31\127]"), what .. ": a control character")
    assert(not s:find("\xc2[\x80-\x9f]"), what .. ": a C1 control")
    assert(utf8.len(s), what .. ": not UTF-8")
end

return function(event, key, value, number, text, jline, raw)
    -- A key that starts with '#' marks a number (log.h): the harness's own, or the input's.
    if not number and key:sub(1, 1) == "#" then number, key = true, key:sub(2) end
    local shown = value
    if number and not json_number(value) then shown = non_finite(value) or value end

    -- Text: reads back to the exact bytes, unless the line was cut.
    if not (#text > MAX_LINE - 8 and text:sub(-4) == "...\n") then
        local head = TS .. " warn "
        assert(text:sub(1, #head) == head, "text line head: " .. text)
        local e, i = token(text, #head + 1)
        assert(text:sub(i, i) == " ", "no space after the event: " .. text)
        local k, j = token(text, i + 1)
        assert(text:sub(j, j) == "=", "no '=' after the key: " .. text)
        local v, m = token(text, j + 1)
        assert(m == #text, "text after the value: " .. text)
        assert(e == event, "event did not read back: " .. text)
        assert(k == key, "key did not read back: " .. text)
        assert(v == shown, "value did not read back: " .. text)
    end

    -- JSON: parses (strict), and gives the same strings where they were UTF-8.
    local ok, doc = pcall(json.raw_decode, jline)
    assert(ok and type(doc) == "table", "JSON line does not parse: " .. jline .. " " .. tostring(doc))
    assert(doc.ts == TS or key == "ts", "ts: " .. jline)
    local ckey = clean(key)
    local reserved = ckey == "ts" or ckey == "level" or ckey == "event"
    if doc.event == "log_truncated" and doc[ckey] == nil and not reserved then
        assert(#jline < 200, "a truncated line is only the marker: " .. jline)
    elseif not reserved then
        assert(doc.event == clean(event), "event: " .. jline)
        if number and json_number(value) then
            -- Compared as floats: lua-cjson reads every number with strtod.
            assert(math.type(doc[ckey]) and doc[ckey] + 0.0 == tonumber(value) + 0.0, "number: " .. jline)
        else
            assert(doc[ckey] == clean(shown), "value: " .. jline)
        end
    end

    -- core.escape on the whole input (NUL included): clean in every mode, lossless quoted,
    -- JSON that decodes to the same string where it was UTF-8.
    for _, mode in ipairs({ "display", "quoted", "json", "json_text" }) do
        clean_text(core.escape(raw, mode), mode)
    end
    assert(quoted('"' .. core.escape(raw, "quoted") .. '"', 1) == raw, "quoted mode is not lossless")
    local craw = clean(raw)
    assert(json.raw_decode('"' .. core.escape(raw, "json") .. '"') == craw, "json mode")
    local doc2 = json.raw_decode(core.escape(json.encode_strict({ raw }), "json_text"))
    assert(doc2[1] == craw, "json_text mode")
end

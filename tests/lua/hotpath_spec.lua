-- The pieces the performance work added to the worker's hot path: the UTF-8 check and the
-- ISO 8601 parser in C, the storage's one-call start and finish, and the worker's fast start
-- of a first delivery (a stored task, and one no producer recorded), the result artifact of
-- a handler that returns a boolean or a number.

local bq = require("binduq")
local core = require("binduq.core")
local json = require("binduq.json")

describe("core.utf8_check", function()
    local cases = {
        "", "plain ascii", ("0123456789abcdef"):rep(5), "héllo wörld", "日本語のテキスト",
        "emoji \u{1F600} at the end", ("a"):rep(7) .. "é" .. ("b"):rep(9),
        "bad \xff byte", ("a"):rep(17) .. "\xc3", "\xed\xa0\x80 surrogate", "\xf4\x90\x80\x80 too high",
        "\xc0\xaf overlong", ("x"):rep(31) .. "\x80", "\xe6\x97 cut", ("ok"):rep(20) .. "\xf0\x9f\x98",
    }
    for i, s in ipairs(cases) do
        it("agrees with utf8.len on case " .. i, function()
            local n, bad = utf8.len(s)
            local ok, pos = core.utf8_check(s)
            assert.are.equal(n ~= nil, ok)
            if not n then assert.are.equal(bad, pos) end
        end)
    end
end)

describe("core.parse_iso8601", function()
    it("reads UTC, fractions and offsets", function()
        assert.are.equal(0, core.parse_iso8601("1970-01-01T00:00:00Z"))
        assert.are.equal(1767225600, core.parse_iso8601("2026-01-01T00:00:00.000Z"))
        assert.are.equal(1709202896.5, core.parse_iso8601("2024-02-29T12:34:56.5+02:00"))
        assert.are.equal(951888600, core.parse_iso8601("2000-03-01T00:00:00-05:30"))
        assert.are.equal(946684799, core.parse_iso8601("1999-12-31T23:59:59"))
        assert.are.equal(os.time{ year = 2031, month = 7, day = 4, hour = 5, min = 6, sec = 7, isdst = false }
                         - os.time{ year = 1970, month = 1, day = 1, hour = 0, isdst = false },
                         core.parse_iso8601("2031-07-04T05:06:07Z"))
    end)
    it("refuses what is not a timestamp", function()
        for _, s in ipairs({ "", "2026-01-01", "2026-13-01T00:00:00Z", "2026-01-32T00:00:00Z",
                             "2026-01-01T24:00:00Z", "2026-01-01T00:00:00Zx", "26-01-01T00:00:00Z",
                             "2026-01-01T00:00:00+0200", "yesterday" }) do
            assert.is_nil(core.parse_iso8601(s), s)
        end
    end)
end)

describe("core.secs", function()
    it("writes seconds with three decimals, rounded, as the worker's events do", function()
        assert.are.equal("1733450000.123", core.secs(1733450000.1234))
        assert.are.equal("1733450000.124", core.secs(1733450000.1236))
        assert.are.equal("13.000", core.secs(12.9996))
        assert.are.equal("0.000", core.secs(0))
        assert.are.equal("-1.500", core.secs(-1.5))
        assert.are.equal("-0.250", core.secs(-0.25))
        assert.are.equal("0.000", core.secs(0 / 0)) -- not a time: 0, never "nan"
        -- what "%.3f" wrote before, for times away from a half millisecond
        for i = 1, 200 do
            local t = 1.7e9 + i * 7.3 + (i % 10) / 10 + 0.0001
            assert.are.equal(("%.3f"):format(t), core.secs(t), "at " .. t)
        end
    end)
end)

describe("storage start and finish (memory)", function()
    local st
    before_each(function()
        core.storage_reset()
        st = core.storage{ type = "memory" }
    end)

    it("starts only a submitted task, counting the attempt", function()
        assert.are.same({ false, false, "", 0 }, { st:start("hp:none", "w1") })
        assert.is_true((st:create{ id = "hp:a", history = '[{"role":"user","content":"hi"}]' }))
        assert.are.same({ true, "working", "", 1 }, { st:start("hp:a", "w1") })
        assert.are.same({ false, "working", "", 1 }, { st:start("hp:a", "w2") })
        local rec = st:get("hp:a")
        assert.are.equal("w1", rec.worker)
        assert.are.equal(1, rec.attempts)
    end)

    it("finishes a working task with the handler's messages and artifacts", function()
        st:create{ id = "hp:b", history = '[{"role":"user","content":"hi"}]' }
        st:start("hp:b", "w1")
        st:change{ id = "hp:b", from = "working", requested = "pause", error = '{"code":"X"}' }
        assert.are.same({ true, "completed", "" },
                        { st:finish("hp:b", "completed", '[{"role":"agent","content":"yo"}]', '[{"name":"r"}]') })
        local rec = st:get("hp:b")
        assert.are.same({ { role = "user", content = "hi" }, { role = "agent", content = "yo" } }, json.decode(rec.history))
        assert.are.same({ { name = "r" } }, json.decode(rec.artifacts))
        assert.is_nil(rec.requested)
        assert.is_nil(rec.error)
        -- terminal: neither finishes nor starts again
        assert.are.same({ false, "completed", "" }, { st:finish("hp:b", "failed") })
        assert.are.same({ false, "completed", "", 1 }, { st:start("hp:b", "w1") })
    end)

    it("creates a task already working, with its worker and attempts", function()
        assert.are.same({ true, "working" }, { st:create{ id = "hp:c", state = "working", worker = "w9", attempts = 1 } })
        local rec = st:get("hp:c")
        assert.are.equal("w9", rec.worker)
        assert.are.equal(1, rec.attempts)
        assert.has_error(function() st:create{ id = "hp:d", attempts = -1 } end)
    end)
end)

describe("the memory storage's bound (storage.max_tasks)", function()
    after_each(function() core.storage_reset() end)

    it("keeps the newest records and forgets the oldest", function()
        core.storage_reset()
        local s = bq.scheduler{ scheduler = { type = "memory", queue_name = "spec:hotpath:cap" },
                                storage = { type = "memory", max_tasks = 3 } }
        for i = 1, 5 do
            assert(s:schedule{ type = "run", task_id = "cap:" .. i, messages = { "m" .. i } })
        end
        assert.is_nil(s:get_task("cap:1"))
        assert.is_nil(s:get_task("cap:2"))
        for i = 3, 5 do
            local t = s:get_task("cap:" .. i)
            assert.are.equal("submitted", t.state)
            assert.are.equal("m" .. i, t.history[1].content)
            assert.are.same({}, t.artifacts)
            assert.are.same({}, t.metadata)
        end
        s:close()
    end)
end)

describe("the worker's fast start", function()
    local fixture = "tests/lua/fixtures/lifecycle_worker.lua"
    before_each(function() core.storage_reset() end)

    -- Drains queue q with the lifecycle fixture's handler at concurrency 1.
    local function drain(q)
        local w = dofile(fixture){ queue = q, concurrency = 1 }
        local stats = w:drain()
        w:close()
        return stats
    end

    it("records a task no producer recorded, running, then completed", function()
        local q = "spec:hotpath:raw:" .. os.time()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        assert(s:push_raw('{"type":"run","task_id":"hp:raw","messages":[{"role":"user","content":"hey"}]}'))
        local stats = drain(q)
        assert.are.equal(1, stats.completed)
        local rec = core.storage{ type = "memory" }:get("hp:raw")
        assert.are.equal("completed", rec.state)
        assert.are.equal(1, rec.attempts)
        assert.are.same({ { role = "user", content = "hey" }, { role = "agent", content = "answer: hey (1)" } },
                        json.decode(rec.history))
        s:close()
    end)

    it("gives a task that ran before its stored history and checkpoint", function()
        local q = "spec:hotpath:again:" .. os.time()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        assert(s:schedule{ type = "run", task_id = "hp:again", messages = { "steps:4" } })
        local st = core.storage{ type = "memory" }
        -- as after a shutdown that handed the task back: it ran once, checkpointed, and is
        -- submitted again with its original message
        st:start("hp:again", "old-worker")
        st:change{ id = "hp:again", from = "working", to = "submitted", checkpoint = "3" }
        local stats = drain(q)
        assert.are.equal(1, stats.completed)
        local rec = st:get("hp:again")
        assert.are.equal("completed", rec.state)
        assert.are.equal(2, rec.attempts)
        local history = json.decode(rec.history)
        assert.are.equal(2, #history)
        assert.matches("^counted 3%.%.4 on ", history[2].content)
        s:close()
    end)

    it("gives the handler every ctx field, its own and its handler state's", function()
        local q = "spec:hotpath:ctx:" .. os.time()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        assert(s:schedule{ type = "run", task_id = "hp:ctx:1", conversation_id = "conv", messages = { "ctx" },
                           trace_id = "4bf92f3577b34da6a3ce929d0e0e4736", span_id = "00f067aa0ba902b7" })
        assert(s:schedule{ type = "run", task_id = "hp:ctx:2", messages = { "ask" } })
        local stats = drain(q)
        assert.are.equal(1, stats.completed)
        assert(s:schedule{ type = "resume", task_id = "hp:ctx:2", messages = { "ctx" } })
        stats = drain(q)
        assert.are.equal(1, stats.completed)
        local st = core.storage{ type = "memory" }
        local function fields(id)
            local arts = json.decode(st:get(id).artifacts)
            return arts[#arts].parts[1].data
        end
        local a, b = fields("hp:ctx:1"), fields("hp:ctx:2")
        assert.are.equal("hp:ctx:1", a.task_id)
        assert.are.equal("conv", a.context_id)
        assert.are.equal(q, a.queue)
        assert.matches("^vm:%d+:%x+$", a.worker_id)
        assert.are.equal(1, a.slot)
        assert.are.equal(1, a.attempt)
        assert.are.equal(false, a.resumed)
        assert.are.equal("4bf92f3577b34da6a3ce929d0e0e4736", a.trace_id)
        assert.are.equal("00f067aa0ba902b7", a.span_id)
        assert.is_nil(a.saved)
        assert.is_true(a.methods)
        assert.are.equal("hp:ctx:2", b.task_id)
        assert.are.equal(true, b.resumed)
        assert.is_nil(b.trace_id)
        assert.is_true(b.methods)
        s:close()
    end)

    it("stores a boolean or number result as the result artifact; a NaN fails the task", function()
        local q = "spec:hotpath:scalar:" .. os.time()
        local s = bq.scheduler{ type = "memory", queue_name = q }
        local texts = { "true", "false", "num:2.5", "num:7", "nil", "nan" }
        for i, text in ipairs(texts) do
            assert(s:schedule{ type = "run", task_id = "hp:scalar:" .. i, messages = { text } })
        end
        local stats = drain(q)
        assert.are.equal(5, stats.completed)
        assert.are.equal(1, stats.dead_lettered)
        local st = core.storage{ type = "memory" }
        local function data_of(i)
            local rec = st:get("hp:scalar:" .. i)
            assert.are.equal("completed", rec.state)
            local arts = json.decode(rec.artifacts)
            if #arts == 0 then return "none" end
            assert.are.equal(1, #arts)
            assert.are.equal("result", arts[1].name)
            assert.are.same({ kind = "data" }, { kind = arts[1].parts[1].kind })
            return arts[1].parts[1].data
        end
        assert.are.equal(true, data_of(1))
        assert.are.equal(false, data_of(2))
        assert.are.equal(2.5, data_of(3))
        assert.are.equal(7, data_of(4))
        assert.are.equal("none", data_of(5))
        local bad = st:get("hp:scalar:6")
        assert.are.equal("failed", bad.state)
        assert.are.equal("ERESULT", json.decode(bad.error).code)
        s:close()
    end)
end)

describe("core.decode_fast (simdjson)", function()
    local task = require("binduq.task")
    local decoded = require("helpers.decoded")
    local reference, exact = decoded.reference, decoded.exact

    local base = {
        '{"type":"run","task_id":"t1","conversation_id":"c1","messages":[{"role":"user","content":"hi"}],'
            .. '"artifacts":[],"timestamp":"2026-01-01T00:00:00.000Z"}',
        '{"type":"resume","task_id":"t2","messages":[{"role":"user","content":"more","kind":"text",'
            .. '"metadata":{"a":[1,2.5,-3,true,false,null,{"b":"c"}]}}],"trace_id":"ab","span_id":"cd"}',
        '{"type":"cancel","task_id":"t3"}',
        '{"type":"pause","task_id":"t4","conversation_id":null,"messages":null}',
        '{"type":"run","task_id":"t5","messages":[{"role":"user","content":"a\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\\u0000"},'
            .. '{"role":"agent","content":"x","parts":[{"kind":"text","text":"y"}],"extra":null}],'
            .. '"metadata":{"k":{"n":[[]],"e":{}}},"timeout":2.5,"max_attempts":3.0,"traceparent":"00-ab-cd-01",'
            .. '"unknown":{"deep":[1,[2,[3]]]}}',
        '{ "type" : "run" , "task_id" : "t6" , "messages" : [ { "role" : "user" , "content" : "" } ] }  ',
    }

    it("gives exactly the general path's task for the usual operations", function()
        for i, raw in ipairs(base) do
            local fast = core.decode_fast(raw)
            assert.is_table(fast, "case " .. i .. " was declined")
            assert(exact(fast, reference(raw)))
        end
        local t = core.decode_fast(base[5])
        assert.are.equal("a\"b\\c\n\u{e9}\u{1F600}\0", t.messages[1].content)
        assert.are.equal(3, t.max_attempts)
        assert.are.equal("integer", math.type(t.max_attempts))
        assert.is_nil(t.messages[2].extra)
        assert.are.equal(json.null, core.decode_fast(base[2]).messages[1].metadata.a[6])
        -- the parser grows to a larger message (up to 16 KiB, 64 levels) and goes on working
        local big = '{"type":"run","task_id":"big","messages":[{"role":"user","content":"' .. ("b"):rep(12000)
            .. '"}],"metadata":{"m":' .. ("["):rep(50) .. ("]"):rep(50) .. '}}'
        local fb = core.decode_fast(big)
        assert.is_table(fb, "the 12 KB message was declined")
        assert(exact(fb, reference(big)))
        assert.are.equal(12000, #fb.messages[1].content)
        assert(exact(core.decode_fast(base[1]), reference(base[1])))
    end)

    it("declines what it does not decode, and the general path still says why", function()
        local declined = {
            "", " {}", "[1]", "{}", "not json", '{"type":"run"', '{"type":"run","task_id":"a"}',
            '{"type":"run","task_id":"a","messages":[]}',
            '{"operation":"run","params":{"task_id":"a","message":{"role":"user","content":"x"}}}',
            '{"type":"run","type":"run","task_id":"a","messages":[{"role":"user","content":"x"}]}',
            '{"type":"jump","task_id":"a","messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"","messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"' .. ("i"):rep(257) .. '","messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","parts":[{"kind":"text","text":"x"}]}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"","content":"x"}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x","parts":{"a":1}}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x","n":-0}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x","n":1e400}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"\\ud800"}]}',
            '{"type":"run","task_id":"a\xff","messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","timeout":0,"messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","max_attempts":1.5,"messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","artifacts":{"a":1},"messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","metadata":[1],"messages":[{"role":"user","content":"x"}]}',
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x"}],"m":'
                .. ("["):rep(70) .. ("]"):rep(70) .. "}",
            '{"type":"run","task_id":"a","messages":[{"role":"user","content":"' .. ("x"):rep(17000) .. '"}]}',
        }
        for i, raw in ipairs(declined) do
            assert.are.equal(false, core.decode_fast(raw), "case " .. i)
        end
        -- the long and the deep ones are fine, only not this decoder's
        assert.is_table(reference(declined[#declined]))
        assert.is_table(reference(declined[#declined - 1]))
        local t, why = task.decode('{"type":"run","task_id":"a","messages":[{"role":"user","content":"x"}],"timeout":0}')
        assert.is_nil(t)
        assert.are.equal("timeout must be a positive number of seconds, at most 365 days", why)
    end)

    it("agrees with the general path on every field of a run taking each of 33 values", function()
        -- Every field of a usual run, in turn, takes every value of a pool: whatever the
        -- fast decoder accepts must be exactly what the general path gives.
        local values = { 'null', '0', '-0', '-0.0', '1', '3.0', '2.5', '-7', '1e3', '1E-2', '9007199254740993',
            '18446744073709551615', '1e400', 'true', 'false', '""', '"x"', '"\\u00e9"', '"\\ud83d\\ude00"',
            '"\\udc00"', '[]', '{}', '[1]', '{"a":null}', '[{"role":"user","content":"x"}]',
            '[{"role":"user","content":"x"},{"role":"agent","content":"y","n":null}]',
            '[{"role":"user"}]', '[{"role":"user","content":null}]', '[{"content":"x"}]', '[[]]',
            '"' .. ("v"):rep(300) .. '"', '"run"', '"cancel"' }
        local fields = { "type", "task_id", "conversation_id", "messages", "artifacts", "timestamp", "metadata",
            "trace_id", "span_id", "traceparent", "timeout", "max_attempts", "operation", "other" }
        local accepted, total = 0, 0
        for _, f in ipairs(fields) do
            for _, v in ipairs(values) do
                local t = { type = '"run"', task_id = '"id"', messages = '[{"role":"user","content":"x"}]' }
                t[f] = v
                local parts = {}
                for _, k in ipairs(fields) do
                    if t[k] then parts[#parts + 1] = ('"%s":%s'):format(k, t[k]) end
                end
                local raw = "{" .. table.concat(parts, ",") .. "}"
                total = total + 1
                local fast = core.decode_fast(raw)
                if fast then
                    accepted = accepted + 1
                    local ref = reference(raw)
                    assert(ref, "fast accepted what the general path refuses: " .. raw)
                    local ok, why = exact(fast, ref)
                    assert(ok, raw .. ": " .. tostring(why))
                else
                    assert.are.equal(false, fast)
                end
            end
        end
        assert.are.equal(#fields * #values, total)
        assert.is_true(accepted >= 100, "only " .. accepted .. " accepted")
    end)
end)

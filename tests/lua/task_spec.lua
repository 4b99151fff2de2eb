-- The wire formats: producer encoding, both decoders, and every kind of malformed message.

local task = require("binduq.task")
local json = require("binduq.json")

describe("task encoding", function()
    it("writes the native format with defaults", function()
        local s, id = task.encode({ type = "run", task_id = "t1", messages = { "What is AI?" } })
        assert.are.equal("t1", id)
        local t = json.decode(s)
        assert.are.equal("run", t.type)
        assert.are.equal("t1", t.task_id)
        assert.are.same({ { role = "user", content = "What is AI?" } }, t.messages)
        assert.truthy(s:find('"artifacts":[]', 1, true))
        assert.truthy(t.conversation_id:match("^%x+%-%x+%-4%x+%-%x+%-%x+$"))
        assert.truthy(t.timestamp:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"))
        assert.are.equal('{"type":"run","task_id":"t1",', s:sub(1, 29))
    end)

    it("keeps given fields and writes empty lists as arrays", function()
        local s = task.encode({ type = "resume", task_id = "t2", conversation_id = "c",
                                messages = { { role = "user", content = "more" } }, artifacts = {},
                                metadata = { k = 1 }, trace_id = "abc" })
        local t = json.decode(s)
        assert.are.equal("c", t.conversation_id)
        assert.are.equal("abc", t.trace_id)
        assert.are.equal(1, t.metadata.k)
        assert.truthy(s:find('"artifacts":[]', 1, true))
    end)

    it("writes plain messages as the fast path and the C producer do, in one key order", function()
        -- the history a run is stored with is these bytes, whichever producer recorded it
        local core = require("binduq.core")
        local ops = { type = "run", task_id = "t4", conversation_id = "c",
                      messages = { "a/b \b", { role = "agent", content = 'q"\\\n\u{e9}' } } }
        local want = '[{"role":"user","content":"a/b \\u0008"},'
                     .. '{"role":"agent","content":"q\\"\\\\\\n\u{e9}"}]'
        for _ = 1, 20 do -- lua-cjson's order would follow each new table's hash
            local _, _, norm = task.encode({ type = ops.type, task_id = ops.task_id,
                                             conversation_id = ops.conversation_id,
                                             messages = { ops.messages[1], { role = "agent",
                                                          content = ops.messages[2].content } } })
            assert.are.equal(want, norm.messages_json)
        end
        local st = core.storage{ type = "memory" }
        local batch = core.prepare_runs(st, { ops }, "q")
        assert.truthy(batch:get(1):find(',"messages":' .. want .. ',', 1, true))
        st:remove("t4")
        st:close()
        -- anything else is lua-cjson's
        local _, _, norm = task.encode({ type = "run", task_id = "t5",
                                         messages = { { role = "user", content = "x", parts = {} } } })
        assert.are.same({ { role = "user", content = "x", parts = {} } }, json.decode(norm.messages_json))
    end)

    it("writes pause and cancel without messages", function()
        local s = task.encode({ type = "cancel", task_id = "t3" })
        assert.falsy(s:find("messages", 1, true))
        assert.falsy(s:find("conversation_id", 1, true))
    end)

    local bad = {
        { { type = "run", messages = { "x" } }, "task_id is required" },
        { { type = "run", task_id = "", messages = { "x" } }, "task_id must not be empty" },
        { { type = "run", task_id = 12, messages = { "x" } }, "task_id must be a string" },
        { { type = "run", task_id = ("x"):rep(300), messages = { "x" } }, "longer than 256" },
        { { type = "walk", task_id = "a" }, "type must be run, pause, resume or cancel" },
        { { type = "run", task_id = "a" }, "a run needs at least one message" },
        { { type = "run", task_id = "a", messages = {} }, "a run needs at least one message" },
        { { type = "run", task_id = "a", messages = "hi" }, "messages must be an array" },
        { { type = "run", task_id = "a", messages = { x = 1 } }, "messages must be an array" },
        { { type = "run", task_id = "a", messages = { { content = "x" } } }, "messages[1].role" },
        { { type = "run", task_id = "a", messages = { { role = "user" } } }, "needs content or parts" },
        -- src/core/wire.h's limit, the C producer's too (bq_task_validate)
        { { type = "run", task_id = "a", messages = { { role = ("r"):rep(65), content = "x" } } },
          "messages[1].role is longer than 64 bytes" },
        { { type = "run", task_id = "a", messages = { "x" }, artifacts = "no" }, "artifacts must be an array" },
        { { type = "cancel", task_id = "a", messages = { "x" } }, "only allowed for run and resume" },
        { { type = "run", task_id = "a", messages = { "x" }, colour = "red" }, "unknown field 'colour'" },
        { { type = "run", task_id = "a\255", messages = { "x" } }, "not valid UTF-8" },
        { { type = "cancel", task_id = "victim\0attacker" }, "task_id contains a control character (U+0000 at byte 6)" },
        { { type = "run", task_id = "a", conversation_id = "\27]52;c;eA==\7", messages = { "x" } },
          "conversation_id contains a control character (U+001B at byte 0)" },
        { { type = "pause", task_id = "p\u{9B}" }, "task_id contains a control character (U+009B at byte 1)" },
        -- a worker refuses a message that is not UTF-8 (and the C producer such a field)
        { { type = "run", task_id = "a", messages = { "caf\xe9" } }, "messages is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { { role = "\xff", content = "x" } } },
          "messages is not valid UTF-8" },
        { { type = "resume", task_id = "a", messages = { { role = "u", parts = { { kind = "text", text = "\xed\xa0\x80" } } } } },
          "messages is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { "x" }, metadata = { note = "\xc3" } }, "metadata is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { "x" }, metadata = { ["k\xff"] = 1 } }, "metadata is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { "x" }, artifacts = { "\x80" } }, "artifacts is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { "x" }, trace_id = "\xff" }, "trace_id is not valid UTF-8" },
        { { type = "run", task_id = "a", messages = { "x" }, timestamp = "2026\xff" }, "timestamp is not valid UTF-8" },
        -- a number a worker reads back as the same whole number: maxinteger came back 2^63
        { { type = "run", task_id = "a", messages = { "x" }, max_attempts = math.maxinteger }, "at most 2^53" },
        { { type = "run", task_id = "a", messages = { "x" }, max_attempts = (1 << 53) + 1 }, "at most 2^53" },
    }
    -- A table nested n levels deep (the outermost one counts).
    local function nest(n)
        local t = {}
        local d = t
        for _ = 2, n do d.x = {}; d = d.x end
        return t
    end
    local json_max = require("binduq.json").MAX_DEPTH
    it("refuses what nests deeper than a worker decodes, and keeps what it can", function()
        local deep = {
            { { type = "run", task_id = "a", messages = { "x" }, metadata = nest(json_max) }, "metadata: " },
            { { type = "run", task_id = "a", messages = { "x" }, artifacts = { nest(json_max - 1) } }, "artifacts: " },
            { { type = "run", task_id = "a", messages = { { role = "u", content = "x", extra = nest(json_max - 2) } } },
              "messages: " },
        }
        for _, case in ipairs(deep) do
            local ok, err = pcall(task.encode, case[1])
            assert.is_false(ok, case[2])
            assert.truthy(tostring(err):find(case[2] .. "Cannot serialise, excessive nesting", 1, true), tostring(err))
        end
        for _, op in ipairs({
            { type = "run", task_id = "a", messages = { "x" }, metadata = nest(json_max - 1) },
            { type = "run", task_id = "a", messages = { "x" }, artifacts = { nest(json_max - 2) } },
            { type = "run", task_id = "a", messages = { { role = "u", content = "x", extra = nest(json_max - 3) } } },
        }) do
            local t, why = task.decode((task.encode(op)))
            assert.truthy(t, why)
        end
        local ok, err = pcall(task.encode, { type = "run", task_id = "a", messages = { "x" }, metadata = { n = 0 / 0 } })
        assert.is_false(ok)
        assert.truthy(tostring(err):find("metadata: Cannot serialise number", 1, true), tostring(err))
    end)

    for _, case in ipairs(bad) do
        it("refuses an invalid operation: " .. case[2], function()
            local ok, err = pcall(task.encode, case[1])
            assert.is_false(ok)
            assert.truthy(tostring(err):find(case[2], 1, true), tostring(err))
        end)
    end
end)

describe("task decoding", function()
    local native = '{"type":"run","task_id":"550e8400-e29b-41d4-a716-446655440000",'
        .. '"conversation_id":"660e8400-e29b-41d4-a716-446655440001",'
        .. '"messages":[{"role":"user","content":"What is AI?"}],"artifacts":[],'
        .. '"timestamp":"2024-12-09T14:30:00Z"}'
    local bindu = '{"operation":"run","params":{"task_id":"550e8400-e29b-41d4-a716-446655440000",'
        .. '"context_id":"660e8400-e29b-41d4-a716-446655440001","message":{"message_id":"m1",'
        .. '"context_id":"660e8400-e29b-41d4-a716-446655440001","task_id":"550e8400-e29b-41d4-a716-446655440000",'
        .. '"kind":"message","parts":[{"kind":"text","text":"What is AI?"}],"role":"user","metadata":{}}},'
        .. '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}'

    it("decodes the native format", function()
        local t = assert(task.decode(native))
        assert.are.equal("run", t.type)
        assert.are.equal("native", t.format)
        assert.are.equal("550e8400-e29b-41d4-a716-446655440000", t.task_id)
        assert.are.equal("660e8400-e29b-41d4-a716-446655440001", t.conversation_id)
        assert.are.equal("What is AI?", t.messages[1].content)
        assert.are.equal("user", t.messages[1].role)
        assert.are.equal("2024-12-09T14:30:00Z", t.timestamp)
    end)

    it("decodes Bindu's format to the same task", function()
        local a = assert(task.decode(native))
        local b = assert(task.decode(bindu))
        assert.are.equal("bindu", b.format)
        assert.are.equal("4bf92f3577b34da6a3ce929d0e0e4736", b.trace_id)
        assert.are.equal("00f067aa0ba902b7", b.span_id)
        assert.are.equal("m1", b.messages[1].message_id)
        for _, k in ipairs({ "type", "task_id", "conversation_id" }) do
            assert.are.equal(a[k], b[k], k)
        end
        assert.are.equal(#a.messages, #b.messages)
        assert.are.equal(a.messages[1].role, b.messages[1].role)
        assert.are.equal(a.messages[1].content, b.messages[1].content)
        assert.are.same(a.artifacts, b.artifacts)
    end)

    it("decodes Bindu's cancel with null trace fields", function()
        local t = assert(task.decode('{"operation":"cancel","params":{"task_id":"x"},"trace_id":null,"span_id":null}'))
        assert.are.equal("cancel", t.type)
        assert.are.equal("x", t.task_id)
        assert.is_nil(t.trace_id)
        assert.are.same({}, t.messages)
    end)

    it("round-trips what the producer writes", function()
        local s = task.encode({ type = "run", task_id = "rt", messages = { "héllo €" } })
        local t = assert(task.decode(s))
        assert.are.equal("héllo €", t.messages[1].content)
    end)

    local malformed = {
        { "not json at all", "invalid JSON" },
        { "{\"type\":\"run\",", "invalid JSON" },
        { "[1,2,3]", "not a JSON object (got an array)" },
        { "[]", "not a JSON object (got an array)" },
        { "42", "not a JSON object (got number)" },
        { "null", "not a JSON object (got null)" },
        { '"run"', "not a JSON object (got string)" },
        { "{}", "neither 'type'" },
        { '{"type":"explode","task_id":"a"}', "unknown type 'explode'" },
        { '{"operation":"explode","params":{"task_id":"a"}}', "unknown operation 'explode'" },
        { '{"type":"run","messages":[{"role":"user","content":"x"}]}', "task_id is required" },
        { '{"type":"run","task_id":7,"messages":[{"role":"user","content":"x"}]}', "task_id must be a string" },
        { '{"type":"run","task_id":"a","messages":"hello"}', "messages must be an array" },
        { '{"type":"run","task_id":"a","messages":{"role":"user"}}', "messages must be an array" },
        { '{"type":"run","task_id":"a","messages":[42]}', "messages[1] must be an object" },
        { '{"type":"run","task_id":"a","messages":[{"role":"user","content":5}]}', "messages[1].content must be a string" },
        { '{"type":"run","task_id":"a"}', "a run needs at least one message" },
        { '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x"}],"artifacts":"none"}', "artifacts must be an array" },
        { '{"operation":"run","params":"x"}', "params must be an object" },
        { '{"operation":"run","params":{"task_id":"a"}}', "a run needs at least one message" },
        { '{"type":"run","task_id":"a","messages":[{"role":"user","content":"x"}],"n":NaN}', "invalid JSON" },
        { "{\"type\":\"run\",\"task_id\":\"a\xff\"}", "invalid UTF-8 at byte" },
        { '{"type":5,"task_id":"a"}', "type must be a string (got number)" },
        { '{"type":"run\\u0000","task_id":"a"}', "unknown type 'run\\x00' (expected run, pause, resume or cancel)" },
        { '{"type":"run","task_id":""}', "task_id must not be empty" },
        { '{"type":"cancel","task_id":"victim\\u0000attacker"}', "task_id contains a control character (U+0000 at byte 6)" },
        { '{"type":"run","task_id":"a\\u001b[2J","messages":[{"role":"user","content":"x"}]}',
          "task_id contains a control character (U+001B at byte 1)" },
        { '{"type":"run","task_id":"a\\u009b","messages":[{"role":"user","content":"x"}]}',
          "task_id contains a control character (U+009B at byte 1)" },
        { '{"type":"run","task_id":"a","conversation_id":"\\u007f","messages":[{"role":"user","content":"x"}]}',
          "conversation_id contains a control character (U+007F at byte 0)" },
        { '{"operation":"cancel","params":{"task_id":"v\\r"}}', "params.task_id contains a control character (U+000D at byte 1)" },
        { '{"operation":"run","params":{"task_id":"a","context_id":"c\\n","message":{"role":"user","parts":[]}}}',
          "params.context_id contains a control character (U+000A at byte 1)" },
        { '{"type":"run","task_id":"' .. ("a"):rep(257) .. '"}', "task_id is longer than 256 bytes" },
        { '{"type":"run","task_id":"a","conversation_id":[],"messages":[]}', "conversation_id must be a string (got table)" },
        { '{"type":"run","task_id":"a","messages":[]}', "a run needs at least one message" },
        { '{"type":"run","task_id":"a","messages":[[1]]}', "messages[1] must be an object (got an array)" },
        { '{"type":"run","task_id":"a","messages":[{"role":"","content":"x"}]}', "messages[1].role must be a non-empty string" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"},{"role":"u","parts":{"a":1}}]}',
          "messages[2].parts must be an array" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":null}]}', "messages[1] needs content or parts" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"metadata":[1]}', "metadata must be an object" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"trace_id":1}', "trace_id must be a string (got number)" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"timeout":0}',
            "timeout must be a positive number of seconds, at most 365 days" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"timeout":1e400}',
            "timeout must be a positive number of seconds, at most 365 days" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"timeout":1e9}',
            "timeout must be a positive number of seconds, at most 365 days" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"max_attempts":2.5}',
          "max_attempts must be a whole number, at least 1" },
        { '{"type":"run","task_id":"a","messages":[{"role":"u","content":"x"}],"max_attempts":0}',
          "max_attempts must be a whole number, at least 1" },
    }
    for _, case in ipairs(malformed) do
        it("gives a reason for: " .. case[2], function()
            local t, why = task.decode(case[1], 1024)
            assert.is_nil(t)
            assert.truthy(why:find(case[2], 1, true), why)
        end)
    end

    it("takes max_attempts as the producer writes it (JSON numbers decode as floats)", function()
        local s = task.encode({ type = "run", task_id = "ma", messages = { "x" }, max_attempts = 3, timeout = 2.5 })
        local t = assert(task.decode(s))
        assert.are.equal(3, t.max_attempts)
        assert.are.equal("integer", math.type(t.max_attempts))
        assert.are.equal(2.5, t.timeout)
    end)

    it("clears nulls from messages and fills content from text parts, joined as Bindu joins them", function()
        local t = assert(task.decode('{"type":"run","task_id":"p","conversation_id":null,"messages":[{"role":"user",'
            .. '"content":null,"parts":[{"kind":"text","text":"a"},{"text":"b"},{"kind":"data","text":"c"},'
            .. '{"kind":"text","text":5},3,{"kind":"text","text":"d"}],"extra":null}],"metadata":null}'))
        -- Bindu: " ".join(p["text"] for p in parts if p.get("kind") == "text" and "text" in p)
        assert.are.same({ role = "user", content = "a d", parts = t.messages[1].parts }, t.messages[1])
        assert.is_nil(t.conversation_id)
        assert.is_nil(t.metadata)
        assert.are.same({}, t.artifacts)
    end)

    it("joins text parts exactly as Bindu's own Python does", function()
        -- Bindu's MessageConverter._extract_text_content, run by python3 on the same parts.
        local cases = {
            '[{"kind":"text","text":"a"},{"kind":"text","text":"b"}]',
            '[{"kind":"text","text":""},{"kind":"text","text":"x"},{"kind":"text","text":""}]',
            '[{"kind":"data","data":{},"text":"d"},{"kind":"text","text":"t\\nu"},{"kind":"file","file":{"bytes":"QQ=="},"text":"f"}]',
            '[{"kind":"text","text":"only"}]',
            '[]',
        }
        for _, parts in ipairs(cases) do
            local py = io.popen("python3 -c " .. ("%q"):format(
                "import json,sys; parts=json.loads(sys.argv[1]); "
                .. "sys.stdout.write(' '.join(p['text'] for p in parts if p.get('kind')=='text' and 'text' in p))")
                :gsub("\\\n", "\\n") .. " '" .. parts .. "'")
            local want = py:read("a")
            py:close()
            local t = assert(task.decode('{"operation":"run","params":{"task_id":"j","context_id":"c","message":'
                .. '{"role":"user","parts":' .. parts .. '}}}'))
            assert.are.equal(want, t.messages[1].content, parts)
        end
    end)

    describe("the #bq header line", function()
        local body = '{"type":"run","task_id":"h","messages":[{"role":"user","content":"x"}]}'
        it("counts only when the broker found the message sealed", function()
            local raw = '#bq {"attempt":99,"redelivered":1}\n' .. body
            local t, why, _, header = task.decode(raw, 1024, false)
            assert.is_nil(t)
            assert.are.equal(task.UNSEALED, why)
            assert.are.same({ attempt = 1, body = 0 }, header) -- the whole message is kept
            t, why, _, header = task.decode(raw, 1024, true)
            assert.are.equal("h", t.task_id, why)
            assert.are.equal(99, header.attempt)
            assert.are.equal(1, header.redelivered)
            assert.are.equal(#raw - #body, header.body)
        end)
        local bad = {
            { '{"attempt":-1000000}', "binduq header field 'attempt' must be a whole number from 1 to 1000000" },
            { '{"attempt":0}', "'attempt' must be a whole number from 1" },
            { '{"attempt":2.5}', "'attempt' must be a whole number" },
            { '{"attempt":1e300}', "'attempt' must be a whole number" },
            { '{"attempt":"2"}', "'attempt' must be a whole number" },
            { '{"attempt":2,"redelivered":0}', "'redelivered' must be a whole number from 1" },
            { '{"attempt":2,"deferred":true}', "'deferred' must be a whole number" },
            { '{"attempt":1,"requeued":-1}', "'requeued' must be a whole number" },
            { '[1]', "binduq header line is not a JSON object" },
            { '{"attempt":2', "binduq header line is not a JSON object" },
            { '{"pad":"' .. ("p"):rep(1100) .. '"}', "binduq header line longer than 1024 bytes" },
        }
        for _, case in ipairs(bad) do
            it("refuses a sealed header that is out of bounds: " .. case[2], function()
                local t, why = task.decode("#bq " .. case[1] .. "\n" .. body, 4096, true)
                assert.is_nil(t)
                assert.truthy(why:find(case[2], 1, true), why)
            end)
        end
        it("refuses a header line kept in the body by a recovery", function()
            local t, why = task.decode('#bq {"attempt":2,"redelivered":1}\n#bq {"attempt":99}\n' .. body, 4096, true)
            assert.is_nil(t)
            assert.truthy(why:find("a #bq header line binduq did not write", 1, true), why)
        end)
        it("counts the header in the size limit", function()
            local raw = '#bq {"pad":"' .. ("p"):rep(900) .. '"}\n' .. body
            local t, why = task.decode(raw, 200, true)
            assert.is_nil(t)
            assert.truthy(why:find(("message too large (%d bytes; max_message_size is 200)"):format(#raw), 1, true), why)
        end)
    end)

    it("refuses a message over the size limit", function()
        local big = '{"type":"run","task_id":"a","messages":[{"role":"user","content":"' .. ("x"):rep(200) .. '"}]}'
        local t, why = task.decode(big, 100)
        assert.is_nil(t)
        assert.truthy(why:find("message too large", 1, true))
        assert.truthy(task.decode(big, 1000))
    end)

    it("reports what it learned of a malformed task", function()
        local t, why, partial = task.decode('{"type":"run","task_id":"known","messages":"bad"}')
        assert.is_nil(t)
        assert.truthy(why)
        assert.are.equal("known", partial.task_id)
        assert.are.equal("run", partial.type)
    end)

    it("keeps error messages short and valid UTF-8", function()
        local _, why = task.decode('{"type":"' .. ("é"):rep(100) .. '","task_id":"a"}')
        assert.truthy(utf8.len(why))
        assert.truthy(#why < 120)
    end)
end)

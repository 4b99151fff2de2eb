-- Both wire formats through Redis, and malformed messages: each set aside in the dead-letter
-- list, byte for byte, with its reason, while the valid tasks around them complete.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local json = require("binduq.json")
local bq = require("binduq")

describe("#redis messages", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("decodes the native and the Bindu format to the same task", function()
        local queue = "it:fmt:" .. math.random(1, 1e9)
        local dump = queue .. ":dump"
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/dump_worker.lua", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BQ_DUMP_LIST = dump },
        })
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        -- Two task ids: a second run of one task would be a duplicate, acknowledged unrun.
        assert(s:push_raw('{"type":"run","task_id":"T","conversation_id":"C",'
            .. '"messages":[{"role":"user","content":"What is AI?"}],"artifacts":[],"timestamp":"2024-12-09T14:30:00Z"}'))
        assert(s:push_raw('{"operation":"run","params":{"task_id":"T2","context_id":"C","message":{"message_id":"m",'
            .. '"kind":"message","parts":[{"kind":"text","text":"What is AI?"}],"role":"user","metadata":{}}},'
            .. '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}'))
        local got = proc.wait_for(function()
            local n = tonumber(server:cli("LLEN", dump))
            return n == 2 and n
        end, 20)
        assert.are.equal(2, got)
        assert.are.equal(0, proc.stop(w, 10))
        -- Two handler states may finish in either order: tell them apart by format.
        local got_tasks = {}
        for i = 0, 1 do
            local t = json.decode(server:cli("LINDEX", dump, tostring(i)))
            got_tasks[t.format] = t
        end
        local native, bindu = got_tasks.native, got_tasks.bindu
        assert.truthy(native)
        assert.truthy(bindu)
        for _, k in ipairs({ "type", "conversation_id" }) do
            assert.are.equal(native[k], bindu[k], k)
        end
        assert.are.equal("T", native.task_id)
        assert.are.equal("T2", bindu.task_id)
        assert.are.equal("What is AI?", native.messages[1].content)
        assert.are.equal(native.messages[1].content, bindu.messages[1].content)
        assert.are.equal(native.messages[1].role, bindu.messages[1].role)
        assert.are.equal("4bf92f3577b34da6a3ce929d0e0e4736", bindu.trace_id)
        s:close()
    end)

    it("sets every kind of malformed message aside and keeps going", function()
        local queue = "it:bad:" .. math.random(1, 1e9)
        local bad = {
            { "this is { not json", "invalid JSON" },
            { '[{"type":"run","task_id":"arr"}]', "not a JSON object (got an array)" },
            { '{"type":"teleport","task_id":"u1"}', "unknown type 'teleport'" },
            { '{"type":"run","messages":[{"role":"user","content":"no id"}]}', "task_id is required" },
            { '{"type":"run","task_id":"w1","messages":"not a list"}', "messages must be an array" },
            { '{"type":"run","task_id":"big","messages":[{"role":"user","content":"' .. ("x"):rep(33 * 1024 * 1024) .. '"}]}',
              "message too large" },
            { '{"type":"run","task_id":"utf","messages":[{"role":"user","content":"caf\xc3"}]}', "invalid UTF-8" },
        }
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua examples/worker.lua 2", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue },
        })
        -- valid tasks around and between the bad ones
        s:run{ task_id = "good-0", messages = { "first" } }
        for i, b in ipairs(bad) do
            assert(s:push_raw(b[1]))
            s:run{ task_id = "good-" .. i, messages = { "after " .. i } }
        end
        local dead = proc.wait_for(function()
            local n = s:dead_letter_count()
            return n == #bad and n
        end, 30)
        assert.are.equal(#bad, dead)
        proc.wait_for(function()
            local _, n = (proc.read(w.log) or ""):gsub("completed task_id=good%-", "")
            return n == #bad + 1
        end, 30)
        assert.are.equal(0, proc.stop(w, 10), "the worker exits cleanly after all that")
        local log = proc.read(w.log)
        for i = 0, #bad do
            assert.truthy(log:find("completed task_id=good-" .. i .. " ", 1, true), "good-" .. i)
        end
        local entries = assert(s:dead_letters())
        assert.are.equal(#bad, #entries)
        local by_raw = {}
        for _, e in ipairs(entries) do by_raw[e.message] = e end
        for _, b in ipairs(bad) do
            -- byte for byte; a message too large keeps its first 256 bytes
            local e = by_raw[b[1]] or by_raw[b[1]:sub(1, 256)]
            if #b[1] > 1024 * 1024 then assert.is_true(e and e.truncated and e.size == #b[1]) end
            assert.truthy(e, "not in the dead-letter list: " .. b[1]:sub(1, 60))
            assert.truthy(e.reason:find(b[2], 1, true), e.reason)
            assert.are.equal(queue, e.queue)
            assert.are.equal(0, e.attempts)
            assert.truthy(e.worker:find(":", 1, true))
        end
        assert.are.equal("u1", by_raw[bad[3][1]].task_id)
        -- one log line per malformed message, with the reason
        local _, nlog = log:gsub("warn malformed ", "")
        assert.are.equal(#bad, nlog)
        assert.are.equal("0", server:cli("LLEN", queue))
        s:close()
    end)

    -- A zero byte used to pass every validator and cut the id in storage and on the control
    -- channel: a cancel of "victim\0attacker" canceled the running task "victim".
    it("refuses an id with a control character, which then reaches no other task", function()
        local queue = "it:ctl:" .. math.random(1, 1e9)
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua examples/worker.lua 2", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue },
        })
        s:run{ task_id = "victim", messages = { "sleep:1500" } }
        assert(proc.wait_for(function() return server:cli("LLEN", queue) == "0" end, 10))
        local hostile = {
            { '{"type":"cancel","task_id":"victim\\u0000attacker"}', "task_id contains a control character (U+0000 at byte 6)" },
            { '{"type":"pause","task_id":"victim\\n"}', "task_id contains a control character (U+000A at byte 6)" },
            { '{"type":"run","task_id":"v\\u009b2J","messages":[{"role":"user","content":"x"}]}',
              "task_id contains a control character (U+009B at byte 1)" },
            { '{"operation":"cancel","params":{"task_id":"victim\\u0000"}}',
              "params.task_id contains a control character (U+0000 at byte 6)" },
            { '{"type":"run","task_id":"ok","conversation_id":"c\\u007f","messages":[{"role":"user","content":"x"}]}',
              "conversation_id contains a control character (U+007F at byte 1)", "ok" },
        }
        for _, h in ipairs(hostile) do assert(s:push_raw(h[1])) end
        proc.wait_for(function() return (proc.read(w.log) or ""):find("completed task_id=victim ", 1, true) end, 20)
        assert.are.equal(0, proc.stop(w, 10))
        local log = proc.read(w.log)
        assert.truthy(log:find("completed task_id=victim ", 1, true),
                      "the running task did not complete; the worker's log:\n" .. log:sub(-3000))
        assert.falsy(log:find("canceled", 1, true))
        local entries = assert(s:dead_letters())
        assert.are.equal(#hostile, #entries)
        local by_raw = {}
        for _, e in ipairs(entries) do by_raw[e.message] = e end
        for _, h in ipairs(hostile) do
            local e = by_raw[h[1]]
            assert.truthy(e, h[1])
            assert.are.equal(h[2], e.reason)
            assert.are.equal(h[3], e.task_id) -- a bad id is not repeated as the entry's task_id
        end
        s:close()
    end)
end)

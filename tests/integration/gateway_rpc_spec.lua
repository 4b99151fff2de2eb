-- The A2A gateway's JSON-RPC edges (lua/binduq/gateway.lua) against a real gateway process
-- (examples/agent_gateway.lua, or `binduq-lua serve` with Redis), driven with curl: what a
-- request may hold and what comes back for it. A request the encoder cannot answer fails that
-- request, not the process; ids are echoed as they came, only scalars; notifications get no
-- answer; task ids follow the scheduler's rule before they reach a Redis key; the JSON the
-- gateway writes is valid UTF-8. The rate limit's buckets are counted on a gateway made in
-- this process (bq.gateway), the one place its table can be read.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local json = require("binduq.json")

local start = require("helpers.gateway").start -- (env, cmd) -> process, base URL, port

-- POSTs `body` (bytes as they are, from a file) to base/; returns the body, the HTTP status.
local function post(base, body, args)
    local file = proc.tmpdir() .. "/body.json"
    proc.write(file, body)
    local out = proc.sh(("curl -s -o - -w '\\n%%{http_code}' -H 'Content-Type: application/json' %s --data-binary @%s %s/")
        :format(args or "", proc.quote(file), base))
    local text, code = out:match("^(.*)\n(%d+)$")
    return text or out, tonumber(code)
end

-- POSTs a JSON-RPC request; returns the decoded answer and its text (HTTP 200 asserted).
local function rpc(base, body)
    local text, code = post(base, body)
    assert.are.equal(200, code, text)
    return assert(json.decode(text), text), text
end

-- Still serving: /healthz answers.
local function assert_alive(p, base)
    assert.is_true(proc.alive(p), "the gateway exited: " .. tostring(proc.read(p.log)))
    local out = proc.sh("curl -s " .. base .. "/healthz")
    assert.are.equal("ok", out)
end

local function nest(n) -- n arrays, one in another
    return ("["):rep(n) .. ("]"):rep(n)
end

local function send_body(id, part, extra)
    return ('{"jsonrpc":"2.0","id":%s,"method":"message/send","params":{"message":{"kind":"message",'
        .. '"messageId":"m1","role":"user","parts":[%s]%s}}}'):format(id, part, extra or "")
end

describe("#gateway gateway JSON-RPC edges", function()
    local gw, base
    setup(function() gw, base = start() end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    it("answers a request whose id JSON cannot carry back, and lives", function()
        local r = rpc(base, '{"id":1e400}') -- no jsonrpc: invalid, the id (inf) is not echoed
        assert.are.same({ -32600, json.null }, { r.error.code, r.id })
        r = rpc(base, '{"jsonrpc":"2.0","id":-1e400,"method":"tasks/get"}')
        assert.are.same({ -32600, json.null }, { r.error.code, r.id })
        assert_alive(gw, base)
    end)

    it("echoes only a scalar id in an invalid request's error", function()
        local r, text = rpc(base, '{"id":{"a":1},"method":"tasks/get"}')
        assert.are.same({ -32600, json.null }, { r.error.code, r.id }, text)
        r = rpc(base, '{"id":[1,2]}')
        assert.are.same({ -32600, json.null }, { r.error.code, r.id })
        r = rpc(base, '{"id":"x1"}')
        assert.are.same({ -32600, "x1" }, { r.error.code, r.id })
        r = rpc(base, '{"id":17}')
        assert.are.same({ -32600, 17 }, { r.error.code, r.id })
    end)

    it("echoes an integer id in all its digits, a string id as it came", function()
        for _, id in ipairs({ "123456789012345", "-123456789012345", "9007199254740992" }) do
            -- an error, a result from the loop (tasks/get) and one from the batch (a send)
            local _, text = rpc(base, ('{"jsonrpc":"2.0","id":%s,"method":"tasks/get","params":{"id":"none"}}'):format(id))
            assert.truthy(text:find('"id":' .. id .. ",", 1, true), text)
            local sent
            sent, text = rpc(base, send_body(id, '{"kind":"text","text":"hi"}'))
            assert.truthy(text:find('"id":' .. id .. ",", 1, true), text)
            _, text = rpc(base, ('{"jsonrpc":"2.0","id":%s,"method":"tasks/get","params":{"id":"%s"}}')
                :format(id, sent.result.id))
            assert.truthy(text:find('"id":' .. id .. ',"result":', 1, true), text)
        end
        local _, text = rpc(base, '{"jsonrpc":"2.0","id":"1.2345678901234e+14","method":"nope"}')
        assert.truthy(text:find('"id":"1.2345678901234e+14"', 1, true), text)
        _, text = rpc(base, '{"id":123456789012345}') -- an invalid request's error too
        assert.truthy(text:find('"id":123456789012345,', 1, true), text)
    end)

    it("does a notification's work and answers it 204, no body", function()
        local function notify(method, params, args)
            local text, code = post(base, ('{"jsonrpc":"2.0","method":"%s","params":%s}'):format(method, params),
                                    "--max-time 5 " .. (args or ""))
            assert.are.same({ 204, "" }, { code, text }, method)
        end
        local function msg(task)
            return ('{"message":{"kind":"message","messageId":"m1","role":"user","taskId":"%s",'
                .. '"parts":[{"kind":"text","text":"hi"}]}'):format(task)
        end
        notify("message/send", msg("note-1") .. "}")
        notify("message/send", msg("note-2") .. ',"configuration":{"blocking":true}}')
        notify("message/stream", msg("note-3") .. "}", "-N")
        notify("SendMessage", '{"message":{"messageId":"m","role":"ROLE_USER","taskId":"note-4","parts":[{"text":"hi"}]}}')
        notify("tasks/get", '{"id":"note-1"}')
        notify("tasks/get", '{"id":"nowhere"}') -- an error: not answered either
        notify("tasks/list", "{}")
        for _, task in ipairs({ "note-1", "note-2", "note-3", "note-4" }) do -- the work was done
            local r = rpc(base, ('{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"%s"}}'):format(task))
            assert.are.equal(task, r.result and r.result.id, task)
        end
        -- an invalid request is answered, id null; an id null is a request, not a notification
        local r = rpc(base, '{"jsonrpc":"2.0","params":{}}')
        assert.are.same({ -32600, json.null }, { r.error.code, r.id })
        r = rpc(base, '{"jsonrpc":"2.0","id":null,"method":"tasks/get","params":{"id":"note-1"}}')
        assert.are.same({ json.null, "note-1" }, { r.id, r.result and r.result.id })
    end)

    it("takes a configuration of null as none, and refuses one that is not an object", function()
        local msg = '{"message":{"kind":"message","messageId":"m1","role":"user","parts":[{"kind":"text","text":"hi"}]}'
        local r, text = rpc(base, '{"jsonrpc":"2.0","id":1,"method":"message/send","params":' .. msg .. ',"configuration":null}}')
        assert.are.equal("task", r.result and r.result.kind, text)
        r, text = rpc(base, '{"jsonrpc":"2.0","id":2,"method":"SendMessage","params":{"message":{"messageId":"m",'
            .. '"role":"ROLE_USER","parts":[{"text":"hi"}]},"configuration":null}}')
        assert.truthy(r.result and r.result.task, text)
        r, text = rpc(base, ('{"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"id":"%s","historyLength":null}}')
            :format(r.result.task.id))
        assert.truthy(r.result, text)
        for _, bad in ipairs({ "5", '"x"', "true", "[1]" }) do
            for _, m in ipairs({ "message/send", "message/stream", "SendMessage" }) do
                r, text = rpc(base, ('{"jsonrpc":"2.0","id":4,"method":"%s","params":%s,"configuration":%s}}'):format(m, msg, bad))
                assert.are.same({ -32602, 4, "params.configuration must be an object" },
                                { r.error and r.error.code, r.id, r.error and r.error.message }, text)
            end
        end
    end)

    it("refuses a request that is not valid UTF-8, and writes only valid UTF-8", function()
        local utf8_check = require("binduq.core").utf8_check
        for _, m in ipairs({ "message/send", "message/stream", "SendMessage" }) do
            local body = ('{"jsonrpc":"2.0","id":1,"method":"%s","params":{"message":{"kind":"message",'
                .. '"messageId":"u\xff\xfe","role":"user","parts":[{"kind":"text","text":"bad \xc3\x28 utf8"}]}}}')
                :format(m)
            local r, text = rpc(base, body)
            assert.are.same({ -32602, 1 }, { r.error and r.error.code, r.id }, text)
            assert.matches("UTF%-8", r.error.message)
            assert.is_true(utf8_check(text))
        end
        -- an id that is not UTF-8 is not echoed
        local r, text = rpc(base, '{"jsonrpc":"2.0","id":"i\xff","method":"tasks/get","params":{"id":"x"}}')
        assert.are.same({ -32602, json.null }, { r.error and r.error.code, r.id }, text)
        r, text = rpc(base, '{"id":"i\xff"}')
        assert.are.same({ -32600, json.null }, { r.error and r.error.code, r.id }, text)
        assert.is_true(utf8_check(text))
        -- escapes are UTF-8 once decoded: taken
        r, text = rpc(base, send_body(2, '{"kind":"text","text":"caf\\u00e9 \\ud83d\\ude00"}'))
        assert.are.equal("caf\u{e9} \u{1f600}", r.result and r.result.history[1].parts[1].text, text)
    end)

    it("refuses a message nested past what its answers can carry, before it is scheduled", function()
        for _, blocking in ipairs({ "false", "true" }) do
            local body = send_body(7, '{"kind":"data","data":' .. nest(195) .. '}',
                                   '},"configuration":{"blocking":' .. blocking)
            local r, text = rpc(base, body)
            assert.are.same({ -32602, 7 }, { r.error and r.error.code, r.id }, text)
            assert.matches("nests deeper", r.error.message)
        end
        -- a depth the answers carry is taken
        local r, text = rpc(base, send_body(8, '{"kind":"data","data":' .. nest(150) .. '}'))
        assert.are.equal("task", r.result and r.result.kind, text)
        -- a number out of JSON's range (it decodes as inf)
        r, text = rpc(base, send_body(9, '{"kind":"data","data":{"n":1e400}}'))
        assert.are.same({ -32602, 9 }, { r.error and r.error.code, r.id }, text)
        r = rpc(base, ('{"jsonrpc":"2.0","id":10,"method":"SendMessage","params":{"message":{"messageId":"m",'
            .. '"role":"ROLE_USER","parts":[{"text":"x"}]},"metadata":{"n":-1e400}}}'))
        assert.are.same({ -32602, 10 }, { r.error and r.error.code, r.id })
        assert_alive(gw, base)
    end)
end)

describe("#gateway gateway rate limit", function()
    it("forgets the bucket of an address once it is full again, when there are many", function()
        local bq = require("binduq")
        local core = require("binduq.core")
        local g = assert(bq.gateway{ host = "127.0.0.1", port = 0, push = false, rate = 1000 })
        local function count()
            local n = 0
            for _ in pairs(g.buckets) do n = n + 1 end
            return n
        end
        for i = 1, 10000 do assert.is_true(g:admitted(("10.%d.%d.1"):format(i // 256, i % 256))) end
        local t0 = core.monotonic()
        while core.monotonic() - t0 < 0.01 do end -- 10 ms: each of those buckets is full again
        for _ = 1, 1000 do g:admitted("192.0.2.2") end -- one client at its limit
        assert.is_false(g:admitted("192.0.2.2"))
        for i = 1, 5000 do g:admitted(("10.200.%d.%d"):format(i // 256, i % 256)) end
        local n, busy = count(), g.buckets["192.0.2.2"]
        g:close()
        assert.is_true(n <= 8192, "buckets: " .. n) -- 15,001 addresses seen
        assert.truthy(busy, "the bucket of a client at its limit is kept")
    end)
end)

describe("#redis #gateway gateway JSON-RPC edges, with Redis", function()
    local server, gw, base
    local env
    setup(function()
        server = redis.start()
        env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = "it:gwrpc", STORAGE_TYPE = "redis" }
        gw, base = start(env, "build/binduq-lua serve")
    end)
    teardown(function()
        local rc = proc.stop(gw, 10)
        server:stop() -- even when the gateway had exited
        assert.are.equal(0, rc)
    end)

    -- Schedules a run of a message (a Lua table) straight through the scheduler, as a
    -- producer elsewhere would; no worker runs it.
    local function schedule(task_id, message)
        local bq = require("binduq")
        local s = bq.scheduler{ scheduler = { url = server.url, queue_name = "it:gwrpc" }, storage = { type = "redis" } }
        local ok, err = s:run{ task_id = task_id, messages = { message } }
        s:close()
        assert(ok, err)
    end

    it("checks task ids by the scheduler's rule before they reach a key, and stores a push config once its run is accepted", function()
        local push = ',"configuration":{"pushNotificationConfig":{"url":"http://127.0.0.1:9/hook","token":"t"}}'
        local long = ("x"):rep(300)
        for _, bad in ipairs({ long, "ab\\u0001cd", "ab\\ncd" }) do
            for _, blocking in ipairs({ "false", "true" }) do
                local conf = push:gsub("}}$", '},"blocking":' .. blocking .. "}")
                local body = ('{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"kind":"message",'
                    .. '"messageId":"m1","role":"user","taskId":"%s","parts":[{"kind":"text","text":"hi"}]}%s}}'):format(bad, conf)
                local r, text = rpc(base, body)
                assert.are.same({ -32602, 1 }, { r.error and r.error.code, r.id }, text)
                assert.matches("params.message.taskId", r.error.message)
            end
            local r = rpc(base, ('{"jsonrpc":"2.0","id":2,"method":"message/stream","params":{"message":{"kind":"message",'
                .. '"messageId":"m1","role":"user","contextId":"%s","parts":[{"kind":"text","text":"hi"}]}}}'):format(bad))
            assert.are.same({ -32602, "params.message.contextId" }, { r.error and r.error.code, r.error.message:match("^%S+") })
            for _, m in ipairs({ "tasks/get", "tasks/cancel", "tasks/resubscribe", "GetTask", "CancelTask",
                                 "SubscribeToTask", "tasks/pushNotificationConfig/get" }) do
                r = rpc(base, ('{"jsonrpc":"2.0","id":3,"method":"%s","params":{"id":"%s"}}'):format(m, bad))
                assert.are.same({ -32602, 3 }, { r.error and r.error.code, r.id }, m)
            end
            for _, m in ipairs({ "tasks/pushNotificationConfig/set", "CreateTaskPushNotificationConfig" }) do
                r = rpc(base, ('{"jsonrpc":"2.0","id":4,"method":"%s","params":{"taskId":"%s","url":"http://127.0.0.1:9/h",'
                    .. '"pushNotificationConfig":{"url":"http://127.0.0.1:9/h"}}}'):format(m, bad))
                assert.are.same({ -32602, 4 }, { r.error and r.error.code, r.id }, m)
            end
        end
        local r = rpc(base, '{"jsonrpc":"2.0","id":5,"method":"tasks/get","params":{"id":"' .. long .. '"}}')
        assert.matches("longer than 256 bytes", r.error.message)
        assert.are.equal("", server:cli("KEYS", "*push*")) -- no config left for a refused task
        -- an accepted run has its inline config
        r = rpc(base, ('{"jsonrpc":"2.0","id":6,"method":"message/send","params":{"message":{"kind":"message",'
            .. '"messageId":"m1","role":"user","taskId":"ok-task","parts":[{"kind":"text","text":"hi"}]}%s}}'):format(push))
        assert.are.equal("ok-task", r.result and r.result.id)
        assert.matches("ok%-task", server:cli("KEYS", "*push*"))
    end)

    it("answers Internal error for a stored task no answer can carry, for that request alone", function()
        -- The producer refuses a message nested this deep (a worker could not decode it), so
        -- the record is written into the task storage as it is, as anyone with access to it,
        -- or a producer older than that check, could.
        local bq = require("binduq")
        local s = bq.scheduler{ scheduler = { url = server.url, queue_name = "it:gwrpc" }, storage = { type = "redis" } }
        local history = '[{"role":"user","parts":[{"kind":"data","data":' .. ("["):rep(196) .. ("]"):rep(196) .. "}]}]"
        assert(s:storage():create{ id = "deep-task", queue = "it:gwrpc", history = history })
        s:close()
        schedule("flat-task", { role = "user", parts = { { kind = "text", text = "hi" } } })
        for _, m in ipairs({ "tasks/get", "GetTask" }) do
            local r, text = rpc(base, ('{"jsonrpc":"2.0","id":"g1","method":"%s","params":{"id":"deep-task"}}'):format(m))
            assert.are.same({ -32603, "g1" }, { r.error and r.error.code, r.id }, text)
        end
        local r = rpc(base, '{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"id":"flat-task"}}')
        assert.are.equal("flat-task", r.result and r.result.id)
        -- a stream of it: an error event ends it
        local out = post(base, '{"jsonrpc":"2.0","id":3,"method":"tasks/resubscribe","params":{"id":"deep-task"}}',
                         "-N --max-time 5")
        local ev = assert(json.decode(out:match("data: ([^\n]+)") or ""), out)
        assert.are.same({ -32603, 3 }, { ev.error and ev.error.code, ev.id })
        assert_alive(gw, base)
        assert.matches("gateway_encode_failed", proc.read(gw.log) or "")
    end)
end)

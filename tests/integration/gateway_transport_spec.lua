-- The A2A gateway's HTTP transport (src/engine/gateway.c and the request gate of
-- lua/binduq/gateway.lua), against real processes as tests/integration/gateway_spec.lua
-- starts them: what a browser on another site may make it do (cross-site requests, DNS
-- rebinding), streams whose reader went away, the body limit, large stream events.

local proc = require("helpers.proc")
local json = require("binduq.json")

local start = require("helpers.gateway").start -- (env, cmd) -> process, base URL, port

-- curl with `args`; returns the body and the HTTP status.
local function curl(args)
    local out = proc.sh("curl -s --max-time 10 -o - -w '\\n%{http_code}' " .. args)
    local body, code = out:match("^(.*)\n(%d+)$")
    return body or out, tonumber(code)
end

local function send_body(task)
    return ('{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"kind":"message",'
        .. '"messageId":"m-%s","taskId":"%s","role":"user","parts":[{"kind":"text","text":"hi"}]}}}'):format(task, task)
end

local function get_body(task)
    return ('{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"id":"%s"}}'):format(task)
end

describe("#gateway the request gate", function()
    local gw, base, port
    setup(function() gw, base, port = start() end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    local function post(headers, body)
        local args = {}
        for _, h in ipairs(headers) do args[#args + 1] = "-H " .. proc.quote(h) end
        return curl(table.concat(args, " ") .. " --data-binary " .. proc.quote(body) .. " " .. base .. "/")
    end

    local function exists(task)
        local out, code = post({ "Content-Type: application/json" }, get_body(task))
        assert.are.equal(200, code, out)
        return json.decode(out).result ~= nil
    end

    it("refuses what another site's page can make a browser send, and runs nothing", function()
        local host = "evil.example:" .. port
        -- A form (text/plain) from another origin, to a name rebound to 127.0.0.1.
        local out, code = post({ "Content-Type: text/plain", "Origin: http://evil.example:" .. port,
                                 "Host: " .. host }, send_body("csrf-1"))
        assert.are.equal(403, code, out)
        -- The rebinding page's own requests are same-origin to the browser: the Host tells.
        out, code = post({ "Content-Type: application/json", "Origin: http://" .. host, "Host: " .. host },
                         send_body("csrf-2"))
        assert.are.equal(403, code, out)
        assert.truthy(out:find("Host", 1, true), out)
        -- Another origin to the right host.
        out, code = post({ "Content-Type: application/json", "Origin: http://evil.example" }, send_body("csrf-3"))
        assert.are.equal(403, code, out)
        out, code = post({ "Content-Type: application/json", "Origin: null" }, send_body("csrf-4"))
        assert.are.equal(403, code, out)
        -- A form's text/plain (or multipart, or no type) from this origin: 415.
        out, code = post({ "Content-Type: text/plain" }, send_body("csrf-5"))
        assert.are.equal(415, code, out)
        out, code = post({ "Content-Type: multipart/form-data; boundary=x" }, send_body("csrf-6"))
        assert.are.equal(415, code, out)
        out, code = post({ "Content-Type:" }, send_body("csrf-7"))
        assert.are.equal(415, code, out)
        for i = 1, 7 do assert.is_false(exists("csrf-" .. i), "csrf-" .. i .. " was scheduled") end
        -- Pushing a webhook URL (server-side request forgery) is refused alike.
        out, code = post({ "Content-Type: text/plain", "Origin: http://evil.example" },
                         '{"jsonrpc":"2.0","id":3,"method":"tasks/pushNotificationConfig/set","params":'
                         .. '{"taskId":"x","pushNotificationConfig":{"url":"http://10.0.0.1/"}}}')
        assert.are.equal(403, code, out)
    end)

    it("serves clients that are not browsers, and a page of its own origin", function()
        local ok = {
            { "Content-Type: application/json" },
            { "Content-Type: application/json; charset=utf-8" },
            { "Content-Type: application/a2a+json" },
            { "Content-Type: application/x-www-form-urlencoded" }, -- curl -d
            { "Content-Type: application/json", "Origin: http://127.0.0.1:" .. port },
            { "Content-Type: application/json", "Host: localhost:" .. port, "Origin: http://LOCALHOST:" .. port },
            { "Content-Type: application/json", "Host: [::1]:" .. port },
        }
        for i, headers in ipairs(ok) do
            local out, code = post(headers, send_body("fine-" .. i))
            assert.are.equal(200, code, table.concat(headers, ", ") .. ": " .. out)
            assert.is_true(exists("fine-" .. i), "fine-" .. i)
        end
        -- curl -d as the walkthrough sends it.
        local out, code = curl("-d " .. proc.quote(send_body("fine-curl")) .. " " .. base .. "/")
        assert.are.equal(200, code, out)
        -- The card stays public, whatever the Host or Origin.
        out, code = curl("-H 'Host: evil.example' -H 'Origin: http://evil.example' " .. base .. "/.well-known/agent-card.json")
        assert.are.equal(200, code, out)
        assert.truthy(json.decode(out).name, out)
    end)
end)

describe("#gateway the request gate with tokens", function()
    local gw, base
    setup(function() gw, base = start({ BINDUQ_GATEWAY_TOKENS = "t0ken" }) end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    it("takes any Host with a token (a rebinding page cannot send one), still no other origin", function()
        local out, code = curl("-H 'Authorization: Bearer t0ken' -H 'Content-Type: application/json' "
            .. "-H 'Host: agent.example.com' --data-binary " .. proc.quote(send_body("tok-1")) .. " " .. base .. "/")
        assert.are.equal(200, code, out)
        out, code = curl("-H 'Authorization: Bearer t0ken' -H 'Content-Type: application/json' "
            .. "-H 'Origin: http://evil.example' --data-binary " .. proc.quote(send_body("tok-2")) .. " " .. base .. "/")
        assert.are.equal(403, code, out)
    end)
end)

local function stream_body(i)
    return ('{"jsonrpc":"2.0","id":%d,"method":"message/stream","params":{"message":{"kind":"message",'
        .. '"messageId":"s%d","role":"user","parts":[{"kind":"text","text":"wait"}]}}}'):format(i, i)
end

describe("#gateway streams whose reader went away", function()
    local gw, base
    -- No worker: a streamed task stays queued and its stream waits for news that never comes.
    setup(function()
        gw, base = start({ MAX_CONNECTIONS = "3", KEEPALIVE = "0.3", POLL = "0.1" },
                         "build/binduq-lua tests/gateway/transport_gateway.lua")
    end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    it("are sent keepalives, so a closed one is noticed and its connection freed", function()
        local body = select(1, proc.sh("curl -sN --max-time 1.5 -H 'Content-Type: application/json' --data-binary "
            .. proc.quote(stream_body(1)) .. " " .. base .. "/"))
        assert.truthy(body:find('^data: {[^\n]*"submitted"'), body)
        assert.truthy(body:find("\n\n: keepalive\n\n", 1, true), body)
        -- Three streams (every connection there is) whose clients are gone after a second.
        proc.sh(("for i in 2 3 4; do curl -sN --max-time 1 -H 'Content-Type: application/json' "
            .. "--data-binary %s %s/ > /dev/null & done; wait"):format(proc.quote(stream_body(2)), base))
        local code = proc.wait_for(function()
            local _, c = curl("--max-time 1 " .. base .. "/healthz")
            return c == 200 and c or nil
        end, 6)
        assert.are.equal(200, code, "the gateway's connections stayed taken by streams nobody reads")
    end)
end)

describe("#gateway the body limit", function()
    local gw, base, port
    setup(function()
        gw, base, port = start({ MAX_BODY = "100000" }, "build/binduq-lua tests/gateway/transport_gateway.lua")
    end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    local function send(case)
        local out = proc.sh(("python3 tests/gateway/body_limit.py %s %s"):format(port, case))
        return assert(json.decode(out:match("[^\n]*$")), out)
    end

    it("refuses a body whose length is over it before reading any (no 100 Continue)", function()
        local r = send("expect")
        assert.are.equal("HTTP/1.1 413 Content Too Large", r.first)
        r = send("length")
        assert.are.equal("HTTP/1.1 413 Content Too Large", r.first)
        assert.is_true(r.sent <= 4 * 65536, "read " .. r.sent .. " bytes before it answered")
    end)

    it("closes the connection once a chunked body passes it", function()
        local r = send("chunked")
        assert.are.equal("", r.first)
        assert.is_true(r.sent <= 32 * 65536, "read " .. r.sent .. " bytes before it closed")
        -- and serves the next
        local out, code = curl(base .. "/healthz")
        assert.are.equal(200, code, out)
    end)
end)

describe("#gateway large stream events", function()
    local gw, base
    setup(function() gw, base = start() end)
    teardown(function() assert.are.equal(0, proc.stop(gw, 10)) end)

    it("sends an event over 1 MiB when the reader keeps up ('/' is escaped to '\\/': twice the request)", function()
        local file = proc.tmpdir() .. "/slash.json"
        proc.write(file, ('{"jsonrpc":"2.0","id":5,"method":"message/stream","params":{"message":{"kind":"message",'
            .. '"messageId":"sl1","taskId":"slash-task","role":"user","parts":[{"kind":"text","text":"%s"}]}}}')
            :format(string.rep("/", 600200)))
        local out, code = curl("-N -H 'Content-Type: application/json' --data-binary @" .. file .. " " .. base .. "/")
        assert.are.equal(200, code)
        local events = {}
        for data in out:gmatch("data: ([^\n]*)\n\n") do events[#events + 1] = json.decode(data) end
        assert.is_true(#events >= 2, ("%d bytes, %d events"):format(#out, #events))
        assert.truthy(#out > (1 << 20), #out)
        local first, last = events[1].result, events[#events].result
        assert.are.equal("slash-task", first.id)
        assert.are.equal(600200, #first.history[1].parts[1].text)
        assert.are.same({ "completed", true }, { last.status and last.status.state, last.final })
        -- The same task again, its history and artifact each 1.2 MB as JSON.
        out, code = curl("-N -H 'Content-Type: application/json' --data-binary "
            .. proc.quote('{"jsonrpc":"2.0","id":6,"method":"tasks/resubscribe","params":{"id":"slash-task"}}') .. " " .. base .. "/")
        assert.are.equal(200, code)
        local again = json.decode(out:match("^data: ([^\n]*)\n\n") or "null")
        assert.truthy(again, ("%d bytes: %s"):format(#out, out:sub(1, 200)))
        assert.are.equal("slash-task", again.result.id)
    end)
end)

-- The fake model server (tests/helpers/fakemodel.py) itself, checked with curl as the client:
-- a test of the HTTP client is only as good as the server it talks to, so here a client we
-- did not write shows that the delays, the streams, the sizes and the records are what
-- fakemodel.py says they are.

local proc = require("helpers.proc")
local fakemodel = require("helpers.fakemodel")
local json = require("binduq.json")
local core = require("binduq.core")

local q = proc.quote

-- Runs curl with `args` against srv; returns its output and the time it took (seconds).
local function curl(args)
    local t0 = core.monotonic()
    local out = proc.sh("curl -s --max-time 20 " .. args)
    return out, core.monotonic() - t0
end

local function chat_body(stream, text)
    return q(json.encode({ model = "fake", stream = stream,
                           messages = { { role = "system", content = "be brief" },
                                        { role = "user", content = text } } }))
end

describe("#http fake model server", function()
    local srv
    setup(function() srv = fakemodel.start() end)
    teardown(function() srv:stop() end)
    before_each(function() srv:reset() end)

    it("answers a chat completion after ?delay", function()
        local out, took = curl(("-X POST -H 'Content-Type: application/json' -d %s %s")
            :format(chat_body(false, "hello there"), q(srv.url .. "/v1/chat/completions?delay=0.5")))
        local doc = json.decode(out)
        assert.is_true(took >= 0.5, "took " .. took)
        assert.is_true(took < 2, "took " .. took)
        assert.are.equal("chat.completion", doc.object)
        assert.are.equal("fake", doc.model)
        assert.are.equal("assistant", doc.choices[1].message.role)
        assert.are.equal("echo: hello there", doc.choices[1].message.content)
        assert.are.equal("stop", doc.choices[1].finish_reason)
        assert.are.equal(3, doc.usage.completion_tokens)
        local st = srv:stats()
        assert.are.equal(1, st.requests)
        assert.are.equal(1, st.completed)
        assert.are.equal(0, st.open)
        local ev = st.events[1]
        assert.is_true(ev.closed - ev.started >= 0.5)
        assert.are.equal(200, ev.status)
    end)

    it("streams one event per token, paced, then [DONE]", function()
        -- Each data line stamped with the wall clock as it arrives.
        local out = proc.sh(("curl -sN --max-time 20 -X POST -d %s %s | while IFS= read -r l; do "
            .. "case \"$l\" in data:*) echo \"$(date +%%s.%%N) $l\";; esac; done")
            :format(chat_body(true, "ignored"), q(srv.url .. "/v1/chat/completions?tokens=5&pace=0.1")))
        local times, datas = {}, {}
        for t, d in out:gmatch("([%d.]+) data: ([^\n]*)") do
            times[#times + 1], datas[#datas + 1] = tonumber(t), d
        end
        -- The role event, five tokens, the finish event, [DONE].
        assert.are.equal(8, #datas)
        assert.are.equal("[DONE]", datas[8])
        local text = ""
        for i = 1, 7 do
            local doc = json.decode(datas[i])
            assert.are.equal("chat.completion.chunk", doc.object)
            text = text .. (doc.choices[1].delta.content or "")
            if i == 1 then assert.are.equal("assistant", doc.choices[1].delta.role) end
            if i == 7 then assert.are.equal("stop", doc.choices[1].finish_reason) end
        end
        assert.are.equal("w1 w2 w3 w4 w5", text)
        -- A pace before each token and before the finish: six gaps of 0.1 s.
        for i = 2, 7 do
            assert.is_true(times[i] - times[i - 1] >= 0.08, ("gap %d: %.3f"):format(i, times[i] - times[i - 1]))
        end
        assert.is_true(times[8] - times[1] >= 0.6)
        assert.is_true(times[8] - times[1] < 2)
    end)

    it("paces streams by --pace when a request names no ?pace", function()
        local paced = fakemodel.start{ pace = 0.1 }
        finally(function() paced:stop() end)
        local url = q(paced.url .. "/v1/chat/completions")
        -- "echo: a b": a pace before each of its 3 tokens and before the finish.
        local out, took = curl("-X POST -d " .. chat_body(true, "a b") .. " " .. url)
        assert.truthy(out:find("data: [DONE]", 1, true), out)
        assert.is_true(took >= 0.4 and took < 2, "took " .. took)
        local _, fast = curl("-X POST -d " .. chat_body(true, "a b") .. " " .. q(paced.url .. "/v1/chat/completions?pace=0"))
        assert.is_true(fast < 0.3, "took " .. fast)
    end)

    it("streams generic SSE with ids, event names, multi-line data and CRLF", function()
        local out = curl(q(srv.url .. "/sse?n=6&crlf=1"))
        assert.are.equal(6, select(2, out:gsub("id: %d+\r\n", "")))
        assert.are.equal(3, select(2, out:gsub("event: tick\r\n", "")))
        assert.are.equal(1, select(2, out:gsub(": keepalive\r\n", "")))
        assert.truthy(out:find("data: line 1 of 3\r\ndata: line 2 of 3\r\n\r\n", 1, true))
        assert.truthy(out:find("data:event 4\r\n", 1, true))
        assert.is_nil(out:find("[^\r]\n"))
    end)

    it("sends /big bodies of exactly N bytes, with or without Content-Length", function()
        local out = curl("-o /dev/null -w '%{size_download} %{http_code}' " .. q(srv.url .. "/big?bytes=1000000"))
        assert.are.equal("1000000 200", out)
        local hdr = curl("-D - -o /dev/null " .. q(srv.url .. "/big?bytes=300001&chunked=1"))
        assert.truthy(hdr:lower():find("transfer-encoding: chunked", 1, true))
        assert.is_nil(hdr:lower():find("content-length", 1, true))
        out = curl(q(srv.url .. "/big?bytes=300001&chunked=1"))
        assert.are.equal(300001, #out)
        assert.are.equal("0123456789abcdef0", out:sub(1, 17))
    end)

    it("answers /status with that status, and /redirect with a Location", function()
        local body, code = srv:get("/status?code=503&retry_after=2")
        assert.are.equal(503, code)
        assert.are.equal(503, json.decode(body).status)
        local hdr = curl("-D - -o /dev/null " .. q(srv.url .. "/status?code=429&retry_after=2"))
        assert.truthy(hdr:find("HTTP/1.1 429", 1, true))
        assert.truthy(hdr:find("Retry-After: 2", 1, true))
        local out = curl("-L -w ' %{http_code} %{num_redirects}' " .. q(srv.url .. "/redirect?to=/status%3Fcode%3D201"))
        assert.are.equal('{"status": 201} 201 1', out)
    end)

    it("echoes the method, headers and JSON body it received", function()
        local out = curl(("-X POST -H 'X-Test: yes' -H 'X-Request-Id: echo-1' -H 'Content-Type: application/json' -d %s %s")
            :format(q('{"a":1,"b":"two"}'), q(srv.url .. "/echo?k=v")))
        local doc = json.decode(out)
        assert.are.equal("POST", doc.method)
        assert.are.equal("/echo", doc.path)
        assert.are.equal("v", doc.query.k)
        assert.are.equal("yes", doc.headers["x-test"])
        assert.are.equal("application/json", doc.headers["content-type"])
        assert.are.equal(1, doc.json.a)
        assert.are.equal("two", doc.json.b)
        assert.are.equal(17, doc.body_bytes)
        assert.are.equal("echo-1", srv:stats().events[1].id)
    end)

    it("records a client that hangs up early", function()
        local t0 = core.now()
        local _, took = curl("--max-time 0.3 -H 'X-Request-Id: early' " .. q(srv.url .. "/delay?s=5"))
        assert.is_true(took < 1, "curl took " .. took)
        local st = proc.wait_for(function()
            local s = srv:stats()
            return s.events[1] and s.events[1].closed_by_client and s
        end, 2, 0.02)
        assert.truthy(st, "no closed_by_client event")
        local ev = st.events[1]
        assert.are.equal("early", ev.id)
        assert.are.equal("/delay", ev.path)
        assert.is_false(ev.completed)
        -- curl gives up 0.3 s after it started; the server sees it at once, not after 5 s.
        assert.is_true(ev.closed - ev.started >= 0.25, "closed after " .. (ev.closed - ev.started))
        assert.is_true(ev.closed - ev.started < 2, "closed after " .. (ev.closed - ev.started))
        assert.is_true(ev.closed - t0 < 2.5)
        assert.are.equal(1, st.requests)
        assert.are.equal(1, st.closed_by_client)
        assert.are.equal(0, st.completed)
        assert.are.equal(0, st.open)
    end)

    it("over TLS, with a self-signed certificate no client trusts", function()
        local tsrv = fakemodel.start{ tls = true }
        finally(function() tsrv:stop() end)
        assert.truthy(tsrv.url:find("^https://127%.0%.0%.1:%d+$"))
        local out = proc.sh("curl -s --max-time 5 " .. q(tsrv.url .. "/delay") .. "; echo \" rc=$?\"")
        assert.are.equal(" rc=60", out) -- CURLE_PEER_FAILED_VERIFICATION
        out = proc.sh(("curl -s --max-time 5 --cacert %s %s"):format(q(tsrv.cert), q(tsrv.url .. "/delay")))
        assert.are.equal('{"delay": 0.0}', out)
        assert.are.equal(1, tsrv:stats().completed)
    end)

    it("stops promptly on SIGTERM, with slow requests in flight", function()
        local other = fakemodel.start()
        local hang = proc.spawn("curl -s --max-time 30 " .. q(other.url .. "/slowloris?pace=0.1"))
        assert(proc.wait_for(function() return other:stats().open == 1 end, 5))
        local t0 = core.monotonic()
        assert.are.equal(0, other:stop())
        assert.is_true(core.monotonic() - t0 < 1)
        assert.truthy(proc.wait(hang, 5))
    end)
end)

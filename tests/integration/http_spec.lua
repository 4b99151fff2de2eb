-- HTTP calls from Lua (bq.http, ctx:http; src/net/http.c on libcurl) against the fake model
-- server (tests/helpers/fakemodel.py, a server we did not build the client for): requests and
-- bodies as the server saw them, streamed chat completions and event streams split in odd
-- places, the size limit, timeouts, a refused connection, a slow-loris server, TLS that must
-- not be trusted, redirects, 4xx/5xx, and that no message shows a secret. Then handlers in a
-- worker process against a real redis-server: a cancel, a pause, the handler's timeout and a
-- shutdown each close an in-flight call, seen from the server's side.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local cluster = require("helpers.cluster")
local fakemodel = require("helpers.fakemodel")
local bq = require("binduq")
local json = require("binduq.json")

local function free_port()
    -- A port nothing listens on: bind one, note it, close it.
    local out = proc.sh([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']])
    return tonumber(out)
end

-- The server's record of the request with X-Request-Id `id` (closed: nil while open).
local function event_of(srv, id)
    for _, e in ipairs(srv:stats().events) do
        if e.id == id then
            if e.closed == json.null then e.closed = nil end
            return e
        end
    end
end

describe("#http calls", function()
    local srv
    setup(function() srv = fakemodel.start() end)
    teardown(function() srv:stop() end)

    it("sends method, headers and a JSON body as the server sees them", function()
        local resp = assert(bq.http{ url = srv.url .. "/echo?x=1", method = "PUT",
                                     headers = { ["X-Trace"] = "abc", Accept = "application/json" },
                                     body = { n = 1, s = "é" } })
        assert.are.equal(200, resp.status)
        local seen = assert(resp:json())
        assert.are.equal("PUT", seen.method)
        assert.are.equal("abc", seen.headers["x-trace"])
        assert.are.equal("application/json", seen.headers["content-type"])
        assert.are.equal("binduq/" .. bq._VERSION, seen.headers["user-agent"])
        assert.are.same({ n = 1, s = "é" }, seen.json)
        assert.are.equal("application/json", resp.headers["content-type"]:match("^[^;]+"))
        -- A string body goes as it is; POST is the default with a body.
        seen = assert(bq.http{ url = srv.url .. "/echo", body = "a=b" }):json()
        assert.are.equal("POST", seen.method)
        assert.are.equal("a=b", seen.body)
    end)

    it("waits for a delayed answer and decodes a chat completion", function()
        local t0 = bq.monotonic()
        local resp = assert(bq.http{ url = srv.url .. "/v1/chat/completions?delay=0.3", method = "POST",
                                     body = { model = "m", messages = { { role = "user", content = "hi there" } } } })
        assert.is_true(bq.monotonic() - t0 >= 0.3)
        assert.are.equal("echo: hi there", resp:json().choices[1].message.content)
    end)

    it("streams a chat completion event by event, paced", function()
        local events, t0 = {}, bq.monotonic()
        local resp = assert(bq.http{
            url = srv.url .. "/v1/chat/completions?tokens=10&pace=0.02", method = "POST",
            body = { model = "m", stream = true, messages = { { role = "user", content = "x" } } },
            on_event = function(ev) events[#events + 1] = ev end })
        assert.is_true(bq.monotonic() - t0 >= 0.2)
        assert.are.equal(200, resp.status)
        assert.is_nil(resp.body)
        assert.are.equal("[DONE]", events[#events].data)
        local text = {}
        for i = 1, #events - 1 do
            local c = assert(json.decode(events[i].data))
            text[#text + 1] = c.choices[1].delta.content
        end
        assert.are.equal("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", table.concat(text))
    end)

    it("keeps the connection of a stream stopped at its last event, and closes one stopped mid-way", function()
        local function call(id)
            return assert(bq.http{
                -- the response ends 5 ms after its last event: a stop at that event comes first
                url = srv.url .. "/v1/chat/completions?tokens=3&end_after=0.005", headers = { ["X-Request-Id"] = id },
                body = { model = "m", stream = true, messages = { { role = "user", content = "x" } } },
                on_event = function(ev) return ev.data ~= "[DONE]" end })
        end
        call("warm-up") -- a connection to keep
        local before = srv:stats().connections -- (each stats call is a connection of curl's own)
        for i = 1, 5 do
            assert.is_true(call("done-" .. i).stopped)
        end
        -- the five calls on the warm-up's connection: the one new connection is the stats call's
        local opened = srv:stats().connections - before
        assert.are.equal(1, opened)
        for i = 1, 5 do assert.is_true(event_of(srv, "done-" .. i).completed) end
        -- stopped while the server goes on: the call returns at once and its transfer is closed
        local t0 = bq.monotonic()
        local resp = assert(bq.http{ url = srv.url .. "/sse?n=1000&pace=0.005", headers = { ["X-Request-Id"] = "mid" },
                                     on_event = function() return false end })
        assert.is_true(resp.stopped)
        assert.is_true(bq.monotonic() - t0 < 0.5)
        assert(proc.wait_for(function()
            local e = event_of(srv, "mid")
            return e and e.closed_by_client
        end, 2, 0.01), "the server did not see the stopped stream closed")
        assert.is_false(event_of(srv, "mid").completed)
    end)

    it("reads event streams with CRLF, lone CR, a BOM and pieces of 3 bytes alike", function()
        local function read(q)
            local evs = {}
            assert(bq.http{ url = srv.url .. "/sse?n=5" .. q, on_event = function(ev) evs[#evs + 1] = ev end })
            return evs
        end
        local plain = read("")
        assert.are.equal(5, #plain)
        assert.are.same(plain, read("&crlf=1"))
        assert.are.same(plain, read("&eol=cr&bom=1"))
        assert.are.same(plain, read("&split=3&tail=1"))
        -- a callback returning false stops the stream
        local n = 0
        local resp = assert(bq.http{ url = srv.url .. "/sse?n=50&pace=0.01",
                                     on_event = function() n = n + 1; return n < 3 end })
        assert.are.equal(3, n)
        assert.is_true(resp.stopped)
    end)

    it("hands out a chunked body in pieces and bounds what it takes", function()
        local total, pieces = 0, 0
        assert(bq.http{ url = srv.url .. "/big?bytes=300000&chunked=1",
                        on_chunk = function(s) total = total + #s; pieces = pieces + 1 end })
        assert.are.equal(300000, total)
        assert.is_true(pieces >= 1)
        for _, q in ipairs({ "", "&chunked=1" }) do
            local resp, err, code = bq.http{ url = srv.url .. "/big?bytes=2000000" .. q, max_bytes = 1000000 }
            assert.is_nil(resp)
            assert.are.equal("ETOOBIG", code)
            assert.matches("max_bytes", err)
        end
        assert.are.equal(100, #assert(bq.http{ url = srv.url .. "/big?bytes=100", max_bytes = 100 }).body)
    end)

    it("times out, and the server sees the connection closed", function()
        local t0 = bq.monotonic()
        local resp, err, code = bq.http{ url = srv.url .. "/delay?s=5", timeout = 0.3,
                                         headers = { ["X-Request-Id"] = "to-1" } }
        local took = bq.monotonic() - t0
        assert.is_nil(resp)
        assert.are.equal("ETIMEDOUT", code, err)
        assert.is_true(took < 1, "took " .. took)
        local e = proc.wait_for(function() local ev = event_of(srv, "to-1"); return ev and ev.closed and ev end, 3)
        assert.is_true(e.closed_by_client)
    end)

    it("reports a refused connection and a slow-loris server", function()
        local _, err, code = bq.http{ url = ("http://127.0.0.1:%d/"):format(free_port()) }
        assert.are.equal("ECONNREFUSED", code, err)
        local t0 = bq.monotonic()
        _, err, code = bq.http{ url = srv.url .. "/slowloris?pace=0.1&max=10", timeout = 0.8 }
        assert.are.equal("ETIMEDOUT", code, err)
        assert.is_true(bq.monotonic() - t0 < 2)
        _, err, code = bq.http{ url = srv.url .. "/slowloris?pace=3&max=10", idle_timeout = 1 }
        assert.are.equal("ETIMEDOUT", code, err)
    end)

    it("returns 4xx and 5xx as EHTTP with the response, and 3xx as they are", function()
        local resp, err, code, failed = bq.http{ url = srv.url .. "/status?code=503&retry_after=7" }
        assert.is_nil(resp)
        assert.are.equal("EHTTP", code)
        assert.matches("HTTP 503", err)
        assert.are.equal(503, failed.status)
        assert.are.equal("7", failed.headers["retry-after"])
        resp = assert(bq.http{ url = srv.url .. "/redirect?to=/delay%3Fs%3D0" })
        assert.are.equal(302, resp.status)
        assert.are.equal("/delay?s=0", resp.headers.location)
        resp = assert(bq.http{ url = srv.url .. "/redirect?to=/delay%3Fs%3D0", redirects = 1 })
        assert.are.equal(200, resp.status)
    end)

    it("never shows a URL's password or query, nor a header, in a message", function()
        local port = free_port()
        local _, err = bq.http{ url = ("http://user:hunter2pw@127.0.0.1:%d/v1?key=sk-query-secret"):format(port),
                                headers = { Authorization = "Bearer sk-header-secret" } }
        assert.matches("^GET http://127.0.0.1:%d+/v1: ", err)
        for _, secret in ipairs({ "hunter2pw", "sk%-query%-secret", "sk%-header%-secret", "user" }) do
            assert.is_nil(err:find(secret), err)
        end
        local _, e2 = bq.http{ url = srv.url .. "/status?code=401&key=sk-q2", headers = { Authorization = "Bearer sk-h2" } }
        assert.is_nil(e2:find("sk%-q2"), e2)
        assert.is_nil(e2:find("sk%-h2"), e2)
    end)

    it("raises on a bad option, naming it", function()
        local cases = {
            { { url = "ftp://x/" }, "http:// or https://" },
            { { url = srv.url, bogus = 1 }, "unknown option 'bogus'" },
            { { url = srv.url, method = "get" }, "method" },
            { { url = srv.url, headers = { ["X-A"] = "1\r\nX-B: 2" } }, "CR, LF" },
            { { url = srv.url, timeout = -1 }, "timeout" },
            { { url = srv.url, on_chunk = print, on_event = print }, "exclude" },
            { { url = srv.url, body = { f = print } }, "JSON" },
        }
        for _, c in ipairs(cases) do
            local ok, err = pcall(bq.http, c[1])
            assert.is_false(ok)
            assert.matches(c[2], tostring(err), 1, true)
        end
    end)
end)

describe("#http TLS", function()
    local srv
    setup(function() srv = fakemodel.start{ tls = true } end)
    teardown(function() srv:stop() end)

    it("refuses a certificate it does not trust, and takes one it is given", function()
        local resp, err, code = bq.http{ url = srv.url .. "/delay?s=0" }
        assert.is_nil(resp)
        assert.are.equal("ETLS", code, err)
        assert.are.equal(200, assert(bq.http{ url = srv.url .. "/delay?s=0", ca_file = srv.cert }).status)
        assert.are.equal(200, assert(bq.http{ url = srv.url .. "/delay?s=0", verify = false }).status)
    end)
end)

for _, per in ipairs({ 1, 20 }) do
describe("#redis #pg #http handlers, tasks_per_state = " .. per, function()
    local server, db, srv, dir
    setup(function()
        server = redis.start()
        db = pg.start()
        srv = fakemodel.start()
        dir = proc.tmpdir()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        srv:stop()
        server:stop()
        db:stop()
        bq.log_configure{ level = "info" }
    end)

    local function qname(tag) return ("it:http:%s:%d"):format(tag, math.random(1, 1e9)) end

    -- A worker process on queue q and a scheduler for it, both stopped when the test ends.
    local function start(q, env)
        local e = { BQ_TEST_MODEL_URL = srv.url, DATABASE_URL = db.url, BQ_TEST_PER_STATE = per,
                    BQ_TEST_CONCURRENCY = per > 1 and 1 or 2 }
        for k, v in pairs(env or {}) do e[k] = v end
        local w = cluster.worker(server, q, e, "tests/integration/fixtures/http_worker.lua", dir)
        local s = bq.scheduler{ scheduler = { url = server.url, queue_name = q },
                                storage = { type = "postgres", url = db.url } }
        finally(function()
            proc.stop(w)
            s:close()
        end)
        return w, s
    end

    -- Waits until the server has the request of task `id` open.
    local function in_flight(id)
        return proc.wait_for(function()
            local e = event_of(srv, id)
            return e and not e.closed and e
        end, 10)
    end

    local function closed(id)
        return proc.wait_for(function()
            local e = event_of(srv, id)
            return e and e.closed and e
        end, 5)
    end

    it("completes a streamed answer", function()
        local q = qname("ok")
        local _, s = start(q)
        s:run{ task_id = q .. "-1", messages = { "stream:/v1/chat/completions?tokens=5&pace=0.01" } }
        local t = cluster.wait_state(s, q .. "-1", "completed")
        assert.are.equal("w1 w2 w3 w4 w5", t.history[#t.history].content)
    end)

    it("a cancel closes the transfer at once, server side", function()
        local q = qname("cancel")
        local _, s = start(q)
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "stream:/v1/chat/completions?tokens=1000&pace=0.05" } }
        assert(in_flight(id), "the call never reached the server")
        proc.sleep(0.2)
        local t0 = bq.now()
        assert(s:cancel(id))
        local e = assert(closed(id), "the transfer was not closed")
        local took = e.closed - t0
        print(("\n# cancel to transfer closed (server side): %.1f ms"):format(took * 1000))
        assert.is_true(e.closed_by_client)
        -- 100 ms is the figure (make bench); the test fails on what a fault costs: a transfer
        -- left to the stream's end (50 s), not on a shared machine's stall.
        assert.is_true(took < 1, "closed after " .. took .. " s")
        cluster.wait_state(s, id, "canceled")
    end)

    it("a pause closes the transfer and checkpoints the text so far", function()
        local q = qname("pause")
        local _, s = start(q)
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "stream:/v1/chat/completions?tokens=1000&pace=0.02" } }
        assert(in_flight(id))
        proc.sleep(0.3)
        assert(s:pause(id))
        local t = cluster.wait_state(s, id, "paused")
        assert.is_true(closed(id).closed_by_client)
        local saved = t.checkpoint
        assert.are.equal("string", type(saved))
        assert.matches("^w1 w2", saved)
        assert.is_true(#saved < #"w1" * 1000)
    end)

    it("the handler's timeout closes the transfer and fails the attempt with ETIMEDOUT", function()
        local q = qname("timeout")
        local _, s = start(q)
        local id = q .. "-1"
        s:run{ task_id = id, timeout = 0.5, max_attempts = 1, messages = { "get:/delay?s=30" } }
        assert(in_flight(id))
        local e = assert(closed(id))
        assert.is_true(e.closed_by_client)
        assert.is_true(e.closed - e.started < 1.5, "open for " .. (e.closed - e.started) .. " s")
        local t = cluster.wait_state(s, id, "failed")
        assert.matches("ETIMEDOUT", json.encode(t))
    end)

    it("the shutdown deadline closes the transfer at once", function()
        local q = qname("stop")
        local w, s = start(q, { BINDUQ_SHUTDOWN_TIMEOUT = 1 })
        local id = q .. "-1"
        s:run{ task_id = id, messages = { "get:/delay?s=60" } }
        assert(in_flight(id))
        local t0 = bq.now()
        assert.are.equal(0, proc.stop(w, 10))
        local e = assert(closed(id))
        assert.is_true(e.closed_by_client)
        local took = e.closed - t0
        -- a fault: closed only when the grace after the deadline runs out (3 s), or at 60 s
        assert.is_true(took >= 0.9 and took < 2, "closed " .. took .. " s after SIGTERM")
    end)

    it("many calls wait at once; a cancel stops only its own", function()
        local q = qname("many")
        local _, s = start(q)
        local n = per > 1 and 10 or 2
        for i = 1, n do
            s:run{ task_id = q .. "-" .. i, messages = { "stream:/v1/chat/completions?tokens=40&pace=0.05" } }
        end
        for i = 1, n do assert(in_flight(q .. "-" .. i), "task " .. i .. " never reached the server") end
        local open = 0
        for _, e in ipairs(srv:stats().events) do
            if e.id:find(q, 1, true) == 1 and e.closed == json.null then open = open + 1 end
        end
        assert.are.equal(n, open) -- all in flight together, on one handler thread when per > 1
        local victim = q .. "-1"
        local t0 = bq.now()
        assert(s:cancel(victim))
        local e = assert(closed(victim))
        assert.is_true(e.closed_by_client)
        assert.is_true(e.closed - t0 < 0.5, "closed after " .. (e.closed - t0) .. " s") -- the stream: 2 s
        cluster.wait_state(s, victim, "canceled")
        for i = 2, n do
            local t = cluster.wait_state(s, q .. "-" .. i, "completed")
            assert.are.equal("w1 w2 w3", t.history[#t.history].content:sub(1, 8))
        end
    end)
end)
end

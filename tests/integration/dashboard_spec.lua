-- The web dashboard (binduq-lua dashboard, docs/dashboard.md) against a real redis-server
-- with prepared state: a worker (events_worker.lua) with tasks done, running, waiting for
-- input and dead-lettered, dead-letter entries with hostile task ids, reasons, codes and
-- bytes. Plain HTTP through curl: the page's headers, the API's JSON, CSRF, read-only mode,
-- the token. Then headless Chromium (fixtures/dashboard_driver.js, over the DevTools
-- protocol's pipe, loopback only) visits every page, requeues a dead letter and cancels a
-- running task by clicking, and the result is read back from Redis; no script of the
-- hostile strings runs, and each page's screenshot (kept in build/dashboard-shots/) is not
-- blank. Without chromium or node, that test is skipped with a message. With PostgreSQL as
-- the task storage (#pg), a task's state, history and list, and the operations the stored
-- state refuses or allows.

local pg = require("helpers.pg")
local proc = require("helpers.proc")
local redis = require("helpers.redis")
local bq = require("binduq")
local json = require("binduq.json")

local WORKER = "build/binduq-lua tests/integration/fixtures/events_worker.lua"
local SHOTS = "build/dashboard-shots"

local XSS_IMG = "<img src=x onerror=alert(1)>"
local XSS_SCRIPT = '"><script>window.__xss=1</script>'

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- curl: status, headers (lower-cased names), body.
local function http(method, url, opts)
    opts = opts or {}
    local dir = proc.tmpdir()
    local args = { "curl", "-s", "-m", "10", "-X", method, "-D", dir .. "/h", "-o", dir .. "/b", "-w", "%{http_code}" }
    for _, h in ipairs(opts.headers or {}) do
        args[#args + 1] = "-H"
        args[#args + 1] = h
    end
    if opts.user then
        args[#args + 1] = "-u"
        args[#args + 1] = opts.user
    end
    if opts.body then
        args[#args + 1] = "--data-binary"
        args[#args + 1] = opts.body
    end
    args[#args + 1] = url
    for i, a in ipairs(args) do args[i] = proc.quote(a) end
    local code = proc.sh(table.concat(args, " "))
    local headers = {}
    for name, value in (proc.read(dir .. "/h") or ""):gmatch("([%w%-]+):%s*([^\r\n]*)") do headers[name:lower()] = value end
    local body = proc.read(dir .. "/b") or ""
    os.execute("rm -rf " .. proc.quote(dir))
    return tonumber(code), headers, body
end

-- Starts a dashboard; returns the process and its base URL (from the line it prints).
local function start_dashboard(server, queue, extra)
    local p = proc.spawn("build/binduq-lua dashboard --url " .. proc.quote(server.url) .. " --queue " .. proc.quote(queue)
                         .. " " .. (extra or "--addr 127.0.0.1:0"),
                         { unset = { "DATABASE_URL", "POSTGRES_URL", "BINDUQ_DASHBOARD_TOKEN" } })
    local base = proc.wait_for(function()
        local log = proc.read(p.log) or ""
        return log:match("dashboard: (http://[%d.]+:%d+)/")
    end, 10)
    return p, base
end

local function csrf_of(base, user)
    local _, _, page = http("GET", base .. "/", { user = user })
    return page:match('name="bq%-csrf" content="(%x+)"')
end

-- The events of task id that the queue's stream keeps, by name: { started = n, ... }.
local function events_of(s, id)
    local f = assert(s:events{ since = "0", task_id = id })
    local n = {}
    for _ = 1, 1000 do
        local ev = f:next(0)
        if not ev then break end
        n[ev.event] = (n[ev.event] or 0) + 1
    end
    return n
end

local function has(cmd)
    return select(2, proc.sh("command -v " .. cmd)) == true
end

describe("#redis dashboard", function()
    local server, queue, s, worker, dash, base
    local function msg(t) return { { role = "user", content = t } } end

    setup(function()
        bq.log_configure{ level = "warn" }
        server = redis.start()
        queue = ("it:dash:%d"):format(math.random(1, 1e9))
        s = bq.scheduler{ url = server.url, queue_name = queue }
        -- a count from long ago, which the worker's first report of a minute deletes
        proc.sh(("redis-cli -h 127.0.0.1 -p %d HSET %s d:1 99 f:1 9"):format(server.port, proc.quote("{" .. queue .. "}:rates")))
        -- a recurring schedule as a worker declares it (cron-4's hash), and a delayed run
        proc.sh(("redis-cli -h 127.0.0.1 -p %d HSET %s nightly 1796400000 nightly:spec %s"):format(server.port,
            proc.quote("{" .. queue .. "}:cron"), proc.quote('{"cron":"0 0 3 * * *","tz":"UTC","missed":"skip"}')))
        assert(s:run{ task_id = "later-1", messages = msg("ok"), delay = 3600 })
        worker = proc.spawn(WORKER, { env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "warn" } })
        for _, id in ipairs({ "plain-fail", XSS_IMG, XSS_SCRIPT }) do assert(s:run{ task_id = id, messages = msg("fail") }) end
        assert(s:run{ task_id = "ok-1", messages = msg("ok") })
        assert(s:run{ task_id = "ask-1", messages = msg("ask") })
        assert(s:run{ task_id = "slow-1", messages = msg("slow") })
        assert(proc.wait_for(function()
            return s:dead_letter_count() == 3 and s:inflight_count() >= 1 and (events_of(s, "slow-1").started or 0) >= 1
        end, 20), "the prepared state did not come about")
        -- Entries as a hostile writer could push them: markup in every field, control bytes,
        -- invalid UTF-8 and a NUL in the message.
        local header = json.encode{ reason = XSS_IMG .. " " .. XSS_SCRIPT, task_id = "hostile-reason", type = "<b>run</b>",
                                    error = { code = XSS_SCRIPT, message = XSS_IMG, retryable = false } }
        local file = proc.tmpdir() .. "/entry"
        proc.write(file, header .. "\n\27[2J\0\255\254 <script>window.__xss=2</script>")
        proc.sh(("redis-cli -h 127.0.0.1 -p %d -x LPUSH %s < %s"):format(server.port, proc.quote("{" .. queue .. "}:dlq"),
                                                                      proc.quote(file)))
        assert.are.equal(4, s:dead_letter_count())
        dash, base = start_dashboard(server, queue)
        assert(base, "the dashboard did not start: " .. tostring(proc.read(dash.log)))
    end)

    teardown(function()
        if dash then proc.stop(dash, 5) end
        if worker then proc.stop(worker, 10) end
        if s then s:close() end
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("serves the page with a strict Content-Security-Policy and a CSRF token, and its assets", function()
        local code, h, page = http("GET", base .. "/")
        assert.are.equal(200, code)
        assert.matches("^text/html", h["content-type"])
        assert.matches("script%-src 'self'", h["content-security-policy"])
        assert.matches("frame%-ancestors 'none'", h["content-security-policy"])
        assert.are.equal("nosniff", h["x-content-type-options"])
        assert.matches('name="bq%-csrf" content="%x+"', page)
        assert.matches('name="bq%-read%-only" content="0"', page)
        assert.is_nil(page:find("<script>", 1, true)) -- no inline script: only <script src>
        assert.are.equal(200, (http("GET", base .. "/app.js")))
        assert.are.equal(200, (http("GET", base .. "/app.css")))
        assert.are.equal(404, (http("GET", base .. "/nothing")))
        -- the live stream too carries the security headers
        local sh = {}
        for name, value in proc.sh("curl -s -N -m 2 -D - -o /dev/null " .. proc.quote(base .. "/api/stream"))
                               :gmatch("([%w%-]+):%s*([^\r\n]*)") do
            sh[name:lower()] = value
        end
        assert.matches("^text/event%-stream", sh["content-type"])
        assert.matches("frame%-ancestors 'none'", sh["content-security-policy"])
        assert.are.equal("nosniff", sh["x-content-type-options"])
        assert.are.equal("no-referrer", sh["referrer-policy"])
        assert.are.equal("no-store", sh["cache-control"])
    end)

    it("gives queues, workers and dead letters as JSON, hostile strings as data", function()
        -- rates as the worker reports them (every 5 s, report-N.lua): ok-1 completed, three
        -- tasks failed twice each (retried once, then dead-lettered)
        local o, done, failed
        proc.wait_for(function()
            local code, _, body = http("GET", base .. "/api/overview")
            assert.are.equal(200, code)
            o = assert(json.decode(body))
            done, failed = 0, 0
            for _, p in ipairs(o.history.points) do done, failed = done + p.done, failed + p.failed end
            return done == 1 and failed == 6
        end, 15)
        assert.are.equal(queue, o.queues[1].queue)
        assert.are.equal(4, o.queues[1].dead)
        assert.are.equal(60, #o.history.points)
        assert.are.equal(1, done)
        assert.are.equal(6, failed)
        assert.is_true(o.queues[1].processed_per_min <= 1 and o.queues[1].failed_per_min <= 6)
        assert.is_true(math.abs(o.history.from - bq.now()) < 120)
        -- the worker as it describes itself, and what its in-flight list holds
        assert.are.equal(1, #o.workers)
        local w = o.workers[1]
        assert.are.equal(queue, w.queue)
        assert.are.equal(2, w.concurrency)
        assert.are.equal(1, w.per_slot)
        assert.are.equal("at-least-once", w.delivery)
        assert.are.equal(w.id:match("^([^:]+)"), w.host)
        assert.are.equal(1, w.completed)
        assert.are.equal(6, w.failed)
        assert.are.same({ "slow-1" }, w.current_ids)
        assert.are.equal("slow-1", w.current)
        local old_count = proc.sh(("redis-cli -h 127.0.0.1 -p %d HMGET %s d:1 f:1"):format(server.port,
                                                                                 proc.quote("{" .. queue .. "}:rates")))
        assert.are.equal("\n", old_count) -- both gone (two empty lines)
        local code, _, body = http("GET", base .. "/api/dead/" .. hex(json.encode{ queue = queue }))
        assert.are.equal(200, code)
        local d = assert(json.decode(body))
        assert.are.equal(4, d.total)
        local ids = {}
        for _, e in ipairs(d.entries) do ids[e.task_id] = e end
        assert.truthy(ids[XSS_IMG] and ids[XSS_SCRIPT] and ids["plain-fail"])
        assert.are.equal(XSS_SCRIPT, ids["hostile-reason"].code)
        -- one entry in full: its bytes escaped as binduq shows outside text
        code, _, body = http("GET", base .. "/api/dead-entry/" .. hex(json.encode{ queue = queue, fp = ids["hostile-reason"].fp }))
        assert.are.equal(200, code)
        local e = assert(json.decode(body))
        assert.matches("\\x1b[2J\\x00\\xff\\xfe", e.message, 1, true)
        assert.is_nil(e.message:find("[%z\1-\31\127]"))
        -- a filter: a substring of the reason
        code, _, body = http("GET", base .. "/api/dead/" .. hex(json.encode{ queue = queue, filter = { reason = "onerror" } }))
        assert.are.equal(200, code)
        d = assert(json.decode(body))
        assert.are.equal(1, d.matched)
        assert.are.equal("hostile-reason", d.entries[1].task_id)
        -- parameters that are not hex JSON
        assert.are.equal(400, (http("GET", base .. "/api/dead/abc")))
        -- a queue the dashboard does not show
        assert.are.equal(404, (http("GET", base .. "/api/dead/" .. hex(json.encode{ queue = "other" }))))
    end)

    it("has a worker's description go with it when it stops", function()
        local q2 = queue .. ":short"
        local key = "{" .. q2 .. "}:worker:*"
        local function keys()
            return (proc.sh(("redis-cli -h 127.0.0.1 -p %d --scan --pattern %s"):format(server.port, proc.quote(key))))
        end
        local w2 = proc.spawn(WORKER, { env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q2, BINDUQ_LOG_LEVEL = "warn" } })
        local ok = proc.wait_for(function() return keys():find("worker", 1, true) ~= nil end, 10)
        proc.stop(w2, 10)
        assert.is_true(ok, "no description: " .. tostring(proc.read(w2.log)))
        assert.are.equal("", keys())
    end)

    it("lists recurring schedules and delayed operations, and pauses and resumes a schedule", function()
        local code, _, body = http("GET", base .. "/api/schedules/" .. hex(json.encode{ queue = queue }))
        assert.are.equal(200, code)
        local d = assert(json.decode(body))
        assert.are.equal(1, #d.schedules)
        local r = d.schedules[1]
        assert.are.equal("nightly", r.name)
        assert.are.equal("0 0 3 * * *", r.cron)
        assert.is_true(r.next > bq.now() and r.next % 86400 == 3 * 3600)
        assert.are.equal(1, d.delayed.total)
        local e = d.delayed.entries[1]
        assert.are.equal("later-1", e.task_id)
        assert.are.equal("run", e.type)
        assert.is_false(e.retry)
        assert.is_true(math.abs(e.due - (bq.now() + 3600)) < 120)
        local csrf = assert(csrf_of(base))
        local function post(path, doc)
            doc.csrf = csrf
            local c, _, b = http("POST", base .. path, { headers = { "Content-Type: application/json" }, body = json.encode(doc) })
            return c, json.decode(b)
        end
        local c2, a = post("/api/schedule/pause", { queue = queue, name = "nightly" })
        assert.are.equal(200, c2)
        assert.are.equal("paused", a.state)
        c2, a = post("/api/schedule/resume", { queue = queue, name = "nightly" })
        assert.are.equal(200, c2)
        assert.are.equal("active", a.state)
        assert.are.equal(404, (post("/api/schedule/pause", { queue = queue, name = "nobody" })))
        assert.are.equal(400, (post("/api/schedule/pause", { queue = queue })))
    end)

    it("refuses a POST without the CSRF token or JSON, and other methods", function()
        local csrf = assert(csrf_of(base))
        local body = json.encode{ queue = queue, all = true }
        assert.are.equal(403, (http("POST", base .. "/api/dead/delete", { headers = { "Content-Type: application/json" }, body = body })))
        local wrong = json.encode{ queue = queue, all = true, csrf = csrf:gsub("%x$", "x") }
        assert.are.equal(403, (http("POST", base .. "/api/dead/delete", { headers = { "Content-Type: application/json" }, body = wrong })))
        -- what a form of another site can send: not JSON
        local form = json.encode{ queue = queue, all = true, csrf = csrf }
        assert.are.equal(415, (http("POST", base .. "/api/dead/delete", { headers = { "Content-Type: text/plain" }, body = form })))
        assert.are.equal(415, (http("POST", base .. "/api/dead/delete",
                                    { headers = { "Content-Type: application/x-www-form-urlencoded" }, body = form })))
        -- a POST whose Origin is not this server's (a browser always sends one)
        local good = { "Content-Type: application/json", "Origin: http://evil.example" }
        assert.are.equal(403, (http("POST", base .. "/api/dead/delete", { headers = good, body = form })))
        assert.are.equal(405, (http("OPTIONS", base .. "/api/dead/delete")))
        assert.are.equal(405, (http("DELETE", base .. "/api/dead/delete")))
        assert.are.equal(4, s:dead_letter_count())
    end)

    it("drives in Chromium: every page, a requeue and a cancel by clicks, no hostile script runs", function()
        if not (has("chromium") and has("node")) then
            pending("chromium or node is not installed (apt-get install chromium nodejs): the browser test is skipped")
            return
        end
        local before = events_of(s, "plain-fail").started or 0
        os.execute("rm -rf " .. SHOTS)
        local out = proc.sh(("timeout 120 node tests/integration/fixtures/dashboard_driver.js %s %s %s %s %s %s")
                            :format(proc.quote(base), proc.quote(SHOTS), proc.quote(queue), "plain-fail", "slow-1",
                                    proc.quote(XSS_IMG)))
        local r = json.decode(out:match("[^\n]*$"))
        assert(r, "the driver printed no result: " .. out)
        assert.are.same({}, r.errors)
        assert.is_true(r.ok)
        assert.are.same({ "overview", "workers", "scheduled", "dead-letters", "requeued", "dead-letter-entry", "canceled",
                          "phone-dark" }, r.steps)
        assert.are.same({}, r.dialogs) -- no alert() of <img onerror>
        assert.is_false(r.xss)          -- no window.__xss of <script>
        assert.are.equal(9, #r.shots)
        -- the schedule was paused by the click
        assert.are.equal("1", proc.sh(("redis-cli -h 127.0.0.1 -p %d HGET %s nightly:paused"):format(server.port,
                                                                               proc.quote("{" .. queue .. "}:cron"))))
        for _, sh in ipairs(r.shots) do
            assert.is_true(sh.colours >= 16 and sh.top_share < 0.97, "blank screenshot: " .. json.encode(sh))
            assert.is_true(#(proc.read(sh.file) or "") > 5000, sh.file)
        end
        -- In Redis: the requeued entry ran again (a new start), the canceled task stopped.
        assert(proc.wait_for(function() return (events_of(s, "plain-fail").started or 0) > before end, 15),
               "the requeued task did not run again")
        assert(proc.wait_for(function() return (events_of(s, "slow-1").canceled or 0) >= 1 end, 15),
               "the canceled task did not stop")
    end)

    it("deletes and requeues every entry matching a filter", function()
        local csrf = assert(csrf_of(base))
        local function post(path, doc)
            doc.csrf = csrf
            local code, _, body = http("POST", base .. path, { headers = { "Content-Type: application/json" },
                                                               body = json.encode(doc) })
            return code, json.decode(body)
        end
        -- a bulk action is a job on the server: 202 with its id, then its progress
        local function finish(job)
            local j
            assert(proc.wait_for(function()
                local _, _, body = http("GET", base .. "/api/job/" .. hex(json.encode{ id = job }))
                j = json.decode(body)
                return j and j.finished
            end, 10, 0.05), "the job did not finish")
            return j
        end
        local code, r = post("/api/dead/delete", { queue = queue, filter = { reason = "onerror" } })
        assert.are.equal(202, code)
        local j = finish(r.job)
        assert.are.equal(1, j.done)
        assert.are.equal("delete", j.action)
        assert.is_nil(j.error)
        for _, e in ipairs(s:dead_letters()) do assert.are_not.equal("hostile-reason", e.task_id) end
        code = post("/api/dead/requeue", { queue = queue })
        assert.are.equal(400, code) -- neither an entry, a filter nor all = true
        code, r = post("/api/dead/requeue", { queue = queue, filter = { task_id = XSS_SCRIPT } })
        assert.are.equal(202, code)
        assert.are.equal(1, finish(r.job).done)
        assert.are.equal(404, (http("GET", base .. "/api/job/" .. hex(json.encode{ id = "999" }))))
        code, r = post("/api/dead/requeue", { queue = queue, fp = "0000000000000000-1" })
        assert.are.equal(404, code)
        assert.matches("no such dead%-letter entry", r.error)
    end)

    it("requeues thousands of entries as a job that goes on while other requests are answered", function()
        local N = 5000
        local q = queue .. ":bulk"
        local file = proc.tmpdir() .. "/bulk"
        local lines = {}
        local key = "{" .. q .. "}:dlq"
        for i = 1, N do
            local entry = json.encode{ task_id = "bulk-" .. i, reason = "r", queue = q } .. "\n"
                          .. json.encode{ type = "run", task_id = "bulk-" .. i, messages = { "x" } }
            lines[i] = ("*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"):format(#key, key, #entry, entry)
        end
        proc.write(file, table.concat(lines))
        proc.sh(("redis-cli -h 127.0.0.1 -p %d --pipe < %s"):format(server.port, proc.quote(file)))
        local sq = bq.scheduler{ url = server.url, queue_name = q }
        assert.are.equal(N, sq:dead_letter_count())
        local d2, base2 = start_dashboard(server, q)
        local ok, err = pcall(function()
            local csrf = assert(csrf_of(base2))
            local code, _, body = http("POST", base2 .. "/api/dead/requeue", { headers = { "Content-Type: application/json" },
                body = json.encode{ queue = q, all = true, csrf = csrf } })
            assert.are.equal(202, code)
            local job = json.decode(body).job
            local mid, j = 0, nil
            assert(proc.wait_for(function()
                assert.are.equal(200, (http("GET", base2 .. "/api/overview"))) -- answered meanwhile
                j = json.decode(select(3, http("GET", base2 .. "/api/job/" .. hex(json.encode{ id = job }))))
                if not j.finished and j.seen > 0 and j.seen < N then mid = mid + 1 end
                return j.finished
            end, 60, 0.01), "the job did not finish")
            assert.is_true(mid >= 1, "no progress was seen between the start and the end")
            assert.are.equal(N, j.done)
            assert.are.equal(N, j.total)
            assert.are.equal(0, sq:dead_letter_count())
            assert.are.equal(N, sq.client:length("ready", q))
            -- another bulk action on the same queue meanwhile is refused; after, allowed
            local o = json.decode(select(3, http("GET", base2 .. "/api/overview")))
            assert.are.equal(1, #o.jobs)
            assert.is_true(o.jobs[1].finished)
        end)
        proc.stop(d2, 5)
        sq:close()
        assert(ok, err)
    end)

    it("requeues all as the list was when the job started, not what is dead-lettered meanwhile", function()
        local q = queue .. ":meanwhile"
        local sq = bq.scheduler{ url = server.url, queue_name = q }
        local function push(id)
            assert(sq.client:command(q, "LPUSH", "{" .. q .. "}:dlq", json.encode{ task_id = id, reason = "r", queue = q }
                                     .. "\n" .. json.encode{ type = "run", task_id = id, messages = { "x" } }))
        end
        for i = 1, 1200 do push("old-" .. i) end
        local d = assert(require("binduq.dashboard").new{ url = server.url, queues = { q } })
        local ok, err = pcall(function()
            local _, status = d:start_job(d:shown(q), "requeue", nil)
            assert.are.equal(202, status)
            local steps = 0
            while d:advance_jobs() do -- one page a step, as the loop moves it
                steps = steps + 1
                if steps == 1 then for i = 1, 10 do push("new-" .. i) end end -- e.g. failed again
                assert.is_true(steps < 50, "the job goes on")
            end
            local j = d.jobs["1"]
            assert.is_nil(j.error)
            assert.are.equal(1200, j.done)
            assert.are.equal(10, sq:dead_letter_count())
            for _, e in ipairs(sq:dead_letters()) do assert.matches("^new%-", e.task_id) end
        end)
        d:close()
        sq:close()
        assert(ok, err)
    end)

    it("without a token, answers only requests whose Host names this machine (DNS rebinding)", function()
        local port = base:match(":(%d+)$")
        local code, _, body = http("GET", base .. "/", { headers = { "Host: evil.example:" .. port } })
        assert.are.equal(403, code)
        assert.matches("Host header", body)
        assert.are.equal(403, (http("GET", base .. "/api/overview", { headers = { "Host: 127.0.0.1.evil.example" } })))
        assert.are.equal(200, (http("GET", base .. "/api/overview", { headers = { "Host: localhost:" .. port } })))
        assert.are.equal(200, (http("GET", base .. "/api/overview", { headers = { "Host: [::1]:" .. port } })))
    end)

    it("refuses every action in read-only mode", function()
        local p, b = start_dashboard(server, queue, "--addr 127.0.0.1:0 --read-only")
        finally(function() proc.stop(p, 5) end)
        assert(b, proc.read(p.log))
        local _, _, page = http("GET", b .. "/")
        assert.matches('name="bq%-read%-only" content="1"', page)
        local csrf = page:match('name="bq%-csrf" content="(%x+)"')
        local n = s:dead_letter_count()
        local code = http("POST", b .. "/api/dead/delete", { headers = { "Content-Type: application/json" },
                                                             body = json.encode{ queue = queue, all = true, csrf = csrf } })
        assert.are.equal(403, code)
        code = http("POST", b .. "/api/task/cancel", { headers = { "Content-Type: application/json" },
                                                       body = json.encode{ id = "ask-1", csrf = csrf } })
        assert.are.equal(403, code)
        assert.are.equal(n, s:dead_letter_count())
        assert.are.equal(200, (http("GET", b .. "/api/overview")))
        assert.are.equal(0, proc.stop(p, 5))
    end)

    it("needs the token for every request when given one, and a token to listen beyond loopback", function()
        local p, b = start_dashboard(server, queue, "--addr 127.0.0.1:0 --token s3cret")
        finally(function() proc.stop(p, 5) end)
        assert(b, proc.read(p.log))
        local code, h = http("GET", b .. "/")
        assert.are.equal(401, code)
        assert.matches("^Basic", h["www-authenticate"])
        assert.are.equal(401, (http("GET", b .. "/api/overview")))
        assert.are.equal(401, (http("GET", b .. "/api/overview", { headers = { "Authorization: Bearer wrong" } })))
        assert.are.equal(401, (http("GET", b .. "/api/overview", { user = "admin:wrong" })))
        assert.are.equal(200, (http("GET", b .. "/api/overview", { headers = { "Authorization: Bearer s3cret" } })))
        assert.are.equal(200, (http("GET", b .. "/", { user = "admin:s3cret" })))
        -- with a token, any Host (a proxy's name): the token is what a page of another site lacks
        assert.are.equal(200, (http("GET", b .. "/api/overview", { headers = { "Authorization: Bearer s3cret",
                                                                               "Host: dash.example" } })))
        assert.are.equal(0, proc.stop(p, 5))
        -- not loopback, no token: refused before listening
        local out, ok = proc.sh(("BINDUQ_DASHBOARD_TOKEN= build/binduq-lua dashboard --url %s --addr 0.0.0.0:0")
                                :format(proc.quote(server.url)))
        assert.is_false(ok)
        assert.matches("needs a token", out)
    end)
end)

describe("#redis dashboard as an option", function()
    local server
    setup(function() server = redis.start() end)
    teardown(function() server:stop() end)

    -- The SSE stream at url: how many overview events arrive within `secs` seconds.
    local function stream_events(url, secs)
        local out = proc.sh(("curl -sN -m %d %s"):format(secs, proc.quote(url)))
        local n = 0
        for _ in out:gmatch("data: {\"time\"") do n = n + 1 end
        return n
    end

    it("of a worker: served from the worker's own loop, live, the worker in it", function()
        local q = ("it:dashw:%d"):format(math.random(1, 1e9))
        local w = proc.spawn(WORKER, { env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q, DASH_ADDR = "127.0.0.1:0",
                                               BINDUQ_LOG_LEVEL = "info" }, unset = { "BINDUQ_DASHBOARD_TOKEN" } })
        local port = proc.wait_for(function() return (proc.read(w.log) or ""):match("dashboard_listening port=(%d+)") end, 10)
        local ok, err = pcall(function()
            assert(port, "no dashboard_listening: " .. tostring(proc.read(w.log)))
            local base = "http://127.0.0.1:" .. port
            local code, _, page = http("GET", base .. "/")
            assert.are.equal(200, code)
            assert.matches('name="bq%-csrf"', page)
            local o = json.decode(select(3, http("GET", base .. "/api/overview")))
            assert.are.equal(q, o.queues[1].queue)
            assert.are.equal(1, #o.workers)
            assert.are.equal(2, o.workers[1].concurrency)
            -- the stream ticks once a second while the worker waits for tasks
            assert.is_true(stream_events(base .. "/api/stream", 3) >= 2)
            -- and the worker still works
            local s = bq.scheduler{ url = server.url, queue_name = q }
            assert(s:run{ task_id = "w-ok", messages = { { role = "user", content = "ok" } } })
            assert.is_true(s:wait("w-ok", 10) ~= nil)
            s:close()
        end)
        assert.are.equal(0, proc.stop(w, 10))
        assert(ok, err)
    end)

    it("of the gateway: under /dashboard/ on its server, actions with the CSRF token", function()
        local q = ("it:dashg:%d"):format(math.random(1, 1e9))
        local s = bq.scheduler{ url = server.url, queue_name = q }
        proc.sh(("redis-cli -h 127.0.0.1 -p %d LPUSH %s %s"):format(server.port, proc.quote("{" .. q .. "}:dlq"),
                                                                     proc.quote('{"task_id":"dead-1","reason":"x"}\n{}')))
        local gw = proc.spawn("build/binduq-lua serve --dashboard --addr 127.0.0.1:0 --url " .. proc.quote(server.url)
                              .. " --queue " .. proc.quote(q), { unset = { "BINDUQ_DASHBOARD_TOKEN", "DATABASE_URL" } })
        local port = proc.wait_for(function() return (proc.read(gw.log) or ""):match("gateway_started port=(%d+)") end, 10)
        local ok, err = pcall(function()
            assert(port, "no gateway_started: " .. tostring(proc.read(gw.log)))
            local base = "http://127.0.0.1:" .. port
            local code, h = http("GET", base .. "/dashboard")
            assert.are.equal(308, code)
            assert.are.equal("/dashboard/", h.location)
            local _, hp, page = http("GET", base .. "/dashboard/")
            assert.matches("script%-src 'self'", hp["content-security-policy"])
            local csrf = assert(page:match('name="bq%-csrf" content="(%x+)"'))
            assert.matches('src="app.js"', page)
            assert.are.equal(200, (http("GET", base .. "/dashboard/app.js")))
            local o = json.decode(select(3, http("GET", base .. "/dashboard/api/overview")))
            assert.are.equal(q, o.queues[1].queue)
            assert.are.equal(1, o.queues[1].dead)
            assert.is_true(stream_events(base .. "/dashboard/api/stream", 3) >= 2)
            -- an action: without the token refused, with it done
            local body = json.encode{ queue = q, all = true }
            assert.are.equal(403, (http("POST", base .. "/dashboard/api/dead/delete",
                                        { headers = { "Content-Type: application/json" }, body = body })))
            code = http("POST", base .. "/dashboard/api/dead/delete", { headers = { "Content-Type: application/json" },
                                                                         body = json.encode{ queue = q, all = true, csrf = csrf } })
            assert.are.equal(200, code)
            assert.are.equal(0, s:dead_letter_count())
            -- the gateway's own routes are untouched
            assert.are.equal(200, (http("GET", base .. "/.well-known/agent-card.json")))
            assert.are.equal(404, (http("GET", base .. "/dashboardx")))
        end)
        proc.stop(gw, 5)
        s:close()
        assert(ok, err)
    end)

    it("describes every worker of a queue with many, in several script calls", function()
        local q = ("it:many:%d"):format(math.random(1, 1e9))
        -- (the scheduler is kept: a collected scheduler closes its client)
        local s = bq.scheduler{ url = server.url, queue_name = q }
        local c = s.client
        finally(function() s:close() end)
        local expiry = tostring(math.floor((bq.now() + 60) * 1000))
        for i = 1, 70 do
            local id = ("host:%d:w"):format(i)
            assert(c:command(q, "ZADD", "{" .. q .. "}:workers", expiry, id))
            assert(c:command(q, "SET", "{" .. q .. "}:worker:" .. id, json.encode{ concurrency = i, host = "host" }))
            assert(c:command(q, "LPUSH", "{" .. q .. "}:wip:" .. id, json.encode{ type = "run", task_id = "t" .. i }))
        end
        assert(c:command(q, "HSET", "{" .. q .. "}:rates", "d:" .. math.floor(bq.now() / 60), "7"))
        local cli = require("binduq.cli").data
        local _, list = cli.queue_stats(c, q, true)
        assert.are.equal(70, #list)
        local flat = cli.worker_details(c, q, list)
        assert.are.same({ "7" }, { flat[2] })
        for _, w in ipairs(list) do
            local i = tonumber(w.id:match("^host:(%d+):w$"))
            assert.are.equal(i, w.concurrency)
            assert.are.same({ "t" .. i }, w.current_ids)
        end
    end)

    it("refuses to start without Redis, or beyond loopback without a token", function()
        local out, okr = proc.sh("REDIS_URL= build/binduq-lua -e " .. proc.quote(
            'require("binduq").gateway{ dashboard = true }'))
        assert.is_false(okr)
        assert.matches("dashboard option needs Redis", out)
        out, okr = proc.sh(("REDIS_URL=%s BINDUQ_DASHBOARD_TOKEN= build/binduq-lua -e %s"):format(proc.quote(server.url),
            proc.quote('require("binduq").gateway{ host = "0.0.0.0", port = 0, dashboard = true }')))
        assert.is_false(okr)
        assert.matches("needs a token", out)
    end)
end)

describe("#redis dashboard without its Redis", function()
    it("answers 502 with the error, and the stream says what it cannot read", function()
        local server = redis.start()
        local p, b = start_dashboard(server, "it:dash:gone")
        finally(function()
            proc.stop(p, 5)
            server:stop()
        end)
        assert(b, proc.read(p.log))
        assert.are.equal(200, (http("GET", b .. "/api/overview")))
        server:stop()
        local code, _, body = http("GET", b .. "/api/overview")
        assert.are.equal(502, code)
        assert.is_string(json.decode(body).error)
        local events = proc.sh("curl -s -N -m 3 " .. proc.quote(b .. "/api/stream"))
        assert.matches("event: problem\ndata: {\"error\":", events, 1, true)
        assert.are.equal(0, proc.stop(p, 5))
    end)
end)

describe("#redis #pg dashboard with the task storage", function()
    local server, db, queue, s, worker, dash, base, csrf
    local function msg(t) return { { role = "user", content = t } } end

    local function state_of(id)
        local t = s:get_task(id)
        return t and t.state
    end

    local function post(path, doc)
        doc.csrf = csrf
        local code, _, body = http("POST", base .. path, { headers = { "Content-Type: application/json" },
                                                           body = json.encode(doc) })
        return code, json.decode(body)
    end

    setup(function()
        bq.log_configure{ level = "warn" }
        server = redis.start()
        db = pg.start()
        queue = ("it:dashpg:%d"):format(math.random(1, 1e9))
        s = bq.scheduler{ scheduler = { url = server.url, queue_name = queue }, storage = { type = "postgres", url = db.url } }
        worker = proc.spawn(WORKER, { env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, DATABASE_URL = db.url,
                                              BINDUQ_LOG_LEVEL = "warn" } })
        assert(s:run{ task_id = "ok-1", conversation_id = "ctx-1", messages = msg("ok") })
        assert(s:run{ task_id = "ask-1", messages = msg("ask") })
        assert(s:run{ task_id = "fail-1", messages = msg("fail") })
        assert(proc.wait_for(function()
            return state_of("ok-1") == "completed" and state_of("ask-1") == "input-required" and state_of("fail-1") == "failed"
                   and s:dead_letter_count() == 1
        end, 20), "the prepared state did not come about")
        dash = proc.spawn("build/binduq-lua dashboard --url " .. proc.quote(server.url) .. " --queue " .. proc.quote(queue)
                          .. " --addr 127.0.0.1:0 --database-url " .. proc.quote(db.url),
                          { unset = { "BINDUQ_DASHBOARD_TOKEN" } })
        base = proc.wait_for(function() return (proc.read(dash.log) or ""):match("dashboard: (http://[%d.]+:%d+)/") end, 10)
        assert(base, "the dashboard did not start: " .. tostring(proc.read(dash.log)))
        csrf = assert(csrf_of(base))
    end)

    teardown(function()
        if dash then proc.stop(dash, 5) end
        if worker then proc.stop(worker, 10) end
        if s then s:close() end
        server:stop()
        db:stop()
        bq.log_configure{ level = "info" }
    end)

    it("shows a task's stored state, history and events, and lists tasks", function()
        local _, _, page = http("GET", base .. "/")
        assert.matches('name="bq%-storage" content="1"', page)
        local code, _, body = http("GET", base .. "/api/task/" .. hex(json.encode{ id = "ok-1", queue = queue }))
        assert.are.equal(200, code)
        local d = assert(json.decode(body))
        assert.is_true(d.found)
        assert.are.equal("completed", d.task.state)
        assert.are.equal("ctx-1", d.task.context_id)
        assert.are.equal("ok", d.task.history[1].content)
        local seen = {}
        for _, e in ipairs(d.events) do seen[e.event] = true end
        assert.is_true(seen.started and seen.completed)
        code, _, body = http("GET", base .. "/api/tasks/" .. hex(json.encode{ queue = queue, state = "completed" }))
        assert.are.equal(200, code)
        d = assert(json.decode(body))
        assert.are.equal(1, #d.tasks)
        assert.are.equal("ok-1", d.tasks[1].task_id)
        -- pages of 2: every task once, the first page says there is more, the last does not
        local pages, ids = {}, {}
        for i, offset in ipairs({ 0, 2 }) do
            code, _, body = http("GET", base .. "/api/tasks/" .. hex(json.encode{ queue = queue, limit = 2, offset = offset }))
            assert.are.equal(200, code)
            pages[i] = assert(json.decode(body))
            assert.are.equal(offset, pages[i].offset)
            for _, t in ipairs(pages[i].tasks) do ids[#ids + 1] = t.task_id end
        end
        assert.are.equal(2, #pages[1].tasks)
        assert.is_true(pages[1].more)
        assert.are.equal(1, #pages[2].tasks)
        assert.is_false(pages[2].more)
        table.sort(ids)
        assert.are.same({ "ask-1", "fail-1", "ok-1" }, ids)
        code, _, body = http("GET", base .. "/api/task/" .. hex(json.encode{ id = "nobody", queue = queue }))
        assert.are.equal(200, code)
        assert.is_false(json.decode(body).found)
    end)

    it("shows a stored task and lists tasks by state in Chromium", function()
        if not (has("chromium") and has("node")) then
            pending("chromium or node is not installed (apt-get install chromium nodejs): the browser test is skipped")
            return
        end
        local out = proc.sh(("timeout 120 node tests/integration/fixtures/dashboard_driver.js %s %s %s --stored ok-1 completed")
                            :format(proc.quote(base), proc.quote(SHOTS), proc.quote(queue)))
        local r = json.decode(out:match("[^\n]*$"))
        assert(r, "the driver printed no result: " .. out)
        assert.are.same({}, r.errors)
        assert.are.same({ "task-stored", "task-list" }, r.steps)
        for _, sh in ipairs(r.shots) do
            assert.is_true(sh.colours >= 16 and sh.top_share < 0.97, "blank screenshot: " .. json.encode(sh))
        end
    end)

    it("refuses what the stored state forbids, as binduq-lua task does, and does the rest", function()
        local code, r = post("/api/task/cancel", { id = "ok-1", queue = queue })
        assert.are.equal(409, code)
        assert.matches("already completed", r.error)
        code, r = post("/api/task/resume", { id = "ask-1", queue = queue })
        assert.are.equal(409, code)
        assert.matches("waits for input", r.error)
        code = post("/api/task/retry", { id = "ok-1", queue = queue })
        assert.are.equal(409, code)
        -- a retry of the failed task: its dead-letter entry goes back to the queue and runs
        -- again (it fails again, maybe before a look at its state or the list could see it
        -- between: its attempts tell)
        local before = s:get_task("fail-1").attempts
        code, r = post("/api/task/retry", { id = "fail-1", queue = queue })
        assert.are.equal(200, code)
        assert.are.equal("dead_letter", r.result)
        assert(proc.wait_for(function() return (s:get_task("fail-1") or {}).attempts > before end, 10),
               "the retried task did not run again")
        -- the answer to a task waiting for input
        code, r = post("/api/task/resume", { id = "ask-1", queue = queue, message = "blue" })
        assert.are.equal(200, code)
        assert.are.equal("resume", r.operation)
        assert(proc.wait_for(function()
            for _, m in ipairs((s:get_task("ask-1") or {}).history or {}) do
                if m.content == "blue" then return true end
            end
        end, 10), "the resume did not reach the task's history")
    end)
end)

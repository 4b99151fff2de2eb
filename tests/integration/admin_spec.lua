-- The admin commands against a prepared queue: stats, workers, queue peek|purge (text and
-- --json), their help and errors, and `top` in a real terminal (tmux), captured.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local bq = require("binduq")
local json = require("binduq.json")

local function run(cmd, env)
    return proc.run("build/binduq-lua " .. cmd, { env = env, timeout = 30 })
end

describe("#redis admin commands", function()
    local server, q, env, w, s
    setup(function()
        bq.log_configure{ level = "off" }
        server = redis.start()
        q = "it:admin:" .. math.random(1, 1e9)
        env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q }
        s = bq.scheduler{ url = server.url, queue_name = q }
        -- One dead letter, one task in flight on a live worker, five waiting.
        assert(s:push_raw("not json"))
        w = cluster.worker(server, q, { BQ_TEST_CONCURRENCY = 1, BQ_TEST_BLOCK_TIMEOUT = 0.5 })
        assert(s:run{ task_id = "busy", messages = { "sleep:60000" } })
        assert(proc.wait_for(function() return s:inflight_count() == 1 and s:dead_letter_count() == 1 end, 10))
        for i = 1, 5 do assert(s:run{ task_id = "wait-" .. i, messages = { "x" } }) end
    end)
    teardown(function()
        proc.stop(w, 1)
        s:close()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("stats and workers, in text and --json", function()
        local rc, out = run("stats", env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find(q:gsub("%p", "%%%0") .. "%s+5%s+0%s+1%s+1%s+1"), out)
        rc, out = run("stats --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.same({ queue = q, ready = 5, delayed = 0, inflight = 1, dead = 1, workers = 1, seen = true },
                        doc.queues[1])
        rc, out = run("workers --json", env)
        assert.are.equal(0, rc, out)
        doc = json.decode(out)
        assert.are.equal(1, #doc.workers)
        assert.are.equal("busy", doc.workers[1].current)
        assert.are.equal(1, doc.workers[1].inflight)
        assert.is_true(doc.workers[1].lease_left > 0)
        -- what the worker reports of itself (report-N.lua): its concurrency, the dead letter
        -- (a malformed message: not a failed attempt), the task in flight
        assert.are.equal(1, doc.workers[1].concurrency)
        assert.are.equal(0, doc.workers[1].failed)
        assert.are.same({ "busy" }, doc.workers[1].current_ids)
        rc, out = run("workers", env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("1 worker record on", 1, true), out)
        assert.truthy(out:find("%s1%s+%d+%.%ds%s+1%s+0%s+0%s+busy"), out)
    end)

    it("stats says when a queue has never been seen, and names those that have", function()
        local rc, out = run("stats --queue " .. q .. ",nosuch:queue", env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("binduq-lua stats: no queue 'nosuch:queue' has been seen here (no keys exist for it)\n",
                               1, true), out)
        assert.is_nil(out:find("no queue '" .. q .. "'", 1, true), out)
        local known = out:match("queues with keys: ([^\n]*)\n")
        assert.truthy(known, out)
        local names = {}
        for n in known:gmatch("[^, ]+") do names[n] = true end
        assert.is_true(names[q], known)
        assert.is_nil(names["nosuch:queue"], known)
        rc, out = run("stats --json --queue nosuch:queue", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out:match("{[^\n]*")) -- the hint goes to stderr, the JSON to stdout
        assert.are.same({ queue = "nosuch:queue", ready = 0, delayed = 0, inflight = 0, dead = 0, workers = 0,
                          seen = false }, doc.queues[1])
    end)

    it("top --json prints a snapshot, or one document per refresh with --count", function()
        local rc, out = run("top --json --queue " .. q, env)
        assert.are.equal(0, rc, out)
        assert.is_nil(out:find("\27", 1, true), out)
        local lines = {}
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.are.equal(1, #lines, out)
        local doc = json.decode(lines[1])
        assert.truthy(doc.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), doc.time)
        assert.are.equal(q, doc.queues[1].queue)
        assert.are.equal(1, doc.queues[1].inflight)
        assert.are.equal(1, doc.queues[1].dead)
        assert.are.equal(1, doc.queues[1].workers)
        assert.truthy(lines[1]:find('"net_per_s":null', 1, true), lines[1]) -- no rate from one snapshot
        assert.are.equal(1, #doc.workers)
        assert.are.equal("busy", doc.workers[1].current)
        assert.are.equal(q, doc.workers[1].queue)
        rc, out = run("top --json --count 2 --interval 0.2 --queue " .. q, env)
        assert.are.equal(0, rc, out)
        lines = {}
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = json.decode(l) end
        assert.are.equal(2, #lines, out)
        assert.are.equal("number", type(lines[2].queues[1].net_per_s), out)
        rc, out = run("top --json --count 0", env)
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("--count must be a positive whole number", 1, true), out)
    end)

    it("shows the same attempt count, as an integer, in dlq text, --json and the log", function()
        local q3 = "it:attempts:" .. math.random(1, 1e9)
        local e3 = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q3 }
        local s3 = bq.scheduler{ url = server.url, queue_name = q3 }
        local w3 = cluster.worker(server, q3, { BQ_TEST_MAX_ATTEMPTS = 2, BQ_TEST_RETRY_BASE = 0.01,
                                                BQ_TEST_RETRY_CAP = 0.02, BQ_TEST_BLOCK_TIMEOUT = 0.5 })
        assert(s3:push_raw("not json"))
        assert(proc.wait_for(function() return s3:dead_letter_count() == 1 end, 10))
        assert(s3:run{ task_id = "always-fails", messages = { "fail" } })
        local ok = proc.wait_for(function() return s3:dead_letter_count() == 2 end, 10)
        proc.stop(w3, 1)
        s3:close()
        assert(ok, proc.read(w3.log))
        -- Attempts made so far: 0 for a message no handler could run, 2 for a task that
        -- failed twice with max_attempts 2; index 0 is the newest.
        for _, want in ipairs({ { index = 0, id = "always-fails", attempts = 2 }, { index = 1, attempts = 0 } }) do
            local rc, out = run("dlq show " .. want.index, e3)
            assert.are.equal(0, rc, out)
            assert.truthy(out:find("\nattempts:  " .. want.attempts .. "\n", 1, true), out)
            rc, out = run("dlq show " .. want.index .. " --json", e3)
            assert.are.equal(0, rc, out)
            assert.truthy(out:find('"attempts":' .. want.attempts .. "[,}]"), out)
            rc, out = run("dlq list --json", e3)
            assert.are.equal(0, rc, out)
            assert.truthy(out:find('"attempts":' .. want.attempts .. "[,}]"), out)
            local lines = cluster.lines(w3, "dead_lettered")
            local line = lines[want.index == 0 and 2 or 1] or ""
            if want.id then assert.truthy(line:find("task_id=" .. want.id, 1, true), line) end
            assert.truthy(line:find(" attempts=" .. want.attempts .. " ", 1, true), line)
        end
        assert.is_nil((proc.read(w3.log) or ""):find("attempts?=%d+%.0"), proc.read(w3.log))
        assert.truthy(cluster.lines(w3, "dead_lettered")[2]:find("failed 2 times", 1, true))
    end)

    it("queue peek and purge", function()
        local rc, out = run("queue peek --limit 2 --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.equal(2, #doc.messages)
        assert.truthy(doc.messages[1]:find('"task_id":"wait-1"', 1, true)) -- the next one taken
        rc, out = run("queue peek", env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("next 5 of 5", 1, true), out)
        rc, out = run("queue purge", env)
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("add --yes", 1, true), out)
        rc, out = run("queue purge --yes --json", env)
        assert.are.equal(0, rc, out)
        assert.are.equal(5, json.decode(out).purged)
        assert.are.equal(0, s:queue_length())
        assert.are.equal(1, s:inflight_count()) -- purge leaves leased tasks alone
    end)

    it("has --help, refuses bad options and reports a Redis that is down", function()
        for _, cmd in ipairs({ "stats", "workers", "queue", "top", "task", "dlq" }) do
            local rc, out = run(cmd .. " --help", env)
            assert.are.equal(0, rc, out)
            assert.truthy(out:find("usage: binduq-lua " .. cmd, 1, true), out)
        end
        local rc, out = run("stats --bogus", env)
        assert.are.equal(2, rc, out)
        rc, out = run("stats", { REDIS_URL = "redis://127.0.0.1:1/0" })
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("ECONNREFUSED", 1, true) or out:find("refused", 1, true), out)
    end)

    it("prints no terminal control from queue data, in text and --json", function()
        -- Anyone who can write to a queue chooses these bytes: an OSC 52 clipboard write, a
        -- line erasure, a carriage return, a forged line, CSI as a C1 control, NUL, DEL, and
        -- a byte that is not UTF-8.
        local H = "x\27]52;c;SGVsbG8=\7\27[2K\r\n fake line\xc2\x9b\0\127\xffy"
        local q2 = "it:hostile:" .. math.random(1, 1e9)
        local key = function(suffix) return "{" .. q2 .. "}:" .. suffix end
        local c = s.client
        local header = json.encode_strict({ task_id = H, type = H, queue = H, worker = H, attempts = 1,
                                            failed_at = H, reason = H,
                                            error = { code = H, message = H, retryable = false, traceback = H } })
        assert(c:command(q2, "LPUSH", key("dlq"), header .. "\n" .. H .. "\nsecond line"))
        assert(c:command(q2, "LPUSH", q2, H, '{"task_id":"' .. H .. '"}'))
        local expiry = tostring(math.floor(require("binduq.core").now() * 1000) + 600000)
        assert(c:command(q2, "ZADD", key("workers"), expiry, H))
        assert(c:command(q2, "LPUSH", key("wip:" .. H), json.encode_strict({ task_id = H })))
        local e2 = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q2, TERM = "dumb" }

        -- Only the line feeds the CLI writes itself; nothing else below 0x20, no DEL, no C1,
        -- valid UTF-8, and no line of the output is one the data made.
        local function clean(out, cmd)
            assert.is_nil(out:find("[%z\1-\9\11-\31\127]"), cmd .. ": " .. out)
            assert.is_nil(out:find("\xc2[\x80-\x9f]"), cmd .. ": " .. out)
            assert.is_truthy(utf8.len(out), cmd .. ": " .. out)
            for l in out:gmatch("[^\n]+") do assert.is_nil(l:find("^ fake line"), cmd .. ": " .. out) end
        end
        local argv = [["$(printf 'x\033]52;c;SGVsbG8=\007\r\n fake line\302\233')"]]
        for _, t in ipairs({ { "dlq list", 0 }, { "dlq show 0", 0 }, { "queue peek", 0 }, { "workers", 0 },
                             { "stats", 0 }, { "top --count 1", 0 }, { "dlq show 7", 1 },
                             { "dlq " .. argv, 2 }, { "stats --queue " .. argv, 0 } }) do
            local rc, out = run(t[1], e2)
            assert.are.equal(t[2], rc, out)
            clean(out, t[1])
        end
        local _, out = run("dlq " .. argv, e2)
        assert.truthy(out:find("unknown subcommand 'x\\x1b]52;c;SGVsbG8=\\x07\\r\\n fake line\\u{9b}'", 1, true), out)
        local rc
        rc, out = run("dlq show 0", e2)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("worker:    x\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\r\\n fake line\\u{9b}\\x00\\x7f\\xffy\n",
                                1, true), out)
        assert.truthy(out:find("message:\n  x\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\r\n   fake line", 1, true), out)
        assert.truthy(out:find("\n  second line\n", 1, true), out)
        rc, out = run("workers", e2)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("1 worker record on", 1, true), out)

        -- --json: valid JSON, safe to print, the same strings where they were UTF-8.
        local want = "x\27]52;c;SGVsbG8=\7\27[2K\r\n fake line\xc2\x9b\0\127\xef\xbf\xbdy"
        for _, cmd in ipairs({ "dlq list --json", "dlq show 0 --json", "queue peek --json", "workers --json" }) do
            rc, out = run(cmd, e2)
            assert.are.equal(0, rc, out)
            clean(out, cmd)
            local doc = json.decode(out)
            assert.is_table(doc, cmd .. ": " .. out)
            if cmd == "dlq list --json" then
                assert.are.equal(want, doc.entries[1].worker)
                assert.are.equal(want, doc.entries[1].error.message)
            elseif cmd == "dlq show 0 --json" then
                assert.are.equal(want, doc.task_id)
            elseif cmd == "workers --json" then
                assert.are.equal(want, doc.workers[1].id)
                assert.are.equal(want, doc.workers[1].current)
            end
        end
    end)

    it("top draws queues and workers in a real terminal", function()
        local sock = "binduq-test-" .. math.random(1, 1e9)
        local tmux = "tmux -L " .. sock
        local cmd = ("REDIS_URL=%s build/binduq-lua top --queue %s --interval 0.5"):format(server.url, q)
        local _, ok = proc.sh(("%s new-session -d -s top -x 140 -y 30 %s"):format(tmux, proc.quote(cmd)))
        assert.is_true(ok)
        local screen
        local seen = proc.wait_for(function()
            screen = proc.sh(tmux .. " capture-pane -p -t top")
            return screen:find("binduq top", 1, true) and screen:find("WORKER", 1, true)
        end, 10)
        proc.sh(tmux .. " send-keys -t top q")
        local gone = proc.wait_for(function() return not select(2, proc.sh(tmux .. " has-session -t top")) end, 5)
        proc.sh(tmux .. " kill-server")
        assert(seen, screen)
        assert.truthy(screen:find(q, 1, true), screen)
        assert.truthy(screen:find(q:gsub("%p", "%%%0") .. "%s+0%s+0%s+1%s+1%s+1"), screen)
        assert.truthy(screen:find("busy", 1, true), screen)
        assert.is_truthy(gone, "top did not quit on q")
    end)
end)

-- task cancel|pause|resume|retry: through Redis and a real PostgreSQL, against a worker in a
-- process of its own; the resulting state in storage and in Redis, the exit code and --json.
describe("#redis #pg task commands", function()
    local pg = require("helpers.pg")
    local FIXTURE = "tests/lua/fixtures/lifecycle_worker.lua"
    local server, db, q, env, s, w, dir
    setup(function()
        bq.log_configure{ level = "off" }
        server = redis.start()
        db = pg.start()
        dir = proc.tmpdir()
        q = "it:taskcmd:" .. math.random(1, 1e9)
        -- No REDIS_QUEUE_NAME: an operation goes to the queue the task was run on.
        env = { REDIS_URL = server.url, DATABASE_URL = db.url }
        s = bq.scheduler{ scheduler = { url = server.url, queue_name = q },
                          storage = { type = "postgres", url = db.url } }
        w = cluster.worker(server, q, { DATABASE_URL = db.url, BQ_TEST_BLOCK_TIMEOUT = 1, BQ_TEST_MAX_ATTEMPTS = 1 },
                           FIXTURE, dir)
    end)
    teardown(function()
        proc.stop(w, 5)
        s:close()
        server:stop()
        db:stop()
        bq.log_configure{ level = "info" }
    end)

    local function id(tag) return q .. "-" .. tag end
    local function llen(key) return tonumber(server:cli("LLEN", key)) end
    -- The queue taken empty: nothing waiting, nothing leased.
    local function drained()
        return proc.wait_for(function()
            return llen(q) == 0 and s:inflight_count() == 0
        end, 10)
    end

    it("cancel stops a running task; refuses a finished, unknown or missing task", function()
        assert(s:run{ task_id = id("spin"), messages = { "spin" } })
        cluster.wait_state(s, id("spin"), "working")
        local rc, out = run("task cancel " .. id("spin") .. " --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        doc.requested = nil
        assert.are.same({ task_id = id("spin"), operation = "cancel", queue = q, result = "scheduled",
                          state_before = "working", state = "canceled" }, doc)
        assert.are.equal("canceled", s:get_task(id("spin")).state)
        assert(proc.wait_for(function()
            return (proc.read(w.log) or ""):find(" canceled task_id=" .. id("spin") .. " ", 1, true)
        end, 10), proc.read(w.log))
        assert.is_truthy(drained())

        rc, out = run("task cancel " .. id("spin"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("binduq-lua task: cannot cancel task " .. id("spin") .. ": it is already canceled",
                               1, true), out)
        assert(s:run{ task_id = id("done"), messages = { "hello" } })
        cluster.wait_state(s, id("done"), "completed")
        rc, out = run("task cancel " .. id("done"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("it is already completed", 1, true), out)
        assert.are.equal("completed", s:get_task(id("done")).state)
        rc, out = run("task cancel " .. id("nosuch"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("no task " .. id("nosuch"), 1, true), out)
        assert.is_nil(s:get_task(id("nosuch"))) -- nothing recorded for it
        rc, out = run("task cancel", env)
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("cancel needs a task ID", 1, true), out)
        assert.truthy(out:find("usage: binduq-lua task", 1, true), out)
        rc, out = run("task cancel " .. id("done") .. " --message hi", env)
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("--message is for resume only", 1, true), out)
        rc, out = run("task cancle " .. id("done"), env)
        assert.are.equal(2, rc, out)
        assert.truthy(out:find("did you mean 'cancel'", 1, true), out)
    end)

    it("pause and resume a running task from its checkpoint", function()
        assert(s:run{ task_id = id("steps"), messages = { "steps:40" } })
        cluster.wait_state(s, id("steps"), "working")
        bq.sleep(0.1)
        local rc, out = run("task pause " .. id("steps") .. " --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.equal("pause", doc.operation)
        assert.are.equal("working", doc.state_before)
        local t = cluster.wait_state(s, id("steps"), "paused")
        assert.is_true(t.checkpoint > 0 and t.checkpoint < 40, tostring(t.checkpoint))
        rc, out = run("task pause " .. id("steps"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("cannot pause task " .. id("steps") .. ": it is already paused", 1, true), out)
        rc, out = run("task resume " .. id("steps"), env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("task " .. id("steps") .. ": resume scheduled on " .. q .. "; state ", 1, true), out)
        assert.truthy(out:find(" (was paused): a worker runs it again\n", 1, true), out)
        t = cluster.wait_state(s, id("steps"), "completed")
        local from = tonumber(t.history[#t.history].content:match("^counted (%d+)%.%.40 on "))
        assert.is_true(from ~= nil and from > 0, t.history[#t.history].content) -- from its checkpoint
        rc, out = run("task pause " .. id("steps"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("it is completed (only a queued or running task can be paused)", 1, true), out)
        rc, out = run("task resume " .. id("steps"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("only a paused task or one waiting for input can be resumed", 1, true), out)
        assert.is_truthy(drained())
    end)

    it("resume --message answers a task waiting for input", function()
        assert(s:run{ task_id = id("ask"), messages = { "ask" } })
        cluster.wait_state(s, id("ask"), "input-required")
        local rc, out = run("task resume " .. id("ask"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("it waits for input (input-required): give the answer with --message TEXT", 1, true),
                      out)
        -- No Redis: refused, and nothing changes.
        rc, out = proc.run("build/binduq-lua task resume " .. id("ask") .. " --message Lisbon",
                           { env = { DATABASE_URL = db.url }, unset = { "REDIS_URL" }, timeout = 30 })
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("no Redis to send the resume to: set REDIS_URL or pass --url", 1, true), out)
        assert.are.equal("input-required", s:get_task(id("ask")).state)
        rc, out = run("task resume " .. id("ask") .. " --message Lisbon --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.equal("resume", doc.operation)
        assert.are.equal("input-required", doc.state_before)
        local t = cluster.wait_state(s, id("ask"), "completed")
        assert.are.same({ role = "user", content = "Lisbon" }, t.history[3])
        assert.are.equal("answer: Lisbon (3)", t.history[4].content)
        assert.is_truthy(drained())
    end)

    it("retry requeues a failed task's dead-letter entry, or runs its history again", function()
        local flag = dir .. "/retry-flag-" .. math.random(1, 1e9)
        local dlq = "{" .. q .. "}:dlq"
        assert(s:run{ task_id = id("flaky"), messages = { "failunless:" .. flag } })
        local t = cluster.wait_state(s, id("flaky"), "failed")
        assert.are.equal(1, t.attempts)
        assert(proc.wait_for(function() return llen(dlq) == 1 end, 10))
        local rc, out = run("task retry " .. id("steps"), env) -- completed
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("it is completed (only a failed task can be retried)", 1, true), out)
        rc, out = run("task retry " .. id("spin"), env)
        assert.are.equal(1, rc, out)
        assert.truthy(out:find("a cancel is final: run it again under a new task id", 1, true), out)

        assert(io.open(flag, "w")):close()
        rc, out = run("task retry " .. id("flaky") .. " --json", env)
        assert.are.equal(0, rc, out)
        local doc = json.decode(out)
        assert.are.equal("retry", doc.operation)
        assert.are.equal("dead_letter", doc.via)
        assert.are.equal("failed", doc.state_before)
        assert.are.equal(q, doc.queue)
        t = cluster.wait_state(s, id("flaky"), "completed")
        assert.are.equal("found " .. flag, t.history[#t.history].content)
        assert.are.equal(0, llen(dlq))
        assert.is_truthy(drained())

        -- With its dead-letter entry purged, the stored history runs again.
        os.remove(flag)
        assert(s:run{ task_id = id("flaky2"), messages = { "failunless:" .. flag } })
        cluster.wait_state(s, id("flaky2"), "failed")
        assert(proc.wait_for(function() return llen(dlq) == 1 end, 10))
        rc, out = run("dlq purge --all", { REDIS_URL = server.url, REDIS_QUEUE_NAME = q })
        assert.are.equal(0, rc, out)
        assert(io.open(flag, "w")):close()
        rc, out = run("task retry " .. id("flaky2"), env)
        assert.are.equal(0, rc, out)
        assert.truthy(out:find("task " .. id("flaky2") .. ": a new run of its history on " .. q, 1, true), out)
        t = cluster.wait_state(s, id("flaky2"), "completed")
        assert.are.equal("found " .. flag, t.history[#t.history].content)
        assert.are.equal(1, #t.history - 1) -- the run's one message and the answer, nothing twice
        assert.are.equal(0, llen(dlq))
        assert.is_truthy(drained())
    end)
end)

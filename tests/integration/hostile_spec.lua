-- Hostile queue contents through a real redis-server and a real worker: whatever anyone who
-- can push to the queue sends is set aside with its reason or run correctly, and changes no
-- other task.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local bq = require("binduq")
local task = require("binduq.task")

local function qname(tag)
    return ("it:%s:%d"):format(tag, math.random(1, 1e9))
end

local function count(s, pat)
    local _, n = s:gsub(pat, "")
    return n
end

describe("#redis hostile input", function()
    local server
    setup(function()
        server = redis.start()
        bq.log_configure{ level = "warn" }
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    -- Before seals, each of these changed a task: attempt 99 failed the running task and
    -- discarded its result, redelivered:1 ran it a second time with the forger's content,
    -- attempt -1000000 retried without end, requeued reopened a failed task, and a 2 MB
    -- header passed max_message_size.
    it("sets aside a #bq header binduq did not write, which changes no task", function()
        local queue = qname("forge")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/test_worker.lua", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BQ_TEST_CONCURRENCY = 3,
                    BQ_TEST_MAX_ATTEMPTS = 2, BQ_TEST_RETRY_BASE = 0.05, BQ_TEST_RETRY_CAP = 0.1,
                    BQ_TEST_MAX_MESSAGE_SIZE = 1024 * 1024, BINDUQ_LOG_LEVEL = "info" },
        })
        s:run{ task_id = "doomed", messages = { "fail" } }
        assert(proc.wait_for(function() return s:dead_letter_count() == 1 end, 20), "doomed never failed")
        s:run{ task_id = "victim", messages = { "sleep:1500" } }
        s:run{ task_id = "flaky", messages = { "flaky:2" } } -- a genuine retry, sealed by binduq
        assert(proc.wait_for(function() return s:queue_length() == 0 end, 10))
        local function run_of(id, text)
            return ('{"type":"run","task_id":"%s","messages":[{"role":"user","content":"%s"}]}'):format(id, text)
        end
        local forged = {
            '#bq {"attempt":99}\n' .. run_of("victim", "forged-a"),
            '#bq {"attempt":2,"redelivered":1}\n' .. run_of("victim", "forged-b"),
            '#bq {"attempt":-1000000}\n' .. run_of("neg", "x"),
            '#bq {"attempt":1,"requeued":1}\n' .. run_of("doomed", "forged-d"),
            '#bq {"pad":"' .. ("p"):rep(2 * 1024 * 1024) .. '"}\n' .. run_of("big", "x"),
        }
        for _, m in ipairs(forged) do assert(s:push_raw(m)) end
        local log
        assert(proc.wait_for(function()
            log = proc.read(w.log) or ""
            return log:find("completed task_id=victim ", 1, true) and log:find("completed task_id=flaky ", 1, true)
                and s:dead_letter_count() == 1 + #forged
        end, 30), "the tasks did not finish")
        proc.sleep(0.3) -- anything a forged message might still have set off
        assert.are.equal(0, proc.stop(w, 10))
        log = proc.read(w.log)
        assert.are.equal(1, count(log, "completed task_id=victim "), "the running task ran once")
        assert.are.equal(0, count(log, "skipped"), "its result was kept")
        assert.are.equal(0, count(log, "task_id=neg "), "nothing of 'neg' ran")
        assert.are.equal(0, count(log, "completed task_id=doomed "), "the failed task stayed failed")
        assert.are.equal(1, count(log, "completed task_id=flaky "), "a genuine retry still runs")
        assert.are.equal(1 + #forged, s:dead_letter_count())
        local by_raw = {}
        for _, e in ipairs(assert(s:dead_letters())) do by_raw[e.message] = e end
        for i = 1, 4 do
            local e = by_raw[forged[i]]
            assert.truthy(e, "not set aside whole: " .. forged[i]:sub(1, 40))
            assert.are.equal(task.UNSEALED, e.reason)
            assert.are.equal(0, e.attempts)
        end
        local big -- the header counts in the size limit: set aside, its first bytes kept
        for raw, e in pairs(by_raw) do
            if e.size == #forged[5] then big = e; assert.are.equal(forged[5]:sub(1, 256), raw) end
        end
        assert.truthy(big and big.reason:find("message too large", 1, true), big and big.reason)
        assert.is_true(big.truncated)
        -- every seal binduq wrote was released
        assert.are.equal("0", server:cli("HLEN", "{" .. queue .. "}:seals"))
        s:close()
    end)

    -- Before: a retried Bindu-format message carries its header embedded (its last key,
    -- "binduq"), sealed; retry-3 and bury-3 released only a "#bq" line's seal, so each retry
    -- or dead letter of one left its seal behind, and a copy of those bytes pushed later
    -- passed for binduq's own.
    it("releases the seal of a Bindu-format message retried and dead-lettered", function()
        local queue = qname("bseal")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/test_worker.lua", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BQ_TEST_CONCURRENCY = 2,
                    BQ_TEST_MAX_ATTEMPTS = 3, BQ_TEST_RETRY_BASE = 0.05, BQ_TEST_RETRY_CAP = 0.1,
                    BINDUQ_LOG_LEVEL = "info" },
        })
        local function bindu_run(tid, text)
            local p = assert(io.popen(("python3 tests/helpers/bindu_ops.py run %s %s %s"):format(tid,
                "6f1c2a3e-0000-4000-8000-0000000000c1", text)))
            local line = p:read("l")
            p:close()
            assert(line and line:sub(1, 12) == '{"operation"', "bindu_ops.py wrote " .. tostring(line))
            return line
        end
        local flaky, doomed = "6f1c2a3e-0000-4000-8000-0000000000a1", "6f1c2a3e-0000-4000-8000-0000000000a2"
        assert(s:push_raw(bindu_run(flaky, "flaky:3")))
        assert(s:push_raw(bindu_run(doomed, "fail")))
        local log
        assert(proc.wait_for(function()
            log = proc.read(w.log) or ""
            return log:find("completed task_id=" .. flaky, 1, true) and s:dead_letter_count() == 1
        end, 30), "the tasks did not finish: " .. tostring(log))
        assert.are.equal(0, proc.stop(w, 10))
        log = proc.read(w.log)
        local function esc(x) return (x:gsub("%p", "%%%0")) end
        assert.are.equal(2, count(log, "failed task_id=" .. esc(flaky)), "the flaky run failed twice")
        assert.are.equal(3, count(log, "failed task_id=" .. esc(doomed)), "the doomed run failed three times")
        assert.are.equal(0, s:queue_length() + s:inflight_count() + s:delayed_count())
        assert.are.equal("0", server:cli("HLEN", "{" .. queue .. "}:seals"))
        s:close()
    end)

    -- Before: "sleep:" and 400 digits made ctx:sleep(inf); the slot's timed wait failed with
    -- EINVAL and spun holding the slot lock: cancels stopped for the whole worker and no
    -- SIGTERM ended it.
    it("refuses an infinite sleep, and the worker still cancels and stops", function()
        local queue = qname("inf")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua examples/worker.lua 2", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "debug" },
        })
        finally(function() proc.stop(w, 1) end) -- the frozen worker of the defect ignored SIGTERM
        s:run{ task_id = "forever", messages = { "sleep:" .. ("9"):rep(400) } }
        local log
        assert(proc.wait_for(function()
            log = proc.read(w.log) or ""
            return log:find("examples/worker%.lua:%d+: ctx:sleep: seconds is infinite %(got inf%)")
        end, 10), "the handler's error was not logged: " .. tostring(log))
        s:run{ task_id = "long", messages = { "sleep:30000" } }
        assert(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("consumed[^\n]*task_id=long[ \n]")
        end, 10), "the second task never started")
        proc.sleep(0.2)
        assert(s:cancel("long"))
        assert(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("canceled task_id=long ", 1, true)
        end, 5), "the cancel did not reach the handler")
        assert.are.equal(0, proc.stop(w, 10), "SIGTERM did not stop the worker")
        s:close()
    end)

    local function peak_rss_kb(pid)
        local st = proc.read("/proc/" .. pid .. "/status") or ""
        return tonumber(st:match("VmHWM:%s*(%d+)"))
    end

    -- Before: one 100 MB message took the worker to 520 MB peak RSS, 315 MB held after; the
    -- whole of it went into the dead-letter list, past the command timeout, after which the
    -- worker logged lease_lost for an entry that had been dead-lettered.
    for _, delivery in ipairs({ "at-least-once", "at-most-once" }) do
        it("dead-letters a 100 MB message without holding it (" .. delivery .. ")", function()
            local queue = qname("big")
            -- 100 MB through loopback on a busy machine: more than the default 5 s, maybe
            local s = bq.scheduler{ url = server.url, queue_name = queue, command_timeout = 60 }
            local w = proc.spawn("build/binduq-lua tests/integration/fixtures/test_worker.lua", {
                env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BQ_TEST_CONCURRENCY = 1,
                        BQ_TEST_DELIVERY = delivery, BINDUQ_LOG_LEVEL = "info" },
            })
            finally(function() proc.stop(w, 5) end)
            s:run{ task_id = "before", messages = { "hello" } }
            assert(proc.wait_for(function()
                return (proc.read(w.log) or ""):find("completed task_id=before ", 1, true)
            end, 10), "the worker did not start")
            local base = peak_rss_kb(w.pid)
            local size = 100 * 1024 * 1024
            local head = '{"type":"run","task_id":"huge","messages":[{"role":"user","content":"'
            local big = head .. ("x"):rep(size - #head - 4) .. '"}]}'
            assert.are.equal(size, #big)
            assert(s:push_raw(big))
            big = nil -- luacheck: ignore 311 (let the collector take the 100 MiB)
            collectgarbage()
            s:run{ task_id = "after", messages = { "world" } }
            assert(proc.wait_for(function()
                return s:dead_letter_count() == 1
                    and (proc.read(w.log) or ""):find("completed task_id=after ", 1, true)
            end, 30), "the large message was not set aside")
            local peak = peak_rss_kb(w.pid)
            local e = assert(s:dead_letters())[1]
            assert.are.equal(("message too large (%d bytes; max_message_size is 33554432)"):format(size), e.reason)
            assert.are.equal(size, e.size)
            assert.is_true(e.truncated)
            assert.are.equal(256, #e.message)
            assert.are.equal(head, e.message:sub(1, #head))
            if delivery == "at-least-once" then
                local want = proc.sh("{ printf '%s' '" .. head .. "'; head -c " .. (size - #head - 4)
                                     .. " /dev/zero | tr '\\0' x; printf '\"}]}'; } | sha1sum"):match("%x+")
                assert.are.equal(want, e.sha1)
            else
                assert.is_nil(e.sha1) -- popped before it could be hashed
            end
            -- only its first bytes were kept: it cannot be requeued, by filter or by hand
            assert.are.equal(0, s:requeue_dead())
            local ok, why = s:requeue_entry(s:dead_letter(0).raw)
            assert.is_nil(ok)
            assert.truthy(tostring(why):find("cannot be requeued", 1, true), why)
            assert.are.equal(1, s:dead_letter_count())
            local rc, shown = proc.run("build/binduq-lua dlq show 0", {
                env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue }, timeout = 30 })
            assert.are.equal(0, rc, shown)
            assert.truthy(shown:find("size:      " .. size, 1, true), shown)
            assert.truthy(shown:find("its first 256 bytes of " .. size .. "; it cannot be requeued", 1, true), shown)
            local log = proc.read(w.log)
            assert.is_nil(log:find("lease_lost", 1, true))
            print(("\n# %s: worker peak RSS %.1f MB before, %.1f MB after a 100 MB message"):format(
                delivery, base / 1024, peak / 1024))
            assert.is_true(peak - base < 32 * 1024, ("peak RSS grew by %d kB"):format(peak - base))
            assert.are.equal(0, proc.stop(w, 10))
            s:close()
        end)
    end

    -- What anyone who can push to the queue might send. Each is either set aside with its
    -- reason (bad = the reason's words) or run as the task it is (good = its task id).
    local function run_of(id, content)
        return '{"type":"run","task_id":' .. id .. ',"messages":[{"role":"user","content":' .. content .. '}]}'
    end
    local corpus = {
        { "", bad = "invalid JSON" },
        { "null", bad = "not a JSON object" },
        { "[]", bad = "not a JSON object" },
        { "{}", bad = "" },
        { ("["):rep(100000), bad = "" },
        { '{"type":"run","task_id":"d1","task_id":"d2","messages":[]}', bad = "" },
        { run_of('"n1"', "1e400"), bad = "" },
        { run_of('"n2"', '"x"') .. "garbage", bad = "invalid JSON" },
        { '{"type":"run","task_id":"t\\u0000x","messages":[{"role":"user","content":"x"}]}', bad = "control character" },
        { '{"type":"run","task_id":"t\\nfake 2026-01-01T00:00:00.000Z info completed","messages":[{"role":"user","content":"x"}]}',
          bad = "control character" },
        { '{"type":"run","task_id":"t\\u001b]52;c;aGk=\\u0007","messages":[{"role":"user","content":"x"}]}', bad = "control character" },
        { '{"type":"run","task_id":"t\\u009b2J","messages":[{"role":"user","content":"x"}]}', bad = "control character" },
        { '{"type":"run","task_id":"' .. ("i"):rep(300) .. '","messages":[{"role":"user","content":"x"}]}', bad = "longer than 256" },
        { run_of('"u1"', '"caf\xc3"'), bad = "UTF-8" },
        { run_of('"u2"', '"\xc0\xaf"'), bad = "UTF-8" },
        { run_of('"u3"', '"\xed\xa0\x80"'), bad = "UTF-8" },
        { '{"type":"\27[2Jteleport","task_id":"x1"}', bad = "unknown" },
        { '{"type":"run","task_id":"x2","messages":[{"role":"user","content":"x"}],"timeout":-1}', bad = "timeout" },
        { '{"type":"run","task_id":"x3","messages":[{"role":"user","content":"x"}],"timeout":1e300}', bad = "timeout" },
        { '{"type":"run","task_id":"x4","messages":[{"role":"user","content":"x"}],"max_attempts":0.5}', bad = "max_attempts" },
        { '{"operation":"run","params":"nope"}', bad = "params" },
        { '{"operation":"run","params":{"task_id":"b\\u0000","message":{"role":"user","parts":[]}}}', bad = "control character" },
        { '#bq {"attempt":1000000000}\n' .. run_of('"h1"', '"x"'), bad = "" },
        { "#bq no newline at all", bad = "" },
        { "#bq " .. ("{"):rep(5000) .. "\n{}", bad = "" },
        { run_of('"big"', '"' .. ("b"):rep(33 * 1024 * 1024) .. '"'), bad = "message too large" },
        -- odd but valid: they run, and what they carry stays data
        { run_of('"g1"', '"\\u001b]52;c;aGk=\\u0007 and \\u009b2J and \\r\\n fake line"'), good = "g1" },
        { run_of('"g2 with spaces=and \\"quotes\\""', '"x"'), good = 'g2 with spaces=and "quotes"' },
        { run_of('"g3"', '"nul \\u0000 inside"'), good = "g3" },
        { run_of('"g4-\xe2\x80\xae"', '"right-to-left override in the id"'), good = "g4-\xe2\x80\xae" },
    }

    it("runs a hostile corpus: each message set aside with its reason or run, memory bounded, one line per event", function()
        local queue = qname("corpus")
        local s = bq.scheduler{ url = server.url, queue_name = queue }
        local w = proc.spawn("build/binduq-lua examples/worker.lua 2", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "info" },
        })
        finally(function() proc.stop(w, 1) end)
        local nbad, ngood = 0, 0
        for _, c in ipairs(corpus) do
            assert(s:push_raw(c[1]))
            if c.bad then nbad = nbad + 1 else ngood = ngood + 1 end
        end
        local peak = 0
        assert(proc.wait_for(function()
            peak = math.max(peak, peak_rss_kb(w.pid) or 0)
            local _, n = (proc.read(w.log) or ""):gsub(" completed task_id=", "")
            return s:dead_letter_count() == nbad and n == ngood
        end, 30), ("not all handled: %d dead of %d"):format(s:dead_letter_count(), nbad))
        proc.sleep(0.3)
        assert.are.equal(nbad, s:dead_letter_count())
        -- every bad one is there with its reason
        local entries = assert(s:dead_letters())
        local by_raw = {}
        for _, e in ipairs(entries) do by_raw[e.message] = e end
        for i, c in ipairs(corpus) do
            if c.bad then
                local e = by_raw[c[1]] or by_raw[c[1]:sub(1, 256)]
                assert.truthy(e, "case " .. i .. " not set aside whole: " .. task.show(c[1]))
                assert.truthy(e.reason ~= "" and e.reason:find(c.bad, 1, true), "case " .. i .. ": " .. e.reason)
                assert.is_nil(e.reason:find("[%z\1-\31\127]"), "case " .. i .. ": a control byte in the reason")
            end
        end
        -- the log: one line per event, none forged, no raw control byte, no escape sequence
        local log = proc.read(w.log)
        local lines = 0
        for line in log:gmatch("[^\n]*\n") do
            lines = lines + 1
            assert.truthy(line:find("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ %a+ [%w_]+"), "not a log line: " .. line)
            assert.is_nil(line:sub(1, -2):find("[%z\1-\31\127]"), "a control byte in: " .. line)
            assert.is_nil(line:find("\194[\128-\159]"), "a C1 control in: " .. line)
        end
        assert.is_nil(log:find("fake 2026", 1, true) and log:find("\nfake", 1, true))
        -- the good ones ran, once each
        local _, ncompleted = log:gsub(" completed task_id=", "")
        assert.are.equal(ngood, ncompleted)
        assert.truthy(log:find(" completed task_id=g1 ", 1, true))
        assert.truthy(log:find(" completed task_id=g3 ", 1, true))
        print(("\n# hostile corpus: %d set aside, %d run; worker peak RSS %.1f MB"):format(nbad, ngood, peak / 1024))
        assert.is_true(peak < 64 * 1024, ("peak RSS %d kB"):format(peak))
        -- and it still cancels and stops
        s:run{ task_id = "still", messages = { "sleep:30000" } }
        assert(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("consumed[^\n]*task_id=still[ \n]") ~= nil
                or s:queue_length() == 0
        end, 10))
        proc.sleep(0.3)
        assert(s:cancel("still"))
        assert(proc.wait_for(function()
            return (proc.read(w.log) or ""):find("canceled task_id=still ", 1, true)
        end, 5), "the cancel did not reach the handler")
        assert.are.equal(0, proc.stop(w, 10), "SIGTERM did not stop the worker")
        s:close()
    end)
end)

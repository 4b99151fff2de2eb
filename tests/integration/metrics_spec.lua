-- Operations: Prometheus metrics over HTTP (values checked, and promtool accepts the text),
-- /healthz and /readyz following Redis, trace ids in the log lines.

local proc = require("helpers.proc")
local redis = require("helpers.redis")
local cluster = require("helpers.cluster")
local bq = require("binduq")

-- One HTTP GET through bash's /dev/tcp (no HTTP client needed): status, body.
local function get(port, path)
    local cmd = ("exec 3<>/dev/tcp/127.0.0.1/%d && printf 'GET %s HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3")
        :format(port, path)
    local out = proc.sh("bash -c " .. proc.quote(cmd))
    local status = tonumber(out:match("^HTTP/1%.%d (%d+)"))
    local body = out:match("\r\n\r\n(.*)$") or ""
    return status, body
end

-- The port a worker started with BINDUQ_METRICS_ADDR=127.0.0.1:0 says it listens on.
local function metrics_port(w)
    local port
    assert(proc.wait_for(function()
        port = tonumber((proc.read(w.log) or ""):match("metrics_listening address=127%.0%.0%.1 port=(%d+)"))
        return port
    end, 10), proc.read(w.log))
    return port
end

local function sample(text, name, labels)
    for line in text:gmatch("[^\n]+") do
        if line:sub(1, #name + 1) == name .. "{" or line:sub(1, #name + 1) == name .. " " then
            local ok = true
            for k, v in pairs(labels or {}) do
                if not line:find(k .. '="' .. v .. '"', 1, true) then ok = false end
            end
            if ok then return tonumber(line:match(" ([%d.e+-]+)$")) end
        end
    end
end

describe("#redis metrics and health endpoints", function()
    local server
    setup(function()
        bq.log_configure{ level = "off" }
        server = redis.start()
    end)
    teardown(function()
        server:stop()
        bq.log_configure{ level = "info" }
    end)

    it("counts what the worker did, in a format promtool accepts, and follows Redis in /readyz", function()
        local q = "it:metrics:" .. math.random(1, 1e9)
        local w = cluster.worker(server, q, { BINDUQ_METRICS_ADDR = "127.0.0.1:0", BQ_TEST_MAX_ATTEMPTS = 2,
                                              BQ_TEST_RETRY_BASE = 0.05, BQ_TEST_RETRY_CAP = 0.1,
                                              BQ_TEST_CONCURRENCY = 2, BQ_TEST_BLOCK_TIMEOUT = 0.5 })
        local port = metrics_port(w)
        local s = bq.scheduler{ url = server.url, queue_name = q }
        for i = 1, 10 do assert(s:run{ task_id = q .. "-ok-" .. i, messages = { "hello" } }) end
        for i = 1, 5 do assert(s:run{ task_id = q .. "-bad-" .. i, messages = { "fail" } }) end
        assert(proc.wait_for(function() return s:dead_letter_count() == 5 end, 20))
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) == 10 end, 20))
        local status, text = get(port, "/metrics")
        assert.are.equal(200, status)
        local l = { queue = q }
        assert.are.equal(10, sample(text, "binduq_tasks_completed_total", l))
        assert.are.equal(10, sample(text, "binduq_tasks_failed_total", l))
        assert.are.equal(5, sample(text, "binduq_tasks_retried_total", l))
        assert.are.equal(5, sample(text, "binduq_tasks_dead_lettered_total", l))
        assert.are.equal(15, sample(text, "binduq_tasks_fetched_total", l) - 5) -- 5 retries fetched again
        assert.are.equal(5, sample(text, "binduq_queue_length", { queue = q, list = "dead" }))
        assert.are.equal(0, sample(text, "binduq_queue_length", { queue = q, list = "ready" }))
        assert.are.equal(20, sample(text, "binduq_handler_duration_seconds_count", l))
        assert.are.equal(20, sample(text, "binduq_pickup_latency_seconds_count", l))
        local file = proc.tmpdir() .. "/metrics.txt"
        proc.write(file, text .. "\n") -- proc.sh dropped the last newline
        local out, ok = proc.sh("promtool check metrics < " .. proc.quote(file))
        assert.is_true(ok, out)

        assert.are.equal(200, (get(port, "/healthz")))
        assert.are.equal(200, (get(port, "/readyz")))
        assert.are.equal(404, (get(port, "/nope")))
        server:stop()
        local st, body = get(port, "/readyz")
        assert.are.equal(503, st)
        assert.truthy(body:find("redis", 1, true), body)
        assert.are.equal(200, (get(port, "/healthz")))
        server:restart()
        assert(proc.wait_for(function() return get(port, "/readyz") == 200 end, 15))
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("keeps producers' absurd timestamps out of the pickup latency and counts them", function()
        local q = "it:pickup:" .. math.random(1, 1e9)
        local w = cluster.worker(server, q, { BINDUQ_METRICS_ADDR = "127.0.0.1:0", BQ_TEST_CONCURRENCY = 2,
                                              BQ_TEST_BLOCK_TIMEOUT = 0.5 })
        local port = metrics_port(w)
        local core = require("binduq.core")
        local s = bq.scheduler{ url = server.url, queue_name = q }
        -- 200 from year 1 (each one 6.4e10 s: their sum in microseconds overflowed a long long),
        -- 10 from the far future, 10 from a clock 0.5 s ahead (read as 0), 10 ordinary ones.
        for i = 1, 200 do assert(s:run{ task_id = q .. "-old-" .. i, messages = { "x" }, timestamp = "0001-01-01T00:00:00Z" }) end
        for i = 1, 10 do assert(s:run{ task_id = q .. "-future-" .. i, messages = { "x" }, timestamp = "2999-01-01T00:00:00Z" }) end
        for i = 1, 10 do assert(s:run{ task_id = q .. "-skew-" .. i, messages = { "x" }, timestamp = core.iso8601(core.now() + 0.5) }) end
        for i = 1, 10 do assert(s:run{ task_id = q .. "-ok-" .. i, messages = { "x" } }) end
        assert(proc.wait_for(function() return select(2, cluster.count({ w }, "completed")) == 230 end, 30))
        local status, text = get(port, "/metrics")
        assert.are.equal(200, status)
        local l = { queue = q }
        assert.are.equal(210, sample(text, "binduq_pickup_latency_rejected_total", l))
        assert.are.equal(20, sample(text, "binduq_pickup_latency_seconds_count", l))
        local sum = sample(text, "binduq_pickup_latency_seconds_sum", l)
        assert.is_true(sum >= 0 and sum < 60, tostring(sum))
        -- The skewed ones fall in the first bucket (observed as 0).
        assert.is_true(sample(text, "binduq_pickup_latency_seconds_bucket", { queue = q, le = "0.0005" }) >= 10, text)
        local file = proc.tmpdir() .. "/metrics.txt"
        proc.write(file, text .. "\n")
        local out, ok = proc.sh("promtool check metrics < " .. proc.quote(file))
        assert.is_true(ok, out)
        assert.are.equal(0, proc.stop(w, 10))
        s:close()
    end)

    it("keeps a Bindu trace id and a W3C traceparent in the log lines and the handler's context", function()
        local q = "it:trace:" .. math.random(1, 1e9)
        local dump = q .. ":dump"
        local w = proc.spawn("build/binduq-lua tests/integration/fixtures/dump_worker.lua", {
            env = { REDIS_URL = server.url, REDIS_QUEUE_NAME = q, BQ_DUMP_LIST = dump },
        })
        local s = bq.scheduler{ url = server.url, queue_name = q }
        assert(s:push_raw('{"operation":"run","params":{"task_id":"T1","context_id":"C","message":{"kind":"message",'
            .. '"parts":[{"kind":"text","text":"hi"}],"role":"user"}},'
            .. '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}'))
        assert(s:run{ task_id = "T2", messages = { "hi" },
                      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" })
        assert(proc.wait_for(function() return tonumber(server:cli("LLEN", dump)) == 2 end, 20))
        assert.are.equal(0, proc.stop(w, 10))
        local log = proc.read(w.log)
        assert.truthy(log:find("completed task_id=T1 trace_id=4bf92f3577b34da6a3ce929d0e0e4736", 1, true), log)
        assert.truthy(log:find("completed task_id=T2 trace_id=0af7651916cd43dd8448eb211c80319c", 1, true), log)
        local json = require("binduq.json")
        local seen = {}
        for i = 0, 1 do
            local t = json.decode(server:cli("LINDEX", dump, tostring(i)))
            seen[t.task_id] = t
        end
        assert.are.equal("4bf92f3577b34da6a3ce929d0e0e4736", seen.T1.ctx_trace_id)
        assert.are.equal("0af7651916cd43dd8448eb211c80319c", seen.T2.ctx_trace_id)
        assert.are.equal("b7ad6b7169203331", seen.T2.ctx_span_id)
        s:close()
    end)
end)

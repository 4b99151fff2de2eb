-- deployed.lua -- one run of the deployed shape, for bench.lua (and by hand:
--   build/binduq-lua tests/bench/deployed.lua <redis url> [n] [KEY=VALUE ...]
-- with the proc_worker.lua variables as KEY=VALUE; or `<redis url> latency [n]` for the pickup
-- latency at idle, `recurring`, `agents [n]` and `cancel-http [n]` for those runs).
--
-- A producer process (producer.lua) fills the queue; then a worker process (proc_worker.lua,
-- w:run(), default options unless opts.env says) is started, the bench waits until every task
-- is done, and stops it with SIGTERM. The rate is timed from the first handler start to the
-- last completion: the later of the last handler's end and the moment the bench saw nothing
-- left queued or leased (polled every 2 ms, so a completion written after the handler, such as
-- the ack and the stored state, counts). Redis' CPU is read from INFO over the same span.
package.path = "tests/?.lua;" .. package.path
local core = require("binduq.core")
local proc = require("helpers.proc")

local M = {}
-- BENCH_WORKER_BIN (or run's opts.worker_bin): another build's binduq-lua for the worker, to
-- compare two builds by hand.
local WORKER = (os.getenv("BENCH_WORKER_BIN") or "build/binduq-lua") .. " tests/bench/proc_worker.lua run"

-- Reads the handler states' report lines.
local function report(path)
    local r = { n = 0, lat = {} }
    for line in (proc.read(path) or ""):gmatch("[^\n]+") do
        local n, first, last, lat = line:match("^n=(%d+) first=([%d.]+) last=([%d.]+) lat=(.*)$")
        assert(n, "proc_worker report: " .. line)
        n, first, last = tonumber(n), tonumber(first), tonumber(last)
        if n > 0 then
            r.n = r.n + n
            r.first = math.min(r.first or first, first)
            r.last = math.max(r.last or last, last)
        end
        for v in lat:gmatch("[^,]+") do r.lat[#r.lat + 1] = tonumber(v) end
    end
    return r
end

local function spawn_env(base, extra)
    local e = {}
    for k, v in pairs(base) do e[k] = v end
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
end

-- A run's scratch folder, the handler states' report file in it, the variables both
-- processes get, and the worker's (opts.env, and where to report).
local function setup(opts)
    local dir = proc.tmpdir()
    local out = dir .. "/report"
    local base = { BENCH_URL = opts.url, BENCH_QUEUE = opts.queue }
    local wenv = spawn_env(base, opts.env)
    wenv.BENCH_OUT = out
    return dir, out, base, wenv
end

--- opts: url, queue, n, prefix, env (worker variables), producer_env (producer variables),
--- cpu = function() -> Redis CPU seconds so far, concurrent (start the worker first and
--- produce while it runs), inproc (the worker's own main state produces, then runs),
--- poll_url (where the bench watches the queue, if not url: a plain-TCP URL of a TLS
--- server), worker_bin (another build's binduq-lua). Returns { rate, redis_us (Redis CPU
--- per task, microseconds), cpu_us (the worker process' CPU per task, start-up included),
--- enqueue }.
function M.run(opts)
    local worker = opts.worker_bin and opts.worker_bin .. " tests/bench/proc_worker.lua run" or WORKER
    local dir, out, base, wenv = setup(opts)
    local penv = spawn_env(base, opts.producer_env)
    local queues = {}
    for q in (wenv.BENCH_QUEUES or opts.queue):gmatch("[^,]+") do
        queues[#queues + 1] = core.client{ url = opts.poll_url or opts.url, queue_name = q }
    end
    local function left()
        local total = 0
        for _, c in ipairs(queues) do
            total = total + assert(c:length("ready")) + assert(c:length("inflight")) + assert(c:length("delayed"))
        end
        return total
    end
    local producer_cmd = ("build/binduq-lua tests/bench/producer.lua fill %d %s"):format(opts.n, opts.prefix)
    local enqueue, w, p
    local cpu0
    if opts.inproc then
        wenv.BENCH_FILL, wenv.BENCH_PREFIX = tostring(opts.n), opts.prefix
        cpu0 = opts.cpu()
        w = proc.spawn(worker, { env = wenv, dir = dir })
        local deadline = core.monotonic() + 120
        while not (proc.read(w.log) or ""):find("filled rate=") do
            assert(proc.alive(w), "the worker exited early: " .. (proc.read(w.log) or ""))
            assert(core.monotonic() < deadline, "the worker did not fill its queue in 120 s")
            core.sleep(0.002)
        end
        enqueue = tonumber(proc.read(w.log):match("filled rate=([%d.]+)"))
    elseif not opts.concurrent then
        local rc, pout = proc.run(producer_cmd, { env = penv, timeout = 300 })
        assert(rc == 0, "producer: " .. pout)
        enqueue = tonumber(pout:match("rate=([%d.]+)"))
        assert(left() == opts.n, ("the queue holds %d of %d"):format(left(), opts.n))
        cpu0 = opts.cpu()
        w = proc.spawn(worker, { env = wenv, dir = dir })
    else
        cpu0 = opts.cpu()
        w = proc.spawn(worker, { env = wenv, dir = dir })
        proc.sleep(0.5) -- the worker is waiting
        p = proc.spawn(producer_cmd, { env = penv, dir = dir })
    end
    local deadline = core.monotonic() + 300
    local done
    while true do
        if p == nil or not proc.alive(p) then
            if left() == 0 then
                done = core.monotonic()
                break
            end
        end
        assert(proc.alive(w), "the worker exited early: " .. (proc.read(w.log) or ""))
        assert(core.monotonic() < deadline, "deployed run: not done in 300 s")
        core.sleep(0.002)
    end
    local rcpu = opts.cpu() - cpu0
    if p then
        assert(proc.wait(p, 10) == 0, "producer: " .. (proc.read(p.log) or ""))
        enqueue = tonumber((proc.read(p.log) or ""):match("rate=([%d.]+)"))
    end
    local rc = proc.stop(w, 30)
    for _, c in ipairs(queues) do c:close() end
    local wlog = proc.read(w.log) or ""
    assert(rc == 0, "worker exit status " .. tostring(rc) .. ": " .. wlog)
    local r = report(out)
    assert(r.n == opts.n, ("the handlers ran %d tasks of %d"):format(r.n, opts.n))
    local cpu = tonumber(wlog:match("cpu_s=([%d.]+)"))
    local span = math.max(done, r.last) - r.first
    return { rate = opts.n / span, redis_us = rcpu * 1e6 / opts.n, cpu_us = cpu * 1e6 / opts.n,
             enqueue = enqueue, hwm_kb = tonumber(wlog:match("hwm_kb=(%d+)")) }
end

-- The CPU process pid has used (utime + stime), in ticks of 1/100 s.
local function cpu_ticks(pid)
    local st = proc.read("/proc/" .. pid .. "/stat") or ""
    local fields = {}
    for f in st:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
    return (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
end

--- The pickup latency from another process: a worker waiting on an empty queue, a producer
--- process sending n tasks one at a time. Returns the sorted pickups (ms), the worker's idle
--- CPU (percent of a core, over `idle` seconds before the producer starts), and the
--- producer's own schedule calls' {p50=, p99=} (ms), which the pickups include.
function M.latency(opts)
    local dir, out, base, wenv = setup(opts)
    local w = proc.spawn(WORKER, { env = wenv, dir = dir })
    proc.sleep(1)
    local t0 = cpu_ticks(w.pid)
    proc.sleep(opts.idle or 3)
    local idle = (cpu_ticks(w.pid) - t0) / (opts.idle or 3) -- USER_HZ 100: ticks/s = percent of a core
    local rc, pout = proc.run(("build/binduq-lua tests/bench/producer.lua latency %d %s"):format(opts.n, opts.prefix),
        { env = base, timeout = 120 })
    assert(rc == 0, "producer: " .. pout)
    local call_p50, call_p99 = pout:match("call_p50=([%d.]+) call_p99=([%d.]+)")
    proc.sleep(0.2) -- the last task's handler has run
    assert(proc.stop(w, 30) == 0, "worker: " .. (proc.read(w.log) or ""))
    local r = report(out)
    assert(#r.lat == opts.n, ("%d pickups of %d"):format(#r.lat, opts.n))
    table.sort(r.lat)
    return r.lat, idle, { p50 = tonumber(call_p50), p99 = tonumber(call_p99) }
end

--- Delayed tasks due at the same time: a worker process (w:run(), default options) waits
--- on an empty queue; this process schedules opts.n no-op runs (schedule_many, batches of
--- 1,000, deduplication off) all with the same run_at, a whole second far enough ahead for
--- the scheduling to end first. Returns the seconds from that due time to the first handler
--- start and to the last handler end (the worker's monotonic clock, which this process
--- shares; the due time converted with this process' wall-clock offset).
function M.delayed(opts)
    local bq = require("binduq")
    local dir, out, _, wenv = setup(opts)
    local w = proc.spawn(WORKER, { env = wenv, dir = dir })
    proc.sleep(0.5) -- the worker is waiting
    local s = bq.scheduler{ url = opts.url, queue_name = opts.queue, dedup = false }
    local at = math.floor(bq.now()) + math.ceil(opts.n / 20000) + 2
    local iso, batch = bq.iso8601(at), {}
    for i = 1, opts.n do
        batch[#batch + 1] = { type = "run", task_id = opts.prefix .. i, messages = { "x" }, run_at = iso }
        if #batch == 1000 or i == opts.n then
            assert(s:schedule_many(batch))
            batch = {}
        end
    end
    local ahead = at - bq.now()
    assert(ahead > 0, ("the scheduling ended %.3f s after the due time"):format(-ahead))
    local at_mono = at - (bq.now() - core.monotonic())
    local deadline = core.monotonic() + ahead + 120
    while assert(s:delayed_count()) + assert(s:queue_length()) + assert(s:inflight_count()) > 0 do
        assert(proc.alive(w), "the worker exited early: " .. (proc.read(w.log) or ""))
        assert(core.monotonic() < deadline, "delayed run: not done in 120 s after the due time")
        core.sleep(0.002)
    end
    s:close()
    assert(proc.stop(w, 30) == 0, "worker: " .. (proc.read(w.log) or ""))
    local r = report(out)
    assert(r.n == opts.n, ("the handlers ran %d tasks of %d"):format(r.n, opts.n))
    return { first = r.first - at_mono, last = r.last - at_mono }
end

--- The cancel of a task waiting in ctx:http, from another process: a worker process (w:run(),
--- default options) whose handler streams a long chat completion from the fake model server
--- (tests/helpers/fakemodel.py on loopback; 100,000 tokens 50 ms apart); for each sample this
--- process schedules a task, waits until the server has its request open, lets the stream
--- run 20-100 ms (any phase of the pace), notes the wall clock and calls s:cancel(), then
--- reads from the server's records when it saw the connection closed. opts: url, queue,
--- prefix, n samples (at most), seconds (the run's bound, 60). Returns the sorted times from
--- s:cancel() to the close (ms). The server and the worker are stopped by PID.
function M.cancel_http(opts)
    local bq = require("binduq")
    local json = require("binduq.json")
    local fakemodel = require("helpers.fakemodel")
    local bound = opts.seconds or 60
    local srv = fakemodel.start{ max_seconds = bound + 60 }
    local dir, _, _, wenv = setup(opts)
    wenv.BENCH_OUT = nil
    wenv.BENCH_MODEL = srv.url .. "/v1/chat/completions?tokens=100000&pace=0.05"
    local w = proc.spawn(WORKER, { env = wenv, dir = dir })
    local s = bq.scheduler{ url = opts.url, queue_name = opts.queue }
    -- The server's record of request `id` (by X-Request-Id), from its latest few.
    local function record(id)
        local resp = assert(bq.http{ url = srv.url .. "/_stats?events=4", timeout = 5 })
        for _, e in ipairs(resp:json().events) do
            if e.id == id then
                if e.closed == json.null then e.closed = nil end
                return e
            end
        end
    end
    local function wait(fn, what)
        local deadline = core.monotonic() + 10
        while true do
            local v = fn()
            if v then return v end
            assert(proc.alive(w), "the worker exited: " .. (proc.read(w.log) or ""))
            assert(core.monotonic() < deadline, what .. " within 10 s")
            core.sleep(0.002)
        end
    end
    local ok, res = pcall(function()
        local ms, stop = {}, core.monotonic() + bound
        for i = 1, opts.n do
            if core.monotonic() > stop then break end
            local id = opts.prefix .. i
            assert(s:run{ task_id = id, messages = { "hi" } })
            wait(function() return record(id) end, "the server saw no request for " .. id)
            core.sleep(0.02 + math.random() * 0.08)
            local t0 = core.now()
            assert(s:cancel(id))
            local e = wait(function() local r = record(id); return r and r.closed and r end,
                           "the server saw no close for " .. id)
            assert(e.closed_by_client, id .. " was not closed by the worker")
            ms[#ms + 1] = (e.closed - t0) * 1000
        end
        return ms
    end)
    s:close()
    local rc = proc.stop(w, 30)
    srv:stop()
    assert(ok, res)
    assert(rc == 0, "worker exit status " .. tostring(rc) .. ": " .. (proc.read(w.log) or ""))
    assert(#res > 0, "no sample in " .. bound .. " s")
    table.sort(res)
    return res
end

--- The bench's model server (tests/bench/modelsrv.c, libmicrohttpd): {pid, url, stop}.
function M.model_server()
    local p = proc.spawn("build/bench/modelsrv 600")
    local port = proc.wait_for(function() return (proc.read(p.log) or ""):match("PORT (%d+)") end, 10)
    if not port then
        proc.stop(p, 1)
        error("modelsrv did not start: " .. (proc.read(p.log) or "") .. " (make build/bench/modelsrv)")
    end
    return { pid = p.pid, url = "http://127.0.0.1:" .. port, stop = function() proc.stop(p, 5) end }
end

--- Many tasks waiting on a model at once: the model server answers each streamed chat
--- completion after `delay` seconds (1); a producer process fills n tasks, then one worker
--- process (w:run(), concurrency threads holding per tasks each: tasks_per_state) runs them,
--- each handler waiting in ctx:http. Little's law bounds the rate: in flight / delay.
--- The server is tests/bench/modelsrv.c, or with opts.python the tests' fakemodel.py (whose
--- own CPU and late starts weigh on the figure: docs/benchmarks.md). Returns M.run's
--- figures (rate, cpu_us, hwm_kb), the limit, the server's CPU a task (server_us) and
--- call_us: the CPU of the same call without its wait, made one at a time from this
--- process (bq.http on one kept-alive connection), the floor of a task's cost.
function M.agents(opts)
    local srv = opts.python and require("helpers.fakemodel").start{ max_seconds = 600 } or M.model_server()
    local delay = opts.delay or 1
    local model = srv.url .. "/v1/chat/completions?tokens=1"
    local env = { BENCH_MODEL = ("%s&delay=%g"):format(model, delay),
                  BENCH_CONCURRENCY = tostring(opts.concurrency), BENCH_PER_STATE = tostring(opts.per) }
    local srv0 = cpu_ticks(srv.pid)
    local ok, r = pcall(M.run, { url = opts.url, queue = opts.queue, n = opts.n, prefix = opts.prefix,
                                 env = env, cpu = opts.cpu })
    local srv_us = (cpu_ticks(srv.pid) - srv0) * 1e4 / opts.n
    local floor_ok, floor = pcall(function()
        local bq = require("binduq")
        local body = { model = "fake", stream = true, messages = { { role = "user", content = "hi" } } }
        local calls, c0 = 2000, os.clock()
        for _ = 1, calls do
            assert(bq.http{ url = model, body = body, on_event = function(ev) return ev.data ~= "[DONE]" end })
        end
        return (os.clock() - c0) * 1e6 / calls
    end)
    srv:stop()
    assert(ok, r)
    assert(floor_ok, floor)
    r.limit = opts.concurrency * opts.per / delay
    r.call_us = floor
    r.server_us = srv_us
    return r
end

--- The gateway's rate: one gateway process (gateway_server.lua: scheduling into Redis, no
--- worker) and a load generator (build/bench/httpload, `conns` kept-alive connections for
--- `seconds` each): GET /healthz (the HTTP server's own rate, the limit), then non-blocking
--- message/send (decode, check, record, schedule on Redis, encode). Every send must have
--- queued its run (the queue's length is checked: a JSON-RPC error is an HTTP 200 too).
--- Returns {healthz =, send =} in requests a second.
function M.gateway(opts)
    local p = proc.spawn("build/binduq-lua tests/bench/gateway_server.lua",
                         { env = { BENCH_URL = opts.url, BENCH_QUEUE = opts.queue, BINDUQ_LOG_LEVEL = "info" } })
    local ok, res = pcall(function()
        local port = proc.wait_for(function()
            return (proc.read(p.log) or ""):match("gateway_listening [^\n]*port=(%d+)")
        end, 15)
        assert(port, "the gateway did not start: " .. tostring(proc.read(p.log)))
        local body = '{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"kind":"message",'
            .. '"messageId":"m","role":"user","parts":[{"kind":"text","text":"hi"}]}}}'
        local function load(path, b)
            local out, okl = proc.sh(("build/bench/httpload %s %s %d %g %s"):format(port, path, opts.conns or 20,
                                     opts.seconds or 3, b and proc.quote(b) or ""))
            local rate, bad, n = out:match("^([%d.]+) (%d+) (%d+)")
            assert(okl and rate, "httpload: " .. out)
            assert(tonumber(bad) == 0, bad .. " responses were not 2xx")
            return tonumber(rate), tonumber(n)
        end
        local healthz = load("/healthz")
        local send, n = load("/", body)
        local c = core.client{ url = opts.url, queue_name = opts.queue }
        local queued = c:length("ready")
        c:close()
        assert(queued == n, ("%d message/send answered, %s runs queued"):format(n, tostring(queued)))
        return { healthz = healthz, send = send }
    end)
    proc.stop(p, 10)
    assert(ok, res)
    return res
end

--- The A2A stream's latency on an idle worker, deployed: a gateway process and a worker
--- process (examples/agent_gateway.lua, SERVE=gateway / SERVE=worker, concurrency 2) sharing
--- Redis and the task state in PostgreSQL (opts.url, opts.pg), or without opts.pg both in one
--- process (SERVE=both) through Redis, the state in its memory; opts.n times a message/stream
--- of a task that takes 50 ms, read as server-sent events with bq.http to the stream's end
--- (its final status), then 20 ms without a request: so each send finds the worker idle, every
--- slot free. (Closing each stream at its first status instead sent a task every ~25 ms, half
--- its 50 ms: the worker's two slots were both busy at most sends, and what was measured was
--- the wait for a slot.) Returns the sorted milliseconds from the request to the stream's
--- first event (the task: the gateway alone) and to the first event that says the task runs
--- (a status update, working: the worker's "started" task event, through Redis, to the
--- gateway; or the task itself when the worker was quicker than the gateway's first event),
--- { first = {...}, status = {...} }. Each stream must end on its final status, completed.
function M.sse(opts)
    local bq = require("binduq")
    local env = { REDIS_URL = opts.url, DATABASE_URL = opts.pg, REDIS_QUEUE_NAME = opts.queue,
                  BINDUQ_GATEWAY_ADDR = "127.0.0.1:0", BINDUQ_LOG_LEVEL = "info" }
    local genv, wenv = { SERVE = "gateway" }, { SERVE = "worker", BINDUQ_LOG_LEVEL = "warn" }
    for k, v in pairs(env) do
        genv[k] = genv[k] or v
        wenv[k] = wenv[k] or v
    end
    if not opts.pg then genv.SERVE = "both" end -- one process, the state in its memory
    local g = proc.spawn("build/binduq-lua examples/agent_gateway.lua", { env = genv })
    local w = opts.pg and proc.spawn("build/binduq-lua examples/agent_gateway.lua", { env = wenv })
    local ok, res = pcall(function()
        local port = proc.wait_for(function()
            return (proc.read(g.log) or ""):match("gateway_listening [^\n]*port=(%d+)")
        end, 15)
        assert(port, "the gateway did not start: " .. tostring(proc.read(g.log)))
        -- This process' first bq.http call loads libcurl (7 ms, traced): made here, not in
        -- the first sample.
        assert(bq.http{ url = ("http://127.0.0.1:%s/.well-known/agent-card.json"):format(port), timeout = 10 })
        core.sleep(0.5) -- the worker waits on the queue
        local first, status = {}, {}
        for i = 1, opts.n do
            local body = ('{"jsonrpc":"2.0","id":%d,"method":"message/stream","params":{"message":{"kind":"message",'
                .. '"messageId":"m%d","role":"user","parts":[{"kind":"text","text":"slow 0.05"}]}}}'):format(i, i)
            local t0 = core.monotonic()
            local final
            local r, err = bq.http{ url = ("http://127.0.0.1:%s/"):format(port), method = "POST", body = body,
                                    headers = { ["Content-Type"] = "application/json" }, timeout = 10,
                                    on_event = function(ev)
                                        local t = (core.monotonic() - t0) * 1000
                                        if #first < i then first[i] = t end
                                        -- the first event that says the task runs: the task
                                        -- itself when it was already working, else an update
                                        local state = ev.data and ev.data:match('"state":"([%a-]+)"')
                                        if state and state ~= "submitted" and not status[i] then status[i] = t end
                                        if ev.data and ev.data:find('"final":true', 1, true) then
                                            final = state
                                            return false
                                        end
                                    end }
            assert(r or err, "no answer")
            assert(status[i], ("stream %d ended without a status update: %s"):format(i, tostring(err)))
            assert(final == "completed", ("stream %d ended on %s: %s"):format(i, tostring(final), tostring(err)))
            core.sleep(0.02) -- the worker idle: its slots free, its acks written
        end
        table.sort(first)
        table.sort(status)
        return { first = first, status = status }
    end)
    if w then proc.stop(w, 10) end
    proc.stop(g, 10)
    assert(ok, res)
    return res
end

--- Recurring schedules (docs/recurring.md): the cost per tick. opts: url, queue, workers (4),
--- seconds (6), calls (2000), cpu = function() -> Redis CPU seconds so far.
--- First the deployed shape: `workers` worker processes (the integration test's
--- fixtures/recurring_worker.lua, w:run(), default options) share an every-second schedule
--- for `seconds`; each run prints its start time. Then, from this process, one at a time:
--- `calls` cron-4 calls that each claim a new tick and queue its run (a winning worker's
--- call), as many that find their tick claimed (the other workers' calls), and as many
--- delay-N pushes of the same run (what s:schedule{run_at=} sends for it: the same delayed
--- run without the claim), the comparable limit, and PING round trips. Returns { ticks, runs (first attempts), late_p50,
--- late_max (ms from a tick to its run's start), redis_us_tick (Redis CPU per tick: the span's
--- less the same workers' with a schedule that has no tick in it), redis_us_idle_s (that
--- idle CPU per second), win_us, lose_us, sched_us, ping_us (per call, wall clock),
--- win_redis_us, sched_redis_us (Redis CPU per call) }.
function M.recurring(opts)
    local bq = require("binduq")
    local nw, secs, calls = opts.workers or 4, opts.seconds or 6, opts.calls or 2000
    local fixture = "build/binduq-lua tests/integration/fixtures/recurring_worker.lua"
    -- The workers for `secs` seconds with a schedule every `every` seconds: Redis CPU seconds
    -- over that span, its bounds (wall clock), the workers.
    local function span(queue, every)
        local ws = {}
        local env = { REDIS_URL = opts.url, REDIS_QUEUE_NAME = queue, BINDUQ_LOG_LEVEL = "warn",
                      REC_EVERY = tostring(every) }
        for i = 1, nw do ws[i] = proc.spawn(fixture, { env = env }) end
        proc.sleep(1.5) -- all started and declared
        local c0, t0 = opts.cpu(), bq.now()
        proc.sleep(secs)
        local c1, t1 = opts.cpu(), bq.now()
        for _, w in ipairs(ws) do assert(proc.stop(w, 10) == 0, "recurring worker: " .. (proc.read(w.log) or "")) end
        return c1 - c0, t0, t1, ws
    end
    -- The same workers idle (a schedule every hour: no tick in the span), for what a tick adds.
    local idle_cpu = span(opts.queue .. ":idle", 3600)
    local cpu, t0, t1, ws = span(opts.queue, 1)
    local by, late = {}, {}
    for _, w in ipairs(ws) do
        for tick, attempt, at in (proc.read(w.log) or ""):gmatch("RAN tick:(%d+) (%d+) ([%d.]+)\n") do
            tick = tonumber(tick)
            if attempt == "1" then
                assert(not by[tick], "tick " .. tick .. " ran twice")
                by[tick] = true
                late[#late + 1] = (tonumber(at) - tick) * 1000
            end
        end
    end
    local ticks = 0
    for t = math.ceil(t0), math.floor(t1) do
        assert(by[t], "tick " .. t .. " did not run")
        ticks = ticks + 1
    end
    table.sort(late)
    local r = { ticks = ticks, runs = #late, late_p50 = late[math.max(1, #late // 2)], late_max = late[#late],
                redis_us_tick = (cpu - idle_cpu) * 1e6 / ticks, redis_us_idle_s = idle_cpu * 1e6 / secs }
    -- The calls, one at a time, from this process.
    local s = bq.scheduler{ url = opts.url, queue_name = opts.queue .. ":calls", dedup = false }
    local client = s.client
    local msg = require("binduq.task").encode({ type = "run", task_id = "bench:0", messages = { "x" } }, 1)
    local far = math.floor(bq.now()) + 86400
    local function timed(fn)
        local cpu0, w0 = opts.cpu(), core.monotonic()
        for i = 1, calls do fn(i) end
        return (core.monotonic() - w0) * 1e6 / calls, (opts.cpu() - cpu0) * 1e6 / calls
    end
    r.win_us, r.win_redis_us = timed(function(i)
        local fired = client:cron("bench", "fire", i == 1 and "{}" or "", { { i, far + i, msg } })
        assert(fired == 1)
    end)
    r.lose_us = timed(function(i)
        local fired = client:cron("bench", "fire", "", { { i, far + i, msg } })
        assert(fired == 0)
    end)
    local runs = {} -- the runs, distinct (the delayed set holds each message once), encoded first
    for i = 1, calls do
        runs[i] = require("binduq.task").encode({ type = "run", task_id = "bench:" .. i, messages = { "x" } }, 1)
    end
    r.sched_us, r.sched_redis_us = timed(function(i)
        local pushed = client:push_delayed({ runs[i] }, { false }, { 0 }, { far + i }, 3600)
        assert(pushed and pushed[1])
    end)
    r.ping_us = timed(function() assert(client:ping()) end)
    s:close()
    return r
end

-- By hand: build/binduq-lua tests/bench/deployed.lua redis://127.0.0.1:6379/0 [n] [KEY=VALUE ...]
--      or: build/binduq-lua tests/bench/deployed.lua redis://127.0.0.1:6379/0 cancel-http [n]
--      or: build/binduq-lua tests/bench/deployed.lua redis://127.0.0.1:6379/0 agents [n]
--      or: build/binduq-lua tests/bench/deployed.lua redis://127.0.0.1:6379/0 recurring
if arg and arg[0] and arg[0]:match("deployed%.lua$") and arg[2] == "recurring" then
    local port = tonumber(arg[1]:match(":(%d+)/")) or 6379
    local r = M.recurring{ url = arg[1], queue = ("{deployed:rec%d}"):format(math.random(1, 1e9)),
                           cpu = function() return require("helpers.redis").cpu_seconds(port) end }
    print(("recurring, 4 workers, a tick a second: %d ticks, each once; its run started p50 %.1f ms (max %.1f) "
           .. "after the tick; Redis %.0f us a tick over idle (idle: %.0f us a second)")
        :format(r.ticks, r.late_p50, r.late_max, r.redis_us_tick, r.redis_us_idle_s))
    print(("the claim per tick (cron-4): %.1f us (Redis %.1f us)  %.2f x a delay-N push of the run (%.1f us, Redis %.1f us); "
           .. "found claimed %.1f us; PING %.1f us")
        :format(r.win_us, r.win_redis_us, r.win_us / r.sched_us, r.sched_us, r.sched_redis_us, r.lose_us, r.ping_us))
elseif arg and arg[0] and arg[0]:match("deployed%.lua$") and arg[2] == "agents" then
    local n = tonumber(arg[3] or "") or 10000
    local port = tonumber(arg[1]:match(":(%d+)/")) or 6379
    local r = M.agents{ url = arg[1], queue = ("{deployed:ag%d}"):format(math.random(1, 1e9)), n = n,
                        prefix = "ag-", concurrency = 2, per = 1000,
                        python = os.getenv("BENCH_AGENT_SERVER") == "python",
                        cpu = function() return require("helpers.redis").cpu_seconds(port) end }
    print(("agents: %.0f tasks/s  %.2f x Little's law (%.0f/s); worker %.1f us/task (a call alone %.1f us), "
           .. "the model server %.1f us/task, Redis %.1f us/task; peak RSS %.0f MiB")
        :format(r.rate, r.rate / r.limit, r.limit, r.cpu_us, r.call_us, r.server_us, r.redis_us, r.hwm_kb / 1024))
elseif arg and arg[0] and arg[0]:match("deployed%.lua$") and arg[2] == "cancel-http" then
    local n = tonumber(arg[3] or "") or 100
    local ms = M.cancel_http{ url = arg[1], queue = "{deployed:cancel}", n = n,
                              prefix = ("c%d-"):format(math.random(1, 1e9)) }
    local function pct(p) return ms[math.max(1, math.ceil(#ms * p))] end
    print(("cancel in ctx:http, %d samples: p50 %.2f ms  p99 %.2f ms  max %.2f ms   %.2f x the limit (p99 <= 50 ms)")
        :format(#ms, pct(0.5), pct(0.99), ms[#ms], pct(0.99) / 50))
elseif arg and arg[0] and arg[0]:match("deployed%.lua$") and arg[2] == "latency" then
    local n = tonumber(arg[3] or "") or 1000
    local lat, idle, call = M.latency{ url = arg[1], queue = ("{deployed:lat%d}"):format(math.random(1, 1e9)), n = n,
                                       prefix = ("l%d-"):format(math.random(1, 1e9)), idle = 3 }
    print(("pickup p50 %.3f ms p99 %.3f ms; schedule calls p50 %.3f ms p99 %.3f ms; idle worker %.2f %% of a core")
        :format(lat[math.max(1, math.ceil(n * 0.5))], lat[math.max(1, math.ceil(n * 0.99))], call.p50, call.p99, idle))
elseif arg and arg[0] and arg[0]:match("deployed%.lua$") then
    local url, n = arg[1], tonumber(arg[2] or "") or 20000
    local env = {}
    for i = 3, #arg do
        local k, v = arg[i]:match("^([%w_]+)=(.*)$")
        env[k] = v
    end
    local port = tonumber(url:match(":(%d+)/")) or 6379
    local function cpu() return require("helpers.redis").cpu_seconds(port) end
    local r = M.run{ url = url, queue = env.BENCH_QUEUE or "{deployed}", n = n,
                     prefix = ("d%d-"):format(math.random(1, 1e9)), env = env, producer_env = env,
                     cpu = cpu, concurrent = env.CONCURRENT == "1", inproc = env.INPROC == "1" }
    print(("%.0f tasks/s, worker %.2f us/task, Redis %.2f us/task, enqueue %.0f/s"):format(r.rate, r.cpu_us,
        r.redis_us, r.enqueue or 0))
end

return M

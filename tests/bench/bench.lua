-- bench.lua -- binduq's benchmark, run by `make bench` (tests/bench/run).
--
-- Against a throwaway redis-server on a free loopback port it measures, in one run, first
-- the deployed shape (deployed.lua): a producer process (producer.lua) fills the queue, a
-- worker process started the way a deployment starts one (binduq-lua on proc_worker.lua,
-- w:run(), default options unless the line says) runs it and is stopped by SIGTERM once the
-- queue is empty; the rate is timed from the first pickup to the last completion, Redis'
-- CPU per task from INFO over the same span:
--   process   100,000 no-op tasks at-least-once (concurrency 1, the default, and 4) and
--             at-most-once, and with task events off (their cost); 20,000 over 3 queues, on a rate-limited queue (its one
--             limiter key, 16 keys, and a key per task), over TLS (against plain TCP), and with a producer in the
--             worker's own process (against one in another process)
--   pickup    latency from a producer process' LPUSH to the handler's start, at idle (1,000
--             samples, 2 ms apart), and the idle worker's CPU; beside it, in the same round, a
--             plain hiredis consumer's BRPOP pickup and a plain LPUSH at the same idle (cbench)
--   delayed   100,000 runs from the bench process with the same run_at: from that due time
--             to the first handler start and the last handler end
--   recurring 4 worker processes sharing an every-second schedule (docs/recurring.md): each tick
--             once, how late its run starts, Redis CPU per tick over the same workers idle; the
--             claim's cost (one cron-4 call) against a delay-N push of the same run
--   cancel    a task waiting in ctx:http (issue 20): from s:cancel() in the bench process to
--             the fake model server seeing the worker's connection closed (100 samples),
--             against the limit, 50 ms at p99
--   storage   20,000 tasks with their state in a throwaway PostgreSQL, against the same in
--             memory, and pgbench's simple-update rate there
--   stream    the A2A gateway's message/stream on an idle worker (issue 22): from the call to
--             the first event that says the task runs (200 samples, each stream read to its
--             end and the next sent 20 ms later, so each finds every slot free; gateway and
--             worker in two processes sharing PostgreSQL, then in one), against the limit,
--             5 ms at p99
-- then the producers:
--   enqueue   100,000 tasks pipelined in batches of 1,000 (Lua schedule_many, C
--             bq_schedule_many), with deduplication on, and 10,000 one at a time (Lua
--             schedule, C bq_schedule)
-- and last the shortcut modes, labelled as such: w:drain() with the producer in the worker's
-- process, and a drain()ed worker process' peak memory.
-- Each figure is printed next to what Redis itself does on the same server in the same run
-- (redis-benchmark LPUSH and RPOP with a 300-byte payload and the CPU Redis spends on them,
-- a plain hiredis LPUSH loop, pgbench), as a ratio, because these machines are shared and
-- noisy. Every figure is taken BENCH_REPEAT times (3) and the median printed. Logging is at
-- "warn" so the figures measure the queue, not the log.

package.path = "tests/?.lua;" .. package.path
local bq = require("binduq")
local core = require("binduq.core")
local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local tls = require("helpers.tls")
local deployed = require("bench.deployed")
local ops = require("bench.ops")

local N = tonumber(os.getenv("BENCH_TASKS")) or 100000
local NV = tonumber(os.getenv("BENCH_VARIANT_TASKS")) or 20000
local N_SYNC = tonumber(os.getenv("BENCH_SYNC_TASKS")) or 10000
local N_LAT = tonumber(os.getenv("BENCH_LATENCY_SAMPLES")) or 1000
local N_PG = tonumber(os.getenv("BENCH_PG_TASKS")) or 20000
local N_CANCEL = tonumber(os.getenv("BENCH_CANCEL_SAMPLES")) or 100
local N_AGENTS = tonumber(os.getenv("BENCH_AGENT_TASKS")) or 20000
local SSE_LIMIT_MS = 5 -- issue 22: message/stream to its first status event on an idle worker, p99
local CANCEL_LIMIT_MS = 50 -- issue 20: p99 from s:cancel() to the transfer closed, server side
local MAX_TASKS = tonumber(os.getenv("BENCH_MAX_TASKS")) or 1000 -- the memory figure's storage.max_tasks
local PAYLOAD = ops.PAYLOAD
local REPEAT = tonumber(os.getenv("BENCH_REPEAT")) or 3
local CBENCH = "build/bench/cbench"

bq.log_configure{ level = "warn" }
io.stdout:setvbuf("line")

local function say(fmt, ...) io.write(("  " .. fmt .. "\n"):format(...)) end
local function step(s) io.write(("-- %s\n"):format(s)) end

-- Runs fn(r) for r = 1..REPEAT; each returns a table of figures. Returns the median of each.
local function median_of(label, fn)
    local runs = {}
    for r = 1, REPEAT do
        runs[r] = fn(r)
        local parts = {}
        for k, v in pairs(runs[r]) do parts[#parts + 1] = ("%s %.4g"):format(k, v) end
        table.sort(parts)
        io.write(("  %s, run %d of %d: %s\n"):format(label, r, REPEAT, table.concat(parts, ", ")))
    end
    local med = {}
    for k in pairs(runs[1]) do
        local vals = {}
        for r = 1, REPEAT do vals[r] = runs[r][k] end
        table.sort(vals)
        med[k] = vals[(REPEAT + 1) // 2]
    end
    return med
end

-- Redis' own CPU seconds (user + sys) so far, from INFO cpu.
local function redis_cpu(server) return server:cpu_seconds() end

-- redis-benchmark's figure for one command: requests/s, p50 ms, Redis CPU us per request.
local function redis_benchmark(server, test, extra, n)
    n = n or N
    local c0 = redis_cpu(server)
    local out = proc.sh(("redis-benchmark -h 127.0.0.1 -p %d -t %s -d %d -n %d -q %s")
        :format(server.port, test, PAYLOAD, n, extra or ""))
    local us = (redis_cpu(server) - c0) * 1e6 / n
    local rps = out:match("([%d.]+) requests per second")
    local p50 = out:match("p50=([%d.]+) msec")
    assert(rps, "redis-benchmark said: " .. out)
    return tonumber(rps), tonumber(p50), us
end

-- One figure of the C side (tests/bench/cbench.c).
local function cbench(mode, port, queue, n)
    local out = proc.sh(("%s %s 127.0.0.1 %d %s %d %d 2>&1"):format(CBENCH, mode, port, proc.quote(queue), n, PAYLOAD))
    local rate = tonumber(out:match("^(%d+)"))
    assert(rate, "cbench " .. mode .. " said: " .. out)
    return rate
end

local function percentile(sorted, p)
    local k = math.max(1, math.ceil(#sorted * p))
    return sorted[k]
end

print(("binduq %s benchmark: %d tasks of %d bytes (variants %d); %s"):format(
    bq._VERSION, N, PAYLOAD, NV, proc.sh("nproc"):gsub("%s+$", "") .. " cores"))
step("starting a throwaway redis-server (with a TLS port too)")
local certs = tls.make(proc.tmpdir())
local server = redis.start{ tls = { cert = certs.server_cert, key = certs.server_key, ca = certs.ca } }
local F = {} -- the figures, printed at the end
local ok, err = pcall(function()
    say("redis-server %s on 127.0.0.1:%d", server:cli("INFO", "server"):match("redis_version:(%S+)"), server.port)

    step("Redis' own limits on this server (redis-benchmark, 50 clients), and its CPU per request")
    F.lim = median_of("redis-benchmark", function()
        local f = {}
        f.lpush = redis_benchmark(server, "lpush")
        f.rpop = redis_benchmark(server, "rpop")
        local _, lpush_us, rpop_us
        f.lpush_p, _, lpush_us = redis_benchmark(server, "lpush", "-P 100")
        f.rpop_p, _, rpop_us = redis_benchmark(server, "rpop", "-P 100")
        f.push_pop_us = lpush_us + rpop_us
        f.rtt_ms = select(2, redis_benchmark(server, "lpush", "-c 1", 20000))
        server:cli("FLUSHALL")
        return f
    end)
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (no pipelining)", F.lim.lpush, F.lim.rpop)
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (pipeline of 100); Redis CPU for one LPUSH and one RPOP %.2f us",
        F.lim.lpush_p, F.lim.rpop_p, F.lim.push_pop_us)
    say("single-client LPUSH round trip p50 %.3f ms", F.lim.rtt_ms)

    local queue = "{bench" .. math.random(1, 1e9) .. "}"
    local function cpu() return redis_cpu(server) end
    -- One deployed-shape run of n tasks (deployed.lua). env: the worker's variables (see
    -- proc_worker.lua), BENCH_QUEUES = true for three queues; extra: deployed.run's options.
    local function run_one(tag, n, env, extra)
        local o = { url = server.url, queue = queue .. ":" .. tag, n = n, prefix = tag .. "-",
                    env = {}, producer_env = {}, cpu = cpu, poll_url = server.url }
        for k, v in pairs(env or {}) do o.env[k] = v end
        for k, v in pairs(extra or {}) do o[k] = v end
        if o.env.BENCH_QUEUES then
            o.env.BENCH_QUEUES = ("%s:high,%s:normal,%s:low"):format(o.queue, o.queue, o.queue)
        end
        o.producer_env.BENCH_QUEUES, o.producer_env.BENCH_CA = o.env.BENCH_QUEUES, o.env.BENCH_CA
        o.producer_env.BENCH_RATELIMIT = o.env.BENCH_RATELIMIT
        local res = deployed.run(o)
        server:cli("FLUSHALL")
        return { rate = res.rate, redis_us = res.redis_us, cpu_us = res.cpu_us, enqueue = res.enqueue }
    end
    -- Its median over REPEAT runs.
    local function dep(label, tag, n, env, extra)
        return median_of(label, function(r) return run_one(tag .. r, n, env, extra) end)
    end
    -- Variants compared with the first, in rounds: each round runs every variant once, the
    -- order turning by one each round, so that on a machine whose speed drifts no variant
    -- always runs first or next to the same one. Returns each variant's medians (by key),
    -- with x: its rate over the first's in the same round, the median of those ratios.
    local function rounds(n, specs)
        local runs = {}
        for j = 1, #specs do runs[j] = {} end
        for r = 1, REPEAT do
            for i = 0, #specs - 1 do
                local j = (i + r - 1) % #specs + 1
                local s = specs[j]
                local res = run_one(s.tag .. r, n, s.env, s.extra)
                runs[j][r] = res
                local parts = {}
                for k, v in pairs(res) do parts[#parts + 1] = ("%s %.4g"):format(k, v) end
                table.sort(parts)
                io.write(("  %s, round %d of %d: %s\n"):format(s.label, r, REPEAT, table.concat(parts, ", ")))
            end
        end
        local out = {}
        for j, s in ipairs(specs) do
            local med = {}
            for k in pairs(runs[j][1]) do
                local vals = {}
                for r = 1, REPEAT do vals[r] = runs[j][r][k] end
                table.sort(vals)
                med[k] = vals[(REPEAT + 1) // 2]
            end
            local ratios = {}
            for r = 1, REPEAT do ratios[r] = runs[j][r].rate / runs[1][r].rate end
            table.sort(ratios)
            med.x = ratios[(REPEAT + 1) // 2]
            out[s.key] = med
        end
        return out
    end

    -- The variants compared with concurrency 1 run in its rounds: this machine's speed drifts
    -- by a third within minutes, and a ratio of runs minutes apart measured that drift.
    step(("the deployed shape: a producer process fills the queue with %d tasks, then a worker process (w:run(), default options) runs them; SIGTERM once done; in rounds with the same at concurrency 4, with task events off (BINDUQ_EVENTS_MAX=0 in the producer and the worker: their cost), and with the producer in the worker's own process (it schedules the tasks, then calls w:run())")
        :format(N))
    local c = rounds(N, { { key = "c1", label = "at-least-once, concurrency 1", tag = "a" },
                          { key = "c4", label = "at-least-once, concurrency 4", tag = "b",
                            env = { BENCH_CONCURRENCY = "4" } },
                          { key = "noev", label = "at-least-once, task events off", tag = "k",
                            env = { BINDUQ_EVENTS_MAX = "0" },
                            extra = { producer_env = { BINDUQ_EVENTS_MAX = "0" } } },
                          { key = "inproc", label = "producer in the worker's process", tag = "d",
                            extra = { inproc = true } } })
    F.c1, F.c4, F.noev, F.inproc = c.c1, c.c4, c.noev, c.inproc
    step("the same at-most-once")
    F.amo = dep("at-most-once", "c", N, { BENCH_DELIVERY = "at-most-once" })
    step(("%d tasks each: the plain run, over 3 queues (strict priority, the producer routing them round-robin), and a rate-limited queue (its one limiter key, 16 keys, then a key per task; a limit never reached), and the task state in Redis, in rounds")
        :format(NV))
    local variants = rounds(NV, {
        { key = "plain_v", label = "plain", tag = "e" },
        { key = "routing", label = "3 queues", tag = "f", env = { BENCH_QUEUES = true } },
        { key = "ratelimit_one", label = "rate limited, one key", tag = "l", env = { BENCH_RATELIMIT = "queue" } },
        { key = "ratelimit", label = "rate limited, 16 keys", tag = "g", env = { BENCH_RATELIMIT = "16" } },
        { key = "ratelimit_task", label = "rate limited, a key per task", tag = "j", env = { BENCH_RATELIMIT = "task" } },
        { key = "rstore", label = "task state in Redis", tag = "r", env = { STORAGE_TYPE = "redis" },
          extra = { producer_env = { STORAGE_TYPE = "redis" } } },
    })
    for k, f in pairs(variants) do F[k] = f end
    step(("TLS: %d tasks over plain TCP and over rediss://, in rounds"):format(NV))
    local t = rounds(NV, { { key = "tcp", label = "TCP", tag = "i" },
                           { key = "tls", label = "TLS", tag = "h", env = { BENCH_CA = certs.ca },
                             extra = { url = server.tls_url } } })
    F.tcp, F.tls = t.tcp, t.tls

    step(("pickup latency at idle: a worker process waiting on an empty queue, a producer process sending %d tasks one at a time (2 ms apart); the worker's CPU while idle for 3 s")
        :format(N_LAT))
    F.lat = median_of("pickup", function(r)
        local lat, idle, call = deployed.latency{ url = server.url, queue = queue .. ":lat" .. r, n = N_LAT,
                                                  prefix = "lat" .. r .. "-", idle = 3 }
        server:cli("FLUSHALL")
        -- The floor in the same round: a plain hiredis consumer in BRPOP and a plain LPUSH,
        -- the same 2 ms apart, two processes of their own (cbench pickup).
        local out = proc.sh(("%s pickup 127.0.0.1 %d %s %d %d 2>&1"):format(CBENCH, server.port,
            proc.quote(queue .. ":raw" .. r), N_LAT, PAYLOAD))
        local raw50, raw99, push50, push99 = out:match("^([%d.]+) ([%d.]+) ([%d.]+) ([%d.]+)")
        assert(raw99, "cbench pickup said: " .. out)
        return { p50 = percentile(lat, 0.5), p99 = percentile(lat, 0.99), idle_pct = idle,
                 call_p50 = call.p50, call_p99 = call.p99, raw_p50 = tonumber(raw50),
                 raw_p99 = tonumber(raw99), push_p50 = tonumber(push50), push_p99 = tonumber(push99) }
    end)

    step(("delayed tasks: a worker process (w:run(), default options) waiting on an empty queue, %d no-op runs scheduled from this process with the same run_at, a whole second ahead")
        :format(N))
    F.delayed = median_of("delayed", function(r)
        local d = deployed.delayed{ url = server.url, queue = queue .. ":delayed" .. r, n = N, prefix = "dl" .. r .. "-" }
        server:cli("FLUSHALL")
        return d
    end)

    step("recurring schedules: 4 worker processes (w:run(), default options) share an every-second schedule for 6 s "
         .. "(and, for the idle baseline, one with no tick in 6 s); then from this process, one at a time, 2,000 cron-4 "
         .. "calls that claim a tick and queue its run, 2,000 that find it claimed, 2,000 delay-N pushes of the same run and PINGs")
    F.recurring = median_of("recurring", function(r)
        local rr = deployed.recurring{ url = server.url, queue = queue .. ":rec" .. r, cpu = function() return redis_cpu(server) end }
        server:cli("FLUSHALL")
        return rr
    end)

    step(("cancel in ctx:http: a worker process (w:run(), default options) whose handler streams a long answer from the fake model server (loopback); %d times a task is scheduled, canceled mid-stream, and the server's record read for when it saw the connection close")
        :format(N_CANCEL))
    F.cancel = median_of("cancel in ctx:http", function(r)
        local ms = deployed.cancel_http{ url = server.url, queue = queue .. ":cancel" .. r, n = N_CANCEL,
                                         prefix = "cx" .. r .. "-", seconds = 60 }
        server:cli("FLUSHALL")
        return { p50 = percentile(ms, 0.5), p99 = percentile(ms, 0.99), max = ms[#ms], n = #ms }
    end)

    step(("agents waiting on a model: %d tasks (%d rounds of 2,000), each a streamed chat completion the bench's model server (build/bench/modelsrv, libmicrohttpd) answers after 1 s; one worker process (w:run(), concurrency 2, tasks_per_state 1000: 2,000 in flight); Little's law (in flight / 1 s) is the limit")
        :format(N_AGENTS, N_AGENTS // 2000))
    F.agents = median_of("agents", function(r)
        local a = deployed.agents{ url = server.url, queue = queue .. ":agents" .. r, n = N_AGENTS,
                                   prefix = "ag" .. r .. "-", concurrency = 2, per = 1000,
                                   cpu = function() return redis_cpu(server) end }
        server:cli("FLUSHALL")
        return { rate = a.rate, limit = a.limit, cpu_s_1000 = a.cpu_us / 1000, hwm_mib = a.hwm_kb / 1024,
                 call_us = a.call_us, server_us = a.server_us }
    end)

    step("the A2A gateway: one gateway process scheduling into Redis, 20 kept-alive connections (build/bench/httpload); "
         .. "GET /healthz (the HTTP server alone) is the limit, then non-blocking message/send, 3 s each")
    F.gateway = median_of("gateway", function(r)
        local g = deployed.gateway{ url = server.url, queue = queue .. ":gw" .. r }
        server:cli("FLUSHALL")
        return g
    end)

    step(("task state in PostgreSQL: %d tasks, on a durable server (fsync and synchronous_commit on, "
          .. "as PostgreSQL ships), against the same in memory, with synchronous_commit=off in the "
          .. "worker's URL, and with each of the worker's commits held 2 ms (a slower disk); pgbench on "
          .. "the same server"):format(N_PG))
    local db = pg.start{ durable = true }
    local okp, perr = pcall(function()
        local init = proc.sh(("pgbench -i -q -s 1 '%s' 2>&1"):format(db.url))
        assert(init:find("done", 1, true), "pgbench -i said: " .. init)
        -- the worker's sessions only: libpq's options, as a user would set them in DATABASE_URL
        local async_url = db.url .. "?options=-csynchronous_commit%3Doff"
        -- a disk whose flush takes 2 ms more: commit_delay holds each commit before its flush
        -- (commit_siblings 0: every commit); the worker must still take the queue in chunks
        local slow_url = db.url .. "?options=-ccommit_delay%3D2000%20-ccommit_siblings%3D0"
        local pg_runs = { { "m", nil }, { "p", db.url }, { "o", async_url }, { "s", slow_url } }
        F.pg = median_of("PostgreSQL", function(r)
            -- the four in turn, the order turning by one each run
            local rate = {}
            for i = 0, #pg_runs - 1 do
                local v = pg_runs[(i + r - 1) % #pg_runs + 1]
                rate[v[1]] = run_one(v[1] .. r, N_PG, v[2] and { BENCH_PG = v[2] } or nil).rate
            end
            -- -N: the simple update (one UPDATE, one SELECT, one INSERT per transaction), one
            -- client, as one worker at concurrency 1 is.
            local out = proc.sh(("pgbench -N -c 1 -j 1 -T 5 '%s' 2>&1"):format(db.url))
            local tps = tonumber(out:match("tps = ([%d.]+)"))
            assert(tps, "pgbench said: " .. out)
            return { memory = rate.m, postgres = rate.p, async = rate.o, slow = rate.s, pgbench = tps,
                     x = rate.p / rate.m, xb = rate.p / tps, xa = rate.o / rate.m, xs = rate.s / rate.p }
        end)
        step("the A2A stream on an idle worker: 200 message/stream calls, each read as server-sent events to "
             .. "its end and the next sent 20 ms later; "
             .. "a gateway process and a worker process sharing Redis and PostgreSQL, then both in one process "
             .. "(the state in its memory)")
        local function sse(label, tag, pg_url)
            return median_of(label, function(r)
                local x = deployed.sse{ url = server.url, pg = pg_url, queue = queue .. tag .. r, n = 200 }
                server:cli("FLUSHALL")
                return { p50 = percentile(x.status, 0.5), p99 = percentile(x.status, 0.99),
                         first_p99 = percentile(x.first, 0.99) }
            end)
        end
        F.sse = sse("stream, 2 processes + PostgreSQL", ":sse", db.url)
        F.sse1 = sse("stream, one process, memory", ":sse1", nil)
    end)
    db:stop()
    assert(okp, perr)

    step(("enqueue: %d tasks pipelined in batches of 1,000 from Lua (schedule_many) with deduplication off and on"):format(N))
    local s = bq.scheduler{ url = server.url, queue_name = queue, dedup = false }
    F.enq = median_of("enqueue", function(r)
        local sd = bq.scheduler{ url = server.url, queue_name = queue .. ":dedup" }
        local plain = ops.fill(s, N, "ep" .. r .. "-")
        local dedup = ops.fill(sd, N, "ed" .. r .. "-")
        sd:close()
        server:cli("FLUSHALL")
        collectgarbage()
        return { plain = plain, dedup = dedup }
    end)

    step(("enqueue from C (libbinduq): %d tasks with bq_schedule_many in batches of 1000; %d one at a time with bq_schedule and with Lua's schedule, between two runs of a plain hiredis LPUSH loop")
        :format(N, N_SYNC))
    -- One at a time, the round trip is the cost, and this machine's round trip drifts within
    -- seconds: each run measures the loop before and after the two producers and divides by
    -- the mean of the two, and the ratios' median is printed.
    F.cenq = median_of("C enqueue", function(r)
        local many = cbench("schedule-many", server.port, queue .. ":c", N)
        local loop1 = cbench("lpush-loop", server.port, queue .. ":c", N_SYNC)
        local one = cbench("schedule", server.port, queue .. ":c", N_SYNC)
        local list = {}
        for i = 1, N_SYNC do list[i] = ops.op(i, "sy" .. r .. "-") end
        local t0 = core.monotonic()
        for i = 1, N_SYNC do assert(s:schedule(list[i])) end
        local lua_one = N_SYNC / (core.monotonic() - t0)
        local loop2 = cbench("lpush-loop", server.port, queue .. ":c", N_SYNC)
        server:cli("FLUSHALL")
        local loop = (loop1 + loop2) / 2
        return { many = many, one = one, loop = loop, lua_one = lua_one,
                 one_ratio = one / loop, lua_ratio = lua_one / loop }
    end)

    step(("shortcut mode (not how a deployment runs): %d tasks scheduled from the worker's own process, then w:drain() in it"):format(N))
    local make = dofile("tests/bench/noop_worker.lua")
    F.drain = median_of("drain()", function(r)
        ops.fill(s, N, "dr" .. r .. "-")
        collectgarbage()
        local w = make{ url = server.url, queue = queue }
        local rc0, t0 = redis_cpu(server), core.monotonic()
        local st = w:drain()
        local rate = st.completed / (core.monotonic() - t0)
        local rus = (redis_cpu(server) - rc0) * 1e6 / N
        assert(st.completed == N, ("drain: completed %d of %d"):format(st.completed, N))
        w:close()
        server:cli("FLUSHALL")
        return { rate = rate, redis_us = rus }
    end)
    s:close()

    step(("memory: a worker process at concurrency 8 draining %d tasks (w:drain()), its memory storage bounded to %d records, then keeping all")
        :format(NV, MAX_TASKS))
    F.mem = median_of("worker process", function(r)
        local qn = queue .. ":proc"
        local env = { BENCH_URL = server.url, BENCH_QUEUE = qn, BENCH_CONCURRENCY = "8" }
        local function drain(tag, max_tasks)
            local sp = bq.scheduler{ url = server.url, queue_name = qn, dedup = false }
            ops.fill(sp, NV, "rss" .. tag .. r .. "-")
            sp:close()
            env.BENCH_MAX_TASKS = max_tasks and tostring(max_tasks) or nil
            local rc, out = proc.run("build/binduq-lua tests/bench/proc_worker.lua drain", { env = env, timeout = 120 })
            assert(rc == 0, "proc_worker drain: " .. out)
            local fig = {}
            for k, v in out:gmatch("([%w_]+)=([%d.]+)") do fig[k] = tonumber(v) end
            assert(fig.completed == NV, "proc_worker: " .. out)
            return fig
        end
        local all = drain("a", nil)
        local fig = drain("b", MAX_TASKS)
        server:cli("FLUSHALL")
        return { hwm_mib = fig.hwm_kb / 1024, private_mib = fig.anon_kb / 1024,
                 all_hwm_mib = all.hwm_kb / 1024, all_private_mib = all.anon_kb / 1024 }
    end)
end)
server:stop()
if not ok then
    io.stderr:write("bench failed: ", tostring(err), "\n")
    os.exit(1)
end

local L = F.lim
local function row(label, fmt, ...) print(("  %-34s" .. fmt):format(label, ...)) end
print()
print(("results: the median of %d runs each (ratio = binduq / the limit measured on the same server, same run;")
    :format(REPEAT))
print("  a ratio between two binduq runs is the median of the ratios of runs made in turn, round by round)")
print("the deployed shape (producer process -> Redis -> worker process, w:run(), default options)")
row("process, at-least-once", "%9.0f tasks/s   %5.2f x redis-benchmark RPOP (%.0f/s), %5.2f x pipelined RPOP (%.0f/s)",
    F.c1.rate, F.c1.rate / L.rpop, L.rpop, F.c1.rate / L.rpop_p, L.rpop_p)
row("  Redis CPU per task", "%9.2f us        %5.2f x one pipelined LPUSH + RPOP (%.2f us)",
    F.c1.redis_us, F.c1.redis_us / L.push_pop_us, L.push_pop_us)
row("  worker CPU per task", "%9.2f us", F.c1.cpu_us)
row("  concurrency 4", "%9.0f tasks/s   %5.2f x concurrency 1; Redis %.2f us, worker %.2f us a task",
    F.c4.rate, F.c4.x, F.c4.redis_us, F.c4.cpu_us)
row("  task events off", "%9.0f tasks/s   events on (the default) run at %.2f x; Redis %.2f us, worker %.2f us a task",
    F.noev.rate, 1 / F.noev.x, F.noev.redis_us, F.noev.cpu_us)
row("process, at-most-once", "%9.0f tasks/s   %5.2f x redis-benchmark RPOP; Redis %.2f us, worker %.2f us a task",
    F.amo.rate, F.amo.rate / L.rpop, F.amo.redis_us, F.amo.cpu_us)
row("  producer in the worker's process", "%9.0f tasks/s   another process' producer costs %.0f %%",
    F.inproc.rate, 100 * (1 - 1 / F.inproc.x))
row(("process, 3 queues (%d)"):format(NV), "%9.0f tasks/s   %5.2f x the plain run (%.0f/s, %d tasks)",
    F.routing.rate, F.routing.x, F.plain_v.rate, NV)
row(("process, state in Redis (%d)"):format(NV), "%9.0f tasks/s   %5.2f x the plain run; Redis %.2f us a task; its producer %.0f/s",
    F.rstore.rate, F.rstore.x, F.rstore.redis_us, F.rstore.enqueue or 0)
row("process, rate limited (one key)", "%9.0f tasks/s   %5.2f x the plain run; Redis %.2f us a task",
    F.ratelimit_one.rate, F.ratelimit_one.x, F.ratelimit_one.redis_us)
row("  16 keys (a key per conversation)", "%9.0f tasks/s   %5.2f x the plain run; Redis %.2f us a task",
    F.ratelimit.rate, F.ratelimit.x, F.ratelimit.redis_us)
row("  a limiter key per task", "%9.0f tasks/s   %5.2f x the plain run; Redis %.2f us a task",
    F.ratelimit_task.rate, F.ratelimit_task.x, F.ratelimit_task.redis_us)
row("process over TLS", "%9.0f tasks/s   %5.2f x the same over plain TCP (%.0f/s)",
    F.tls.rate, F.tls.x, F.tcp.rate)
row("pickup latency, idle", "p50 %.3f ms  p99 %.3f ms   %5.2f x / %5.2f x a plain hiredis BRPOP's (p50 %.3f, p99 %.3f ms)",
    F.lat.p50, F.lat.p99, F.lat.p50 / F.lat.raw_p50, F.lat.p99 / F.lat.raw_p99, F.lat.raw_p50, F.lat.raw_p99)
row("  the producer's schedule calls", "p50 %.3f ms  p99 %.3f ms   %5.2f x / %5.2f x a plain LPUSH's at the same idle (p50 %.3f, p99 %.3f ms)",
    F.lat.call_p50, F.lat.call_p99, F.lat.call_p50 / F.lat.push_p50, F.lat.call_p99 / F.lat.push_p99,
    F.lat.push_p50, F.lat.push_p99)
row("  idle worker CPU", "%9.2f %% of a core", F.lat.idle_pct)
row(("%s due in the same second"):format(N == 100000 and "100,000" or tostring(N)),
    "all started within %.2f s (the first %.1f ms after it)", F.delayed.last, F.delayed.first * 1000)
row("recurring, 4 workers, 1 tick/s", "each tick once; its run started p50 %.1f ms (max %.1f) after the tick; Redis %.0f us a tick over idle",
    F.recurring.late_p50, F.recurring.late_max, F.recurring.redis_us_tick)
row("  the claim per tick (cron-4)", "%9.1f us  (Redis %.1f us)  %5.2f x a delay-N push of the run (%.1f us, Redis %.1f us); found claimed %.1f us; PING %.1f us",
    F.recurring.win_us, F.recurring.win_redis_us, F.recurring.win_us / F.recurring.sched_us, F.recurring.sched_us,
    F.recurring.sched_redis_us, F.recurring.lose_us, F.recurring.ping_us)
row(("cancel in ctx:http (%d)"):format(F.cancel.n), "p50 %.3f ms  p99 %.3f ms   %5.2f x the limit (p99 %d ms); max %.3f ms",
    F.cancel.p50, F.cancel.p99, F.cancel.p99 / CANCEL_LIMIT_MS, CANCEL_LIMIT_MS, F.cancel.max)
row(("agents, 2,000 waiting 1 s (%d)"):format(N_AGENTS), "%9.0f tasks/s   %5.2f x Little's law (%.0f/s); peak RSS %.0f MiB",
    F.agents.rate, F.agents.rate / F.agents.limit, F.agents.limit, F.agents.hwm_mib)
row("  worker CPU", "%9.3f s per 1,000 tasks   %5.2f x the same call's own CPU, one at a time with bq.http (%.1f us); the model server %.1f us a task",
    F.agents.cpu_s_1000, F.agents.cpu_s_1000 * 1000 / F.agents.call_us, F.agents.call_us, F.agents.server_us)
row("gateway message/send", "%9.0f req/s    %5.2f x GET /healthz on the same server (%.0f/s)",
    F.gateway.send, F.gateway.send / F.gateway.healthz, F.gateway.healthz)
for _, v in ipairs({ { "stream, 2 processes + PostgreSQL", F.sse }, { "stream, one process, memory", F.sse1 } }) do
    row(v[1], "first status p50 %.2f ms  p99 %.2f ms   %5.2f x the limit (p99 %d ms); the task event p99 %.2f ms",
        v[2].p50, v[2].p99, v[2].p99 / SSE_LIMIT_MS, SSE_LIMIT_MS, v[2].first_p99)
end
row(("process, PostgreSQL (%d)"):format(N_PG), "%9.0f tasks/s   %5.2f x pgbench simple-update (%.0f tps, 1 client)",
    F.pg.postgres, F.pg.xb, F.pg.pgbench)
row("", "                  %5.2f x the same run in memory (%.0f/s)", F.pg.x, F.pg.memory)
row("  synchronous_commit=off (URL)", "%9.0f tasks/s   %5.2f x the same run in memory (the worker's commits not waited for)",
    F.pg.async, F.pg.xa)
row("  each commit 2 ms slower (URL)", "%9.0f tasks/s   %5.2f x the durable line (commit_delay: a slower disk; still in chunks)",
    F.pg.slow, F.pg.xs)
print("producers")
row("enqueue, pipelined, Lua", "%9.0f tasks/s   %5.2f x redis-benchmark LPUSH (%.0f/s), %5.2f x pipelined LPUSH (%.0f/s)",
    F.enq.plain, F.enq.plain / L.lpush, L.lpush, F.enq.plain / L.lpush_p, L.lpush_p)
row("  with deduplication", "%9.0f tasks/s   %5.2f x without", F.enq.dedup, F.enq.dedup / F.enq.plain)
row("enqueue, pipelined, C", "%9.0f tasks/s   %5.2f x pipelined LPUSH (bq_schedule_many; records each run, dedup off)",
    F.cenq.many, F.cenq.many / L.lpush_p)
row("enqueue, one at a time, C", "%9.0f tasks/s   %5.2f x a plain hiredis LPUSH loop (%.0f/s) (bq_schedule)",
    F.cenq.one, F.cenq.one_ratio, F.cenq.loop)
row("enqueue, one at a time, Lua", "%9.0f tasks/s   %5.2f x the hiredis LPUSH loop (schedule)",
    F.cenq.lua_one, F.cenq.lua_ratio)
print("shortcut modes (not the deployed shape)")
row("w:drain(), producer in-process", "%9.0f tasks/s   %5.2f x redis-benchmark RPOP; Redis %.2f us a task",
    F.drain.rate, F.drain.rate / L.rpop, F.drain.redis_us)
row("worker process memory, conc. 8", "peak RSS %.1f MiB (private %.1f MiB) keeping %d records; %.1f MiB (%.1f) keeping all %d",
    F.mem.hwm_mib, F.mem.private_mib, MAX_TASKS, F.mem.all_hwm_mib, F.mem.all_private_mib, NV)

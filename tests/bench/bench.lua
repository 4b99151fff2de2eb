-- bench.lua -- binduq's benchmark, run by `make bench` (tests/bench/run).
--
-- Against a throwaway redis-server on a free loopback port it measures, in one run:
--   enqueue   100,000 tasks of 300 bytes, pipelined in batches of 1,000 (Lua schedule_many and
--             C bq_schedule_many), and 10,000 one at a time (Lua schedule and C bq_schedule)
--   process   the 100,000 queued tasks with a no-op Lua handler (one worker), at-least-once
--             and at-most-once, with the worker's and Redis' CPU seconds per 10,000 tasks;
--             at-most-once also with a handler thread per core (concurrency = nproc)
--   pickup    latency from the producer's LPUSH to the handler's start, at idle (1,000 samples)
--   memory    a worker process at concurrency 8: its peak resident set (its memory storage
--             bounded to 1,000 records, and keeping all), and its CPU when idle
--   tls       20,000 tasks enqueued and processed over rediss://, against plain TCP
--   storage   processing 10,000 tasks with their state in a throwaway PostgreSQL, against the
--             same run with the state in memory, and pgbench's simple-update rate there
-- and prints each next to what Redis itself does on the same server in the same run
-- (redis-benchmark LPUSH and RPOP with a 300-byte payload, a plain hiredis LPUSH loop,
-- pgbench), as a ratio, because these machines are shared and noisy. Every figure is taken
-- BENCH_REPEAT times (3) and the median printed. Logging is at "warn" so the figures measure
-- the queue, not the log.

package.path = "tests/?.lua;" .. package.path
local bq = require("binduq")
local core = require("binduq.core")
local proc = require("helpers.proc")
local redis = require("helpers.redis")
local pg = require("helpers.pg")
local tls = require("helpers.tls")

local N = tonumber(os.getenv("BENCH_TASKS")) or 100000
local NV = tonumber(os.getenv("BENCH_VARIANT_TASKS")) or 20000
local N_SYNC = tonumber(os.getenv("BENCH_SYNC_TASKS")) or 10000
local N_LAT = tonumber(os.getenv("BENCH_LATENCY_SAMPLES")) or 1000
local N_PG = tonumber(os.getenv("BENCH_PG_TASKS")) or 10000
local CONCURRENCY = tonumber(os.getenv("BENCH_CONCURRENCY")) or 1
local CORES = tonumber((proc.sh("nproc"))) or 2 -- at-most-once is also run with one handler thread per core
local MAX_TASKS = tonumber(os.getenv("BENCH_MAX_TASKS")) or 1000 -- the memory figure's storage.max_tasks
-- The advanced-pattern runs fetch one task ahead, so a fetch overlaps the handling of the
-- previous task (the plain run they are compared with does the same).
local PREFETCH = tonumber(os.getenv("BENCH_PREFETCH")) or 1
local PAYLOAD = 300
local REPEAT = tonumber(os.getenv("BENCH_REPEAT")) or 3
local CBENCH = "build/bench/cbench"

bq.log_configure{ level = "warn" }
io.stdout:setvbuf("line")

local function say(fmt, ...) io.write(("  " .. fmt .. "\n"):format(...)) end
local function step(s) io.write(("-- %s\n"):format(s)) end

-- redis-benchmark's figure for one command; returns requests/s and p50 ms.
local function redis_benchmark(port, test, extra)
    local out = proc.sh(("redis-benchmark -h 127.0.0.1 -p %d -t %s -d %d -n %d -q %s")
        :format(port, test, PAYLOAD, N, extra or ""))
    local rps = out:match("([%d.]+) requests per second")
    local p50 = out:match("p50=([%d.]+) msec")
    assert(rps, "redis-benchmark said: " .. out)
    return tonumber(rps), tonumber(p50)
end

-- A task whose JSON is PAYLOAD bytes long.
local function op(i, prefix)
    local t = { type = "run", task_id = prefix .. i, conversation_id = "c", messages = { "" },
                timestamp = "2026-01-01T00:00:00.000Z" }
    local base = #require("binduq.task").encode(t)
    t.messages = { ("x"):rep(PAYLOAD - base) }
    return t
end

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
local function redis_cpu(server)
    local info = server:cli("INFO", "cpu")
    return tonumber(info:match("used_cpu_user:([%d.]+)")) + tonumber(info:match("used_cpu_sys:([%d.]+)"))
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

print(("binduq %s benchmark: %d tasks of %d bytes, worker concurrency %d"):format(
    bq._VERSION, N, PAYLOAD, CONCURRENCY))
step("starting a throwaway redis-server (with a TLS port too)")
local certs = tls.make(proc.tmpdir())
local server = redis.start{ tls = { cert = certs.server_cert, key = certs.server_key, ca = certs.ca } }
local pg_rate, pg_mem, pgbench_tps_c, tls_enq, tls_proc, tcp_enq, tcp_proc
local ok, err = pcall(function()
    say("redis-server %s on 127.0.0.1:%d", server:cli("INFO", "server"):match("redis_version:(%S+)"), server.port)

    step("Redis' own limits on this server (redis-benchmark, 50 clients)")
    local lim = median_of("redis-benchmark", function()
        local f = {}
        f.lpush = redis_benchmark(server.port, "lpush")
        f.rpop = redis_benchmark(server.port, "rpop")
        f.lpush_p = redis_benchmark(server.port, "lpush", "-P 100")
        f.rpop_p = redis_benchmark(server.port, "rpop", "-P 100")
        f.rtt_ms = select(2, redis_benchmark(server.port, "lpush", "-c 1 -n 20000"))
        server:cli("FLUSHALL")
        return f
    end)
    local lpush_rps, rpop_rps, lpush_p_rps, rpop_p_rps, rtt_p50 = lim.lpush, lim.rpop, lim.lpush_p, lim.rpop_p,
        lim.rtt_ms
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (no pipelining)", lpush_rps, rpop_rps)
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (pipeline of 100)", lpush_p_rps, rpop_p_rps)
    say("single-client LPUSH round trip p50 %.3f ms", rtt_p50)
    server:cli("FLUSHALL")

    local queue = "{bench" .. math.random(1, 1e9) .. "}"
    local s = bq.scheduler{ url = server.url, queue_name = queue, dedup = false }
    local make = dofile("tests/bench/noop_worker.lua")

    -- 100 batches of 1,000 task operations; fresh ids for every run (a worker skips the ids
    -- it finished already).
    local function batches_for(prefix)
        local out = {}
        for b = 0, N / 1000 - 1 do
            local list = {}
            for i = 1, 1000 do list[i] = op(b * 1000 + i, prefix) end
            out[#out + 1] = list
        end
        return out
    end

    -- Both deliveries at the bench's concurrency, then at-most-once with a handler thread per
    -- core (one worker process still: concurrency is its option).
    local proc_fig = {}
    local proc_runs = { { "at-least-once", CONCURRENCY }, { "at-most-once", CONCURRENCY } }
    if CONCURRENCY ~= CORES then proc_runs[3] = { "at-most-once", CORES } end
    for _, pr in ipairs(proc_runs) do
        local delivery, conc = pr[1], pr[2]
        local label = conc == CONCURRENCY and delivery or ("%s, concurrency %d"):format(delivery, conc)
        step(("enqueue %d tasks (Lua, pipelined in batches of 1000), then process them: one worker, concurrency %d, no-op handler, %s")
            :format(N, conc, delivery))
        proc_fig[label] = median_of(label, function(r)
            local prefix = (delivery == "at-least-once" and "pl" or "pm") .. (conc == CONCURRENCY and "" or "c")
            local batches = batches_for(prefix .. r .. "-")
            local t0 = core.monotonic()
            for _, list in ipairs(batches) do assert(s:schedule_many(list)) end
            local enq = N / (core.monotonic() - t0)
            assert(tonumber(s:queue_length()) == N)
            batches = nil
            collectgarbage()
            local w = make{ url = server.url, queue = queue, concurrency = conc, delivery = delivery }
            local rc0, c0 = redis_cpu(server), os.clock()
            t0 = core.monotonic()
            local stats = w:drain()
            local rate = stats.completed / (core.monotonic() - t0)
            local cpu, rcpu = os.clock() - c0, redis_cpu(server) - rc0
            assert(stats.completed == N, ("completed %d of %d"):format(stats.completed, N))
            w:close()
            return { enqueue = enq, rate = rate, cpu = cpu * 10000 / N, redis_cpu = rcpu * 10000 / N }
        end)
    end
    local proc_rate = proc_fig["at-least-once"].rate
    local enq = proc_fig["at-least-once"].enqueue

    step(("enqueue from C (libbinduq): %d tasks with bq_schedule_many in batches of 1000; %d one at a time with bq_schedule and with Lua's schedule, between two runs of a plain hiredis LPUSH loop")
        :format(N, N_SYNC))
    -- One at a time, the round trip is the cost, and this machine's round trip drifts within
    -- seconds: each run measures the loop before and after the two producers and divides by
    -- the mean of the two, and the ratios' median is printed.
    local cfig = median_of("C enqueue", function(r)
        local many = cbench("schedule-many", server.port, queue .. ":c", N)
        local loop1 = cbench("lpush-loop", server.port, queue .. ":c", N_SYNC)
        local one = cbench("schedule", server.port, queue .. ":c", N_SYNC)
        local ops = {}
        for i = 1, N_SYNC do ops[i] = op(i, "sy" .. r .. "-") end
        local t0 = core.monotonic()
        for i = 1, N_SYNC do assert(s:schedule(ops[i])) end
        local lua_one = N_SYNC / (core.monotonic() - t0)
        local loop2 = cbench("lpush-loop", server.port, queue .. ":c", N_SYNC)
        server:cli("DEL", queue .. ":c", queue)
        local loop = (loop1 + loop2) / 2
        return { many = many, one = one, loop = loop, lua_one = lua_one,
                 one_ratio = one / loop, lua_ratio = lua_one / loop }
    end)
    local enq_sync = cfig.lua_one

    -- The advanced patterns, each against a plain run of the same size in this run.
    local function process(variant, prefix, route)
        local sched = bq.scheduler{ url = server.url, queue_name = queue, dedup = false,
                                    route = route and function(o) return o.metadata.q end or nil }
        local list = {}
        for i = 1, NV do
            list[#list + 1] = op(i, prefix)
            if route then
                list[#list].metadata = { q = queue .. ({ ":high", ":normal", ":low" })[i % 3 + 1] }
            end
            if #list == 1000 then assert(sched:schedule_many(list)); list = {} end
        end
        if #list > 0 then assert(sched:schedule_many(list)) end
        sched:close()
        local w = make{ url = server.url, queue = queue, concurrency = CONCURRENCY, variant = variant,
                        prefetch = PREFETCH }
        local t1 = core.monotonic()
        local st = w:drain()
        assert(st.completed == NV, ("%s: completed %d of %d"):format(variant or "plain", st.completed, NV))
        w:close()
        return NV / (core.monotonic() - t1)
    end
    step(("advanced patterns, %d tasks each, prefetch %d: plain, routing over 3 queues, a rate-limit key per task")
        :format(NV, PREFETCH))
    local adv = median_of("patterns", function(r)
        return { plain = process(nil, "v0-" .. r .. "-"), routing = process("routing", "v1-" .. r .. "-", true),
                 ratelimit = process("ratelimit", "v2-" .. r .. "-") }
    end)
    local plain_v, routing_v, ratelimit_v = adv.plain, adv.routing, adv.ratelimit

    step(("enqueue %d tasks with deduplication on, pipelined"):format(N))
    local dedup_fig = median_of("deduplicated", function(r)
        local batches = batches_for("dd" .. r .. "-")
        local sd = bq.scheduler{ url = server.url, queue_name = queue .. ":dedup" }
        local t0 = core.monotonic()
        for _, list in ipairs(batches) do assert(sd:schedule_many(list)) end
        local rate = N / (core.monotonic() - t0)
        assert(sd:queue_length() == N)
        sd:close()
        server:cli("DEL", queue .. ":dedup")
        return { rate = rate }
    end)
    local enq_dedup = dedup_fig.rate


    step(("pickup latency at idle: %d samples, producer LPUSH to handler start"):format(N_LAT))
    -- The earlier steps left 300,000 deduplication keys; Redis grows its key table for them
    -- by active rehashing, 1 ms in every 100 ms, which put the first run's p99 at 1.7 ms
    -- (0.3-0.4 ms in the runs after it). Start from an empty server, as the earlier steps do.
    server:cli("FLUSHALL")
    local lat_fig = median_of("pickup", function(r)
        -- The timestamp is taken before the producer's schedule, so the producer's own pauses
        -- count: collect what the earlier steps left (100,000-operation batches), whose last
        -- sweep would otherwise fall into this run.
        collectgarbage()
        local got
        local w = make{ url = server.url, queue = queue, concurrency = 1, on_result = function(res) got = res.result end }
        w:start()
        local lat = {}
        for i = 1, N_LAT do
            got = nil
            proc.sleep(0.001) -- let the worker go back to its blocking pop
            assert(s:schedule{ type = "run", task_id = "lat" .. r .. "-" .. i,
                               messages = { ("t=%.9f"):format(core.monotonic()) } })
            local deadline = core.monotonic() + 10
            while got == nil do
                assert(w:poll(1) ~= false)
                assert(core.monotonic() < deadline, ("pickup: no result for task %d in 10 s"):format(i))
            end
            lat[i] = got * 1000
        end
        w:stop()
        while w:poll(5) ~= false do end
        table.sort(lat)
        return { p50 = percentile(lat, 0.5), p99 = percentile(lat, 0.99) }
    end)
    s:close()

    step(("a worker process at concurrency 8: peak memory draining %d tasks (its memory storage bounded to %d records, then keeping all), then its CPU while idle for 3 s")
        :format(NV, MAX_TASKS))
    local mem_fig = median_of("worker process", function(r)
        local qn = queue .. ":proc"
        local env = { BENCH_URL = server.url, BENCH_QUEUE = qn, BENCH_CONCURRENCY = "8" }
        -- Drains NV tasks in a worker process of its own; its figures.
        local function drain(tag, max_tasks)
            local sp = bq.scheduler{ url = server.url, queue_name = qn, dedup = false }
            local list = {}
            for i = 1, NV do
                list[#list + 1] = op(i, "rss" .. tag .. r .. "-")
                if #list == 1000 then assert(sp:schedule_many(list)); list = {} end
            end
            if #list > 0 then assert(sp:schedule_many(list)) end
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
        -- idle: a worker blocked on an empty queue, its CPU ticks over 3 s
        local p = proc.spawn("build/binduq-lua tests/bench/proc_worker.lua run", { env = env })
        proc.sleep(1)
        local function ticks()
            local st = proc.read("/proc/" .. p.pid .. "/stat") or ""
            local fields = {}
            for f in st:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
            return (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0) -- utime, stime
        end
        local t0 = ticks()
        proc.sleep(3)
        local idle = (ticks() - t0) / 100 / 3 * 100 -- percent of one core (USER_HZ 100)
        proc.stop(p, 5)
        return { hwm_mib = fig.hwm_kb / 1024, private_mib = fig.anon_kb / 1024,
                 all_hwm_mib = all.hwm_kb / 1024, all_private_mib = all.anon_kb / 1024,
                 cpu = fig.cpu_s * 10000 / NV, idle_pct = idle }
    end)

    step(("TLS: %d tasks enqueued (pipelined) and processed over rediss://, then over plain TCP")
        :format(NV))
    local function over(url, tag, tlsopt)
        local qn = queue .. ":" .. tag
        local st = bq.scheduler{ url = url, queue_name = qn, dedup = false, tls = tlsopt }
        local list, t1 = {}, core.monotonic()
        for i = 1, NV do
            list[#list + 1] = op(i, tag)
            if #list == 1000 then assert(st:schedule_many(list)); list = {} end
        end
        if #list > 0 then assert(st:schedule_many(list)) end
        local e = NV / (core.monotonic() - t1)
        st:close()
        local wt = make{ url = url, queue = qn, concurrency = CONCURRENCY, prefetch = PREFETCH, tls = tlsopt }
        t1 = core.monotonic()
        local sts = wt:drain()
        assert(sts.completed == NV, ("%s: completed %d of %d"):format(tag, sts.completed, NV))
        wt:close()
        return e, NV / (core.monotonic() - t1)
    end
    local tls_fig = median_of("TLS", function(r)
        local te, tp = over(server.tls_url, "tls" .. r .. "-", { ca_file = certs.ca })
        local ce, cp = over(server.url, "tcp" .. r .. "-")
        return { tls_enqueue = te, tls_process = tp, tcp_enqueue = ce, tcp_process = cp }
    end)
    tls_enq, tls_proc, tcp_enq, tcp_proc = tls_fig.tls_enqueue, tls_fig.tls_process, tls_fig.tcp_enqueue,
        tls_fig.tcp_process

    step(("task state in PostgreSQL: %d tasks, against the same in memory; pgbench on the same server")
        :format(N_PG))
    if os.getenv("BENCH_DEBUG") then bq.log_configure{ level = "info" } end
    local db = pg.start()
    local okp, perr = pcall(function()
        local function stored_run(storage, prefix)
            local qn = queue .. ":" .. prefix
            local sp = bq.scheduler{ scheduler = { url = server.url, queue_name = qn, dedup = false },
                                     storage = storage }
            local list = {}
            for i = 1, N_PG do
                list[#list + 1] = op(i, prefix)
                if #list == 1000 then assert(sp:schedule_many(list)); list = {} end
            end
            if #list > 0 then assert(sp:schedule_many(list)) end
            sp:close()
            local wp = make{ url = server.url, queue = qn, concurrency = CONCURRENCY, storage = storage }
            local t1 = core.monotonic()
            local st = wp:drain()
            assert(st.completed == N_PG, ("%s: completed %d of %d"):format(prefix, st.completed, N_PG))
            wp:close()
            return N_PG / (core.monotonic() - t1)
        end
        local init = proc.sh(("pgbench -i -q -s 1 '%s' 2>&1"):format(db.url))
        assert(init:find("done", 1, true), "pgbench -i said: " .. init)
        local pg_fig = median_of("PostgreSQL", function(r)
            local mem = stored_run({ type = "memory" }, "stm" .. r .. "-")
            local rate = stored_run({ type = "postgres", url = db.url }, "stp" .. r .. "-")
            -- -N: the simple update (one UPDATE, one SELECT, one INSERT per transaction), with
            -- as many clients as the worker has handler states.
            local out = proc.sh(("pgbench -N -c %d -j 1 -T 5 '%s' 2>&1"):format(CONCURRENCY, db.url))
            local tps = tonumber(out:match("tps = ([%d.]+)"))
            assert(tps, "pgbench said: " .. out)
            return { memory = mem, postgres = rate, pgbench = tps }
        end)
        pg_mem, pg_rate, pgbench_tps_c = pg_fig.memory, pg_fig.postgres, pg_fig.pgbench
    end)
    db:stop()
    assert(okp, perr)

    local al, am = proc_fig["at-least-once"], proc_fig["at-most-once"]
    print()
    print(("results: the median of %d runs each (ratio = binduq / the limit measured on the same server, same run)")
        :format(REPEAT))
    print(("  enqueue, pipelined, Lua %9.0f tasks/s   %5.2f x redis-benchmark LPUSH (%.0f/s)")
        :format(enq, enq / lpush_rps, lpush_rps))
    print(("                                            %5.2f x pipelined LPUSH (%.0f/s)")
        :format(enq / lpush_p_rps, lpush_p_rps))
    print(("  enqueue, pipelined, C   %9.0f tasks/s   %5.2f x pipelined LPUSH (bq_schedule_many)")
        :format(cfig.many, cfig.many / lpush_p_rps))
    print(("  enqueue, one at a time  %9.0f tasks/s   %5.2f x a plain hiredis LPUSH loop (%.0f/s) (C, bq_schedule)")
        :format(cfig.one, cfig.one_ratio, cfig.loop))
    print(("                    Lua   %9.0f tasks/s   %5.2f x the hiredis LPUSH loop (Lua schedule)")
        :format(enq_sync, cfig.lua_ratio))
    print(("  process, at-least-once  %9.0f tasks/s   %5.2f x redis-benchmark RPOP (%.0f/s)")
        :format(proc_rate, proc_rate / rpop_rps, rpop_rps))
    print(("                                            %5.2f x pipelined RPOP (%.0f/s)")
        :format(proc_rate / rpop_p_rps, rpop_p_rps))
    print(("  process, at-most-once   %9.0f tasks/s   %5.2f x redis-benchmark RPOP; at-least-once is %.2f x this")
        :format(am.rate, am.rate / rpop_rps, proc_rate / am.rate))
    local amc = proc_fig[("at-most-once, concurrency %d"):format(CORES)]
    if amc then
        print(("                          %9.0f tasks/s   %5.2f x redis-benchmark RPOP at concurrency %d (%d cores)")
            :format(amc.rate, amc.rate / rpop_rps, CORES, CORES))
    end
    print(("  CPU per 10,000 tasks    worker %.3f s, Redis %.3f s (at-least-once); worker %.3f s, Redis %.3f s (at-most-once)")
        :format(al.cpu, al.redis_cpu, am.cpu, am.redis_cpu))
    if amc then
        print(("                          worker %.3f s, Redis %.3f s (at-most-once, concurrency %d)")
            :format(amc.cpu, amc.redis_cpu, CORES))
    end
    print(("  process, 3 queues       %9.0f tasks/s   %5.2f x the plain run (%.0f/s, %d tasks each)")
        :format(routing_v, routing_v / plain_v, plain_v, NV))
    print(("  process, rate limited   %9.0f tasks/s   %5.2f x the plain run (a limiter key per task)")
        :format(ratelimit_v, ratelimit_v / plain_v))
    print(("  enqueue, deduplicated   %9.0f tasks/s   %5.2f x pipelined enqueue without deduplication")
        :format(enq_dedup, enq_dedup / enq))
    print(("  pickup latency          p50 %.3f ms  p99 %.3f ms   %5.2f x / %5.2f x the LPUSH round trip (%.3f ms)")
        :format(lat_fig.p50, lat_fig.p99, lat_fig.p50 / rtt_p50, lat_fig.p99 / rtt_p50, rtt_p50))
    print(("  worker process, conc. 8 peak RSS %.1f MiB (private %.1f MiB) keeping %d records, CPU %.3f s per 10,000 tasks, idle %.2f %% CPU")
        :format(mem_fig.hwm_mib, mem_fig.private_mib, MAX_TASKS, mem_fig.cpu, mem_fig.idle_pct))
    print(("                          peak RSS %.1f MiB (private %.1f MiB) keeping all %d records (storage.max_tasks 100,000)")
        :format(mem_fig.all_hwm_mib, mem_fig.all_private_mib, NV))
    print(("  enqueue over TLS        %9.0f tasks/s   %5.2f x the same over plain TCP (%.0f/s)")
        :format(tls_enq, tls_enq / tcp_enq, tcp_enq))
    print(("  process over TLS        %9.0f tasks/s   %5.2f x the same over plain TCP (%.0f/s, prefetch %d)")
        :format(tls_proc, tls_proc / tcp_proc, tcp_proc, PREFETCH))
    print(("  process, PostgreSQL     %9.0f tasks/s   %5.2f x pgbench simple-update (%.0f tps, %d client%s)")
        :format(pg_rate, pg_rate / pgbench_tps_c, pgbench_tps_c, CONCURRENCY, CONCURRENCY == 1 and "" or "s"))
    print(("                                            %5.2f x the same run in memory (%.0f/s): %.0f %% of the time in storage")
        :format(pg_rate / pg_mem, pg_mem, 100 * (1 - pg_rate / pg_mem)))
end)
server:stop()
if not ok then
    io.stderr:write("bench failed: ", tostring(err), "\n")
    os.exit(1)
end

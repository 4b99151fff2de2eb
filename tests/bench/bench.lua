-- bench.lua -- binduq's benchmark, run by `make bench` (tests/bench/run).
--
-- Against a throwaway redis-server on a free loopback port it measures, in one run:
--   enqueue   100,000 tasks of 300 bytes, pipelined in batches of 1,000, and 10,000 one at a time
--   process   the 100,000 queued tasks with a no-op Lua handler (one worker process)
--   pickup    latency from the producer's LPUSH to the handler's start, at idle (1,000 samples)
--   tls       20,000 tasks enqueued and processed over rediss://, against plain TCP
--   storage   processing 10,000 tasks with their state in a throwaway PostgreSQL, against the
--             same run with the state in memory, and pgbench's simple-update rate there
-- and prints each next to what Redis itself does on the same server in the same run
-- (redis-benchmark LPUSH and RPOP with a 300-byte payload, and its single-client round trip),
-- as a ratio, because these machines are shared and noisy. Logging is at "warn" so the
-- figures measure the queue, not the log.

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
-- The advanced-pattern runs fetch one task ahead, so a fetch overlaps the handling of the
-- previous task (the plain run they are compared with does the same).
local PREFETCH = tonumber(os.getenv("BENCH_PREFETCH")) or 1
local PAYLOAD = 300

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
    local lpush_rps = redis_benchmark(server.port, "lpush")
    local rpop_rps = redis_benchmark(server.port, "rpop")
    local lpush_p_rps = redis_benchmark(server.port, "lpush", "-P 100")
    local rpop_p_rps = redis_benchmark(server.port, "rpop", "-P 100")
    local _, rtt_p50 = redis_benchmark(server.port, "lpush", "-c 1 -n 20000")
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (no pipelining)", lpush_rps, rpop_rps)
    say("LPUSH %9.0f/s   RPOP %9.0f/s   (pipeline of 100)", lpush_p_rps, rpop_p_rps)
    say("single-client LPUSH round trip p50 %.3f ms", rtt_p50)
    server:cli("FLUSHALL")

    local queue = "{bench" .. math.random(1, 1e9) .. "}"
    local s = bq.scheduler{ url = server.url, queue_name = queue, dedup = false }

    local batches = {}
    for b = 0, N / 1000 - 1 do
        local list = {}
        for i = 1, 1000 do list[i] = op(b * 1000 + i, "b") end
        batches[#batches + 1] = list
    end
    local make = dofile("tests/bench/noop_worker.lua")
    local enq, rate = nil, {}
    for _, delivery in ipairs({ "at-least-once", "at-most-once" }) do
        step(("enqueue %d tasks, pipelined in batches of 1000 (no deduplication)"):format(N))
        local t0 = core.monotonic()
        for _, list in ipairs(batches) do assert(s:schedule_many(list)) end
        enq = enq or N / (core.monotonic() - t0)
        assert(tonumber(s:queue_length()) == N)

        step(("process them: one worker, concurrency %d, no-op handler, %s"):format(CONCURRENCY, delivery))
        local w = make{ url = server.url, queue = queue, concurrency = CONCURRENCY, delivery = delivery }
        t0 = core.monotonic()
        local stats = w:drain()
        rate[delivery] = stats.completed / (core.monotonic() - t0)
        assert(stats.completed == N, ("completed %d of %d"):format(stats.completed, N))
        w:close()
        -- the next round uses fresh task ids: the worker skips ids it has finished already
        for _, list in ipairs(batches) do
            for _, t in ipairs(list) do t.task_id = t.task_id .. "x" end
        end
    end
    local proc_rate = rate["at-least-once"]

    -- The advanced patterns, each against a plain run of the same size in this run.
    local function process(variant, prefix, route)
        local sched = bq.scheduler{ url = server.url, queue_name = queue, dedup = false,
                                    route = route and function(op) return op.metadata.q end or nil }
        local list = {}
        for i = 1, NV do
            list[#list + 1] = op(i, prefix)
            if route then
                list[#list].metadata = { q = queue .. ({ ":high", ":normal", ":low" })[i % 3 + 1] }
            end
            if #list == 1000 then assert(sched:schedule_many(list)); list = {} end
        end
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
    local plain_v = process(nil, "v0")
    local routing_v = process("routing", "v1", true)
    local ratelimit_v = process("ratelimit", "v2")
    step(("enqueue %d tasks with deduplication on, pipelined"):format(N))
    local sd = bq.scheduler{ url = server.url, queue_name = queue .. ":dedup" }
    local t0 = core.monotonic()
    for _, list in ipairs(batches) do assert(sd:schedule_many(list)) end
    local enq_dedup = N / (core.monotonic() - t0)
    assert(sd:queue_length() == N)
    sd:close()
    server:cli("DEL", queue .. ":dedup")

    step(("enqueue %d tasks one at a time (synchronous)"):format(N_SYNC))
    local ops = {}
    for i = 1, N_SYNC do ops[i] = op(i, "s") end
    t0 = core.monotonic()
    for i = 1, N_SYNC do assert(s:schedule(ops[i])) end
    local enq_sync = N_SYNC / (core.monotonic() - t0)
    server:cli("DEL", queue)

    step(("pickup latency at idle: %d samples, producer LPUSH to handler start"):format(N_LAT))
    local got
    w = make{ url = server.url, queue = queue, concurrency = 1, on_result = function(r) got = r.result end }
    w:start()
    local lat = {}
    for i = 1, N_LAT do
        got = nil
        proc.sleep(0.001) -- let the worker go back to its blocking pop
        assert(s:schedule{ type = "run", task_id = "l" .. i, messages = { ("t=%.9f"):format(core.monotonic()) } })
        while got == nil do assert(w:poll(5) ~= false) end
        lat[i] = got * 1000
    end
    w:stop()
    while w:poll(5) ~= false do end
    table.sort(lat)
    s:close()

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
        local e = NV / (core.monotonic() - t1)
        st:close()
        local wt = make{ url = url, queue = qn, concurrency = CONCURRENCY, prefetch = PREFETCH, tls = tlsopt }
        t1 = core.monotonic()
        local sts = wt:drain()
        assert(sts.completed == NV, ("%s: completed %d of %d"):format(tag, sts.completed, NV))
        wt:close()
        return e, NV / (core.monotonic() - t1)
    end
    tls_enq, tls_proc = over(server.tls_url, "tls", { ca_file = certs.ca })
    tcp_enq, tcp_proc = over(server.url, "tcp")

    step(("task state in PostgreSQL: %d tasks, against the same in memory; pgbench on the same server")
        :format(N_PG))
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
            sp:close()
            local wp = make{ url = server.url, queue = qn, concurrency = CONCURRENCY, storage = storage }
            local t1 = core.monotonic()
            local st = wp:drain()
            assert(st.completed == N_PG, ("%s: completed %d of %d"):format(prefix, st.completed, N_PG))
            wp:close()
            return N_PG / (core.monotonic() - t1)
        end
        pg_mem = stored_run({ type = "memory" }, "pm")
        pg_rate = stored_run({ type = "postgres", url = db.url }, "pp")
        local init = proc.sh(("pgbench -i -q -s 1 '%s' 2>&1"):format(db.url))
        assert(init:find("done", 1, true), "pgbench -i said: " .. init)
        -- -N: the simple update (one UPDATE, one SELECT, one INSERT per transaction), with
        -- as many clients as the worker has handler states.
        local out = proc.sh(("pgbench -N -c %d -j 1 -T 5 '%s' 2>&1"):format(CONCURRENCY, db.url))
        pgbench_tps_c = tonumber(out:match("tps = ([%d.]+)"))
        assert(pgbench_tps_c, "pgbench said: " .. out)
    end)
    db:stop()
    assert(okp, perr)

    print()
    print("results (ratio = binduq / Redis' own figure on the same server, same run)")
    print(("  enqueue, pipelined      %9.0f tasks/s   %5.2f x redis-benchmark LPUSH (%.0f/s)")
        :format(enq, enq / lpush_rps, lpush_rps))
    print(("                                            %5.2f x pipelined LPUSH (%.0f/s)")
        :format(enq / lpush_p_rps, lpush_p_rps))
    print(("  enqueue, one at a time  %9.0f tasks/s   %5.2f x single-client round trips (%.0f/s)")
        :format(enq_sync, enq_sync / (1000 / rtt_p50), 1000 / rtt_p50))
    print(("  process, at-least-once  %9.0f tasks/s   %5.2f x redis-benchmark RPOP (%.0f/s)")
        :format(proc_rate, proc_rate / rpop_rps, rpop_rps))
    print(("                                            %5.2f x pipelined RPOP (%.0f/s)")
        :format(proc_rate / rpop_p_rps, rpop_p_rps))
    print(("  process, at-most-once   %9.0f tasks/s   %5.2f x redis-benchmark RPOP; at-least-once is %.2f x this")
        :format(rate["at-most-once"], rate["at-most-once"] / rpop_rps, proc_rate / rate["at-most-once"]))
    print(("  process, 3 queues       %9.0f tasks/s   %5.2f x the plain run (%.0f/s, %d tasks each)")
        :format(routing_v, routing_v / plain_v, plain_v, NV))
    print(("  process, rate limited   %9.0f tasks/s   %5.2f x the plain run (a limiter key per task)")
        :format(ratelimit_v, ratelimit_v / plain_v))
    print(("  enqueue, deduplicated   %9.0f tasks/s   %5.2f x pipelined enqueue without deduplication")
        :format(enq_dedup, enq_dedup / enq))
    print(("  pickup latency          p50 %.3f ms  p99 %.3f ms   %5.2f x / %5.2f x the LPUSH round trip (%.3f ms)")
        :format(percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 0.5) / rtt_p50,
                percentile(lat, 0.99) / rtt_p50, rtt_p50))
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

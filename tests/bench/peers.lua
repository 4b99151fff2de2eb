-- peers.lua -- `make bench-peers` (optional, not in CI): binduq beside BullMQ, bee-queue and a
-- plain redis-py LPUSH/BRPOP loop on one throwaway redis-server, the way each is deployed: a
-- producer process queues BENCH_PEERS_TASKS (20,000) no-op tasks of the same 300-byte
-- operation, then one worker process takes them (default options but concurrency). Each
-- figure is timed inside its worker, from the first handler start to the last completion,
-- with Redis' CPU per task (INFO cpu) over the worker's run; the systems take turns, the
-- median of BENCH_REPEAT (3) rounds is printed.
--
-- Then agents waiting on a model (issue 20): the bench's model server (tests/bench/modelsrv.c,
-- libmicrohttpd, loopback) answers each call after 1 s; a producer process queues BENCH_PEERS_AGENT_TASKS
-- (10,000) tasks, then one worker process runs them 2,000 in flight, each task one call:
-- binduq's deployed.agents (w:run(), concurrency 2, tasks_per_state 1000, ctx:http), a BullMQ
-- Worker with concurrency 2000 (Node's http, a keep-alive Agent of 2,000 sockets) and Celery's
-- worker with its gevent pool (-P gevent -c 2000, http.client, kept-alive connections). Each
-- peer makes the request binduq's handler makes (the same POST, the stream read to its end).
-- Printed: the rate (timed inside the worker, first start to last completion) against Little's
-- law (2,000 in flight / 1 s), the worker's peak RSS (VmHWM) and its CPU (utime+stime, from
-- the worker's creation) per 1,000 tasks. The peers' workers get `ulimit -n` >= 4096.
-- BENCH_PEERS=noop or agents runs one of the two scenarios only.
--
-- The peers are installed from npm (tests/bench/peers/package.json, exact versions) into
-- BENCH_PEERS_DIR (build/peers); node and npm, python3-redis for the redis-py loop and
-- python3-celery and python3-gevent for the Celery line come from Debian's archive if missing
-- (as root; the redis-py or the Celery line is left out without them).

package.path = "tests/?.lua;" .. package.path
local bq = require("binduq")
local proc = require("helpers.proc")
local redis = require("helpers.redis")
local deployed = require("bench.deployed")

local N = tonumber(os.getenv("BENCH_PEERS_TASKS")) or 20000
local N_AGENTS = tonumber(os.getenv("BENCH_PEERS_AGENT_TASKS")) or 10000
local IN_FLIGHT, DELAY = 2000, 1
local SCENARIO = os.getenv("BENCH_PEERS") or "all"
assert(SCENARIO == "all" or SCENARIO == "noop" or SCENARIO == "agents", "BENCH_PEERS: all, noop or agents")
local REPEAT = tonumber(os.getenv("BENCH_REPEAT")) or 3
local DIR = os.getenv("BENCH_PEERS_DIR") or "build/peers"
local SRC = "tests/bench/peers"
bq.log_configure{ level = "warn" }
io.stdout:setvbuf("line")

local function have(cmd) return proc.sh("command -v " .. cmd .. " 2>/dev/null") ~= "" end
local function root() return proc.sh("id -u") == "0" end

-- node and npm; the peers' packages in DIR (installed again when package.json changed).
if not (have("node") and have("npm")) then
    assert(root(), "bench-peers needs node and npm (apt-get install nodejs npm)")
    print("-- installing node and npm from Debian's archive")
    assert(os.execute("apt-get update -qq && apt-get install -y -qq nodejs npm > /dev/null"), "apt-get install nodejs npm failed")
end
os.execute("mkdir -p " .. proc.quote(DIR))
for _, f in ipairs({ "package.json", "common.js", "bullmq.js", "beequeue.js", "redispy.py", "celery_agents.py" }) do
    assert(os.execute(("cp %s/%s %s/"):format(SRC, f, proc.quote(DIR))))
end
if proc.read(DIR .. "/.installed") ~= proc.read(DIR .. "/package.json") then
    print("-- installing the peers from npm into " .. DIR)
    local rc, out = proc.run("npm install --no-audit --no-fund --loglevel=error --prefix " .. proc.quote(DIR),
                             { timeout = 600 })
    assert(rc == 0, "npm install failed: " .. out)
    proc.write(DIR .. "/.installed", proc.read(DIR .. "/package.json"))
end
local versions = {}
for _, p in ipairs({ "bullmq", "bee-queue" }) do
    versions[p] = (proc.read(("%s/node_modules/%s/package.json"):format(DIR, p)) or ""):match('"version":%s*"([^"]+)"')
end
-- redis-py: Debian's python3 with its python3-redis
local PY = "/usr/bin/python3"
local function has_redis_py() return os.execute(PY .. " -c 'import redis' 2>/dev/null") == true end
if not has_redis_py() and root() then
    os.execute("apt-get install -y -qq python3-redis > /dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-redis > /dev/null 2>&1)")
end
local redis_py = has_redis_py() and proc.sh(PY .. " -c 'import redis; print(redis.__version__)'")
-- Celery with gevent: Debian's python3-celery and python3-gevent
local function has_celery() return os.execute(PY .. " -c 'import celery, gevent' 2>/dev/null") == true end
if SCENARIO ~= "noop" and not has_celery() and root() then
    os.execute("apt-get install -y -qq python3-celery python3-gevent > /dev/null 2>&1"
               .. " || (apt-get update -qq && apt-get install -y -qq python3-celery python3-gevent > /dev/null 2>&1)")
end
local celery = SCENARIO ~= "noop" and has_celery()
    and proc.sh(PY .. " -c 'import celery, gevent; print(celery.__version__, gevent.__version__)'")
if SCENARIO ~= "noop" and not celery then
    print("-- the Celery line is left out: no python3-celery and python3-gevent"
          .. " (apt-get install -y python3-celery python3-gevent, as root)")
end
local celery_version, gevent_version = (celery or ""):match("^(%S+) (%S+)$")

local server = redis.start()
local function redis_cpu() return server:cpu_seconds() end

-- One peer run: its producer process, then its worker process; rate and Redis us per task.
local function peer(cmd_produce, cmd_work, env)
    local rc, out = proc.run(cmd_produce, { env = env, timeout = 300 })
    assert(rc == 0, "producer: " .. out)
    local c0 = redis_cpu()
    rc, out = proc.run(cmd_work, { env = env, timeout = 300 })
    local rcpu = redis_cpu() - c0
    assert(rc == 0, "worker: " .. out)
    local n, span = out:match("n=(%d+) span=([%d.]+)")
    assert(tonumber(n) == N, "worker: " .. out)
    return { rate = N / tonumber(span), redis_us = rcpu * 1e6 / N }
end

local systems = {
    { "binduq w:run() c1", function(r)
        return deployed.run{ url = server.url, queue = "{bq}:" .. r, n = N, prefix = "b" .. r .. "-", cpu = redis_cpu }
    end },
    { "binduq w:run() c4", function(r)
        return deployed.run{ url = server.url, queue = "{bq4}:" .. r, n = N, prefix = "c" .. r .. "-", cpu = redis_cpu,
                             env = { BENCH_CONCURRENCY = "4" } }
    end },
    { "binduq at-most-once", function(r)
        return deployed.run{ url = server.url, queue = "{bqa}:" .. r, n = N, prefix = "a" .. r .. "-", cpu = redis_cpu,
                             env = { BENCH_DELIVERY = "at-most-once" } }
    end },
    { ("BullMQ %s c100"):format(versions.bullmq), function(r)
        local env = { PEER_PORT = tostring(server.port), PEER_QUEUE = "bull" .. r, PEER_N = tostring(N),
                      PEER_CONCURRENCY = "100" }
        return peer(("node %s/bullmq.js produce"):format(DIR), ("node %s/bullmq.js work"):format(DIR), env)
    end },
    { ("bee-queue %s c50"):format(versions["bee-queue"]), function(r)
        local env = { PEER_PORT = tostring(server.port), PEER_QUEUE = "bee" .. r, PEER_N = tostring(N),
                      PEER_CONCURRENCY = "50" }
        return peer(("node %s/beequeue.js produce"):format(DIR), ("node %s/beequeue.js work"):format(DIR), env)
    end },
}
if redis_py then
    systems[#systems + 1] = { ("redis-py %s BRPOP loop"):format(redis_py), function(r)
        local env = { PEER_PORT = tostring(server.port), PEER_QUEUE = "py" .. r, PEER_N = tostring(N) }
        return peer(("%s %s/redispy.py produce"):format(PY, DIR), ("%s %s/redispy.py work"):format(PY, DIR), env)
    end }
end

-- Agents: the peers' workers with room for 2,000 sockets (binduq's worker raises its own
-- limit to the hard limit).
local function nofile(cmd)
    return "sh -c " .. proc.quote('[ "$(ulimit -n)" -ge 4096 ] 2>/dev/null || ulimit -n 4096 || exit 3; exec ' .. cmd)
end

-- One peer's agents run against a model server of its own: its producer process, then
-- its worker process. Returns the figures from the worker's report.
local function agent_peer(kind, r)
    local srv = deployed.model_server()
    local dir = proc.tmpdir()
    local env = { PEER_PORT = tostring(server.port), PEER_QUEUE = kind .. "ag" .. r, PEER_N = tostring(N_AGENTS),
                  PEER_PREFIX = kind .. r .. "-", PEER_CONCURRENCY = tostring(IN_FLIGHT),
                  PEER_MODEL = ("%s/v1/chat/completions?delay=%g&tokens=1"):format(srv.url, DELAY) }
    local ok, out = pcall(function()
        if kind == "bullmq" then
            local rc, pout = proc.run(("node %s/bullmq.js produce"):format(DIR), { env = env, timeout = 300 })
            assert(rc == 0, "producer: " .. pout)
            local wout
            rc, wout = proc.run(nofile(("node %s/bullmq.js agents"):format(DIR)), { env = env, timeout = 300, dir = dir })
            assert(rc == 0, "worker: " .. wout)
            return wout
        end
        env.PEER_OUT, env.PYTHONPATH = dir .. "/report", DIR
        local rc, pout = proc.run(("%s %s/celery_agents.py produce"):format(PY, DIR), { env = env, timeout = 300 })
        assert(rc == 0, "producer: " .. pout)
        local w = proc.spawn(nofile(("%s -m celery -A celery_agents worker -P gevent -c %d -Q %s -l WARNING -n peers%d@%%h")
            :format(PY, IN_FLIGHT, env.PEER_QUEUE, r)), { env = env, dir = dir })
        local rep = proc.wait_for(function() return proc.read(env.PEER_OUT) or not proc.alive(w) and "exited" end, 300, 0.01)
        proc.stop(w, 10)
        assert(rep and rep:match("^n="), "celery worker: " .. tostring(rep) .. "\n" .. (proc.read(w.log) or ""))
        return rep
    end)
    srv:stop()
    assert(ok, out)
    local n, span = out:match("n=(%d+) span=([%d.]+)")
    local cpu, hwm = out:match("cpu_s=([%d.]+) hwm_kb=(%d+)")
    assert(tonumber(n) == N_AGENTS and cpu, kind .. " worker: " .. out)
    return { rate = N_AGENTS / tonumber(span), limit = IN_FLIGHT / DELAY, cpu_us = tonumber(cpu) * 1e6 / N_AGENTS,
             hwm_kb = tonumber(hwm) }
end

local agents = {
    { "binduq w:run() c2 x tasks_per_state 1000", function(r)
        return deployed.agents{ url = server.url, queue = "{bqag}:" .. r, n = N_AGENTS, prefix = "g" .. r .. "-",
                                concurrency = 2, per = IN_FLIGHT // 2, delay = DELAY, cpu = redis_cpu }
    end },
    { ("BullMQ %s c%d, Node %s http"):format(versions.bullmq, IN_FLIGHT, proc.sh("node --version")), function(r)
        return agent_peer("bullmq", r)
    end },
}
if celery then
    agents[#agents + 1] = { ("Celery %s -P gevent -c %d (gevent %s)"):format(celery_version, IN_FLIGHT, gevent_version),
                            function(r) return agent_peer("celery", r) end }
end

local results, agent_results = {}, {}
local ok, err = pcall(function()
    if SCENARIO ~= "agents" then
        print(("binduq %s beside its peers: %d no-op tasks of 300 bytes, a producer process then one worker process each; redis-server %s on 127.0.0.1:%d; %s cores")
            :format(bq._VERSION, N, server:cli("INFO", "server"):match("redis_version:(%S+)"), server.port,
                    proc.sh("nproc")))
        for r = 1, REPEAT do
            for _, s in ipairs(systems) do
                local fig = s[2](r)
                server:cli("FLUSHALL")
                results[s[1]] = results[s[1]] or {}
                table.insert(results[s[1]], fig)
                print(("  round %d of %d: %-28s %9.0f tasks/s   Redis %6.2f us/task"):format(r, REPEAT, s[1], fig.rate, fig.redis_us))
            end
        end
    end
    if SCENARIO ~= "noop" then
        print(("agents waiting on a model: %d tasks, each a streamed chat completion the bench's model server (modelsrv, loopback) answers after %g s; a producer process then one worker process each, %d in flight; redis-server %s; %s cores")
            :format(N_AGENTS, DELAY, IN_FLIGHT, server:cli("INFO", "server"):match("redis_version:(%S+)"), proc.sh("nproc")))
        for r = 1, REPEAT do
            for _, s in ipairs(agents) do
                local fig = s[2](r)
                server:cli("FLUSHALL")
                agent_results[s[1]] = agent_results[s[1]] or {}
                fig.x = fig.rate / fig.limit
                fig.mib = fig.hwm_kb / 1024
                fig.cpu_1000 = fig.cpu_us / 1000
                table.insert(agent_results[s[1]], fig)
                print(("  round %d of %d: %-48s %6.0f tasks/s  %4.2f x Little's law  %4.0f MiB  %6.3f s CPU per 1,000 tasks")
                    :format(r, REPEAT, s[1], fig.rate, fig.x, fig.mib, fig.cpu_1000))
            end
        end
    end
end)
server:stop()
if not ok then
    io.stderr:write("bench-peers failed: ", tostring(err), "\n")
    os.exit(1)
end

local function median(list, k)
    local v = {}
    for i, f in ipairs(list) do v[i] = f[k] end
    table.sort(v)
    return v[(#v + 1) // 2]
end
if SCENARIO ~= "agents" then
    print()
    print(("medians of %d rounds (%s)"):format(REPEAT, os.date("!%Y-%m-%d")))
    print(("| %-28s | %12s | %17s |"):format("", "tasks/s", "Redis CPU us/task"))
    print("| --- | ---: | ---: |")
    for _, s in ipairs(systems) do
        local l = results[s[1]]
        print(("| %-28s | %12.0f | %17.1f |"):format(s[1], median(l, "rate"), median(l, "redis_us")))
    end
end
if SCENARIO ~= "noop" then
    print()
    print(("agents, %d tasks, %d in flight, each waiting %g s: medians of %d rounds (%s)")
        :format(N_AGENTS, IN_FLIGHT, DELAY, REPEAT, os.date("!%Y-%m-%d")))
    print(("| %-48s | %7s | %14s | %12s | %21s |"):format("", "tasks/s", "x Little's law", "peak RSS MiB",
        "CPU s per 1,000 tasks"))
    print("| --- | ---: | ---: | ---: | ---: |")
    for _, s in ipairs(agents) do
        local l = agent_results[s[1]]
        print(("| %-48s | %7.0f | %14.2f | %12.0f | %21.3f |"):format(s[1], median(l, "rate"), median(l, "x"),
            median(l, "mib"), median(l, "cpu_1000")))
    end
end

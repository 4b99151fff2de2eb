-- peers.lua -- `make bench-peers` (optional, not in CI): binduq beside BullMQ, bee-queue and a
-- plain redis-py LPUSH/BRPOP loop on one throwaway redis-server, the way each is deployed: a
-- producer process queues BENCH_PEERS_TASKS (20,000) no-op tasks of the same 300-byte
-- operation, then one worker process takes them (default options but concurrency). Each
-- figure is timed inside its worker, from the first handler start to the last completion,
-- with Redis' CPU per task (INFO cpu) over the worker's run; the systems take turns, the
-- median of BENCH_REPEAT (3) rounds is printed.
--
-- The peers are installed from npm (tests/bench/peers/package.json, exact versions) into
-- BENCH_PEERS_DIR (build/peers); node and npm, and python3-redis for the redis-py loop, come
-- from Debian's archive if missing (as root; the redis-py line is left out without it).

package.path = "tests/?.lua;" .. package.path
local bq = require("binduq")
local proc = require("helpers.proc")
local redis = require("helpers.redis")
local deployed = require("bench.deployed")

local N = tonumber(os.getenv("BENCH_PEERS_TASKS")) or 20000
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
for _, f in ipairs({ "package.json", "common.js", "bullmq.js", "beequeue.js", "redispy.py" }) do
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

local results = {}
local ok, err = pcall(function()
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
print()
print(("medians of %d rounds (%s)"):format(REPEAT, os.date("!%Y-%m-%d")))
print(("| %-28s | %12s | %17s |"):format("", "tasks/s", "Redis CPU us/task"))
print("| --- | ---: | ---: |")
for _, s in ipairs(systems) do
    local l = results[s[1]]
    print(("| %-28s | %12.0f | %17.1f |"):format(s[1], median(l, "rate"), median(l, "redis_us")))
end

-- producer.lua -- the bench's producer, in a process of its own (as a deployment's API process).
--   BENCH_URL=... BENCH_QUEUE=... binduq-lua tests/bench/producer.lua <mode> <n> <prefix>
-- fill      schedules n `run` operations of 300 bytes, pipelined in batches of 1,000; with
--           BENCH_QUEUES=a,b,c they are routed round-robin over those queues; with
--           BENCH_DEDUP=1 deduplication is on; BENCH_CA names a rediss:// URL's CA; with
--           BENCH_RATELIMIT=<n> task i is in conversation "t<i % n>", the worker's limiter
--           key (proc_worker.lua). Prints "rate=<operations/s>".
-- latency   schedules n operations one at a time, 2 ms apart, each carrying "t=<monotonic
--           seconds>" taken just before its schedule call (the worker's handler measures the
--           pickup); prints "call_p50=<ms> call_p99=<ms>", its own schedule calls' times.
-- Operations carry fresh ids (the prefix): a worker skips ids it finished already.
local bq = require("binduq")
local core = require("binduq.core")
package.path = "tests/?.lua;" .. package.path
local ops = require("bench.ops")

local mode, n, prefix = arg[1], math.tointeger(tonumber(arg[2] or "")), arg[3] or "p"
assert(mode == "fill" or mode == "latency", "usage: producer.lua fill|latency <n> [prefix]")
assert(n and n > 0, "producer.lua: n must be a positive whole number")
bq.log_configure{ level = "warn" }

local queues = {}
for q in (os.getenv("BENCH_QUEUES") or ""):gmatch("[^,]+") do queues[#queues + 1] = q end
local ca = os.getenv("BENCH_CA")
local s = bq.scheduler{ url = os.getenv("BENCH_URL"), queue_name = os.getenv("BENCH_QUEUE"),
                        tls = ca and ca ~= "" and { ca_file = ca } or nil,
                        dedup = os.getenv("BENCH_DEDUP") == "1",
                        route = #queues > 0 and function(o) return o.metadata.q end or nil }

if mode == "fill" then
    print(("rate=%.1f"):format(ops.fill(s, n, prefix, queues, math.tointeger(tonumber(os.getenv("BENCH_RATELIMIT") or "")))))
else
    local calls = {}
    for i = 1, n do
        core.sleep(0.002) -- the worker is back in its blocking pop
        local t0 = core.monotonic()
        assert(s:schedule{ type = "run", task_id = prefix .. i, messages = { ("t=%.9f"):format(t0) } })
        calls[i] = (core.monotonic() - t0) * 1000
    end
    table.sort(calls)
    print(("call_p50=%.4f call_p99=%.4f"):format(calls[math.max(1, math.ceil(n * 0.5))],
                                                  calls[math.max(1, math.ceil(n * 0.99))]))
end
s:close()

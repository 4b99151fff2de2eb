-- gateway_server.lua -- the gateway alone for `make bench` (deployed.gateway): the A2A
-- gateway on a free loopback port, scheduling into Redis (BENCH_URL, BENCH_QUEUE), task
-- state in this process' memory, the per-client rate limit out of the way (the load comes
-- from one address). Serves until SIGTERM; logs gateway_listening with its port.
local bq = require("binduq")
local gw = assert(bq.gateway{
    host = "127.0.0.1", port = 0, rate = 1e9,
    scheduler = { url = os.getenv("BENCH_URL"), queue_name = os.getenv("BENCH_QUEUE") },
    storage = { type = "memory", max_tasks = 1000000 },
})
gw:run()

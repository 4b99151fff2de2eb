-- proc_worker.lua -- the bench's worker in a process of its own, for its memory and CPU.
--   BENCH_URL=... BENCH_QUEUE=... BENCH_CONCURRENCY=8 [BENCH_MAX_TASKS=n]
--   binduq-lua tests/bench/proc_worker.lua drain|run
-- BENCH_MAX_TASKS bounds the memory storage (storage.max_tasks; default 100,000).
-- drain: processes what is queued with a no-op handler, then prints
--   "completed=<n> cpu_s=<process CPU seconds> hwm_kb=<peak resident set> rss_kb=<resident set>
--    anon_kb=<its private part> file_kb=<mapped files: the shared libraries' pages>"
-- run: waits for tasks until SIGTERM (the idle-CPU figure samples it from outside).
local bq = require("binduq")
bq.log_configure{ level = "warn" }
local w = bq.worker{
    name = "bench-proc",
    scheduler = { url = os.getenv("BENCH_URL"), queue_name = os.getenv("BENCH_QUEUE") },
    concurrency = tonumber(os.getenv("BENCH_CONCURRENCY")) or 8,
    handlers = { run = function() return true end },
    storage = { type = "memory", max_tasks = math.tointeger(tonumber(os.getenv("BENCH_MAX_TASKS") or "")) },
}
if bq.role == "handler" or arg[1] == "run" then
    w:run()
    return
end
local t0 = os.clock()
local st = w:drain()
local cpu = os.clock() - t0
local f = assert(io.open("/proc/self/status"))
local status = f:read("a")
f:close()
print(("completed=%d cpu_s=%.3f hwm_kb=%s rss_kb=%s anon_kb=%s file_kb=%s"):format(st.completed, cpu,
    status:match("VmHWM:%s*(%d+)"), status:match("VmRSS:%s*(%d+)"), status:match("RssAnon:%s*(%d+)"),
    status:match("RssFile:%s*(%d+)")))

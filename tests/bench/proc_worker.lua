-- proc_worker.lua -- the bench's worker in a process of its own, started the way a deployment
-- starts one (binduq-lua on a worker script, w:run(), default options unless the env says).
--   BENCH_URL=... BENCH_QUEUE=... binduq-lua tests/bench/proc_worker.lua run|drain
-- Options, each left at the default unless set:
--   BENCH_CONCURRENCY=n   BENCH_DELIVERY=at-most-once   BENCH_QUEUES=a,b,c (strict priority)
--   BENCH_RATELIMIT=queue|task|<n> (the queue's one limiter key, a key per task, or n keys
--   shared round-robin; a limit it never reaches)
--   BENCH_PG=<url> (task state in PostgreSQL)   BENCH_MAX_TASKS=n (memory storage bound)
--   STORAGE_TYPE=redis (task state in the queue's Redis)
--   BENCH_CA=<file> (the CA of a rediss:// URL)   BENCH_BATCH=n (the batch option)
--   BENCH_PER_STATE=<n> (tasks_per_state),
--   BENCH_MODEL=<url> (the handler streams a chat completion from this URL of the fake model
--   server with ctx:http, the task id as X-Request-Id, until the stream ends or the task is
--   stopped; for deployed.lua's cancel_http)
-- run: waits for tasks until SIGTERM. With BENCH_OUT=<file>, each handler state appends one
--   line to it when it closes: "n=<tasks> first=<start of its first> last=<end of its last>
--   lat=<pickups, ms, comma-separated>" (monotonic seconds, comparable across processes; a
--   message "t=<monotonic seconds>" from producer.lua's latency mode has its pickup measured).
--   The main state prints "cpu_s=<process CPU seconds> hwm_kb=<peak resident set>" on the
--   way out. With BENCH_FILL=<n>
--   and BENCH_PREFIX=<id prefix> it first schedules n operations itself (a producer in the
--   worker's own process, which records them in the storage they share) and prints
--   "filled rate=<operations/s>".
-- drain: processes what is queued, then prints "completed=<n> cpu_s=<process CPU seconds>
--   hwm_kb=<peak resident set> rss_kb=<resident set> anon_kb=<its private part>
--   file_kb=<mapped files: the shared libraries' pages>" (drain() is a shortcut mode).
local bq = require("binduq")
local core = require("binduq.core")

local function env(name) local v = os.getenv(name); return v ~= "" and v or nil end
local function int(name) return math.tointeger(tonumber(env(name) or "")) end

local queues
for q in (env("BENCH_QUEUES") or ""):gmatch("[^,]+") do
    queues = queues or {}
    queues[#queues + 1] = q
end

-- What this handler state saw; written out when the state closes (its finaliser).
local n, first, last, lat = 0, nil, nil, {}
local out = env("BENCH_OUT")
if out and bq.role == "handler" then
    _G.__bench_report = setmetatable({}, { __gc = function()
        local f = assert(io.open(out, "a"))
        f:setvbuf("full", 1 << 20)
        f:write(("n=%d first=%.9f last=%.9f lat=%s\n"):format(n, first or 0, last or 0, table.concat(lat, ",")))
        f:close()
    end })
end

local function handler(task)
    local t0 = core.monotonic()
    first = first or t0
    local sent = task.messages[1].content:match("^t=([%d.]+)")
    if sent then lat[#lat + 1] = ("%.4f"):format((t0 - tonumber(sent)) * 1000) end
    n = n + 1
    last = core.monotonic()
    return true
end

-- BENCH_MODEL: a handler that waits on a model, as an agent's does.
local model = env("BENCH_MODEL")
local function stream(_, ctx)
    local t0 = core.monotonic()
    first = first or t0
    local resp, msg, code = ctx:http{
        url = model, headers = { ["X-Request-Id"] = ctx.task_id },
        body = { model = "fake", stream = true, messages = { { role = "user", content = "hi" } } },
        on_event = function(ev) return ev.data ~= "[DONE]" end,
    }
    if not resp then bq.fail{ code = code, message = msg, retryable = false } end
    n = n + 1
    last = core.monotonic()
    return true
end

-- BENCH_RATELIMIT=queue: no rate_key, the queue's one key; =task: a limiter key per task;
-- =<n>: n keys (tenants), a key per conversation, the producer putting task i in
-- conversation "t<i % n>" (bench/ops.lua).
local tenants = int("BENCH_RATELIMIT")
local function rate_key(task)
    if not tenants then return task.task_id end
    return task.conversation_id
end

bq.log_configure{ level = "warn" }
local storage = { type = "memory", max_tasks = int("BENCH_MAX_TASKS") }
if env("BENCH_PG") then storage = { type = "postgres", url = env("BENCH_PG") } end
if env("STORAGE_TYPE") == "redis" then storage = { type = "redis" } end
local w = bq.worker{
    name = "bench-proc",
    scheduler = { url = env("BENCH_URL"), queue_name = env("BENCH_QUEUE"),
                  tls = env("BENCH_CA") and { ca_file = env("BENCH_CA") } or nil },
    concurrency = int("BENCH_CONCURRENCY"),
    tasks_per_state = int("BENCH_PER_STATE"),
    batch = int("BENCH_BATCH"),
    delivery = env("BENCH_DELIVERY"),
    queues = queues,
    rate_limit = env("BENCH_RATELIMIT") and { limit = 1000000000, period = 1 } or nil,
    rate_key = env("BENCH_RATELIMIT") and env("BENCH_RATELIMIT") ~= "queue" and rate_key or nil,
    handlers = { run = model and stream or handler },
    storage = storage,
}
if bq.role == "handler" then
    w:run()
    return
end
local t0 = os.clock()
if arg[1] == "run" then
    if env("BENCH_FILL") then
        package.path = "tests/?.lua;" .. package.path
        local rate = require("bench.ops").fill(w.scheduler, int("BENCH_FILL"), env("BENCH_PREFIX") or "f", nil, tenants)
        print(("filled rate=%.1f"):format(rate))
        io.stdout:flush()
        t0 = os.clock()
    end
    w:run()
    local f = assert(io.open("/proc/self/status"))
    local status = f:read("a")
    f:close()
    print(("cpu_s=%.3f hwm_kb=%s"):format(os.clock() - t0, status:match("VmHWM:%s*(%d+)")))
    return
end
local st = w:drain()
local cpu = os.clock() - t0
local f = assert(io.open("/proc/self/status"))
local status = f:read("a")
f:close()
print(("completed=%d cpu_s=%.3f hwm_kb=%s rss_kb=%s anon_kb=%s file_kb=%s"):format(st.completed, cpu,
    status:match("VmHWM:%s*(%d+)"), status:match("VmRSS:%s*(%d+)"), status:match("RssAnon:%s*(%d+)"),
    status:match("RssFile:%s*(%d+)")))

-- producer.lua -- schedules N run tasks.
--
--   REDIS_URL=redis://127.0.0.1:6379/0 build/binduq-lua examples/producer.lua N [text] [prefix]
--
-- Task ids are "<prefix>-<n>" (prefix defaults to a fresh UUID); each task's message is
-- `text` (default "hello <n>"). Tasks go out in pipelined batches of 1000 to REDIS_QUEUE_NAME,
-- by default examples:echo, where examples/worker.lua waits. Prints the count.

local bq = require("binduq")

local n = tonumber(arg[1] or "10")
if not n or n < 0 or n ~= math.floor(n) then
    io.stderr:write("usage: producer.lua N [text] [prefix]\n")
    os.exit(2)
end
local text = arg[2]
local prefix = arg[3] or bq.uuid()

-- Without REDIS_URL this is the in-memory scheduler, and binduq warns (once) that no worker
-- of this process will take the tasks.
local s = bq.scheduler{ queue_name = os.getenv("REDIS_QUEUE_NAME") or "examples:echo" }

local sent, batch = 0, {}
local function flush()
    if #batch == 0 then return end
    local k, err = s:schedule_many(batch)
    if not k then
        io.stderr:write("producer.lua: ", err, "\n")
        os.exit(1)
    end
    sent = sent + k
    batch = {}
end

for i = 1, n do
    batch[#batch + 1] = { type = "run", task_id = prefix .. "-" .. i, messages = { text or ("hello " .. i) } }
    if #batch == 1000 then flush() end
end
flush()
print(("scheduled %d tasks on %s (%s)"):format(sent, s.queue_name, s.backend))

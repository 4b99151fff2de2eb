-- agent.lua -- an AI agent's handler: it streams a model's answer from an OpenAI-style
-- chat-completions endpoint with ctx:http, and stores the text as the task's message and
-- artifact. Then a long answer is canceled mid-stream.
--
--   build/binduq-lua examples/agent.lua
--   MODEL_URL=https://api.openai.com/v1 MODEL_API_KEY=sk-... build/binduq-lua examples/agent.lua
--
-- MODEL_URL is the API's base URL, MODEL_API_KEY is sent as "Authorization: Bearer" (and
-- never printed), MODEL_NAME is the model (default gpt-4o-mini). Without MODEL_URL the
-- script starts the fake model server of the tests (tests/helpers/fakemodel.py), which
-- answers "echo: <question>", word by word. In memory by default; with REDIS_URL set the
-- tasks go through Redis, on the queue examples:agent.

local bq = require("binduq")
local json = require("binduq.json")
io.stdout:setvbuf("line")
bq.log_configure{ level = "warn" }

-- The fake model server, started only when MODEL_URL is unset: its base URL, and a value
-- whose closing stops the server by its PID (even when the script fails).
local function start_fake_model()
    local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
    local port_file = os.tmpname()
    os.remove(port_file)
    local p = assert(io.popen(("python3 '%s../tests/helpers/fakemodel.py' --port-file %s --pace 0.08 "
        .. "--max-seconds 60 >/dev/null 2>&1 & echo $!"):format(here, port_file)))
    local pid = assert(math.tointeger(tonumber(p:read("l"))), "could not start fakemodel.py")
    p:close()
    local server = setmetatable({}, { __close = function()
        os.execute("kill " .. pid)
        os.remove(port_file)
    end })
    for _ = 1, 1000 do
        local f = io.open(port_file)
        local port = f and tonumber(f:read("l"))
        if f then f:close() end
        if port then return ("http://127.0.0.1:%d/v1"):format(port), server end
        bq.sleep(0.01)
    end
    error("fakemodel.py did not start")
end

-- Handler states run this script again up to worker:start() (bq.role == "handler"): they
-- get the main state's model URL as arg[1], through the worker's `args`.
local function model_url()
    if bq.role == "handler" then return arg[1] end
    local url = os.getenv("MODEL_URL")
    if url and url ~= "" then return url end
    return start_fake_model()
end
local MODEL_URL, fake_model <close> = model_url()
local MODEL_API_KEY = os.getenv("MODEL_API_KEY") ~= "" and os.getenv("MODEL_API_KEY") or nil
local MODEL_NAME = os.getenv("MODEL_NAME") or "gpt-4o-mini"

-- The agent: the task's conversation goes to the model, its answer streams back as
-- server-sent events, one delta of text each.
local function agent(task, ctx)
    local messages = { { role = "system", content = "You are a helpful assistant. Be brief." } }
    for _, m in ipairs(task.messages) do
        messages[#messages + 1] = { role = m.role == "agent" and "assistant" or "user", content = m.content }
    end
    local parts = {}
    -- Waiting here is a yield point: a cancel (or pause, timeout, shutdown) closes the
    -- connection and raises ECANCELED (...) out of ctx:http, which ends the handler at once.
    -- Nothing to clean up, so nothing to catch.
    local resp, err, code, failed = ctx:http{
        url = MODEL_URL .. "/chat/completions",
        headers = { Authorization = MODEL_API_KEY and "Bearer " .. MODEL_API_KEY or nil },
        body = { model = MODEL_NAME, stream = true, messages = messages },
        timeout = 120,
        on_event = function(ev)
            if ev.data == "[DONE]" then return false end
            local chunk = json.decode(ev.data)
            local choice = chunk and type(chunk.choices) == "table" and chunk.choices[1]
            local text = choice and type(choice.delta) == "table" and choice.delta.content
            if type(text) == "string" then parts[#parts + 1] = text end
        end,
    }
    if not resp then
        -- A 4xx other than 429 is our request's fault: retrying it would fail again.
        local status = failed and failed.status or 0
        bq.fail{ code = code, message = err, retryable = status == 0 or status == 429 or status >= 500 }
    end
    local text = table.concat(parts)
    return { message = text, artifacts = { { name = "answer", parts = { { kind = "text", text = text } } } } }
end

local worker = bq.worker{
    scheduler = { queue_name = "examples:agent" },
    concurrency = 3, -- each task waiting on the model holds a handler state
    args = { MODEL_URL },
    handlers = { run = agent },
}
worker:start()
local s = worker.scheduler

-- Fresh task ids each run: a task id is scheduled once.
local run = bq.uuid():sub(1, 8)
local function wait(id, states)
    for _ = 1, 12000 do
        local t = s:get_task(id)
        if t and states[t.state] then return t end
        worker:poll(0.01)
    end
    error(id .. " did not finish in 120 s")
end

print(("model %s at %s"):format(MODEL_NAME, fake_model and "the fake model server" or "MODEL_URL"))
local questions = { "What is a task queue?", "Why stream a model's answer?", "What does a cancel stop?" }
for i, q in ipairs(questions) do
    assert(s:run{ task_id = ("ask-%d-%s"):format(i, run), messages = { q } })
end
local done = { completed = true, failed = true, canceled = true }
for i, q in ipairs(questions) do
    local t = wait(("ask-%d-%s"):format(i, run), done)
    local answer = t.artifacts and t.artifacts[1] and t.artifacts[1].parts[1].text
    print(("%-6s %-10s Q: %s\n%17s A: %s"):format("ask-" .. i, t.state, q, "", answer or t.error.message))
end

-- A long answer, canceled while it streams: the handler stops within milliseconds.
local id = "story-" .. run
assert(s:run{ task_id = id, messages = { "Tell me a long story about a queue that never ends, with every "
    .. "task it ever held, one by one, from the first to the last, and what each one was for." } })
wait(id, { working = true, completed = true, failed = true })
bq.sleep(0.3) -- the answer is streaming
local t0 = bq.monotonic()
s:cancel(id)
worker:drain()
print(("%-6s %-10s stopped %.1f ms after the cancel"):format("story", s:get_task(id).state,
                                                           (bq.monotonic() - t0) * 1000))

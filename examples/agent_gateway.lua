-- agent_gateway.lua -- an A2A agent in one process: a gateway that speaks A2A's JSON-RPC
-- (0.3 and 1.0) and a worker that runs the agent's handler, on the in-memory default.
--
--   build/binduq-lua examples/agent_gateway.lua        (listens on 127.0.0.1:3773)
--   curl -s localhost:3773/.well-known/agent-card.json
--   curl -s localhost:3773/ -d '{"jsonrpc":"2.0","id":1,"method":"message/send","params":
--        {"message":{"kind":"message","messageId":"m1","role":"user",
--                    "parts":[{"kind":"text","text":"hello"}]},"configuration":{"blocking":true}}}'
--
-- BINDUQ_GATEWAY_ADDR=host:port listens elsewhere (port 0: any free port, logged). With
-- REDIS_URL and DATABASE_URL the gateway and the worker can run as separate processes: the
-- same script with SERVE=gateway or SERVE=worker.
local bq = require("binduq")

local agent = {
    name = "echo agent",
    description = "Answers with what it was told; asks for a city when told 'weather'",
    skills = { { id = "echo", name = "Echo", description = "Repeats the message", tags = { "demo" },
                 examples = { "hello" } } },
    deployment = { url = "http://127.0.0.1:3773" },
}

local function handler(task, ctx)
    local text = task.messages[#task.messages].content
    if text == "weather" then return { state = "input-required", prompt = "Which city?" } end
    local seconds = tonumber(text:match("^slow ?([%d.]*)") or "")
    if text:match("^slow") then ctx:sleep(seconds or 1) end
    if #task.messages > 1 then text = text .. " (after " .. (#task.messages - 1) .. " earlier messages)" end
    return { message = "echo: " .. text,
             artifacts = { { name = "echo", parts = { { kind = "text", text = text } } } } }
end

local serve = os.getenv("SERVE") or "both"
local worker = bq.worker{ concurrency = 2, handlers = { run = handler } }
if serve == "worker" then
    worker:run()
    return
end
if serve == "both" then worker:start() end
local gw = assert(bq.gateway{ agent = agent })
gw:run() -- until SIGTERM or SIGINT
if serve == "both" then worker:stop() end

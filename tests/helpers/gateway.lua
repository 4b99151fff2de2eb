-- helpers/gateway.lua -- a gateway process for the integration specs.
local proc = require("helpers.proc")

local M = {}

--- Starts a gateway on a free port (examples/agent_gateway.lua, or `cmd`) with `env` added to
--- its environment; returns the process, its base URL and its port.
function M.start(env, cmd)
    local e = { BINDUQ_GATEWAY_ADDR = "127.0.0.1:0", BINDUQ_LOG_LEVEL = "info" }
    for k, v in pairs(env or {}) do e[k] = v end
    local p = proc.spawn(cmd or "build/binduq-lua examples/agent_gateway.lua", { env = e })
    local port = proc.wait_for(function()
        return (proc.read(p.log) or ""):match("gateway_listening [^\n]*port=(%d+)")
    end, 15)
    assert(port, "the gateway did not start: " .. tostring(proc.read(p.log)))
    return p, "http://127.0.0.1:" .. port, port
end

return M

-- A gateway alone, no worker (a task stays queued), for tests/integration/gateway_transport_spec.lua:
-- BINDUQ_GATEWAY_ADDR says where; MAX_CONNECTIONS, KEEPALIVE, POLL and MAX_BODY set those options.
local bq = require("binduq")

local gw = assert(bq.gateway{
    max_connections = tonumber(os.getenv("MAX_CONNECTIONS") or ""),
    keepalive = tonumber(os.getenv("KEEPALIVE") or ""),
    poll = tonumber(os.getenv("POLL") or ""),
    max_body = tonumber(os.getenv("MAX_BODY") or ""),
})
gw:run() -- until SIGTERM or SIGINT

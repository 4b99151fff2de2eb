--- helpers.redis: a throwaway redis-server on a free loopback port, stopped by PID.
--
--   local server = redis.start()        -- server.url, server.port
--   server:cli("LLEN", "bindu:tasks")   -- through redis-cli
--   server:restart()                    -- same port, same data directory
--   server:cpu_seconds()                -- its CPU seconds so far (INFO cpu)
--   server:stop()
--   redis.start{tls = {cert=, key=, ca=, auth_clients = "no"}}  -- also a TLS port:
--                                          -- server.tls_port, server.tls_url (rediss://)

local proc = require("helpers.proc")

local M = {}
local Server = {}
Server.__index = Server

-- Up: it answers PONG, or (a server started with --requirepass) NOAUTH.
local function ping(port)
    local out = proc.sh(("redis-cli -h 127.0.0.1 -p %d PING 2>&1"):format(port))
    return out == "PONG" or (out or ""):find("NOAUTH", 1, true) ~= nil
end

function Server:launch()
    local args = {
        "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
        "--save", "''", "--appendonly", self.aof and "yes" or "no", "--dir", self.dir,
        "--daemonize", "no", "--protected-mode", "no",
    }
    if self.tls then
        for _, a in ipairs({ "--tls-port", tostring(self.tls_port), "--tls-cert-file", self.tls.cert,
                             "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                             "--tls-auth-clients", self.tls.auth_clients or "no" }) do
            args[#args + 1] = a
        end
    end
    for _, a in ipairs(self.extra or {}) do args[#args + 1] = a end
    self.proc = proc.spawn(table.concat(args, " "), { dir = self.dir, log = self.dir .. "/redis.log" })
    self.pid = self.proc.pid
    return proc.wait_for(function()
        if not proc.alive(self.proc) then return "exited" end
        return ping(self.port) and "up"
    end, 10) == "up"
end

--- Starts a server. opts.aof = true turns on the append-only file; opts.args adds arguments.
function M.start(opts)
    opts = opts or {}
    for _ = 1, 20 do
        local s = setmetatable({
            port = math.random(20000, 59999),
            dir = proc.tmpdir(),
            aof = opts.aof,
            extra = opts.args,
            tls = opts.tls,
        }, Server)
        s.url = ("redis://127.0.0.1:%d/0"):format(s.port)
        if s.tls then
            s.tls_port = math.random(20000, 59999)
            s.tls_url = ("rediss://127.0.0.1:%d/0"):format(s.tls_port)
        end
        if s:launch() then return s end
        proc.stop(s.proc, 1) -- most likely the port was taken: try another
    end
    error("could not start redis-server on a free port")
end

--- Redis' own CPU seconds so far (user + sys, INFO cpu) of the server on 127.0.0.1:port.
function M.cpu_seconds(port)
    local info = proc.sh(("redis-cli -h 127.0.0.1 -p %d INFO cpu"):format(port))
    return tonumber(info:match("used_cpu_user:([%d.]+)")) + tonumber(info:match("used_cpu_sys:([%d.]+)"))
end

--- The same for this server.
function Server:cpu_seconds()
    return M.cpu_seconds(self.port)
end

--- Runs a redis-cli command; returns its output.
function Server:cli(...)
    local args = {}
    for i, a in ipairs({ ... }) do args[i] = proc.quote(a) end
    local out = proc.sh(("redis-cli -h 127.0.0.1 -p %d %s"):format(self.port, table.concat(args, " ")))
    return out
end

function Server:kill()
    proc.kill(self.proc, "KILL")
    proc.wait(self.proc, 5)
end

function Server:stop()
    if self.proc then proc.stop(self.proc, 5) end
end

--- Stops and starts again on the same port (with the same data directory).
function Server:restart()
    self:stop()
    for _ = 1, 50 do
        if self:launch() then return true end
        proc.sleep(0.1)
    end
    error("could not restart redis-server on port " .. self.port)
end

return M

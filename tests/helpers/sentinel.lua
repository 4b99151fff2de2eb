--- helpers.sentinel: a master, a replica and three sentinels on loopback, stopped by PID.
--
--   local set = sentinel.start()   -- set.url (redis+sentinel://...), set.master, set.replica
--   set:master_port()              -- where the sentinels say the master is
--   set:failover()                 -- SENTINEL FAILOVER (forced, no agreement needed)
--   set:stop()

local proc = require("helpers.proc")
local redis = require("helpers.redis")

local M = {}
local Set = {}
Set.__index = Set

local NAME = "mymaster"

local function cli(port, ...)
    local args = {}
    for i, a in ipairs({ ... }) do args[i] = proc.quote(a) end
    return (proc.sh(("redis-cli -h 127.0.0.1 -p %d %s"):format(port, table.concat(args, " "))))
end

local function start_sentinel(master_port)
    for _ = 1, 20 do
        local port = math.random(20000, 59999)
        local dir = proc.tmpdir()
        local conf = dir .. "/sentinel.conf"
        proc.write(conf, table.concat({
            "port " .. port, "bind 127.0.0.1", "protected-mode no", "dir " .. dir,
            ("sentinel monitor %s 127.0.0.1 %d 2"):format(NAME, master_port),
            ("sentinel down-after-milliseconds %s 1000"):format(NAME),
            ("sentinel failover-timeout %s 10000"):format(NAME),
            ("sentinel parallel-syncs %s 1"):format(NAME), "",
        }, "\n"))
        local p = proc.spawn("redis-sentinel " .. proc.quote(conf), { dir = dir, log = dir .. "/sentinel.log" })
        if proc.wait_for(function() return not proc.alive(p) or cli(port, "PING") == "PONG" end, 10)
            and proc.alive(p) then
            return { port = port, proc = p }
        end
        proc.stop(p, 1)
    end
    error("could not start redis-sentinel")
end

function M.start()
    local set = setmetatable({ name = NAME }, Set)
    set.master = redis.start()
    set.replica = redis.start{ args = { "--replicaof", "127.0.0.1", tostring(set.master.port) } }
    assert(proc.wait_for(function()
        return set.replica:cli("INFO", "replication"):find("master_link_status:up", 1, true)
    end, 20), "the replica did not sync")
    set.sentinels = {}
    local hosts = {}
    for i = 1, 3 do
        set.sentinels[i] = start_sentinel(set.master.port)
        hosts[i] = "127.0.0.1:" .. set.sentinels[i].port
    end
    set.url = ("redis+sentinel://%s/%s/0"):format(table.concat(hosts, ","), NAME)
    -- Ready when every sentinel knows the replica and the other two sentinels.
    assert(proc.wait_for(function()
        for _, s in ipairs(set.sentinels) do
            local info = cli(s.port, "INFO", "sentinel")
            if not info:find("slaves=1,sentinels=3", 1, true) then return false end
        end
        return true
    end, 30), "the sentinels did not discover each other")
    return set
end

function Set:master_port()
    local out = cli(self.sentinels[1].port, "SENTINEL", "get-master-addr-by-name", NAME)
    return tonumber(out:match("\n(%d+)"))
end

function Set:failover()
    return cli(self.sentinels[1].port, "SENTINEL", "FAILOVER", NAME)
end

function Set:stop()
    for _, s in ipairs(self.sentinels or {}) do proc.stop(s.proc, 5) end
    if self.replica then self.replica:stop() end
    if self.master then self.master:stop() end
end

return M
